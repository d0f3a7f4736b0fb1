"""Pure SGM math (remd_core.optim.functions) against the equations of Re-M3Dr section 4.2."""

from __future__ import annotations

import math

import pytest
import torch

from remd_core.optim import (
    combine_gradients,
    dot_and_norms,
    min_norm_2,
    modulation_gamma,
    per_tensor_norms,
    sharpness_score,
)

D = torch.float64


def _grid_argmin(g1, g2, n=10001):
    """Brute force over the simplex: the a in a grid of n weights minimising ||a g1 + (1-a) g2||."""
    a = torch.linspace(0.0, 1.0, n, dtype=D)
    sq = ((a[:, None] * g1[None] + (1 - a[:, None]) * g2[None]) ** 2).sum(1)
    k = int(torch.argmin(sq))
    return float(a[k]), float(sq[k]), sq


def _sqnorm(a, g1, g2):
    return float(((a * g1 + (1 - a) * g2) ** 2).sum())


def _pairs():
    gen = torch.Generator().manual_seed(0)
    out = []
    for _ in range(6):  # cos < 0: g2 ~ -c g1 + noise
        g1 = torch.randn(7, generator=gen, dtype=D)
        c = float(torch.rand((), generator=gen, dtype=D)) * 3 + 0.2
        g2 = -c * g1 + 0.5 * torch.randn(7, generator=gen, dtype=D)
        out.append(("neg", g1, g2))
    for _ in range(6):  # cos > 0, includes interior and boundary optima
        g1 = torch.randn(7, generator=gen, dtype=D)
        c = float(torch.rand((), generator=gen, dtype=D)) * 3 + 0.2
        g2 = c * g1 + 0.8 * torch.randn(7, generator=gen, dtype=D)
        out.append(("pos", g1, g2))
    g = torch.randn(7, generator=gen, dtype=D)
    out.append(("g1_zero", torch.zeros(7, dtype=D), g))
    out.append(("g2_zero", g, torch.zeros(7, dtype=D)))
    return out


# --------------------------------------------------------------------------------------------------
# min_norm_2
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind,g1,g2", _pairs())
def test_min_norm_2_matches_brute_force_over_the_simplex(kind, g1, g2):
    cos = float(g1 @ g2) / max(float(g1.norm() * g2.norm()), 1e-300)
    if kind == "neg":
        assert cos < 0
    if kind == "pos":
        assert cos > 0
    a1, a2 = min_norm_2(g1, g2)
    assert a1.dim() == 0 and a2.dim() == 0
    assert float(a1 + a2) == pytest.approx(1.0, abs=1e-15)
    a_grid, sq_grid, _ = _grid_argmin(g1, g2)
    assert abs(float(a1) - a_grid) <= 1e-4 + 1e-12  # grid step
    assert _sqnorm(float(a1), g1, g2) <= sq_grid + 1e-12 * (1 + sq_grid)


def test_min_norm_2_interior_and_boundary_cases_are_both_covered():
    interior = [k for k, g1, g2 in _pairs() if 1e-4 < float(min_norm_2(g1, g2)[0]) < 1 - 1e-4]
    boundary = [k for k, g1, g2 in _pairs() if float(min_norm_2(g1, g2)[0]) in (0.0, 1.0)]
    assert interior and boundary


def test_min_norm_2_identical_vectors_gives_half_and_is_optimal():
    g = torch.tensor([1.0, -2.0, 0.5], dtype=D)
    a1, a2 = min_norm_2(g, g.clone())
    assert float(a1) == 0.5 and float(a2) == 0.5
    _, sq_grid, sq = _grid_argmin(g, g)
    assert torch.allclose(sq, torch.full_like(sq, sq_grid))  # every weight is optimal
    a1, a2 = min_norm_2(torch.zeros(3), torch.zeros(3))
    assert float(a1) == 0.5 and float(a2) == 0.5


def _mmpareto_from2(v11, v12, v22):
    """MMPareto's (Sener & Koltun's) _min_norm_element_from2, weight of g1."""
    if v12 >= v11:
        return 0.999
    if v12 >= v22:
        return 0.001
    return -1.0 * ((v12 - v22) / (v11 + v22 - 2 * v12))


@pytest.mark.parametrize("kind,g1,g2", _pairs())
def test_min_norm_2_clip_reproduces_mmpareto(kind, g1, g2):
    a1, a2 = min_norm_2(g1, g2, clip=(0.001, 0.999))
    ref = _mmpareto_from2(float(g1 @ g1), float(g1 @ g2), float(g2 @ g2))
    assert float(a1) == pytest.approx(ref, rel=1e-12, abs=1e-15)
    assert float(a2) == pytest.approx(1 - ref, rel=1e-12, abs=1e-15)


