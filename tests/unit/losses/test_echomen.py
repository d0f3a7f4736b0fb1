"""EchoMEN (remd_core.losses.echomen, remd_core.models.multi_expert): the LDW-SupCon loss against a double loop, the expert
weights and the aggregation against hand computations, the stage-2 loss against a re-computation,
edge cases and invalid hyperparameters."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from remd_core.losses import echomen
from remd_core.models.multi_expert import MultiExpertHead
from remd_core.losses import am_supcon_loss


# ---------------------------------------------------------------------------------------------
# reference: Eqs. (1)-(2) by plain loops
# ---------------------------------------------------------------------------------------------

def loop_ldw_supcon(z, y, tau, base_tau, radius, distance, scale):
    """Eq. (1) with Eq. (2)'s beta on negatives and weight 1 on positives; mean over anchors with a
    positive. Pure Python floats."""
    z = [np.asarray(v, dtype=np.float64) / np.linalg.norm(v) for v in z]
    y = [float(v) for v in y]
    n = len(y)

    def d(i, j):
        diff = y[i] - y[j]
        return scale * (abs(diff) if distance == "l1" else diff * diff)

    losses = []
    for i in range(n):
        positives = [j for j in range(n) if j != i and abs(y[i] - y[j]) <= radius]
        negatives = [j for j in range(n) if j != i and j not in positives]
        if not positives:
            continue
        z_sum = sum(math.exp(d(i, k)) for k in negatives)
        den = 0.0
        for j in range(n):
            if j == i:
                continue
            w = 1.0 if j in positives else len(negatives) * math.exp(d(i, j)) / z_sum
            den += w * math.exp(float(z[i] @ z[j]) / tau)
        total = 0.0
        for p in positives:
            total += math.log(math.exp(float(z[i] @ z[p]) / tau) / den)
        losses.append(-(tau / base_tau) * total / len(positives))
    return sum(losses) / len(losses) if losses else 0.0


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(7, 5, generator=g, dtype=torch.float64)
    y = torch.tensor([0.0, 0.0, 1.0, 2.5, 2.5, 4.0, -1.3], dtype=torch.float64)
    return z, y


@pytest.mark.parametrize("radius,distance,scale,tau,base_tau", [
    (0.0, "l1", 1.0, 1.0, 1.0),      # paper's "same label", official temperatures
    (1.2, "l1", 0.7, 0.5, 0.07),
    (0.0, "l2", 1.0, 0.2, 0.2),
    (1.6, "l2", 2.0, 0.1, 0.3),
])
def test_ldw_supcon_matches_double_loop(batch, radius, distance, scale, tau, base_tau):
    z, y = batch
    got = echomen.ldw_supcon_loss(z, y, temperature=tau, base_temperature=base_tau, positive_radius=radius,
                                  distance=distance, distance_scale=scale)
    want = loop_ldw_supcon(z.numpy(), y.numpy(), tau, base_tau, radius, distance, scale)
    assert want != 0.0
    assert got.item() == pytest.approx(want, rel=1e-10, abs=1e-12)


def test_views_are_positives_and_match_the_flattened_batch():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(4, 2, 3, generator=g, dtype=torch.float64)   # [B, V, D]
    y = torch.tensor([0.1, 0.9, 2.0, 3.3], dtype=torch.float64)  # all distinct: only views are positives
    got = echomen.ldw_supcon_loss(z, y, temperature=0.5)
    flat = torch.cat([z[:, 0], z[:, 1]])
    want = loop_ldw_supcon(flat.numpy(), y.repeat(2).numpy(), 0.5, 1.0, 0.0, "l1", 1.0)
    assert got.item() == pytest.approx(want, rel=1e-10)
    assert echomen.ldw_supcon_loss(z[:, 0], y, temperature=0.5).item() == 0.0  # one view: no positive


def test_zero_distance_scale_is_plain_supcon(batch):
    z, y = batch  # no label difference equals the radius, so <= and < select the same pairs
    got = echomen.ldw_supcon_loss(z, y, temperature=0.3, base_temperature=0.07, positive_radius=1.1,
                                  distance_scale=0.0)
    want = am_supcon_loss(z, y, margin=1.1, temperature=0.3, base_temperature=0.07)
    assert got.item() == pytest.approx(want.item(), rel=1e-10)


def test_pair_weights_follow_eq2(batch):
    _, y = batch
    pos, w = echomen.ldw_pair_weights(y, positive_radius=0.0, distance="l1", distance_scale=1.0)
    assert not pos.diagonal().any() and (w.diagonal() == 0).all()
    assert pos[0, 1] and pos[3, 4] and not pos[0, 2]
    neg = ~pos & ~torch.eye(7, dtype=torch.bool)
    for i in range(7):
        # an anchor's negative weights average to 1, positives weigh 1
        assert w[i][neg[i]].mean().item() == pytest.approx(1.0, rel=1e-12)
        assert (w[i][pos[i]] == 1).all()
    # anchor 0 (y=0): negatives at |dy| 1, 2.5, 2.5, 4, 1.3 -> beta = 5 e^d / sum e^d
    ds = [1.0, 2.5, 2.5, 4.0, 1.3]
    total = sum(math.exp(v) for v in ds)
    assert w[0, 2].item() == pytest.approx(5 * math.exp(1.0) / total, rel=1e-12)
    assert w[0, 5].item() == pytest.approx(5 * math.exp(4.0) / total, rel=1e-12)
    assert w[0, 5] > w[0, 3] > w[0, 6] > w[0, 2]  # farther label, harder push


# ---------------------------------------------------------------------------------------------
# edge cases: finite losses and gradients
# ---------------------------------------------------------------------------------------------

def _loss_and_grad(z, y, **kw):
    z = z.clone().requires_grad_(True)
    loss = echomen.ldw_supcon_loss(z, y, **kw)
    loss.backward()
    return loss, z.grad


def test_one_label_region_batch_is_finite():
    z = torch.randn(6, 4, generator=torch.Generator().manual_seed(2))
    y = torch.full((6,), 1.5)  # every pair positive, no negative at all
    loss, grad = _loss_and_grad(z, y)
    assert torch.isfinite(loss) and loss.item() > 0 and torch.isfinite(grad).all()
    want = loop_ldw_supcon(z.double().numpy(), y.double().numpy(), 1.0, 1.0, 0.0, "l1", 1.0)
    assert loss.item() == pytest.approx(want, rel=1e-5)


def test_anchor_without_positive_is_left_out():
    z = torch.randn(5, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    y = torch.tensor([0.0, 0.0, 5.0, 9.0, 0.0], dtype=torch.float64)  # anchors 2 and 3 have none
    loss, grad = _loss_and_grad(z, y)
    want = loop_ldw_supcon(z.numpy(), y.numpy(), 1.0, 1.0, 0.0, "l1", 1.0)
    assert loss.item() == pytest.approx(want, rel=1e-10)
    assert torch.isfinite(grad).all()


@pytest.mark.parametrize("y", [torch.tensor([0.0, 1.0, 2.0, 3.0]), torch.tensor([7.0])])
def test_no_positive_anywhere_gives_an_attached_zero(y):
    z = torch.randn(y.numel(), 3, generator=torch.Generator().manual_seed(4))
    loss, grad = _loss_and_grad(z, y)
    assert loss.item() == 0.0 and (grad == 0).all()


def test_extreme_scales_stay_finite():
    g = torch.Generator().manual_seed(5)
    z = torch.randn(6, 4, generator=g) * 1e30
    y = torch.tensor([0.0, 0.0, 30.0, 30.0, 60.0, 60.0])
    loss, grad = _loss_and_grad(z, y, temperature=0.01, base_temperature=0.07, distance="l2",
                                distance_scale=10.0)  # distances up to 36,000: exp would overflow
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    z64 = (torch.randn(6, 4, generator=g, dtype=torch.float64))
    got = echomen.ldw_supcon_loss(z64, y.double(), temperature=0.5, distance="l2", distance_scale=0.1)
    want = loop_ldw_supcon(z64.numpy(), y.numpy(), 0.5, 1.0, 0.0, "l2", 0.1)  # exp(360) fits a double
    assert got.item() == pytest.approx(want, rel=1e-9)


# ---------------------------------------------------------------------------------------------
# expert weights (Eq. 4)
# ---------------------------------------------------------------------------------------------

TRAIN = [0.2, 0.4, 0.7, 1.5, 3.1]  # bins of width 1 from 0: counts 3, 1, 0, 1


def test_expert_exponents():
    assert echomen.expert_exponents(3).tolist() == [0.0, 0.5, 1.0]
    assert echomen.expert_exponents(2).tolist() == [0.0, 1.0]


def test_expert_weights_by_bin_against_hand_computation():
    table = echomen.fit_expert_weights(TRAIN, 3, bin_width=1.0)
    assert table.low == 0.0 and table.counts.tolist() == [3.0, 1.0, 1.0, 1.0]  # empty bin clipped to 1
    w = table(torch.tensor([0.5, 2.5, -7.0, 100.0, 1.0], dtype=torch.float64))
    norm_half = (3 / math.sqrt(3) + 2) / 5       # mean of count^-1/2 over the training labels
    norm_one = (3 * (1 / 3) + 2) / 5             # mean of count^-1
    expected = [[1.0, (1 / math.sqrt(3)) / norm_half, (1 / 3) / norm_one],
                [1.0, 1.0 / norm_half, 1.0 / norm_one],
                [1.0, (1 / math.sqrt(3)) / norm_half, (1 / 3) / norm_one],  # below the range: first bin
                [1.0, 1.0 / norm_half, 1.0 / norm_one],                      # above: last bin
                [1.0, 1.0 / norm_half, 1.0 / norm_one]]                      # 1.0 opens bin [1, 2)
    np.testing.assert_allclose(w.numpy(), expected, rtol=1e-12)
    # normalised to mean 1 over the training labels, expert by expert
    np.testing.assert_allclose(table(torch.tensor(TRAIN, dtype=torch.float64)).mean(0).numpy(), 1.0, rtol=1e-12)


def test_expert_weights_clipping_and_interpolation():
    table = echomen.fit_expert_weights(TRAIN, 2, bin_width=1.0, max_count=2.0)
    assert table.counts.tolist() == [2.0, 1.0, 1.0, 1.0]
    interp = echomen.fit_expert_weights(TRAIN, 2, bin_width=1.0, interpolate=True)
    # bin centres 0.5, 1.5, 2.5, 3.5 with counts 3, 1, 1, 1; beyond the end centres the official code
    # interpolates toward the empty neighbour bins (centres -0.5 and 4.5), whose counts clip to min_count 1
    counts = interp.count_at(torch.tensor([1.0, 0.2, 0.7, 3.9], dtype=torch.float64))
    np.testing.assert_allclose(counts.numpy(), [2.0, 1 * 0.3 + 3 * 0.7, 3 * 0.8 + 1 * 0.2, 1.0], rtol=1e-12)
    floor5 = echomen.fit_expert_weights(TRAIN, 2, bin_width=1.0, interpolate=True, min_count=0.5)
    assert floor5.count_at(torch.tensor([0.2], dtype=torch.float64)).item() == pytest.approx(0.5 * 0.3 + 3 * 0.7)
    # training labels 0.2, 0.4, 0.7, 1.5, 3.1 have counts 2.4, 2.8, 2.6, 1, 1
    norm = (1 / 2.4 + 1 / 2.8 + 1 / 2.6 + 1 + 1) / 5
    assert interp(torch.tensor([1.0], dtype=torch.float64))[0, 1].item() == pytest.approx(0.5 / norm, rel=1e-12)
    # bins aligned to multiples of the width
    assert echomen.fit_expert_weights([-3.7, -1.2, 0.4], 3, bin_width=2.0).low == -4.0


# ---------------------------------------------------------------------------------------------
# the multi-expert head and its loss
# ---------------------------------------------------------------------------------------------

def test_head_aggregation_against_hand_computation():
    head = MultiExpertHead(2, 2, hidden=2).double()
    with torch.no_grad():
        head.experts.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
        head.experts.bias.copy_(torch.tensor([0.0, 1.0]))
        first, last = head.aggregator[0], head.aggregator[2]
        first.weight.copy_(torch.eye(2))
        first.bias.zero_()
        last.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 0.0]]))
        last.bias.zero_()
    with torch.no_grad():
        out = head(torch.tensor([[1.0, -2.0]], dtype=torch.float64))
    # experts: 1 and -2 + 1 = -1; gate logits relu(1, -2) -> (1, 0): alpha = (e, 1) / (e + 1)
    e = math.e
    np.testing.assert_allclose(out.experts.numpy(), [[1.0, -1.0]])
    np.testing.assert_allclose(out.gate.numpy(), [[e / (e + 1), 1 / (e + 1)]], rtol=1e-12)
    assert out.prediction.shape == (1,)
    assert out.prediction.item() == pytest.approx((e - 1) / (e + 1), rel=1e-12)  # = tanh(1/2)


def test_mean_aggregator_and_initialisation():
    torch.manual_seed(0)
    head = MultiExpertHead(64, 4, aggregator="mean", bias_init=2.5, weight_init_std=0.01)
    assert head.aggregator is None and head.experts.bias.tolist() == [2.5] * 4
    assert head.experts.weight.std().item() == pytest.approx(0.01, rel=0.1)
    x = torch.randn(5, 64)
    out = head(x)
    assert out.experts.shape == (5, 4) and out.gate.shape == (5, 4)
    torch.testing.assert_close(out.prediction, out.experts.mean(dim=1))
    learned = MultiExpertHead(64, 3)(x)
    torch.testing.assert_close(learned.gate.sum(dim=1), torch.ones(5))
    assert MultiExpertHead(8).exponents.tolist() == [0.0, 0.5, 1.0]


@pytest.mark.parametrize("kind", ["mse", "l1"])
def test_multi_expert_loss_against_recomputation(kind):
    g = torch.Generator().manual_seed(7)
    b, m = 6, 3
    experts = torch.randn(b, m, generator=g, dtype=torch.float64)
    gate = torch.softmax(torch.randn(b, m, generator=g, dtype=torch.float64), dim=1)
    target = torch.randn(b, generator=g, dtype=torch.float64)
    weights = torch.rand(b, m, generator=g, dtype=torch.float64) + 0.5
    out = echomen.multi_expert_loss(experts, gate, target, weights, loss=kind, aggregator_weight=0.3)

    def err(a, t):
        return (a - t) ** 2 if kind == "mse" else abs(a - t)

    per_expert = [sum(weights[i, k].item() * err(experts[i, k].item(), target[i].item()) for i in range(b)) / b
                  for k in range(m)]
    agg = sum(err(sum(gate[i, k].item() * experts[i, k].item() for k in range(m)), target[i].item())
              for i in range(b)) / b
    np.testing.assert_allclose(out["per_expert"].numpy(), per_expert, rtol=1e-12)
    assert out["experts"].item() == pytest.approx(sum(per_expert), rel=1e-12)
    assert out["aggregator"].item() == pytest.approx(agg, rel=1e-12)
    assert out["loss"].item() == pytest.approx(sum(per_expert) + 0.3 * agg, rel=1e-12)
    ones = echomen.multi_expert_loss(experts, gate, target, None, loss=kind)
    np.testing.assert_allclose(ones["per_expert"].numpy(),
                               [sum(err(experts[i, k].item(), target[i].item()) for i in range(b)) / b
                                for k in range(m)], rtol=1e-12)


def test_experts_and_aggregator_get_only_their_own_gradients():
    g = torch.Generator().manual_seed(8)
    experts = torch.randn(4, 3, generator=g, requires_grad=True)
    logits = torch.randn(4, 3, generator=g, requires_grad=True)
    target = torch.randn(4, generator=g)
    out = echomen.multi_expert_loss(experts, torch.softmax(logits, dim=1), target)
    out["aggregator"].backward(retain_graph=True)
    assert experts.grad is None and logits.grad.abs().sum() > 0
    logits.grad = None
    out["experts"].backward()
    assert logits.grad is None and experts.grad.abs().sum() > 0


def test_stage2_end_to_end_one_region_batch_finite_and_training():
    torch.manual_seed(1)
    head = MultiExpertHead(8, 3)
    table = echomen.fit_expert_weights(np.r_[np.zeros(50), np.linspace(-20, 0, 20)], 3, bin_width=1.0)
    x = torch.randn(16, 8)
    y = torch.full((16,), -0.3)  # one label region: every sample in the same (crowded) bin
    opt = torch.optim.SGD(head.parameters(), lr=0.05)
    losses = []
    for _ in range(30):
        out = head(x)
        loss = echomen.multi_expert_loss(out.experts, out.gate, y, table(y))
        opt.zero_grad()
        loss["loss"].backward()
        assert all(torch.isfinite(p.grad).all() for p in head.parameters() if p.grad is not None)
        opt.step()
        losses.append(loss["loss"].item())
    assert math.isfinite(losses[-1]) and losses[-1] < 0.5 * losses[0]


# ---------------------------------------------------------------------------------------------
# invalid hyperparameters
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs", [
    {"temperature": 0.0}, {"temperature": -1.0}, {"base_temperature": 0.0}, {"temperature": float("nan")},
    {"temperature": float("inf")},
    {"positive_radius": -0.1}, {"positive_radius": float("inf")}, {"distance": "cosine"},
    {"distance_scale": -1.0}, {"distance_scale": float("nan")},
])
def test_ldw_invalid_hyperparameters(kwargs):
    z, y = torch.randn(4, 3), torch.arange(4.0)
    with pytest.raises(ValueError):
        echomen.ldw_supcon_loss(z, y, **kwargs)


def test_invalid_inputs_and_settings():
    with pytest.raises(ValueError):
        echomen.ldw_supcon_loss(torch.randn(4), torch.arange(4.0))          # z not [B, D]
    with pytest.raises(ValueError):
        echomen.ldw_supcon_loss(torch.randn(4, 3), torch.arange(5.0))       # label count
    for bad in (1, 0, 2.5, True):
        with pytest.raises(ValueError):
            echomen.expert_exponents(bad)
    for kwargs in ({"bin_width": 0.0}, {"min_count": 0.0}, {"min_count": 5.0, "max_count": 2.0}):
        with pytest.raises(ValueError):
            echomen.fit_expert_weights(TRAIN, 3, **kwargs)
    for labels in ([], [0.0, float("nan")]):
        with pytest.raises(ValueError):
            echomen.fit_expert_weights(labels, 3)
    for kwargs in ({"num_experts": 1}, {"aggregator": "gating"}, {"hidden": 0}, {"bias_init": float("inf")},
                   {"weight_init_std": -1.0}, {"in_features": 0}):
        kw = {"in_features": 4, **kwargs}
        with pytest.raises(ValueError):
            MultiExpertHead(**kw)
    with pytest.raises(ValueError):
        MultiExpertHead(4)(torch.randn(2, 5))
    e, gate, t = torch.randn(3, 2), torch.full((3, 2), 0.5), torch.zeros(3)
    with pytest.raises(ValueError):
        echomen.multi_expert_loss(e, gate, t, loss="huber")
    with pytest.raises(ValueError):
        echomen.multi_expert_loss(e, gate, t, aggregator_weight=-1.0)
    with pytest.raises(ValueError):
        echomen.multi_expert_loss(e, gate[:, :1], t)
    with pytest.raises(ValueError):
        echomen.multi_expert_loss(e, gate, torch.zeros(4))
    with pytest.raises(ValueError):
        echomen.multi_expert_loss(e, gate, t, torch.ones(3, 3))


def test_expert_weights_to_device_keeps_values():
    table = echomen.fit_expert_weights(TRAIN, 3)
    moved = table.to("cpu")
    y = torch.tensor([0.5, 2.5], dtype=torch.float64)
    torch.testing.assert_close(moved(y), table(y))
    assert moved.interpolate == table.interpolate and moved.low == table.low
