"""EyeMoSt / EyeMoSt+ mathematics (remd_core.models.evidential) against scipy and hand computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from remd_core.evaluation import metrics
from remd_core.models import evidential as ev


@pytest.fixture(autouse=True)
def float64():
    """Compare with scipy in float64; restore the default dtype for the rest of the suite."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(before)


def t64(*xs):
    return [torch.tensor(x, dtype=torch.float64) for x in xs]


# --------------------------------------------------------------------------------------- parameters

def test_nig_parameters_softplus_caps_and_floor():
    raw = torch.tensor([[0.3, -50.0, 100.0, -50.0], [-1.0, 100.0, 0.0, 2.0]])
    p = ev.nig_parameters(raw)
    sp = torch.nn.functional.softplus
    assert torch.equal(p.gamma, raw[:, 0])
    # row 0: v underflows to the floor, alpha hits the cap 20, beta gets the floor 0.2
    assert p.v[0].item() == pytest.approx(ev.V_MIN)
    assert p.alpha[0].item() == 20.0
    assert p.beta[0].item() == pytest.approx(0.2, abs=1e-12)
    # row 1: v capped at 20, alpha = softplus(0) + 1, beta = softplus(2) + 0.2
    assert p.v[1].item() == 20.0
    assert p.alpha[1].item() == pytest.approx(math.log(2.0) + 1.0)
    assert p.beta[1].item() == pytest.approx(sp(torch.tensor(2.0)).item() + 0.2)
    assert bool((p.alpha > 1).all())
    with pytest.raises(ValueError, match="4 raw outputs"):
        ev.nig_parameters(torch.zeros(3, 5))


# --------------------------------------------------------------------------------------- likelihoods

NIG_CASES = [  # y, gamma, v, alpha, beta
    (0.7, 0.1, 0.5, 1.5, 0.8),
    (-12.0, -9.0, 3.0, 4.0, 2.0),
    (2.0, 2.0, 20.0, 20.0, 0.2),
    (5.0, -1.0, 0.05, 1.01, 7.0),
]


@pytest.mark.parametrize("y,gamma,v,alpha,beta", NIG_CASES)
def test_nig_nll_equals_student_t_marginal(y, gamma, v, alpha, beta):
    """Amini Eq. 6: the NIG marginal is St(gamma, 2 alpha, beta (1+v)/(v alpha)); check against scipy."""
    y_, g_, v_, a_, b_ = t64(y, gamma, v, alpha, beta)
    st = ev.nig_to_student_t(g_, v_, a_, b_)
    assert st.df.item() == pytest.approx(2 * alpha)
    assert st.scale.item() ** 2 == pytest.approx(beta * (1 + v) / (v * alpha))
    want = -stats.t.logpdf(y, df=2 * alpha, loc=gamma, scale=math.sqrt(beta * (1 + v) / (v * alpha)))
    assert ev.nig_nll(y_, g_, v_, a_, b_).item() == pytest.approx(want, rel=1e-10, abs=1e-10)
    assert ev.student_t_nll(y_, st.loc, st.scale, st.df).item() == pytest.approx(want, rel=1e-10, abs=1e-10)


def test_nig_marginal_by_numerical_integration():
    """The NIG marginal likelihood, integrated numerically: the mean integrates out in closed form
    (y | s2 ~ N(gamma, s2 (1 + 1/v))), the variance by quadrature against InvGamma(alpha, beta)."""
    y, gamma, v, alpha, beta = 0.9, 0.2, 1.3, 2.5, 1.1

    def integrand(s2):
        return stats.norm.pdf(y, loc=gamma, scale=math.sqrt(s2 * (1 + 1 / v))) * stats.invgamma.pdf(
            s2, a=alpha, scale=beta)

    lik, _ = integrate.quad(integrand, 0.0, np.inf, epsabs=1e-13, epsrel=1e-11)
    got = ev.nig_nll(*t64(y, gamma, v, alpha, beta)).item()
    assert got == pytest.approx(-math.log(lik), rel=1e-8)


