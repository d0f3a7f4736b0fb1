"""SimMLM (remd_core.models.simmlm): the mixture gives an absent modality exactly zero weight, refuses
an eye with nothing present, satisfies the model contract; MoFe matches a hand computation; the
fewer-modality masks are strict non-empty subsets of the present set, reproducible and uniform."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from scipy import stats

from remd_core.data.format import DatasetSpec, ModalitySpec
from remd_core.models import EncoderConfig, check_model
from remd_core.models.simmlm import (MOFE_WEIGHT, SimMLMRegressor, fewer_subset, mofe_loss, mofe_term,
                                     per_sample_error, with_present)
from remd_core.data.transforms import PRESENT

VECTORS = DatasetSpec("three", tuple(ModalitySpec(m, "vector", (d,)) for m, d in (("a", 5), ("b", 4), ("c", 6))))
EYES = DatasetSpec("eyes", (ModalitySpec("fundus", "image", (3, 32, 32)), ModalitySpec("oct", "volume", (2, 32, 32))))
SMALL = EncoderConfig(width=0.125, mlp_hidden=8)
PATTERNS = torch.tensor([[1, 1, 1], [1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [0, 1, 1], [1, 0, 1], [1, 1, 1]],
                        dtype=torch.bool)


def _vector_model(seed=0, **kw):
    torch.manual_seed(seed)
    return SimMLMRegressor(VECTORS, encoder=SMALL, **kw).double().eval()


def _vector_inputs(present=PATTERNS, seed=1):
    g = torch.Generator().manual_seed(seed)
    b = present.shape[0]
    inputs = {m.name: torch.randn(b, *m.shape, generator=g, dtype=torch.float64) for m in VECTORS.modalities}
    return {**inputs, PRESENT: present}


@pytest.mark.parametrize("expert_hidden,router_hidden", [(None, 64), (16, None)])
def test_absent_modality_gets_zero_weight_and_one_present_gives_its_expert(expert_hidden, router_hidden):
    model = _vector_model(expert_hidden=expert_hidden, router_hidden=router_hidden)
    inputs = _vector_inputs()
    out = model(inputs)
    w = out["router"]
    assert w.shape == (8, 3) and out["fused"].shape == (8,)
    assert torch.all(w[~PATTERNS] == 0.0)                   # exactly zero, not merely small
    assert torch.all(w[PATTERNS] > 0.0)
    torch.testing.assert_close(w.sum(dim=1), torch.ones(8, dtype=torch.float64), rtol=0, atol=1e-12)
    for row in range(8):
        if int(PATTERNS[row].sum()) == 1:
            j = int(PATTERNS[row].nonzero())
            assert w[row, j].item() == 1.0
            assert out["fused"][row].item() == out["unimodal"][model.modalities[j]][row].item()
    experts = torch.stack([out["unimodal"][m] for m in model.modalities], dim=1)
    torch.testing.assert_close(out["fused"], (w * experts).sum(dim=1), rtol=0, atol=1e-12)


def test_an_absent_modalitys_input_changes_nothing():
    """Neither its expert (weight 0) nor the router (it reads zeros for an absent modality's
    features) sees what an absent modality's input holds."""
    model = _vector_model()
    inputs = _vector_inputs()
    out = model(inputs)
    noisy = dict(inputs)
    for j, m in enumerate(model.modalities):
        noisy[m] = torch.where(PATTERNS[:, j:j + 1], inputs[m], 100 * torch.randn_like(inputs[m]))
    again = model(noisy)
    assert torch.equal(out["fused"], again["fused"])
    assert torch.equal(out["router"], again["router"])


def test_no_present_mask_means_every_modality_present():
    model = _vector_model()
    inputs = _vector_inputs()
    full = model({**inputs, PRESENT: torch.ones(8, 3, dtype=torch.bool)})
    bare = model({m: inputs[m] for m in model.modalities})
    assert torch.equal(full["fused"], bare["fused"])
    assert bare["present"].all()


def test_a_sample_with_no_present_modality_raises_naming_its_position():
    model = _vector_model()
    present = PATTERNS.clone()
    present[2] = False
    present[5] = False
    with pytest.raises(ValueError, match=r"batch positions \[2, 5\]"):
        model(_vector_inputs(present))
    with pytest.raises(ValueError, match=r"batch positions \[2, 5\]"):
        model.fusion_contributions(model.encode(_vector_inputs()), present)
    with pytest.raises(ValueError, match=r"must be bool \[B, K\]"):
        model({**_vector_inputs(), PRESENT: PATTERNS[:, :2]})


