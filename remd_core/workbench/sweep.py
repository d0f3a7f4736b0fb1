"""Sweeps: a grid of parameterised notebook executions, run in parallel, resumed, collected.

A grid file (``sweeps/*.yaml``) names a cell notebook (default ``notebooks/cells/train_recipe.ipynb``)
and the values of its parameters: ``datasets`` (parameter ``DATASET``), ``recipes`` (``RECIPE``),
``seeds`` (``SEED``) and ``params`` (any other declared parameter -> list of values). A cell of the
grid is one combination; it runs as the notebook's steps called as a function in a warm worker
process (``cell.run_train_recipe``), or, with ``notebooks=True`` (``remd sweep --notebooks``), as one
papermill execution of the notebook, which leaves an executed notebook in the cell's folder. ``grids:`` holds named
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

Running (``run_sweep``, ``remd sweep``) goes through the grid engine (``experiments.engine.run_grid``,
which ``remd compare`` shares): each
cell executes into ``<folder>/cells/<key>/`` with ``PROFILE``, ``RUN_DIR`` (that folder) and
``WORK_DIR`` (the sweep folder, where stage-1 encoders are shared through a locked cache:
``recipes.stage1``), as a Dask task (``experiments.executors``: an embedded local cluster, an existing
cluster, or Slurm). A cell is finished when its results file (``results/<notebook>.json``, written
atomically by ``record.record_results``) exists; finished cells are skipped, so rerunning an
interrupted sweep redoes no work, whichever process died. A failed cell leaves ``error.txt`` in its
folder; the others go on, and the sweep raises ``SweepError`` at the end, after writing the table of
the finished cells (``experiments.results``: ``collect``, ``summarize``, ``group_summaries``,
``sensitivity``), which ``04_ablations`` reads.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import yaml

from ..config import ConfigError, from_dict
from ..experiments.engine import run_grid
from ..experiments.executors import open_dask
from ..experiments.grid import AXES, SUBGRID_KEYS, Grid, check_keys, expand, schedule, select_groups, subgrid
from ..experiments.provenance import write as write_provenance
from ..experiments.results import ResultStore, collect, distinct, group_summaries, sensitivity, summarize
from ..files import write_text
from ..paths import REPO_ROOT, display_path, outputs_dir
from .cell import cell_function
from .profiles import LIBRARY_SETTINGS, Scale
from .runner import NOTEBOOK_DIR, execute_notebook, notebook_defaults, resolve_parameters

__all__ = ["SweepError", "collect", "expand", "full_sweep_or_run", "grid_path", "group_summaries", "load_grid",
           "run_sweep", "select_groups", "sensitivity", "summarize"]

SWEEP_DIR = REPO_ROOT / "sweeps"
DEFAULT_NOTEBOOK = "cells/train_recipe.ipynb"
GRID_KEYS = ("name", "description", "notebook", *AXES, "params", "grids")
SET_BY_SWEEP = ("PROFILE", "RUN_DIR", "WORK_DIR")  # never in a grid or an override
REQUIRED = ("PROFILE", "RUN_DIR", *AXES.values())  # what a cell notebook must declare
# Notebook parameters that reach stage 2 only: cells differing only in these share stage-1 encoders.
STAGE2_ONLY = {name for name, (config, _) in LIBRARY_SETTINGS.items() if config == "sgm"}


class SweepError(RuntimeError):
    """Some cells failed. ``failed`` maps each failed cell's key to its error's first line; ``table``
    holds the finished cells' results (also written to ``results.csv``)."""

    def __init__(self, message: str, failed: dict[str, str], table: pd.DataFrame):
        super().__init__(message)
        self.failed, self.table = failed, table


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
    import re

    path = grid_path(path)
    try:  # messages and records name a repository file by its repository path
        where = path.resolve().relative_to(REPO_ROOT).as_posix()
    except ValueError:
        where = str(path)
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping of {', '.join(GRID_KEYS)}")
    check_keys(raw, GRID_KEYS, where)
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
        check_keys(values, SUBGRID_KEYS, context)
        merged = {**top, **values, "params": {**(top.get("params") or {}), **(values.get("params") or {})}}
        groups[str(group)] = subgrid(merged, defaults, SET_BY_SWEEP, context, notebook.name)
    return Grid(name, groups, defaults, notebook, where, str(raw.get("description", "")))


