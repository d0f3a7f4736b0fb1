
import numpy as np
import pandas as pd
import pytest
import torch

from remd_core.experiments.compare import compare
from remd_core.experiments.results import summarize
from remd_core.data import load
from remd_core.models import EncoderConfig
from remd_core.experiments.recipes import PAPER_RECIPES, recipe, recipes_for, run_recipe, stage2_options
from remd_core.training import TrainConfig

SMALL = dict(n_eyes=60, image_size=16, oct_size=16, n_bscans=2, test=15, val=10, cache=False)
BASE = TrainConfig(epochs=1, batch_size=8, encoder=EncoderConfig(width=0.125))


@pytest.fixture(scope="module")
def dataset():
    return load("synthetic-stage2", **SMALL)


@pytest.mark.slow
def test_every_paper_recipe_runs_on_a_tiny_set_and_resumes(dataset, tmp_path):
    names = [*PAPER_RECIPES, "rnc"]
    results = compare(dataset, names, [0], BASE, tmp_path, progress=False, log=lambda *_: None)
    rows = results.set_index(["recipe", "model"])
    one_modality = {("unimodal-fundus", "fundus"), ("unimodal-oct", "oct"), ("am-only", "fundus"), ("am-only", "oct"),
                    ("egvfi", "oct"), ("sf3d", "oct"), ("conr-oct", "oct"), ("conr-fundus", "fundus"),
                    ("echomen-oct", "oct"), ("echomen-fundus", "fundus")}
    assert set(rows.index) == one_modality | {(r, "fusion") for r in names if r not in {r for r, _ in one_modality}}
    assert results["test_n"].eq(15).all() and results[["many_n", "medium_n", "few_n"]].sum(axis=1).eq(15).all()
    # stage 1 is trained once per kind and reused by every recipe that starts from it (the unimodal recipes: plain)
    stage1 = sorted(p.name.split("-seed")[0] for p in (tmp_path / "stage1").iterdir())
    assert stage1 == ["adaptive", "echomen", "fixed", "plain", "rnc", "simclr"]
    history = pd.read_csv(tmp_path / "cells" / f"{dataset.name}__re-m3dr__seed0" / "history.csv")
    assert {"gamma", "sharpness", "cos", "loss_fundus", "loss_oct"} <= set(history.columns)
    again = compare(dataset, names, [0], BASE, tmp_path, progress=False, log=lambda *_: None)
    pd.testing.assert_frame_equal(again, results)


def test_a_unimodal_recipe_is_the_plain_stage1_of_its_modality_trained_once(dataset, tmp_path):
    from dataclasses import replace

    from remd_core.training import fit

    probed = replace(BASE, probe_every=2, probe_size=8)
    rows, record = run_recipe("unimodal-oct", dataset, probed, tmp_path, progress=False)
    direct = fit(dataset, replace(probed, modalities=("oct",), strategy_options={"unimodal_weight": 0.0}), progress=False)
    # the same training as the recipe's own configuration (the row, the curves), served from the stage-1 cache
    assert rows[0]["model"] == "oct" and rows[0]["recipe"] == "unimodal-oct"
    assert rows[0]["test_predictions"] == np.asarray(direct.predictions["test"]).round(4).tolist()
    columns = [c for c in direct.history.columns if c != "margin"]  # stage 1 logs its (unused) fixed margin
    pd.testing.assert_frame_equal(record.history[columns], direct.history[columns], check_dtype=False)
    assert record.best_epoch == direct.best_epoch and "probe_loss_oct" in record.history
    # pretrained-naive-fusion finds that encoder and trains only the fundus one; unimodal-fundus then trains nothing
    run_recipe("pretrained-naive-fusion", dataset, probed, tmp_path, progress=False)
    (folder,) = (tmp_path / "stage1").glob("plain-seed0-*")
    oct_written = (folder / "oct.pt").stat().st_mtime_ns
    again, _ = run_recipe("unimodal-oct", dataset, probed, tmp_path, progress=False)
    assert pd.DataFrame(again).equals(pd.DataFrame(rows)) and (folder / "oct.pt").stat().st_mtime_ns == oct_written