def test_model_contract_and_fusion_contributions_sum_to_fused():
    model = _vector_model()
    check_model(model, "test")
    heads = {id(p) for p in model.head_parameters()}
    assert {id(p) for p in model.router.parameters()} <= heads
    assert {id(p) for p in model.experts.parameters()} <= heads
    inputs = _vector_inputs()
    out = model(inputs)
    shares = model.fusion_contributions(out["features"], out["present"])
    assert set(shares) == set(model.modalities)
    total = shares["a"] + shares["b"] + shares["c"]
    assert torch.equal(total, out["fused"])
    for j, m in enumerate(model.modalities):
        assert torch.all(shares[m][~PATTERNS[:, j]] == 0.0)
    all_present = model.fusion_contributions(out["features"])        # no mask: every modality present
    full = model({m: inputs[m] for m in model.modalities})
    torch.testing.assert_close(sum(all_present.values()), full["fused"], rtol=0, atol=1e-12)


def test_gradients_reach_router_experts_and_encoders_on_eye_modalities():
    torch.manual_seed(0)
    model = SimMLMRegressor(EYES, encoder=SMALL)
    check_model(model)
    inputs = {"fundus": torch.rand(4, 3, 32, 32), "oct": torch.rand(4, 2, 32, 32),
              PRESENT: torch.tensor([[1, 1], [1, 1], [1, 0], [0, 1]], dtype=torch.bool)}
    out = model(inputs)
    assert out["features"]["fundus"].shape[0] == 4 and out["router"].shape == (4, 2)
    out["fused"].pow(2).mean().backward()
    assert all(p.grad is not None for p in model.parameters())
    # every router and expert tensor moves, and each encoder's first layer (the stem) does: the
    # gradient crossed the whole encoder (inside the residual blocks the ResNets' zero-initialised
    # last BN gammas hold the first step's gradient of the block convolutions at 0, by design)
    assert all(p.grad.abs().sum() > 0 for p in [*model.router.parameters(), *model.experts.parameters()])
    for m, encoder in model.encoders.items():
        assert next(iter(encoder.parameters())).grad.abs().sum() > 0, m


def test_an_expert_absent_from_every_sample_gets_no_gradient():
    model = _vector_model()
    present = torch.tensor([[1, 1, 0], [0, 1, 0], [1, 0, 0]], dtype=torch.bool)
    out = model(_vector_inputs(present))
    out["fused"].sum().backward()
    assert all(p.grad.abs().sum() == 0 for p in model.experts["c"].parameters())
    assert all(p.grad.abs().sum() > 0 for p in model.experts["a"].parameters())


def test_per_sample_error_and_mofe_against_hand_computation():
    pred = torch.tensor([1.0, -2.0, 0.5])
    target = torch.tensor([0.0, 1.0, 0.5])
    assert per_sample_error(pred, target).tolist() == [1.0, 9.0, 0.0]
    assert per_sample_error(pred, target, "absolute").tolist() == [1.0, 3.0, 0.0]
    more = torch.tensor([1.0, 3.0, 2.0, 5.0])
    fewer = torch.tensor([2.0, 1.0, 2.0, 4.5])
    # gaps more - fewer = [-1, 2, 0, 0.5] -> relu [0, 2, 0, 0.5], mean 0.625, times 0.1
    assert MOFE_WEIGHT == 0.1
    assert mofe_loss(more, fewer).item() == pytest.approx(0.0625, abs=1e-7)
    assert mofe_loss(more, fewer, weight=1.0).item() == pytest.approx(0.625, abs=1e-7)
    assert mofe_loss(fewer, fewer).item() == 0.0
    empty = torch.zeros(0, requires_grad=True)
    assert mofe_loss(empty, empty.detach()).item() == 0.0
    m = more.clone().requires_grad_()
    f = fewer.clone().requires_grad_()
    mofe_loss(m, f, weight=1.0).backward()
    assert m.grad.tolist() == [0.0, 0.25, 0.0, 0.25] and f.grad.tolist() == [0.0, -0.25, 0.0, -0.25]
    with pytest.raises(ValueError, match="kind"):
        per_sample_error(pred, target, "huber")
    with pytest.raises(ValueError, match="weight"):
        mofe_loss(more, fewer, weight=-0.1)
    with pytest.raises(ValueError, match="pair up"):
        mofe_loss(more, fewer[:3])


def _as_tuple(row):
    return tuple(int(j) for j in row.nonzero().flatten())


