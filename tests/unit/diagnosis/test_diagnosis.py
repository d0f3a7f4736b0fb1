"""Diagnostics: oscillation index and tables, filter-normalised slices, top Hessian eigenvalue."""

import copy
import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from remd_core.diagnosis import (gradient_conflict, oscillation_index, oscillation_table, random_direction,
                                 sharpness_from_slice, slice_1d, slice_2d, top_hessian_eigenvalue)

STEPS = np.arange(200, dtype=np.float64)


def zigzag(n=200, level=1.0, amplitude=0.1):
    return level + amplitude * (-1.0) ** np.arange(n)


# ---------------------------------------------------------------- oscillation


def test_oscillation_index_is_zero_for_monotone_curves():
    assert oscillation_index(5.0 - 0.01 * STEPS) == pytest.approx(0.0, abs=1e-12)
    assert oscillation_index(3.0 * np.exp(-STEPS / 30) + 0.2) == pytest.approx(0.0, abs=1e-12)
    assert oscillation_index(np.log1p(STEPS)) == pytest.approx(0.0, abs=1e-12)  # increasing is fine too


def test_oscillation_index_sees_noise_on_a_decay():
    decay = 3.0 * np.exp(-STEPS / 30) + 0.2
    noisy = decay + 0.05 * (-1.0) ** STEPS
    assert oscillation_index(noisy) > 0.05
    assert oscillation_index(noisy) > oscillation_index(decay) + 0.05


def test_oscillation_index_is_scale_invariant():
    rng = np.random.default_rng(0)
    x = np.exp(-STEPS / 50) + 0.1 * rng.random(STEPS.size)
    base = oscillation_index(x)
    assert base > 0
    for c in (1e-3, 7.0, 1e4):
        assert oscillation_index(c * x) == pytest.approx(base, rel=1e-9)


def test_oscillation_index_orders_zigzags_by_amplitude_and_reads_as_2a_over_level():
    small, large = oscillation_index(zigzag(amplitude=0.1)), oscillation_index(zigzag(amplitude=0.3))
    assert small < large
    assert small == pytest.approx(0.2, rel=1e-9)  # 2a / L with an even window: no net change per window
    assert large == pytest.approx(0.6, rel=1e-9)


def test_oscillation_index_edge_cases():
    assert math.isnan(oscillation_index([1.0, 2.0]))
    assert math.isnan(oscillation_index([0.0, 0.0, 0.0, 0.0]))
    assert oscillation_index([1.0, 2.0, 1.0]) > 0  # shorter than the window: one window over all
    with pytest.raises(ValueError, match="window"):
        oscillation_index(zigzag(), window=1)
    with pytest.raises(ValueError, match="NaN"):
        oscillation_index([1.0, float("nan"), 2.0])


def test_oscillation_table_groups_sorts_and_drops_nan():
    n = 60
    curves = {"all": zigzag(n, amplitude=0.2), "head": 2.0 - 0.01 * np.arange(n),
              "tail": np.exp(-np.arange(n) / 10) + 0.5}
    frames = []
    for run in (0, 1):
        for subset, y in curves.items():
            fundus = y * (1 + run)
            oct_ = np.where(np.arange(n) % 7 == 3, np.nan, y[::-1])  # logged at most steps only
            frames.append(pd.DataFrame({"run": run, "subset": subset, "step": np.arange(n),
                                        "loss_fundus": fundus, "loss_oct": oct_}))
    history = pd.concat(frames).sample(frac=1.0, random_state=0)  # shuffled: the table must sort by step

    table = oscillation_table(history, ["loss_fundus", "loss_oct"], groups=["subset", "run"])
    assert list(table.columns) == ["subset", "run", "column", "n_steps", "oscillation"]
    assert len(table) == 3 * 2 * 2
    for row in table.itertuples():
        y = curves[row.subset]
        if row.column == "loss_fundus":
            expected, n_expected = oscillation_index(y * (1 + row.run)), n
        else:
            keep = np.arange(n) % 7 != 3
            expected, n_expected = oscillation_index(y[::-1][keep]), int(keep.sum())
        assert row.n_steps == n_expected
        assert row.oscillation == pytest.approx(expected, rel=1e-12, abs=1e-15)
    by_subset = oscillation_table(history[history["run"] == 0], "loss_fundus", groups="subset")
    assert list(by_subset["subset"]) == ["all", "head", "tail"]
    assert by_subset.set_index("subset")["oscillation"]["all"] > 0.1
    assert by_subset.set_index("subset")["oscillation"][["head", "tail"]].max() == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(KeyError, match="nope"):
        oscillation_table(history, ["nope"])


