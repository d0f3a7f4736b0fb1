"""Paired comparisons of two recipes trained on the same seeds and data: is a difference in test
R2 or MSE distinguishable from noise?

Two recipes A and B, each trained with seeds ``s = 1..S`` on one data split, predict the same test
eyes ``i = 1..N``. The statistic is the mean over seeds of ``metric(A_s) - metric(B_s)``, with
``metric`` the test R2 or MSE of ``remd_core.metrics`` (MSE in dB^2 for MD, R2 = 1 - SSE / SST on
the test eyes). Both are functions of the per-eye squared-error differences
``d[s, i] = (y_i - A_si)^2 - (y_i - B_si)^2``: the MSE difference is ``mean(d)`` and the R2
difference is ``-sum_i d[s, i] / SST`` averaged over seeds, so the two only differ by the scale
``SST`` (the labels' spread over the eyes used).

**Paired bootstrap interval** (``bootstrap_ci``; Efron & Tibshirani, *An Introduction to the
Bootstrap*, 1993, ch. 13, percentile interval; section 3.8 of Davison & Hinkley, *Bootstrap
Methods and their Application*, 1997, for data with two levels). A replicate resamples the seeds
with replacement and, independently, the test eyes with replacement; the same eye indices serve A
and B and every seed of the replicate (so the pairing, and the eyes' difficulty shared by A and B,
are kept), and the statistic is recomputed. The interval is the central ``level`` percentile range
of the replicates. Seeds and eyes are crossed, not nested: every seed predicts every eye. Resampling
both factors captures variation from the test eyes (a different test set) and from training
(different seeds). Limits:

- With 3 seeds, the seed level carries little information: a seed resample is one of 10 multisets
  of the three runs, its variance is ``(S - 1) / S = 2/3`` of the plug-in estimate's, and nothing
  beyond the three observed runs can appear. An interval over 3 seeds describes seed noise poorly;
  with 1 seed (the smoke profile) it is an interval over test eyes only, conditional on that run.
- Resampling both factors of a crossed design counts the seed x eye residual twice (Owen, "The
  pigeonhole bootstrap", Ann. Appl. Stat. 2007): when the differences vary mostly per (seed, eye)
  rather than per eye, the interval is conservative (wider than nominal). When they vary mostly per
  eye (A is better on some eyes in every seed) it is close to nominal. ``tests/unit/experiments/test_paired.py``
  measures both cases.
- A percentile interval of a mean of N about 100 values undercovers slightly (about 94 % for 95 %).
- With few test eyes the R2 interval is wide and skewed: a replicate whose resampled eyes have a
  small label spread divides by a small SST (at the smoke profile's 16 test eyes, re-m3dr minus
  naive-fusion is +0.000 with an interval of [-0.77, +0.07]); the MSE interval is steadier there.

**Paired permutation test** (``permutation_test``; the sign-flip test of Fisher, *The Design of
Experiments*, 1935, section 21; as the approximate randomization test of Noreen, *Computer-Intensive
Methods for Testing Hypotheses*, 1989, and Dror et al., "The Hitchhiker's Guide to Testing
Statistical Significance in NLP", ACL 2018). Under H0 the predictions of A and B are exchangeable
within each unit: a permutation swaps them with probability 1/2 independently per unit, which flips
the sign of ``d`` there, and recomputes the statistic; the two-sided p-value is
``(1 + #{|stat_perm| >= |stat_obs|}) / (1 + n_perm)`` (Phipson & Smyth, "Permutation p-values should
never be zero", Stat. Appl. Genet. Mol. Biol. 2010). The swap leaves SST alone, so R2 and MSE get
the same p-value. The unit:

- ``unit="cell"``: each (seed, eye) on its own. This assumes that how A and B differ on one eye does
  not persist across seeds. When it does (A better on the same eyes in every seed, as a recipe that
  treats the tail differently is), per-(seed, eye) swaps understate the statistic's spread: in the
  simulation of ``tests/unit/experiments/test_paired.py`` (3 seeds, 100 eyes, eye-level differences) this test
  rejected a true H0 in about a quarter of the draws at the 5 % level.
- ``unit="eye"`` (the default): an eye's predictions are swapped the same way in every seed, which
  stays valid in both cases (about 5 % there). With 1 seed the two are the same test.

Neither unit, nor the bootstrap, can account well for a seed effect (one run of A better on every
eye) with 3 seeds. The ``distinguishable`` column of ``paired_table`` is decided by the interval
alone; the p-value is shown beside it.

Inputs are long tables, one row per (seed, eye) of one recipe: columns ``seed``, ``eye`` (the test
eye's id), ``y`` (its label) and ``prediction``, eyes in test-split order; ``results.eye_predictions``
reads them from a sweep folder. Both methods are vectorised in numpy (2000 replicates of a few
hundred eyes x 3 seeds take a few tens of milliseconds).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from ..evaluation import metrics as M

METRICS = {"r2": M.r2, "mse": M.mse}
LEVEL, N_BOOT, N_PERM, SEED = 0.95, 2000, 2000, 0
UNITS, UNIT = ("cell", "eye"), "eye"
CHUNK = 4_000_000  # values per block of permutation signs (32 MB of float64)
TABLE_COLUMNS = ("a", "b", "metric", "mean_a", "mean_b", "diff", "ci_low", "ci_high", "p_value", "distinguishable",
                 "n_seeds", "n_eyes", "level", "n_boot", "n_perm", "unit")


@dataclass(frozen=True)
class Aligned:
    """Two recipes' predictions on the same test eyes: ``a`` and ``b`` are ``[S, N]`` (seeds x
    eyes), ``y`` the ``N`` labels, ``seeds`` and ``eyes`` (ids) in order."""

    y: np.ndarray
    a: np.ndarray
    b: np.ndarray
    seeds: tuple
    eyes: tuple


@dataclass(frozen=True)
class PairedResult:
    """``diff`` = mean over seeds of metric(A) - metric(B), its percentile interval ``ci_low,
    ci_high`` at ``level``, the permutation p-value and the sizes it came from."""

    metric: str
    mean_a: float
    mean_b: float
    diff: float
    ci_low: float
    ci_high: float
    p_value: float
    n_seeds: int
    n_eyes: int
    level: float
    n_boot: int
    n_perm: int
    unit: str

    @property
    def distinguishable(self) -> bool:
        """The interval excludes 0."""
        return bool(self.ci_low > 0 or self.ci_high < 0)


def _per_seed(frame: pd.DataFrame, name: str) -> dict:
    missing = sorted({"seed", "eye", "y", "prediction"} - set(frame.columns))
    if missing:
        raise ValueError(f"predictions of {name} lack column(s) {missing}")
    out = {}
    for seed, rows in frame.groupby("seed", sort=True):
        eyes = rows["eye"].astype(str).tolist()
        if len(set(eyes)) != len(eyes):
            dup = next(e for e in eyes if eyes.count(e) > 1)
            raise ValueError(f"{name} seed {seed}: eye {dup!r} appears more than once")
        out[seed] = (eyes, rows["y"].to_numpy(np.float64), rows["prediction"].to_numpy(np.float64))
    return out


def _first_mismatch(eyes: list, ref: list) -> str:
    for k, (e, r) in enumerate(zip(eyes, ref)):
        if e != r:
            return f"eye {e!r} at position {k} where {r!r} is expected"
    return f"{len(eyes)} eyes where {len(ref)} are expected"


def align(a: pd.DataFrame, b: pd.DataFrame, names: tuple[str, str] = ("A", "B")) -> Aligned:
    """Check that ``a`` and ``b`` (long tables, see the module docstring) hold the same seeds and,
    in every seed, the same eye ids in the same order with the same labels, and stack them.
    Raises ``ValueError`` naming the recipe, seed and eye that break this."""
    (na, pa), (nb, pb) = (names[0], _per_seed(a, names[0])), (names[1], _per_seed(b, names[1]))
    if not pa or not pb:
        raise ValueError(f"no predictions of {na if not pa else nb}")
    for this, other, name, other_name in ((pa, pb, na, nb), (pb, pa, nb, na)):
        extra = sorted(set(this) - set(other))
        if extra:
            raise ValueError(f"{name} has seed(s) {extra} that {other_name} lacks: a paired comparison needs the "
                             f"same seeds ({other_name}: {sorted(other)})")
    seeds = sorted(pa)
    ref_eyes, ref_y = pa[seeds[0]][0], pa[seeds[0]][1]
    for name, per_seed in ((na, pa), (nb, pb)):
        for seed in seeds:
            eyes, y, _ = per_seed[seed]
            if eyes != ref_eyes:
                raise ValueError(f"{name} seed {seed}: {_first_mismatch(eyes, ref_eyes)} (the test eyes of {na} seed "
                                 f"{seeds[0]}); paired recipes must predict the same eyes in the same order")
            bad = np.flatnonzero(y != ref_y)
            if bad.size:
                k = bad[0]
                raise ValueError(f"{name} seed {seed}: eye {eyes[k]!r} has label {y[k]:g} where {na} seed {seeds[0]} "
                                 f"has {ref_y[k]:g}")
    stack = lambda per_seed: np.stack([per_seed[s][2] for s in seeds])  # noqa: E731
    return Aligned(y=ref_y, a=stack(pa), b=stack(pb), seeds=tuple(seeds), eyes=tuple(ref_eyes))


def _check(y, a, b, metric: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {sorted(METRICS)}, got {metric!r}")
    y, a, b = np.asarray(y, np.float64), np.atleast_2d(np.asarray(a, np.float64)), np.atleast_2d(np.asarray(b, np.float64))
    if y.ndim != 1 or a.shape != b.shape or a.shape[1] != y.size:
        raise ValueError(f"a and b must be [seeds, eyes] over the {y.size} labels, got {a.shape} and {b.shape}")
    if not (np.isfinite(y).all() and np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("labels and predictions must be finite")
    return y, a, b


def statistic(y, a, b, metric: str) -> float:
    """Mean over seeds of ``metric(y, a[s]) - metric(y, b[s])``, with ``remd_core.metrics``."""
    y, a, b = _check(y, a, b, metric)
    f = METRICS[metric]
    return float(np.mean([f(y, a[s]) - f(y, b[s]) for s in range(a.shape[0])]))


def _from_sums(total: np.ndarray, sst: np.ndarray | float, n_seeds: int, n_eyes: int, metric: str) -> np.ndarray:
    """The statistic from ``total`` = sum over the (resampled or sign-flipped) seeds and eyes of
    ``d[s, i]``: MSE difference ``total / (S N)``, R2 difference ``-total / (S SST)``."""
    if metric == "mse":
        return total / (n_seeds * n_eyes)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(sst > 0, -total / (n_seeds * np.where(sst > 0, sst, 1.0)), np.nan)


def bootstrap_ci(y, a, b, metric: str, level: float = LEVEL, n_boot: int = N_BOOT,
                 rng: np.random.Generator | int = SEED) -> tuple[float, float, np.ndarray]:
    """Percentile interval of the paired two-level bootstrap (module docstring): ``(low, high,
    replicates)``. Each replicate draws seed counts ``[S]`` and eye counts ``[N]`` (multinomial, i.e.
    resampling with replacement) and weights ``d`` by both. Replicates whose eyes have a constant
    label (R2 undefined) are left out of the interval."""
    y, a, b = _check(y, a, b, metric)
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    rng = np.random.default_rng(rng)
    (S, N), d = a.shape, (y - a) ** 2 - (y - b) ** 2
    ws = rng.multinomial(S, np.full(S, 1.0 / S), size=n_boot).astype(np.float64)  # [R, S]
    wi = rng.multinomial(N, np.full(N, 1.0 / N), size=n_boot).astype(np.float64)  # [R, N]
    total = np.einsum("rs,sn,rn->r", ws, d, wi)
    mean = wi @ y / N
    sst = np.einsum("rn,rn->r", wi, (y[None, :] - mean[:, None]) ** 2)
    reps = _from_sums(total, sst, S, N, metric)
    kept = reps[np.isfinite(reps)]
    if not kept.size:
        return float("nan"), float("nan"), reps
    low, high = np.quantile(kept, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high), reps


def permutation_test(y, a, b, metric: str, n_perm: int = N_PERM, rng: np.random.Generator | int = SEED,
                     unit: str = UNIT) -> float:
    """Two-sided p-value of the paired permutation (sign-flip) test (module docstring). ``unit``:
    ``"eye"`` swaps A and B the same way in every seed of an eye, ``"cell"`` independently per
    (seed, eye).
    Ties are counted with a relative tolerance of 1e-9 of ``sum |d|`` (floating-point sums of the
    same values in another order differ in the last bits)."""
    y, a, b = _check(y, a, b, metric)
    if unit not in UNITS:
        raise ValueError(f"unit must be one of {UNITS}, got {unit!r}")
    if n_perm < 1:
        raise ValueError(f"n_perm must be >= 1, got {n_perm}")
    rng = np.random.default_rng(rng)
    d = (y - a) ** 2 - (y - b) ** 2
    if unit == "eye":
        d = d.sum(axis=0, keepdims=True)  # one sign per eye, shared by its seeds
    observed = abs(d.sum())  # R2 and MSE are fixed multiples of this sum: one p for both
    tol = 1e-9 * np.abs(d).sum()
    block = max(1, CHUNK // d.size)
    extreme = 0
    for start in range(0, n_perm, block):
        signs = rng.integers(0, 2, size=(min(block, n_perm - start), *d.shape), dtype=np.int8) * 2 - 1
        extreme += int(np.count_nonzero(np.abs(np.einsum("rsn,sn->r", signs, d)) >= observed - tol))
    return (1 + extreme) / (1 + n_perm)


def exact_permutation_p(y, a, b, metric: str = "mse", unit: str = UNIT) -> float:
    """The exact two-sided p-value over all ``2^units`` swaps (tiny examples only, at most 20
    units): the share of sign patterns whose ``|sum d|`` reaches the observed one, identity included."""
    y, a, b = _check(y, a, b, metric)
    if unit not in UNITS:
        raise ValueError(f"unit must be one of {UNITS}, got {unit!r}")
    d = (y - a) ** 2 - (y - b) ** 2
    d = (d.sum(axis=0) if unit == "eye" else d).reshape(-1)
    if d.size > 20:
        raise ValueError(f"{d.size} units: 2^{d.size} swaps is too many to enumerate")
    signs = 1 - 2 * ((np.arange(2 ** d.size)[:, None] >> np.arange(d.size)) & 1)
    return float(np.mean(np.abs(signs @ d) >= abs(d.sum()) - 1e-9 * np.abs(d).sum()))


def paired_difference(a: pd.DataFrame, b: pd.DataFrame, metric: str, names: tuple[str, str] = ("A", "B"),
                      level: float = LEVEL, n_boot: int = N_BOOT, n_perm: int = N_PERM, seed: int = SEED,
                      unit: str = UNIT) -> PairedResult:
    """Difference ``metric(A) - metric(B)`` (mean over seeds) of two recipes' predictions (long
    tables, checked by ``align``), with its paired bootstrap interval and permutation p-value, both
    drawn from ``numpy.random.default_rng(seed)``."""
    data = align(a, b, names)
    rng = np.random.default_rng(seed)
    low, high, _ = bootstrap_ci(data.y, data.a, data.b, metric, level, n_boot, rng)
    f = METRICS[metric]
    return PairedResult(
        metric=metric, mean_a=float(np.mean([f(data.y, p) for p in data.a])),
        mean_b=float(np.mean([f(data.y, p) for p in data.b])), diff=statistic(data.y, data.a, data.b, metric),
        ci_low=low, ci_high=high, p_value=permutation_test(data.y, data.a, data.b, metric, n_perm, rng, unit),
        n_seeds=len(data.seeds), n_eyes=len(data.eyes), level=level, n_boot=n_boot, n_perm=n_perm, unit=unit)


def _label(side) -> str:
    return side if isinstance(side, str) else f"{side[0]} [{side[1]}]"


def _select(predictions: pd.DataFrame, side) -> pd.DataFrame:
    """The rows of one recipe, or of one ``(recipe, model)``; an error when the recipe has several
    models and none is named, or when one (recipe, model, seed) comes from several cells."""
    recipe, model = (side, None) if isinstance(side, str) else side
    rows = predictions[predictions["recipe"] == recipe]
    if rows.empty:
        raise ValueError(f"no per-eye predictions of recipe {recipe!r}; recipes with them: "
                         f"{sorted(predictions['recipe'].unique())}")
    models = list(dict.fromkeys(rows["model"]))
    if model is None and len(models) > 1:
        raise ValueError(f"recipe {recipe!r} has models {models}: name one, e.g. ({recipe!r}, {models[0]!r})")
    rows = rows[rows["model"] == (model or models[0])]
    if rows.empty:
        raise ValueError(f"recipe {recipe!r} has no model {model!r}; it has {models}")
    cells = rows.groupby("seed")["cell"].nunique()
    if (cells > 1).any():
        seed = cells[cells > 1].index[0]
        raise ValueError(f"recipe {_label(side)} seed {seed} has predictions from several cells "
                         f"{sorted(rows.loc[rows['seed'] == seed, 'cell'].unique())}: select one sub-grid first")
    return rows


def paired_table(predictions: pd.DataFrame, pairs, metrics=("r2", "mse"), level: float = LEVEL,
                 n_boot: int = N_BOOT, n_perm: int = N_PERM, seed: int = SEED, unit: str = UNIT) -> pd.DataFrame:
    """One tidy row per (pair, metric) for ``pairs`` of ``(A, B)``, each a recipe name or a
    ``(recipe, model)`` tuple, from ``predictions`` (``results.eye_predictions``: columns ``cell,
    recipe, model, seed, eye, y, prediction``): ``a, b, metric, mean_a, mean_b, diff`` (A - B),
    ``ci_low, ci_high, p_value, distinguishable`` (the interval excludes 0), ``n_seeds, n_eyes`` and
    the settings. Every row uses ``default_rng(seed)``, so a row does not depend on the others."""
    rows = []
    for side_a, side_b in pairs:
        names = (_label(side_a), _label(side_b))
        a, b = _select(predictions, side_a), _select(predictions, side_b)
        for metric in metrics:
            result = paired_difference(a, b, metric, names, level, n_boot, n_perm, seed, unit)
            rows.append({"a": names[0], "b": names[1], **asdict(result), "distinguishable": result.distinguishable})
    return pd.DataFrame(rows, columns=list(TABLE_COLUMNS))


def against(sides, reference) -> list[tuple]:
    """Pairs ``(side, reference)`` for each of ``sides`` (recipe names or ``(recipe, model)``, e.g. a
    summary's index) other than the reference recipe itself: a table's rows against one baseline."""
    recipe = reference if isinstance(reference, str) else reference[0]
    return [(side, reference) for side in sides if (side if isinstance(side, str) else side[0]) != recipe]


def available(pairs, predictions: pd.DataFrame) -> list[tuple]:
    """The ``pairs`` whose two recipes both have per-eye predictions in ``predictions`` (a run of some
    sub-grids only, such as ``make run``'s Table 2, has no naive fusion to compare against)."""
    have = set(predictions["recipe"]) if not predictions.empty else set()
    recipe = lambda side: side if isinstance(side, str) else side[0]  # noqa: E731
    return [(a, b) for a, b in pairs if recipe(a) in have and recipe(b) in have]


def verdicts(table: pd.DataFrame, metric: str = "r2") -> str:
    """One line per pair of a ``paired_table`` for ``metric``: the difference, its interval and
    p-value, and whether it is distinguishable from noise (the interval excludes 0)."""
    name = {"r2": "R2", "mse": "MSE (dB^2)"}[metric]
    return "\n".join(
        f"{r.a} - {r.b}: {name} {r.diff:+.3f}, {r.level:.0%} CI [{r.ci_low:+.3f}, {r.ci_high:+.3f}], p = {r.p_value:.3f} "
        f"({r.n_seeds} seed(s) x {r.n_eyes} eyes): {'distinguishable' if r.distinguishable else 'NOT distinguishable'}"
        " from noise" for r in table[table["metric"] == metric].itertuples())
