"""Run a list of recipes over several seeds on one data set and collect one tidy table.

Each (recipe, seed) cell is written to ``<run>/cells/<recipe>-seed<k>.json`` as soon as it
finishes, and a rerun of the same run folder skips finished cells, so an interrupted comparison
loses no finished work. ``results.csv`` holds one row per (recipe, model, seed); ``summary.csv``
the mean and standard deviation over seeds of every metric, overall and per region.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pandas as pd

from .data.format import MultimodalDataset
from .paths import write_json
from .recipes import recipes_for, run_recipe
from .trainer import TrainConfig

SUMMARY_METRICS = ("test_r2", "test_mse", "test_mae", "test_stage_score", "many_mse", "medium_mse", "few_mse",
                   "many_mae", "medium_mae", "few_mae")


def cell_path(folder: Path, recipe: str, seed: int) -> Path:
    return Path(folder) / "cells" / f"{recipe}-seed{seed}.json"


def compare(dataset: MultimodalDataset, recipes: list[str] | None, seeds: list[int], base: TrainConfig, folder: Path,
            progress: bool = True, log=print) -> pd.DataFrame:
    folder = Path(folder)
    names = recipes_for(dataset, recipes)
    for seed in seeds:
        for name in names:
            path = cell_path(folder, name, seed)
            if path.exists():
                log(f"{name} seed {seed}: done earlier, skipped")
                continue
            rows, result = run_recipe(name, dataset, replace(base, seed=seed), folder, progress)
            rows = [{**row, "dataset": dataset.name} for row in rows]
            path.parent.mkdir(parents=True, exist_ok=True)
            if result is not None:
                result.history.to_csv(path.with_suffix(".history.csv"), index=False)
            write_json(path, rows)
            for row in rows:
                log(f"{name} [{row['model']}] seed {seed}: test R2 {row['test_r2']:.3f}  MSE {row['test_mse']:.2f}  "
                    f"MAE {row['test_mae']:.2f}  ({row['seconds']:.0f} s)")
    results = collect(folder, names, seeds)
    results.drop(columns="test_predictions").to_csv(folder / "results.csv", index=False)
    summarize(results).to_csv(folder / "summary.csv")
    return results


def collect(folder: Path, recipes: list[str], seeds: list[int]) -> pd.DataFrame:
    rows = []
    for seed in seeds:
        for name in recipes:
            rows += json.loads(cell_path(folder, name, seed).read_text())
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