def test_gradient_conflict_summary_and_groups():
    s = gradient_conflict(pd.DataFrame({"cos": [-0.5, 0.2, 0.4, -0.1, np.nan]}))
    assert s["n"] == 4
    assert s["share_negative"] == pytest.approx(0.5)
    assert s["mean"] == pytest.approx(0.0, abs=1e-12)
    assert s["median"] == pytest.approx(0.05)
    assert s["q05"] < s["q25"] < s["median"] < s["q75"] < s["q95"]
    g = gradient_conflict(pd.DataFrame({"subset": ["a", "a", "b"], "cos": [-1.0, 1.0, 0.5]}), groups="subset")
    assert list(g["share_negative"]) == [0.5, 0.0]
    assert gradient_conflict([-0.2, -0.4])["share_negative"] == 1.0


# ---------------------------------------------------------------- landscape


def conv_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 1))
    x, y = torch.randn(8, 2, 6, 6), torch.randn(8, 1)
    model.train()
    with torch.no_grad():
        model(x)  # non-trivial running statistics, so eval- and train-mode losses differ
    seen_training = []

    def loss_fn(m):
        seen_training.append(any(mod.training for mod in m.modules()))
        return nn.functional.mse_loss(m(x), y)

    return model, loss_fn, seen_training


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_state_identical(model, before):
    after = model.state_dict()
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), k


def test_random_direction_filter_normalisation():
    model, _, _ = conv_model()
    params = list(model.parameters())
    d = random_direction(params, torch.Generator().manual_seed(1))
    assert [t.shape for t in d] == [p.shape for p in params]
    for p, t in zip(params, d):
        if p.dim() > 1:
            w_norm = p.detach().reshape(p.shape[0], -1).norm(dim=1)
            d_norm = t.reshape(t.shape[0], -1).norm(dim=1)
            torch.testing.assert_close(d_norm, w_norm, rtol=1e-5, atol=0)
            assert not torch.allclose(t, p.detach())  # a random draw, not the weights
        else:
            assert torch.count_nonzero(t) == 0  # biases and BatchNorm ignored
    again = random_direction(params, torch.Generator().manual_seed(1))
    assert all(torch.equal(a, b) for a, b in zip(d, again))
    other = random_direction(params, torch.Generator().manual_seed(2))
    assert not torch.equal(d[0], other[0])
    with_1d = random_direction(params, torch.Generator().manual_seed(1), ignore_1d=False)
    for p, a, b in zip(params, d, with_1d):
        if p.dim() > 1:
            assert torch.equal(a, b)  # the draw of dim > 1 tensors does not depend on ignore_1d
        else:
            assert b.norm().item() == pytest.approx(p.detach().norm().item(), rel=1e-5)
            if p.detach().norm() > 0:  # BatchNorm's bias starts at 0, so its direction is 0 too
                assert torch.count_nonzero(b) == b.numel()


def test_slice_1d_centre_restores_state_and_runs_in_eval_mode():
    model, loss_fn, seen_training = conv_model()
    with torch.no_grad():
        train_copy = copy.deepcopy(model).train()
        train_mode_loss = loss_fn(train_copy).item()  # batch statistics
        model.eval()
        expected = loss_fn(model).item()  # running statistics
    assert abs(train_mode_loss - expected) > 1e-4  # so the check below can tell the modes apart
    model.train()
    model[1].eval()  # an individually frozen BatchNorm must stay frozen, the rest in train mode
    before = snapshot(model)
    seen_training.clear()
    d = random_direction(model.parameters(), torch.Generator().manual_seed(0))
    df = slice_1d(model, loss_fn, None, d, np.linspace(-1, 1, 5))
    assert list(df.columns) == ["alpha", "loss"]
    assert df.loc[df["alpha"] == 0, "loss"].item() == pytest.approx(expected, rel=1e-6)
    assert df["loss"].nunique() == 5
    assert seen_training and not any(seen_training)
    assert_state_identical(model, before)
    assert model.training and model[0].training and not model[1].training


