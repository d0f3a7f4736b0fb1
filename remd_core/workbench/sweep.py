"""Sweeps: a grid of parameterised notebook executions, run in parallel, resumed, collected.

A grid file (``sweeps/*.yaml``) names a cell notebook (default ``notebooks/cells/train_recipe.ipynb``)
and the values of its parameters: ``datasets`` (parameter ``DATASET``), ``recipes`` (``RECIPE``),
``seeds`` (``SEED``) and ``params`` (any other declared parameter -> list of values). A cell of the
grid is one combination; it runs as one papermill execution of the notebook. ``grids:`` holds named
sub-grids (the paper's ``table1``, ``table2``, ``sensitivity_m0``, ...); each sub-grid's
``datasets``, ``recipes`` and ``seeds`` replace the top-level ones, and its ``params`` are merged
over the top-level ``params`` by name. The grid's cells are the union over the sub-grids; a cell that
several sub-grids share (``re-m3dr`` seed 0 is in Table 1, Table 2 and every sensitivity curve at
its default values) runs once and lists all of its groups.

Example (``sweeps/paper.yaml`` is the real one)::

    name: paper
    datasets: [synthetic-stage2]
    seeds: [0, 1, 2]
    grids:
      table1: {recipes: [naive-fusion, re-m3dr]}
      sensitivity_gamma: {recipes: [re-m3dr], seeds: [0], params: {GAMMA_BASE: [0.5, 1.5, 3.0]}}

The file is strict: an unknown key, an undeclared parameter name, a value of the wrong kind, an
unknown recipe or data set is an error naming the file, before anything runs. A parameter set to the
notebook's own default is the same cell as leaving it out, so its key and its run are shared.

Running (``run_sweep``, ``remd sweep``): each cell executes into ``<folder>/cells/<key>/`` with
``PROFILE``, ``RUN_DIR`` (that folder) and ``WORK_DIR`` (the sweep folder, where stage-1 encoders
are shared through a locked cache: ``recipes.stage1``). A cell is finished when its results file
(``results/<notebook>.json``, written atomically by ``record.record_results``) exists; finished cells
are skipped, so rerunning an interrupted sweep redoes no work. Cells run on local worker processes,
each kernel limited to its share of the cores (oversubscribed torch threads were measured 10x slower
on our 2-core machines). A failed cell leaves ``error.txt`` in its folder; the others go on, and the
sweep raises ``SweepError`` at the end, after writing the table of the finished cells.

``collect`` gathers every recorded row into one tidy table (``results.csv``, ``results.parquet``),
one row per (cell, model), which ``04_ablations`` reads; ``summarize`` gives mean and SD over seeds.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import shutil
import sys
import time
import traceback
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import yaml

from ..experiments import compare
from ..config import ConfigError
from .runner import NOTEBOOK_DIR, execute_notebook, notebook_defaults, resolve_parameters
from ..files import atomic_path, read_json, remove_stale_temporaries, write_json, write_text
from ..paths import REPO_ROOT, display_path
from ..experiments.provenance import write as write_provenance

SWEEP_DIR = REPO_ROOT / "sweeps"
DEFAULT_NOTEBOOK = "cells/train_recipe.ipynb"
AXES = {"datasets": "DATASET", "recipes": "RECIPE", "seeds": "SEED"}
GRID_KEYS = ("name", "description", "notebook", *AXES, "params", "grids")
SUBGRID_KEYS = ("description", *AXES, "params")
SET_BY_SWEEP = ("PROFILE", "RUN_DIR", "WORK_DIR")  # never in a grid or an override
REQUIRED = ("PROFILE", "RUN_DIR", *AXES.values())  # what a cell notebook must declare
# Parameters of train_recipe that only reach stage 2: cells differing only in these share stage-1
# encoders (used to order the cells, never for correctness, which the cache lock provides).
STAGE2_ONLY = ("GAMMA_BASE", "GAMMA_MIN", "GAMMA_MAX", "WINDOW")
MAX_KEY = 100
WORKER_RETRIES = 2  # runs again of a cell whose worker process died while running it
TABLE_FIRST = ("dataset", "recipe", "seed", "groups")
TABLE_METRICS = ("profile", "epochs", "model", "test_r2", "test_mse", "test_mae", "test_stage_score", "many_mse",
                 "many_mae", "medium_mse", "medium_mae", "few_mse", "few_mae", "val_r2", "best_epoch", "seconds")
CONSTANT_IN_SUMMARY = ("dataset", "profile", "epochs")


class SweepError(RuntimeError):
    """Some cells failed. ``failed`` maps each failed cell's key to its error's first line; ``table``
    holds the finished cells' results (also written to ``results.csv``)."""

    def __init__(self, message: str, failed: dict[str, str], table: pd.DataFrame):
        super().__init__(message)
        self.failed, self.table = failed, table


