"""Where a testbed cell's seconds go, through each path, at each scale, in one run.

The cell: one setting of ``sweeps/fusion_fails.yaml`` (the default data) at one seed, its six
recipes (``unimodal-oct``, ``unimodal-fundus``, ``naive-fusion``, ``mmpareto``, ``re-m3dr``,
``pretrained-naive-fusion``), with the grid's probe cadence. The paths:

- ``compare``: in this process (``experiments.compare``, what ``remd compare`` runs), on a data set
  loaded here; its phases are timed by wrapping the library's functions in this process
  (``PhaseTimer``), so the same script times an older checkout of the library too.
- ``sweep``: ``remd sweep`` on a one-setting grid with ``--workers`` Dask workers, each cell as a
  function in a warm worker (``function``; where the library has it) or as a papermill execution of
  the cell notebook (``notebook``). A cell's wall time is from its start (the ``attempts`` file the
  engine writes) to its results file; inside it, a function cell's phases are the ones it recorded
  (``remd_core.timing``), a notebook's are papermill's cell durations: the first code cells
  (imports and ``setup``) plus the kernel's start are "kernel start and imports", the data cell is
  "data", the training cell "training" (stage 1, stage 2, probes and evaluation together).

Every path starts from an empty run folder and an empty data cache, so data generation and every
stage 1 are paid in each. Prints one table, writes ``outputs/bench/cell.csv``. Record ``uptime``'s
load beside the numbers: a busy machine understates everything.

    .venv/bin/python benchmarks/bench_cell.py --scales smoke,reduced,cpu8,cpu
    .venv/bin/python benchmarks/bench_cell.py --scales testbed --paths compare,function,notebook
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

import pandas as pd

RECIPES = ["unimodal-oct", "unimodal-fundus", "naive-fusion", "mmpareto", "re-m3dr", "pretrained-naive-fusion"]
PHASES = ["kernel start and imports", "data", "stage1", "stage2", "probes", "evaluation", "checkpoints", "writing",
          "training", "other"]


class PhaseTimer:
    """Exclusive phase times of the library's functions, by wrapping them in this process: a fit inside
    ``stage1`` is stage 1, any other fit is stage 2; probes, predictions, checkpoints and result files
    nested in them count as their own phase."""

    def __init__(self):
        self.totals, self.stack, self.lock = defaultdict(float), [], threading.Lock()
        self.undo = []

    def wrap(self, owner, name: str, phase):
        original = getattr(owner, name)

        @functools.wraps(original)
        def timed(*args, **kwargs):
            label = phase() if callable(phase) else phase
            self.stack.append(0.0)
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - start
                nested = self.stack.pop()
                self.totals[label] += elapsed - nested
                if self.stack:
                    self.stack[-1] += elapsed
        setattr(owner, name, timed)
        self.undo.append((owner, name, original))

    def install(self):
        from remd_core.training import checkpoint, evaluate, loop
        from remd_core.diagnosis import probe
        from remd_core.experiments import recipes, results

        inside_stage1 = []

        def stage1_phase():
            return "stage1" if inside_stage1 else "stage2"

        original_stage1 = recipes.stage1

        @functools.wraps(original_stage1)
        def marked(*args, **kwargs):
            inside_stage1.append(True)
            try:
                return original_stage1(*args, **kwargs)
            finally:
                inside_stage1.pop()
        recipes.stage1 = marked
        self.undo.append((recipes, "stage1", original_stage1))
        self.wrap(recipes, "fit", stage1_phase)
        self.wrap(probe.Probe, "evaluate", "probes")
        self.wrap(loop, "predict", "evaluation")  # the per-epoch validation
        self.wrap(evaluate, "predict", "evaluation")  # the final report
        self.wrap(evaluate, "predict_intervals", "evaluation")
        self.wrap(checkpoint.Checkpoints, "save", "checkpoints")
        self.wrap(results.ResultStore, "write_result", "writing")
        return self

    def remove(self):
        for owner, name, original in reversed(self.undo):
            setattr(owner, name, original)


def import_seconds() -> float:
    """A fresh interpreter's import of what a cell uses (median of 3)."""
    code = ("import time; t = time.perf_counter(); import remd_core.experiments.compare, remd_core.workbench.setup, "
            "remd_core.workbench.record; print(time.perf_counter() - t)")
    runs = sorted(float(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                                       text=True).stdout) for _ in range(3))
    return runs[1]


SCALES = {"cpu8": ("cpu", {"N_BSCANS": 8})}
"""Scales that are a profile with other values: ``cpu8`` is the cpu profile before it took 4 B-scans (issue 21),
the scale of the 'before' measurements."""


def scale_settings(scale: str, probe_every: int | None) -> dict:
    from remd_core.workbench.runner import PROFILES, fill_defaults

    profile, changed = SCALES.get(scale, (scale, {}))
    values = {k: PROFILES[profile][k] for k in ("N_EYES", "IMAGE_SIZE", "N_BSCANS", "EPOCHS", "ARCH", "WIDTH",
                                                 "PRECISION", "TRAINING")}
    values.update(changed)
    if probe_every is None:
        values.update(fill_defaults({"PROBE_EVERY": None}, profile))
    else:
        values["PROBE_EVERY"] = probe_every
    return values