def test_min_norm_2_hand_value_and_validation():
    a1, a2 = min_norm_2(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]))
    assert float(a1) == pytest.approx(0.5) and float(a2) == pytest.approx(0.5)
    # g1 = (2, 0), g2 = (-1, 0): a = <g2, g2 - g1> / ||g1 - g2||^2 = 3 / 9
    a1, _ = min_norm_2(torch.tensor([2.0, 0.0]), torch.tensor([-1.0, 0.0]))
    assert float(a1) == pytest.approx(1 / 3)
    with pytest.raises(ValueError):
        min_norm_2(torch.ones(2), torch.ones(2), clip=(0.6, 0.4))
    with pytest.raises(ValueError):
        min_norm_2(torch.ones(2), torch.ones(2), clip=(-0.1, 1.0))
    with pytest.raises(ValueError):
        min_norm_2(torch.ones(2), torch.ones(3))


# --------------------------------------------------------------------------------------------------
# modulation_gamma
# --------------------------------------------------------------------------------------------------


def test_modulation_gamma_hand_values():
    # median([1, 1, 3]) = 1 -> 1.5 * 2 / 1 = 3.0
    assert modulation_gamma(2.0, [1.0, 1.0, 3.0], 1.5, 0.5, 5.0) == pytest.approx(3.0)
    assert modulation_gamma(2.0, [1.0, 1.0, 3.0], 1.5, 0.5, 2.5) == pytest.approx(2.5)
    # even window: median([4, 1, 3, 2]) = 2.5 -> 1.0 * 5 / 2.5 = 2.0
    assert modulation_gamma(5.0, [4.0, 1.0, 3.0, 2.0], 1.0, 0.1, 10.0) == pytest.approx(2.0)
    # flatter than usual -> smaller than base; clipped at gamma_min
    assert modulation_gamma(0.5, [2.0, 2.0], 1.0, 0.1, 10.0) == pytest.approx(0.25)
    assert modulation_gamma(0.01, [2.0, 2.0], 1.0, 0.1, 10.0) == pytest.approx(0.1)


def test_modulation_gamma_negative_score_gives_gamma_min():
    assert modulation_gamma(-1.0, [1.0, 2.0, 3.0], 1.5, 0.5, 5.0) == pytest.approx(0.5)


@pytest.mark.parametrize(
    "window",
    [[0.0, 0.0, 1.0], [-1.0, -2.0, 3.0], [float("nan"), 1.0, 2.0], [float("inf")] * 3, []],
    ids=["zero_median", "negative_median", "nan_median", "inf_median", "empty"],
)
def test_modulation_gamma_falls_back_to_base(window):
    assert modulation_gamma(2.0, window, 1.5, 0.5, 5.0) == pytest.approx(1.5)
    # base itself is clipped
    assert modulation_gamma(2.0, window, 1.5, 0.5, 1.2) == pytest.approx(1.2)
    assert modulation_gamma(2.0, window, 1.5, 1.7, 5.0) == pytest.approx(1.7)
    g = modulation_gamma(torch.tensor(2.0), torch.tensor(window), 1.5, 0.5, 5.0)
    assert isinstance(g, torch.Tensor) and float(g) == pytest.approx(1.5)


def test_modulation_gamma_non_finite_score_falls_back_to_base():
    assert modulation_gamma(float("nan"), [1.0, 2.0], 1.5, 0.5, 5.0) == pytest.approx(1.5)
    assert float(modulation_gamma(torch.tensor(float("nan")), [1.0, 2.0], 1.5, 0.5, 5.0)) == pytest.approx(1.5)


def test_modulation_gamma_kind_in_kind_out_and_paths_agree():
    win = [4.0, 1.0, 3.0, 2.0, 0.5, 7.0]
    for s in (-1.0, 0.3, 2.0, 9.0):
        f = modulation_gamma(s, win, 1.5, 0.5, 5.0)
        assert isinstance(f, float)
        t1 = modulation_gamma(torch.tensor(s, dtype=D), torch.tensor(win, dtype=D), 1.5, 0.5, 5.0)
        t2 = modulation_gamma(torch.tensor(s, dtype=D), [torch.tensor(w, dtype=D) for w in win], 1.5, 0.5, 5.0)
        t3 = modulation_gamma(torch.tensor(s, dtype=D), win, 1.5, 0.5, 5.0)
        for t in (t1, t2, t3):
            assert isinstance(t, torch.Tensor) and t.dim() == 0 and t.dtype == D
            assert float(t) == pytest.approx(f, rel=1e-12)
    e = modulation_gamma(torch.tensor(2.0), [], 1.5, 0.5, 5.0)
    assert isinstance(e, torch.Tensor) and float(e) == 1.5


