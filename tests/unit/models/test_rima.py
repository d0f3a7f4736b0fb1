"""RIMA (remd_core.models.rima_ot, remd_core.models.rima): the labelled GW coupling keeps mass within
labels, has uniform marginals and finds the exact optimum of tiny problems; partners follow the
coupling's rows; the feature coupling recovers a feature permutation; the model handles every
presence pattern, ignores an absent modality's input, satisfies the contract, splits its prediction
into two additive shares, trains every parameter and refuses an eye with nothing present."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from remd_core.data.format import DatasetSpec, ModalitySpec, stage_from_md
from remd_core.models import EncoderConfig, check_model
from remd_core.models.rima import RIMARegressor, rima_alignment_loss
from remd_core.models.rima_ot import (feature_coupling, intra_domain_cost, labelled_gw_coupling,
                                      projection_from_coupling, sample_partners)
from remd_core.data.transforms import PRESENT

MARGINAL_TOL = 1e-5
"""Marginal tolerance of ``labelled_gw_coupling`` at its defaults (documented in rima_ot, difference 3)."""
EYES = DatasetSpec("eyes", (ModalitySpec("fundus", "image", (3, 32, 32)), ModalitySpec("oct", "volume", (2, 32, 32))))
SMALL = EncoderConfig(width=0.125)
MD = torch.tensor([0.5, -1.0, -3.0, -4.5, -7.0, -9.0, -13.0, -20.0], dtype=torch.float64)   # stages 0 0 1 1 2 2 3 3


def gw_objective(xa, xb, coupling):
    """sum_ijkl (C1_ik - C2_jl)^2 T_ij T_kl, written out (the official geometry: max-scaled squared
    Euclidean intra-domain costs)."""
    c1, c2 = intra_domain_cost(xa), intra_domain_cost(xb)
    diff = (c1[:, None, :, None] - c2[None, :, None, :]) ** 2          # [i, j, k, l]
    return float(np.einsum("ijkl,ij,kl->", diff, coupling, coupling))


def brute_force(xa, xb, la, lb):
    """Every label-respecting permutation coupling (P / n) with its GW objective, best first."""
    n = len(xa)
    out = []
    for perm in itertools.permutations(range(n)):
        if all(la[i] == lb[perm[i]] for i in range(n)):
            p = np.zeros((n, n))
            p[np.arange(n), perm] = 1.0 / n
            out.append((gw_objective(xa, xb, p), p))
    return sorted(out, key=lambda t: t[0])


# ---------------------------------------------------------------- labelled GW coupling

@pytest.mark.parametrize("seed,n_a,n_b,kind", [(0, 8, 8, "isotropic"), (1, 16, 16, "isotropic"),
                                              (2, 16, 16, "clustered"), (3, 8, 12, "clustered")])
def test_labelled_coupling_has_no_mass_across_labels_and_uniform_marginals(seed, n_a, n_b, kind):
    """Exactly zero across labels (the +inf cost gives a zero kernel), rows and columns at 1/B
    within MARGINAL_TOL; batches of different sizes with the same label shares work too."""
    rng = np.random.default_rng(seed)
    la = np.repeat(np.arange(4), n_a // 4)
    lb = rng.permutation(np.repeat(np.arange(4), n_b // 4))
    if kind == "isotropic":          # near-degenerate for GW: Sinkhorn runs to its cap
        xa, xb = rng.normal(size=(n_a, 128)), rng.normal(size=(n_b, 64))
    else:
        xa, xb = la[:, None] + rng.normal(size=(n_a, 128)), 0.5 * lb[:, None] + rng.normal(size=(n_b, 64))
    t = labelled_gw_coupling(xa, xb, la, lb)
    assert t.shape == (n_a, n_b) and (t >= 0).all()
    assert np.all(t[la[:, None] != lb[None, :]] == 0.0)
    np.testing.assert_allclose(t.sum(1), 1.0 / n_a, rtol=0, atol=MARGINAL_TOL)
    np.testing.assert_allclose(t.sum(0), 1.0 / n_b, rtol=0, atol=MARGINAL_TOL)
    assert t[la[:, None] == lb[None, :]].max() > 0


def test_labelled_coupling_matches_the_exact_solution_of_a_3_plus_3_problem():
    """Three points and a rotated, translated, re-ordered copy of them in 3-D, labels [0, 0, 1]:
    the exact GW optimum is the isometry's matching (objective 0); the other label-respecting
    permutation costs more. The entropic coupling (epsilon 5e-3) equals the optimum / 3."""
    xa = np.array([[0.0, 0.0], [1.0, 0.0], [0.2, 0.3]])       # the label-1 point is near one label-0 point only
    rot = np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))[0]
    order = [2, 0, 1]
    xb = (np.c_[xa, np.zeros(3)] @ rot.T + 5.0)[order]
    la = np.array([0, 0, 1])
    lb = la[order]
    ranked = brute_force(xa, xb, la, lb)
    assert len(ranked) == 2 and ranked[0][0] == pytest.approx(0.0, abs=1e-12) and ranked[1][0] > 0.1
    t = labelled_gw_coupling(xa, xb, la, lb)
    np.testing.assert_allclose(t, ranked[0][1], rtol=0, atol=1e-3)


@pytest.mark.parametrize("seed", [0, 1])
def test_labelled_coupling_matches_a_brute_force_over_permutations(seed):
    """Five random points per domain, labels [0, 0, 0, 1, 1] (shuffled on one side). With squared
    Euclidean intra-domain costs (conditionally negative definite), the GW objective is concave on
    the label-constrained transport polytope, so its minimum is a vertex: a label-respecting
    permutation / 5. The brute force over those 12 vertices is therefore the exact solution. These
    seeds have a margin of at least 0.01 between the best and the second vertex (checked), far
    above epsilon = 5e-3's blur, so the entropic coupling must be the best vertex within 1e-3."""
    rng = np.random.default_rng(seed)
    la = np.array([0, 0, 0, 1, 1])
    lb = rng.permutation(la)
    xa, xb = rng.normal(size=(5, 3)), rng.normal(size=(5, 4))
    ranked = brute_force(xa, xb, la, lb)
    assert ranked[1][0] - ranked[0][0] > 0.01
    t = labelled_gw_coupling(xa, xb, la, lb)
    np.testing.assert_allclose(t, ranked[0][1], rtol=0, atol=1e-3)
    assert gw_objective(xa, xb, t) == pytest.approx(ranked[0][0], abs=1e-4)


