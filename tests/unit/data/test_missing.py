"""The missing-modality protocol (remd_core.data.missing) and the per-pattern report."""

import dataclasses
import math
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from remd_core.config import ConfigError
from remd_core.data import DatasetSpec, ModalitySpec, MultimodalDataset, MultimodalSplit, load
from remd_core.data.missing import (PATTERNS, MissingConfig, draw_absent, draw_uniforms, missing_pattern,
                                    missing_table, patterns_for, with_missing)
from remd_core.evaluation.metrics import mae, mse, per_pattern_report, r2

NAMES = ("fundus", "oct")


@pytest.fixture(scope="module")
def small():
    return load("synthetic-stage2", n_eyes=80, image_size=16, oct_size=16, n_bscans=2, test=20, val=12, cache=False)


def _absent_in_data(ds, seed=123):
    """A copy of ``ds`` with about a quarter of each modality absent in the data (zeroed), never both."""
    g = np.random.default_rng(seed)
    splits = {}
    for name, s in ds.splits.items():
        n = len(s)
        which = g.integers(0, 4, n)  # 0: fundus absent, 1: OCT absent, 2-3: both present
        present = torch.ones(n, 2, dtype=torch.bool)
        present[torch.from_numpy(which == 0), 0] = False
        present[torch.from_numpy(which == 1), 1] = False
        modalities = {m: t.clone() for m, t in s.modalities.items()}
        for j, m in enumerate(NAMES):
            modalities[m][~present[:, j]] = 0
        splits[name] = dataclasses.replace(s, modalities=modalities, present=present)
    return dataclasses.replace(ds, splits=splits, notes={})


def _big(n=4000, seed=0):
    """A data set with large splits and tiny tensors, for rate statistics."""
    spec = DatasetSpec("big", (ModalitySpec("fundus", "image", (1, 2, 2)), ModalitySpec("oct", "volume", (1, 2, 2))))
    g = torch.Generator().manual_seed(seed)
    splits = {}
    for name in ("train", "val", "test"):
        splits[name] = MultimodalSplit(
            name=name, spec=spec, ids=[f"{name}{i}" for i in range(n)],
            modalities={m: torch.randint(1, 256, (n, 1, 2, 2), dtype=torch.uint8, generator=g) for m in NAMES},
            present=torch.ones(n, 2, dtype=torch.bool), tabular=torch.zeros(n, 3), y=torch.randn(n, generator=g),
            stage=torch.zeros(n, dtype=torch.int64))
    return MultimodalDataset(spec=spec, splits=splits, config=None)


def _within(realised, p, n, k=4.0):
    """``realised`` is within ``k`` binomial standard errors of ``p`` for ``n`` draws."""
    return abs(realised - p) <= k * math.sqrt(p * (1 - p) / n) + 1e-12


# ------------------------------------------------------------------------------------------------
# Config


