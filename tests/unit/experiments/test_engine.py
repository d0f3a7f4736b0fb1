"""The grid engine's one orchestration, ``engine.run_grid``, with tasks that record a result at once
(no training): what it skips, refuses, writes, collects and raises. ``remd sweep`` and ``remd
compare`` run through it (their own tests: test_sweep.py, test_recipes.py, test_files.py)."""

import pandas as pd
import pytest

from remd_core.config import ConfigError
from remd_core.experiments.engine import run_grid
from remd_core.experiments.grid import Grid, SubGrid
from remd_core.experiments.results import ResultStore

KEYS = ["d__a__seed0", "d__b__seed0", "d__a__seed1", "d__b__seed1"]


def grid():
    return Grid("tiny", {"main": SubGrid(["d"], ["a", "b"], [0, 1])}, {})


def record(store: ResultStore, key: str, recipe: str, seed: int, fail: bool = False):
    if fail:
        raise ValueError(f"{recipe} broke")
    store.write_result(key, [{"recipe": recipe, "seed": seed, "model": "fusion", "test_r2": seed + 0.5}],
                       {"DATASET": "d", "RECIPE": recipe, "SEED": seed})


def run(store, ran, broken=(), **options):
    def task(cell):
        ran.append(cell.key)
        return record, (store, cell.key, cell.params["RECIPE"], cell.params["SEED"], cell.params["RECIPE"] in broken)

    return run_grid(grid(), store, lambda cell: {**cell.params, "epochs": 1}, task, title="tiny", progress=False,
                    **options)


def test_run_grid_runs_pending_cells_resumes_and_refuses_other_settings(tmp_path):
    store, ran, said = ResultStore(tmp_path / "run", "tiny"), [], []

    def announce(executor, pending, done):
        said.append((executor is not None, len(pending), len(done)))

    table, outcome = run(store, ran, announce=announce)
    assert ran == KEYS and outcome.executed == KEYS and outcome.skipped == [] and said == [(True, 4, 0)]
    assert table["cell"].tolist() == KEYS and table["test_r2"].tolist() == [0.5, 0.5, 1.5, 1.5]
    assert (tmp_path / "run" / "results.csv").exists()
    assert all((tmp_path / "run" / "cells" / key / "cell.json").exists() for key in KEYS)

    ran.clear()
    again, outcome = run(store, ran, seeds=[1], announce=announce)
    assert ran == [] and outcome.skipped == KEYS[2:] and said[-1] == (False, 0, 2)  # nothing pending: no executor
    assert sorted(again["cell"]) == sorted(KEYS)  # the whole folder
    mine, _ = run(store, ran, seeds=[1], whole_folder=False)
    assert mine["cell"].tolist() == KEYS[2:]

    with pytest.raises(ConfigError, match="epochs 1 -> 2"):
        run_grid(grid(), store, lambda cell: {**cell.params, "epochs": 2}, lambda cell: None, title="tiny",
                 progress=False)


def test_run_grid_checks_before_writing_and_reports_failures(tmp_path):
    folder = tmp_path / "run"
    store = ResultStore(folder, "tiny")

    def refuse(cell):
        raise ConfigError(f"cell {cell.key}: no")

    with pytest.raises(ConfigError, match="no"):  # a front end's check: nothing written
        run_grid(grid(), store, refuse, lambda cell: None, title="tiny", progress=False)
    assert not folder.exists()

    # without a failure of its own: the first failure, nothing collected
    with pytest.raises(RuntimeError, match=r"2 cell\(s\) failed in .*d__b__seed0: ValueError: b broke"):
        run(store, [], broken={"b"})
    assert "b broke" in (folder / "cells" / "d__b__seed0" / "error.txt").read_text()
    assert not (folder / "results.csv").exists()

    # with one: the finished cells collected first, then its exception raised
    class Failed(Exception):
        pass

    seen = {}

    def failure(outcome, table):
        seen.update(failed=list(outcome.failed), table=table)
        return Failed()

    with pytest.raises(Failed):
        run(store, [], broken={"b"}, failure=failure)
    assert seen["failed"] == ["d__b__seed0", "d__b__seed1"] and seen["table"]["cell"].tolist() == KEYS[::2]
    pd.testing.assert_frame_equal(pd.read_csv(folder / "results.csv"), seen["table"])
