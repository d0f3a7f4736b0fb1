"""Modality contributions (``diagnosis.contribution``): the Shapley values of a toy fused model whose
prediction is a known function of which modalities are present, computed by hand with two and three
modalities; efficiency (the values add up to v(all) - v(empty)); absent modalities zero-filled and
marked absent as the missing-modality protocol does; an eye left with no modality predicted at the
training mean and never shown to the model."""

import itertools

import numpy as np
import pytest
import torch
from torch import nn

from remd_core.data.format import DatasetSpec, ModalitySpec, MultimodalSplit
from remd_core.data.transforms import PRESENT
from remd_core.diagnosis.contribution import (coalitions, modality_contributions, predict_subset, shapley_values,
                                              shapley_weight, shares, subset_batch)

MEAN, STD = 1.5, 2.0


class PatternModel(nn.Module):
    """A fused model whose standardised prediction is ``q(S) * z``: ``z`` the eye's standardised label
    (every present modality's input carries it), ``S`` the eye's present modalities. Like the
    workbench's models it reads its modality inputs through ``encode`` (here each encoder passes its
    1-vector on: an absent, zero-filled modality gives zero features). It refuses an eye with no
    modality (as SimMLM, RIMA and the evidential heads do) and checks that every absent modality
    reached it zero-filled."""

    def __init__(self, modalities, quality):
        super().__init__()
        self.modalities, self.quality = tuple(modalities), quality
        self.encoders = nn.ModuleDict({m: nn.Identity() for m in self.modalities})
        self.anchor = nn.Parameter(torch.zeros(1, dtype=torch.float64))
        self.seen = []

    @property
    def dtype(self):
        return self.anchor.dtype

    def encode(self, inputs):
        return {m: self.encoders[m](inputs[m]) for m in self.modalities}

    def forward(self, inputs):
        present = inputs[PRESENT]
        assert present.any(dim=1).all(), "an eye with no modality reached the model"
        features = self.encode(inputs)
        for j, m in enumerate(self.modalities):
            assert torch.all(features[m][~present[:, j]] == 0), f"absent {m} not zero-filled"
        self.seen.append(present.clone())
        torch.rand(1)  # a draw from the global generator, which modality_contributions must restore
        z = sum(features[m][:, 0] for m in self.modalities) / present.sum(dim=1)
        q = torch.tensor([self.quality[frozenset(n for n, p in zip(self.modalities, row) if p)]
                          for row in present.tolist()], dtype=self.dtype)
        return {"fused": q * z + self.anchor}


def toy_split(names, n=40, seed=0, present=None):
    """A split of ``n`` eyes whose labels have mean exactly ``MEAN`` and whose every modality (a
    1-vector) holds the standardised label, zero where ``present`` marks it absent."""
    rng = np.random.default_rng(seed)
    y = rng.normal(MEAN, STD, n)
    y = y - y.mean() + MEAN
    z = torch.tensor((y - MEAN) / STD, dtype=torch.float32)
    present = torch.ones(n, len(names), dtype=torch.bool) if present is None else present
    spec = DatasetSpec("toy", tuple(ModalitySpec(m, "vector", (1,)) for m in names))
    modalities = {m: (z * present[:, j]).reshape(n, 1) for j, m in enumerate(names)}
    return MultimodalSplit("test", spec, [f"e{i}" for i in range(n)], modalities, present,
                           torch.zeros(n, 3), torch.tensor(y, dtype=torch.float32), torch.zeros(n, dtype=torch.long))


def hand_r2(q):
    """R^2 of ``MEAN + q (y - MEAN)`` on labels whose mean is ``MEAN``: ``1 - (1 - q)^2``."""
    return 1 - (1 - q) ** 2


def test_shapley_weights_are_the_textbook_ones():
    assert shapley_weight(0, 2) == shapley_weight(1, 2) == 0.5
    assert [shapley_weight(s, 3) for s in range(3)] == pytest.approx([1 / 3, 1 / 6, 1 / 3])
    for k in range(1, 6):  # the weights of the coalitions without one player sum to 1
        assert sum(shapley_weight(len(s), k) for s in coalitions(range(k - 1))) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        shapley_weight(2, 2)


