"""The gamma and sharpness trace of an SGM run (the analogue of the Re-M3Dr paper's Fig. 5: gamma
follows the measured sharpness, and the two correlate positively)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats


def gamma_sharpness_trace(history: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """Per-probe rows (step, sharpness, gamma) of an SGM history, and their Pearson and Spearman
    correlations. Steps between probes repeat the last probe and are dropped."""
    for column in ("step", "sharpness", "gamma"):
        if column not in history:
            raise ValueError(f"history has no {column!r} column: is it an SGM run?")
    trace = history[["step", "sharpness", "gamma"]].dropna()
    trace = trace[trace["sharpness"].ne(trace["sharpness"].shift())]
    summary = {"n_probes": len(trace)}
    if len(trace) > 2 and trace["sharpness"].std() > 0 and trace["gamma"].std() > 0:
        summary["pearson_r"] = float(stats.pearsonr(trace["sharpness"], trace["gamma"])[0])
        summary["spearman_r"] = float(stats.spearmanr(trace["sharpness"], trace["gamma"])[0])
    else:
        summary["pearson_r"] = summary["spearman_r"] = float("nan")
    summary["share_at_gamma_max"] = float(np.mean(trace["gamma"] >= trace["gamma"].max())) if len(trace) else float("nan")
    return trace.reset_index(drop=True), summary