def run_compare(scale: str, settings: dict, seed: int, folder: Path) -> dict:
    from remd_core.experiments.compare import compare
    from remd_core.workbench.setup import load_dataset, train_config

    timer = PhaseTimer().install()
    try:
        start = time.perf_counter()
        dataset = load_dataset("synthetic-stage2", settings["N_EYES"], settings["IMAGE_SIZE"], settings["N_BSCANS"])
        data = time.perf_counter() - start
        base = train_config(settings["EPOCHS"], settings["ARCH"], settings["WIDTH"], seed=seed,
                            training=settings["TRAINING"], precision=settings["PRECISION"],
                            probe_every=settings["PROBE_EVERY"])
        compare(dataset, RECIPES, [seed], base, folder, progress=False, log=lambda *_: None)
        wall = time.perf_counter() - start
    finally:
        timer.remove()
    phases = dict(timer.totals)
    phases["data"] = data
    phases["kernel start and imports"] = import_seconds()
    phases["other"] = wall - data - sum(v for k, v in timer.totals.items())
    return {"wall": wall + phases["kernel start and imports"], "phases": phases}


def cell_wall(cell: Path) -> float:
    result = cell / "results" / "train_recipe.json"
    return result.stat().st_mtime - (cell / "attempts").stat().st_mtime


def notebook_phases(notebook: Path, wall: float) -> dict:
    """Papermill's cell durations: the cells before the data cell are kernel start and imports."""
    cells = json.loads(notebook.read_text())["cells"]
    code = [c for c in cells if c["cell_type"] == "code"]
    durations = [c["metadata"].get("papermill", {}).get("duration") or 0.0 for c in code]
    sources = ["".join(c["source"]) for c in code]
    data = next(i for i, s in enumerate(sources) if "dataset =" in s)
    training = next(i for i, s in enumerate(sources) if "run_recipe(" in s or "cell_training(" in s)
    writing = sum(durations[training + 1:])
    return {"kernel start and imports": wall - sum(durations[data:]), "data": durations[data],
            "training": durations[training], "writing": writing}


def run_sweep_path(scale: str, settings: dict, seed: int, folder: Path, workers: int, notebooks: bool) -> dict:
    from remd_core.workbench import sweep

    grid = folder.parent / f"{folder.name}.yaml"
    swept = {"PROBE_EVERY": [settings["PROBE_EVERY"]]}
    grid.write_text(json.dumps({"name": "bench", "datasets": ["synthetic-stage2"], "recipes": RECIPES,
                                "seeds": [seed], "params": swept}))
    overrides = {k: v for k, v in settings.items() if k not in swept}
    options = {"notebooks": notebooks} if has_function_cells() else {}
    start = time.perf_counter()
    sweep.run_sweep(grid, folder, profile=SCALES.get(scale, (scale,))[0], seeds=[seed], overrides=overrides, workers=workers,
                    progress=False, **options)
    wall = time.perf_counter() - start
    phases = defaultdict(float)
    cells = sorted(p.parent for p in folder.glob("cells/*/attempts"))
    for cell in cells:
        seconds = cell_wall(cell)
        if (cell / "train_recipe.ipynb").exists():
            recorded = notebook_phases(cell / "train_recipe.ipynb", seconds)
        else:
            recorded = json.loads((cell / "results" / "train_recipe.json").read_text())["seconds"]
            recorded["other"] = seconds - sum(recorded.values())
        for k, v in recorded.items():
            phases[k] += v
    cell_sum = sum(cell_wall(c) for c in cells)
    phases["executor (Dask start, scheduling, idle)"] = wall * workers - cell_sum
    return {"wall": wall, "phases": dict(phases), "cell_seconds": cell_sum}


def has_function_cells() -> bool:
    from remd_core.workbench import sweep

    return "notebooks" in sweep.run_sweep.__code__.co_varnames


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scales", default="smoke,reduced,cpu")
    parser.add_argument("--paths", default="compare,function,notebook", help="compare, function and/or notebook")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--probe-every", type=int, default=None,
                        help="probe cadence of every path (default: the profile's, else the library's)")
    parser.add_argument("--workers", type=int, default=1, help="Dask workers of the sweep paths")
    parser.add_argument("--label", default="", help="a name for this checkout in the table (before, after)")
    parser.add_argument("--out", default="outputs/bench/cell.csv")
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-cell-") as scratch:
        os.environ["REMD_OUTPUTS"] = scratch  # an empty data cache for every path (set before remd_core reads it)
        for scale in args.scales.split(","):
            settings = scale_settings(scale, args.probe_every)
            for path in args.paths.split(","):
                shutil.rmtree(Path(scratch) / "cache", ignore_errors=True)
                folder = Path(scratch) / f"{scale}-{path}"
                print(f"[{scale}] {path}: {len(RECIPES)} recipes, seed {args.seed}, probes every "
                      f"{settings['PROBE_EVERY']} steps ...", flush=True)
                if path == "function" and not has_function_cells():
                    print("   this checkout runs every sweep cell as a notebook: no function path", flush=True)
                    continue
                if path == "compare":
                    out = run_compare(scale, settings, args.seed, folder)
                else:
                    out = run_sweep_path(scale, settings, args.seed, folder, args.workers, path == "notebook")
                row = {"label": args.label, "scale": scale, "path": path, "probe_every": settings["PROBE_EVERY"],
                       "wall_s": round(out["wall"], 1), **{k: round(v, 1) for k, v in out["phases"].items()}}
                rows.append(row)
                print("   " + ", ".join(f"{k} {v}" for k, v in row.items() if k not in ("label", "scale", "path")),
                      flush=True)
    table = pd.DataFrame(rows)
    order = ["label", "scale", "path", "probe_every", "wall_s", *[p for p in PHASES if p in table],
             *[c for c in table if c not in PHASES and c not in ("label", "scale", "path", "probe_every", "wall_s")]]
    table = table[order]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    earlier = pd.read_csv(out) if out.exists() else pd.DataFrame()  # runs with other phases: align by column
    pd.concat([earlier, table], ignore_index=True).to_csv(out, index=False)
    print(table.to_string(index=False))
    print(f"load average: {os.getloadavg()}; appended to {out}")


if __name__ == "__main__":
    main()