@dataclass
class SubGrid:
    datasets: list[str]
    recipes: list[str]
    seeds: list[int]
    params: dict[str, list] = field(default_factory=dict)
    description: str = ""


@dataclass
class Grid:
    """A loaded grid file: ``groups`` are its sub-grids with the top-level values filled in (a
    file without ``grids:`` has one group, named after the grid); ``defaults`` are the notebook's
    parameter values, which decide what a cell's key leaves out."""

    name: str
    notebook: Path
    groups: dict[str, SubGrid]
    defaults: dict
    source: str = "<grid>"
    description: str = ""

    @property
    def swept(self) -> list[str]:
        """Names of the ``params`` of any group, in order of first mention."""
        return list(dict.fromkeys(name for g in self.groups.values() for name in g.params))


@dataclass
class Cell:
    """One execution of the cell notebook. ``params`` holds ``DATASET``, ``RECIPE``, ``SEED`` and the
    swept parameters that differ from the notebook's defaults (the sweep adds ``PROFILE``,
    ``RUN_DIR``, ``WORK_DIR``, the profile's values and overrides); ``groups`` are all the sub-grids
    that hold the cell; ``index`` is its place in the grid's order (tables list cells in it)."""

    key: str
    params: dict
    groups: tuple[str, ...]
    index: int = 0


# ----------------------------------------------------------------------------------------------
# Grid files


def grid_path(path: str | Path) -> Path:
    """``path`` as given; else relative to the repository (``sweeps/paper.yaml`` from a notebook,
    whose working folder is ``notebooks/``); else a bare name (``paper``) in ``sweeps/``."""
    path = Path(path)
    candidates = [path, REPO_ROOT / path]
    if path.parent == Path("."):
        candidates.append(SWEEP_DIR / (path.name if path.suffix else f"{path.name}.yaml"))
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    known = sorted(p.name for p in SWEEP_DIR.glob("*.yaml"))
    raise ConfigError(f"no grid file {path}; the repository's grids (in sweeps/): {known}")


def load_grid(path: str | Path) -> Grid:
    """Read and check a grid file (see the module docstring); every error names the file."""
    path = grid_path(path)
    try:  # messages and records name a repository file by its repository path
        where = path.resolve().relative_to(REPO_ROOT).as_posix()
    except ValueError:
        where = str(path)
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping of {', '.join(GRID_KEYS)}")
    _check_keys(raw, GRID_KEYS, where)
    notebook = NOTEBOOK_DIR / raw.get("notebook", DEFAULT_NOTEBOOK)
    if not notebook.exists():
        raise ConfigError(f"{where}: notebook {raw.get('notebook', DEFAULT_NOTEBOOK)!r} is not under notebooks/")
    defaults = notebook_defaults(notebook)
    missing = [p for p in REQUIRED if p not in defaults]
    if missing:
        raise ConfigError(f"{where}: the cell notebook {notebook.name} does not declare {missing}")
    name = str(raw.get("name", path.stem))
    top = {k: raw[k] for k in (*AXES, "params") if k in raw}
    subgrids = raw.get("grids") or {name: {}}
    if not isinstance(subgrids, dict):
        raise ConfigError(f"{where}: grids must map sub-grid names to mappings")
    groups = {}
    for group, values in subgrids.items():
        context = f"{where}: grids.{group}" if "grids" in raw else where
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", str(group)):
            raise ConfigError(f"{context}: a sub-grid name holds letters, digits, '_' and '-' only")
        values = values or {}
        if not isinstance(values, dict):
            raise ConfigError(f"{context}: expected a mapping of {', '.join(SUBGRID_KEYS)}")
        _check_keys(values, SUBGRID_KEYS, context)
        merged = {**top, **values, "params": {**(top.get("params") or {}), **(values.get("params") or {})}}
        groups[str(group)] = _subgrid(merged, defaults, notebook.name, context)
    return Grid(name, notebook, groups, defaults, where, str(raw.get("description", "")))