def test_fewer_subset_is_a_strict_nonempty_subset_of_the_present_set():
    g = torch.Generator().manual_seed(0)
    present = torch.rand(4000, 4, generator=g) < 0.6
    fewer, has_pair = fewer_subset(present, torch.Generator().manual_seed(1))
    n = present.sum(1)
    assert torch.equal(has_pair, n >= 2)
    assert not (fewer & ~present).any()                             # never an absent modality
    pair = has_pair
    assert fewer[pair].any(1).all()                                  # non-empty
    assert (fewer[pair].sum(1) < n[pair]).all()                      # strict
    assert torch.equal(fewer[~pair], present[~pair])                 # no pair: own mask, unchanged


def test_fewer_subset_reproduces_by_generator_seed():
    present = torch.ones(500, 3, dtype=torch.bool)
    a, _ = fewer_subset(present, torch.Generator().manual_seed(7))
    b, _ = fewer_subset(present, torch.Generator().manual_seed(7))
    c, _ = fewer_subset(present, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("pattern,allowed", [
    ((1, 1, 1), {(0,), (1,), (2,), (0, 1), (0, 2), (1, 2)}),
    ((1, 0, 1), {(0,), (2,)}),
    ((1, 1, 0), {(0,), (1,)}),
])
def test_fewer_subset_is_uniform_over_the_allowed_subsets(pattern, allowed):
    draws = 30000
    present = torch.tensor([pattern] * draws, dtype=torch.bool)
    fewer, has_pair = fewer_subset(present, torch.Generator().manual_seed(3))
    assert has_pair.all()
    counts = Counter(_as_tuple(row) for row in fewer)
    assert set(counts) == allowed
    observed = [counts[s] for s in sorted(allowed)]
    assert stats.chisquare(observed).pvalue > 1e-3
    expected = draws / len(allowed)
    assert all(abs(c - expected) < 5 * (expected ** 0.5) for c in observed)


def test_with_present_zero_fills_and_selects_rows():
    inputs = _vector_inputs()
    fewer = torch.tensor([[1, 0, 1]] * 8, dtype=torch.bool)
    rows = torch.tensor([1, 0, 1, 0, 0, 0, 0, 1], dtype=torch.bool)
    sub = with_present(inputs, fewer, ("a", "b", "c"), rows=rows)
    assert sub[PRESENT].shape == (3, 3) and sub["a"].shape == (3, 5)
    assert torch.equal(sub["a"], inputs["a"][rows]) and torch.equal(sub["c"], inputs["c"][rows])
    assert torch.all(sub["b"] == 0)


def test_mofe_term_is_the_loss_on_a_second_forward_with_fewer_modalities():
    model = _vector_model()
    inputs = _vector_inputs()
    target = torch.linspace(-10, 0, 8, dtype=torch.float64)
    out = model(inputs)
    loss, info = mofe_term(model, inputs, target, out, torch.Generator().manual_seed(4), kind="absolute")
    fewer, has_pair = fewer_subset(PATTERNS, torch.Generator().manual_seed(4))
    assert torch.equal(info["fewer"], fewer) and torch.equal(info["has_pair"], has_pair)
    assert has_pair.tolist() == [int(r.sum()) >= 2 for r in PATTERNS]
    again = model(with_present(inputs, fewer, model.modalities, rows=has_pair))
    want = mofe_loss(per_sample_error(out["fused"][has_pair], target[has_pair], "absolute"),
                     per_sample_error(again["fused"], target[has_pair], "absolute"))
    assert loss.item() == pytest.approx(want.item(), abs=1e-12)
    assert torch.all(info["out_fewer"]["router"][~fewer] == 0)
    singles = torch.tensor([[1, 0, 0], [0, 0, 1]], dtype=torch.bool)
    single_inputs = _vector_inputs(singles)
    none_loss, none_info = mofe_term(model, single_inputs, target[:2], model(single_inputs))
    assert none_loss.item() == 0.0 and none_info["out_fewer"] is None


def test_mofe_term_trains_the_model():
    model = _vector_model()
    inputs = _vector_inputs(torch.ones(8, 3, dtype=torch.bool))
    target = torch.linspace(-10, 0, 8, dtype=torch.float64)
    out = model(inputs)
    loss, _ = mofe_term(model, inputs, target, out, torch.Generator().manual_seed(0), weight=1.0)
    total = per_sample_error(out["fused"], target).mean() + loss
    total.backward()
    assert all(p.grad is not None for p in model.parameters())