def check_settings(params: dict, context: str) -> None:
    """Build the config dataclasses from a cell's library settings (``LIBRARY_SETTINGS``), so that
    a value a config rejects (``GAMMA_MIN`` above ``GAMMA_MAX``, a negative margin) fails before any
    cell runs, naming the cell."""
    from ..optim.sgm import SGMConfig
    from ..training import TrainConfig

    for config, cls in (("train", TrainConfig), ("sgm", SGMConfig)):
        values = {field: params[name] for name, (c, field) in LIBRARY_SETTINGS.items()
                  if c == config and params.get(name) is not None}
        try:
            from_dict(cls, values, context=context)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"{context}: {err}") from None


def execute_cell(notebook: str, output: str, params: dict, as_notebook: bool = True) -> tuple[str, str] | None:
    """One cell, on a worker: a papermill execution of the cell notebook (its kernel's output in
    ``kernel.log`` beside it), or, with ``as_notebook=False``, the notebook's steps as a function in
    the worker process itself (``cell.CELL_FUNCTIONS``: the same files, no kernel to start and no
    imports to repeat). Returns ``None``, or the error's first line and text."""
    from ..experiments.engine import describe_error
    from ..experiments.executors import pin_gpu

    pin_gpu()
    output = Path(output)
    try:
        if as_notebook:
            execute_notebook(Path(notebook), output, params, kernel_log=output.with_name("kernel.log"))
        else:
            cell_function(notebook)(params)
    except Exception as err:  # the cell's failure, reported by the engine; the others go on
        return describe_error(err)
    return None


def _settings(params: dict) -> dict:
    return {k: v for k, v in params.items() if k not in ("RUN_DIR", "WORK_DIR")}


def _check_overrides(grid: Grid, overrides: dict) -> None:
    """Overrides must name parameters the cell notebook declares, and none the grid or the sweep sets."""
    unknown = sorted(set(overrides) - set(grid.defaults))
    if unknown:
        raise ConfigError(f"unknown parameter(s) {unknown} in the overrides; {grid.notebook.name} declares "
                          f"{sorted(grid.defaults)}")
    clash = sorted(set(overrides) & {*AXES.values(), *SET_BY_SWEEP, *grid.swept})
    if clash:
        raise ConfigError(f"overrides {clash} are set by the grid {grid.source} or by the sweep itself; edit the grid")


