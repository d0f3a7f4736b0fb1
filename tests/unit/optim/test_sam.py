"""The sharpness-aware strategies (issue 11): SAM against its closed form on a quadratic, ImbSAM and
SSE-SAM against a straightforward re-computation (per-sample losses, subset sums, explicit
perturbations) on a small CNN with BatchNorm in float64, BatchNorm statistics touched once per step,
and SSE-SAM's step counter surviving a state round trip."""

import copy
import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from remd_core.evaluation import metrics
from remd_core.models import check_model
from remd_core.optim import SAM, SAMConfig, ImbSAM, ImbSAMConfig, SSESAM, SSESAMConfig, Losses, build_strategy
from remd_core.optim.imbsam import head_mask
from remd_core.optim.sse_sam import stage_radii


@pytest.fixture(autouse=True)
def _float64():
    """Every test here in float64, so that equal mathematics means equal to 1e-10."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


# ---------------------------------------------------------------- SAM on a quadratic, closed form

class Quadratic(nn.Module):
    """One "encoder" holding w; the closure's loss is 0.5 w^T A w (no BatchNorm)."""

    def __init__(self, w):
        super().__init__()
        self.modalities = ("a",)
        self.encoders = nn.ModuleDict({"a": nn.Module()})
        self.encoders["a"].w = nn.Parameter(w.clone())

    def encoder_parameters(self):
        return list(self.encoders.parameters())

    def head_parameters(self):
        return []

    def fusion_contributions(self, features):
        return {}


def quadratic_problem(seed=0, n=5):
    g = torch.Generator().manual_seed(seed)
    m = torch.randn(n, n, generator=g, dtype=torch.float64)
    a = m @ m.T + torch.eye(n, dtype=torch.float64)
    w = torch.randn(n, generator=g, dtype=torch.float64)
    model = Quadratic(w)
    check_model(model)

    def compute():
        v = model.encoders["a"].w
        return Losses(fused=0.5 * v @ a @ v)
    return model, compute, a, w


@pytest.mark.parametrize("adaptive", [False, True])
@pytest.mark.parametrize("eps", [0.0, 1e-12])
def test_sam_step_on_a_quadratic_is_the_closed_form(adaptive, eps):
    model, compute, a, w = quadratic_problem()
    rho, lr = 0.3, 0.05
    strategy = SAM(SAMConfig(rho=rho, adaptive=adaptive, eps=eps)).bind(model)
    strategy.step(compute, torch.optim.SGD(model.parameters(), lr=lr))
    g = a @ w
    if adaptive:  # ASAM: e = rho * w^2 * g / || |w| g ||
        e = rho * w ** 2 * g / (torch.linalg.norm(w.abs() * g) + eps)
    else:
        e = rho * g / (torch.linalg.norm(g) + eps)
    expected = w - lr * a @ (w + e)
    torch.testing.assert_close(model.encoders["a"].w.detach(), expected, rtol=0, atol=1e-13)


def test_sam_with_rho_zero_is_plain_gradient_descent_and_a_wrong_rho_is_refused():
    model, compute, a, w = quadratic_problem(1)
    SAM(SAMConfig(rho=0.0)).bind(model).step(compute, torch.optim.SGD(model.parameters(), lr=0.1))
    torch.testing.assert_close(model.encoders["a"].w.detach(), w - 0.1 * a @ w, rtol=0, atol=1e-14)
    for name, options in [("sam", {"rho": -1.0}), ("imbsam", {"rho": -0.1}), ("sse-sam", {"head_until": 1.5}),
                          ("sse-sam", {"rho_head": -1.0}), ("sse-sam", {"total_steps": -1})]:
        with pytest.raises(ValueError):
            build_strategy(name, options)


# ------------------------------------------------- a small CNN with BatchNorm, fusion or one modality

