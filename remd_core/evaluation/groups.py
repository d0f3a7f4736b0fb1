"""Results by patient group: R^2, MSE, MAE and the eye count per group of an attribute (race,
gender, ethnicity, any manifest column), and an equity-scaled summary per attribute.

Source of the equity-scaled metric
----------------------------------
Luo Y, Tian Y, Shi M, Pasquale LR, Shen LQ, Zebardast N, Elze T, Wang M, "Harvard Glaucoma Fairness:
A Retinal Nerve Disease Dataset for Fairness Learning and Fair Identity Normalization"
(Harvard-GF, arXiv:2306.09264) proposed an "equity-scaled performance measure, which can be flexibly
used to compare all kinds of performance metrics"; Luo et al., "FairVision: Equitable Deep Learning
for Eye Disease Screening via Fair Identity Scaling" (arXiv:2310.02492) reports it on FairVision.
Read from their official code (Harvard-Ophthalmology-AI-Lab/FairVision, ``src/modules.py`` at
59eb3f1: ``equity_scaled_accuracy``, ``equity_scaled_AUC``; the papers' own equation text could
not be read here), for a metric M, an attribute a and its groups G_a:

    (1)  Delta_M = sum over g in G_a of |M_g - M|        (``deviation``)
    (2)  ES-M    = M / (1 + alpha * Delta_M),  alpha = 1  (``equity_scaled``)

M is the metric over every test sample, M_g over the samples of group g; every value of the
attribute among the samples is a group, each counted once whatever its size; one ES per attribute.
The code applies (2) to AUC and accuracy: metrics in [0, 1], higher better.

How it is carried over to regression (our choices; no published regression form was found here):

- R^2 (higher is better, at most 1, like AUC): (2) as is, ES-R^2 = R^2 / (1 + Delta_R2). Only
  for R^2 > 0: for a negative R^2, dividing by 1 + Delta moves the score toward 0, so more
  disparity would score better; ``equity_scaled`` returns NaN there.
- MSE and MAE (lower is better): dividing an error by 1 + Delta would also reward disparity, so
  the error is scaled up instead, by its groups' summed deviation relative to itself (relative, so
  that the result does not depend on the unit: AUC's Delta is on a unit-free [0, 1] scale, an MSE's
  would be in dB^2):

    (3)  ES-E = E * (1 + Delta_E / E) = E + Delta_E       (``equity_scaled_error``)

  Equal errors in every group give ES-E = E; otherwise ES-E > E, in the error's unit.

Other choices: an eye with no value for an attribute counts in the overall metric M (as in the
official code, where M is over every sample) but in no group; the summary reports how many
(``n_missing``). A group whose metric is undefined (R^2 of fewer than 2 eyes, or of one label
value: ``metrics.r2``) is left out of that metric's Delta (the official code would turn the ES into
NaN) and counted in ``r2_groups_undefined``. Groups are the attribute's values as text, sorted.

``group_report(dataset, predictions)`` is the notebook entry point (a fit's test predictions,
the data set's attributes: ``attributes_of``); ``experiments.patient_groups`` writes the same
tables for every model of a run folder (``patient_groups.csv`` and ``equity.csv`` beside
``results.csv``, whose per-region columns they complement).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .metrics import _pair, mae, mse, r2

DEFAULT_ATTRIBUTES = ("race", "gender", "ethnicity")
"""The attributes FairVision and Harvard-GF were published for, reported when a data set has them."""

METRICS = {"r2": r2, "mse": mse, "mae": mae}
HIGHER_IS_BETTER = {"r2": True, "mse": False, "mae": False}
MISSING_WORDS = ("", "nan", "none", "unknown")


# ----------------------------------------------------------------------------------------------
# The equations


def deviation(overall: float, per_group) -> float:
    """Eq. (1): ``sum_g |M_g - M|`` over the groups' metrics ``per_group`` (NaN ones left out)."""
    values = np.asarray(list(per_group), dtype=np.float64)
    values = values[~np.isnan(values)]
    return float(np.sum(np.abs(values - overall))) if not np.isnan(overall) else float("nan")


def equity_scaled(overall: float, per_group, alpha: float = 1.0) -> float:
    """Eq. (2) (Luo et al., Harvard-GF / FairVision): ``M / (1 + alpha * Delta_M)`` for a metric where
    higher is better (AUC there, R^2 here); NaN for ``M <= 0``, where the quotient would reward
    disparity (see the module docstring)."""
    if alpha < 0:
        raise ValueError(f"alpha must be >= 0, got {alpha}")
    if np.isnan(overall) or overall <= 0:
        return float("nan")
    return float(overall / (1.0 + alpha * deviation(overall, per_group)))


def equity_scaled_error(overall: float, per_group) -> float:
    """Eq. (3) (ours, carrying Eq. (2) over to an error, lower is better): ``E * (1 + Delta_E / E)``,
    which is ``E + Delta_E``."""
    if np.isnan(overall):
        return float("nan")
    return float(overall + deviation(overall, per_group))


# ----------------------------------------------------------------------------------------------
# Tables


def _labels(groups) -> np.ndarray:
    """Group labels as text; unknown values (blank, NaN, None, "unknown") as None."""
    out = []
    for value in np.asarray(groups, dtype=object).reshape(-1):
        if value is None or (isinstance(value, float) and np.isnan(value)):
            out.append(None)
            continue
        text = str(value).strip()
        if text.endswith(".0") and text[:-2].lstrip("-").isdigit():  # 1.0 from a numeric column: "1"
            text = text[:-2]
        out.append(None if text.lower() in MISSING_WORDS else text)
    return np.array(out, dtype=object)


