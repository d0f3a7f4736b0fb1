"""Deep imbalanced regression (remd_core.imbalance): NT-Xent, ConR and Rank-N-Contrast against plain double
loops on small float64 batches, LDS weights against a hand computation, FDS statistics after two updates
against numpy, edge cases (finite losses and gradients) and hyperparameter checks."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch

from remd_core.data.labels import LabelBins, kernel_window
from remd_core.losses import CONR_BETA, conr_loss, conr_masks, lds_weights, nt_xent_loss, rnc_loss, weighted_mse
from remd_core.models.fds import FDS

D = torch.float64


def _feats(n, d=5, seed=0, dtype=D):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _cos(a, b):
    return float(a @ b) / math.sqrt(float(a @ a) * float(b @ b))


def _finite_grad(loss_fn, z):
    z = z.clone().requires_grad_(True)
    loss = loss_fn(z)
    loss.backward()
    return torch.isfinite(loss).item() and bool(torch.isfinite(z.grad).all()), loss.detach(), z.grad


# ---------------------------------------------------------------------------------------------
# NT-Xent (SimCLR Eq. 1)
# ---------------------------------------------------------------------------------------------

def _nt_xent_loop(z1, z2, t):
    z = torch.cat([z1, z2])
    n2 = z.shape[0]
    total = 0.0
    for i in range(n2):
        j = (i + n2 // 2) % n2
        den = sum(math.exp(_cos(z[i], z[k]) / t) for k in range(n2) if k != i)
        total += -math.log(math.exp(_cos(z[i], z[j]) / t) / den)
    return total / n2


@pytest.mark.parametrize("t", [0.5, 0.1, 1.0])
def test_nt_xent_matches_double_loop(t):
    z1, z2 = _feats(4, seed=1), _feats(4, seed=2) * 3.0
    assert nt_xent_loss(z1, z2, t).item() == pytest.approx(_nt_xent_loop(z1, z2, t), rel=1e-12)
    # symmetric in the two views; float32 agrees with float64
    assert nt_xent_loss(z2, z1, t).item() == pytest.approx(_nt_xent_loop(z1, z2, t), rel=1e-12)
    assert nt_xent_loss(z1.float(), z2.float(), t).item() == pytest.approx(_nt_xent_loop(z1, z2, t), rel=1e-4)


def test_nt_xent_edge_cases():
    # one example per view: the positive is the only other sample, loss 0, finite gradient
    ok, loss, _ = _finite_grad(lambda z: nt_xent_loss(z[:1], z[1:]), _feats(2))
    assert ok and loss.item() == pytest.approx(0.0, abs=1e-12)
    # all-zero and huge features stay finite
    assert _finite_grad(lambda z: nt_xent_loss(z[:3], z[3:]), torch.zeros(6, 4, dtype=D))[0]
    assert _finite_grad(lambda z: nt_xent_loss(z[:3], z[3:]), _feats(6) * 1e200)[0]
    # identical views with orthogonal examples: the positive wins, the loss is small
    eye = torch.eye(4, dtype=D)
    assert nt_xent_loss(eye, eye, 0.05).item() < 1e-6


@pytest.mark.parametrize("kwargs", [dict(temperature=0.0), dict(temperature=-1.0), dict(temperature=float("nan")),
                                    dict(temperature=float("inf"))])
def test_nt_xent_rejects_bad_temperature(kwargs):
    with pytest.raises(ValueError):
        nt_xent_loss(_feats(2), _feats(2, seed=1), **kwargs)


def test_nt_xent_rejects_bad_shapes():
    with pytest.raises(ValueError):
        nt_xent_loss(_feats(3), _feats(4))
    with pytest.raises(ValueError):
        nt_xent_loss(torch.zeros(0, 3), torch.zeros(0, 3))


# ---------------------------------------------------------------------------------------------
# ConR
# ---------------------------------------------------------------------------------------------

def _conr_loop(z, y, p, w, e, t, omega=None):
    m = z.shape[0]
    omega = [1.0] * m if omega is None else [float(o) for o in omega]
    total = 0.0
    for i in range(m):
        pos = [j for j in range(m) if j != i and abs(y[i] - y[j]) <= w]
        neg = [j for j in range(m) if abs(y[i] - y[j]) > w and abs(p[i] - p[j]) <= w]
        if not pos or not neg:
            continue
        s = [_cos(z[i], z[j]) / t for j in range(m)]
        den = sum(math.exp(s[j]) for j in pos)
        den += sum(omega[i] * math.exp(e * abs(y[i] - y[j])) * math.exp(s[j]) for j in neg)
        total += omega[i] * sum(-math.log(math.exp(s[j]) / den) for j in pos) / len(pos)
    return total / m


Y_CONR = [0.0, 0.4, 1.0, 2.5, 2.6, 6.0, 9.0, 9.9]
P_CONR = [0.3, 1.0, 0.8, 1.2, 3.0, 2.7, 7.0, 9.5]


def test_conr_batch_covers_every_case():
    pos, neg = conr_masks(torch.tensor(Y_CONR), torch.tensor(P_CONR), 1.0)
    has_pos, has_neg = pos.any(1), neg.any(1)
    assert (has_pos & has_neg).any() and (has_pos & ~has_neg).any() and (~has_pos).any()
    assert not pos.diagonal().any() and not neg.diagonal().any()


@pytest.mark.parametrize("w,e,t", [(1.0, 0.01, 0.07), (1.0, 0.5, 0.5), (2.0, 0.01, 0.2), (0.0, 0.1, 1.0)])
def test_conr_matches_double_loop(w, e, t):
    z = _feats(8, seed=3)
    got = conr_loss(z, torch.tensor(Y_CONR, dtype=D), torch.tensor(P_CONR, dtype=D), w=w, e=e, temperature=t)
    assert got.item() == pytest.approx(_conr_loop(z, Y_CONR, P_CONR, w, e, t), rel=1e-10, abs=1e-12)


def test_conr_with_sample_weights_and_two_views_matches_double_loop():
    z1, z2 = _feats(8, seed=4), _feats(8, seed=5)
    y = torch.tensor(Y_CONR, dtype=D)
    p1, p2 = torch.tensor(P_CONR, dtype=D), torch.tensor(P_CONR, dtype=D).flip(0)
    omega = torch.linspace(0.5, 2.0, 8, dtype=D)
    z, yy, pp, ww = torch.cat([z1, z2]), y.repeat(2), torch.cat([p1, p2]), omega.repeat(2)
    got = conr_loss(z, yy[:, None], pp[:, None], weights=ww)  # [M, 1] labels as the official code passes them
    expected = _conr_loop(z, yy.tolist(), pp.tolist(), 1.0, 0.01, 0.07, ww.tolist())
    assert got.item() == pytest.approx(expected, rel=1e-10)
    # with two views every anchor has a positive (its other view)
    assert conr_masks(yy, pp, 1.0)[0].any(1).all()
    assert CONR_BETA == 4.0


def test_conr_ignores_prediction_gradients_and_float32_agrees():
    z = _feats(8, seed=6)
    pred = torch.tensor(P_CONR, dtype=D, requires_grad=True)
    loss = conr_loss(z, torch.tensor(Y_CONR, dtype=D), pred)
    assert not loss.requires_grad  # z does not require grad and pred is only used for the masks
    loss32 = conr_loss(z.float(), torch.tensor(Y_CONR), torch.tensor(P_CONR))
    assert loss32.dtype == torch.float32 and loss32.item() == pytest.approx(loss.item(), rel=1e-4)


def test_conr_edge_cases_are_finite():
    y, p = torch.tensor(Y_CONR, dtype=D), torch.tensor(P_CONR, dtype=D)
    ok, loss, grad = _finite_grad(lambda z: conr_loss(z, y, p), _feats(8, seed=7))
    assert ok and loss.item() > 0
    # labels and predictions all far apart: no anchor has a positive or a negative -> an attached zero
    far = torch.arange(6, dtype=D) * 10
    ok, loss, grad = _finite_grad(lambda z: conr_loss(z, far, far), _feats(6))
    assert ok and loss.item() == 0.0 and torch.count_nonzero(grad) == 0
    # a batch of one; coincident and huge features; a tiny temperature
    assert _finite_grad(lambda z: conr_loss(z, y[:1], p[:1]), _feats(1))[0]
    assert _finite_grad(lambda z: conr_loss(z, y, p), torch.ones(8, 3, dtype=D))[0]
    assert _finite_grad(lambda z: conr_loss(z, y, p), _feats(8) * 1e200)[0]
    assert _finite_grad(lambda z: conr_loss(z, y, p, temperature=1e-4), _feats(8))[0]
    assert _finite_grad(lambda z: conr_loss(z.float(), y, p, temperature=1e-3), _feats(8))[0]


@pytest.mark.parametrize("kwargs", [dict(w=-1.0), dict(e=-0.1), dict(temperature=0.0), dict(w=float("nan")),
                                    dict(temperature=float("inf"))])
def test_conr_rejects_bad_hyperparameters(kwargs):
    with pytest.raises(ValueError):
        conr_loss(_feats(4), torch.arange(4.0), torch.arange(4.0), **kwargs)


def test_conr_rejects_bad_shapes():
    with pytest.raises(ValueError):
        conr_loss(_feats(4), torch.arange(3.0), torch.arange(4.0))
    with pytest.raises(ValueError):
        conr_loss(_feats(4), torch.arange(4.0), torch.arange(5.0))
    with pytest.raises(ValueError):
        conr_loss(_feats(4), torch.arange(4.0), torch.arange(4.0), weights=torch.ones(3))
    with pytest.raises(ValueError):
        conr_loss(torch.zeros(4), torch.arange(4.0), torch.arange(4.0))


# ---------------------------------------------------------------------------------------------
# Rank-N-Contrast
# ---------------------------------------------------------------------------------------------

def _rnc_loop(z, y, t):
    m = z.shape[0]
    s = [[-float(torch.linalg.vector_norm(z[i] - z[j])) / t for j in range(m)] for i in range(m)]
    total = 0.0
    for i in range(m):
        for j in range(m):
            if j == i:
                continue
            den = sum(math.exp(s[i][k]) for k in range(m) if k != i and abs(y[i] - y[k]) >= abs(y[i] - y[j]))
            total += -math.log(math.exp(s[i][j]) / den)
    return total / (m * (m - 1))


@pytest.mark.parametrize("t", [2.0, 0.5, 10.0])
def test_rnc_matches_double_loop_with_label_ties(t):
    y = [0.0, 1.0, 1.0, 2.0, 3.0, 3.0, 5.0]  # anchor 2.0 has 1.0 and 3.0 at the same distance (ties)
    z = _feats(7, seed=8) * 2.0
    got = rnc_loss(z, torch.tensor(y, dtype=D), t)
    assert got.item() == pytest.approx(_rnc_loop(z, y, t), rel=1e-11)
    assert rnc_loss(z.float(), torch.tensor(y), t).item() == pytest.approx(_rnc_loop(z, y, t), rel=1e-4)


def test_rnc_two_views_as_the_official_layout():
    y = torch.tensor([3.0, 1.0, 4.0, 1.5], dtype=D)
    z1, z2 = _feats(4, seed=9), _feats(4, seed=10)
    z = torch.cat([z1, z2])  # official: features[:, 0] then features[:, 1], labels.repeat(2, 1)
    got = rnc_loss(z, y.repeat(2)[:, None])
    assert got.item() == pytest.approx(_rnc_loop(z, y.repeat(2).tolist(), 2.0), rel=1e-11)


def test_rnc_edge_cases_are_finite():
    y = torch.tensor([0.0, 0.0, 1.0, 2.0], dtype=D)
    ok, loss, _ = _finite_grad(lambda z: rnc_loss(z, y[:1]), _feats(1))
    assert ok and loss.item() == 0.0
    same = _feats(4)
    same[1] = same[0]  # coincident features: zero distance
    assert _finite_grad(lambda z: rnc_loss(z, y), same)[0]
    assert _finite_grad(lambda z: rnc_loss(z, y), torch.zeros(4, 3, dtype=D))[0]
    assert _finite_grad(lambda z: rnc_loss(z, y), _feats(4) * 1e6)[0]
    assert _finite_grad(lambda z: rnc_loss(z, torch.zeros(4, dtype=D)), _feats(4))[0]  # all labels equal
    # two samples: each pair's denominator is the pair itself, loss 0
    assert rnc_loss(_feats(2), torch.tensor([0.0, 1.0])).item() == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("t", [0.0, -2.0, float("nan")])
def test_rnc_rejects_bad_temperature_and_shapes(t):
    with pytest.raises(ValueError):
        rnc_loss(_feats(3), torch.arange(3.0), t)
    with pytest.raises(ValueError):
        rnc_loss(_feats(3), torch.arange(4.0))
    with pytest.raises(ValueError):
        rnc_loss(torch.zeros(3), torch.arange(3.0))


# ---------------------------------------------------------------------------------------------
# LDS
# ---------------------------------------------------------------------------------------------

Y_LDS = [0.0, 0.0, 0.0, 0.0, 1.0, 2.0, 2.5, 4.2]   # bins of width 1 from 0: counts 4, 1, 2, 0, 1


def test_lds_sqrt_inv_triang_by_hand():
    lds = lds_weights(Y_LDS, bin_width=1.0, kernel="triang", ks=3)
    # window triang(3) = [0.5, 1, 0.5], normalised [0.25, 0.5, 0.25]; sqrt counts [2, 1, sqrt2, 0, 1]
    r2 = math.sqrt(2.0)
    smoothed = [0.5 * 2 + 0.25 * 1,
                0.25 * 2 + 0.5 * 1 + 0.25 * r2,
                0.25 * 1 + 0.5 * r2 + 0.25 * 0,
                0.25 * r2 + 0.5 * 0 + 0.25 * 1,
                0.25 * 0 + 0.5 * 1]
    np.testing.assert_allclose(lds.density, smoothed, rtol=1e-12)
    inv = [1 / s for s in smoothed]
    per_sample = [inv[0]] * 4 + [inv[1], inv[2], inv[2], inv[4]]
    scale = 8 / sum(per_sample)
    np.testing.assert_allclose(lds.table.numpy(), [scale * v for v in inv], rtol=1e-12)
    w = lds(torch.tensor(Y_LDS, dtype=D))
    assert w.dtype == D and w.shape == (8,)
    np.testing.assert_allclose(w.numpy(), [scale * v for v in per_sample], rtol=1e-12)
    assert w.mean().item() == pytest.approx(1.0, rel=1e-12)  # the official scaling: mean 1 on the training set
    # queries: [B, 1] labels, float32, out of range -> edge bins
    q = lds(torch.tensor([[-3.0], [3.5], [99.0]]))
    assert q.dtype == torch.float32
    np.testing.assert_allclose(q.numpy(), [scale * inv[0], scale * inv[3], scale * inv[4]], rtol=1e-6)


def test_lds_without_smoothing_and_inverse_by_hand():
    y = [0.0] * 10 + [1.0] + [3.0] * 6   # counts 10, 1, 0, 6
    plain = lds_weights(y, 1.0, kernel=None)
    inv = [1 / math.sqrt(10), 1.0, 1 / math.sqrt(6)]
    scale = 17 / (10 * inv[0] + inv[1] + 6 * inv[2])
    np.testing.assert_allclose(plain(torch.tensor([0.0, 1.0, 3.0], dtype=D)).numpy(),
                               [scale * v for v in inv], rtol=1e-12)
    # inverse: counts clipped to [5, 1000] -> 10, 5, 5, 6
    inverse = lds_weights(y, 1.0, kernel=None, reweight="inverse")
    inv = [1 / 10, 1 / 5, 1 / 5, 1 / 6]
    scale = 17 / (10 * inv[0] + inv[1] + 6 * inv[3])
    np.testing.assert_allclose(inverse.table.numpy(), [scale * v for v in inv], rtol=1e-12)
    # clip_max caps the final weights
    capped = lds_weights(y, 1.0, kernel=None, reweight="inverse", clip_max=1.5)
    assert capped.table.max().item() == pytest.approx(1.5)


def test_lds_bins_width_origin_and_empty_density():
    bins = LabelBins.covering([-1.0, -0.9, -0.2, 0.4], 0.5)
    assert (bins.origin, bins.width, bins.n) == (-1.0, 0.5, 3)
    assert bins.index(torch.tensor([-1.0, -0.9, -0.2, 0.4, -7.0, 7.0])).tolist() == [0, 0, 1, 2, 0, 2]
    assert bins.index_np([-0.2, 0.4]).tolist() == [1, 2]
    # a bin farther than ks // 2 from any label has density 0: it gets the largest training weight
    lds = lds_weights([0.0, 0.0, 10.0], 1.0, kernel="triang", ks=3)
    assert lds.density[5] == 0.0
    train_max = lds(torch.tensor([0.0, 0.0, 10.0])).max().item()
    assert lds.table[5].item() == pytest.approx(train_max)
    assert torch.isfinite(lds.table).all()


def test_kernel_windows_are_the_official_ones():
    # scipy.ndimage.gaussian_filter1d of a unit impulse of length 5, sigma 2 (official get_lds_kernel_window),
    # normalised to sum 1: nearly flat because the filter's reflected tails fold back into 5 taps
    np.testing.assert_allclose(kernel_window("gaussian", 5, 2.0),
                               [0.18625069, 0.20524768, 0.21700326, 0.20524768, 0.18625069], rtol=1e-6)
    np.testing.assert_allclose(kernel_window("triang", 5), np.array([1, 2, 3, 2, 1]) / 9, rtol=1e-12)
    lap = np.exp(-np.abs(np.arange(-2, 3)) / 2.0)
    np.testing.assert_allclose(kernel_window("laplace", 5, 2.0), lap / lap.sum(), rtol=1e-12)
    np.testing.assert_allclose(kernel_window("gaussian", 1, 2.0), [1.0])


@pytest.mark.parametrize("kwargs", [dict(bin_width=0.0), dict(bin_width=-1.0), dict(ks=4), dict(ks=0),
                                    dict(sigma=0.0), dict(kernel="box"), dict(reweight="none"),
                                    dict(clip_max=0.0), dict(origin=0.5)])
def test_lds_rejects_bad_hyperparameters(kwargs):
    args = dict(bin_width=1.0) | kwargs
    with pytest.raises(ValueError):
        lds_weights(Y_LDS, **args)


def test_lds_rejects_bad_labels():
    with pytest.raises(ValueError):
        lds_weights([], 1.0)
    with pytest.raises(ValueError):
        lds_weights([0.0, float("nan")], 1.0)


def test_weighted_mse():
    pred, target = torch.tensor([1.0, 2.0, 4.0], dtype=D), torch.tensor([[0.0], [2.0], [1.0]], dtype=D)
    w = torch.tensor([2.0, 1.0, 0.5], dtype=D)
    assert weighted_mse(pred, target, w).item() == pytest.approx((2 * 1 + 0 + 0.5 * 9) / 3)
    assert weighted_mse(pred, target).item() == pytest.approx((1 + 0 + 9) / 3)
    with pytest.raises(ValueError):
        weighted_mse(pred, target, torch.ones(2))
    with pytest.raises(ValueError):
        weighted_mse(pred, target[:2])


# ---------------------------------------------------------------------------------------------
# FDS
# ---------------------------------------------------------------------------------------------

BINS = LabelBins(0.0, 1.0, 6)   # labels 0..5; bin 3 never has a sample, bin 4 has one


def _fds_data(seed):
    g = torch.Generator().manual_seed(seed)
    labels = torch.tensor([0.2, 0.7, 0.1, 1.5, 1.2, 2.9, 2.0, 2.4, 4.5, 5.1, 5.9, 7.0], dtype=D)
    return torch.randn(12, 3, generator=g, dtype=D) * 2 + 1, labels


def _np_bin_stats(f, labels):
    idx = np.clip(np.floor(labels), 0, 5).astype(int)
    mean, var, present = np.zeros((6, 3)), np.ones((6, 3)), np.zeros(6, bool)
    for b in range(6):
        rows = f[idx == b]
        if len(rows):
            present[b] = True
            mean[b] = rows.mean(0)
            var[b] = rows.var(0, ddof=1) if len(rows) > 1 else np.zeros(3)
    return mean, var, present


def _np_smooth(stats, window):
    half = len(window) // 2
    padded = np.pad(stats, ((half, half), (0, 0)), mode="reflect")
    return np.stack([(padded[b:b + len(window)] * window[:, None]).sum(0) for b in range(stats.shape[0])])


def test_fds_statistics_after_two_updates_match_numpy():
    fds = FDS(3, BINS, dtype=D)
    (f0, y0), (f1, y1) = _fds_data(0), _fds_data(1)
    fds.update(f0, y0, epoch=0)
    fds.update(f1, y1[:, None], epoch=1)
    m0, v0, present = _np_bin_stats(f0.numpy(), y0.numpy())
    m1, v1, _ = _np_bin_stats(f1.numpy(), y1.numpy())
    # epoch 0 = start_update: its statistics replace the initial ones; epoch 1: momentum 0.9
    mean = np.where(present[:, None], 0.1 * m1 + 0.9 * m0, 0.0)
    var = np.where(present[:, None], 0.1 * v1 + 0.9 * v0, 1.0)
    np.testing.assert_allclose(fds.running_mean.numpy(), mean, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(fds.running_var.numpy(), var, rtol=1e-12, atol=1e-14)
    assert not present[3] and fds.running_var[3].tolist() == [1.0, 1.0, 1.0]
    assert fds.running_var[4].tolist() == [0.0, 0.0, 0.0]  # one sample per epoch: variance 0
    window = kernel_window("gaussian", 5, 2.0)
    np.testing.assert_allclose(fds.smoothed_mean.numpy(), _np_smooth(mean, window), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(fds.smoothed_var.numpy(), _np_smooth(var, window), rtol=1e-12, atol=1e-14)
    assert fds.num_samples_tracked.tolist() == [6, 4, 6, 0, 2, 6]
    assert fds.last_update_epoch == 1

    # calibration in training from start_smooth on, per dimension, with the official clip [0.1, 10]
    z, yz = _fds_data(2)
    fds.train()
    got = fds(z, yz, epoch=2).numpy()
    idx = np.clip(np.floor(yz.numpy()), 0, 5).astype(int)
    sm, sv = _np_smooth(mean, window), _np_smooth(var, window)
    expected = z.numpy().copy()
    for r, b in enumerate(idx):
        for d in range(3):
            if var[b, d] > 0 and var[b].sum() >= 1e-10:
                ratio = min(max(sv[b, d] / var[b, d], 0.1), 10.0)
                expected[r, d] = (z[r, d].item() - mean[b, d]) * math.sqrt(ratio) + sm[b, d]
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-14)
    assert np.array_equal(got[idx == 4], z.numpy()[idx == 4])  # bin 4 has variance 0: unchanged
    assert not np.allclose(got, z.numpy())
    # unchanged in eval mode and before start_smooth
    assert torch.equal(fds(z, yz, epoch=0), z)
    fds.eval()
    assert torch.equal(fds(z, yz, epoch=5), z)


def test_fds_is_identity_before_any_update_and_gradients_flow():
    fds = FDS(3, BINS, dtype=D).train()
    z, y = _fds_data(3)
    assert torch.allclose(fds(z, y, epoch=3), z, rtol=0, atol=1e-14)
    fds.update(*_fds_data(4), epoch=0)
    z = z.clone().requires_grad_(True)
    fds(z, y, epoch=1).sum().backward()
    assert torch.isfinite(z.grad).all() and not torch.allclose(z.grad, torch.ones_like(z.grad))


def test_fds_state_dict_round_trip():
    fds = FDS(3, BINS, dtype=D)
    fds.update(*_fds_data(0), epoch=0)
    fds.update(*_fds_data(1), epoch=1)
    buf = io.BytesIO()
    torch.save(fds.state_dict(), buf)
    buf.seek(0)
    other = FDS(3, BINS, dtype=D)
    other.load_state_dict(torch.load(buf, weights_only=False))
    assert other.last_update_epoch == 1
    for name, tensor in fds.state_dict().items():
        if isinstance(tensor, torch.Tensor):
            assert torch.equal(tensor, other.state_dict()[name]), name
    z, y = _fds_data(2)
    assert torch.equal(fds.train()(z, y, 2), other.train()(z, y, 2))
    fds.update(*_fds_data(5), epoch=2)
    other.update(*_fds_data(5), epoch=2)
    assert torch.equal(fds.smoothed_var, other.smoothed_var)
    assert "window" not in fds.state_dict()
    with pytest.raises(ValueError):  # resumed into an FDS with other bins
        FDS(3, LabelBins(0.0, 0.5, 6), dtype=D).load_state_dict(fds.state_dict())


def test_fds_update_rules():
    fds = FDS(3, BINS, start_update=2, start_smooth=3, dtype=D)
    fds.update(*_fds_data(0), epoch=1)  # before start_update: ignored
    assert fds.last_update_epoch == -1 and fds.num_samples_tracked.sum() == 0
    fds.update(*_fds_data(0), epoch=2)
    with pytest.raises(ValueError):
        fds.update(*_fds_data(1), epoch=2)  # the same epoch twice
    with pytest.raises(ValueError):
        fds.update(torch.zeros(4, 2, dtype=D), torch.zeros(4), epoch=3)
    with pytest.raises(ValueError):
        fds.update(torch.zeros(4, 3, dtype=D), torch.zeros(5), epoch=3)
    other = FDS.from_labels(3, [-2.0, 4.0], 2.0)
    assert (other.bins.origin, other.bins.n) == (-2.0, 4)


@pytest.mark.parametrize("kwargs", [dict(momentum=1.0), dict(momentum=-0.1), dict(ks=4), dict(sigma=0.0),
                                    dict(kernel="box"), dict(start_update=-1), dict(start_smooth=1.5),
                                    dict(clip_min=0.0), dict(clip_min=2.0, clip_max=1.0), dict(feature_dim=0)])
def test_fds_rejects_bad_hyperparameters(kwargs):
    args = dict(feature_dim=3, bins=BINS) | kwargs
    with pytest.raises(ValueError):
        FDS(**args)


def test_fds_needs_enough_bins_for_reflect_padding():
    with pytest.raises(ValueError):
        FDS(3, LabelBins(0.0, 1.0, 2), ks=5)
    FDS(3, LabelBins(0.0, 1.0, 3), ks=5)


# ---------------------------------------------------------------------------------------------
# no host synchronisation
# ---------------------------------------------------------------------------------------------

def _forbid_host_sync(monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("host synchronisation (.item / float / bool on a tensor)")

    for name in ("item", "__float__", "__bool__", "__int__", "tolist"):
        monkeypatch.setattr(torch.Tensor, name, boom)


def _all_tensor_paths(dev):
    z = _feats(8, seed=11).to(dev).requires_grad_(True)
    y, p = torch.tensor(Y_CONR, dtype=D, device=dev), torch.tensor(P_CONR, dtype=D, device=dev)
    lds = lds_weights(Y_LDS, 1.0).to(dev)
    fds = FDS(3, BINS, dtype=D, device=dev).train()
    f, yf = (t.to(dev) for t in _fds_data(0))
    total = nt_xent_loss(z[:4], z[4:]) + conr_loss(z, y, p, weights=lds(y)) + rnc_loss(z, y)
    total = total + weighted_mse(z[:, 0], y, lds(y))
    fds.update(f, yf, epoch=0)
    total = total + fds(f.clone().requires_grad_(True), yf, epoch=1).sum()
    total.backward()
    return total


def test_no_host_sync_on_the_tensor_paths(monkeypatch):
    _forbid_host_sync(monkeypatch)
    _all_tensor_paths(torch.device("cpu"))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_no_device_sync_on_cuda():
    dev = torch.device("cuda")
    _all_tensor_paths(dev)  # warm-up: kernels loaded, allocator primed
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        total = _all_tensor_paths(dev)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert total.device.type == "cuda" and torch.isfinite(total).item()


def test_lds_inverse_smooths_with_the_official_clipped_empty_bins_beyond_the_training_labels():
    # official _prepare_weights: a histogram over the whole label range, every bin clipped to [5, 1000]
    # (empty bins become 5), then convolve1d with zero padding only beyond that whole range
    y = np.array([0.5, 1.5, 1.6, 1.7, 2.5] + [1.2] * 6)  # bins of width 1 from 0: counts 1, 9, 1
    full_range = np.array([0, 0, 0, 1, 9, 1, 0, 0, 0], dtype=float)  # the label range reaches 3 bins either side
    window = np.array([1.0, 2.0, 1.0]) / 4  # triang(3), normalised
    smoothed = np.convolve(np.clip(full_range, 5, 1000), window, mode="same")[3:6]
    per_sample = 1 / smoothed[np.floor(y).astype(int)]
    want = per_sample * len(y) / per_sample.sum()
    got = lds_weights(y, 1.0, kernel="triang", ks=3, reweight="inverse", origin=0.0)
    np.testing.assert_allclose(got(torch.as_tensor(y)).numpy(), want, rtol=1e-12)
    # the end bin sees its empty neighbour as the clipped 5, not as zero padding
    assert smoothed[0] == pytest.approx((5 + 2 * 5 + 9) / 4)