def test_slice_restores_parameters_after_an_exception():
    model, _, _ = conv_model()
    before = snapshot(model)
    calls = []

    def failing(m):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("boom")
        return m(torch.zeros(2, 2, 6, 6)).pow(2).mean()

    d = random_direction(model.parameters(), torch.Generator().manual_seed(0))
    with pytest.raises(RuntimeError, match="boom"):
        slice_1d(model, failing, None, d, [0.5, 1.0, 2.0])
    assert_state_identical(model, before)
    assert model.training


class Quadratic(nn.Module):
    """One weight vector w; the caller's loss is 0.5 w^T A w."""

    def __init__(self, w):
        super().__init__()
        self.w = nn.Parameter(torch.as_tensor(w, dtype=torch.float64).clone())


def rotated_spd(eigs, seed=0):
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(len(eigs), len(eigs))))
    return q @ np.diag(eigs) @ q.T, q


def quadratic_loss(a):
    a = torch.as_tensor(a, dtype=torch.float64)
    return lambda m: 0.5 * m.w @ a @ m.w


def closed_form(a, w, v):
    return 0.5 * (w + v) @ a @ (w + v)


def test_slices_of_a_quadratic_match_the_closed_form():
    a, _ = rotated_spd([5.0, 2.0, 1.0])
    w, d1, d2 = np.array([0.3, -1.0, 0.5]), np.array([1.0, 0.5, -2.0]), np.array([-0.7, 0.2, 0.1])
    model = Quadratic(w)
    alphas, betas = np.linspace(-1.5, 1.5, 7), np.array([-0.5, 0.0, 1.0])
    df = slice_1d(model, quadratic_loss(a), [model.w], [torch.tensor(d1)], alphas)
    np.testing.assert_allclose(df["loss"], [closed_form(a, w, t * d1) for t in alphas], rtol=1e-12)
    df2 = slice_2d(model, quadratic_loss(a), None, [torch.tensor(d1)], [torch.tensor(d2)], alphas, betas)
    assert list(df2.columns) == ["alpha", "beta", "loss"] and len(df2) == 21
    np.testing.assert_allclose(df2["loss"], [closed_form(a, w, s * d1 + t * d2) for s in alphas for t in betas],
                               rtol=1e-12)
    assert torch.equal(model.w.detach(), torch.tensor(w))
    # At the minimum w = 0: L(alpha) = 0.5 alpha^2 d^T A d, so the mean rise is 0.5 mean(alpha^2) d^T A d.
    at_min = Quadratic(np.zeros(3))
    flat = slice_1d(at_min, quadratic_loss(a), None, [torch.tensor(d1)], alphas)
    assert sharpness_from_slice(flat) == pytest.approx(0.5 * np.mean(alphas ** 2) * d1 @ a @ d1, rel=1e-12)
    assert sharpness_from_slice(df2) == pytest.approx(df2["loss"].mean() - closed_form(a, w, 0 * w), rel=1e-12)
    with pytest.raises(ValueError, match="centre"):
        sharpness_from_slice(flat[flat["alpha"] != 0])


def test_slice_rejects_a_mismatched_direction():
    model = Quadratic(np.ones(3))
    with pytest.raises(ValueError, match="shape"):
        slice_1d(model, quadratic_loss(np.eye(3)), None, [torch.ones(4, dtype=torch.float64)], [0.0])


# ---------------------------------------------------------------- hessian


def test_top_hessian_eigenvalue_of_a_quadratic():
    a, q = rotated_spd([5.0, 2.0, 1.0], seed=1)
    model = Quadratic([0.3, -1.0, 0.5])
    value, vec, n = top_hessian_eigenvalue(model, quadratic_loss(a), generator=torch.Generator().manual_seed(0))
    assert value == pytest.approx(5.0, rel=1e-3)
    assert 1 < n <= 20
    assert abs(float(vec[0].numpy() @ q[:, 0])) > 0.99
    assert model.w.grad is None  # autograd.grad only: .grad untouched