@pytest.mark.parametrize(
    "base,lo,hi",
    [(1.5, 2.0, 1.0), (0.0, 0.5, 5.0), (-1.0, 0.5, 5.0), (1.5, -0.1, 5.0), (float("nan"), 0.5, 5.0)],
)
def test_modulation_gamma_rejects_bad_hyperparameters(base, lo, hi):
    with pytest.raises(ValueError):
        modulation_gamma(1.0, [1.0], base, lo, hi)


# --------------------------------------------------------------------------------------------------
# combine_gradients
# --------------------------------------------------------------------------------------------------


def _conflicting():
    g_mm = [torch.tensor([3.0, 0.0], dtype=D), torch.tensor([[1.0, 0.0], [0.0, 0.0]], dtype=D)]
    g_uni = [torch.tensor([-1.0, 1.0], dtype=D), torch.tensor([[0.0, 2.0], [0.0, -1.0]], dtype=D)]
    g_base = [torch.tensor([0.5, 0.5], dtype=D), torch.tensor([[0.0, 4.0], [3.0, 0.0]], dtype=D)]
    return g_mm, g_uni, g_base


def _flat(ts):
    return torch.cat([t.reshape(-1) for t in ts])


def test_combine_gradients_conflict_uses_min_norm_and_rescales_to_gamma_base_norms():
    g_mm, g_uni, g_base = _conflicting()
    copies = [t.clone() for t in g_mm + g_uni + g_base]
    gamma = 1.7
    out, info = combine_gradients(g_mm, g_uni, g_base, gamma)
    # <g_mm, g_uni> = -3, ||g_mm||^2 = 10, ||g_uni||^2 = 7 -> a_mm = (7 + 3) / (10 + 7 + 6) = 10/23
    assert float(info["cos"]) == pytest.approx(-3 / math.sqrt(70))
    assert float(info["a_mm"]) == pytest.approx(10 / 23)
    ref_mm, ref_uni = min_norm_2(_flat(g_mm), _flat(g_uni))
    assert float(info["a_mm"]) == pytest.approx(float(ref_mm), rel=1e-12)
    assert float(info["a_uni"]) == pytest.approx(float(ref_uni), rel=1e-12)
    for o, m, u, b in zip(out, g_mm, g_uni, g_base):
        assert o.shape == m.shape and o.dtype == m.dtype
        assert float(o.norm()) == pytest.approx(gamma * float(b.norm()), rel=1e-7)
        direction = 2 * ref_mm * m + 2 * ref_uni * u
        assert torch.allclose(o / o.norm(), direction / direction.norm(), atol=1e-12)
    # second tensor: base norm 5 > combined norm -> scaled up; first: base norm 0.71 -> scaled down
    assert float(out[0].norm()) < float((2 * ref_mm * g_mm[0] + 2 * ref_uni * g_uni[0]).norm())
    assert all(torch.equal(a, b) for a, b in zip(copies, g_mm + g_uni + g_base))  # inputs untouched
    assert float(info["norm_out"]) == pytest.approx(gamma * float(_flat(g_base).norm()), rel=1e-7)


def test_combine_gradients_aligned_uses_half_weights_and_sum_direction():
    g_mm = [torch.tensor([1.0, 2.0, 0.0], dtype=D), torch.tensor([[0.5, -1.0]], dtype=D)]
    g_uni = [torch.tensor([2.0, 0.0, 1.0], dtype=D), torch.tensor([[1.0, 0.0]], dtype=D)]
    g_base = [torch.tensor([0.0, 0.0, 2.0], dtype=D), torch.tensor([[3.0, 4.0]], dtype=D)]
    assert float(_flat(g_mm) @ _flat(g_uni)) > 0
    out, info = combine_gradients(g_mm, g_uni, g_base, torch.tensor(0.5, dtype=D))
    assert float(info["a_mm"]) == 0.5 and float(info["a_uni"]) == 0.5
    assert float(info["cos"]) > 0
    for o, m, u, b in zip(out, g_mm, g_uni, g_base):
        s = m + u
        assert torch.allclose(o, 0.5 * float(b.norm()) / float(s.norm()) * s, rtol=1e-7)
    assert float(info["norm_combined"]) == pytest.approx(float((_flat(g_mm) + _flat(g_uni)).norm()))