def test_nig_nll_hand_computation():
    """y = gamma, v = 1, alpha = 1.5, beta = 1: Omega = 4, NLL = 0.5 log pi - 1.5 log 4 + 2 log 4
    + lgamma(1.5) - lgamma(2) = 0.5 log pi + 0.5 log 4 + log(sqrt(pi)/2) = log(pi)."""
    got = ev.nig_nll(*t64(0.0, 0.0, 1.0, 1.5, 1.0)).item()
    assert got == pytest.approx(math.log(math.pi), rel=1e-12)


@pytest.mark.parametrize("y,loc,scale,df", [(0.0, 0.0, 1.0, 1.0), (3.0, -1.0, 2.5, 4.0), (-7.0, 0.5, 0.3, 40.0)])
def test_student_t_nll_against_scipy(y, loc, scale, df):
    got = ev.student_t_nll(*t64(y, loc, scale, df)).item()
    assert got == pytest.approx(-stats.t.logpdf(y, df=df, loc=loc, scale=scale), rel=1e-10)


def test_student_t_nll_hand_computation():
    """df = 1 is a Cauchy: at y = loc + scale the density is 1/(2 pi scale)."""
    got = ev.student_t_nll(*t64(3.0, 1.0, 2.0, 1.0)).item()
    assert got == pytest.approx(math.log(2 * math.pi * 2.0), rel=1e-12)


def test_regulariser_forms():
    y, g, v, a, b = t64([1.0, -2.0], [0.5, 0.0], [2.0, 1.0], [3.0, 1.5], [0.5, 4.0])
    amini = ev.evidence_regulariser(y, g, v, a, b, form="amini")
    eyemost = ev.evidence_regulariser(y, g, v, a, b, form="eyemost")
    assert amini.tolist() == pytest.approx([0.5 * 7.0, 2.0 * 3.5])
    assert eyemost.tolist() == pytest.approx([0.5 * (2 + 3 + 2), 2.0 * (1 + 1.5 + 0.25)])
    with pytest.raises(ValueError, match="form"):
        ev.evidence_regulariser(y, g, v, a, b, form="l2")


# --------------------------------------------------------------------------------------- fusion

def official_two_modality_rule(loc0, s0, df0, loc1, s1, df1, eps=1e-8):
    """The official ST_Combin for one output, re-written with plain floats (squared scales inside)."""
    q0, q1 = s0 ** 2, s1 ** 2
    if df0 < df1:
        base, other = (q0, df0), (q1, df1)
    else:
        base, other = (q1, df1), (q0, df0)
    df = base[1]
    loc = ((df0 + eps) * loc0 + (df1 + eps) * loc1) / (df0 + eps + df1 + eps)
    matched = other[0] * other[1] * (base[1] - 2) / ((other[1] - 2) * base[1])
    return loc, math.sqrt((base[0] + matched) / 2), df


def test_fusion_two_modalities_hand_picked():
    cases = [  # loc0, s0, df0, loc1, s1, df1
        (-3.0, 1.5, 3.0, -6.0, 0.5, 10.0),
        (1.0, 0.4, 30.0, 2.0, 2.0, 2.5),
        (0.0, 1.0, 4.0, 4.0, 3.0, 4.0),     # tie in df
    ]
    for c in cases:
        loc0, s0, df0, loc1, s1, df1 = c
        got = ev.fuse_student_t([torch.tensor([loc0]), torch.tensor([loc1])],
                                [torch.tensor([s0]), torch.tensor([s1])],
                                [torch.tensor([df0]), torch.tensor([df1])])
        want = official_two_modality_rule(*c)
        assert got.loc.item() == pytest.approx(want[0], rel=1e-12)
        assert got.scale.item() == pytest.approx(want[1], rel=1e-12)
        assert got.df.item() == want[2]
    # first case by hand: base = modality 0 (df 3); loc = (3*-3 + 10*-6)/13; matched s1^2 = 0.25*10*1/(8*3)
    got = ev.fuse_student_t(*[[torch.tensor([a]), torch.tensor([b])] for a, b in
                              ((-3.0, -6.0), (1.5, 0.5), (3.0, 10.0))])
    assert got.loc.item() == pytest.approx(-69.0 / 13.0, rel=1e-8)
    assert got.scale.item() ** 2 == pytest.approx((2.25 + 0.25 * 10 / 24) / 2, rel=1e-12)
    assert got.df.item() == 3.0


