"""Missing modalities in training and in the study of notebook 05: SimMLM's loss in the trainer, every
missing-modality recipe trains on data with missing patterns, and the study's measures by hand."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from remd_core.data import load
from remd_core.data.missing import MissingConfig, with_missing
from remd_core.experiments import missing_study
from remd_core.experiments.recipes import run_recipe
from remd_core.losses import mse_loss
from remd_core.models import EncoderConfig
from remd_core.models.simmlm import mofe_term
from remd_core.training import TrainConfig, build_model, build_objective, predict
from remd_core.data.transforms import DRAW_SEED, PRESENT

SMALL = dict(n_eyes=80, image_size=16, oct_size=16, n_bscans=2, test=20, val=12, cache=False)
BASE = TrainConfig(epochs=1, batch_size=8, precision="float64", encoder=EncoderConfig(width=0.125))


@pytest.fixture(scope="module")
def dataset():
    return load("synthetic-stage2", **SMALL)


@pytest.fixture(scope="module")
def missing(dataset):
    return with_missing(dataset, MissingConfig(train={"fundus": 0.4, "oct": 0.4}, test={"oct": 0.5}, seed=0))


def test_simmlm_loss_is_regression_plus_mofe_on_a_fewer_copy(missing):
    config = replace(BASE, head="simmlm", augment=False)
    torch.manual_seed(0)
    model = build_model(missing, config)
    objective = build_objective(missing, config)
    inputs, target = objective.prepare(missing.train.batch(torch.arange(16)), torch.Generator().manual_seed(3))
    assert not inputs[PRESENT].all()  # the batch has missing patterns
    losses = objective.closure(model, inputs, target)()
    out = model(inputs)
    ranking, info = mofe_term(model, inputs, target, out, torch.Generator().manual_seed(inputs[DRAW_SEED]))
    paired = info["has_pair"]
    # the official task loss: one batch mean over both copies (B more copies, the paired eyes' fewer copies)
    errors = torch.cat([out["fused"] - target, info["out_fewer"]["fused"][paired] - target[paired]]) ** 2
    assert losses.fused.item() == pytest.approx(errors.mean().item(), rel=1e-12)
    assert losses.extra.item() == pytest.approx(ranking.item(), rel=1e-12)
    assert paired.any() and not paired.all()  # eyes with one modality have no pair


@pytest.mark.parametrize("method", missing_study.METHODS)
def test_every_missing_modality_method_trains_on_missing_patterns(missing, method, tmp_path):
    rows, result = run_recipe(method, missing, BASE, tmp_path, progress=False)
    assert np.isfinite(rows[0]["test_mse"])
    pred = predict(result.model, missing.test, missing.spec.kinds, result.label_mean, result.label_std)
    assert np.isfinite(pred).all()


def test_with_only_leaves_one_modality(dataset):
    only = missing_study.with_only(dataset.test, ("oct",))
    assert not only.present[:, 0].any() and only.present[:, 1].all()
    assert (only.modalities["fundus"] == 0).all() and torch.equal(only.modalities["oct"], dataset.test.modalities["oct"])
    with pytest.raises(ValueError, match="keep"):
        missing_study.with_only(dataset.test, ("fundus_photo",))


def test_more_is_never_worse_counts_eyes_whose_error_grows_with_a_modality(dataset, tmp_path):
    _, result = run_recipe("naive-fusion", dataset, BASE, tmp_path, progress=False)
    got = missing_study.more_is_never_worse(result, dataset)
    kinds, mean, std = dataset.spec.kinds, result.label_mean, result.label_std
    y = dataset.test.y.numpy()
    err = {keep: np.abs(predict(result.model, missing_study.with_only(dataset.test, keep), kinds, mean, std) - y)
           for keep in (("fundus",), ("oct",), ("fundus", "oct"))}
    worse = np.stack([err[("fundus", "oct")] > err[("fundus",)], err[("fundus", "oct")] > err[("oct",)]], axis=1)
    assert got["eyes"] == len(y)
    assert got["violation_pairs"] == pytest.approx(worse.mean())
    assert got["violation_eyes"] == pytest.approx(worse.any(axis=1).mean())


def test_a_study_cell_is_written_once_and_read_back(dataset, tmp_path):
    cell = missing_study.run_cell("simmlm", dataset, BASE, 0.5, 0, tmp_path, rates=(0.0, 0.5))
    curves = {(r["missing"], r["rate"]) for r in cell["curves"]}
    assert curves == {(m, r) for m in ("fundus", "oct") for r in (0.0, 0.5)}
    assert cell["router"] and {"fundus", "oct"} <= set(cell["router"][0])
    path = tmp_path / "simmlm__train0.5__seed0.json"
    stamp = path.stat().st_mtime_ns
    again = missing_study.run_cell("simmlm", dataset, BASE, 0.5, 0, tmp_path, rates=(0.0, 0.5))
    assert again == cell and path.stat().st_mtime_ns == stamp
    table = missing_study.curves_table([cell])
    assert table.loc[("simmlm", 0.5, "oct", 0.0), "r2_mean"] == pytest.approx(cell["curves"][0]["r2"])
    with pytest.raises(ValueError, match="other settings"):
        missing_study.run_cell("simmlm", dataset, replace(BASE, lr=2e-3), 0.5, 0, tmp_path, rates=(0.0, 0.5))
