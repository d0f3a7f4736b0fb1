"""One harness over every strategy (timm's test_optim style): a few steps lower the loss; a state
round trip resumes identically; modulation changes encoder gradients when its condition holds and
leaves them alone when it does not."""

import copy

import pytest
import torch

from remd_core.data.format import DatasetSpec, ModalitySpec
from remd_core.models import EncoderConfig, MultimodalRegressor
from remd_core.optim import (MMPareto, MMParetoConfig, OGMGE, OGMGEConfig, SGM, SGMConfig, Joint, JointConfig,
                             NonFiniteError, build_strategy)
from remd_core.optim.ogm_ge import modulation_coefficients
from strategy_helpers import closure, make_conflict

SPEC = DatasetSpec("toy", (ModalitySpec("a", "vector", (6,)), ModalitySpec("b", "vector", (4,))))
STRATEGIES = {
    "joint": lambda: Joint(JointConfig()),
    "naive": lambda: Joint(JointConfig(unimodal_weight=0.0)),
    "sgm": lambda: SGM(SGMConfig()),
    "sgm-k4-curv-per-encoder": lambda: SGM(SGMConfig(probe_every=4, sharpness="curvature", cos_scope="per_encoder")),
    "mmpareto": lambda: MMPareto(MMParetoConfig()),
    "ogm_ge": lambda: OGMGE(OGMGEConfig(modulate="all"), generator=torch.Generator().manual_seed(3)),
}


def make_problem(seed=0, n=64):
    g = torch.Generator().manual_seed(seed)
    xa, xb = torch.randn(n, 6, generator=g), torch.randn(n, 4, generator=g)
    y = xa[:, 0] - 0.5 * xa[:, 1] + xb[:, 0] * xb[:, 1] + 0.1 * torch.randn(n, generator=g)
    torch.manual_seed(seed)
    model = MultimodalRegressor(SPEC, encoder=EncoderConfig(mlp_hidden=16), projection_dim=8)
    return model, {"a": xa, "b": xb}, y



def train(strategy, model, inputs, y, steps, start=0, optimizer=None):
    strategy.bind(model)
    optimizer = optimizer or torch.optim.Adam(model.parameters(), lr=1e-2)
    for t in range(start, start + steps):
        logs = strategy.step(closure(model, inputs, y), optimizer, step=t, epoch=0)
    return optimizer, logs


def grads_after(strategy, model, inputs, y, step=0, epoch=0):
    strategy.bind(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    logs = strategy.step(closure(model, inputs, y), optimizer, step=step, epoch=epoch)
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}, logs


@pytest.mark.parametrize("name", STRATEGIES)
def test_a_few_steps_lower_the_training_loss(name):
    model, inputs, y = make_problem()
    before = closure(model, inputs, y)().total(1.0).item()
    train(STRATEGIES[name](), model, inputs, y, steps=40)
    after = closure(model, inputs, y)().total(1.0).item()
    assert after < 0.7 * before, (before, after)


@pytest.mark.parametrize("name", STRATEGIES)
def test_state_round_trip_resumes_identically(name):
    model, inputs, y = make_problem()
    strategy = STRATEGIES[name]()
    optimizer, _ = train(strategy, model, inputs, y, steps=5)
    saved = (copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict()), copy.deepcopy(strategy.state_dict()))
    train(strategy, model, inputs, y, steps=5, start=5, optimizer=optimizer)
    expected = copy.deepcopy(model.state_dict())

    model2, _, _ = make_problem()
    model2.load_state_dict(saved[0])
    optimizer2 = torch.optim.Adam(model2.parameters(), lr=1e-2)
    optimizer2.load_state_dict(saved[1])
    strategy2 = STRATEGIES[name]()
    strategy2.load_state_dict(saved[2])
    train(strategy2, model2, inputs, y, steps=5, start=5, optimizer=optimizer2)
    for key, value in expected.items():
        assert torch.equal(value, model2.state_dict()[key]), key


def _encoder_grads(grads):
    return {k: v for k, v in grads.items() if k.startswith("encoders.")}


def _head_grads(grads):
    return {k: v for k, v in grads.items() if not k.startswith("encoders.")}