def test_fusion_keeps_variance_of_matched_modality():
    """The matched Student-t has the same variance as the original: s'^2 df_b/(df_b-2) = s^2 df/(df-2)."""
    fused = ev.fuse_student_t([torch.tensor([0.0]), torch.tensor([0.0])], [torch.tensor([1.0]), torch.tensor([1.0])],
                              [torch.tensor([5.0]), torch.tensor([5.0])])
    assert fused.scale.item() == pytest.approx(1.0)
    s_other, df_other, df_base = 2.0, 12.0, 3.0
    fused = ev.fuse_student_t([torch.tensor([0.0]), torch.tensor([0.0])],
                              [torch.tensor([1e-12]), torch.tensor([s_other])],
                              [torch.tensor([df_base]), torch.tensor([df_other])])
    matched2 = 2 * fused.scale.item() ** 2          # the base contributes ~0
    assert matched2 * df_base / (df_base - 2) == pytest.approx(s_other ** 2 * df_other / (df_other - 2), rel=1e-9)


def test_fusion_absent_modality_equals_single_and_no_nan():
    loc = [torch.tensor([1.0, -4.0, 2.0]), torch.tensor([float("nan"), -8.0, float("inf")])]
    scale = [torch.tensor([0.7, 1.0, 2.0]), torch.tensor([float("nan"), 0.5, 0.0])]
    df = [torch.tensor([3.0, 6.0, 9.0]), torch.tensor([float("nan"), 2.5, -1.0])]
    present = torch.tensor([[True, False], [True, True], [True, False]])
    for x in loc + scale + df:
        x.requires_grad_(True)
    fused = ev.fuse_student_t(loc, scale, df, present)
    for row in (0, 2):
        assert fused.loc[row].item() == pytest.approx(loc[0][row].item())
        assert fused.scale[row].item() == pytest.approx(scale[0][row].item())
        assert fused.df[row].item() == df[0][row].item()
    want = official_two_modality_rule(-4.0, 1.0, 6.0, -8.0, 0.5, 2.5)
    assert fused.loc[1].item() == pytest.approx(want[0])
    assert fused.scale[1].item() == pytest.approx(want[1])
    (fused.loc.sum() + fused.scale.sum() + fused.df.sum()).backward()
    for x in loc + scale + df:
        assert torch.isfinite(x.grad).all()
    # absent modality entries get no gradient at all
    assert loc[1].grad[0].item() == 0.0 and scale[1].grad[2].item() == 0.0


def test_fusion_three_modalities_generalisation():
    loc = [torch.tensor([0.0]), torch.tensor([3.0]), torch.tensor([-1.0])]
    scale = [torch.tensor([1.0]), torch.tensor([2.0]), torch.tensor([0.5])]
    df = [torch.tensor([8.0]), torch.tensor([4.0]), torch.tensor([20.0])]
    fused = ev.fuse_student_t(loc, scale, df)
    assert fused.df.item() == 4.0
    assert fused.loc.item() == pytest.approx((0 * 8 + 3 * 4 - 1 * 20) / 32.0, rel=1e-8)
    matched = [1.0 * 8 * 2 / (6 * 4), 4.0, 0.25 * 20 * 2 / (18 * 4)]
    assert fused.scale.item() ** 2 == pytest.approx(sum(matched) / 3, rel=1e-12)