@pytest.mark.parametrize("kwargs, match", [
    (dict(train={"fundus": 1.5}), r"train: rate of modality 'fundus' must be in \[0, 1\], got 1.5"),
    (dict(test={"oct": -0.1}), r"test: rate of modality 'oct' must be in \[0, 1\]"),
    (dict(test={"oct": float("nan")}), r"modality 'oct' must be in \[0, 1\]"),
    (dict(train={"oct": "0.3"}), r"rate of modality 'oct' must be a number"),
    (dict(train={"oct": True}), r"rate of modality 'oct' must be a number"),
    (dict(train=[0.3]), r"MissingConfig.train must be a mapping"),
    (dict(val="sometimes"), r"MissingConfig.val must be one of \('train', 'test', 'none'\)"),
    (dict(seed=-1), r"seed must be a non-negative integer"),
    (dict(seed=1.5), r"seed must be a non-negative integer"),
])
def test_invalid_config_raises_naming_the_problem(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MissingConfig(**kwargs)


def test_from_dict_rejects_unknown_keys_and_builds_known():
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['rate'\].*allowed keys are: train, test, val, seed"):
        MissingConfig.from_dict({"rate": 0.3})
    cfg = MissingConfig.from_dict({"train": {"fundus": 0.3}, "seed": 2})
    assert cfg == MissingConfig(train={"fundus": 0.3}, seed=2)
    assert cfg.rates("train") == {"fundus": 0.3} and cfg.rates("val") == {"fundus": 0.3} and cfg.rates("test") == {}


def test_val_rates_follow_the_val_choice():
    assert MissingConfig(train={"oct": 0.2}, test={"oct": 0.7}).rates("val") == {"oct": 0.2}
    assert MissingConfig(train={"oct": 0.2}, test={"oct": 0.7}, val="test").rates("val") == {"oct": 0.7}
    assert MissingConfig(train={"oct": 0.2}, test={"oct": 0.7}, val="none").rates("val") == {}


def test_unknown_modality_is_an_error_naming_the_known_ones(small):
    with pytest.raises(ValueError, match=r"MissingConfig.test names unknown modality\(ies\) \['OCT'\].*"
                                         r"\('fundus', 'oct'\)"):
        with_missing(small, MissingConfig(test={"OCT": 0.5}))


def test_unknown_split_is_an_error_naming_it(small):
    odd = dataclasses.replace(small, splits={**small.splits, "holdout": small.test})
    with pytest.raises(ValueError, match="split 'holdout'"):
        with_missing(odd, MissingConfig(test={"oct": 0.5}))


def test_applying_twice_is_an_error(small):
    once = with_missing(small, MissingConfig(test={"oct": 0.5}))
    with pytest.raises(ValueError, match="already has missing modalities drawn"):
        with_missing(once, MissingConfig(train={"oct": 0.5}))


# ------------------------------------------------------------------------------------------------
# The draw


def test_masks_reproduce_by_seed_and_differ_with_another_seed(small):
    cfg = MissingConfig(train={"fundus": 0.4, "oct": 0.4}, test={"oct": 0.5}, seed=7)
    a, b = with_missing(small, cfg), with_missing(small, cfg)
    c = with_missing(small, dataclasses.replace(cfg, seed=8))
    for name in ("train", "val", "test"):
        assert torch.equal(a[name].present, b[name].present)
        for m in NAMES:
            assert torch.equal(a[name].modalities[m], b[name].modalities[m])
    assert not all(torch.equal(a[s].present, c[s].present) for s in ("train", "val", "test"))
    # splits draw independently: the same rates on train and val do not give the same pattern
    assert not torch.equal(a.train.present[:12], a.val.present)


def test_uniforms_are_stable_across_processes():
    # two processes with different hash salts draw the same uniforms (Python's hash() of a str would not)
    u = draw_uniforms(0, "train", 2, 2)
    assert u.shape == (2, 2)
    again = draw_uniforms(0, "train", 2, 2)
    assert np.array_equal(u, again)
    assert not np.array_equal(u, draw_uniforms(0, "test", 2, 2))
    code = "from remd_core.data.missing import draw_uniforms; print(repr(draw_uniforms(0, 'train', 2, 2).tolist()))"
    out = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env={**os.environ, "PYTHONHASHSEED": str(h)}).stdout.strip() for h in (1, 2)]
    assert out[0] == out[1] == repr(u.tolist())


def test_input_is_not_modified(small):
    before = {s: (small[s].present.clone(), {m: t.clone() for m, t in small[s].modalities.items()})
              for s in small.splits}
    with_missing(small, MissingConfig(train={"fundus": 0.5, "oct": 0.5}, test={"oct": 0.9}, seed=1))
    for s, (present, mods) in before.items():
        assert torch.equal(small[s].present, present)
        assert all(torch.equal(small[s].modalities[m], mods[m]) for m in NAMES)
    assert "missing" not in small.notes


def test_rate_zero_is_the_identity(small):
    for cfg in (MissingConfig(), MissingConfig(train={"fundus": 0.0}, test={"oct": 0.0}, seed=3)):
        out = with_missing(small, cfg)
        assert out is not small and out.spec == small.spec and list(out.splits) == list(small.splits)
        for s in small.splits:
            assert out[s].present is small[s].present
            assert all(out[s].modalities[m] is small[s].modalities[m] for m in NAMES)
            assert out[s].ids == small[s].ids and out[s].y is small[s].y
        assert all(v["dropped"] == 0 and v["realised"] == 0.0
                   for r in out.notes["missing"]["splits"].values() for v in r["modalities"].values())


def test_absent_in_data_is_never_revived(small):
    data = _absent_in_data(small)
    assert not data.train.present.all()
    out = with_missing(data, MissingConfig(train={"fundus": 0.5, "oct": 0.5}, test={"fundus": 1.0}, seed=0))
    for s in data.splits:
        was, now = data[s].present, out[s].present
        assert not (now & ~was).any(), f"split {s}: a modality absent in the data became present"
        for j, m in enumerate(NAMES):
            assert (out[s].modalities[m][~now[:, j]] == 0).all()
    assert (out.train.present != data.train.present).any()  # the draw did remove something


