"""What a recipe's rows report of its modality contributions (``recipes.result_row``: ``shapley_<m>``,
``share_<m>``, ``shapley_empty`` on the test split, for every fused model whatever its head) and where
its TensorBoard scalars go (``<workdir>/tensorboard/<recipe>-seed<k>-<hash>``, stage 1's beside its
encoders in the cache)."""

import pytest

from remd_core.data import load
from remd_core.experiments.compare import compare
from remd_core.experiments.recipes import board_folder, recipe, run_recipe
from remd_core.experiments.results import summarize
from remd_core.models import EncoderConfig
from remd_core.training import TrainConfig

SMALL = dict(n_eyes=60, image_size=16, oct_size=16, n_bscans=2, test=15, val=10, cache=False)
BASE = TrainConfig(epochs=1, batch_size=8, encoder=EncoderConfig(width=0.125))
RECIPES = ["unimodal-oct", "naive-fusion", "re-m3dr", "eyemost", "echomen", "simmlm", "rima", "igm"]


@pytest.fixture(scope="module")
def dataset():
    return load("synthetic-stage2", **SMALL)


@pytest.mark.slow
def test_every_fused_model_reports_its_contributions_and_logs_its_scalars(dataset, tmp_path):
    results = compare(dataset, RECIPES, [0], BASE, tmp_path, progress=False, log=lambda *_: None)
    fused = results[results["model"] == "fusion"]
    assert sorted(fused["recipe"]) == sorted(RECIPES[1:])
    for _, row in fused.iterrows():  # efficiency: the values add up to v(all) - v(empty)
        assert row["shapley_oct"] + row["shapley_fundus"] == pytest.approx(row["test_r2"] - row["shapley_empty"])
        assert row["share_oct"] + row["share_fundus"] == pytest.approx(1.0) or min(row["shapley_oct"],
                                                                                    row["shapley_fundus"]) < 0
    assert results.loc[results["model"] == "oct", "shapley_oct"].isna().all()
    summary = summarize(results)
    assert {"shapley_oct_mean", "share_fundus_std"} <= set(summary.columns)

    boards = {p.name.split("-seed")[0] for p in (tmp_path / "tensorboard").iterdir()}
    assert boards == set(RECIPES[1:])  # the unimodal recipe is its stage 1
    assert all(any(p.glob("events.out.tfevents.*")) for p in (tmp_path / "tensorboard").iterdir())
    stage1 = list((tmp_path / "stage1").glob("*/tensorboard/*/events.out.tfevents.*"))
    assert {p.parent.name for p in stage1} == {"oct", "fundus"}


def test_the_board_folder_keeps_settings_apart(dataset, tmp_path):
    from dataclasses import replace

    a = board_folder(tmp_path, "naive-fusion", dataset, BASE)
    assert a.parent == tmp_path / "tensorboard" and a.name.startswith("naive-fusion-seed0-")
    assert board_folder(tmp_path, "naive-fusion", dataset, BASE) == a
    assert board_folder(tmp_path, "naive-fusion", dataset, replace(BASE, lr=1e-4)) != a
    assert board_folder(tmp_path, "naive-fusion", dataset, replace(BASE, seed=1)).name.startswith("naive-fusion-seed1-")
    assert recipe("naive-fusion").stage1 is None


@pytest.mark.slow
def test_log_dir_none_writes_no_scalars(dataset, tmp_path):
    rows, _ = run_recipe("am-naive-fusion", dataset, BASE, tmp_path, progress=False, log_dir=None)
    assert not list(tmp_path.rglob("events.out.tfevents.*"))
    assert rows[0]["shapley_oct"] + rows[0]["shapley_fundus"] == pytest.approx(rows[0]["test_r2"]
                                                                               - rows[0]["shapley_empty"])