def test_combine_gradients_info_is_zero_dim_tensors():
    out, info = combine_gradients(*_conflicting(), 1.0)
    keys = {"cos", "a_mm", "a_uni", "norm_mm", "norm_uni", "norm_base", "norm_combined", "norm_out"}
    assert keys <= set(info)
    assert all(isinstance(v, torch.Tensor) and v.dim() == 0 for v in info.values())
    g_mm, g_uni, g_base = _conflicting()
    assert float(info["norm_mm"]) == pytest.approx(float(_flat(g_mm).norm()))
    assert float(info["norm_uni"]) == pytest.approx(float(_flat(g_uni).norm()))
    assert float(info["norm_base"]) == pytest.approx(float(_flat(g_base).norm()))


def test_combine_gradients_zero_combined_tensor_stays_zero_not_nan():
    # tensor 0 cancels exactly (g_mm = -g_uni there) while the whole list is aligned (cos > 0)
    g_mm = [torch.tensor([1.0, -1.0]), torch.tensor([5.0])]
    g_uni = [torch.tensor([-1.0, 1.0]), torch.tensor([5.0])]
    g_base = [torch.tensor([1.0, 1.0]), torch.tensor([2.0])]
    out, info = combine_gradients(g_mm, g_uni, g_base, 1.5)
    assert float(info["a_mm"]) == 0.5
    assert torch.equal(out[0], torch.zeros(2))
    assert float(out[1]) == pytest.approx(3.0)


def test_combine_gradients_none_entries():
    g_mm = [torch.tensor([1.0, 0.0]), None, None]
    g_uni = [torch.tensor([0.0, 1.0]), torch.tensor([2.0, 0.0]), None]
    g_base = [torch.tensor([3.0, 4.0]), torch.tensor([1.0, 0.0]), None]
    out, info = combine_gradients(g_mm, g_uni, g_base, 2.0)
    assert out[2] is None
    assert torch.allclose(out[1], torch.tensor([2.0, 0.0]))  # None g_mm counts as zeros
    assert torch.allclose(out[0].norm(), torch.tensor(10.0))
    assert float(info["norm_mm"]) == pytest.approx(1.0)
    assert float(info["norm_uni"]) == pytest.approx(math.sqrt(5.0))


def test_combine_gradients_validation():
    g_mm, g_uni, g_base = _conflicting()
    with pytest.raises(ValueError):
        combine_gradients(g_mm, g_uni[:1], g_base, 1.0)
    with pytest.raises(ValueError):
        combine_gradients(g_mm, g_uni, g_base, -1.0)
    with pytest.raises(ValueError):
        combine_gradients(g_mm, g_uni, g_base, 1.0, eps=0.0)
    with pytest.raises(ValueError):
        combine_gradients(g_mm, [g_uni[0], torch.zeros(3)], g_base, 1.0)


def test_combine_gradients_clip_reaches_the_min_norm_solver():
    # tiny g_mm against a large opposite g_uni: exact a_mm = (1 + 1e-4) / (1 + 1e-4)^2 ~ 0.9999
    g_mm = [torch.tensor([1e-4, 0.0], dtype=D)]
    g_uni = [torch.tensor([-1.0, 0.0], dtype=D)]
    _, info = combine_gradients(g_mm, g_uni, g_mm, 1.0)
    assert float(info["a_mm"]) == pytest.approx(1 / (1 + 1e-4), rel=1e-12)
    _, info = combine_gradients(g_mm, g_uni, g_mm, 1.0, clip=(0.001, 0.999))
    assert float(info["a_mm"]) == pytest.approx(0.999, rel=1e-12)
    # a zero multimodal gradient: cos = 0 (not negative) -> half weights, no NaN
    _, info = combine_gradients([torch.zeros(2, dtype=D)], g_uni, g_mm, 1.0)
    assert float(info["a_mm"]) == 0.5 and float(info["cos"]) == 0.0


# --------------------------------------------------------------------------------------------------
# sharpness_score
# --------------------------------------------------------------------------------------------------


