"""When does fusion fail? The outcomes of the coupled-imbalance testbed (``sweeps/fusion_fails.yaml``,
notebook ``06_when_fusion_fails``).

Re-M3Dr (seed 001, sections 1 and 3) claims that on long-tailed multimodal MD data fusion falls below
the best single modality because data imbalance and modality competition amplify each other, and that
AM (section 4.1) and SGM (section 4.2) repair it. The testbed moves one mechanism of the synthetic
generator at a time (``data.synthetic.Config``: tail heaviness, informativeness gap, redundancy, OCT
floor, label noise, a shortcut cue, training-set size) and, at every setting, compares recipes trained
on the same seeds and data, paired over seeds x test eyes (``paired``):

- ``fusion - best unimodal``: naive fusion minus the better unimodal model (the puzzle when < 0);
- ``mmpareto - fusion``: MMPareto (the multimodal optimiser SGM builds on) minus naive fusion;
- ``re-m3dr - fusion``: Re-M3Dr minus naive fusion (the paper's repair);
- ``re-m3dr - control``: Re-M3Dr minus ``pretrained-naive-fusion`` (two-stage training without the
  contrastive term and without SGM): what AM and SGM add beyond two-stage training.

The better unimodal model is chosen per setting on mean VALIDATION R^2 over seeds, not on the test set
the comparison is made on (choosing on test would bias the outcome towards "fusion fails").
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..diagnosis.oscillation import probe_heads, probe_oscillation_table
from .paired import LEVEL, paired_table

KNOBS = ("TAIL", "FUNDUS_DISCORDANCE_DB", "REDUNDANCY", "OCT_FLOOR_UM", "LABEL_NOISE", "SHORTCUT", "NULL_MODALITY",
         "N_EYES")
"""The testbed's notebook parameters (``workbench.runner.LIBRARY_SETTINGS``' data knobs, and the size)."""
UNIMODAL = ("unimodal-oct", "unimodal-fundus")
BEST_UNIMODAL = "best unimodal"
OUTCOMES = (("fusion - best unimodal", "naive-fusion", BEST_UNIMODAL),
            ("mmpareto - fusion", "mmpareto", "naive-fusion"),
            ("re-m3dr - fusion", "re-m3dr", "naive-fusion"),
            ("re-m3dr - control", "re-m3dr", "pretrained-naive-fusion"))
"""(name, recipe A, recipe B): each outcome is metric(A) - metric(B)."""


def mechanism_knobs(grid, group: str) -> list[str]:
    """The testbed knobs that sub-grid ``group`` of ``grid`` sets (not the grid-wide ``PROBE_EVERY``)."""
    return [k for k in grid.groups[group].params if k in KNOBS]


def knobs_in(table: pd.DataFrame) -> list[str]:
    """The testbed knobs that ``table`` (``results.collect``) holds as columns."""
    return [k for k in KNOBS if k in table]


def best_unimodal(table: pd.DataFrame) -> str:
    """The unimodal recipe of ``table`` (one setting's rows) with the higher mean validation R^2."""
    unimodal = table[table["recipe"].isin(UNIMODAL)]
    if unimodal.empty:
        raise ValueError(f"no unimodal rows ({', '.join(UNIMODAL)}) to choose the best modality from")
    return unimodal.groupby("recipe")["val_r2"].mean().idxmax()


def in_group(table: pd.DataFrame, group: str) -> pd.DataFrame:
    """The rows of sub-grid ``group`` and of the default setting, the reference point of every sub-grid
    (one such as ``train_size`` leaves it to the others): the setting whose cells the most sub-grids share."""
    groups = table["groups"].str.split(";")
    knobs = knobs_in(table)
    shared = groups.apply(len)
    default = table.loc[shared == shared.max(), knobs].drop_duplicates()
    is_default = table[knobs].apply(tuple, axis=1).isin(default.apply(tuple, axis=1))
    return table[groups.apply(lambda g: group in g) | is_default]


def settings_per_group(table: pd.DataFrame, grid) -> list[str]:
    """The sub-grids of ``grid`` that ``table`` holds at two settings or more, in the grid's order."""
    knobs = knobs_in(table)
    return [g for g in grid.groups if len(in_group(table, g)[knobs].drop_duplicates()) >= 2]


def _setting_label(values, swept) -> str:
    """``"TAIL=2, FUNDUS_DISCORDANCE_DB=0.75"``: the ``swept`` knobs of one setting (a mapping or a row)."""
    return ", ".join(f"{k}={_value(values[k])}" for k in swept)


def _value(value) -> str:
    """A knob's value as the grid file writes it (``2``, ``0.75``, ``fundus``)."""
    return f"{value:g}" if isinstance(value, (int, float)) else str(value)


def outcomes(table: pd.DataFrame, predictions: pd.DataFrame, group: str | None = None, swept=(),
             metrics=("r2", "mse"), level: float = LEVEL, **paired) -> pd.DataFrame:
    """One row per (setting, outcome, metric): the knob values, ``outcome``, ``a``, ``b`` (the recipes;
    ``b`` is the chosen unimodal recipe for ``fusion - best unimodal``) and ``paired.paired_table``'s
    columns (``diff``, ``ci_low``, ``ci_high``, ``p_value``, ``distinguishable``, ...). ``table``:
    the sweep's rows (``results.collect``); ``predictions``: their per-eye test predictions
    (``results.eye_predictions``); ``group``: only the settings of that sub-grid and the default
    setting (``in_group``), named in column ``mechanism``; ``swept``: the knobs that column ``setting``
    spells out (``TAIL=2``). A setting that lacks a recipe of an outcome leaves that outcome out."""
    if group is not None:
        table = in_group(table, group)
    knobs = knobs_in(table)
    parts = []
    for values, rows in table.groupby(knobs, sort=True, dropna=False):
        present = set(rows["recipe"])
        cells = set(rows["cell"])
        setting_predictions = predictions[predictions["cell"].isin(cells)]
        named = {}  # (A, B) -> outcome
        for name, a, b in OUTCOMES:
            if b == BEST_UNIMODAL:
                if not present & set(UNIMODAL):
                    continue
                b = best_unimodal(rows)
            if {a, b} <= present:
                named[(a, b)] = name
        if not named:
            continue
        result = paired_table(setting_predictions, list(named), metrics=metrics, level=level, **paired)
        result.insert(0, "outcome", [named[pair] for pair in zip(result["a"], result["b"])])
        setting = dict(zip(knobs, values if isinstance(values, tuple) else (values,)))
        for knob, value in reversed(setting.items()):
            result.insert(0, knob, value)
        result.insert(0, "setting", _setting_label(setting, swept))
        result.insert(0, "mechanism", group)
        parts.append(result)
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


CONTROL = ("control", "NULL_MODALITY")
"""The positive control's sub-grid and knob (``sweeps/fusion_fails.yaml``: a null fundus photo and few
training eyes): fusion must lose there."""


def control_check(results: pd.DataFrame, metric: str = "r2") -> tuple[bool | None, str]:
    """Does the testbed see a fusion failure where one is built in? ``results``: ``outcomes`` of the
    control sub-grid. True when ``fusion - best unimodal`` at the control setting (a modality without
    MD information) lies below 0 with its interval; False when it does not (then no other sub-grid's
    verdict can be trusted: the outcome measure misses a failure it was built to show); None without
    control results. Returns the answer and a sentence written from the numbers."""
    group, knob = CONTROL
    rows = results[(results["outcome"] == OUTCOMES[0][0]) & (results["metric"] == metric)]
    if knob in rows:
        rows = rows[rows[knob].astype(str) != "none"]
    if rows.empty:
        return None, f"no positive-control results ({group} sub-grid, {knob}); run it first"
    row = rows.iloc[0]
    seeds = row.get("n_seeds", "?")
    where = f"{row['setting']}, {seeds} seed{'' if seeds == 1 else 's'}"
    if row["ci_high"] < 0:
        return True, (f"Positive control ({where}): fusion - best unimodal {_interval(row)} ({metric}), below 0: the "
                      f"testbed shows a fusion failure where one is built in (best modality: {row['b']}).")
    return False, (f"Positive control ({where}): fusion - best unimodal {_interval(row)} ({metric}) is NOT below 0: "
                   "the testbed misses a failure built into the data, so no verdict below can be trusted until "
                   "that is understood.")


def oscillation(folder: str | Path, table: pd.DataFrame, recipe: str = "naive-fusion", group: str | None = None,
                swept=()) -> pd.DataFrame:
    """Batch noise or instability: per setting and head of ``recipe``'s runs, the oscillation index of the
    training-batch loss beside that of the fixed probe set (``diagnosis.oscillation.probe_oscillation_table``),
    mean and SD over seeds, read from each cell's ``history.csv`` under ``folder/cells``. Cells trained
    without probes (``PROBE_EVERY`` 0) or without a history are left out; an empty frame when none has one."""
    rows = in_group(table, group) if group is not None else table
    rows = rows[rows["recipe"] == recipe].drop_duplicates("cell")
    knobs = knobs_in(rows)
    parts = []
    for _, row in rows.iterrows():
        path = Path(folder) / "cells" / row["cell"] / "history.csv"
        history = pd.read_csv(path) if path.exists() else None
        if history is None or not probe_heads(history):
            continue
        part = probe_oscillation_table(history)
        part["seed"] = row["seed"]
        for knob in knobs:
            part[knob] = row[knob]
        parts.append(part)
    if not parts:
        return pd.DataFrame()
    runs = pd.concat(parts, ignore_index=True)
    summary = runs.groupby([*knobs, "head"], sort=True).agg(
        seeds=("seed", "nunique"), batch_oscillation=("batch_oscillation", "mean"),
        batch_oscillation_sd=("batch_oscillation", "std"), probe_oscillation=("probe_oscillation", "mean"),
        probe_oscillation_sd=("probe_oscillation", "std"), probe_every=("probe_every", "first")).reset_index()
    summary.insert(0, "setting", summary.apply(lambda r: _setting_label(r, swept), axis=1))
    summary.insert(0, "mechanism", group)
    summary.insert(0, "recipe", recipe)
    return summary


def phase_grid(results: pd.DataFrame, outcome: str, rows: str = "TAIL", columns: str = "FUNDUS_DISCORDANCE_DB",
               metric: str = "r2", value: str = "diff") -> pd.DataFrame:
    """``value`` of one ``outcome`` (``outcomes``' rows, one metric) as a ``rows`` x ``columns`` table."""
    chosen = results[(results["outcome"] == outcome) & (results["metric"] == metric)]
    return chosen.pivot_table(index=rows, columns=columns, values=value, aggfunc="first")


def _interval(row) -> str:
    return f"{row['diff']:+.3f} [{row['ci_low']:+.3f}, {row['ci_high']:+.3f}]"


def verdict(results: pd.DataFrame, knob: str, metric: str = "r2") -> str:
    """A verdict for one mechanism, written from ``results`` (``outcomes`` of its sub-grid): at each
    value of ``knob``, whether fusion falls below the best modality (its interval below 0), and at
    those values whether Re-M3Dr, MMPareto or the two-stage control recovers it."""
    rows = results[results["metric"] == metric].sort_values(knob)
    if rows.empty:
        return f"{knob}: no results"
    lines = []
    puzzle = rows[(rows["outcome"] == OUTCOMES[0][0]) & (rows["ci_high"] < 0)]
    for value, at in rows.groupby(knob, sort=True):
        parts = [f"{r['outcome']} {_interval(r)}" for _, r in at.iterrows()]
        lines.append(f"  {knob} = {_value(value)}: " + "; ".join(parts))
    seen = ", ".join(_value(v) for v in sorted(set(rows[knob])))
    if puzzle.empty:
        head = (f"{knob} over {seen}: fusion is never below the best modality ({metric}, "
                f"{LEVEL:.0%} paired intervals); no setting in this range reproduces the puzzle.")
    else:
        below = ", ".join(_value(v) for v in puzzle[knob])
        recovered = []
        for value in puzzle[knob]:
            at = rows[rows[knob] == value].set_index("outcome")
            fixes = [name for name in ("re-m3dr - fusion", "mmpareto - fusion", "re-m3dr - control")
                     if name in at.index and at.loc[name, "ci_low"] > 0]
            recovered.append(f"{_value(value)}: " + (", ".join(fixes) + " above 0" if fixes else "nothing distinguishably better"))
        head = (f"{knob} over {seen}: fusion falls below the best modality at {below}. "
                f"There: {'; '.join(recovered)}.")
    return "\n".join([head, *lines])


SCALE_KNOBS = ("N_EYES", "IMAGE_SIZE", "N_BSCANS", "WIDTH", "EPOCHS")
LEARNS_R2 = 0.3
"""Issue 21's criterion for the testbed's scale: each unimodal model's mean test R^2 over seeds."""


def scale_scan(table: pd.DataFrame, threshold: float = LEARNS_R2) -> tuple[pd.DataFrame, str | None]:
    """The scan of candidate scales (``sweeps/testbed_scale.yaml``'s table, ``results.collect``): per
    sub-grid, each unimodal model's test R^2 (mean, SD, seeds) and training seconds per model, whether
    both reach ``threshold``, and the cheapest sub-grid that does (by its seconds per seed for both
    models; None when none does)."""
    rows = []
    for group, part in table.groupby("groups", sort=False):
        row = {"candidate": group, **{k: part[k].iloc[0] for k in SCALE_KNOBS if k in part}}
        for recipe, r in part.groupby("recipe"):
            modality = recipe.removeprefix("unimodal-")
            row.update({f"{modality}_r2_mean": r["test_r2"].mean(), f"{modality}_r2_sd": r["test_r2"].std(),
                        f"{modality}_seeds": r["seed"].nunique()})
        row["seconds_per_seed"] = part.groupby("seed")["seconds"].sum().mean()
        rows.append(row)
    scan = pd.DataFrame(rows)
    means = [c for c in scan if c.endswith("_r2_mean")]
    scan["both_learn"] = scan[means].ge(threshold).all(axis=1)
    scan = scan.sort_values("seconds_per_seed", kind="stable").reset_index(drop=True)
    chosen = scan.loc[scan["both_learn"], "candidate"]
    return scan, (chosen.iloc[0] if len(chosen) else None)