def test_labelled_coupling_of_the_reversed_problem_is_the_transpose():
    """Why the alignment loss solves once: solving OCT->fundus gives the transpose of fundus->OCT
    (within the solver's tolerance)."""
    rng = np.random.default_rng(4)
    la = np.repeat(np.arange(4), 4)
    xa, xb = la[:, None] + rng.normal(size=(16, 32)), rng.normal(size=(16, 24)) + 0.3 * la[:, None]
    np.testing.assert_allclose(labelled_gw_coupling(xb, xa, la, la), labelled_gw_coupling(xa, xb, la, la).T,
                               rtol=0, atol=MARGINAL_TOL)


def test_labelled_coupling_refuses_label_shares_that_differ():
    x = np.random.default_rng(0).normal(size=(4, 3))
    with pytest.raises(ValueError, match=r"labels \[0, 1\] have different shares"):
        labelled_gw_coupling(x, x, [0, 0, 0, 1], [0, 0, 1, 1])


# ---------------------------------------------------------------- partners

def test_partners_follow_the_rows_never_pick_a_zero_entry_and_a_zero_row_is_uniform():
    """3000 rows of each pattern, one draw per row: chi-square goodness of fit of the counts against
    the row's normalised weights (over its non-zero entries) at significance 1e-3 (a correct sampler
    fails this for one seed in a thousand; the generator's seed is fixed, so the test is
    deterministic); zero entries are never drawn; an all-zero row (floored at 1e-8 everywhere, as
    official) draws uniformly over all columns."""
    patterns = np.array([[0.5, 0.3, 0.2, 0.0, 0.0], [0.0, 0.0, 0.01, 0.0, 0.09], [0.0] * 5])
    n = 3000
    coupling = np.repeat(patterns, n, axis=0)
    draws = sample_partners(coupling, torch.Generator().manual_seed(0))
    assert draws.dtype == torch.int64 and draws.shape == (3 * n,)
    assert torch.equal(draws, sample_partners(torch.as_tensor(coupling), torch.Generator().manual_seed(0)))
    for k, row in enumerate(patterns):
        counts = np.bincount(draws[k * n:(k + 1) * n].numpy(), minlength=5)
        support = row > 0 if row.sum() > 0 else np.ones(5, bool)
        assert counts[~support].sum() == 0
        expected = (row[support] / row[support].sum() if row.sum() > 0 else np.full(5, 0.2)) * n
        assert stats.chisquare(counts[support], expected).pvalue > 1e-3


