"""Run a list of recipes over several seeds on one data set and collect one tidy table.

Each (recipe, seed) cell is written to ``<run>/cells/<recipe>-seed<k>.json`` as soon as it
finishes, and a rerun of the same run folder skips finished cells, so an interrupted comparison
loses no finished work. A cell being trained checkpoints under ``<run>/checkpoints/<recipe>-seed<k>/``
(stage 1 inside its cache, ``recipes.stage1``), so a rerun continues it from its last checkpoint;
the checkpoints are removed once the cell's result is written. A result file that is corrupt is
reported, moved aside and its cell run again. ``results.csv`` holds one row per (recipe, model, seed); ``summary.csv``
the mean and standard deviation over seeds of every metric, overall and per region.
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import pandas as pd

from ..data.format import MultimodalDataset
from ..files import atomic_path, read_json, remove_stale_temporaries, write_json
from .recipes import recipes_for, run_recipe
from ..trainer import TrainConfig

RESULT_KEYS = ("recipe", "model", "seed", "test_r2")
SUMMARY_METRICS = ("test_r2", "test_mse", "test_mae", "test_stage_score", "many_mse", "medium_mse", "few_mse",
                   "many_mae", "medium_mae", "few_mae")


def cell_path(folder: Path, recipe: str, seed: int) -> Path:
    return Path(folder) / "cells" / f"{recipe}-seed{seed}.json"


def compare(dataset: MultimodalDataset, recipes: list[str] | None, seeds: list[int], base: TrainConfig, folder: Path,
            progress: bool = True, log=print, checkpoint_every: int = 0) -> pd.DataFrame:
    """Run every (recipe, seed) cell not finished in ``folder``; see the module docstring.
    ``checkpoint_every`` N > 0 also checkpoints every N steps (else at epoch ends only)."""
    folder = Path(folder)
    remove_stale_temporaries(folder)
    names = recipes_for(dataset, recipes)
    for seed in seeds:
        for name in names:
            path = cell_path(folder, name, seed)
            if read_json(path, required=RESULT_KEYS) is not None:
                log(f"{name} seed {seed}: done earlier, skipped")
                continue
            checkpoints = folder / "checkpoints" / path.stem
            if (checkpoints / "last.pt").exists():
                log(f"{name} seed {seed}: continuing from its checkpoint")
            rows, result = run_recipe(name, dataset, replace(base, seed=seed), folder, progress,
                                      checkpoint_dir=checkpoints, checkpoint_every=checkpoint_every)
            rows = [{**row, "dataset": dataset.name} for row in rows]
            if result is not None:
                with atomic_path(path.with_suffix(".history.csv")) as tmp:
                    result.history.to_csv(tmp, index=False)
            write_json(path, rows)
            shutil.rmtree(checkpoints, ignore_errors=True)
            for row in rows:
                log(f"{name} [{row['model']}] seed {seed}: test R2 {row['test_r2']:.3f}  MSE {row['test_mse']:.2f}  "
                    f"MAE {row['test_mae']:.2f}  ({row['seconds']:.0f} s)")
    results = collect(folder, names, seeds)
    with atomic_path(folder / "results.csv") as tmp:
        results.drop(columns="test_predictions").to_csv(tmp, index=False)
    with atomic_path(folder / "summary.csv") as tmp:
        summarize(results).to_csv(tmp)
    return results


def collect(folder: Path, recipes: list[str], seeds: list[int]) -> pd.DataFrame:
    rows = []
    for seed in seeds:
        for name in recipes:
            cell = read_json(cell_path(folder, name, seed), required=RESULT_KEYS)
            if cell is None:
                raise FileNotFoundError(f"no intact result for {name} seed {seed} in {folder}; rerun to compute it")
            rows += cell
    return pd.DataFrame(rows)


def summarize(results: pd.DataFrame, by: tuple[str, ...] = ("recipe", "model")) -> pd.DataFrame:
    """Mean and SD over seeds per ``by`` group (default: recipe and model), groups in order of first
    appearance; ``seeds`` counts the rows of each group. ``remd sweep`` shares it
    (``sweep.summarize``)."""
    metrics = [m for m in SUMMARY_METRICS if m in results]
    grouped = results.groupby(list(by), sort=False, dropna=False)
    table = grouped[metrics].agg(["mean", "std"])
    table.columns = [f"{metric}_{stat}" for metric, stat in table.columns]
    table.insert(0, "seeds", grouped.size())
    return table
