"""Metrics against hand computations and brute force."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from remd_core.evaluation import metrics

from remd_core.evaluation.metrics import (SMAPE_EPS, Regions, gmean_abs_error, head_tail_split, mae, mse, per_region_report, r2,
                               region_labels, regression_report, smape, stage_score)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def test_r2_perfect_and_mean_predictor(rng):
    y = rng.normal(-5, 4, 50)
    assert r2(y, y) == 1.0
    assert r2(y, np.full_like(y, y.mean())) == pytest.approx(0.0, abs=1e-12)


def test_r2_matches_direct_formula_and_can_be_negative(rng):
    y, yhat = rng.normal(size=40), rng.normal(size=40)
    direct = 1 - sum((a - b) ** 2 for a, b in zip(y, yhat)) / sum((a - y.mean()) ** 2 for a in y)
    assert r2(y, yhat) == pytest.approx(direct, rel=1e-12)
    assert r2(y, yhat) < 0  # independent noise predicts worse than the mean


def test_r2_undefined_cases_are_nan():
    assert math.isnan(r2([1.0], [1.0]))
    assert math.isnan(r2([2.0, 2.0, 2.0], [1.0, 2.0, 3.0]))


def test_mse_mae_hand_example():
    y, yhat = [0.0, -2.0, -10.0], [1.0, -4.0, -7.0]  # errors -1, 2, -3
    assert mse(y, yhat) == pytest.approx((1 + 4 + 9) / 3)
    assert mae(y, yhat) == pytest.approx((1 + 2 + 3) / 3)


def test_accepts_torch_tensors_and_lists(rng):
    y, yhat = rng.normal(size=20), rng.normal(size=20)
    ty, tp = torch.tensor(y, requires_grad=True), torch.tensor(yhat)
    assert r2(ty, tp) == pytest.approx(r2(list(y), list(yhat)))
    assert smape(ty, tp) == pytest.approx(smape(y, yhat))
    assert isinstance(mse(ty, tp), float)


def test_length_mismatch_raises():
    with pytest.raises(ValueError, match="2 values but yhat has 3"):
        mse([1, 2], [1, 2, 3])


def test_smape_hand_example():
    # |1-3| / 2 = 1 ; |-4-(-2)| / 3 = 2/3 ; |10-10| / 10 = 0  -> mean 5/9
    assert smape([1.0, -4.0, 10.0], [3.0, -2.0, 10.0]) == pytest.approx(5 / 9)


def test_smape_is_a_fraction_bounded_by_two(rng):
    y, yhat = rng.normal(size=200), rng.normal(size=200)
    assert 0 <= smape(y, yhat) <= 2
    assert smape([1.0], [-1.0]) == pytest.approx(2.0)  # opposite signs: the maximum


def test_smape_finite_at_zero_and_eps_floor():
    assert smape([0.0, 0.0], [0.0, 0.0]) == 0.0
    # y = 0, yhat = 1e-4: raw term 2, floored denominator gives 1e-4 / 1e-3 = 0.1
    assert smape([0.0], [1e-4]) == pytest.approx(1e-4 / SMAPE_EPS)
    assert smape([0.0], [1e-4], eps=1e-9) == pytest.approx(2.0)
    with pytest.raises(ValueError):
        smape([1.0], [1.0], eps=0)


def test_stage_score_hand_example():
    y, yhat = [1.0, 2.0, 3.0], [1.0, 2.0, 4.0]
    s = (1 / 3.5) / 3  # only the last term: |3 - 4| / 3.5
    r = 1 - 1 / 2  # SS_res 1, SS_tot 2
    assert stage_score(y, yhat) == pytest.approx(0.5 / (s + 0.1) + 5 * r)
    assert stage_score(y, y) == pytest.approx(10.0)


def test_regression_report_collects_everything(rng):
    y, yhat = rng.normal(size=30), rng.normal(size=30)
    rep = regression_report(y, yhat)
    assert rep == pytest.approx({"n": 30, "r2": r2(y, yhat), "mse": mse(y, yhat), "mae": mae(y, yhat),
                                 "smape": smape(y, yhat), "stage_score": stage_score(y, yhat)})


# ---------------------------------------------------------------------------- regions


def _constructed_labels():
    """Known counts per 2 dB bin: [-6,-4): 3, [-4,-2): 12, [-2,0): 50, [0,2): 35; n = 100."""
    return np.concatenate([np.full(3, -5.0), np.full(12, -3.0), np.linspace(-1.9, -0.1, 50),
                           np.linspace(0.0, 1.9, 35)])


def test_region_labels_on_known_counts():
    y = _constructed_labels()
    reg = region_labels(y, bin_width=2.0, many=30, few=10)
    np.testing.assert_allclose(reg.edges, [-6, -4, -2, 0, 2])
    np.testing.assert_array_equal(reg.counts, [3, 12, 50, 35])
    assert reg.regions == ("few", "medium", "many", "many")
    # fractions of n = 100 give the same thresholds
    frac = region_labels(y, bin_width=2.0, many=0.30, few=0.10)
    assert (frac.many_min, frac.few_below) == (30, 10) and frac.regions == reg.regions


def test_region_thresholds_are_inclusive_for_many_exclusive_for_few():
    y = _constructed_labels()
    reg = region_labels(y, bin_width=2.0, many=35, few=12)
    assert reg.regions == ("few", "medium", "many", "many")  # 35 >= 35 is many, 12 < 12 is not few


def test_region_defaults_for_500_training_samples(rng):
    reg = region_labels(rng.normal(size=500))
    assert (reg.many_min, reg.few_below) == (40, 10)


def test_assign_applies_training_regions_and_outside_is_few():
    reg = region_labels(_constructed_labels(), bin_width=2.0, many=30, few=10)
    got = reg.assign([-5.5, -4.0, -3.9, -2.0, 0.0, 1.99, -6.01, 2.0, 25.0])
    assert list(got) == ["few", "medium", "medium", "many", "many", "many", "few", "few", "few"]


def test_max_label_is_inside_last_bin():
    reg = region_labels([0.0, 1.0, 2.0, 4.0], bin_width=2.0, many=2, few=1)
    np.testing.assert_allclose(reg.edges, [0, 2, 4, 6])
    np.testing.assert_array_equal(reg.counts, [2, 1, 1])
    assert reg.counts.sum() == 4


def test_region_labels_validates():
    with pytest.raises(ValueError):
        region_labels([1.0, 2.0], bin_width=0)
    with pytest.raises(ValueError):
        region_labels([1.0, 2.0], many=5, few=10)
    with pytest.raises(ValueError):
        region_labels([1.0, float("nan")])


def test_per_region_report_equals_direct_computation_on_subsets(rng):
    y_train = _constructed_labels()
    reg = region_labels(y_train, bin_width=2.0, many=30, few=10)
    y = rng.uniform(-6, 2, 80)
    yhat = y + rng.normal(0, 1, 80)
    yhat[0] = y[0]  # one exact prediction: GM must stay positive
    rep = per_region_report(y, yhat, reg)
    assert list(rep.index) == ["many", "medium", "few", "all"]
    names = reg.assign(y)
    for region in ["many", "medium", "few", "all"]:
        m = np.ones(80, bool) if region == "all" else names == region
        err = y[m] - yhat[m]
        row = rep.loc[region]
        assert row["n"] == m.sum()
        assert row["mse"] == pytest.approx(np.mean(err ** 2))
        assert row["mae"] == pytest.approx(np.mean(np.abs(err)))
        assert row["gm"] == pytest.approx(np.prod(np.maximum(np.abs(err), 1e-3)) ** (1 / m.sum()))
        assert row["r2"] == pytest.approx(1 - np.sum(err ** 2) / np.sum((y[m] - y[m].mean()) ** 2))
    assert rep["n"][:3].sum() == rep.loc["all", "n"]
    assert rep.loc["all", "gm"] > 0


def test_per_region_report_with_names_and_empty_region():
    rep = per_region_report([1.0, 2.0, 3.0], [1.0, 2.5, 2.0], ["many", "many", "medium"])
    assert rep.loc["few", "n"] == 0 and np.isnan(rep.loc["few", "mse"])
    assert np.isnan(rep.loc["medium", "r2"])  # one sample: R^2 undefined
    assert rep.loc["medium", "gm"] == pytest.approx(1.0)
    assert isinstance(rep, pd.DataFrame)


def test_gmean_hand_example():
    assert gmean_abs_error([0.0, 0.0], [2.0, 8.0]) == pytest.approx(4.0)


def test_head_tail_masks_partition_as_documented():
    y = _constructed_labels()
    reg = region_labels(y, bin_width=2.0, many=30, few=10)
    head, tail = head_tail_split(y, regions=reg)
    names = reg.assign(y)
    np.testing.assert_array_equal(head, names == "many")
    np.testing.assert_array_equal(tail, names == "few")
    assert (head.sum(), tail.sum()) == (85, 3)
    assert not np.any(head & tail)
    head2, tail2 = head_tail_split(y, bin_width=2.0, many=30, few=10, medium_as_tail=True)
    np.testing.assert_array_equal(head2, head)
    assert tail2.sum() == 15 and np.all(head2 ^ tail2)  # disjoint and covering
    with pytest.raises(ValueError):
        head_tail_split(y, regions=reg, many=30)


def test_regions_table():
    reg = region_labels(_constructed_labels(), bin_width=2.0, many=30, few=10)
    table = reg.table()
    assert list(table["train_count"]) == [3, 12, 50, 35] and isinstance(reg, Regions)


def test_interval_coverage_and_width_by_hand():
    y = [0.0, -2.0, -10.0, 5.0]
    lo = [-1.0, -2.0, -9.0, 0.0]
    hi = [1.0, 0.0, -1.0, 4.0]       # inside, on the edge (closed), below, above
    assert metrics.interval_coverage(y, lo, hi) == 0.5
    assert metrics.interval_mean_width(lo, hi) == (2 + 2 + 8 + 4) / 4
    report = metrics.regression_report(y, [0.0, -1.0, -5.0, 2.0], interval=(lo, hi))
    assert report["coverage"] == 0.5 and report["interval_width"] == 4.0
    assert "coverage" not in metrics.regression_report(y, y)
    with pytest.raises(ValueError, match="4 values"):
        metrics.interval_coverage(y, lo[:3], hi[:3])