def test_sgm_leaves_aligned_gradients_alone_at_gamma_one_and_scales_them_with_gamma():
    model, inputs, y = make_problem()
    plain, _ = grads_after(Joint(JointConfig(unimodal_weight=1.0)), copy.deepcopy(model), inputs, y)
    one, logs = grads_after(SGM(SGMConfig(gamma_base=1.0, gamma_min=1.0, gamma_max=1.0)), copy.deepcopy(model), inputs, y)
    assert logs["cos"] > 0 and logs["a_mm"] == 0.5
    for k in plain:
        torch.testing.assert_close(one[k], plain[k], rtol=1e-5, atol=1e-7)
    two, _ = grads_after(SGM(SGMConfig(gamma_base=2.0, gamma_min=2.0, gamma_max=2.0)), copy.deepcopy(model), inputs, y)
    for k, g in _encoder_grads(plain).items():
        torch.testing.assert_close(two[k], 2 * g, rtol=1e-5, atol=1e-7)
    for k, g in _head_grads(plain).items():
        torch.testing.assert_close(two[k], g)



def test_sgm_reweights_conflicting_gradients_with_min_norm():
    model, inputs, y = make_problem()
    make_conflict(model)
    plain, _ = grads_after(Joint(JointConfig()), copy.deepcopy(model), inputs, y + 20)
    sgm, logs = grads_after(SGM(SGMConfig(gamma_base=1.0, gamma_min=1.0, gamma_max=1.0)), copy.deepcopy(model), inputs,
                            y + 20)
    assert logs["cos"] < 0 and logs["a_mm"] != 0.5
    changed = [k for k in _encoder_grads(plain) if not torch.allclose(sgm[k], plain[k], rtol=1e-3, atol=1e-6)]
    assert changed


def test_mmpareto_amplifies_aligned_gradients_by_its_fixed_gamma_and_leaves_heads_alone():
    model, inputs, y = make_problem()
    plain, _ = grads_after(Joint(JointConfig()), copy.deepcopy(model), inputs, y)
    mp, logs = grads_after(MMPareto(MMParetoConfig(gamma=1.5)), copy.deepcopy(model), inputs, y)
    assert logs["cos_a"] > 0 and logs["cos_b"] > 0
    for k, g in _encoder_grads(plain).items():
        torch.testing.assert_close(mp[k], 1.5 * g, rtol=1e-5, atol=1e-7)
    for k, g in _head_grads(plain).items():
        torch.testing.assert_close(mp[k], g)


def test_mmpareto_changes_direction_under_conflict_and_never_scales_down():
    model, inputs, y = make_problem()
    make_conflict(model)
    plain, _ = grads_after(Joint(JointConfig()), copy.deepcopy(model), inputs, y + 20)
    mp, logs = grads_after(MMPareto(MMParetoConfig(gamma=1.0)), copy.deepcopy(model), inputs, y + 20)
    assert logs["cos_a"] < 0
    for k, g in _encoder_grads(plain).items():
        assert mp[k].norm() >= g.norm() * (1 - 1e-5)
    assert any(not torch.allclose(mp[k], g, rtol=1e-3) for k, g in _encoder_grads(plain).items())


def test_ogm_ge_scales_the_dominant_modality_only_inside_its_window():
    model, inputs, y = make_problem()
    naive, _ = grads_after(Joint(JointConfig(unimodal_weight=0.0)), copy.deepcopy(model), inputs, y)
    config = OGMGEConfig(alpha=0.5, noise=False, modulate="all", start_epoch=1, end_epoch=3)
    outside, _ = grads_after(OGMGE(config), copy.deepcopy(model), inputs, y, epoch=0)
    assert set(_encoder_grads(outside)) == set(_encoder_grads(naive))
    for k, g in outside.items():
        torch.testing.assert_close(g, naive[k])
    inside, logs = grads_after(OGMGE(config), copy.deepcopy(model), inputs, y, epoch=1)
    coeffs = {m: logs[f"coeff_{m}"].item() for m in ("a", "b")}
    assert sorted(coeffs.values())[1] == 1.0 and sorted(coeffs.values())[0] < 1.0
    for k, g in _encoder_grads(naive).items():
        modality = k.split(".")[1]
        expected = g * coeffs[modality] if g.dim() > 1 else g
        torch.testing.assert_close(inside[k], expected, rtol=1e-5, atol=1e-8)


