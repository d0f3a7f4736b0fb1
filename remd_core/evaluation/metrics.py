"""Regression metrics, the STAGE challenge score, and per-region (many / medium / few) reports.

Every function accepts numpy arrays, lists or torch tensors (detached and moved to the CPU here) and
returns plain floats or pandas DataFrames, so the same code scores a notebook cell and a training loop.

Sources
-------
- R^2, MSE, MAE: the three metrics of the Re-M3Dr paper (seed 001, section 5.1, "Metrics").
- SMAPE and the challenge score ``0.5 / (SMAPE + 0.1) + 5 R^2``: the MICCAI STAGE challenge (task 1,
  MD prediction). See ``smape`` for the scale convention.
- Shot (region) metrics: Yang et al., "Delving into Deep Imbalanced Regression", ICML 2021, and their
  code (YyzHarry/imbalanced-regression, ``shot_metrics``): the label is binned, each bin is "many",
  "medium" or "few" by its TRAINING count (many > 100, few < 20 there), and each region reports MSE,
  L1 and the geometric mean (GM) of absolute errors pooled over its test samples. Their thresholds
  are for 10^4 to 10^5 training samples; ``region_labels`` scales them (see there).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..data.labels import REGIONS, Regions, head_tail_split, region_labels  # noqa: F401 (their home: data.labels)

SMAPE_EPS = 1e-3
"""Floor of the SMAPE denominator ``(|y| + |yhat|) / 2``. MD is reported to 0.01 dB and is often
near 0 dB, so a pair with both |y| and |yhat| below 1e-3 dB is "zero" for practical purposes; the
floor makes ``y = yhat = 0`` score 0 instead of 0/0 = NaN and changes no term whose denominator is
at least 1e-3. Each term stays in [0, 2] because ``|y - yhat| <= |y| + |yhat|``."""

GM_FLOOR = 1e-3
"""Floor on absolute errors inside the geometric mean: one exact prediction would otherwise make
the GM of a whole region 0 (``scipy.stats.gmean``, used by the reference code, returns 0 and warns)."""



def _np(x) -> np.ndarray:
    """A float64 1-D numpy copy of an array-like or a torch tensor."""
    if hasattr(x, "detach"):  # torch tensor, without importing torch
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64).reshape(-1)


def _pair(y, yhat) -> tuple[np.ndarray, np.ndarray]:
    y, yhat = _np(y), _np(yhat)
    if y.shape != yhat.shape:
        raise ValueError(f"y has {y.size} values but yhat has {yhat.size}")
    return y, yhat


def mse(y, yhat) -> float:
    """Mean squared error."""
    y, yhat = _pair(y, yhat)
    return float(np.mean((y - yhat) ** 2)) if y.size else float("nan")


def mae(y, yhat) -> float:
    """Mean absolute error."""
    y, yhat = _pair(y, yhat)
    return float(np.mean(np.abs(y - yhat))) if y.size else float("nan")


def r2(y, yhat) -> float:
    """Coefficient of determination ``1 - SS_res / SS_tot`` (SS_tot about the mean of ``y``).

    NaN when fewer than 2 samples or when ``y`` is constant (SS_tot = 0): R^2 is undefined there.
    (scikit-learn instead returns 1.0 or 0.0 in the constant case; we prefer an honest NaN.)
    """
    y, yhat = _pair(y, yhat)
    if y.size < 2:
        return float("nan")
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    if ss_tot == 0.0:
        return float("nan")
    return 1.0 - float(np.sum((y - yhat) ** 2)) / ss_tot


def smape(y, yhat, eps: float = SMAPE_EPS) -> float:
    """Symmetric mean absolute percentage error as a FRACTION (0 to 2), not a percentage:

        SMAPE = mean( |y - yhat| / max((|y| + |yhat|) / 2, eps) )

    Scale convention: the STAGE challenge leaderboard reports SMAPE as a fraction (the public
    STAGE baseline lixiang007666/STAGE_baseline2 lists leaderboard values such as 0.227, and its own
    ``metrics.py`` notes that its percentage version is "inconsistent with the smape value scale of
    the test script in the leaderboard"), and the challenge score ``0.5 / (SMAPE + 0.1)`` only makes
    sense for a fraction. Multiply by 100 for a percentage. The ``eps`` floor is ours (the sources
    do not guard the denominator); see ``SMAPE_EPS``.
    """
    if eps <= 0:
        raise ValueError(f"eps must be positive, got {eps}")
    y, yhat = _pair(y, yhat)
    if not y.size:
        return float("nan")
    denom = np.maximum((np.abs(y) + np.abs(yhat)) / 2.0, eps)
    return float(np.mean(np.abs(y - yhat) / denom))


def stage_score(y, yhat, eps: float = SMAPE_EPS) -> float:
    """The STAGE challenge (MICCAI 2023/2024, MD prediction task) score:
    ``0.5 / (SMAPE + 0.1) + 5 * R^2``, SMAPE as a fraction. Higher is better; a perfect prediction
    scores 5 + 5 = 10."""
    return 0.5 / (smape(y, yhat, eps) + 0.1) + 5.0 * r2(y, yhat)


def interval_coverage(y, lo, hi) -> float:
    """Share of targets inside their closed predictive interval ``[lo, hi]``."""
    y, lo = _pair(y, lo)
    _, hi = _pair(y, hi)
    if y.size == 0:
        raise ValueError("interval_coverage needs at least one target")
    return float(np.mean((y >= lo) & (y <= hi)))


def interval_mean_width(lo, hi) -> float:
    """Mean width ``hi - lo`` of the predictive intervals."""
    lo, hi = _pair(lo, hi)
    if lo.size == 0:
        raise ValueError("interval_mean_width needs at least one interval")
    return float(np.mean(hi - lo))


INTERVAL_LEVEL = 0.9
"""The level of the predictive intervals the reports score (``regression_report(..., interval=)``)."""


def regression_report(y, yhat, interval=None) -> dict:
    """All scalar metrics at once: n, R^2, MSE, MAE, SMAPE (fraction) and the STAGE score; with
    ``interval = (lo, hi)`` (a model's central ``INTERVAL_LEVEL`` predictive intervals, one per
    sample) also ``coverage`` (share of targets inside) and ``interval_width`` (mean width)."""
    y, yhat = _pair(y, yhat)
    report = {"n": int(y.size), "r2": r2(y, yhat), "mse": mse(y, yhat), "mae": mae(y, yhat),
              "smape": smape(y, yhat), "stage_score": stage_score(y, yhat)}
    if interval is not None:
        lo, hi = interval
        report.update(coverage=interval_coverage(y, lo, hi), interval_width=interval_mean_width(lo, hi))
    return report


def gmean_abs_error(y, yhat, floor: float = GM_FLOOR) -> float:
    """Geometric mean of absolute errors, each floored at ``floor`` (see ``GM_FLOOR``)."""
    y, yhat = _pair(y, yhat)
    if not y.size:
        return float("nan")
    return float(np.exp(np.mean(np.log(np.maximum(np.abs(y - yhat), floor)))))


# ----------------------------------------------------------------------------------------------
# Regions of the label distribution


def per_region_report(y, yhat, regions) -> pd.DataFrame:
    """One row per region (many, medium, few, all): n, MSE, MAE, GM of absolute errors, R^2.

    ``regions`` is a ``Regions`` (applied to ``y``) or an array of region names per sample. As in
    the reference code, a region's errors are pooled over its samples (not averaged per bin).
    Metrics of an empty region are NaN; R^2 is NaN below 2 samples or for a constant label.
    """
    y, yhat = _pair(y, yhat)
    names = regions.assign(y) if isinstance(regions, Regions) else np.asarray(regions).astype(str).reshape(-1)
    if names.shape != y.shape:
        raise ValueError(f"{names.size} region names for {y.size} samples")
    rows = []
    for region in (*REGIONS, "all"):
        m = np.ones(y.shape, bool) if region == "all" else names == region
        ys, ps = y[m], yhat[m]
        rows.append({"region": region, "n": int(m.sum()), "mse": mse(ys, ps), "mae": mae(ys, ps),
                     "gm": gmean_abs_error(ys, ps), "r2": r2(ys, ps)})
    return pd.DataFrame(rows).set_index("region")


# ----------------------------------------------------------------------------------------------
# Missing-modality patterns


def _pattern_rank(pattern: str) -> tuple[int, str]:
    """Sort key of a missing pattern (``remd_core.data.missing.missing_pattern``): most modalities
    present first ("both", then "a+b+c" by its count of names), "<name> only", "none" last; ties by name."""
    if pattern == "both":
        present = 2
    elif pattern.endswith(" only"):
        present = 1
    elif pattern == "none":
        present = 0
    else:
        present = pattern.count("+") + 1
    return (-present, pattern)


def per_pattern_report(y, yhat, patterns, order=None) -> pd.DataFrame:
    """One row per missing pattern, then "all" (every sample): n, R^2, MSE, MAE.

    ``patterns`` is the pattern of each sample (``remd_core.data.missing.missing_pattern(present,
    names)``: "both", "fundus only", "oct only", ...). Rows follow ``order`` when given (a pattern in
    ``order`` that no sample has gets n = 0 and NaN metrics, as an empty region does in
    ``per_region_report``; a sample's pattern missing from ``order`` is an error); by default the
    observed patterns, most modalities present first, which for fundus + OCT is
    ``remd_core.data.missing.PATTERNS``. R^2 is NaN below 2 samples or for a constant label.
    """
    y, yhat = _pair(y, yhat)
    names = np.asarray(patterns).astype(str).reshape(-1)
    if names.shape != y.shape:
        raise ValueError(f"{names.size} patterns for {y.size} samples")
    observed = sorted(set(names.tolist()), key=_pattern_rank)
    if order is None:
        order = observed
    else:
        order = [str(p) for p in order]
        unlisted = sorted(set(observed) - set(order))
        if unlisted:
            raise ValueError(f"pattern(s) {unlisted} of some samples are not in order {order}")
        if "all" in order or len(set(order)) != len(order):
            raise ValueError(f"order must list distinct patterns and not 'all' (the all-samples row), got {order}")
    rows = []
    for pattern in (*order, "all"):
        m = np.ones(y.shape, bool) if pattern == "all" else names == pattern
        ys, ps = y[m], yhat[m]
        rows.append({"pattern": pattern, "n": int(m.sum()), "r2": r2(ys, ps), "mse": mse(ys, ps), "mae": mae(ys, ps)})
    return pd.DataFrame(rows).set_index("pattern")