@pytest.mark.parametrize("exact", [False, True], ids=["from-features", "forward-per-subset"])
def test_two_modalities_by_hand(exact):
    quality = {frozenset("a"): 0.6, frozenset("b"): 0.3, frozenset("ab"): 0.8}
    split = toy_split("ab")
    got = modality_contributions(PatternModel("ab", quality), split, split.spec.kinds, MEAN, STD, batch_size=16,
                                 exact=exact)
    v = {"": 0.0, "a": hand_r2(0.6), "b": hand_r2(0.3), "ab": hand_r2(0.8)}  # 0, 0.84, 0.51, 0.96
    phi_a = 0.5 * (v["a"] - v[""]) + 0.5 * (v["ab"] - v["b"])  # 0.645
    phi_b = 0.5 * (v["b"] - v[""]) + 0.5 * (v["ab"] - v["a"])  # 0.315
    assert got["shapley_a"] == pytest.approx(phi_a, abs=1e-6) and phi_a == pytest.approx(0.645)
    assert got["shapley_b"] == pytest.approx(phi_b, abs=1e-6) and phi_b == pytest.approx(0.315)
    assert got["shapley_empty"] == pytest.approx(0.0, abs=1e-9)
    assert got["share_a"] == pytest.approx(0.645 / 0.96, abs=1e-6)
    assert got["share_a"] + got["share_b"] == pytest.approx(1.0)
    assert got["shapley_a"] + got["shapley_b"] == pytest.approx(v["ab"] - v[""], abs=1e-6)  # efficiency


@pytest.mark.parametrize("exact", [False, True], ids=["from-features", "forward-per-subset"])
def test_three_modalities_by_hand(exact):
    q = {"a": 0.5, "b": 0.2, "c": 0.1, "ab": 0.7, "ac": 0.55, "bc": 0.25, "abc": 0.75}
    quality = {frozenset(k): v for k, v in q.items()}
    split = toy_split("abc", n=30, seed=1)
    got = modality_contributions(PatternModel("abc", quality), split, split.spec.kinds, MEAN, STD, batch_size=7,
                                 exact=exact)
    v = {"": 0.0, **{k: hand_r2(x) for k, x in q.items()}}
    phi = {  # weights 1/3 (no other player), 1/6 (one), 1/3 (both)
        "a": (v["a"] - v[""]) / 3 + (v["ab"] - v["b"]) / 6 + (v["ac"] - v["c"]) / 6 + (v["abc"] - v["bc"]) / 3,
        "b": (v["b"] - v[""]) / 3 + (v["ab"] - v["a"]) / 6 + (v["bc"] - v["c"]) / 6 + (v["abc"] - v["ac"]) / 3,
        "c": (v["c"] - v[""]) / 3 + (v["ac"] - v["a"]) / 6 + (v["bc"] - v["b"]) / 6 + (v["abc"] - v["ab"]) / 3,
    }
    for m in "abc":
        assert got[f"shapley_{m}"] == pytest.approx(phi[m], abs=1e-6)
    assert sum(got[f"shapley_{m}"] for m in "abc") == pytest.approx(v["abc"] - v[""], abs=1e-6)
    assert sum(got[f"share_{m}"] for m in "abc") == pytest.approx(1.0)


def test_efficiency_symmetry_and_null_player_on_any_game():
    rng = np.random.default_rng(3)
    names = ("p", "q", "r", "s")
    game = {s: float(rng.normal()) for s in coalitions(names)}
    phi = shapley_values(game, names)
    assert sum(phi.values()) == pytest.approx(game[frozenset(names)] - game[frozenset()])
    # a player who adds nothing to any coalition gets 0; two interchangeable players get the same
    dummy = {s: float(len(s - {"s"}) ** 2) for s in coalitions(names)}
    phi = shapley_values(dummy, names)
    assert phi["s"] == pytest.approx(0.0) and phi["p"] == pytest.approx(phi["q"]) == pytest.approx(phi["r"])
    with pytest.raises(ValueError, match="missing"):
        shapley_values({frozenset(): 0.0}, ("p",))


def test_shares_are_signed_and_bounded():
    assert shares({"a": 0.3, "b": 0.1}) == pytest.approx({"a": 0.75, "b": 0.25})
    assert shares({"a": 0.118, "b": -0.108}) == pytest.approx({"a": 0.118 / 0.226, "b": -0.108 / 0.226})
    assert all(np.isnan(list(shares({"a": 0.0, "b": 0.0}).values())))


def test_absent_modalities_are_zero_filled_and_marked_absent():
    split = toy_split("abc", n=6)
    batch = split.batch(torch.arange(6))
    out = subset_batch(batch, ("a", "b", "c"), frozenset("b"))
    assert out[PRESENT].tolist() == [[False, True, False]] * 6
    assert torch.all(out["a"] == 0) and torch.all(out["c"] == 0) and torch.equal(out["b"], batch["b"])
    assert torch.equal(batch[PRESENT], torch.ones(6, 3, dtype=torch.bool))  # the input batch is untouched
    assert not torch.all(batch["a"] == 0)


