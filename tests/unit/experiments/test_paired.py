"""Paired statistics (experiments.paired): hand computations, exact permutation p-values, coverage
by simulation, and the alignment checks; the per-eye reader of a sweep folder (results.eye_predictions)."""

import json
import time

import numpy as np
import pandas as pd
import pytest

from remd_core.experiments import paired as P
from remd_core.experiments.results import eye_predictions


def long(y, preds, seeds=None, ids=None):
    """A long table (seed, eye, y, prediction) from [S, N] predictions."""
    preds = np.atleast_2d(preds)
    seeds = list(range(len(preds))) if seeds is None else seeds
    ids = [f"e{i}" for i in range(len(y))] if ids is None else ids
    return pd.DataFrame([{"seed": s, "eye": e, "y": float(t), "prediction": float(p)}
                         for s, row in zip(seeds, preds) for e, t, p in zip(ids, y, row)])


def null_draw(rng, n_seeds, n_eyes, eye_sd, cell_sd):
    """A and B exchangeable: a shared eye difficulty, a recipe-specific error per eye that persists
    across seeds (``eye_sd``) and a training-noise error per (seed, eye) (``cell_sd``)."""
    y, shared = rng.normal(-5, 5, n_eyes), rng.normal(0, 1, n_eyes)
    a = y + shared + rng.normal(0, eye_sd, n_eyes) + rng.normal(0, cell_sd, (n_seeds, n_eyes))
    b = y + shared + rng.normal(0, eye_sd, n_eyes) + rng.normal(0, cell_sd, (n_seeds, n_eyes))
    return y, a, b


# --- (1) the statistic by hand ------------------------------------------------------------------

def test_statistic_equals_a_hand_computation():
    y = np.array([0.0, -2.0, -4.0, -6.0])  # mean -3, SST 4 * (9 + 1 + 1 + 9) / 4 = 20
    a = np.array([[0.0, -2.0, -4.0, -5.0],    # seed 0: errors 0 0 0 1 -> SSE 1
                  [1.0, -2.0, -4.0, -6.0]])   # seed 1: errors 1 0 0 0 -> SSE 1
    b = np.array([[1.0, -1.0, -4.0, -6.0],    # SSE 2
                  [0.0, -4.0, -4.0, -6.0]])   # SSE 4
    assert P.statistic(y, a, b, "mse") == pytest.approx(((1 - 2) / 4 + (1 - 4) / 4) / 2)  # -0.5
    assert P.statistic(y, a, b, "r2") == pytest.approx(((1 - 1 / 20) - (1 - 2 / 20) + (1 - 1 / 20) - (1 - 4 / 20)) / 2)
    result = P.paired_difference(long(y, a), long(y, b), "r2", n_boot=50, n_perm=50)
    assert result.diff == pytest.approx(0.1) and result.mean_a == pytest.approx(0.95)
    assert (result.n_seeds, result.n_eyes) == (2, 4)


def test_bootstrap_replicates_are_the_statistic_of_resampled_data():
    rng = np.random.default_rng(3)
    y, a, b = null_draw(rng, 3, 12, 1.0, 1.0)
    for metric in ("r2", "mse"):
        _, _, reps = P.bootstrap_ci(y, a, b, metric, n_boot=5, rng=np.random.default_rng(7))
        gen = np.random.default_rng(7)  # the same draws, replayed as index resampling
        ws = gen.multinomial(3, np.full(3, 1 / 3), size=5)
        wi = gen.multinomial(12, np.full(12, 1 / 12), size=5)
        for r in range(5):
            s_idx, i_idx = np.repeat(np.arange(3), ws[r]), np.repeat(np.arange(12), wi[r])
            direct = P.statistic(y[i_idx], a[np.ix_(s_idx, i_idx)], b[np.ix_(s_idx, i_idx)], metric)
            assert reps[r] == pytest.approx(direct, rel=1e-10, abs=1e-12)


# --- (2) identical recipes ----------------------------------------------------------------------