def _check_keys(values: dict, allowed: tuple, context: str) -> None:
    unknown = sorted(set(values) - set(allowed))
    if unknown:
        raise ConfigError(f"{context}: unknown key(s) {unknown}; allowed: {', '.join(allowed)}")


def _subgrid(values: dict, defaults: dict, notebook: str, context: str) -> SubGrid:
    from .. import data
    from ..experiments.recipes import recipe

    axes = {}
    for axis, kind in (("datasets", str), ("recipes", str), ("seeds", int)):
        items = values.get(axis)
        if not items or not isinstance(items, list):
            raise ConfigError(f"{context}: needs a non-empty list of {axis} (at the top level or in the sub-grid)")
        bad = [v for v in items if not isinstance(v, kind) or isinstance(v, bool)]
        if bad:
            raise ConfigError(f"{context}: {axis} must be {kind.__name__}s; got {bad}")
        axes[axis] = list(dict.fromkeys(items))
    for name in axes["datasets"]:
        try:
            data.entry(name)
        except data.CatalogError as err:
            raise ConfigError(f"{context}: {err.args[0]}") from None
    for name in axes["recipes"]:
        try:
            recipe(name)
        except ValueError as err:
            raise ConfigError(f"{context}: {err}") from None
    params = values.get("params") or {}
    if not isinstance(params, dict):
        raise ConfigError(f"{context}: params must map parameter names to lists of values")
    reserved = sorted(set(params) & {*AXES.values(), *SET_BY_SWEEP})
    if reserved:
        raise ConfigError(f"{context}: {reserved} cannot be in params: use datasets/recipes/seeds; the sweep sets "
                          f"{', '.join(SET_BY_SWEEP)}")
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        raise ConfigError(f"{context}: unknown parameter(s) {unknown}; {notebook} declares {sorted(defaults)}")
    swept = {}
    for name, items in params.items():
        items = items if isinstance(items, list) else [items]
        if not items:
            raise ConfigError(f"{context}: params.{name} has no values")
        for value in items:
            _check_kind(name, value, defaults[name], context)
        swept[name] = items
    return SubGrid(**axes, params=swept, description=str(values.get("description", "")))


def _check_kind(name: str, value, default, context: str) -> None:
    """A swept value must be of the default's kind (ints and floats mix; a None default takes any)."""
    if default is None or value is None:
        return
    number = (int, float)
    if isinstance(default, bool) or isinstance(value, bool):
        ok = isinstance(default, bool) and isinstance(value, bool)
    elif isinstance(default, number):
        ok = isinstance(value, number)
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise ConfigError(f"{context}: params.{name} = {value!r} is a {type(value).__name__}; the notebook's default "
                          f"{default!r} is a {type(default).__name__}")


def _same(a, b) -> bool:
    return a == b and isinstance(a, bool) == isinstance(b, bool)


def _fmt(value) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, (int, str)) or value is None:
        return str(value)
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def cell_key(params: dict) -> str:
    """``<dataset>__<recipe>__seed<k>`` then ``NAME=value`` for each swept parameter (sorted by
    name), e.g. ``synthetic-stage2__re-m3dr__seed0__GAMMA_BASE=3``. Deterministic and safe as a folder
    name; a key that had to be cleaned of other characters, or is longer than 100 characters, gets a
    short hash of the full text so two cells never share a key."""
    text = "__".join([str(params["DATASET"]), str(params["RECIPE"]), f"seed{params['SEED']}",
                      *(f"{k}={_fmt(v)}" for k, v in sorted(params.items()) if k not in AXES.values())])
    key = re.sub(r"[^A-Za-z0-9._=+-]", "-", text)
    if key != text or len(key) > MAX_KEY:
        key = f"{key[:MAX_KEY - 10]}__{hashlib.sha1(text.encode()).hexdigest()[:8]}"
    return key