def test_an_eye_left_without_a_modality_gets_the_training_mean():
    present = torch.ones(8, 2, dtype=torch.bool)
    present[0, 0] = False  # eye 0 has no OCT-like "a" in its data, eye 1 no "b"
    present[1, 1] = False
    split = toy_split("ab", n=8, present=present)
    quality = {frozenset("a"): 0.6, frozenset("b"): 0.3, frozenset("ab"): 0.8}
    model = PatternModel("ab", quality)
    pred = predict_subset(model, split, split.spec.kinds, MEAN, STD, frozenset("a"), batch_size=8)
    assert pred[0] == MEAN  # no "a" in its data, "b" removed: nothing left
    assert model.seen[-1].shape[0] == 7  # and the model never saw it
    y = split.y.numpy().astype(np.float64)
    assert pred[1:] == pytest.approx(MEAN + 0.6 * (y[1:] - MEAN), abs=1e-5)
    full = predict_subset(model, split, split.spec.kinds, MEAN, STD, frozenset("ab"), batch_size=8)
    expected = [MEAN + quality[frozenset(n for n, p in zip("ab", row) if p)] * (yi - MEAN)
                for row, yi in zip(present.tolist(), y)]
    assert full == pytest.approx(expected, abs=1e-5)
    present[2] = False  # an eye without any modality in its data: the mean in every subset
    split = toy_split("ab", n=8, present=present)
    fast, exact = (modality_contributions(PatternModel("ab", quality), split, split.spec.kinds, MEAN, STD,
                                          batch_size=3, exact=e) for e in (False, True))
    assert fast == pytest.approx(exact, abs=1e-9)


def test_random_states_are_left_as_they_were():
    split = toy_split("ab")
    quality = {frozenset(c): 0.5 for r in (1, 2) for c in itertools.combinations("ab", r)}
    before = torch.random.get_rng_state()
    modality_contributions(PatternModel("ab", quality), split, split.spec.kinds, MEAN, STD)
    assert torch.equal(torch.random.get_rng_state(), before)


@pytest.mark.parametrize("head", ["linear", "eyemost-plus", "echomen", "simmlm", "rima"])
def test_features_reused_give_what_a_forward_pass_per_subset_gives_on_every_head(head):
    from remd_core.data import load
    from remd_core.data.missing import MissingConfig, with_missing
    from remd_core.models import EncoderConfig
    from remd_core.training import TrainConfig, build_model

    dataset = load("synthetic-stage2", n_eyes=60, image_size=16, oct_size=16, n_bscans=2, test=15, val=10, cache=False)
    dataset = with_missing(dataset, MissingConfig(test={"oct": 0.3, "fundus": 0.3}, seed=0))  # some eyes lack one
    assert not dataset.test.present.all()
    torch.manual_seed(0)
    model = build_model(dataset, TrainConfig(head=head, encoder=EncoderConfig(width=0.125), device="cpu"))
    model.eval()
    mean, std = float(dataset.train.y.mean()), float(dataset.train.y.std())
    fast, exact = (modality_contributions(model, dataset.test, dataset.spec.kinds, mean, std, batch_size=4, exact=e)
                   for e in (False, True))
    assert fast == pytest.approx(exact, rel=1e-5, abs=1e-6)
    assert fast["shapley_oct"] != exact["shapley_fundus"]


def test_curves_and_table_gather_the_runs_values():
    from types import SimpleNamespace

    import pandas as pd

    from remd_core.diagnosis.contribution import contribution_curves, contribution_table

    epochs = pd.DataFrame({"epoch": [1, 2], "val_r2": [0.1, 0.3], "shapley_oct": [0.05, 0.2],
                           "shapley_fundus": [0.06, 0.1], "share_oct": [0.45, 2 / 3], "share_fundus": [0.55, 1 / 3],
                           "shapley_empty": [-0.01, 0.0]})
    run = SimpleNamespace(epochs=epochs, metrics={"test": {"r2": 0.4}},
                          contributions={"test": {"shapley_oct": 0.3, "shapley_fundus": 0.1, "share_oct": 0.75,
                                                  "share_fundus": 0.25, "shapley_empty": 0.0}})
    curves = contribution_curves({"naive-fusion": run})
    assert list(curves.columns) == ["run", "epoch", "modality", "shapley", "share"] and len(curves) == 4
    assert curves.query("modality == 'oct'")["share"].tolist() == pytest.approx([0.45, 2 / 3])
    table = contribution_table({"naive-fusion": run})
    assert table.loc[("naive-fusion", "oct"), "shapley"] == 0.3
    assert table.loc[("naive-fusion", "fundus"), "test_r2"] == 0.4
    unimodal = SimpleNamespace(epochs=epochs[["epoch", "val_r2"]], contributions={}, metrics={})
    with pytest.raises(ValueError, match="'oct'"):
        contribution_curves({"oct": unimodal})
    with pytest.raises(ValueError, match="'oct'"):
        contribution_table({"oct": unimodal})