def test_identical_recipes_give_a_zero_width_interval_at_zero_and_p_one():
    y, a, _ = null_draw(np.random.default_rng(0), 3, 40, 1.0, 1.0)
    for metric in ("r2", "mse"):
        for unit in P.UNITS:
            r = P.paired_difference(long(y, a), long(y, a), metric, unit=unit)
            assert (r.diff, r.ci_low, r.ci_high, r.p_value) == (0.0, 0.0, 0.0, 1.0)
            assert not r.distinguishable


# --- (3) the permutation test against brute force -----------------------------------------------

@pytest.mark.parametrize("case", range(3))
def test_monte_carlo_p_approaches_the_exact_p_over_all_swaps(case):
    rng = np.random.default_rng(case)
    y = rng.normal(-5, 4, 8)
    a, b = y + rng.normal(0, 1, (1, 8)), y + rng.normal(0.6, 1.5, (1, 8))
    d = ((y - a) ** 2 - (y - b) ** 2)[0]
    brute = np.mean([abs(sum(s * v for s, v in zip(signs, d))) >= abs(d.sum()) - 1e-12
                     for signs in (np.array([1 - 2 * ((k >> j) & 1) for j in range(8)]) for k in range(256))])
    assert P.exact_permutation_p(y, a, b) == pytest.approx(brute)
    assert 1 / 256 <= brute < 1  # a p-value strictly inside, so the comparison means something
    n = 40_000
    mc = P.permutation_test(y, a, b, "mse", n_perm=n, rng=case)
    assert abs(mc - brute) < 4 * np.sqrt(brute * (1 - brute) / n) + 1 / n
    assert P.permutation_test(y, a, b, "r2", n_perm=n, rng=case) == mc  # SST is unchanged by a swap


def test_exact_p_per_cell_and_per_eye_with_two_seeds():
    rng = np.random.default_rng(5)
    y = rng.normal(-5, 4, 4)
    a, b = y + rng.normal(0, 1, (2, 4)), y + rng.normal(0.5, 1.5, (2, 4))
    d = (y - a) ** 2 - (y - b) ** 2
    for unit, units in (("cell", d.reshape(-1)), ("eye", d.sum(axis=0))):
        signs = np.array([[1 - 2 * ((k >> j) & 1) for j in range(units.size)] for k in range(2 ** units.size)])
        exact = np.mean(np.abs(signs @ units) >= abs(units.sum()) - 1e-12)
        assert P.exact_permutation_p(y, a, b, unit=unit) == pytest.approx(exact)
        mc = P.permutation_test(y, a, b, "mse", n_perm=20_000, rng=1, unit=unit)
        assert abs(mc - exact) < 4 * np.sqrt(exact * (1 - exact) / 20_000) + 1e-4


# --- (4) power and coverage ---------------------------------------------------------------------

def test_a_large_true_difference_is_distinguishable():
    rng = np.random.default_rng(1)
    y = rng.normal(-5, 5, 150)
    a = y + rng.normal(0, 1.0, (3, 150))  # MSE about 1
    b = y + rng.normal(0, 2.5, (3, 150))  # MSE about 6
    for metric, sign in (("mse", -1), ("r2", 1)):
        r = P.paired_difference(long(y, a), long(y, b), metric)
        assert r.distinguishable and np.sign(r.diff) == sign and r.ci_low < r.diff < r.ci_high
        assert r.p_value == pytest.approx(1 / (1 + P.N_PERM))


