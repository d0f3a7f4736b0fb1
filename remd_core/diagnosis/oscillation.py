"""How much a loss curve oscillates, per group; how often two gradients conflict.

The Re-M3Dr paper (seed 001, section 1, Fig. 2a-c) shows that the unimodal heads' losses oscillate
when the multimodal network trains on all (long-tailed) data. They oscillate much less when it trains
on head-only or tail-only data, or when each modality trains alone. The paper shows curves and gives
no number. ``oscillation_index`` turns a curve into one number, and ``oscillation_table`` computes it
per subset/run so that the comparison in Fig. 2 becomes a table. ``gradient_conflict`` summarises the
cosine between the multimodal and unimodal gradients (section 4, SGM: MinNorm runs when cos < 0).
``probe_oscillation_table`` sets, per head, the batch-loss oscillation beside the oscillation of a
fixed probe set's loss (``diagnosis.probe``), which moves only when the weights do: on long-tailed
labels a batch's loss also moves with how many tail eyes the batch holds, so the batch-loss index
mixes batch composition with optimisation instability, and the probe index does not.

The oscillation index
---------------------
For a curve ``x_0 .. x_{n-1}`` and a window of ``w`` steps, each sliding window ``x_k .. x_{k+w}``
has a total variation ``TV_k = sum_{t=k}^{k+w-1} |x_{t+1} - x_t|`` and a net change
``N_k = |x_{k+w} - x_k|``. ``TV_k - N_k >= 0`` is the movement that the window takes back: twice the
sum of its steps against the window's net direction. It is 0 exactly when the window is monotone.
The index is the mean over windows of this excess, per step, divided by the mean loss level::

    oscillation_index = mean_k (TV_k - N_k) / w / mean_t |x_t|

Why this formula:

- A monotone curve (linear, exponential decay, any smooth monotone shape) scores exactly 0, not
  just a small number. This differs from a moving-average residual or a second difference, which
  score a curved trend such as exponential decay above 0.
- Only local reversals count. A slow change of trend, such as a U-shaped curve, adds only at the
  few windows that contain its turning point, so the overall decrease does not count as oscillation.
- Scale invariance: multiplying the losses by c > 0 multiplies the excess and the mean level by c.
- It reads as a rate. A zig-zag ``L +- a`` that alternates every step scores about ``2a / L``:
  each step moves ``2a`` and none of that is net progress.

A noisy decrease in which no step goes up (every per-step drop larger than the noise) scores 0.
The index measures back-and-forth movement, not residual scatter. The level is the mean of the whole
curve, not of each window, so a curve that falls over orders of magnitude weighs its early,
high-loss windows more. Dividing per window instead would make windows near zero loss explode.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

DEFAULT_WINDOW = 10
"""Steps per window. Reversals within 10 steps count as oscillation (Fig. 2 logs per step). A
slower swing (period well above 10 steps) counts as trend, except at its turning points."""


def _curve(losses) -> np.ndarray:
    if hasattr(losses, "detach"):  # torch tensor, without importing torch
        losses = losses.detach().cpu().numpy()
    x = np.asarray(losses, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(x)):
        raise ValueError("losses contain NaN or inf; drop them first (oscillation_table does)")
    return x


def oscillation_index(losses, window: int = DEFAULT_WINDOW) -> float:
    """Mean per-step movement taken back within sliding windows, divided by the mean |loss|.

    See the module docstring for the formula and the reasons for it. ``losses`` is a per-step curve
    in step order (array, list, Series or tensor). A curve shorter than ``window + 1`` points is
    scored as one window over the whole curve. Returns NaN for fewer than 3 points (at least two
    steps are needed for a reversal) or a zero mean level. Raises ``ValueError`` for ``window < 2``
    or non-finite losses.
    """
    if int(window) != window or window < 2:
        raise ValueError(f"window must be an integer >= 2 steps (a reversal needs two), got {window!r}")
    x = _curve(losses)
    if x.size < 3:
        return float("nan")
    level = np.mean(np.abs(x))
    if level == 0:
        return float("nan")
    w = min(int(window), x.size - 1)
    cum_tv = np.concatenate([[0.0], np.cumsum(np.abs(np.diff(x)))])
    tv = cum_tv[w:] - cum_tv[:-w]
    net = np.abs(x[w:] - x[:-w])
    excess = np.clip(tv - net, 0.0, None)  # >= 0 in exact arithmetic; clip rounding noise
    return float(np.mean(excess) / w / level)


def _as_list(x) -> list[str]:
    if x is None:
        return []
    return [x] if isinstance(x, str) else list(x)


def oscillation_table(history: pd.DataFrame, columns: str | Sequence[str] = ("loss_fundus", "loss_oct"),
                      groups: str | Sequence[str] | None = "subset", window: int = DEFAULT_WINDOW,
                      order_by: str | None = "step") -> pd.DataFrame:
    """``oscillation_index`` of each loss column within each group of a per-step history.

    ``history`` has one row per logged step. ``columns`` are the curves to score, and ``groups`` the
    column(s) that split the history into separate curves, for example ``"subset"`` (all / head /
    tail, as in Fig. 2), ``["subset", "run"]``, or ``None`` for a single curve. Within a group, rows
    are sorted by ``order_by`` if the history has that column (stable sort), else kept in row order.
    NaN and inf entries of a column are dropped before scoring (a column logged at some steps only).

    Returns a tidy frame with one row per (group, column): the group columns, ``column``,
    ``n_steps`` (the finite points used) and ``oscillation``.
    """
    cols, keys = _as_list(columns), _as_list(groups)
    if not cols:
        raise ValueError("columns is empty")
    missing = [c for c in cols + keys if c not in history.columns]
    if missing:
        raise KeyError(f"history has no column(s) {missing}; it has {list(history.columns)}")
    if order_by is not None and order_by in history.columns:
        history = history.sort_values(order_by, kind="stable")
    parts = history.groupby(keys, sort=True, dropna=False) if keys else [((), history)]
    rows = []
    for key, part in parts:
        key = key if isinstance(key, tuple) else (key,)
        for c in cols:
            x = pd.to_numeric(part[c], errors="coerce").to_numpy(dtype=np.float64)
            x = x[np.isfinite(x)]
            rows.append({**dict(zip(keys, key)), "column": c, "n_steps": int(x.size),
                         "oscillation": oscillation_index(x, window)})
    return pd.DataFrame(rows, columns=[*keys, "column", "n_steps", "oscillation"])


def _finite(frame: pd.DataFrame, column: str) -> np.ndarray:
    if column not in frame.columns:
        return np.empty(0)
    x = pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=np.float64)
    return x[np.isfinite(x)]


def probe_heads(history: pd.DataFrame) -> list[str]:
    """The heads with both a batch-loss column ``loss_<head>`` and a probe column ``probe_loss_<head>``."""
    return [c.removeprefix("loss_") for c in history.columns
            if c.startswith("loss_") and c != "loss_extra" and f"probe_{c}" in history.columns]


def probe_oscillation_table(history: pd.DataFrame, heads: str | Sequence[str] | None = None,
                            groups: str | Sequence[str] | None = None, window: int = DEFAULT_WINDOW,
                            probe_window: int | None = None, order_by: str = "step") -> pd.DataFrame:
    """Per head, the oscillation index of the training-batch loss and of the fixed-probe loss side by
    side (``diagnosis.probe``; ``TrainConfig.probe_every``).

    ``history``: one row per step with ``loss_<head>`` (every step) and ``probe_loss_<head>`` (NaN
    except at probe steps), for example a ``FitResult.history``, or several stacked with ``groups``
    columns naming the run (``["model", "subset"]``). ``heads``: None for every head with both
    columns (``probe_heads``). The batch curve is scored over ``window`` steps; the probe curve has
    one point per probe (its NaN rows dropped), so its window is counted in probe points:
    ``probe_window``, None for the batch window in probe points, ``max(2, round(window / k))`` for
    probes every ``k`` steps (``k`` read from the probe rows' steps, per group). A constant curve
    scores 0 (weights that do not change give a constant probe loss); the batch curve of the same
    run still moves with each batch's composition.

    Returns a tidy frame, one row per (group, head) that has either curve: the group columns,
    ``head``, ``batch_steps``, ``batch_oscillation``, ``probe_points``, ``probe_every`` (k),
    ``probe_window`` (probe points) and ``probe_oscillation``; with per-region probe columns
    (``probe_loss_<head>_head``, ``_tail``) also ``probe_oscillation_head`` and ``_tail``."""
    keys = _as_list(groups)
    missing = [c for c in keys if c not in history.columns]
    if missing:
        raise KeyError(f"history has no column(s) {missing}; it has {list(history.columns)}")
    heads = probe_heads(history) if heads is None else _as_list(heads)
    if not heads:
        raise ValueError("no head has both loss_<head> and probe_loss_<head> columns: "
                         "was fit run with probe_every > 0?")
    if probe_window is not None and (int(probe_window) != probe_window or probe_window < 2):
        raise ValueError(f"probe_window must be None or an integer >= 2 probe points, got {probe_window!r}")
    if order_by in history.columns:
        history = history.sort_values(order_by, kind="stable")
    regions = [r for r in ("head", "tail") if any(f"probe_loss_{h}_{r}" in history.columns for h in heads)]
    parts = history.groupby(keys, sort=True, dropna=False) if keys else [((), history)]
    rows = []
    for key, part in parts:
        key = key if isinstance(key, tuple) else (key,)
        for h in heads:
            batch = _finite(part, f"loss_{h}")
            values = (pd.to_numeric(part[f"probe_loss_{h}"], errors="coerce").to_numpy(dtype=np.float64)
                      if f"probe_loss_{h}" in part.columns else np.full(len(part), np.nan))
            probed = np.isfinite(values)
            probe = values[probed]
            if not batch.size and not probe.size:
                continue
            steps = np.diff(part[order_by].to_numpy()[probed]) if order_by in part.columns else np.empty(0)
            every = int(np.median(steps)) if steps.size else 1
            w = int(probe_window) if probe_window is not None else max(2, round(window / max(every, 1)))
            row = {**dict(zip(keys, key)), "head": h, "batch_steps": int(batch.size),
                   "batch_oscillation": oscillation_index(batch, window) if batch.size else float("nan"),
                   "probe_points": int(probe.size), "probe_every": every, "probe_window": w,
                   "probe_oscillation": oscillation_index(probe, w) if probe.size else float("nan")}
            for r in regions:
                x = _finite(part, f"probe_loss_{h}_{r}")
                row[f"probe_oscillation_{r}"] = oscillation_index(x, w) if x.size else float("nan")
            rows.append(row)
    columns = [*keys, "head", "batch_steps", "batch_oscillation", "probe_points", "probe_every", "probe_window",
               "probe_oscillation", *[f"probe_oscillation_{r}" for r in regions]]
    return pd.DataFrame(rows, columns=columns)


def describe_probe_oscillation(table: pd.DataFrame) -> str:
    """One sentence, with the numbers, from a ``probe_oscillation_table``: in how many curves (group
    and head) the probe loss oscillates less than the batch loss, the ranges of both indices and the
    curves' lengths. Curves without both indices (fewer than 3 steps or 3 probes) are counted, not
    compared."""
    both = table[np.isfinite(table["batch_oscillation"]) & np.isfinite(table["probe_oscillation"])]
    skipped = len(table) - len(both)
    note = f"; {skipped} curve{'s' if skipped != 1 else ''} too short for both left out" if skipped else ""
    if both.empty:
        return f"No curve has both indices: they need at least 3 steps and 3 probes{note}."

    def span(x, digits=0):
        lo, hi = x.min(), x.max()
        return f"{lo:.{digits}f}" if lo == hi else f"{lo:.{digits}f} to {hi:.{digits}f}"

    n, below = len(both), int((both["probe_oscillation"] < both["batch_oscillation"]).sum())
    reading = ("so here the batch-loss index overstates how much the weights oscillate: the rest comes from what each "
               "batch holds (its eyes and their augmentation)" if below == n else
               "so here the weights oscillate at least as much as the batch loss does" if below == 0 else
               "so the batch-loss index overstates the weights' oscillation in some curves and not in others")
    return (f"In {below} of {n} curves with both indices ({span(both['batch_steps'])} steps, "
            f"{span(both['probe_points'])} probes each{note}), the fixed probe set's loss oscillates less than the "
            f"training-batch loss (probe {span(both['probe_oscillation'], 3)}, "
            f"batch {span(both['batch_oscillation'], 3)}), "
            f"{reading}.")


def _conflict_summary(cos: np.ndarray) -> dict[str, float]:
    n = int(cos.size)
    if n == 0:
        q = [float("nan")] * 5
        return {"n": 0, "share_negative": float("nan"), "mean": float("nan"), "std": float("nan"),
                **dict(zip(("q05", "q25", "median", "q75", "q95"), q))}
    q = np.quantile(cos, [0.05, 0.25, 0.5, 0.75, 0.95])
    return {"n": n, "share_negative": float(np.mean(cos < 0)), "mean": float(np.mean(cos)),
            "std": float(np.std(cos, ddof=1)) if n > 1 else float("nan"),
            **dict(zip(("q05", "q25", "median", "q75", "q95"), map(float, q)))}


def gradient_conflict(history, column: str = "cos",
                      groups: str | Sequence[str] | None = None) -> pd.Series | pd.DataFrame:
    """Summary of a per-step cosine trace between two gradients (e.g. g_mm and g_uni of SGM).

    ``history`` is a DataFrame with a ``column`` of cosines, or the trace itself (array, list or
    Series). NaN entries (steps without a cosine) are dropped. Returns a Series with ``n``,
    ``share_negative`` (the share of steps with cos < 0, where SGM solves MinNorm), ``mean``,
    ``std`` (ddof=1), and the quantiles ``q05, q25, median, q75, q95``. With ``groups``, returns
    one such row per group as a DataFrame.
    """
    if not isinstance(history, pd.DataFrame):
        if groups is not None:
            raise ValueError("groups needs a DataFrame history")
        history = pd.DataFrame({column: np.asarray(history, dtype=np.float64).reshape(-1)})
    if column not in history.columns:
        raise KeyError(f"history has no column {column!r}; it has {list(history.columns)}")

    def trace(frame):
        x = pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=np.float64)
        return x[np.isfinite(x)]

    keys = _as_list(groups)
    if not keys:
        return pd.Series(_conflict_summary(trace(history)), name=column)
    rows = []
    for key, part in history.groupby(keys, sort=True, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        rows.append({**dict(zip(keys, key)), **_conflict_summary(trace(part))})
    return pd.DataFrame(rows)