def test_fusion_all_absent_raises():
    loc = [torch.zeros(2), torch.zeros(2)]
    with pytest.raises(ValueError, match=r"eyes \[1\] have no present modality"):
        ev.fuse_student_t(loc, [torch.ones(2)] * 2, [torch.full((2,), 3.0)] * 2,
                          torch.tensor([[True, False], [False, False]]))


# --------------------------------------------------------------------------------------- intervals

def test_interval_coverage_on_student_t_samples():
    """n = 20000 draws from St(df=5): coverage of the 90 % interval has standard error
    sqrt(0.9*0.1/n) = 0.0021; a 5-sigma tolerance is 0.011."""
    rng = np.random.default_rng(0)
    n, df, loc, scale = 20000, 5.0, -6.0, 2.0
    y = loc + scale * rng.standard_t(df, size=n)
    lo, hi = ev.predictive_interval(torch.full((n,), loc), torch.full((n,), scale), torch.full((n,), df))
    assert isinstance(lo, torch.Tensor)
    assert metrics.interval_coverage(y, lo, hi) == pytest.approx(0.9, abs=5 * math.sqrt(0.09 / n))
    assert metrics.interval_mean_width(lo, hi) == pytest.approx(2 * scale * stats.t.ppf(0.95, df), rel=1e-12)
    # a narrower interval must cover less: the check can fail
    lo5, hi5 = ev.predictive_interval(np.full(n, loc), np.full(n, scale), np.full(n, df), level=0.5)
    assert metrics.interval_coverage(y, lo5, hi5) == pytest.approx(0.5, abs=5 * math.sqrt(0.25 / n))
    with pytest.raises(ValueError, match="level"):
        ev.predictive_interval(0.0, 1.0, 3.0, level=1.0)


# --------------------------------------------------------------------------------------- head and loss

def make_batch(b=6, dims=None, seed=0):
    dims = dims or {"fundus": 5, "oct": 7}
    g = torch.Generator().manual_seed(seed)
    feats = {m: torch.randn(b, d, generator=g) for m, d in dims.items()}
    y = torch.randn(b, generator=g) * 5 - 4
    return dims, feats, y


@pytest.mark.parametrize("confidence_weight", [0.0, ev.CONFIDENCE_WEIGHT])
def test_head_gradients_flow_to_every_head(confidence_weight):
    torch.manual_seed(0)
    dims, feats, y = make_batch()
    head = ev.EvidentialHead(dims)
    present = torch.tensor([[True, True], [True, False], [False, True], [True, True], [True, True], [False, True]])
    out = head(feats, present)
    assert out.prediction.shape == (6,) and torch.equal(out.prediction, out.fused.loc)
    loss = ev.evidential_loss(out, y, confidence_weight=confidence_weight)
    assert torch.isfinite(loss)
    loss.backward()
    for m in dims:
        for p in head.heads[m].parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


def test_head_absent_modality_nan_features_and_single_modality_equivalence():
    torch.manual_seed(0)
    dims, feats, y = make_batch(b=4)
    head = ev.EvidentialHead(dims, hidden=8)
    feats["oct"] = feats["oct"].clone().requires_grad_(True)
    bad = dict(feats, fundus=torch.where(torch.tensor([True, False, True, False])[:, None],
                                         torch.full_like(feats["fundus"], float("nan")), feats["fundus"]))
    present = torch.tensor([[False, True], [True, True], [False, True], [True, True]])
    out = head(bad, present)
    only_oct = out.student["oct"]
    for row in (0, 2):
        assert out.fused.loc[row].item() == pytest.approx(only_oct.loc[row].item())
        assert out.fused.scale[row].item() == pytest.approx(only_oct.scale[row].item())
        assert out.fused.df[row].item() == only_oct.df[row].item()
    loss = ev.evidential_loss(out, y, confidence_weight=10.0)
    loss.backward()
    assert torch.isfinite(loss)
    for p in head.parameters():
        assert torch.isfinite(p.grad).all()
    assert torch.isfinite(feats["oct"].grad).all()
    with pytest.raises(ValueError, match="no present modality"):
        head(feats, torch.tensor([[False, False], [True, True], [True, True], [True, True]]))