class SmallCNN(nn.Module):
    """Modality "a": 1x6x6 images through conv + BatchNorm; modality "b": vectors through a linear
    layer with BatchNorm1d; a unimodal head per modality and a fusion head (when there are two)."""

    def __init__(self, modalities=("a", "b")):
        super().__init__()
        self.modalities = tuple(modalities)
        make = {"a": lambda: nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(),
                                           nn.AdaptiveAvgPool2d(1), nn.Flatten()),
                "b": lambda: nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Tanh())}
        self.encoders = nn.ModuleDict({m: make[m]() for m in self.modalities})
        self.heads = nn.ModuleDict({m: nn.Linear(3, 1) for m in self.modalities})
        self.fusion_head = nn.Linear(3 * len(self.modalities), 1)

    def forward(self, inputs):
        features = {m: self.encoders[m](inputs[m]) for m in self.modalities}
        fused = self.fusion_head(torch.cat([features[m] for m in self.modalities], -1)).squeeze(-1)
        unimodal = ({m: self.heads[m](f).squeeze(-1) for m, f in features.items()} if len(self.modalities) > 1
                    else {})
        return {"fused": fused, "unimodal": unimodal, "features": features}

    def encoder_parameters(self):
        return [p for m in self.modalities for p in self.encoders[m].parameters()]

    def head_parameters(self):
        return [*self.heads.parameters(), *self.fusion_head.parameters()]

    def fusion_contributions(self, features):
        w, out, start = self.fusion_head.weight, {}, 0
        for m in self.modalities:
            out[m] = features[m] @ w[0, start:start + 3] + self.fusion_head.bias[0] / len(self.modalities)
            start += 3
        return out


EXTRA = 0.01  # weight of a term on the fusion head and the features, passed as Losses.extra (plain gradient at w);
# it shares the forward's graph, as stage 1's contrastive term does


def extra_term(model, out):
    return EXTRA * (model.fusion_head.weight.square().sum() + sum(f.square().mean() for f in out["features"].values()))
LABEL_MEAN, LABEL_STD = -3.0, 2.0


def cnn_problem(modalities=("a", "b"), seed=0, n=16):
    g = torch.Generator().manual_seed(seed)
    inputs = {"a": torch.randn(n, 1, 6, 6, generator=g), "b": torch.randn(n, 4, generator=g)}
    y_train = LABEL_MEAN + LABEL_STD * torch.randn(500, generator=g)
    regions = metrics.region_labels(y_train.numpy(), bin_width=2.0, many=0.2, few=0.03)
    y_raw = LABEL_MEAN + LABEL_STD * torch.randn(n, generator=g)
    target = (y_raw - LABEL_MEAN) / LABEL_STD
    head = torch.as_tensor(regions.assign(y_raw.numpy()) == "many")
    assert 0 < int(head.sum()) < n  # both groups present
    torch.manual_seed(seed)
    model = SmallCNN(modalities)
    check_model(model)
    return model, {m: inputs[m] for m in modalities}, target, regions, head


def cnn_closure(model, inputs, target):
    def compute():
        out = model(inputs)
        mse = nn.functional.mse_loss
        return Losses(fused=mse(out["fused"], target), unimodal={m: mse(p, target) for m, p in out["unimodal"].items()},
                      extra=extra_term(model, out), features=out["features"], target=target)
    return compute


def group_loss(model, inputs, target, mask):
    """The straightforward definition: per-sample squared errors of the fused and every unimodal
    prediction, summed over the group's samples, divided by the batch size."""
    return group_loss_of(model(inputs), target, mask)


def group_loss_of(out, target, mask):
    per_sample = (out["fused"] - target) ** 2 + sum(((p - target) ** 2 for p in out["unimodal"].values()),
                                                    torch.zeros_like(target))
    return (per_sample * mask).sum() / target.numel()


def grad_at(model, loss_fn, offset=None):
    """Gradient of ``loss_fn()`` at ``w + offset`` (weights written, then put back)."""
    params = list(model.parameters())
    saved = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p, e in zip(params, offset or [None] * len(params)):
            if e is not None:
                p.add_(e)
    grads = torch.autograd.grad(loss_fn(), params, allow_unused=True)
    with torch.no_grad():
        for p, w in zip(params, saved):
            p.copy_(w)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]


