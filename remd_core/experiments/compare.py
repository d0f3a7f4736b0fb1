"""``remd compare``: recipes x seeds on one data set, in this process, through the grid engine
(``engine``) and its one results store (``results``).

The cells of a comparison are a grid of one group (the data set, the recipes, the seeds); each runs
here, on the data set already in memory (``executors.InlineExecutor``), and writes its rows to
``<run>/cells/<dataset>__<recipe>__seed<k>/results/compare.json`` (plus ``history.csv``) as soon as it
finishes; a rerun of the same run folder skips finished cells, so an interrupted comparison loses no
finished work, and refuses finished cells of other training settings. A cell being trained
checkpoints in its folder (stage 1 inside its cache, ``recipes.stage1``), so a rerun continues it from
its last checkpoint; the checkpoints are removed once the cell's result is written. ``results.csv``
holds one row per (recipe, model, seed); ``summary.csv`` the mean and standard deviation over seeds of
every metric, overall and per region; where the data set carries patient attributes (FairVision's race,
gender, ethnicity), ``patient_groups.csv`` and ``equity.csv`` the results per group
(``patient_groups``).
"""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path

import pandas as pd

from ..data.format import MultimodalDataset
from ..files import atomic_path
from ..training import TrainConfig
from .engine import run_grid
from .grid import Grid, SubGrid
from .patient_groups import results_by_group
from .recipes import recipes_for, run_recipe
from .results import ResultStore, summarize

RESULT_NAME = "compare"


def comparison_grid(dataset: MultimodalDataset, recipes: list[str], seeds: list[int]) -> Grid:
    return Grid(f"compare-{dataset.name}", {"compare": SubGrid([dataset.name], list(recipes), list(seeds))}, {})


def run_cell(dataset: MultimodalDataset, name: str, config: TrainConfig, store: ResultStore, key: str,
             workdir: Path, progress: bool, checkpoint_every: int, log) -> None:
    """Train one (recipe, seed) cell and record its rows and training history in the store."""
    checkpoints = store.cell_dir(key) / "checkpoints"
    if (checkpoints / "last.pt").exists():
        log(f"{name} seed {config.seed}: continuing from its checkpoint")
    rows, result = run_recipe(name, dataset, config, workdir, progress, checkpoint_dir=checkpoints,
                              checkpoint_every=checkpoint_every)
    if result is not None:
        with atomic_path(store.cell_dir(key) / "history.csv") as tmp:
            result.history.to_csv(tmp, index=False)
    rows = [{**row, "dataset": dataset.name} for row in rows]
    store.write_result(key, rows, {"DATASET": dataset.name, "RECIPE": name, "SEED": config.seed},
                       test={"ids": list(dataset.test.ids), "y": dataset.test.y.tolist()})
    for row in rows:
        log(f"{name} [{row['model']}] seed {config.seed}: test R2 {row['test_r2']:.3f}  MSE {row['test_mse']:.2f}  "
            f"MAE {row['test_mae']:.2f}  ({row['seconds']:.0f} s)")


def compare(dataset: MultimodalDataset, recipes: list[str] | None, seeds: list[int], base: TrainConfig, folder: Path,
            progress: bool = True, log=print, checkpoint_every: int = 0) -> pd.DataFrame:
    """Run every (recipe, seed) cell not finished in ``folder``; see the module docstring.
    ``checkpoint_every`` N > 0 also checkpoints every N steps (else at epoch ends only). Returns the
    table of its cells (``results.collect``, with each row's test predictions); a failed cell
    raises after the others ran. The steps are the engine's (``engine.run_grid``); a cell's settings
    are its data set's and training's, its task ``run_cell``."""
    folder = Path(folder)
    store = ResultStore(folder, RESULT_NAME)
    training = {k: v for k, v in asdict(base).items() if k != "seed"}

    def settings(cell):
        return {**cell.params, "data": asdict(dataset.config), "train": training}

    def task(cell):
        return run_cell, (dataset, cell.params["RECIPE"], replace(base, seed=cell.params["SEED"]), store, cell.key,
                          folder, progress, checkpoint_every, log)

    def announce(_executor, _pending, done):
        for cell in done:
            log(f"{cell.params['RECIPE']} seed {cell.params['SEED']}: done earlier, skipped")

    grid = comparison_grid(dataset, recipes_for(dataset, recipes), seeds)
    results, _ = run_grid(grid, store, settings, task, title=f"compare {dataset.name}", announce=announce,
                          whole_folder=False, predictions=True, progress=False)
    with atomic_path(folder / "summary.csv") as tmp:
        summarize(results).to_csv(tmp)
    if not results.empty:  # per patient group, where the data set carries attributes (patient_groups)
        results_by_group(folder, dataset, keys=list(results["cell"].unique()))
    return results