def test_ogm_coefficients_follow_the_official_rule():
    k = modulation_coefficients(torch.tensor([3.0, 1.0]), alpha=0.5)
    torch.testing.assert_close(k, torch.tensor([1 - torch.tanh(torch.tensor(1.5)).item(), 1.0]))
    torch.testing.assert_close(modulation_coefficients(torch.tensor([2.0, 2.0]), 0.5), torch.ones(2))


@pytest.mark.parametrize("name", STRATEGIES)
def test_zero_gradients_give_a_finite_step(name):
    model, inputs, y = make_problem()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    grads, logs = grads_after(STRATEGIES[name](), model, inputs, torch.zeros_like(y))
    assert all(torch.isfinite(g).all() for g in grads.values())


@pytest.mark.parametrize("name", STRATEGIES)
def test_batch_of_one_and_equal_labels_are_finite(name):
    model, inputs, y = make_problem()
    one = {m: x[:1] for m, x in inputs.items()}
    grads, _ = grads_after(STRATEGIES[name](), copy.deepcopy(model), one, y[:1])
    assert all(torch.isfinite(g).all() for g in grads.values())
    grads, _ = grads_after(STRATEGIES[name](), copy.deepcopy(model), inputs, torch.full_like(y, 2.0))
    assert all(torch.isfinite(g).all() for g in grads.values())


@pytest.mark.parametrize("name", STRATEGIES)
def test_non_finite_loss_stops_before_the_optimizer_step(name):
    model, inputs, y = make_problem()
    before = copy.deepcopy(model.state_dict())
    bad = {m: x.clone() for m, x in inputs.items()}
    bad["a"][3, 0] = float("nan")
    strategy = STRATEGIES[name]().bind(model)
    with pytest.raises(NonFiniteError, match="step 7"):
        strategy.step(closure(model, bad, y), torch.optim.SGD(model.parameters(), lr=0.1), step=7)
    for k, v in before.items():
        assert torch.equal(v, model.state_dict()[k])


def test_sgm_probe_does_not_touch_batchnorm_statistics():
    spec = DatasetSpec("img", (ModalitySpec("f", "image", (3, 16, 16)), ModalitySpec("o", "volume", (2, 16, 16))))
    torch.manual_seed(0)
    model = MultimodalRegressor(spec, encoder=EncoderConfig(width=0.125))
    inputs = {"f": torch.randn(4, 3, 16, 16), "o": torch.randn(4, 2, 16, 16)}
    y = torch.randn(4)
    joint, sgm = copy.deepcopy(model), copy.deepcopy(model)
    grads_after(Joint(JointConfig()), joint, inputs, y)
    grads_after(SGM(SGMConfig()), sgm, inputs, y)
    for (k, a), b in zip(joint.state_dict().items(), sgm.state_dict().values()):
        if "running" in k or "num_batches" in k:
            assert torch.equal(a, b), k


