"""BSAM (Liu et al., ICCV 2025) and IGM (Jiang et al., IJCAI 2025) against hand computations of the
official updates on models small enough to write every gradient down, their pure functions, and
their refusals. Both also run in the harness over every registered strategy (``test_strategies``)."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from remd_core.data.labels import LabelBins, Regions
from remd_core.data.format import DatasetSpec, ModalitySpec
from remd_core.models import EncoderConfig, MultimodalRegressor, check_model
from remd_core.optim import BSAM, BSAMConfig, IGM, IGMConfig, SAM, SAMConfig, Joint, JointConfig, Losses, build_strategy
from remd_core.optim.bsam import balanced_weights, sample_weights
from remd_core.optim.igm import flat_projection, stage_at, stage_ends


@pytest.fixture(autouse=True)
def _float64():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def mse(a, b):
    return torch.mean((a - b) ** 2)


# ------------------------------------------------------------------------------------- BSAM

class LinearRegressor(nn.Module):
    """One "encoder" holding w in R^2; the fused prediction of sample i is x_i . w."""

    def __init__(self, w):
        super().__init__()
        self.modalities = ("a",)
        self.encoders = nn.ModuleDict({"a": nn.Module()})
        self.encoders["a"].w = nn.Parameter(torch.as_tensor(w, dtype=torch.float64).clone())

    def forward(self, inputs):
        return {"fused": inputs["a"] @ self.encoders["a"].w, "unimodal": {}}

    def encoder_parameters(self):
        return list(self.encoders.parameters())

    def head_parameters(self):
        return []

    def fusion_contributions(self, features):
        return {}


F64 = dict(dtype=torch.float64)
X = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], **F64)
Y = torch.tensor([0.5, 2.5, 2.7], **F64)
W0 = torch.tensor([1.0, -1.0], **F64)
# training MD regions: bins [0, 2) with 4 training labels and [2, 4) with 1
REGIONS = Regions(edges=np.array([0.0, 2.0, 4.0]), counts=np.array([4, 1]), regions=("many", "few"), many_min=2,
                  few_below=2)


def linear_problem():
    model = LinearRegressor(W0)
    check_model(model)

    def compute():
        return Losses(fused=mse(model({"a": X})["fused"], Y), target=Y)
    return model, compute


def test_bsam_step_is_the_official_update_by_hand():
    """Weights 1/sqrt(n_b): 1/sqrt(4) = 0.5 for y = 0.5 and 1/sqrt(1) = 1 for y = 2.5 and 2.7. With
    w = (1, -1) the residuals Xw - y are (0.5, -3.5, -2.7), so the gradient of
    (1/3) sum_i v_i (x_i.w - y_i)^2 is (2/3) * (0.5 * 0.5 * (1, 0) - 3.5 * (0, 1) - 2.7 * (1, 1))
    = (2/3) * (-2.45, -6.2)."""
    rho, lr = 0.2, 0.1
    model, compute = linear_problem()
    strategy = BSAM(BSAMConfig(rho=rho)).bind(model)
    strategy.set_regions(REGIONS)
    logs = strategy.step(compute, torch.optim.SGD(model.parameters(), lr=lr))
    v = torch.tensor([0.5, 1.0, 1.0])
    g = (2 / 3) * torch.tensor([-2.45, -6.2])
    torch.testing.assert_close((2 / 3) * X.T @ (v * (X @ W0 - Y)), g, rtol=0, atol=1e-14)  # the arithmetic above
    e = rho * g / (math.hypot(-2.45, -6.2) * 2 / 3 + 1e-16)
    g_sharp = (2 / 3) * X.T @ (v * (X @ (W0 + e) - Y))
    torch.testing.assert_close(model.encoders["a"].w.detach(), W0 - lr * g_sharp, rtol=0, atol=1e-14)
    assert logs["weight_mean"].item() == pytest.approx((0.5 + 1 + 1) / 3)
    assert logs["loss_perturbed"].item() == pytest.approx(mse(X @ (W0 + e), Y).item())


def test_bsam_with_power_zero_is_sam_and_weights_are_read_in_label_units():
    model, compute = linear_problem()
    sam_model, _ = linear_problem()
    BSAM(BSAMConfig(rho=0.3, power=0.0, eps=1e-12)).bind(model).set_regions(REGIONS).step(
        compute, torch.optim.SGD(model.parameters(), lr=0.1))

    def sam_compute():
        return Losses(fused=mse(sam_model({"a": X})["fused"], Y))
    SAM(SAMConfig(rho=0.3, unimodal_weight=0.0)).bind(sam_model).step(sam_compute,
                                                                       torch.optim.SGD(sam_model.parameters(), lr=0.1))
    torch.testing.assert_close(model.encoders["a"].w, sam_model.encoders["a"].w, rtol=0, atol=1e-14)
    # targets standardised with mean 1 and SD 2: t = -0.25 is y = 0.5 dB (bin 0), t = 0.75 is y = 2.5 dB (bin 1)
    strategy = BSAM().set_regions(REGIONS, label_mean=1.0, label_std=2.0)
    torch.testing.assert_close(strategy.weights(torch.tensor([-0.25, 0.75])), torch.tensor([0.5, 1.0]))


def test_bin_weights_by_hand():
    np.testing.assert_allclose(balanced_weights([4, 1]), [0.5, 1.0])
    np.testing.assert_allclose(balanced_weights([4, 1], normalize=True), [5 / 6, 5 / 3])  # 4 * 5/6 + 5/3 = 5 labels
    np.testing.assert_allclose(balanced_weights([16, 0, 4], power=1.0), [1 / 16, 1 / 4, 1 / 4])  # empty: the largest
    bins, table = LabelBins(0.0, 2.0, 2), torch.tensor([0.5, 1.0])
    # the floor rule at an edge (2.0 is bin 1), and labels outside every bin take the largest weight
    torch.testing.assert_close(sample_weights(torch.tensor([-1.0, 0.0, 1.999, 2.0, 3.9, 4.0]), bins, table),
                               torch.tensor([1.0, 0.5, 0.5, 1.0, 1.0, 1.0]))


def test_bsam_freezes_batchnorm_statistics_in_its_perturbed_pass_and_refuses_what_it_cannot_weight():
    spec = DatasetSpec("img", (ModalitySpec("f", "image", (3, 16, 16)), ModalitySpec("o", "volume", (2, 16, 16))))
    torch.manual_seed(0)
    model = MultimodalRegressor(spec, encoder=EncoderConfig(width=0.125))
    inputs, y = {"f": torch.randn(4, 3, 16, 16), "o": torch.randn(4, 2, 16, 16)}, torch.randn(4)

    def closure(m):
        def compute():
            out = m(inputs)
            return Losses(fused=mse(out["fused"], y), unimodal={k: mse(p, y) for k, p in out["unimodal"].items()},
                          target=y)
        return compute

    states = {}
    for name in ("joint", "bsam", "igm"):
        m = MultimodalRegressor(spec, encoder=EncoderConfig(width=0.125))
        m.load_state_dict(model.state_dict())
        build_strategy(name).bind(m).step(closure(m), torch.optim.SGD(m.parameters(), lr=0.0))
        states[name] = {k: v for k, v in m.state_dict().items() if "running" in k or "num_batches" in k}
    for k, v in states["joint"].items():  # BSAM: once per step, by the forward at theta
        assert torch.equal(v, states["bsam"][k]), k
    # IGM's first stage trains the fundus encoder: its statistics move as joint's; the idle OCT encoder's stay
    before = model.state_dict()
    for k, v in states["igm"].items():
        assert torch.equal(v, states["joint"][k] if k.startswith("encoders.f.") else before[k]), k
    assert any(not torch.equal(v, before[k]) for k, v in states["joint"].items() if k.startswith("encoders.f."))

    def no_target():
        return Losses(fused=mse(model(inputs)["fused"], y))
    with pytest.raises(ValueError, match="no target"):
        BSAM().bind(model).step(no_target, torch.optim.SGD(model.parameters(), lr=0.0))

    class Evidential(LinearRegressor):
        def forward(self, inputs):
            return {**super().forward(inputs), "evidential": None}
    odd = Evidential(W0)
    with pytest.raises(ValueError, match="evidential"):
        BSAM().bind(odd).step(lambda: Losses(fused=mse(odd({"a": X})["fused"], Y), target=Y),
                              torch.optim.SGD(odd.parameters(), lr=0.0))


# ------------------------------------------------------------------------------------- IGM

class LinearPair(nn.Module):
    """Modality m: encoder Linear(2, 2, no bias) at the identity, unimodal head Linear(2, 1); fusion
    head Linear(2 K, 1). Every gradient is a product of a residual and an input."""

    def __init__(self, modalities=("a", "b")):
        super().__init__()
        self.modalities = tuple(modalities)
        self.encoders = nn.ModuleDict({m: nn.Linear(2, 2, bias=False) for m in self.modalities})
        self.heads = nn.ModuleDict({m: nn.Linear(2, 1) for m in self.modalities})
        self.fusion_head = nn.Linear(2 * len(self.modalities), 1)
        with torch.no_grad():
            for enc in self.encoders.values():
                enc.weight.copy_(torch.eye(2))
            for (h, wb), m in zip([((0.5, -0.25), 0.1), ((0.3, 0.2), -0.2)], self.modalities):
                self.heads[m].weight.copy_(torch.tensor([h]))
                self.heads[m].bias.fill_(wb)
            self.fusion_head.weight.copy_(torch.linspace(-0.3, 0.4, 2 * len(self.modalities))[None])
            self.fusion_head.bias.fill_(0.05)

    def forward(self, inputs):
        features = {m: self.encoders[m](inputs[m]) for m in self.modalities}
        return {"fused": self.fusion_head(torch.cat([features[m] for m in self.modalities], -1)).squeeze(-1),
                "unimodal": {m: self.heads[m](f).squeeze(-1) for m, f in features.items()}, "features": features}

    def encoder_parameters(self):
        return [p for m in self.modalities for p in self.encoders[m].parameters()]

    def head_parameters(self):
        return [*self.heads.parameters(), *self.fusion_head.parameters()]

    def fusion_contributions(self, features):
        return {}


XA = torch.tensor([[1.0, 2.0], [0.0, 1.0], [2.0, 0.0]], **F64)
XB = torch.tensor([[1.0, -1.0], [2.0, 1.0], [0.0, 3.0]], **F64)
YP = torch.tensor([1.0, 0.5, 2.0], **F64)


def pair_closure(model):
    dtype = model.fusion_head.weight.dtype
    y = YP.to(dtype)

    def compute():
        out = model({"a": XA.to(dtype), "b": XB.to(dtype)})
        return Losses(fused=mse(out["fused"], y), unimodal={m: mse(p, y) for m, p in out["unimodal"].items()},
                      features=out["features"], target=y)
    return compute


def grads(model):
    return {n: (None if p.grad is None else p.grad.clone()) for n, p in model.named_parameters()}


def test_igm_first_stage_trains_one_modality_with_the_flat_term_by_hand():
    """Stage 1 (modality a), rho = 0.1, flat ratio 0.3: head a (h, c) moves to (h + e_h, c + e_c) with
    per-tensor radii e = rho g / ||g||; its gradients mix the plain and the perturbed residuals 0.7 / 0.3;
    encoder a's gradient flows through the same head; b gets nothing; the fusion head its plain gradient."""
    rho, lam = 0.1, 0.3
    model = LinearPair()
    check_model(model)
    strategy = IGM(IGMConfig(rho=rho, flat_ratio=lam)).bind(model)
    logs = strategy.step(pair_closure(model), torch.optim.SGD(model.parameters(), lr=0.0))
    got = grads(model)
    h, c = torch.tensor([0.5, -0.25]), 0.1
    r = XA @ h + c - YP                                  # the features are XA (identity encoder)
    g_h, g_c = (2 / 3) * XA.T @ r, (2 / 3) * r.sum()
    e_h, e_c = rho * g_h / torch.linalg.norm(g_h), rho * torch.sign(g_c)
    r_e = XA @ (h + e_h) + (c + e_c) - YP
    torch.testing.assert_close(got["heads.a.weight"][0], (1 - lam) * g_h + lam * (2 / 3) * XA.T @ r_e)
    torch.testing.assert_close(got["heads.a.bias"][0], (1 - lam) * g_c + lam * (2 / 3) * r_e.sum())
    enc = (1 - lam) * (2 / 3) * torch.outer(h, XA.T @ r) + lam * (2 / 3) * torch.outer(h + e_h, XA.T @ r_e)
    torch.testing.assert_close(got["encoders.a.weight"], enc)
    assert got["encoders.b.weight"] is None and got["heads.b.weight"] is None and got["heads.b.bias"] is None
    feats = torch.cat([XA, XB], -1)
    r_f = feats @ torch.linspace(-0.3, 0.4, 4) + 0.05 - YP
    torch.testing.assert_close(got["fusion_head.weight"][0], (2 / 3) * feats.T @ r_f)
    assert logs["igm_stage"].item() == 0 and logs["loss_flat"].item() == pytest.approx(mse(r_e + YP, YP).item())
    # the head is restored after the flat pass
    torch.testing.assert_close(model.heads["a"].weight.detach()[0], h, rtol=0, atol=0)


