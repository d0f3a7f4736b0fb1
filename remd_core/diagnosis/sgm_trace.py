"""The SGM probes of a run, and its gamma and sharpness trace (the analogue of the Re-M3Dr paper's
Fig. 5: gamma follows the measured sharpness, and the two correlate positively).

SGM probes every ``probe_every`` steps (section 4.2) and logs its last probe at every step in
between; ``sgm_probes`` keeps one row per probe, and every analysis of the probes starts from it
(``gamma_sharpness_trace`` here, ``remd_core.experiments.studies.probe_scores``)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats


def sgm_probes(history: pd.DataFrame, columns=("sharpness", "gamma"), optional=(), key: str | None = None
               ) -> pd.DataFrame:
    """One row per SGM probe of a per-step ``history``: ``step``, ``columns`` (all required) and
    the ``optional`` columns the history has. Rows missing a required value are dropped, and so is
    every row whose ``key`` (default: the first of ``columns``) repeats the row before: the steps
    between probes, which log the last probe again. ``ValueError`` names the missing columns."""
    needed = ["step", *columns]
    missing = [c for c in needed if c not in history]
    if missing:
        raise ValueError(f"history has no {missing} column(s): is it an SGM run?")
    key = key or columns[0]
    probes = history[needed + [c for c in optional if c in history]].dropna(subset=needed)
    return probes[probes[key].ne(probes[key].shift())].reset_index(drop=True)


def gamma_sharpness_trace(history: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """Per-probe rows (step, sharpness, gamma) of an SGM history (``sgm_probes``), and their Pearson
    and Spearman correlations."""
    trace = sgm_probes(history, ("sharpness", "gamma"))
    summary = {"n_probes": len(trace)}
    if len(trace) > 2 and trace["sharpness"].std() > 0 and trace["gamma"].std() > 0:
        summary["pearson_r"] = float(stats.pearsonr(trace["sharpness"], trace["gamma"])[0])
        summary["spearman_r"] = float(stats.spearmanr(trace["sharpness"], trace["gamma"])[0])
    else:
        summary["pearson_r"] = summary["spearman_r"] = float("nan")
    summary["share_at_gamma_max"] = float(np.mean(trace["gamma"] >= trace["gamma"].max())) if len(trace) else float("nan")
    return trace, summary