def select_groups(grid: Grid, groups: list[str] | None) -> list[str]:
    """Sub-grid names selected by ``groups``: a name selects the sub-grid of that name and every
    sub-grid named ``<name>_...`` (``sensitivity`` selects ``sensitivity_m0``, ``sensitivity_beta``,
    ...). ``None`` selects all; a name that selects nothing is an error."""
    if not groups:
        return list(grid.groups)
    chosen = []
    for name in groups:
        found = [g for g in grid.groups if g == name or g.startswith(f"{name}_")]
        if not found:
            raise ConfigError(f"{grid.source}: no sub-grid {name!r}; it has {list(grid.groups)}")
        chosen += found
    return [g for g in grid.groups if g in chosen]


def expand(grid: Grid | str | Path, seeds: list[int] | None = None, groups: list[str] | None = None) -> list[Cell]:
    """The cells of the selected sub-grids (``select_groups``), deduplicated by key, in the grid's
    order (sub-grids as written; in each: data set, seed, recipe, then the parameter product).
    ``seeds`` replaces every sub-grid's seeds. A cell's ``groups`` lists every sub-grid holding it,
    selected or not, so a table can always find e.g. the Table-2 rows among Table-1 cells."""
    grid = grid if isinstance(grid, Grid) else load_grid(grid)
    selected = set(select_groups(grid, groups))
    cells: dict[str, Cell] = {}
    for group, sub in grid.groups.items():
        names = list(sub.params)
        for dataset, seed, name in itertools.product(sub.datasets, seeds or sub.seeds, sub.recipes):
            for combo in itertools.product(*(sub.params[n] for n in names)):
                params = {"DATASET": dataset, "RECIPE": name, "SEED": int(seed)}
                params.update({n: v for n, v in zip(names, combo) if not _same(v, grid.defaults[n])})
                key = cell_key(params)
                if key not in cells:
                    cells[key] = Cell(key, params, (), len(cells))
                if group not in cells[key].groups:
                    cells[key].groups += (group,)
    return [c for c in cells.values() if selected & set(c.groups)]


def schedule(cells: list[Cell]) -> list[Cell]:
    """Execution order: first one cell of each group of cells sharing stage-1 encoders (it trains
    them), then the cells without stage 1, then the other cells of each group, which by then mostly
    find their encoders trained instead of waiting on the cache lock."""
    from ..experiments.recipes import recipe

    leaders, single, followers, seen = [], [], [], set()
    for cell in cells:
        kind = recipe(cell.params["RECIPE"]).stage1
        if kind is None:
            single.append(cell)
            continue
        shared = (kind, *sorted((k, _fmt(v)) for k, v in cell.params.items() if k not in (*STAGE2_ONLY, "RECIPE")))
        (followers if shared in seen else leaders).append(cell)
        seen.add(shared)
    return leaders + single + followers


# ----------------------------------------------------------------------------------------------
# Running


def _result_path(run_dir: Path, notebook: Path) -> Path:
    return Path(run_dir) / "results" / f"{notebook.stem}.json"


def _finished(run_dir: Path, notebook: Path) -> dict | None:
    """The cell's recorded result, or ``None`` when it has none yet (a corrupt one is reported and
    moved aside, so the cell runs again)."""
    return read_json(_result_path(run_dir, notebook), required=("rows",))


