"""Stage-1 losses: adaptive margin, label-distance SupCon, regression losses, the stage-1 objective."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from remd_core.losses import (MIN_LABEL_VAR, SMAPE_FLOOR_DB, am_supcon_loss, l1_loss, margin_schedule, mse_loss,
                              one_minus_r2, positive_mask, regression_loss, smape_loss, smape_r2_loss,
                              stage1_loss)
from remd_core.evaluation.metrics import SMAPE_EPS, r2, smape


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(0)


# ---------------------------------------------------------------------------------------------
# margin schedule and positive mask
# ---------------------------------------------------------------------------------------------

def test_margin_schedule_hand_values():
    m0, beta, t_n = 0.4, 0.0005, 1000
    assert margin_schedule(0, m0, beta, t_n) == pytest.approx(0.4)
    assert margin_schedule(999, m0, beta, t_n) == pytest.approx(0.4)
    assert margin_schedule(1000, m0, beta, t_n) == pytest.approx(0.4)
    assert margin_schedule(3000, m0, beta, t_n) == pytest.approx(0.4 * math.exp(-1))
    assert margin_schedule(1000.5, m0, beta, t_n) == pytest.approx(0.4 * math.exp(-0.00025))
    assert isinstance(margin_schedule(5, m0, beta, t_n), float)


def test_margin_schedule_array_and_no_warmup():
    steps = np.array([0, 999, 1000, 3000, 5000])
    out = margin_schedule(steps, 0.4, 0.0005, 1000)
    assert isinstance(out, np.ndarray) and out.shape == steps.shape
    np.testing.assert_allclose(out, [0.4, 0.4, 0.4, 0.4 * math.exp(-1), 0.4 * math.exp(-2)])
    # t_n = 0: decay from the first step; beta = 0: constant margin
    assert margin_schedule(2000, 0.4, 0.0005, 0) == pytest.approx(0.4 * math.exp(-1))
    assert margin_schedule(10**6, 0.4, 0.0, 0) == pytest.approx(0.4)


@pytest.mark.parametrize("kwargs", [dict(m0=-0.1, beta=0.0, t_n=0), dict(m0=0.4, beta=-1e-3, t_n=0),
                                    dict(m0=0.4, beta=0.0, t_n=-1), dict(m0=float("nan"), beta=0.0, t_n=0)])
def test_margin_schedule_rejects_bad_hyperparameters(kwargs):
    with pytest.raises(ValueError):
        margin_schedule(0, **kwargs)


def test_positive_mask_hand_example():
    y = torch.tensor([0.0, 0.25, 0.5, 2.0])
    got = positive_mask(y, 0.5)
    # |0 - 0.5| = 0.5 is NOT < 0.5 (strict); the diagonal is never positive
    expected = torch.tensor([[False, True, False, False],
                             [True, False, True, False],
                             [False, True, False, False],
                             [False, False, False, False]])
    assert got.dtype == torch.bool
    assert torch.equal(got, expected)
    assert not positive_mask(y, 0.0).any()
    assert positive_mask(y, 0.5000001)[0, 2]
    assert torch.equal(positive_mask(y.view(-1, 1), 0.5), expected)  # [B, 1] labels accepted


def test_positive_mask_rejects_negative_margin():
    with pytest.raises(ValueError):
        positive_mask(torch.zeros(3), -0.1)


# ---------------------------------------------------------------------------------------------
# am_supcon_loss
# ---------------------------------------------------------------------------------------------

def reference_supcon(z: torch.Tensor, y: torch.Tensor, margin: float, tau: float, base_tau: float) -> float:
    """A direct double loop over anchors and positives, straight from the formula."""
    z = [[x / math.sqrt(sum(c * c for c in v)) for x in v] for v in z.tolist()]
    y = y.tolist()
    n = len(z)

    def s(i, j):
        return sum(a * b for a, b in zip(z[i], z[j])) / tau

    per_anchor = []
    for i in range(n):
        positives = [p for p in range(n) if p != i and abs(y[i] - y[p]) < margin]
        if not positives:
            continue
        denom = sum(math.exp(s(i, a)) for a in range(n) if a != i)
        terms = [math.log(math.exp(s(i, p)) / denom) for p in positives]
        per_anchor.append(-(tau / base_tau) * sum(terms) / len(terms))
    return sum(per_anchor) / len(per_anchor) if per_anchor else 0.0


@pytest.mark.parametrize("margin", [0.1, 0.4, 1.0, 3.0])
@pytest.mark.parametrize("tau,base_tau", [(0.07, 0.07), (0.5, 0.07), (1.0, 1.0)])
def test_am_supcon_matches_double_loop(gen, margin, tau, base_tau):
    z = torch.randn(9, 5, generator=gen, dtype=torch.float64)
    y = torch.randn(9, generator=gen, dtype=torch.float64)
    got = am_supcon_loss(z, y, margin, temperature=tau, base_temperature=base_tau)
    expected = reference_supcon(z, y, margin, tau, base_tau)
    assert positive_mask(y, margin).any()  # the case is not vacuous
    assert got.item() == pytest.approx(expected, rel=1e-10, abs=1e-12)


def test_am_supcon_excludes_anchors_without_positive():
    """Anchors 2 and 3 have no positive: the mean runs over anchors 0 and 1 only."""
    z = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [-1.0, 0.2]], dtype=torch.float64)
    y = torch.tensor([0.0, 0.1, 5.0, 10.0], dtype=torch.float64)
    got = am_supcon_loss(z, y, 0.5, temperature=1.0, base_temperature=1.0)
    assert got.item() == pytest.approx(reference_supcon(z, y, 0.5, 1.0, 1.0), rel=1e-12)
    # counting the two anchors as zeros (the later SupContrast fix) would halve it
    zn = torch.nn.functional.normalize(z, dim=1)
    s = zn @ zn.T
    l0 = -(s[0, 1] - torch.log(torch.exp(s[0, [1, 2, 3]]).sum()))
    l1 = -(s[1, 0] - torch.log(torch.exp(s[1, [0, 2, 3]]).sum()))
    assert got.item() == pytest.approx(((l0 + l1) / 2).item(), rel=1e-12)


@pytest.mark.parametrize("scale", [1e-20, 1e-3, 7.0, 1e20])
def test_am_supcon_invariant_to_feature_scale(gen, scale):
    z = torch.randn(8, 6, generator=gen)
    y = torch.randn(8, generator=gen)
    base = am_supcon_loss(z, y, 0.8)
    scaled = am_supcon_loss(z * scale, y, 0.8)
    assert torch.isfinite(scaled)
    assert scaled.item() == pytest.approx(base.item(), rel=1e-5)


@pytest.mark.parametrize("z_value", [1e30, 1e-30])
def test_am_supcon_extreme_features_have_finite_gradients(gen, z_value):
    z = (torch.randn(6, 4, generator=gen).sign() * z_value).requires_grad_()
    y = torch.linspace(0, 1, 6)
    loss = am_supcon_loss(z, y, 0.5)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z.grad).all()


def test_am_supcon_no_positive_is_a_differentiable_zero(gen):
    z = torch.randn(5, 3, generator=gen, requires_grad=True)
    y = torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0])
    for margin, labels in ((0.0, y), (0.5, y), (1.0, y)):  # 1.0: pairs exactly 1 apart are negatives
        loss = am_supcon_loss(z, labels, margin)
        assert loss.item() == 0.0 and loss.requires_grad
        z.grad = None
        loss.backward()
        assert torch.equal(z.grad, torch.zeros_like(z))


def test_am_supcon_batch_of_one():
    z = torch.randn(1, 4, requires_grad=True)
    loss = am_supcon_loss(z, torch.tensor([0.3]), margin=10.0)
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(z.grad, torch.zeros_like(z))


def test_am_supcon_huge_features_no_positive_is_zero_not_nan():
    z = torch.full((3, 2), 3e38, requires_grad=True)  # z.sum() would overflow to inf; inf * 0 = NaN
    loss = am_supcon_loss(z, torch.tensor([0.0, 5.0, 10.0]), 1.0)
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(z.grad, torch.zeros_like(z))


def test_am_supcon_all_labels_equal_everyone_positive(gen):
    z = torch.randn(6, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    y = torch.full((6,), -3.2, dtype=torch.float64)
    assert positive_mask(y, 0.4).sum() == 6 * 5
    loss = am_supcon_loss(z, y, 0.4)
    assert loss.item() == pytest.approx(reference_supcon(z.detach(), y, 0.4, 0.07, 0.07), rel=1e-10)
    # every other sample is a positive: L_i = logsumexp_{a != i} s_ia - mean_{a != i} s_ia >= log(B - 1)
    assert loss.item() >= math.log(5) - 1e-12
    loss.backward()
    assert torch.isfinite(z.grad).all()


def test_am_supcon_identical_features(gen):
    z = torch.ones(6, 4, requires_grad=True)
    y = torch.randn(6, generator=gen)
    loss = am_supcon_loss(z, y, 10.0)  # all positives; all similarities equal: L_i = log(B - 1)
    loss.backward()
    assert loss.item() == pytest.approx(math.log(5), rel=1e-5)
    assert torch.isfinite(z.grad).all()


def test_am_supcon_tiny_temperature_stays_finite(gen):
    z = torch.randn(8, 4, generator=gen, requires_grad=True)
    y = torch.randn(8, generator=gen)
    loss = am_supcon_loss(z, y, 1.0, temperature=1e-4)  # logits down to -2e4: exp underflows to 0
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z.grad).all()


def test_am_supcon_gradcheck(gen):
    z = torch.randn(5, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0.0, 0.2, 0.5, 1.5, 1.6], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda t: am_supcon_loss(t, y, 0.4, temperature=0.5), (z,))


def test_am_supcon_pulls_positives_together():
    """One gradient step on the features raises the similarity of a positive pair."""
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.1]], requires_grad=True)
    y = torch.tensor([0.0, 0.1, 3.0])
    am_supcon_loss(z, y, 0.5).backward()
    with torch.no_grad():
        before = torch.nn.functional.cosine_similarity(z[0], z[1], dim=0)
        z2 = z - 0.1 * z.grad
        after = torch.nn.functional.cosine_similarity(z2[0], z2[1], dim=0)
    assert after > before


@pytest.mark.parametrize("kwargs", [dict(margin=-0.1), dict(margin=0.4, temperature=0.0),
                                    dict(margin=0.4, temperature=-1.0),
                                    dict(margin=0.4, base_temperature=0.0)])
def test_am_supcon_rejects_bad_hyperparameters(kwargs):
    with pytest.raises(ValueError):
        am_supcon_loss(torch.randn(4, 3), torch.randn(4), **kwargs)


def test_am_supcon_rejects_shape_mismatch():
    with pytest.raises(ValueError):
        am_supcon_loss(torch.randn(4, 3), torch.randn(5), 0.4)
    with pytest.raises(ValueError):
        am_supcon_loss(torch.randn(4, 3, 2), torch.randn(4), 0.4)


# ---------------------------------------------------------------------------------------------
# regression losses
# ---------------------------------------------------------------------------------------------

PRED = torch.tensor([1.0, -2.0, 3.0, 0.5], dtype=torch.float64)
TARGET = torch.tensor([2.0, -4.0, 3.0, -0.5], dtype=torch.float64)


def test_mse_and_l1_hand_values():
    # errors: -1, 2, 0, 1
    assert mse_loss(PRED, TARGET).item() == pytest.approx((1 + 4 + 0 + 1) / 4)
    assert l1_loss(PRED, TARGET).item() == pytest.approx((1 + 2 + 0 + 1) / 4)
    assert regression_loss("mse")(PRED, TARGET).item() == pytest.approx(1.5)
    assert regression_loss("l1")(PRED, TARGET).item() == pytest.approx(1.0)


def test_regression_losses_do_not_broadcast_b_by_1_against_b():
    assert mse_loss(PRED.view(-1, 1), TARGET).item() == pytest.approx(1.5)
    with pytest.raises(ValueError):
        mse_loss(PRED, TARGET[:3])


def test_smape_hand_value_and_agreement_with_metrics():
    # |y - yhat| / ((|y| + |yhat|) / 2): 1/1.5, 2/3, 0/3, 1/0.5
    expected = (1 / 1.5 + 2 / 3 + 0 + 2.0) / 4
    assert smape_loss(PRED, TARGET).item() == pytest.approx(expected)
    assert smape_loss(PRED, TARGET).item() == pytest.approx(smape(TARGET.numpy(), PRED.numpy()))
    # the guarded denominator: y = yhat = 0 scores 0, not NaN
    zeros = torch.zeros(3, requires_grad=True)
    loss = smape_loss(zeros, torch.zeros(3))
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(zeros.grad).all()


def test_one_minus_r2_hand_value_and_agreement_with_metrics():
    # SSE = 6; mean(y) = 0.125, SST = 1.875^2 + 4.125^2 + 2.875^2 + 0.625^2 = 29.1875
    assert one_minus_r2(PRED, TARGET).item() == pytest.approx(6 / 29.1875)
    assert one_minus_r2(PRED, TARGET).item() == pytest.approx(1 - r2(TARGET.numpy(), PRED.numpy()))


def test_smape_r2_hand_value_and_weights():
    smape_part = (1 / 1.5 + 2 / 3 + 0 + 1 / 1.0) / 4  # the last pair's denominator 0.5 dB is floored at 1 dB
    r2_part = 6 / 29.1875
    assert smape_r2_loss(PRED, TARGET).item() == pytest.approx(smape_part + r2_part)
    unfloored = (1 / 1.5 + 2 / 3 + 0 + 1 / 0.5) / 4
    assert smape_r2_loss(PRED, TARGET, eps=1e-3).item() == pytest.approx(unfloored + r2_part)
    assert regression_loss("smape_r2")(PRED, TARGET).item() == pytest.approx(smape_part + r2_part)
    got = smape_r2_loss(PRED, TARGET, smape_weight=0.5, r2_weight=2.0).item()
    assert got == pytest.approx(0.5 * smape_part + 2.0 * r2_part)


def test_smape_r2_destandardises_for_smape(gen):
    mean, std = -6.0, 4.5  # dB, like MD
    y_db = mean + std * torch.randn(8, generator=gen, dtype=torch.float64)
    yhat_db = y_db + torch.randn(8, generator=gen, dtype=torch.float64)
    y_std, yhat_std = (y_db - mean) / std, (yhat_db - mean) / std
    on_db = smape_r2_loss(yhat_db, y_db)
    on_std = smape_r2_loss(yhat_std, y_std, label_mean=mean, label_std=std)
    assert on_std.item() == pytest.approx(on_db.item(), rel=1e-10)
    # and it is not the same as SMAPE on the standardised values
    assert smape_r2_loss(yhat_std, y_std).item() != pytest.approx(on_db.item(), rel=1e-3)
    fn = regression_loss("smape_r2", label_mean=mean, label_std=std)
    assert fn(yhat_std, y_std).item() == pytest.approx(on_db.item(), rel=1e-10)


def test_smape_r2_equal_labels_is_finite_and_floored():
    pred = torch.tensor([0.1, -0.2, 0.3], dtype=torch.float64, requires_grad=True)
    target = torch.full((3,), 0.5, dtype=torch.float64)  # SST = 0
    loss = smape_r2_loss(pred, target)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(pred.grad).all()
    sse = float(((pred.detach() - target) ** 2).sum())
    expected = smape_loss(pred.detach(), target, eps=SMAPE_FLOOR_DB).item() + sse / (3 * MIN_LABEL_VAR)
    assert loss.item() == pytest.approx(expected)
    # with the floor switched off the R^2 term is dropped, still finite
    no_floor = smape_r2_loss(pred.detach(), target, min_label_var=0.0)
    assert no_floor.item() == pytest.approx(smape_loss(pred.detach(), target, eps=SMAPE_FLOOR_DB).item())


def test_smape_r2_batch_of_one_drops_r2():
    pred = torch.tensor([-3.0], requires_grad=True)
    loss = smape_r2_loss(pred, torch.tensor([-5.0]))
    loss.backward()
    assert loss.item() == pytest.approx(2 / 4)
    assert torch.isfinite(pred.grad).all()
    assert one_minus_r2(pred, torch.tensor([-5.0])).item() == 0.0


def test_smape_eps_matches_metrics():
    y = torch.tensor([0.0, 0.0]), torch.tensor([1e-4, -1e-4])
    assert smape_loss(y[1], y[0]).item() == pytest.approx(smape(y[0].numpy(), y[1].numpy()))
    assert smape_loss(y[1], y[0]).item() == pytest.approx(1e-4 / SMAPE_EPS)


def test_regression_loss_rejects_unknown_names_and_arguments():
    with pytest.raises(ValueError, match="mse"):
        regression_loss("huber")
    with pytest.raises(ValueError):
        regression_loss("mse", label_mean=1.0)
    with pytest.raises(ValueError):
        regression_loss("smape_r2", label_sd=1.0)


@pytest.mark.parametrize("kwargs", [dict(label_std=0.0), dict(label_std=-1.0), dict(smape_weight=-1.0),
                                    dict(r2_weight=-0.5), dict(eps=0.0), dict(min_label_var=-1.0)])
def test_smape_r2_rejects_bad_hyperparameters(kwargs):
    with pytest.raises(ValueError):
        smape_r2_loss(PRED, TARGET, **kwargs)


# ---------------------------------------------------------------------------------------------
# stage-1 objective
# ---------------------------------------------------------------------------------------------

def test_stage1_loss_combines_terms(gen):
    pred = torch.randn(8, generator=gen, requires_grad=True)
    target = torch.randn(8, generator=gen)
    z = torch.randn(8, 16, generator=gen, requires_grad=True)
    out = stage1_loss(pred, target, z, target, margin=0.4, lam=0.3)
    assert set(out) == {"loss", "regression", "supcon", "contrastive", "n_anchors_with_positive"}
    assert out["regression"].item() == pytest.approx(mse_loss(pred, target).item())
    assert out["supcon"].item() == pytest.approx(am_supcon_loss(z, target, 0.4).item())
    assert out["contrastive"].item() == pytest.approx(0.3 * out["supcon"].item())
    assert out["loss"].item() == pytest.approx(out["regression"].item() + 0.3 * out["supcon"].item())
    assert isinstance(out["n_anchors_with_positive"], torch.Tensor)  # no host read inside a training step
    assert out["n_anchors_with_positive"].item() == int(positive_mask(target, 0.4).any(1).sum())
    out["loss"].backward()
    assert pred.grad is not None and z.grad.abs().sum() > 0


def test_stage1_loss_sums_the_supcon_losses_of_several_projections(gen):
    pred, target = torch.randn(8, generator=gen), torch.randn(8, generator=gen)
    z1, z2 = torch.randn(8, 5, generator=gen), torch.randn(8, 3, generator=gen)
    out = stage1_loss(pred, target, [z1, z2], target, margin=0.5, lam=2.0)
    expected = am_supcon_loss(z1, target, 0.5).item() + am_supcon_loss(z2, target, 0.5).item()
    assert out["supcon"].item() == pytest.approx(expected)
    assert out["loss"].item() == pytest.approx(mse_loss(pred, target).item() + 2.0 * expected)
    with pytest.raises(ValueError, match="at least one"):
        stage1_loss(pred, target, [], target, margin=0.5, lam=1.0)


def test_stage1_loss_regression_by_name_or_callable_and_no_positives(gen):
    pred, target = torch.randn(4, generator=gen), torch.randn(4, generator=gen)
    z = torch.randn(4, 3, generator=gen, requires_grad=True)
    out = stage1_loss(pred, target, z, target, margin=0.0, lam=1.0, regression="l1")
    assert out["n_anchors_with_positive"] == 0 and out["supcon"].item() == 0.0
    assert out["loss"].item() == pytest.approx(l1_loss(pred, target).item())
    fn = regression_loss("smape_r2", label_mean=-5.0, label_std=3.0)
    out = stage1_loss(pred, target, z, target, margin=0.0, lam=1.0, regression=fn)
    assert out["regression"].item() == pytest.approx(fn(pred, target).item())
    with pytest.raises(ValueError):
        stage1_loss(pred, target, z, target, margin=0.4, lam=-1.0)
    with pytest.raises(ValueError):
        stage1_loss(pred, target, z, target, margin=0.4, lam=1.0, regression="huber")