def test_evidential_loss_matches_recomputation():
    torch.manual_seed(1)
    dims, feats, y = make_batch(b=5)
    head = ev.EvidentialHead(dims)
    present = torch.tensor([[True, True], [True, False], [True, True], [False, True], [True, True]])
    out = head(feats, present)
    f = out.fused
    fused = (-torch.tensor(stats.t.logpdf(y.numpy(), df=f.df.detach().numpy(), loc=f.loc.detach().numpy(),
                                          scale=f.scale.detach().numpy())) + 0.5 * torch.abs(y - f.loc)).mean()
    # official calculate_evidential_loss_constraints: mean(nll + 0.01 * ce * conf), ce one batch scalar
    # (here the mean absolute error over the modality's present eyes), conf = v + alpha + 1/beta per eye
    want, per_sample = fused, fused
    for j, m in enumerate(dims):
        p = out.nig[m]
        rows = present[:, j]
        nll, conf = ev.nig_nll(y, p.gamma, p.v, p.alpha, p.beta)[rows], (p.v + p.alpha + 1 / p.beta)[rows]
        err = torch.abs(y - p.gamma)[rows]
        want = want + nll.mean() + 0.01 * err.mean() * conf.mean()
        per_sample = per_sample + (nll + 0.01 * err * conf).mean()
    assert ev.evidential_loss(out, y).item() == pytest.approx(want.item(), rel=1e-10)
    assert ev.evidential_loss(out, y, regulariser_error="sample").item() == pytest.approx(per_sample.item(), rel=1e-10)
    assert abs(want.item() - per_sample.item()) > 1e-6  # the two forms differ on this batch
    # EyeMoSt+ adds 10 * sum over counted eyes of relu(conf_m - conf_F)
    conf_f = 1 / f.scale ** 2 + f.df
    assert torch.allclose(ev.fused_confidence(f.scale, f.df, official_units=True), 1 / (f.scale ** 2) ** 2 + f.df)
    extra = 0.0
    for j, m in enumerate(dims):
        p = out.nig[m]
        gap = (p.v + p.alpha + 1 / p.beta - conf_f)[present[:, j]]
        extra = extra + torch.relu(gap - 1e-16).sum()
    got = ev.evidential_loss(out, y, confidence_weight=10.0).item()
    assert got == pytest.approx(want.item() + 10 * extra.item(), rel=1e-10)
    with pytest.raises(ValueError, match="confidence_weight"):
        ev.evidential_loss(out, y, confidence_weight=-1.0)


def test_confidence_loss_tolerance_selects_eyes():
    y = torch.tensor([0.0, 0.0])
    nig = ev.NIG(gamma=torch.tensor([0.1, 5.0]), v=torch.tensor([20.0, 20.0]), alpha=torch.tensor([20.0, 20.0]),
                 beta=torch.tensor([0.2, 0.2]))
    fused = ev.StudentT(loc=torch.zeros(2), scale=torch.ones(2), df=torch.full((2,), 3.0))
    gap = 20 + 20 + 5 - (1 + 3)
    assert ev.confidence_consistency_loss(y, [nig], fused).item() == pytest.approx(2 * gap)
    assert ev.confidence_consistency_loss(y, [nig], fused, tolerance=1.0).item() == pytest.approx(gap)
    assert ev.confidence_consistency_loss(y, [nig], fused, reduction="mean").item() == pytest.approx(gap)


def test_fusion_contributions_sum_to_prediction():
    torch.manual_seed(2)
    dims, feats, y = make_batch(b=4)
    head = ev.EvidentialHead(dims)
    present = torch.tensor([[True, True], [False, True], [True, False], [True, True]])
    shares = head.fusion_contributions(feats, present)
    total = sum(shares.values())
    assert torch.allclose(total, head(feats, present).prediction, rtol=1e-12, atol=1e-12)
    assert shares["fundus"][1].item() == 0.0 and shares["oct"][2].item() == 0.0