def _threads(workers: int) -> int:
    """Each kernel's share of the cores (at least 1); an ``OMP_NUM_THREADS`` already set caps it."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    share = max(1, cores // workers)
    cap = os.environ.get("OMP_NUM_THREADS", "")
    return min(share, int(cap)) if cap.isdigit() and int(cap) > 0 else share


def _init_worker(threads: int) -> None:
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = str(threads)


def _execute_cell(notebook: str, output: str, params: dict) -> tuple[str, str] | None:
    """Run in a worker process: execute one cell with papermill. The kernel's own stdout and stderr
    (warnings, progress bars) go to ``kernel.log`` beside the output notebook. Returns ``None`` or
    ``(first line, full text)`` of the error."""
    log = Path(output).with_name("kernel.log")
    saved = [os.dup(1), os.dup(2)]
    with open(log, "w") as handle:
        os.dup2(handle.fileno(), 1)
        os.dup2(handle.fileno(), 2)
        try:
            execute_notebook(Path(notebook), Path(output), params)
            return None
        except Exception as err:  # any failure is the cell's; the sweep goes on with the others
            summary = f"{err.ename}: {err.evalue}" if hasattr(err, "ename") else f"{type(err).__name__}: {err}"
            detail = re.sub(r"\x1b\[[0-9;]*m", "", "".join(traceback.format_exception_only(type(err), err)))
            return summary.splitlines()[0] if summary.strip() else type(err).__name__, detail
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


def _settings(params: dict) -> dict:
    return {k: v for k, v in params.items() if k not in ("RUN_DIR", "WORK_DIR")}


def _plan(grid: Grid, cells: list[Cell], folder: Path, profile: str, overrides: dict) -> dict[str, dict]:
    """Papermill parameters per cell; rejects overrides of unknown or swept parameters and finished
    cells whose recorded settings differ from this run's (their results would be mixed silently)."""
    unknown = sorted(set(overrides) - set(grid.defaults))
    if unknown:
        raise ConfigError(f"unknown parameter(s) {unknown} in the overrides; {grid.notebook.name} declares "
                          f"{sorted(grid.defaults)}")
    clash = sorted(set(overrides) & {*AXES.values(), *SET_BY_SWEEP, *grid.swept})
    if clash:
        raise ConfigError(f"overrides {clash} are set by the grid {grid.source} or by the sweep itself; edit the grid")
    plans, stale = {}, []
    for cell in cells:
        run_dir = folder / "cells" / cell.key
        params = resolve_parameters(grid.notebook, profile, {**overrides, **cell.params}, run_dir)
        if "WORK_DIR" in grid.defaults:
            params["WORK_DIR"] = str(folder)
        plans[cell.key] = params
        meta = run_dir / "cell.json"
        recorded = read_json(meta, required=("settings",))
        if recorded is not None and _finished(run_dir, grid.notebook) is not None:
            before = recorded["settings"]
            changed = {k: (before.get(k), v) for k, v in _settings(params).items() if before.get(k) != v}
            changed.update({k: (v, None) for k, v in before.items() if k not in params})
            if changed:
                stale.append(f"  {cell.key}: " + ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changed.items()))
    if stale:
        raise ConfigError(f"{folder} holds finished cells run with other settings than this run's:\n" + "\n".join(stale)
                          + "\nuse another run folder (--run), or delete those cells to redo them")
    return plans


def _write_resolved_grid(grid: Grid, folder: Path, selected: list[str], seeds, profile: str, overrides: dict) -> None:
    subgrids = {name: {k: v for k, v in (("description", g.description), ("datasets", g.datasets),
                                         ("recipes", g.recipes), ("seeds", list(seeds or g.seeds)),
                                         ("params", g.params)) if v}
                for name, g in grid.groups.items() if name in selected}
    notebook = grid.notebook.relative_to(NOTEBOOK_DIR).as_posix()
    command = " ".join(["remd sweep <this file>", f"--profile {profile}",
                        *([f"--set {' '.join(f'{k}={v}' for k, v in overrides.items())}"] if overrides else [])])
    header = (f"# Resolved from {Path(grid.source).name}: the sub-grids of the last run in this folder, with its\n"
              f"# seeds. Rerun it: {command}\n")
    body = yaml.safe_dump({"name": grid.name, "notebook": notebook, "grids": subgrids}, sort_keys=False)
    write_text(folder / "grid.yaml", header + body)