def normalised(grads, rho):
    norm = torch.sqrt(sum((g ** 2).sum() for g in grads))
    return [rho * g / (norm + 1e-12) for g in grads]


def reference_steps(model, inputs, target, head, steps, lr, rho_head_at, rho_tail, tail_weight=1.0):
    """Head-tail SAM written out: g = grad L_head(w + e_head) + c grad L_tail(w + e_tail) + grad extra(w),
    ``e_k = rho_k g_k(w) / ||g_k(w)||`` (``rho_head_at(t) = 0``: head at w), then SGD; ``c`` the tail
    weight (the official ImbSAM step's ``loss[tail].sum() / B * 2``: c = 2, at w and at w + e)."""
    tail = ~head
    for t in range(steps):
        lh = lambda: group_loss(model, inputs, target, head)  # noqa: E731
        lt = lambda: tail_weight * group_loss(model, inputs, target, tail)  # noqa: E731
        extra = lambda: extra_term(model, model(inputs))  # noqa: E731
        g_h, g_t, g_x = grad_at(model, lh), grad_at(model, lt), grad_at(model, extra)
        if rho_head_at(t) > 0:
            g_h = grad_at(model, lh, normalised(g_h, rho_head_at(t)))
        g_t = grad_at(model, lt, normalised(g_t, rho_tail))
        with torch.no_grad():
            for p, a, b, c in zip(model.parameters(), g_h, g_t, g_x):
                p.sub_(lr * (a + b + c))


def strategy_steps(strategy, model, inputs, target, steps, lr):
    strategy.bind(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    for t in range(steps):
        strategy.step(cnn_closure(model, inputs, target), optimizer, step=t)


def assert_same_parameters(a, b, tol=1e-10):
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=0, atol=tol, msg=name)


MODALITIES = [("a", "b"), ("a",)]


def test_imbsam_tail_is_the_few_bins_by_default_and_medium_joins_the_head():
    _, _, target, regions, _ = cnn_problem()
    default = ImbSAM(ImbSAMConfig()).set_regions(regions, LABEL_MEAN, LABEL_STD)
    ours = ImbSAM(ImbSAMConfig(tail=("medium", "few"))).set_regions(regions, LABEL_MEAN, LABEL_STD)
    assert default.bins[1].tolist() == [r != "few" for r in regions.regions]
    assert ours.bins[1].tolist() == [r == "many" for r in regions.regions]
    assert "medium" in regions.regions
    with pytest.raises(ValueError, match="tail"):
        ImbSAMConfig(tail=("rare",))


def few_of(regions, target):
    """The official ImbSAM tail of a batch: its samples in "few" bins (or outside every bin)."""
    return torch.as_tensor(regions.assign((target * LABEL_STD + LABEL_MEAN).numpy()) == "few")


@pytest.mark.parametrize("modalities", MODALITIES)
@pytest.mark.parametrize("official", [True, False])
def test_imbsam_three_steps_equal_the_straightforward_recomputation(modalities, official):
    model, inputs, target, regions, head = cnn_problem(modalities)
    ref = copy.deepcopy(model)
    if official:  # default: tail = the few bins, its loss weighted 2 (cool-xuan/Imbalanced_SAM forbackward);
        # the medium bins relabelled few, so that the batch has a tail
        regions = dataclasses.replace(regions, regions=tuple("few" if r == "medium" else r for r in regions.regions))
        config, weight = ImbSAMConfig(rho=0.2), 2.0
        assert torch.equal(head, ~few_of(regions, target)) and 0 < int((~head).sum()) < len(target)
    else:  # the workbench's reading before: tail = medium and few, weight 1
        config, weight = ImbSAMConfig(rho=0.2, tail=("medium", "few"), tail_weight=1.0), 1.0
    strategy = ImbSAM(config).set_regions(regions, LABEL_MEAN, LABEL_STD)
    strategy_steps(strategy, model, inputs, target, 3, lr=0.1)
    reference_steps(ref, inputs, target, head, 3, lr=0.1, rho_head_at=lambda t: 0.0, rho_tail=0.2, tail_weight=weight)
    assert_same_parameters(model, ref)
    moved = copy.deepcopy(model)
    reference_steps(moved, inputs, target, head, 1, lr=0.1, rho_head_at=lambda t: 0.0, rho_tail=0.0)
    assert not torch.allclose(moved.fusion_head.weight, model.fusion_head.weight)  # the perturbation mattered