def test_newly_absent_tensors_are_zero_of_their_dtype_and_present_ones_unchanged(small):
    out = with_missing(small, MissingConfig(train={"fundus": 0.5}, test={"oct": 0.5}, seed=0))
    changed = 0
    for s in small.splits:
        for j, m in enumerate(NAMES):
            new, old = out[s].modalities[m], small[s].modalities[m]
            assert new.dtype == old.dtype == torch.uint8
            gone = small[s].present[:, j] & ~out[s].present[:, j]
            changed += int(gone.sum())
            assert (new[gone] == 0).all()
            assert (old[gone] != 0).any(dim=tuple(range(1, old.dim()))).all()  # they were not zero before
            assert torch.equal(new[~gone], old[~gone])
            assert (out[s].batch(torch.arange(len(new)))[m][gone] == 0).all()
    assert changed > 0
    # the rates went where they were asked: fundus only in train (and val), OCT only in test
    assert out.train.present[:, 1].all() and out.val.present[:, 1].all() and out.test.present[:, 0].all()
    assert not out.train.present[:, 0].all() and not out.test.present[:, 1].all()


def test_no_eye_ends_without_a_modality():
    big = _big(n=2000)
    out = with_missing(big, MissingConfig(train={"fundus": 1.0, "oct": 1.0}, test={"fundus": 0.8, "oct": 0.8}, seed=5))
    for s in big.splits:
        assert out[s].present.any(1).all(), f"split {s}: an eye lost every modality"
    # both rates 1: every eye keeps exactly one, chosen uniformly
    n = len(out.train)
    kept = out.train.present.sum(1)
    assert (kept == 1).all()
    assert _within(float(out.train.present[:, 0].float().mean()), 0.5, n)


def test_an_eye_with_one_modality_in_the_data_keeps_it(small):
    data = _absent_in_data(small)
    out = with_missing(data, MissingConfig(test={"oct": 1.0, "fundus": 1.0}, seed=0))
    only = data.test.present.sum(1) == 1
    assert only.any()
    assert torch.equal(out.test.present[only], data.test.present[only])
    assert out.test.present.any(1).all()


def test_realised_rates_match_the_requested_rate_within_binomial_error():
    big = _big(n=4000)
    p = 0.3
    out = with_missing(big, MissingConfig(train={"oct": p}, test={"fundus": 0.7}, val="none", seed=11))
    rep = out.notes["missing"]["splits"]
    for split, m, rate in (("train", "oct", p), ("test", "fundus", 0.7)):
        r = rep[split]["modalities"][m]
        n = r["eligible"]
        assert n == len(big[split]) and r["kept"] == 0
        assert _within(r["realised"], rate, n), (split, m, r["realised"], rate)
        j = NAMES.index(m)
        assert r["realised"] == pytest.approx(float((~out[split].present[:, j]).float().mean()))
    assert rep["val"]["modalities"]["oct"]["dropped"] == 0
    assert rep["train"]["modalities"]["fundus"]["dropped"] == 0


def test_realised_rates_with_both_modalities_follow_the_documented_rule():
    # rule: where both are drawn, one is kept uniformly -> realised fundus rate p - p q / 2
    big = _big(n=4000)
    p, q = 0.6, 0.5
    out = with_missing(big, MissingConfig(train={"fundus": p, "oct": q}, seed=3))
    r = out.notes["missing"]["splits"]["train"]["modalities"]
    n = len(big.train)
    assert _within(r["fundus"]["realised"], p - p * q / 2, n)
    assert _within(r["oct"]["realised"], q - p * q / 2, n)
    assert _within(r["fundus"]["drawn"] / n, p, n)
    assert r["fundus"]["kept"] + r["oct"]["kept"] == r["fundus"]["drawn"] - r["fundus"]["dropped"] + \
        r["oct"]["drawn"] - r["oct"]["dropped"]
    assert _within((r["fundus"]["kept"] + r["oct"]["kept"]) / n, p * q, n)  # one kept per emptied eye
    table = missing_table(out)
    assert table.loc[("train", "fundus"), "realised"] == r["fundus"]["realised"]


def test_masks_are_nested_in_the_rate():
    big = _big(n=1000)
    lo = with_missing(big, MissingConfig(test={"oct": 0.3}, seed=4)).test.present[:, 1]
    hi = with_missing(big, MissingConfig(test={"oct": 0.5}, seed=4)).test.present[:, 1]
    assert not (~lo & hi).any()  # absent at 0.3 -> absent at 0.5
    assert (~hi).sum() > (~lo).sum()


def test_draw_absent_hand_example():
    present = np.array([[1, 1], [1, 1], [1, 0], [0, 1], [1, 1]], bool)
    rates = np.array([0.5, 0.8])
    u = np.array([[0.1, 0.9],   # fundus drawn -> dropped
                  [0.4, 0.1],   # both drawn: u/rate = 0.8 vs 0.125 -> fundus kept, OCT dropped
                  [0.2, 0.0],   # only fundus in data, drawn -> kept
                  [0.9, 0.7],   # only OCT, drawn -> kept
                  [0.6, 0.9]])  # nothing drawn
    dropped, kept = draw_absent(present, rates, u)
    assert dropped.tolist() == [[True, False], [False, True], [False, False], [False, False], [False, False]]
    assert kept.tolist() == [[False, False], [True, False], [True, False], [False, True], [False, False]]