def run_sweep(grid: Grid | str | Path, folder: str | Path, profile: str = "cpu", seeds: list[int] | None = None,
              groups: list[str] | None = None, overrides: dict | None = None, workers: int | None = None,
              progress: bool = True) -> pd.DataFrame:
    """Execute the selected cells of ``grid`` that are not finished in ``folder`` and return
    ``collect(folder)``; see the module docstring. ``overrides`` set other notebook parameters in
    every cell (``{"EPOCHS": 30}``). ``workers`` local processes (default: the CPU count, at most the
    number of cells to run) share the cores evenly. The returned table's ``attrs`` hold the keys of the
    cells ``executed`` and ``skipped`` (finished earlier) by this call. Raises ``SweepError`` if cells
    failed (each leaves ``cells/<key>/error.txt``), after the others finished and were collected."""
    from tqdm.auto import tqdm

    if workers is not None and workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}")
    grid = grid if isinstance(grid, Grid) else load_grid(grid)
    folder = Path(folder).resolve()  # the kernels run in notebooks/cells: paths must not be relative
    overrides = dict(overrides or {})
    cells = expand(grid, seeds, groups)
    plans = _plan(grid, cells, folder, profile, overrides)  # every check before anything runs
    selected = select_groups(grid, groups)
    folder.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(folder)
    _write_resolved_grid(grid, folder, selected, seeds, profile, overrides)
    pending, skipped = [], []
    for cell in cells:
        run_dir = folder / "cells" / cell.key
        write_json(run_dir / "cell.json", {"key": cell.key, "index": cell.index, "groups": list(cell.groups),
                                           "swept": grid.swept, "notebook": grid.notebook.name,
                                           "settings": _settings(plans[cell.key])}, indent=2)
        (skipped if _finished(run_dir, grid.notebook) is not None else pending).append(cell)
    n = max(1, min(workers or os.cpu_count() or 1, len(pending)))
    provenance = write_provenance(folder, {"grid": grid.source, "profile": profile, "seeds": seeds, "groups": selected,
                                           "overrides": overrides, "workers": n, "threads_per_worker": _threads(n),
                                           "cells": len(cells), "to_run": [c.key for c in pending]})
    executed, failed = [], {}
    if pending:
        if progress:
            tqdm.write(f"sweep {grid.name}: {len(cells)} cells, {len(skipped)} finished earlier (skipped), "
                       f"{len(pending)} to run on {n} worker(s) x {_threads(n)} thread(s); folder {display_path(folder)}")
        for cell in pending:  # each executed cell records where it came from
            write_text(folder / "cells" / cell.key / "provenance.json", provenance.read_text())
        executed, failed = _execute(grid, schedule(pending), plans, folder, n, progress)
    elif progress:
        tqdm.write(f"sweep {grid.name}: all {len(cells)} cells finished earlier; nothing to run ({display_path(folder)})")
    with warnings.catch_warnings(record=True) as caught:  # said here, in this run's terms
        warnings.simplefilter("always")
        table = collect(folder)
    others = sorted({p.parent.name for p in (folder / "cells").glob("*/cell.json")} - {c.key for c in cells}
                    - set(table.get("cell", [])))
    if caught and others and progress:
        tqdm.write(f"note: {len(others)} cell(s) of this folder outside this run have no results: {others}")
    if failed:
        lines = "\n".join(f"  {key}: {text} (see cells/{key}/error.txt)" for key, text in failed.items())
        raise SweepError(f"{len(failed)} of {len(pending)} cells failed in {folder}:\n{lines}\n"
                         f"the {len(executed) + len(skipped)} finished cells are in results.csv; rerun to retry the "
                         "failed ones", failed, table)
    table.attrs.update(executed=executed, skipped=[c.key for c in skipped])
    return table


def _execute(grid: Grid, cells: list[Cell], plans: dict, folder: Path, workers: int,
             progress: bool) -> tuple[list[str], dict[str, str]]:
    """Run ``cells`` (in this order) on ``workers`` spawned processes, each kernel with its share of
    the cores; write ``error.txt`` for each failure. Returns the executed keys and the failures.

    A worker process that dies (killed, out of memory) breaks the pool: the cells it took down are
    run again on a fresh pool, each resuming from its checkpoint, at most ``WORKER_RETRIES`` times
    for a cell that was running when it happened (cells still queued are requeued without counting).
    A kernel that dies fails its cell only (papermill reports it); rerunning the sweep resumes it.
    Ctrl-C stops the workers (their kernels exit with them) and is raised to the caller."""
    from tqdm.auto import tqdm

    executed, failed, retries, queue = [], {}, {c.key: 0 for c in cells}, list(cells)
    with tqdm(total=len(cells), desc=f"sweep {grid.name}", unit="cell", disable=not progress) as bar:
        while queue:
            broken = _run_pool(grid, queue, plans, folder, workers, progress, bar, executed, failed)
            queue = []
            for cell, was_running in broken:
                retries[cell.key] += was_running
                if retries[cell.key] > WORKER_RETRIES:
                    failed[cell.key] = f"its worker process died {retries[cell.key]} times"
                    _write_error(folder / "cells" / cell.key, cell, grid, (failed[cell.key], ""))
                    bar.update(1)
                else:
                    queue.append(cell)
            if queue and progress:
                tqdm.write(f"a worker process died; running {len(queue)} cell(s) again on new workers, each "
                           "from its last checkpoint")
    return executed, failed