@pytest.mark.parametrize("modalities", MODALITIES)
def test_sse_sam_three_steps_equal_the_straightforward_recomputation_across_the_stage_switch(modalities):
    model, inputs, target, regions, head = cnn_problem(modalities, seed=1)
    ref = copy.deepcopy(model)
    config = SSESAMConfig(rho_head=0.3, rho_tail=0.1, head_until=0.5, total_steps=3)  # switch after step 0
    strategy = SSESAM(config).set_regions(regions, LABEL_MEAN, LABEL_STD)
    strategy_steps(strategy, model, inputs, target, 3, lr=0.1)
    reference_steps(ref, inputs, target, head, 3, lr=0.1, rho_head_at=lambda t: 0.3 if t < 1 else 0.0, rho_tail=0.1)
    assert_same_parameters(model, ref)
    assert strategy.steps == 3


@pytest.mark.parametrize("modalities", MODALITIES)
def test_sam_three_steps_on_the_cnn_equal_the_recomputation(modalities):
    model, inputs, target, _, _ = cnn_problem(modalities, seed=2)
    ref = copy.deepcopy(model)
    strategy_steps(SAM(SAMConfig(rho=0.2)), model, inputs, target, 3, lr=0.1)
    every = torch.ones_like(target, dtype=torch.bool)
    for _ in range(3):
        def total():
            out = ref(inputs)
            return group_loss_of(out, target, every) + extra_term(ref, out)
        g = grad_at(ref, total, normalised(grad_at(ref, total), 0.2))
        with torch.no_grad():
            for p, d in zip(ref.parameters(), g):
                p.sub_(0.1 * d)
    assert_same_parameters(model, ref)


def test_the_head_mask_is_the_many_region_of_the_training_labels_in_standardised_units():
    _, _, target, regions, head = cnn_problem()
    strategy = ImbSAM().set_regions(regions, LABEL_MEAN, LABEL_STD)
    edges, is_many = strategy.bins
    assert torch.equal(head_mask(target, edges, is_many), head)
    outside = (torch.tensor([regions.edges[0] - 1, regions.edges[-1] + 1]) - LABEL_MEAN) / LABEL_STD
    assert not head_mask(outside, edges, is_many).any()  # no training sample there: tail


def test_a_batch_without_tail_is_the_plain_gradient_and_one_without_head_is_sam_on_it():
    model, inputs, target, regions, _ = cnn_problem()
    ref = copy.deepcopy(model)
    everything_head = dataclasses.replace(regions, regions=("many",) * len(regions.regions))
    strategy = ImbSAM(ImbSAMConfig(rho=0.5)).set_regions(everything_head, LABEL_MEAN, LABEL_STD)
    lo, hi = (regions.edges[0] - LABEL_MEAN) / LABEL_STD, (regions.edges[-1] - LABEL_MEAN) / LABEL_STD
    inside = target.clamp(lo + 1e-6, hi - 1e-6)  # every target in a training bin
    all_head = torch.ones_like(target, dtype=torch.bool)
    strategy_steps(strategy, model, inputs, inside, 1, lr=0.1)
    reference_steps(ref, inputs, inside, all_head, 1, lr=0.1, rho_head_at=lambda t: 0.0, rho_tail=0.0)
    assert_same_parameters(model, ref)

    model, inputs, target, regions, _ = cnn_problem()
    ref = copy.deepcopy(model)
    nothing_head = dataclasses.replace(regions, regions=("few",) * len(regions.regions))
    strategy = ImbSAM(ImbSAMConfig(rho=0.5)).set_regions(nothing_head, LABEL_MEAN, LABEL_STD)
    strategy_steps(strategy, model, inputs, target, 1, lr=0.1)
    reference_steps(ref, inputs, target, ~all_head, 1, lr=0.1, rho_head_at=lambda t: 0.0, rho_tail=0.5, tail_weight=2.0)
    assert_same_parameters(model, ref)