def test_a_comparison_records_each_test_eye_for_paired_statistics(dataset, tmp_path):
    from remd_core.experiments.results import eye_predictions

    results = compare(dataset, ["unimodal-oct"], [0], BASE, tmp_path, progress=False, log=lambda *_: None)
    eyes = eye_predictions(tmp_path)
    assert list(eyes["eye"]) == list(dataset.test.ids) and set(eyes["model"]) == {"oct"}
    np.testing.assert_allclose(eyes["y"], dataset.test.y.numpy(), rtol=1e-6)
    np.testing.assert_allclose(eyes["prediction"], results["test_predictions"].iloc[0])


@pytest.mark.slow
def test_stage2_starts_from_the_stage1_encoders(dataset, tmp_path):
    from remd_core.experiments.recipes import stage1

    paths, rows = stage1(dataset, BASE, "adaptive", tmp_path, progress=False)
    assert set(paths) == {"fundus", "oct"} and {r["model"] for r in rows} == {"fundus", "oct"}
    from remd_core.models import MultimodalRegressor
    from remd_core.training import load_encoders

    model = MultimodalRegressor(dataset.spec, encoder=BASE.encoder)
    load_encoders(model, paths)
    saved = torch.load(paths["oct"], weights_only=True)
    for k, v in model.encoders["oct"].state_dict().items():
        assert torch.equal(v, saved[k])


@pytest.mark.slow
def test_the_sam_family_starts_from_stage1_encoders(dataset, tmp_path):
    """Each SAM-family strategy takes its first step from the stage-1 encoders: its first batch loss (taken
    at w, before any update) is the one plain naive fusion sees from the same start, not a fresh model's."""
    from dataclasses import replace

    from remd_core.experiments.recipes import stage1
    from remd_core.training import fit

    paths, _ = stage1(dataset, BASE, "adaptive", tmp_path, progress=False)
    naive = dict(strategy_options={"unimodal_weight": 0.0}, augment=False)

    def first_loss(**settings):
        return fit(dataset, replace(BASE, **naive, **settings), progress=False).history["loss_fused"].iloc[0]

    start = first_loss(strategy="joint", init_encoders=paths)
    for name in ("sam", "imbsam", "sse-sam"):
        assert first_loss(strategy=name, init_encoders=paths) == pytest.approx(start, rel=1e-6), name
    assert first_loss(strategy="sam") != pytest.approx(start, rel=1e-3)


def test_summary_gives_mean_and_sd_over_seeds():
    results = pd.DataFrame({"recipe": ["a", "a", "b"], "model": ["fusion"] * 3, "seed": [0, 1, 0],
                            "test_r2": [0.2, 0.4, 0.5], "test_mse": [3.0, 1.0, 2.0]})
    table = summarize(results)
    assert table.loc[("a", "fusion"), "test_r2_mean"] == pytest.approx(0.3)
    assert table.loc[("a", "fusion"), "test_r2_std"] == pytest.approx(0.1414213, rel=1e-5)
    assert table.loc[("a", "fusion"), "seeds"] == 2


def test_recipe_names():
    assert recipe("unimodal-plan").modality == "plan"
    assert recipe("re-m3dr").stage1 == "adaptive" and recipe("re-m3dr").strategy == "sgm"
    assert recipe("wo-am").stage1 == "fixed"
    assert recipe("pretrained-naive-fusion").stage1 == "plain" and "pretrained-naive-fusion" not in PAPER_RECIPES
    assert [(recipe(r).strategy, dict(recipe(r).options)) for r in ("sam", "imbsam", "sse-sam")] == [
        ("sam", {"unimodal_weight": 0.0}), ("imbsam", {"unimodal_weight": 0.0}), ("sse-sam", {"unimodal_weight": 0.0})]
    with pytest.raises(ValueError, match="unknown recipe"):
        recipe("re-m3d")