def _run_pool(grid, cells, plans, folder, workers, progress, bar, executed, failed) -> list[tuple[Cell, bool]]:
    """One process pool over ``cells``; returns the cells a dead worker took down, each with whether
    it had started."""
    import multiprocessing
    from concurrent.futures.process import BrokenProcessPool

    from tqdm.auto import tqdm

    broken, started = [], time.time()
    pool = ProcessPoolExecutor(min(workers, len(cells)), mp_context=multiprocessing.get_context("spawn"),
                               initializer=_init_worker, initargs=(_threads(workers),))
    try:
        futures = {}
        for cell in cells:
            run_dir = folder / "cells" / cell.key
            (run_dir / "error.txt").unlink(missing_ok=True)
            futures[pool.submit(_execute_cell, str(grid.notebook), str(run_dir / grid.notebook.name),
                                plans[cell.key])] = cell
        for future in as_completed(futures):
            cell = futures[future]
            run_dir = folder / "cells" / cell.key
            try:
                error = future.result()
            except BrokenProcessPool:
                log = run_dir / "kernel.log"
                broken.append((cell, log.exists() and log.stat().st_mtime >= started))
                continue
            except Exception as err:
                error = (f"{type(err).__name__}: {err}", traceback.format_exc())
            result = _finished(run_dir, grid.notebook) if error is None else None
            if error is None and result is None:
                error = (f"the notebook ran but recorded no {_result_path(run_dir, grid.notebook).relative_to(run_dir)}",
                         "")
            bar.update(1)
            if error:
                failed[cell.key] = error[0]
                _write_error(run_dir, cell, grid, error)
                line = f"{cell.key}: FAILED, {error[0]}"
            else:
                executed.append(cell.key)
                shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)  # the result is recorded
                rows = result["rows"]
                line = f"{cell.key}: " + ", ".join(f"test R2 {r['test_r2']:.3f}" + (f" [{r['model']}]" if len(rows) > 1
                                                                                   else "") for r in rows)
            bar.set_postfix_str(line[:70])
            if progress:
                tqdm.write(line)
    except KeyboardInterrupt:
        for process in list(getattr(pool, "_processes", {}).values()):  # kernels exit when their worker does
            process.terminate()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return broken


def _write_error(run_dir: Path, cell: Cell, grid: Grid, error: tuple[str, str]) -> None:
    write_text(run_dir / "error.txt", f"cell {cell.key} failed (notebook {run_dir / grid.notebook.name}, kernel output "
                                      f"in kernel.log)\n{error[0]}\n\n{error[1]}")


# ----------------------------------------------------------------------------------------------
# The table