def _bn_state(model):
    return {k: v.clone() for k, v in model.state_dict().items()
            if k.endswith(("running_mean", "running_var", "num_batches_tracked"))}


@pytest.mark.parametrize("name", ["sam", "imbsam", "sse-sam"])
def test_batchnorm_running_statistics_are_touched_once_per_step(name):
    model, inputs, target, regions, _ = cnn_problem()
    plain = copy.deepcopy(model)
    plain(inputs)  # one plain training-mode forward at the same weights
    strategy = build_strategy(name)
    if name != "sam":
        strategy.set_regions(regions, LABEL_MEAN, LABEL_STD)
    strategy_steps(strategy, model, inputs, target, 1, lr=0.1)
    after, expected = _bn_state(model), _bn_state(plain)
    assert after and after.keys() == expected.keys()
    for key in expected:
        assert torch.equal(after[key], expected[key]), key
    assert all(int(v) == 1 for k, v in after.items() if k.endswith("num_batches_tracked"))


def test_sse_sam_radii_switch_at_the_fraction_of_training():
    assert stage_radii(0, 0.3, 0.1, 0.5, 10) == (0.3, 0.1)
    assert stage_radii(4, 0.3, 0.1, 0.5, 10) == (0.3, 0.1)
    assert stage_radii(5, 0.3, 0.1, 0.5, 10) == (0.0, 0.1)
    assert stage_radii(10**6, 0.3, 0.1, 0.5, 0) == (0.3, 0.1)  # total unknown: the head radius stays


def test_sse_sam_step_counter_survives_a_state_round_trip_and_resumes_identically():
    model, inputs, target, regions, _ = cnn_problem(seed=3)
    config = dict(rho_head=0.3, rho_tail=0.1, head_until=0.5, total_steps=4)
    straight = copy.deepcopy(model)
    strategy_steps(SSESAM(SSESAMConfig(**config)).set_regions(regions, LABEL_MEAN, LABEL_STD), straight, inputs,
                   target, 4, lr=0.1)

    first = SSESAM(SSESAMConfig(**config)).set_regions(regions, LABEL_MEAN, LABEL_STD)
    strategy_steps(first, model, inputs, target, 2, lr=0.1)
    state = copy.deepcopy(first.state_dict())
    assert state["steps"] == 2
    second = SSESAM()
    second.load_state_dict(state)
    assert second.steps == 2 and second.config == SSESAMConfig(**config) and second.radii(2) == (0.0, 0.1)
    second.set_regions(regions, LABEL_MEAN, LABEL_STD)
    strategy_steps(second, model, inputs, target, 2, lr=0.1)
    assert_same_parameters(model, straight, tol=0)


def test_a_model_output_the_split_would_miss_is_refused():
    model, inputs, target, regions, _ = cnn_problem()
    forward = model.forward
    model.forward = lambda x: {**forward(x), "nig": torch.zeros(len(target))}
    strategy = ImbSAM().set_regions(regions, LABEL_MEAN, LABEL_STD).bind(model)
    with pytest.raises(ValueError, match=r"\['nig'\]"):
        strategy.step(cnn_closure(model, inputs, target), torch.optim.SGD(model.parameters(), lr=0.1))


def test_sse_sam_learns_the_run_length_unless_the_option_gave_it():
    assert SSESAM().set_total_steps(40).config.total_steps == 40
    assert SSESAM(SSESAMConfig(total_steps=10)).set_total_steps(40).config.total_steps == 10
    strategy = SSESAM(SSESAMConfig(head_until=0.25)).set_total_steps(8)
    assert strategy.radii(0) == (0.05, 0.05)
    strategy.steps = 2
    assert strategy.radii(2) == (0.0, 0.05)
    with pytest.raises(ValueError):
        SSESAM().set_total_steps(-1)
