"""EyeMoSt and EyeMoSt+ as trainable models: the config selects the head, the trainer's objective is the
official loss, absent modalities are left out, and fitted models report predictive intervals in dB."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from scipy import stats

from remd_core.evaluation import metrics
from remd_core.data import load
from remd_core.models import EncoderConfig, check_model
from remd_core.models.evidential import CONFIDENCE_WEIGHT, evidential_loss
from remd_core.models.evidential_regressor import EvidentialRegressor
from remd_core.optim import STRATEGIES, build_strategy
from remd_core.training import TrainConfig, build_model, build_objective, fit
from remd_core.data.transforms import PRESENT

SMALL = dict(n_eyes=80, image_size=32, oct_size=32, n_bscans=2, test=20, val=12, cache=False)
TINY = EncoderConfig(width=0.125)
WEIGHTS = {"eyemost": 0.0, "eyemost-plus": CONFIDENCE_WEIGHT}


@pytest.fixture(scope="module")
def dataset():
    return load("synthetic-stage2", **SMALL)


def _batch(dataset, config, n=12):
    torch.manual_seed(0)
    model = build_model(dataset, config)
    objective = build_objective(dataset, config)
    inputs, target = objective.prepare(dataset.train.batch(torch.arange(n)))
    return model, objective, inputs, target


@pytest.mark.parametrize("head", ["eyemost", "eyemost-plus"])
def test_the_trainer_objective_is_the_official_loss(dataset, head):
    """Joint training with unimodal_weight 1 back-propagates exactly evidential_loss: per-modality NIG
    terms plus the fused Student-t term (plus 10 x the confidence term for EyeMoSt+)."""
    config = TrainConfig(head=head, precision="float64", augment=False, encoder=TINY)
    model, objective, inputs, target = _batch(dataset, config)
    assert isinstance(model, EvidentialRegressor)
    check_model(model)
    losses = objective.closure(model, inputs, target)()
    want = evidential_loss(model(inputs)["evidential"], target, confidence_weight=WEIGHTS[head])
    assert losses.total(1.0).item() == pytest.approx(want.item(), rel=1e-12)
    assert set(losses.unimodal) == {"fundus", "oct"}
    if head == "eyemost":  # EyeMoSt has no confidence term: nothing is left in extra
        assert losses.extra.item() == 0.0


def test_a_single_modality_evidential_model_keeps_its_nig_term(dataset):
    config = TrainConfig(modalities=("oct",), head="eyemost", precision="float64", augment=False, encoder=TINY)
    model, objective, inputs, target = _batch(dataset, config)
    losses = objective.closure(model, inputs, target)()
    assert losses.unimodal == {}
    want = evidential_loss(model(inputs)["evidential"], target)
    assert losses.total(0.0).item() == pytest.approx(want.item(), rel=1e-12)


def test_an_absent_modality_is_left_out_of_the_fusion_and_the_gradients(dataset):
    """Eyes whose fundus is absent: their prediction is the OCT Student-t alone, whatever the fundus
    input holds, and loss and gradients stay finite; the present mask reaches the model from the batch."""
    config = TrainConfig(head="eyemost", precision="float64", augment=False, encoder=TINY)
    torch.manual_seed(0)
    model = build_model(dataset, config)
    objective = build_objective(dataset, config)
    batch = dataset.train.batch(torch.arange(10))
    batch["present"] = batch["present"].clone()
    fundus = dataset.spec.modality_names.index("fundus")
    batch["present"][:4, fundus] = False
    inputs, target = objective.prepare(batch)
    assert inputs[PRESENT][:, model.modalities.index("fundus")].tolist() == [False] * 4 + [True] * 6
    model.eval()
    out = model(inputs)
    oct_alone = out["evidential"].student["oct"]
    # the OCT Student-t up to float64 rounding: fusing with a zero weight divides the OCT term by its own
    # weight, w * x / w, which is x only to the last bit on some builds (it differs by 1 ulp with torch 2.13.0 here)
    torch.testing.assert_close(out["fused"][:4], oct_alone.loc[:4], rtol=1e-12, atol=0)
    torch.testing.assert_close(out["predictive"].scale[:4], oct_alone.scale[:4], rtol=1e-12, atol=0)
    assert not torch.equal(out["fused"][4:], oct_alone.loc[4:])
    changed = dict(inputs, fundus=inputs["fundus"].clone())
    changed["fundus"][:4] = torch.randn_like(changed["fundus"][:4]) * 100
    assert torch.equal(model(changed)["fused"][:4], out["fused"][:4])
    model.train()
    losses = objective.closure(model, changed, target)()
    losses.total(1.0).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_fit_reports_intervals_in_label_units_with_their_coverage(dataset):
    config = TrainConfig(head="eyemost", strategy_options={"unimodal_weight": 1.0}, epochs=1, batch_size=8,
                         precision="float64", encoder=TINY)
    result = fit(dataset, config, progress=False)
    lo, hi = result.intervals["test"].T
    # by hand: the model's fused Student-t on standardised labels, mapped to dB
    objective = build_objective(dataset, replace(config, augment=False))
    inputs, _ = objective.prepare(dataset.test.batch(torch.arange(len(dataset.test))))
    result.model.eval()
    with torch.no_grad():
        t = result.model(inputs)["predictive"]
    loc = t.loc.numpy() * result.label_std + result.label_mean
    half = stats.t.ppf(0.95, t.df.numpy()) * t.scale.numpy() * result.label_std
    np.testing.assert_allclose(lo, loc - half, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(hi, loc + half, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose((lo + hi) / 2, result.predictions["test"], rtol=1e-10, atol=1e-10)
    y = dataset.test.y.numpy()
    inside = np.mean((y >= lo) & (y <= hi))
    assert result.metrics["test"]["coverage"] == pytest.approx(inside)
    assert result.metrics["test"]["interval_width"] == pytest.approx(np.mean(hi - lo))


def test_a_linear_head_predicts_no_interval(dataset):
    result = fit(dataset, TrainConfig(modalities=("oct",), epochs=1, batch_size=8, encoder=TINY), progress=False)
    assert result.intervals == {} and "coverage" not in result.metrics["test"]


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_every_strategy_trains_an_evidential_model_or_refuses_it(dataset, name):
    """The evidential loss reaches strategies as the usual Losses; ImbSAM and SSE-SAM split the loss
    through the model's outputs, which an evidential likelihood is not a per-sample function of, and
    say so instead of leaving part of the loss out; so does BSAM, which re-weights samples through them."""
    config = TrainConfig(head="eyemost-plus", precision="float64", augment=False, encoder=TINY)
    model, objective, inputs, target = _batch(dataset, config, n=8)
    strategy = build_strategy(name, seed=0).bind(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    if name in ("imbsam", "sse-sam", "bsam"):
        with pytest.raises(ValueError, match="evidential"):
            strategy.step(objective.closure(model, inputs, target), optimizer, step=0, epoch=0)
        return
    before = [p.detach().clone() for p in model.evidential.parameters()]
    logs = strategy.step(objective.closure(model, inputs, target), optimizer, step=0, epoch=0)
    assert all(torch.isfinite(v).all() for v in logs.values())
    assert any(not torch.equal(a, b) for a, b in zip(before, model.evidential.parameters()))


@pytest.mark.parametrize("settings", [dict(contrastive=True), dict(regression_loss="smape_r2"), dict(head="nig")])
def test_the_config_refuses_what_an_evidential_head_cannot_do(settings):
    with pytest.raises(ValueError, match="head"):
        TrainConfig(**{"head": "eyemost", **settings})