# ---------------------------------------------------------------- feature coupling

def test_feature_coupling_recovers_a_feature_permutation_and_has_uniform_feature_marginals():
    """The fundus features are the OCT features re-ordered, eyes paired (sample coupling I / N): the
    feature coupling puts each fundus feature on its source OCT feature; its marginals are uniform
    and the projection's columns sum to one."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(24, 10)) * rng.uniform(0.5, 3.0, 10) + 2.0 * rng.normal(size=10)
    perm = rng.permutation(10)
    tv = feature_coupling(x, x[:, perm], np.eye(24) / 24)
    assert tv.shape == (10, 10)
    assert np.array_equal(tv.argmax(axis=0), perm)
    np.testing.assert_allclose(tv.sum(1), 0.1, rtol=0, atol=MARGINAL_TOL)
    np.testing.assert_allclose(tv.sum(0), 0.1, rtol=0, atol=MARGINAL_TOL)
    p = projection_from_coupling(tv)
    np.testing.assert_allclose(p.sum(0), 1.0, rtol=0, atol=1e-12)
    np.testing.assert_allclose(x @ p, x[:, perm], rtol=0, atol=1e-3 * np.abs(x).max())   # OCT -> fundus space


def test_feature_projection_shape_and_sums_with_different_widths():
    """[D_oct, D_fundus] = [12, 8]: columns sum to 1, rows to D_fundus / D_oct."""
    rng = np.random.default_rng(1)
    xo, xf = rng.normal(size=(16, 12)), rng.normal(size=(16, 8))
    la = np.repeat(np.arange(4), 4)
    tv = feature_coupling(xo, xf, labelled_gw_coupling(xo, xf, la, la))
    p = projection_from_coupling(tv)
    assert tv.shape == p.shape == (12, 8)
    np.testing.assert_allclose(p.sum(0), 1.0, rtol=0, atol=1e-12)
    np.testing.assert_allclose(p.sum(1), 8 / 12, rtol=0, atol=1e-3)


def test_coot_mode_recovers_both_permutations():
    """Without a sample coupling, COOT's block-coordinate descent finds the eyes' and the features'
    re-orderings together."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(24, 10)) * rng.uniform(0.5, 3.0, 10) + 2.0 * rng.normal(size=10)
    feat, eyes = rng.permutation(10), rng.permutation(24)
    tv, log = feature_coupling(x, x[eyes][:, feat], log=True)
    assert np.array_equal(tv.argmax(axis=0), feat)
    assert np.array_equal(log["sample_coupling"].argmax(axis=1), np.argsort(eyes))


# ---------------------------------------------------------------- the model

def _model(seed=0) -> RIMARegressor:
    torch.manual_seed(seed)
    return RIMARegressor(EYES, encoder=SMALL).double()