@pytest.mark.slow
@pytest.mark.parametrize("name, n_seeds, eye_sd, cell_sd", [
    ("one seed", 1, 0.0, 2.0),
    ("three seeds, eye-level differences", 3, 2.0, 0.5),
    ("three seeds, per-(seed, eye) noise", 3, 0.0, 2.0),
])
def test_pure_noise_coverage_and_permutation_size(name, n_seeds, eye_sd, cell_sd):
    """Over repeated draws where A and B are exchangeable (true difference 0): the 95 % interval
    covers 0 about 95 % of the time, within 3 binomial SDs, except where resampling seeds and eyes
    counts the per-(seed, eye) noise twice, where it is conservative (module docstring); the
    per-eye permutation test rejects at about 5 %, the per-(seed, eye) one far more often when the
    differences persist across seeds."""
    rng, draws = np.random.default_rng(11), 200
    covered, rejected = 0, {unit: 0 for unit in P.UNITS}
    for _ in range(draws):
        y, a, b = null_draw(rng, n_seeds, 100, eye_sd, cell_sd)
        low, high, _ = P.bootstrap_ci(y, a, b, "mse", n_boot=1000, rng=rng)
        covered += low <= 0 <= high
        for unit in P.UNITS:
            rejected[unit] += P.permutation_test(y, a, b, "mse", n_perm=400, rng=rng, unit=unit) <= 0.05
    coverage, tol = covered / draws, 3 * np.sqrt(0.95 * 0.05 / draws)  # 3 SDs: 0.046
    if cell_sd > eye_sd and n_seeds > 1:
        assert coverage >= 0.95 + tol / 3, f"{name}: coverage {coverage} (expected conservative)"
    else:
        assert abs(coverage - 0.95) <= tol, f"{name}: coverage {coverage}"
    size_tol = 3 * np.sqrt(0.05 * 0.95 / draws)
    assert rejected["eye"] / draws <= 0.05 + size_tol, f"{name}: per-eye test size {rejected['eye'] / draws}"
    if eye_sd > cell_sd:
        assert rejected["cell"] / draws > 0.15, f"{name}: per-(seed, eye) test size {rejected['cell'] / draws}"
    else:
        assert rejected["cell"] / draws <= 0.05 + size_tol


def test_two_thousand_replicates_take_well_under_a_second():
    y, a, b = null_draw(np.random.default_rng(0), 3, 300, 1.0, 1.0)
    start = time.perf_counter()
    P.bootstrap_ci(y, a, b, "r2")
    for unit in P.UNITS:
        P.permutation_test(y, a, b, "r2", unit=unit)
    assert time.perf_counter() - start < 1.0  # about 0.2 s here (2 shared cores)


# --- (5) alignment errors -----------------------------------------------------------------------

def test_misaligned_seeds_eyes_and_labels_are_errors_naming_them():
    y, a, b = null_draw(np.random.default_rng(0), 2, 5, 1.0, 1.0)
    with pytest.raises(ValueError, match=r"re-m3dr has seed\(s\) \[7\] that naive-fusion lacks"):
        P.paired_difference(long(y, a, seeds=[0, 7]), long(y, b), "r2", ("re-m3dr", "naive-fusion"))
    with pytest.raises(ValueError, match=r"naive-fusion has seed\(s\) \[1\] that re-m3dr lacks"):
        P.paired_difference(long(y, a[:1]), long(y, b), "r2", ("re-m3dr", "naive-fusion"))
    swapped = [f"e{i}" for i in (0, 1, 3, 2, 4)]
    with pytest.raises(ValueError, match=r"naive-fusion seed 0: eye 'e3' at position 2 where 'e2' is expected"):
        P.paired_difference(long(y, a), long(y, b, ids=swapped), "mse", ("re-m3dr", "naive-fusion"))
    shifted = long(y, a)
    shifted.loc[(shifted.seed == 1) & (shifted.eye == "e4"), "eye"] = "e9"
    with pytest.raises(ValueError, match=r"re-m3dr seed 1: eye 'e9' at position 4 where 'e4' is expected"):
        P.paired_difference(shifted, long(y, b), "mse", ("re-m3dr", "naive-fusion"))
    relabelled = long(y, b)
    relabelled.loc[relabelled.eye == "e1", "y"] += 1
    with pytest.raises(ValueError, match=r"naive-fusion seed 0: eye 'e1' has label"):
        P.paired_difference(long(y, a), relabelled, "mse", ("re-m3dr", "naive-fusion"))
    with pytest.raises(ValueError, match="metric must be one of"):
        P.paired_difference(long(y, a), long(y, b), "mae")


