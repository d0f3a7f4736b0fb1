"""A sweep cell run as a function (``workbench.cell.run_train_recipe``) writes its TensorBoard scalars
into its own folder (``<RUN_DIR>/tensorboard``), stage 1's into the shared cache beside its encoders, and
records each fused model's modality contributions in its result rows."""

import json

import pytest


@pytest.mark.slow
def test_a_sweep_cell_logs_to_its_own_folder(tmp_path, monkeypatch):
    from remd_core.workbench.cell import run_train_recipe

    monkeypatch.setenv("REMD_OUTPUTS", str(tmp_path / "outputs"))
    cell, work = tmp_path / "sweep" / "cells" / "a__re-m3dr__seed0", tmp_path / "sweep"
    cell.mkdir(parents=True)
    run_train_recipe({"PROFILE": "smoke", "RECIPE": "re-m3dr", "N_EYES": 60, "IMAGE_SIZE": 16, "N_BSCANS": 2,
                      "RUN_DIR": str(cell), "WORK_DIR": str(work)})
    assert list((cell / "tensorboard").glob("events.out.tfevents.*"))
    assert {p.parent.name for p in work.glob("stage1/*/tensorboard/*/events.out.tfevents.*")} == {"oct", "fundus"}
    assert not (work / "tensorboard").exists()  # nothing of the cell's in the shared folder
    row = json.loads((cell / "results" / "train_recipe.json").read_text())["rows"][0]
    assert row["shapley_oct"] + row["shapley_fundus"] == pytest.approx(row["test_r2"] - row["shapley_empty"])