def _inputs(b=8, seed=1, present=None):
    g = torch.Generator().manual_seed(seed)
    inputs = {"fundus": torch.randn(b, 3, 32, 32, generator=g, dtype=torch.float64),
              "oct": torch.randn(b, 2, 32, 32, generator=g, dtype=torch.float64)}
    if present is not None:
        inputs[PRESENT] = present
    return inputs


PATTERNS = torch.tensor([[1, 1], [1, 1], [1, 0], [1, 0], [0, 1], [0, 1]], dtype=torch.bool)   # (fundus, oct)


def test_refuses_modalities_other_than_fundus_and_oct():
    three = DatasetSpec("three", EYES.modalities + (ModalitySpec("tabular", "vector", (3,)),))
    with pytest.raises(ValueError, match="exactly the modalities"):
        RIMARegressor(three, encoder=SMALL)
    with pytest.raises(ValueError, match="exactly the modalities"):
        RIMARegressor(EYES, modalities=("oct",), encoder=SMALL)


@pytest.mark.parametrize("order", [("fundus", "oct"), ("oct", "fundus")])
def test_every_presence_pattern_is_finite_and_an_absent_input_changes_nothing(order):
    """Both, fundus only, OCT only (evaluation mode): finite predictions; an absent modality's input
    (replaced by noise x 100 or NaN) leaves the prediction bit-identical and the gradients of every
    layer after the encoders finite, a present one's changes it; the absent features are replaced by
    their prediction from the present modality."""
    torch.manual_seed(0)
    model = RIMARegressor(EYES, modalities=order, encoder=SMALL).double().eval()
    present = PATTERNS if order == ("fundus", "oct") else PATTERNS.flip(1)
    inputs = _inputs(6, present=present)
    out = model(inputs)
    assert out["fused"].shape == (6,) and torch.isfinite(out["fused"]).all() and out["unimodal"] == {}
    assert {m: f.shape for m, f in out["features"].items()} == {"fundus": (6, 64), "oct": (6, 64)}
    changed = dict(inputs, fundus=inputs["fundus"].clone(), oct=inputs["oct"].clone())
    changed["oct"][2:4] = 100 * torch.randn_like(changed["oct"][2:4])
    changed["fundus"][4] = float("nan")
    changed["fundus"][5] = 100 * torch.randn_like(changed["fundus"][5])
    again = model(changed)
    assert torch.equal(again["fused"], out["fused"])
    again["fused"].sum().backward()             # the NaN input reaches no gradient after the encoders
    assert all(torch.isfinite(p.grad).all() for p in model.head_parameters() if p.grad is not None)
    changed["oct"][0] = changed["oct"][1]                       # a present input does matter
    assert not torch.equal(model(changed)["fused"][0], out["fused"][0])
    rima = out["rima"]
    torch.testing.assert_close(rima["oct"][2:4], model.fundus_to_oct(out["features"]["fundus"][2:4]))
    torch.testing.assert_close(rima["fundus"][4:], model.oct_to_fundus(out["features"]["oct"][4:]))
    torch.testing.assert_close(rima["fundus"][:4], out["features"]["fundus"][:4])


def test_check_model_passes_and_the_two_shares_sum_to_the_prediction():
    model = _model().eval()
    check_model(model, "RIMA")
    for present in (None, PATTERNS):
        inputs = _inputs(6, present=present)
        out = model(inputs)
        shares = model.fusion_contributions(out["features"], present)
        assert set(shares) == {"fundus", "oct"}
        torch.testing.assert_close(shares["fundus"] + shares["oct"], out["fused"], rtol=0, atol=1e-12)
        assert not torch.allclose(shares["fundus"], shares["oct"])