# ------------------------------------------------------------------------------------------------
# Patterns and the per-pattern report


def test_missing_pattern_names():
    present = torch.tensor([[True, True], [True, False], [False, True], [False, False]])
    assert missing_pattern(present, NAMES) == ["both", "fundus only", "oct only", "none"]
    assert patterns_for(NAMES) == PATTERNS
    three = np.array([[1, 1, 1], [1, 0, 1], [0, 1, 0]], bool)
    assert missing_pattern(three, ("a", "b", "c")) == ["a+b+c", "a+c", "b only"]
    assert patterns_for(("a", "b", "c")) == ("a+b+c", "a+b", "a+c", "b+c", "a only", "b only", "c only")
    with pytest.raises(ValueError, match=r"expected \[N, 2\]"):
        missing_pattern(three, NAMES)


def test_notes_count_the_patterns(small):
    out = with_missing(_absent_in_data(small), MissingConfig(train={"oct": 0.5}, seed=0))
    counts = out.notes["missing"]["splits"]["train"]["patterns"]
    expected = pd.Series(missing_pattern(out.train.present, NAMES)).value_counts().to_dict()
    assert counts == expected and sum(counts.values()) == len(out.train)


def test_per_pattern_report_hand_example():
    y = [0.0, -2.0, -10.0, -4.0, -6.0]
    yhat = [1.0, -4.0, -7.0, -4.0, -5.0]
    patterns = ["oct only", "both", "both", "fundus only", "both"]
    rep = per_pattern_report(y, yhat, patterns)
    assert list(rep.index) == ["both", "fundus only", "oct only", "all"]
    assert list(rep.columns) == ["n", "r2", "mse", "mae"]
    # both: y = -2, -10, -6; errors 2, -3, -1 -> MSE 14/3, MAE 2; mean -6, SS_tot 16 + 16 + 0 = 32
    assert rep.loc["both", "n"] == 3
    assert rep.loc["both", "mse"] == pytest.approx(14 / 3)
    assert rep.loc["both", "mae"] == pytest.approx(2.0)
    assert rep.loc["both", "r2"] == pytest.approx(1 - 14 / 32)
    assert rep.loc["fundus only", "n"] == 1 and rep.loc["fundus only", "mse"] == 0.0
    assert math.isnan(rep.loc["fundus only", "r2"])  # one sample: undefined
    assert rep.loc["oct only", "mae"] == pytest.approx(1.0)
    assert rep.loc["all", "n"] == 5
    assert rep.loc["all", "mse"] == pytest.approx(mse(y, yhat))
    assert rep.loc["all", "mse"] == pytest.approx(15 / 5)  # errors -1, 2, -3, 0, -1
    assert rep.loc["all", "r2"] == pytest.approx(r2(y, yhat)) and rep.loc["all", "mae"] == pytest.approx(mae(y, yhat))


def test_per_pattern_report_order_and_errors():
    y, yhat = [1.0, 2.0, 3.0], [1.0, 2.5, 2.0]
    rep = per_pattern_report(y, yhat, ["both", "both", "oct only"], order=PATTERNS)
    assert list(rep.index) == [*PATTERNS, "all"]
    assert rep.loc["fundus only", "n"] == 0 and math.isnan(rep.loc["fundus only", "mse"])
    with pytest.raises(ValueError, match=r"pattern\(s\) \['oct only'\]"):
        per_pattern_report(y, yhat, ["both", "both", "oct only"], order=["both"])
    with pytest.raises(ValueError, match="2 patterns for 3 samples"):
        per_pattern_report(y, yhat, ["both", "both"])


def test_per_pattern_report_on_a_drawn_test_split(small):
    out = with_missing(small, MissingConfig(test={"oct": 0.5}, seed=0))
    patterns = missing_pattern(out.test.present, NAMES)
    y = out.test.y.numpy()
    rep = per_pattern_report(out.test.y, out.test.y + 1.0, patterns, order=PATTERNS)
    assert rep.loc["all", "n"] == len(y) == rep.loc[list(PATTERNS), "n"].sum()
    assert rep.loc["fundus only", "n"] == out.notes["missing"]["splits"]["test"]["modalities"]["oct"]["dropped"]
    assert rep.loc["all", "mse"] == pytest.approx(1.0) and rep.loc["both", "mae"] == pytest.approx(1.0)