def test_top_hessian_eigenvalue_is_largest_in_magnitude_with_sign():
    a, _ = rotated_spd([-6.0, 2.0, 1.0], seed=2)
    value, _, _ = top_hessian_eigenvalue(Quadratic([1.0, 1.0, 1.0]), quadratic_loss(a), iters=50,
                                         generator=torch.Generator().manual_seed(0))
    assert value == pytest.approx(-6.0, rel=1e-3)


def test_batchnorm_state_unchanged_after_slice_2d_and_hessian():
    model, loss_fn, seen_training = conv_model()
    model.train()
    before = snapshot(model)
    gen = torch.Generator().manual_seed(3)
    d1, d2 = random_direction(model.parameters(), gen), random_direction(model.parameters(), gen)
    slice_2d(model, loss_fn, None, d1, d2, [-0.5, 0.0, 0.5], [-0.5, 0.0, 0.5])
    value, vec, n = top_hessian_eigenvalue(model, loss_fn, iters=5, generator=gen)
    assert math.isfinite(value) and n >= 1
    assert len(vec) == len(list(model.parameters()))
    assert not any(seen_training)
    assert_state_identical(model, before)
    assert all(m.training for m in model.modules())
    assert all(p.grad is None for p in model.parameters())


def test_gamma_sharpness_trace_keeps_one_row_per_probe_and_correlates():
    import pandas as pd

    from remd_core.diagnosis import gamma_sharpness_trace

    history = pd.DataFrame({"step": range(6), "sharpness": [1.0, 1.0, 2.0, 2.0, 3.0, 3.0],
                            "gamma": [1.0, 1.0, 1.5, 1.5, 2.0, 2.0]})
    trace, summary = gamma_sharpness_trace(history)
    assert trace["step"].tolist() == [0, 2, 4]
    assert summary["n_probes"] == 3 and summary["pearson_r"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="SGM"):
        gamma_sharpness_trace(history.drop(columns="gamma"))


def test_sgm_probes_keeps_probe_rows_and_the_optional_columns_there_are():
    import pandas as pd

    from remd_core.diagnosis import sgm_probes

    history = pd.DataFrame({"step": range(6), "sharpness_paper": [0.5, 0.5, float("nan"), 0.9, 0.9, 0.2],
                            "gamma": [1.0, 1.0, 1.0, 2.0, 2.0, 0.5], "cos": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]})
    probes = sgm_probes(history, ("sharpness_paper", "gamma"), optional=("cos", "norm_base"))
    assert list(probes.columns) == ["step", "sharpness_paper", "gamma", "cos"]
    assert probes["step"].tolist() == [0, 3, 5] and probes["cos"].tolist() == [0.1, 0.4, 0.6]
    by_gamma = sgm_probes(history, ("sharpness_paper", "gamma"), key="gamma")
    assert by_gamma["step"].tolist() == [0, 3, 5]
    with pytest.raises(ValueError, match=r"\['gamma'\]"):
        sgm_probes(history.drop(columns="gamma"), ("sharpness_paper", "gamma"))


def test_fixed_batch_loss_is_the_fused_mse_on_standardised_labels():
    from remd_core.data import load
    from remd_core.diagnosis import fixed_batch_loss
    from remd_core.models import EncoderConfig, MultimodalRegressor

    data = load("randhie", n_rows=300)
    model = MultimodalRegressor(data.spec, encoder=EncoderConfig(mlp_hidden=8)).eval()
    loss_fn = fixed_batch_loss(model, data.val, label_mean=2.0, label_std=3.0, size=10, seed=1)
    index = torch.randperm(len(data.val), generator=torch.Generator().manual_seed(1))[:10]
    batch = data.val.batch(index)
    with torch.no_grad():
        pred = model({m: batch[m] for m in model.modalities})["fused"]
        expected = torch.mean((pred - (batch["y"] - 2.0) / 3.0) ** 2)
        assert loss_fn(model).item() == pytest.approx(expected.item(), rel=1e-6)