# --- the table and the reader -------------------------------------------------------------------

def write_cell(folder, key, recipe, seed, models, ids, y, preds, with_test=True):
    cell = folder / "cells" / key
    (cell / "results").mkdir(parents=True)
    (cell / "cell.json").write_text(json.dumps({"key": key, "index": 0, "groups": ["table2"], "swept": [],
                                                "result": "results/train_recipe.json",
                                                "settings": {"RECIPE": recipe, "SEED": seed}}))
    rows = [{"recipe": recipe, "seed": seed, "model": m, "test_r2": 0.0, "test_predictions": list(p)}
            for m, p in zip(models, preds)]
    result = {"parameters": {}, "rows": rows, **({"test": {"ids": ids, "y": list(y)}} if with_test else {})}
    (cell / "results" / "train_recipe.json").write_text(json.dumps(result))


def test_table_from_a_sweep_folder(tmp_path):
    rng = np.random.default_rng(2)
    ids, y = [f"syn{i:05d}" for i in range(30)], rng.normal(-5, 5, 30)
    for seed in (0, 1, 2):
        write_cell(tmp_path, f"re-m3dr__seed{seed}", "re-m3dr", seed, ["fusion"], ids, y, [y + rng.normal(0, 1, 30)])
        write_cell(tmp_path, f"naive__seed{seed}", "naive-fusion", seed, ["fusion"], ids, y, [y + rng.normal(0, 3, 30)])
        write_cell(tmp_path, f"am-only__seed{seed}", "am-only", seed, ["fundus", "oct"], ids, y,
                   [y + rng.normal(0, 4, 30), y + rng.normal(0, 2, 30)])
    write_cell(tmp_path, "old__seed0", "wo-am", 0, ["fusion"], ids, y, [y], with_test=False)
    with pytest.warns(UserWarning, match=r"1 finished cell\(s\) .* no per-eye test predictions .*old__seed0"):
        predictions = eye_predictions(tmp_path)
    assert predictions.attrs["without"] == ["old__seed0"]
    assert len(predictions) == 3 * 4 * 30 and list(predictions.columns) == ["cell", "recipe", "seed", "model", "eye",
                                                                            "y", "prediction"]
    table = P.paired_table(predictions, [("re-m3dr", "naive-fusion"), ("re-m3dr", ("am-only", "oct"))], n_boot=300,
                           n_perm=300)
    assert list(table.columns) == list(P.TABLE_COLUMNS) and len(table) == 4
    first = table.iloc[0]
    assert (first.a, first.b, first.metric, first.n_seeds, first.n_eyes) == ("re-m3dr", "naive-fusion", "r2", 3, 30)
    assert first.distinguishable and first.ci_low > 0 and table.iloc[1].ci_high < 0
    assert table.iloc[2].b == "am-only [oct]"
    again = P.paired_table(predictions, [("re-m3dr", ("am-only", "oct"))], n_boot=300, n_perm=300)
    pd.testing.assert_frame_equal(again, table.iloc[2:].reset_index(drop=True))  # rows do not depend on each other
    table.to_csv(tmp_path / "paired.csv", index=False)
    with pytest.raises(ValueError, match=r"recipe 'am-only' has models \['fundus', 'oct'\]: name one"):
        P.paired_table(predictions, [("re-m3dr", "am-only")])
    with pytest.raises(ValueError, match=r"no per-eye predictions of recipe 'wo-am'"):
        P.paired_table(predictions, [("wo-am", "re-m3dr")])


def test_pairs_are_kept_only_where_both_recipes_have_predictions():
    from remd_core.experiments.paired import available

    predictions = pd.DataFrame({"recipe": ["re-m3dr", "wo-am"], "model": "fusion"})
    pairs = [("wo-am", "re-m3dr"), ("re-m3dr", "naive-fusion"), (("wo-am", "fusion"), ("re-m3dr", "fusion"))]
    assert available(pairs, predictions) == [pairs[0], pairs[2]]
    assert available(pairs, predictions.iloc[:0]) == []