def test_probe_every_reuses_gamma_between_probes():
    model, inputs, y = make_problem()
    strategy = SGM(SGMConfig(probe_every=3, window=2)).bind(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    logs = [strategy.step(closure(model, inputs, y), optimizer, step=t) for t in range(7)]
    sharp = [entry["sharpness"].item() for entry in logs]
    assert sharp[0] == sharp[1] == sharp[2] and sharp[3] == sharp[4] == sharp[5] and sharp[3] != sharp[0]
    assert len(strategy.scores) == 2


@pytest.mark.parametrize("mode", ["paper", "curvature"])
def test_sgm_logs_both_scores_and_gamma_follows_the_chosen_one(mode):
    model, inputs, y = make_problem()
    strategy = SGM(SGMConfig(sharpness=mode)).bind(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    logs = [strategy.step(closure(model, inputs, y), optimizer, step=t) for t in range(3)]
    for entry in logs:
        assert torch.equal(entry["sharpness"], entry[f"sharpness_{mode}"])
        assert torch.isfinite(entry["sharpness_paper"]) and torch.isfinite(entry["sharpness_curvature"])
    assert logs[0]["sharpness_paper"] != logs[0]["sharpness_curvature"]


@pytest.mark.parametrize("name,options", [
    ("sgm", {"gamma_min": 3.0, "gamma_max": 1.0}), ("sgm", {"window": 0}), ("sgm", {"probe_eps": -1.0}),
    ("sgm", {"sharpness": "hessian"}), ("mmpareto", {"gamma": 0.0}), ("ogm_ge", {"alpha": -1.0}),
    ("joint", {"unimodal_weight": -1.0})])
def test_out_of_range_hyperparameters_are_value_errors(name, options):
    with pytest.raises(ValueError):
        build_strategy(name, options)


def test_unknown_strategy_or_option_is_an_error():
    with pytest.raises(ValueError, match="unknown strategy"):
        build_strategy("sam")
    with pytest.raises(ValueError, match="gama"):
        build_strategy("sgm", {"gama": 1.0})


def official_mmpareto_encoder_step(g_m, g_k, gamma=1.5):
    """MMPareto's per-encoder update written as the official code does it (loops, floats)."""
    flat_m, flat_k = torch.cat([g.flatten() for g in g_m]), torch.cat([g.flatten() for g in g_k])
    cos = torch.dot(flat_m, flat_k) / (flat_m.norm() * flat_k.norm())
    if cos > 0:
        a_m, a_k = 0.5, 0.5
    else:
        a = (torch.dot(flat_k, flat_k) - torch.dot(flat_m, flat_k)) / (flat_m - flat_k).pow(2).sum()
        a_m = float(a.clamp(0.001, 0.999))
        a_k = 1 - a_m
    out = []
    for gm, gk in zip(g_m, g_k):
        new = 2 * a_m * gm + 2 * a_k * gk
        ratio = (gm + gk).norm() / new.norm()
        if ratio > 1:
            new = new * ratio
        out.append(new * gamma)
    return out


@pytest.mark.parametrize("seed", range(6))
def test_mmpareto_encoder_update_matches_the_official_loop(seed):
    g = torch.Generator().manual_seed(seed)
    g_m = [torch.randn(4, 3, generator=g), torch.randn(5, generator=g), torch.randn(2, 2, generator=g)]
    flip = -1.0 if seed % 2 else 1.0  # odd seeds: conflicting objectives
    g_k = [flip * x + 0.8 * torch.randn(x.shape, generator=g) for x in g_m]
    ours, info = MMPareto(MMParetoConfig())._encoder_step(g_m, g_k)
    for a, b in zip(ours, official_mmpareto_encoder_step(g_m, g_k)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert (info["cos"] < 0) == bool(seed % 2)


def test_mmpareto_zero_update_stays_zero_instead_of_nan():
    zero = [torch.zeros(3), torch.ones(2)]
    out, _ = MMPareto(MMParetoConfig())._encoder_step(zero, [torch.zeros(3), -torch.ones(2)])
    assert all(torch.isfinite(t).all() for t in out)
    assert torch.equal(out[0], torch.zeros(3))


def test_adam_cancels_a_constant_scale_of_sgm_gamma_and_sgd_does_not():
    """A finding, not a property we chose: SGM's gamma rescales the shared-encoder gradient, and Adam
    divides each parameter's update by the running RMS of its own gradient, so multiplying
    gamma_base, gamma_min and gamma_max by one factor leaves Adam's trajectory unchanged (up to
    Adam's eps and rounding). The paper trains with Adam (section 5.1) and reports sensitivity to
    gamma (Fig. 6): under Adam only gamma's variation over time can matter. Under SGD the scale is
    the step size."""
    def final_params(factor, make_optimizer):
        model, inputs, y = make_problem()
        strategy = SGM(SGMConfig(gamma_base=1.5 * factor, gamma_min=0.5 * factor, gamma_max=5.0 * factor))
        train(strategy, model, inputs, y, steps=6, optimizer=make_optimizer(model.parameters()))
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    def moved(make_optimizer):
        return (final_params(1.0, make_optimizer) - final_params(2.0, make_optimizer)).abs().max().item()

    adam, sgd = moved(lambda p: torch.optim.Adam(p, lr=1e-2)), moved(lambda p: torch.optim.SGD(p, lr=1e-2))
    assert adam < 1e-4 and sgd > 100 * adam, (adam, sgd)