def _quadratic(n=6, seed=1, dtype=D):
    gen = torch.Generator().manual_seed(seed)
    m = torch.randn(n, n, generator=gen, dtype=D)
    a = (m @ m.T + 0.5 * torch.eye(n, dtype=D)).to(dtype)
    b = torch.randn(n, generator=gen, dtype=D).to(dtype)
    x = torch.nn.Parameter(torch.randn(n, generator=gen, dtype=D).to(dtype))
    calls = {"n": 0, "grad_enabled": []}

    def loss_at():
        calls["n"] += 1
        calls["grad_enabled"].append(torch.is_grad_enabled())
        return 0.5 * x @ a @ x + b @ x

    return a, b, x, loss_at, calls


def test_sharpness_paper_score_is_2_eps_grad_norm_on_a_quadratic():
    a, b, x, loss_at, calls = _quadratic()
    g = (a @ x + b).detach()
    eps = 0.05
    s = sharpness_score(loss_at, [x], [g], eps)
    # L(x+d) - L(x-d) = 2 d.(A x + b) = 2 eps ||g|| for d = eps g / ||g||: exact for a quadratic
    assert float(s) == pytest.approx(2 * eps * float(g.norm()), rel=1e-10)
    assert calls["n"] == 2
    assert s.dim() == 0 and not s.requires_grad


def test_sharpness_curvature_score_is_dT_A_d_on_a_quadratic():
    a, b, x, loss_at, calls = _quadratic()
    g = (a @ x + b).detach()
    eps = 0.05
    d = eps * g / g.norm()
    s = sharpness_score(loss_at, [x], [g], eps, mode="curvature")
    assert float(s) == pytest.approx(float(d @ a @ d), rel=1e-8)
    assert calls["n"] == 3
    with torch.no_grad():
        l0 = loss_at()
    s2 = sharpness_score(loss_at, [x], [g], eps, mode="curvature", loss_now=l0)
    assert calls["n"] == 3 + 1 + 2  # loss_now saves the third evaluation
    assert float(s2) == pytest.approx(float(s), rel=1e-12)


def test_sharpness_both_scores_come_from_the_same_two_evaluations():
    a, b, x, loss_at, calls = _quadratic()
    g = (a @ x + b).detach()
    eps = 0.05
    d = eps * g / g.norm()
    with torch.no_grad():
        l0 = loss_at()
    scores = sharpness_score(loss_at, [x], [g], eps, loss_now=l0, both=True)
    assert calls["n"] == 1 + 2
    assert float(scores["paper"]) == pytest.approx(2 * eps * float(g.norm()), rel=1e-10)
    assert float(scores["curvature"]) == pytest.approx(float(d @ a @ d), rel=1e-8)
    assert set(sharpness_score(loss_at, [x], [g], eps, both=True)) == {"paper"}  # no L(theta): no curvature


def test_sharpness_uses_one_global_norm_over_all_tensors():
    gen = torch.Generator().manual_seed(3)
    x1 = torch.nn.Parameter(torch.randn(3, generator=gen, dtype=D))
    x2 = torch.nn.Parameter(torch.randn(2, 2, generator=gen, dtype=D))
    b1 = torch.randn(3, generator=gen, dtype=D)
    b2 = torch.randn(2, 2, generator=gen, dtype=D)

    def loss_at():  # linear loss: the paper score is exactly 2 eps ||(b1, b2)||
        return (b1 * x1).sum() + (b2 * x2).sum() + (x1**2).sum()

    g = [(b1 + 2 * x1).detach(), b2.clone()]
    eps = 0.1
    s = sharpness_score(loss_at, [x1, x2], g, eps)
    global_norm = math.sqrt(float(g[0].norm()) ** 2 + float(g[1].norm()) ** 2)
    assert float(s) == pytest.approx(2 * eps * global_norm, rel=1e-10)


def test_sharpness_restores_parameters_bit_identically_and_builds_no_graph():
    a, b, x, loss_at, calls = _quadratic(n=64, seed=2, dtype=torch.float32)
    g = (a @ x + b).detach()
    before = x.detach().clone()
    eps = 3.0  # |Delta| comparable to |x|: float32 add-then-subtract does not round-trip here
    d = eps * g / g.norm()
    for naive in ((before + d) - d, ((before + d) - 2 * d) + d, (((before + d) - d) - d) + d):
        assert not torch.equal(naive, before)  # so this test can catch an add/subtract restore
    for mode in ("paper", "curvature"):
        s = sharpness_score(loss_at, [x], [g], eps, mode=mode)
        assert torch.equal(x.detach(), before)
        assert not s.requires_grad and s.grad_fn is None
    assert calls["grad_enabled"] and not any(calls["grad_enabled"])
    assert x.grad is None