def test_default_recipes_follow_the_data_set_modalities():
    randhie = load("randhie", n_rows=500)
    names = recipes_for(randhie)
    assert names[:2] == ["unimodal-plan", "unimodal-health"] and "re-m3dr" in names
    assert "egvfi" not in names and "sf3d" not in names  # OCT models, and randhie has no OCT
    assert {"egvfi", "sf3d"} <= set(recipes_for(load("synthetic-stage2", **SMALL)))


def test_the_3d_oct_recipes_train_the_oct_volume_with_their_encoder(dataset, tmp_path):
    from remd_core.models.oct3d import EGVFIEncoder, SF3DEncoder

    for name, cls in (("egvfi", EGVFIEncoder), ("sf3d", SF3DEncoder)):
        rows, result = run_recipe(name, dataset, BASE, tmp_path, progress=False)
        assert result.model.modalities == ("oct",) and isinstance(result.model.encoders["oct"], cls)
        assert rows[0]["model"] == "oct" and np.isfinite(rows[0]["test_mse"])


def test_strategy_options_reach_only_the_recipes_using_that_strategy():
    options = {"sgm": {"gamma_base": 3.0}, "mmpareto": {"gamma": 2.0}}
    assert stage2_options(recipe("re-m3dr"), options) == {"gamma_base": 3.0}
    assert stage2_options(recipe("am-mmpareto"), options) == {"gamma": 2.0}
    assert stage2_options(recipe("naive-fusion"), options) == {"unimodal_weight": 0.0}  # the recipe's own, kept
    assert stage2_options(recipe("naive-fusion"), {"joint": {"unimodal_weight": 0.5}}) == {"unimodal_weight": 0.5}
    assert stage2_options(recipe("am-only"), options) == {}  # no stage 2
    with pytest.raises(ValueError, match="sgmm"):
        stage2_options(recipe("re-m3dr"), {"sgmm": {"gamma_base": 3.0}})


@pytest.mark.slow
def test_run_recipe_passes_strategy_options_to_stage2(dataset, tmp_path):
    fixed = {"gamma_base": 2.0, "gamma_min": 2.0, "gamma_max": 2.0}
    _, result = run_recipe("re-m3dr", dataset, BASE, tmp_path, progress=False, strategy_options={"sgm": fixed})
    assert result.config.strategy_options == fixed and result.history["gamma"].eq(2.0).all()
    _, result = run_recipe("naive-fusion", dataset, BASE, tmp_path, progress=False, strategy_options={"sgm": fixed})
    assert result.config.strategy_options == {"unimodal_weight": 0.0}


def test_stage1_cache_lock_excludes_a_second_process(tmp_path):
    import subprocess
    import sys

    from remd_core.experiments.recipes import _locked

    probe = ("import fcntl, sys; f = open(sys.argv[1], 'w')\n"
             "try: fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB); print('free')\n"
             "except BlockingIOError: print('held')")

    def check(name):
        return subprocess.run([sys.executable, "-c", probe, str(tmp_path / f".lock-{name}")], capture_output=True,
                              text=True, check=True).stdout.strip()

    with _locked(tmp_path, "oct"):
        assert check("oct") == "held" and check("fundus") == "free"  # one lock per modality
    assert check("oct") == "free"


def test_a_mistyped_stage2_option_fails_before_stage1_trains(dataset, tmp_path):
    from remd_core.config import ConfigError

    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['gama_base'\] for strategy 'sgm'; allowed keys are: .*gamma_base"):
        run_recipe("re-m3dr", dataset, BASE, tmp_path, progress=False, strategy_options={"sgm": {"gama_base": 3}})
    assert not (tmp_path / "stage1").exists()  # nothing was trained


def test_training_settings_from_a_command_line_or_notebook_are_strict():
    from remd_core.config import ConfigError
    from remd_core.workbench.setup import train_config

    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['margin_mo'\] for the notebook's training settings; "
                                          r"allowed keys are: .*margin_m0"):
        train_config(1, "resnet18", 0.125, margin_mo=0.2)
