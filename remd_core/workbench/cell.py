"""The steps of the sweep's cell notebook (``notebooks/cells/train_recipe.ipynb``), as functions.

The notebook calls them one section at a time; ``remd sweep`` calls ``run_train_recipe`` in a warm
worker process instead of executing the notebook, unless asked for per-cell notebooks
(``--notebooks``). Both write the same files into the cell's folder (``results/train_recipe.json``,
``history.csv``, ``epochs.csv``); the notebook adds its figure. Why a function: a papermill
execution starts a kernel and imports the library for every cell (4-5 s), which at the testbed's
scale is a large share of a cell; a worker process imports once and keeps the cell's data set in
memory for the next cell of the same data (``cell_dataset``).

``p`` is the notebook's namespace after ``setup`` (every parameter filled from the profile or the
library), so a function sees exactly what the notebook's cells see.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Mapping

from ..data.format import MultimodalDataset
from ..timing import measured, phase
from .record import record_results
from .profiles import DATA_KNOBS
from .runner import NOTEBOOK_DIR, notebook_parameters

NOTEBOOK = NOTEBOOK_DIR / "cells" / "train_recipe.ipynb"
RESULT = "train_recipe"
KEEP_DATASETS = 2
"""Data sets a process keeps in memory between cells (a grid's cells come grouped by setting)."""

_datasets: OrderedDict[tuple, MultimodalDataset] = OrderedDict()


def cell_dataset(p: Mapping) -> MultimodalDataset:
    """The cell's data set (``setup.load_dataset`` at the cell's scale and mechanism knobs), kept in
    this process for the next cells of the same data: training reads a data set and never changes it."""
    from .setup import load_dataset

    knobs = {field: p[name] for name, field in DATA_KNOBS.items()}
    key = (p["DATASET"], p["N_EYES"], p["IMAGE_SIZE"], p["N_BSCANS"], *sorted(knobs.items()))
    if key in _datasets:
        _datasets.move_to_end(key)
        return _datasets[key]
    dataset = load_dataset(p["DATASET"], p["N_EYES"], p["IMAGE_SIZE"], p["N_BSCANS"], **knobs)
    _datasets[key] = dataset
    while len(_datasets) > KEEP_DATASETS:
        _datasets.popitem(last=False)
    return dataset


def cell_training(p: Mapping, dataset: MultimodalDataset, progress: bool = False):
    """Train the cell's recipe (``recipes.run_recipe``) at its settings; returns its rows and result.
    Its TensorBoard scalars go to the cell's folder, ``<RUN_DIR>/tensorboard`` (stage 1's to the
    shared stage-1 cache, beside its encoders)."""
    from ..experiments.recipes import run_recipe
    from .setup import train_config

    config = train_config(p["EPOCHS"], p["ARCH"], p["WIDTH"], seed=p["SEED"], training=p["TRAINING"],
                          precision=p["PRECISION"], batch_size=p["BATCH_SIZE"], lr=p["LR"], margin_m0=p["MARGIN_M0"],
                          margin_beta=p["MARGIN_BETA"], margin_warmup=p["MARGIN_WARMUP"],
                          reference_run_steps=p["REFERENCE_RUN_STEPS"], probe_every=p["PROBE_EVERY"])
    sgm = dict(gamma_base=p["GAMMA_BASE"], gamma_min=p["GAMMA_MIN"], gamma_max=p["GAMMA_MAX"], window=p["WINDOW"])
    checkpoints = f"{p['RUN_DIR']}/checkpoints" if p["WORK_DIR"] else None  # in a sweep: resumable inside the cell
    return run_recipe(p["RECIPE"], dataset, config, p["WORK_DIR"] or p["RUN_DIR"], progress=progress,
                      strategy_options={"sgm": sgm}, checkpoint_dir=checkpoints,
                      checkpoint_every=p["CHECKPOINT_EVERY"], log_dir=Path(p["RUN_DIR"]) / "tensorboard")


def write_curves(result, run_dir: str | Path) -> None:
    """``history.csv`` (every step) and ``epochs.csv`` (validation per epoch) of the trained model;
    nothing for a recipe that reports every stage-1 model (``am-only``)."""
    if result is None:
        return
    with phase("writing"):
        result.history.to_csv(Path(run_dir) / "history.csv", index=False)
        result.epochs.to_csv(Path(run_dir) / "epochs.csv", index=False)


def cell_record(shown: Mapping, dataset: MultimodalDataset, rows: list[dict], run_dir: str | Path,
                seconds: dict | None = None):
    """``results/train_recipe.json``: the parameters as ``setup`` shows them, the rows (with each
    model's test predictions, eye by eye: ``experiments.paired`` compares recipes on them), the test
    eyes, and where the cell's seconds went (``timing``) when given."""
    return record_results(RESULT, {
        "parameters": {k: v for k, v in shown.items() if not k.endswith("_DIR")},
        "rows": rows,
        "test": {"ids": list(dataset.test.ids), "y": dataset.test.y.tolist()},
        **({"seconds": seconds} if seconds else {}),
    }, run_dir)


def run_train_recipe(params: Mapping) -> dict:
    """One cell without a notebook: the notebook's steps on its parameters (papermill's, from the
    sweep). Returns the seconds per phase, which are recorded with the results."""
    from .setup import setup

    with measured() as seconds:
        p = {**notebook_parameters(NOTEBOOK), **params}
        shown = setup(p)
        dataset = cell_dataset(p)
        rows, result = cell_training(p, dataset)
        write_curves(result, p["RUN_DIR"])
    cell_record(shown, dataset, rows, p["RUN_DIR"], seconds={k: round(v, 3) for k, v in seconds.items()})
    return seconds


CELL_FUNCTIONS = {NOTEBOOK.relative_to(NOTEBOOK_DIR).as_posix(): run_train_recipe}
"""Cell notebooks (under ``notebooks/``) that a sweep can run as a function, by path."""


def cell_function(notebook: str | Path):
    """The function that runs cell notebook ``notebook``'s steps (``CELL_FUNCTIONS``), or None."""
    return CELL_FUNCTIONS.get(Path(notebook).relative_to(NOTEBOOK_DIR).as_posix())