def test_gradients_reach_every_trainable_parameter_on_a_full_presence_batch():
    """The encoders zero-initialise the last BatchNorm scale of each residual block, which at
    initialisation leaves the block's other weights without gradient whatever the model; those
    scales are set to 1 first, so every parameter must get a non-zero finite gradient."""
    model = _model()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
    model.train()
    out = model(_inputs(8))
    loss = out["fused"].pow(2).mean() + rima_alignment_loss(model, out, MD, torch.Generator().manual_seed(0))
    loss.backward()
    missing = [n for n, p in model.named_parameters()
               if p.grad is None or not torch.isfinite(p.grad).all() or not p.grad.abs().sum() > 0]
    assert not missing


def test_an_eye_with_no_modality_raises_naming_it():
    present = PATTERNS.clone()
    present[3] = False
    with pytest.raises(ValueError, match=r"batch positions \[3\]"):
        _model()(_inputs(6, present=present))


# ---------------------------------------------------------------- the alignment loss

def test_alignment_loss_is_the_cosine_to_the_drawn_partners_and_trains_the_mlps_alone():
    """Evaluation mode (no dropout): the loss equals a recomputation from the returned coupling and
    partners; the coupling keeps mass within stages; the loss's gradient reaches the two MLPs and
    nothing else (it reads detached features, as official); eval mode leaves the projection alone."""
    model = _model().eval()
    out = model(_inputs(8))
    before = model.feature_projection.clone()
    loss, d = rima_alignment_loss(model, out, MD, torch.Generator().manual_seed(0), details=True)
    assert loss.dim() == 0 and loss.requires_grad
    stages = stage_from_md(MD.numpy())
    assert np.array_equal(d["stages"], stages)
    assert np.all(d["coupling"][stages[:, None] != stages[None, :]] == 0.0)
    assert all(stages[d["oct_partner"]] == stages) and all(stages[d["fundus_partner"]] == stages)
    f, o = out["features"]["fundus"].detach(), out["features"]["oct"].detach()
    want = ((1 - torch.cosine_similarity(model.fundus_to_oct(f), o[d["oct_partner"]], dim=-1)).mean()
            + (1 - torch.cosine_similarity(model.oct_to_fundus(o), f[d["fundus_partner"]], dim=-1)).mean())
    torch.testing.assert_close(loss, want, rtol=1e-6, atol=1e-6)     # the loss's cosine runs in float32
    loss.backward()
    mlps = {n for n, _ in model.named_parameters() if n.startswith(("fundus_to_oct.", "oct_to_fundus."))}
    for n, p in model.named_parameters():
        assert (p.grad is not None and p.grad.abs().sum() > 0) == (n in mlps), n
    assert torch.equal(model.feature_projection, before)


def test_alignment_loss_uses_only_eyes_with_both_modalities_and_refreshes_the_projection_in_training():
    model = _model().train()
    present = torch.tensor([[1, 1]] * 4 + [[1, 0], [0, 1], [1, 1], [1, 1]], dtype=torch.bool)
    out = model(_inputs(8, present=present))
    before = model.feature_projection.clone()
    loss, d = rima_alignment_loss(model, out, MD, torch.Generator().manual_seed(0), details=True)
    assert d["eyes"].tolist() == [0, 1, 2, 3, 6, 7] and d["coupling"].shape == (6, 6)
    assert not torch.equal(model.feature_projection, before)
    torch.testing.assert_close(model.feature_projection.sum(0), torch.ones(64, dtype=torch.float64))
    (out["fused"].sum() + loss).backward()                        # the forward's graph survives the refresh
    assert "feature_projection" in model.state_dict()
    fresh = _model()
    fresh.load_state_dict(model.state_dict())
    assert torch.equal(fresh.feature_projection, model.feature_projection)
    nobody = model(_inputs(4, present=torch.tensor([[1, 0], [0, 1], [1, 0], [0, 1]], dtype=torch.bool)))
    zero = rima_alignment_loss(model, nobody, MD[:4], torch.Generator().manual_seed(0))
    assert zero.item() == 0.0 and zero.requires_grad
    zero.backward()