def test_sharpness_restores_parameters_when_loss_raises():
    x = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    before = x.detach().clone()

    def boom():
        raise RuntimeError("loss failed")

    with pytest.raises(RuntimeError):
        sharpness_score(boom, [x], [torch.tensor([0.3, -0.1])], 0.5)
    assert torch.equal(x.detach(), before)


def test_sharpness_none_grad_leaves_parameter_alone_and_zero_grad_gives_zero():
    x = torch.nn.Parameter(torch.tensor([1.0, 2.0], dtype=D))
    y = torch.nn.Parameter(torch.tensor([3.0], dtype=D))
    seen = []

    def loss_at():
        seen.append(y.detach().clone())
        return (x**2).sum() + 10 * (y**2).sum()

    sharpness_score(loss_at, [x, y], [torch.tensor([1.0, 0.0], dtype=D), None], 0.1)
    assert all(torch.equal(v, torch.tensor([3.0], dtype=D)) for v in seen)
    s = sharpness_score(loss_at, [x, y], [torch.zeros(2, dtype=D), torch.zeros(1, dtype=D)], 0.1)
    assert float(s) == 0.0
    s = sharpness_score(loss_at, [x, y], [torch.zeros(2, dtype=D), torch.zeros(1, dtype=D)], 0.1, "curvature")
    assert float(s) == 0.0


@pytest.mark.parametrize("kw", [{"eps": 0.0}, {"eps": -0.1}, {"eps": 0.1, "mode": "sam"}])
def test_sharpness_validation(kw):
    x = torch.nn.Parameter(torch.ones(2))
    with pytest.raises(ValueError):
        sharpness_score(lambda: x.sum(), [x], [torch.ones(2)], **kw)


# --------------------------------------------------------------------------------------------------
# helpers and host synchronisation
# --------------------------------------------------------------------------------------------------


def test_per_tensor_norms_and_dot_and_norms():
    a = [torch.tensor([3.0, 4.0]), torch.ones(2, 2)]
    b = [torch.tensor([1.0, -1.0]), torch.full((2, 2), 2.0)]
    n = per_tensor_norms([a[0], None, a[1]])
    assert n[1] is None and float(n[0]) == 5.0 and float(n[2]) == 2.0
    bf = per_tensor_norms([torch.full((1000,), 0.01, dtype=torch.bfloat16)])[0]
    assert bf.dtype == torch.float32
    dot, na, nb = dot_and_norms(a, b)
    assert float(dot) == pytest.approx(float(_flat(a) @ _flat(b)))
    assert float(na) == pytest.approx(float(_flat(a).norm()))
    assert float(nb) == pytest.approx(float(_flat(b).norm()))


def _forbid_host_sync(monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("host synchronisation (.item / float / bool on a tensor)")

    for name in ("item", "__float__", "__bool__", "__int__", "tolist"):
        monkeypatch.setattr(torch.Tensor, name, boom)


def test_no_host_sync_on_the_tensor_paths(monkeypatch):
    g_mm, g_uni, g_base = _conflicting()
    a, b, x, loss_at, _ = _quadratic()
    g = (a @ x + b).detach()
    window = torch.tensor([1.0, 2.0, 3.0], dtype=D)
    _forbid_host_sync(monkeypatch)
    combine_gradients(g_mm, g_uni, g_base, torch.tensor(1.5, dtype=D))
    s = sharpness_score(loss_at, [x], [g], 0.05)
    sharpness_score(loss_at, [x], [g], 0.05, mode="curvature")
    modulation_gamma(s, window, 1.5, 0.5, 5.0)
    modulation_gamma(s, [torch.tensor(1.0, dtype=D), s], 1.5, 0.5, 5.0)
    min_norm_2(_flat(g_mm), _flat(g_uni))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_no_device_sync_on_cuda():
    dev = torch.device("cuda")
    g_mm, g_uni, g_base = ([t.to(dev) for t in ts] for ts in _conflicting())
    x = torch.nn.Parameter(torch.randn(1000, device=dev))
    window = torch.tensor([1.0, 2.0, 3.0], device=dev)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out, info = combine_gradients(g_mm, g_uni, g_base, torch.tensor(1.5, device=dev))
        s = sharpness_score(lambda: (x**2).sum(), [x], [2 * x.detach()], 0.05)
        gamma = modulation_gamma(s, window, 1.5, 0.5, 5.0)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert gamma.device.type == "cuda" and info["a_mm"].device.type == "cuda"