def test_igm_second_stage_projects_the_linear_gradients_by_hand():
    """Stages of one step, rho = 0 (no flat pass). Step 1 trains a and sums mu mu^T of each of a's linear
    inputs, mu = the batch mean of XA (the encoder's input and, at the identity, the head's): rank one, so
    P = I - (1 - exp(-T)) u u^T with u = mu / ||mu||. Step 2 trains b: its encoder weight [2, 2] and its
    head weight [1, 2] match a's encoder and head, and each gradient is multiplied by P."""
    T = 0.4
    model = LinearPair()
    strategy = IGM(IGMConfig(stages=(1, 1), rho=0.0, temperature=T)).bind(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    strategy.step(pair_closure(model), optimizer)
    assert sorted(strategy.cov) == ["encoders.a", "heads.a"] and not strategy.projections
    logs = strategy.step(pair_closure(model), optimizer)
    assert logs["igm_stage"].item() == 1 and sorted(strategy.projections) == ["encoders.a", "heads.a"]
    mu = XA.mean(0)
    u = mu / torch.linalg.norm(mu)
    P = torch.eye(2) - (1 - math.exp(-T)) * torch.outer(u, u)
    for name in ("encoders.a", "heads.a"):
        torch.testing.assert_close(strategy.projections[name], P)
    got = grads(model)
    h = torch.tensor([0.3, 0.2])
    r = XB @ h - 0.2 - YP
    torch.testing.assert_close(got["heads.b.weight"][0], (2 / 3) * (XB.T @ r) @ P)
    torch.testing.assert_close(got["heads.b.bias"][0], (2 / 3) * r.sum())          # biases are not projected
    torch.testing.assert_close(got["encoders.b.weight"], (2 / 3) * torch.outer(h, XB.T @ r) @ P)
    assert got["encoders.a.weight"] is None and got["heads.a.weight"] is None


def test_flat_projection_against_the_official_svd_formula():
    """``get_P_matrix``: V diag(exp(T * -(s - min) / (max - min))) V^T from ``torch.svd(cov, some=False)``."""
    g = torch.Generator().manual_seed(0)
    mus = torch.randn(3, 5, generator=g)
    cov = mus.T @ mus                                    # rank 3 of 5, as a few batches give
    _, s, v = torch.svd(cov, some=False)
    official = v @ torch.diag(torch.exp(0.4 * (-(s - s.min()) / (s.max() - s.min())))) @ v.T
    torch.testing.assert_close(flat_projection(cov, 0.4), official, rtol=0, atol=1e-12)
    torch.testing.assert_close(flat_projection(torch.diag(torch.tensor([4.0, 1.0, 0.0])), 0.4),
                               torch.diag(torch.tensor([math.exp(-0.4), math.exp(-0.1), 1.0])), rtol=0, atol=1e-14)
    for flat in (torch.zeros(3, 3), 2 * torch.eye(3)):   # s_max = s_min: the official 0/0; here the identity
        torch.testing.assert_close(flat_projection(flat, 0.4), torch.eye(3), rtol=0, atol=1e-14)


def test_stage_schedule():
    assert stage_ends((25, 50, 25, 50), 0) == [25, 75, 100, 150]
    assert stage_ends((25, 50, 25, 50), 30) == [5, 15, 20, 30]
    assert stage_ends((25, 50, 25, 50), 3) == [1, 2, 2, 3]  # a 3-step run: a, b, (none), b
    ends = [5, 15, 20, 30]
    assert [stage_at(t, ends) for t in (0, 4, 5, 14, 15, 29, 30, 99)] == [0, 0, 1, 1, 2, 3, 3, 3]
    strategy = IGM(IGMConfig(first="b")).bind(LinearPair())
    assert [strategy.modality(s) for s in range(4)] == ["b", "a", "b", "a"]
    strategy.set_total_steps(30)
    assert strategy.config.total_steps == 30
    assert IGM(IGMConfig(total_steps=12)).set_total_steps(30).config.total_steps == 12  # the option wins


def test_the_official_radius_is_a_no_op_in_float32():
    torch.set_default_dtype(torch.float32)
    model = LinearPair()
    logs = IGM().bind(model).step(pair_closure(model), torch.optim.SGD(model.parameters(), lr=0.0))
    assert torch.equal(logs["loss_flat"], logs["loss_a"])


def test_igm_state_round_trip_keeps_its_sums_and_projections():
    model = LinearPair()
    strategy = IGM(IGMConfig(stages=(1, 2))).bind(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    for _ in range(2):
        strategy.step(pair_closure(model), optimizer)
    state = strategy.state_dict()
    again = IGM()
    again.load_state_dict(state)
    assert again.steps == 2 and again.stage == 1 and again.config.stages == (1.0, 2.0)
    assert set(again.projections) == {"encoders.a", "heads.a"} and set(again.cov) == {"encoders.b", "heads.b"}


# ------------------------------------------------------------------------------------- refusals

@pytest.mark.parametrize("name,options", [
    ("bsam", {"rho": -0.1}), ("bsam", {"power": -0.5}), ("bsam", {"eps": -1.0}), ("bsam", {"bin_width": 0.0}),
    ("bsam", {"normalize": "yes"}), ("bsam", {"unimodal_weight": -1.0}),
    ("igm", {"flat_ratio": 1.5}), ("igm", {"rho": -1.0}), ("igm", {"temperature": -0.4}), ("igm", {"stages": []}),
    ("igm", {"stages": [25, 0]}), ("igm", {"stages": "25,50"}), ("igm", {"total_steps": -1}),
    ("igm", {"total_steps": 1.5})])
def test_bad_options_are_value_errors(name, options):
    with pytest.raises(ValueError):
        build_strategy(name, options)


def test_igm_refuses_a_model_it_cannot_alternate_on():
    with pytest.raises(ValueError, match="only"):
        IGM().bind(LinearPair(("a",)))
    with pytest.raises(ValueError, match="first='c'"):
        IGM(IGMConfig(first="c")).bind(LinearPair())
    model = LinearPair()
    no_unimodal = lambda: Losses(fused=mse(model({"a": XA, "b": XB})["fused"], YP))  # noqa: E731
    with pytest.raises(ValueError, match="no unimodal loss"):
        IGM().bind(model).step(no_unimodal, torch.optim.SGD(model.parameters(), lr=0.0))
    with pytest.raises(ValueError, match="total_steps"):
        IGM().set_total_steps(-1)
    Joint(JointConfig()).bind(LinearPair(("a",)))  # the model itself is fine


# ------------------------------------------------------------------------------------- recipes and the grid

def test_the_recipes_and_the_table1_rows():
    from remd_core.experiments.grid import expand
    from remd_core.experiments.recipes import NEWER_RIVALS, PAPER_RECIPES, recipe
    from remd_core.workbench.sweep import load_grid

    assert (recipe("bsam").strategy, dict(recipe("bsam").options)) == ("bsam", {"unimodal_weight": 0.0})
    assert (recipe("igm").strategy, recipe("igm").options) == ("igm", ())
    assert not set(NEWER_RIVALS) & set(PAPER_RECIPES)  # no paper number to print beside them
    table1 = [c.params["RECIPE"] for c in expand(load_grid("paper"), seeds=[0], groups=["table1"])]
    assert table1[-3:] == ["re-m3dr", "bsam", "igm"]


@pytest.mark.slow
def test_both_recipes_train_on_a_tiny_set(tmp_path):
    from remd_core.data import load
    from remd_core.experiments.recipes import run_recipe
    from remd_core.training import TrainConfig

    torch.set_default_dtype(torch.float32)  # as the trainer runs
    dataset = load("synthetic-stage2", n_eyes=60, image_size=16, oct_size=16, n_bscans=2, test=15, val=10, cache=False)
    base = TrainConfig(epochs=2, batch_size=8, encoder=EncoderConfig(width=0.125))
    rows, result = run_recipe("bsam", dataset, base, tmp_path, progress=False)
    assert rows[0]["model"] == "fusion" and np.isfinite(rows[0]["test_r2"])
    assert (result.history["weight_mean"] > 0).all()  # the training regions' weights, from prepare_run
    rows, result = run_recipe("igm", dataset, base, tmp_path, progress=False)
    assert rows[0]["model"] == "fusion" and np.isfinite(rows[0]["test_r2"])
    # 35 training eyes, batch 8: 4 steps an epoch, 8 in the run; stages 25/50/25/50 end at steps 1, 4, 5 and 8
    assert result.history["igm_stage"].tolist() == [0, 1, 1, 1, 2, 3, 3, 3]