def _plan(grid: Grid, cell, folder: Path, profile: str, overrides: dict) -> dict:
    """The cell's papermill parameters; a setting its config rejects is an error naming the cell."""
    params = resolve_parameters(grid.notebook, profile, {**overrides, **cell.params}, folder / "cells" / cell.key)
    check_settings(params, f"{grid.source}: cell {cell.key}")
    if "WORK_DIR" in grid.defaults:
        params["WORK_DIR"] = str(folder)
    return params


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
              progress: bool = True, scheduler: str | None = None, slurm: str | None = None,
              tls: dict | None = None, executor=None, notebooks: bool = False) -> pd.DataFrame:
    """Execute the selected cells of ``grid`` that are not finished in ``folder`` and return
    ``collect(folder)``; see the module docstring. ``overrides`` set other notebook parameters in
    every cell (``{"EPOCHS": 30}``). The cells run on Dask (``executors.open_dask``): ``workers``
    local processes (default: the CPU count, at most the number of cells to run), or the cluster at
    ``scheduler``, or a Slurm cluster of profile ``slurm``; or on ``executor``, one already open
    (``experiments.executors``; the caller closes it). A cell notebook with a function
    (``cell.CELL_FUNCTIONS``) runs as that function in the worker; ``notebooks=True`` executes the
    notebook for every cell instead (an executed notebook per cell, at 4-5 s more a cell). The returned table's ``attrs`` hold the
    keys of the cells ``executed`` and ``skipped`` (finished earlier) by this call. Raises
    ``SweepError`` if cells failed (each leaves ``cells/<key>/error.txt``), after the others finished
    and were collected. The steps (checks, metadata, resuming, collecting) are the engine's
    (``engine.run_grid``); what is the sweep's own: each cell's papermill parameters, ``grid.yaml``
    and ``provenance.json``, the Dask executor, and the order that trains shared stage-1 encoders first."""
    from tqdm.auto import tqdm

    if workers is not None and workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}")
    grid = grid if isinstance(grid, Grid) else load_grid(grid)
    folder = Path(folder).resolve()  # the kernels run in notebooks/cells: paths must not be relative
    overrides = dict(overrides or {})
    selected = select_groups(grid, groups)
    _check_overrides(grid, overrides)
    say = tqdm.write if progress else (lambda _line: None)
    store = ResultStore(folder, grid.notebook.stem)
    plans = {}  # each cell's papermill parameters

    def settings(cell):
        plans[cell.key] = _plan(grid, cell, folder, profile, overrides)
        return _settings(plans[cell.key])

    as_notebook = notebooks or cell_function(grid.notebook) is None

    def task(cell):
        output = store.cell_dir(cell.key) / grid.notebook.name
        return execute_cell, (str(grid.notebook), str(output), plans[cell.key], as_notebook)

    def announce(executor, pending, done):
        if executor is None:
            say(f"sweep {grid.name}: all {len(done)} cells finished earlier; nothing to run ({display_path(folder)})")
            return
        provenance = write_provenance(folder, {"grid": grid.source, "profile": profile, "seeds": seeds,
                                               "groups": selected, "overrides": overrides,
                                               "executor": executor.description, "cells": len(pending) + len(done),
                                               "to_run": [c.key for c in pending]})
        for cell in pending:  # each executed cell records where it came from
            write_text(store.cell_dir(cell.key) / "provenance.json", provenance.read_text())
        say(f"sweep {grid.name}: {len(pending) + len(done)} cells, {len(done)} finished earlier (skipped), "
            f"{len(pending)} to run on {executor.description}; folder {display_path(folder)}")

    def failure(outcome, table):
        lines = "\n".join(f"  {key}: {text} (see cells/{key}/error.txt)" for key, text in outcome.failed.items())
        ran = len(outcome.executed) + len(outcome.failed)
        return SweepError(f"{len(outcome.failed)} of {ran} cells failed in {folder}:\n{lines}\n"
                          f"the {len(outcome.executed) + len(outcome.skipped)} finished cells are in results.csv; "
                          "rerun to retry the failed ones", outcome.failed, table)

    gpu = profile == "gpu"  # the paper's scale: each cell asks for a GPU
    table, outcome = run_grid(
        grid, store, settings, task, title=f"sweep {grid.name}", seeds=seeds, groups=groups, executor=executor,
        open_executor=lambda n: open_dask(workers, scheduler, slurm, gpu=gpu, tls=tls, cells=n, log=say),
        order=lambda pending: schedule(pending, STAGE2_ONLY),
        prepare=lambda: _write_resolved_grid(grid, folder, selected, seeds, profile, overrides),
        announce=announce, failure=failure, progress=progress)
    table.attrs.update(executed=outcome.executed, skipped=outcome.skipped)
    return table


def full_sweep_or_run(grid: Grid, scale: Scale, folder: str | Path, full_sweep: str | None = None,
                      groups: list[str] | None = None, workers: int | None = None,
                      **options) -> tuple[pd.DataFrame, Path, str]:
    """What a notebook over a grid (04, 06) shows: ``(table, folder of its cells, where it comes from)``.
    The table of the full sweep ``outputs/<full_sweep>`` when it holds one (``results.csv``: a
    ``remd sweep`` of the grid, at a scale this machine cannot run in a notebook's time); else, or
    with ``full_sweep=None``, the grid's sub-grids ``groups`` run at ``scale`` into ``folder``
    (``run_sweep``: resumed if it holds finished cells; ``options`` go to it). The third value is a
    sentence for the notebook's captions: the full sweep's profile, epochs and seeds, or this run's
    scale."""
    if full_sweep:
        results = outputs_dir() / full_sweep / "results.csv"
        if results.exists():
            table = pd.read_csv(results)
            return table, results.parent, (f"full sweep outputs/{full_sweep}: profile {distinct(table['profile'])}, "
                                           f"{distinct(table['epochs'])} epochs, seeds {distinct(table['seed'])}")
    if scale.profile is None:
        raise ConfigError("the scale names no profile: the sweep's cells take what the scale leaves unset from it")
    table = run_sweep(grid, folder, profile=scale.profile, seeds=list(scale.seeds) if scale.seeds else None,
                      groups=groups, overrides=scale.overrides(), workers=workers, **options)
    return table, Path(folder), f"this run's sweep ({scale.label()})"