def per_group_report(y, yhat, groups) -> pd.DataFrame:
    """One row per group of one attribute (sorted), then ``all`` (every sample, those without a
    value included): ``n``, ``r2``, ``mse``, ``mae``. ``groups`` holds each sample's value."""
    y, yhat = _pair(y, yhat)
    labels = _labels(groups)
    if labels.shape != y.shape:
        raise ValueError(f"{labels.size} group values for {y.size} samples")
    names = sorted({g for g in labels if g is not None})
    rows = []
    for group in (*names, "all"):
        m = np.ones(y.shape, bool) if group == "all" else labels == group
        rows.append({"group": group, "n": int(m.sum()), **{k: f(y[m], yhat[m]) for k, f in METRICS.items()}})
    return pd.DataFrame(rows).set_index("group")


def equity_summary(report: pd.DataFrame) -> dict:
    """From a ``per_group_report``: the groups' and missing eyes' counts, each metric overall, its
    deviation (1) and its equity-scaled value ((2) for R^2, (3) for MSE and MAE)."""
    overall, groups = report.loc["all"], report.drop(index="all")
    out = {"n": int(overall["n"]), "n_groups": len(groups), "n_missing": int(overall["n"] - groups["n"].sum())}
    for metric in METRICS:
        values = groups[metric].to_numpy(np.float64)
        out[metric] = float(overall[metric])
        out[f"delta_{metric}"] = deviation(out[metric], values)
        out[f"es_{metric}"] = (equity_scaled if HIGHER_IS_BETTER[metric] else equity_scaled_error)(out[metric], values)
    out["r2_groups_undefined"] = int(np.isnan(groups["r2"].to_numpy(np.float64)).sum())
    return out


def group_tables(y, yhat, attributes: pd.DataFrame, columns=None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-group metrics and equity summaries for each attribute column of ``attributes`` (one row
    per sample, in the order of ``y``; ``columns``: which, default all): a long table
    ``attribute, group, n, r2, mse, mae`` (each attribute's groups, then its ``all`` row) and one
    summary row per attribute (``equity_summary``)."""
    y, yhat = _pair(y, yhat)
    if len(attributes) != y.size:
        raise ValueError(f"{len(attributes)} attribute rows for {y.size} samples")
    columns = list(attributes.columns if columns is None else columns)
    unknown = [c for c in columns if c not in attributes.columns]
    if unknown:
        raise ValueError(f"no attribute column(s) {unknown}; the data set has {list(attributes.columns)}")
    parts, summaries = [], []
    for column in columns:
        report = per_group_report(y, yhat, attributes[column].to_numpy(dtype=object))
        parts.append(report.reset_index().assign(attribute=column))
        summaries.append({"attribute": column, **equity_summary(report)})
    table_columns = ["attribute", "group", "n", *METRICS]
    table = pd.concat(parts, ignore_index=True)[table_columns] if parts else pd.DataFrame(columns=table_columns)
    return table, pd.DataFrame(summaries)


# ----------------------------------------------------------------------------------------------
# Attributes of a data set


def attributes_of(dataset, split: str = "test", columns=None) -> pd.DataFrame:
    """The patient attributes of ``split``'s eyes (index: their ids, in split order), as text:
    ``dataset.notes["attributes"]`` (FairVision's metadata table: race, ethnicity, language, ...; a
    manifest's extra columns) plus ``gender`` (male / female, from the tabular ``male`` column, where
    known and not already an attribute). ``columns``: those (an unknown name is an error); default
    the ``DEFAULT_ATTRIBUTES`` the data set has (none: an empty frame, no group report)."""
    part = dataset[split]
    ids = pd.Index(list(part.ids), name="id")
    frame = pd.DataFrame(index=ids)
    notes = dataset.notes.get("attributes")
    if isinstance(notes, pd.DataFrame) and len(notes.columns):
        frame = notes.reindex(ids).astype(object)
        frame.columns = [str(c).strip().lower() for c in frame.columns]
    male = part.tabular[:, 1].double().numpy()
    if "gender" not in frame.columns and not np.isnan(male).all():
        frame["gender"] = np.where(np.isnan(male), None, np.where(male == 1, "male", "female"))
    if columns is None:
        return frame[[c for c in DEFAULT_ATTRIBUTES if c in frame.columns]]
    wanted = [str(c).strip().lower() for c in ([columns] if isinstance(columns, str) else columns)]
    unknown = [c for c in wanted if c not in frame.columns]
    if unknown:
        raise ValueError(f"data set {dataset.name!r} has no attribute(s) {unknown}; it has {list(frame.columns)}")
    return frame[wanted]


def group_report(dataset, predictions, columns=None, split: str = "test") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Results by patient group of one model: its ``predictions`` on ``split`` (a ``FitResult``'s
    ``predictions["test"]``) against the labels, per group of each attribute (``attributes_of``:
    ``columns`` or the published ones the data set has). Returns ``group_tables``' two tables;
    both empty when the data set carries no attributes."""
    attributes = attributes_of(dataset, split, columns)
    return group_tables(dataset[split].y.numpy(), predictions, attributes)