def collect(folder: str | Path) -> pd.DataFrame:
    """One tidy row per (cell, model) from every finished cell under ``folder/cells``: ``dataset,
    recipe, seed, groups`` (the sub-grids holding the cell, ``;``-joined), each swept parameter at its
    effective value (as the notebook recorded it), ``profile, epochs, model``, the metrics (test R2,
    MSE, MAE, STAGE score, per-region MSE and MAE, validation R2, best epoch, seconds), any other
    recorded metric, and ``cell`` (the key). Rows follow the grid's order. Writes ``results.csv`` and
    ``results.parquet`` in ``folder``; warns naming cells that have no results (yet)."""
    folder = Path(folder)
    rows, missing, swept = [], [], []
    for meta_path in sorted((folder / "cells").glob("*/cell.json")):
        meta = read_json(meta_path, required=("key", "swept", "notebook", "settings", "groups", "index"))
        if meta is None:
            continue
        swept += [s for s in meta["swept"] if s not in swept]
        result_path = _result_path(meta_path.parent, Path(meta["notebook"]))
        result = _finished(meta_path.parent, Path(meta["notebook"]))
        if result is None:
            missing.append(meta["key"])
            continue
        params = result.get("parameters", {})
        settings = meta["settings"]
        for row in result["rows"]:
            if row["recipe"] != settings["RECIPE"] or row["seed"] != settings["SEED"]:
                raise ConfigError(f"{result_path}: a row of recipe {row['recipe']!r} seed {row['seed']} in the cell of "
                                  f"recipe {settings['RECIPE']!r} seed {settings['SEED']}")
            out = {"dataset": params.get("DATASET", settings["DATASET"]), "recipe": row["recipe"], "seed": row["seed"],
                   "groups": ";".join(meta["groups"]), "profile": params.get("PROFILE", settings.get("PROFILE")),
                   "_index": meta["index"]}
            out.update({k: v for k, v in row.items() if k not in ("recipe", "seed", "test_predictions")})
            out["cell"] = meta["key"]
            out["_params"] = {**settings, **params}
            rows.append(out)
    if missing:
        warnings.warn(f"{len(missing)} cell(s) in {folder} have no results (failed or not run yet): {missing}",
                      stacklevel=2)
    for row in rows:  # every swept parameter of any cell, at each cell's effective value
        row.update({name: row["_params"].get(name) for name in swept})
    table = pd.DataFrame(rows)
    if not table.empty:
        table = table.sort_values(["_index", "cell"], kind="stable").drop(columns=["_index", "_params"])
        table = table.reset_index(drop=True)
    first = [*TABLE_FIRST, *swept, *TABLE_METRICS]
    columns = [c for c in first if c in table] + [c for c in table if c not in first and c != "cell"] + ["cell"]
    table = table.reindex(columns=columns)
    for path, write in ((folder / "results.csv", lambda p: table.to_csv(p, index=False)),
                        (folder / "results.parquet", lambda p: table.to_parquet(p, index=False))):
        with atomic_path(path) as tmp:
            write(tmp)
    return table


def summarize(table: pd.DataFrame, by: tuple[str, ...] = ("recipe", "model")) -> pd.DataFrame:
    """Mean and SD over seeds of each metric per ``by`` group, and the ``seeds`` count (the shared
    ``compare.summarize``). Refuses to average rows that differ in a swept parameter (an UPPER_CASE
    column), the data set, the profile or the epochs: add that column to ``by`` or filter the table
    first (e.g. ``table[table.groups.str.contains("table1")]``)."""
    by = tuple(by)
    varying = [c for c in table if (c.isupper() or c in CONSTANT_IN_SUMMARY) and c not in by
               and (table.groupby(list(by), sort=False, dropna=False)[c].nunique(dropna=False) > 1).any()]
    if varying:
        raise ValueError(f"rows of one {by} group differ in {varying}; add them to `by` or select rows first")
    return compare.summarize(table, by)


def group_summaries(table: pd.DataFrame, groups: list[str] | None = None) -> dict[str, pd.DataFrame]:
    """``summarize`` per sub-grid (``groups``: names as in the table, default all, in order of first
    appearance), by recipe, model and whatever varies within the sub-grid among the swept parameters,
    the data set, the profile and the epochs (so rows of different settings are never averaged)."""
    if table.empty:
        return {}
    names = list(dict.fromkeys(g for text in table["groups"] for g in text.split(";")))
    out = {}
    for name in groups or names:
        rows = table[table["groups"].str.split(";").apply(lambda gs, name=name: name in gs)]
        if rows.empty:
            continue
        varying = [c for c in rows if (c.isupper() or c in CONSTANT_IN_SUMMARY) and rows[c].nunique(dropna=False) > 1]
        order = rows["recipe"].map({r: i for i, r in enumerate(dict.fromkeys(rows["recipe"]))})
        rows = rows.assign(_recipe=order).sort_values(["_recipe", *varying], kind="stable")  # curves in order
        out[name] = summarize(rows.drop(columns="_recipe"), ("recipe", "model", *varying))
    return out
