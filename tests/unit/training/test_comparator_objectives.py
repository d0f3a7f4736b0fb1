"""The Table 1 comparators' objectives in the trainer: each contrastive term, LDS and EchoMEN's
multi-expert head reach the strategies as the Losses their papers define, recomputed here from the
tested loss functions on the model's own outputs."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from remd_core.data import load
from remd_core.losses import conr_loss, lds_weights, nt_xent_loss, rnc_loss, weighted_mse
from remd_core.losses.echomen import fit_expert_weights, ldw_supcon_loss, multi_expert_loss
from remd_core.losses import mse_loss
from remd_core.models import EncoderConfig, check_model
from remd_core.models.multi_expert import MultiExpertRegressor
from remd_core.training import TrainConfig, build_model, build_objective, fit, save_encoders
from remd_core.data.transforms import SECOND_VIEW

SMALL = dict(n_eyes=80, image_size=32, oct_size=32, n_bscans=2, test=20, val=12, cache=False)
BASE = TrainConfig(precision="float64", encoder=EncoderConfig(width=0.125), batch_size=8, epochs=1)


@pytest.fixture(scope="module")
def dataset():
    return load("synthetic-stage2", **SMALL)


def _setup(dataset, config, n=10):
    torch.manual_seed(0)
    model = build_model(dataset, config)
    objective = build_objective(dataset, config)
    inputs, target = objective.prepare(dataset.train.batch(torch.arange(n)), torch.Generator().manual_seed(1))
    return model, objective, inputs, target


def _by_hand(kind, a, b, y, mean, std):
    y_db = y * std + mean
    total = 0.0
    for m in a["projections"]:
        if kind == "simclr":
            total = total + nt_xent_loss(a["projections"][m], b["projections"][m], 0.5)
        elif kind == "rnc":
            total = total + rnc_loss(torch.cat([a["features"][m], b["features"][m]]), torch.cat([y, y]), 2.0)
        elif kind == "echomen":
            z = torch.stack([a["projections"][m], b["projections"][m]], dim=1)
            total = total + ldw_supcon_loss(z, y, temperature=1.0, positive_radius=0.0, distance="l1")
        else:
            pred = torch.cat([a["fused"], b["fused"]]) * std + mean
            total = total + conr_loss(torch.cat([a["projections"][m], b["projections"][m]]), torch.cat([y_db, y_db]),
                                      pred, w=1.0, e=0.01, temperature=0.07)
    return total


@pytest.mark.parametrize("kind, weight", [("simclr", 1.0), ("rnc", 1.0), ("echomen", 0.5), ("conr", 4.0)])
@pytest.mark.parametrize("modalities", [("oct",), None])
def test_each_contrastive_term_is_its_loss_on_two_views(dataset, kind, weight, modalities):
    config = replace(BASE, contrastive=True, contrastive_loss=kind, modalities=modalities)
    model, objective, inputs, target = _setup(dataset, config)
    assert not torch.equal(inputs["oct"], inputs[SECOND_VIEW]["oct"])  # two different augmentations
    losses = objective.closure(model, inputs, target, margin=0.4)()
    first, second = model(inputs), model(inputs[SECOND_VIEW])
    want = _by_hand(kind, first, second, target, objective.label_mean, objective.label_std)
    assert losses.extra.item() == pytest.approx(weight * want.item(), rel=1e-10, abs=1e-12)
    assert losses.fused.item() == pytest.approx(mse_loss(first["fused"], target).item(), rel=1e-12)
    assert torch.isfinite(losses.extra) and losses.extra.requires_grad


def test_the_weight_can_be_set_and_one_view_is_refused_where_two_are_needed(dataset):
    config = replace(BASE, contrastive=True, contrastive_loss="conr", contrastive_weight=0.0, modalities=("oct",))
    model, objective, inputs, target = _setup(dataset, config)
    assert objective.closure(model, inputs, target, margin=0.4)().extra.item() == 0.0
    with pytest.raises(ValueError, match="two augmented views"):
        TrainConfig(contrastive=True, contrastive_loss="simclr", contrastive_views=1)
    with pytest.raises(ValueError, match="augment=True"):
        TrainConfig(contrastive=True, contrastive_loss="rnc", augment=False)
    with pytest.raises(ValueError, match="contrastive_loss"):
        TrainConfig(contrastive_loss="moco")


def test_am_supcon_stays_one_view(dataset):
    config = replace(BASE, contrastive=True, modalities=("oct",))
    assert config.views() == 1
    _, _, inputs, _ = _setup(dataset, config)
    assert SECOND_VIEW not in inputs


def test_lds_weights_the_regression_losses_by_the_label_density(dataset):
    config = replace(BASE, lds=True, augment=False)
    model, objective, inputs, target = _setup(dataset, config, n=16)
    losses = objective.closure(model, inputs, target)()
    out = model(inputs)
    weights = lds_weights(dataset.train.y.double(), 1.0)(target * objective.label_std + objective.label_mean)
    assert not torch.allclose(weights, torch.ones_like(weights))
    assert losses.fused.item() == pytest.approx(weighted_mse(out["fused"], target, weights).item(), rel=1e-12)
    assert losses.unimodal["oct"].item() == pytest.approx(
        weighted_mse(out["unimodal"]["oct"], target, weights).item(), rel=1e-12)
    with pytest.raises(ValueError, match="lds"):
        TrainConfig(lds=True, regression_loss="smape_r2")


def test_the_echomen_head_trains_its_experts_on_frozen_encoders(dataset, tmp_path):
    pretrained = fit(dataset, replace(BASE, modalities=("oct",)), progress=False)
    paths = save_encoders(pretrained.model, tmp_path)
    config = replace(BASE, head="echomen", modalities=("oct",), init_encoders=paths, augment=False)
    model, objective, inputs, target = _setup(dataset, config, n=16)
    assert isinstance(model, MultiExpertRegressor)
    check_model(model)
    out = model(inputs)["experts"]
    weights = fit_expert_weights(dataset.train.y.double(), bin_width=1.0)(target * objective.label_std
                                                                          + objective.label_mean)
    want = multi_expert_loss(out.experts, out.gate, target, weights)["loss"]
    assert objective.closure(model, inputs, target)().fused.item() == pytest.approx(want.item(), rel=1e-12)

    result = fit(dataset, config, progress=False)
    before, after = pretrained.model.encoders["oct"].state_dict(), result.model.encoders["oct"].state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and BatchNorm statistics
    shares = result.model.fusion_contributions(result.model.encode(inputs))
    torch.testing.assert_close(sum(shares.values()), result.model(inputs)["fused"], rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="echomen head"):
        TrainConfig(head="echomen", contrastive=True)


def test_fds_statistics_come_from_the_training_features_and_calibrate_the_heads_in_training(dataset):
    config = replace(BASE, fds=True, modalities=("oct",), label_bin_width=2.0, augment=False)
    result = fit(dataset, config, progress=False)
    model, fds = result.model, result.model.fds["oct"]
    assert fds.last_update_epoch == 0
    # the end-of-epoch update: per 2 dB bin, the mean of the encoder's features of every training eye
    objective = build_objective(dataset, config)
    model.eval()
    with torch.no_grad():
        inputs, _ = objective.prepare(dataset.train.batch(torch.arange(len(dataset.train))))
        features = model.encode(inputs)["oct"]
    y = dataset.train.y.double()
    bins = torch.floor((y - y.min()) / 2.0).long().clamp(max=fds.bins.n - 1)
    for b in bins.unique().tolist():
        torch.testing.assert_close(fds.running_mean[b], features[bins == b].mean(0), rtol=1e-9, atol=1e-9)
    # training-mode forward: the head reads the calibrated features; evaluation mode: the features as they are
    model.train()
    with torch.no_grad():
        out = model(inputs)
        calibrated = fds.calibrate(out["features"]["oct"], inputs["labels"])
        torch.testing.assert_close(out["fused"], model.fusion_head(calibrated).squeeze(-1))
        assert not torch.allclose(calibrated, out["features"]["oct"])
        model.eval()
        torch.testing.assert_close(model(inputs)["fused"], model.fusion_head(model.encode(inputs)["oct"]).squeeze(-1))
    # the statistics and their epoch travel with the weights (checkpoints, best-epoch copies)
    fresh = build_model(dataset, config)
    assert fresh.fds["oct"].last_update_epoch == -1
    fresh.load_state_dict(model.state_dict())
    assert fresh.fds["oct"].last_update_epoch == 0 and torch.equal(fresh.fds["oct"].running_var, fds.running_var)
