"""The figures the library draws: the loss curves of notebook 01 (batch and probe losses side by side)
and the figure of ``remd compare``."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt  # no backend chosen here: a notebook keeps its inline one
import numpy as np
import pandas as pd

from .layout import finish


LOSS_CURVES = {"batch": "batch loss (each training batch)", "probe": "probe loss (fixed probe set)"}


def loss_curves(runs) -> pd.DataFrame:
    """The per-head loss curves of several fits in one long frame: ``model, subset, head, curve,
    step, progress, loss``. ``runs`` maps ``(model, subset)`` to a fit's result (``.history``) or its
    history frame. ``curve`` is ``"batch"`` for ``loss_<head>`` (every step) and ``"probe"`` for
    ``probe_loss_<head>`` (probe steps only; the NaN rows between probes are dropped). ``progress`` =
    step / steps of that run (as ``studies.stacked_histories``), so runs of different lengths share
    one x axis. Heads: every ``loss_<head>`` except the fused one, with a finite value in that run."""
    frames = []
    for (model, subset), result in runs.items():
        h = getattr(result, "history", result)
        progress = (h["step"] - h["step"].min() + 1) / len(h)
        heads = [c.removeprefix("loss_") for c in h if c.startswith("loss_") and c not in ("loss_fused", "loss_extra")]
        for head in heads:
            for curve, column in (("batch", f"loss_{head}"), ("probe", f"probe_loss_{head}")):
                if column not in h:
                    continue
                loss = pd.to_numeric(h[column], errors="coerce")
                keep = np.isfinite(loss.to_numpy(dtype=np.float64))
                if not keep.any():
                    continue
                frames.append(pd.DataFrame({"model": model, "subset": subset, "head": head, "curve": curve,
                                            "step": h["step"][keep], "progress": progress[keep],
                                            "loss": loss[keep]}))
    columns = ["model", "subset", "head", "curve", "step", "progress", "loss"]
    return pd.concat(frames, ignore_index=True)[columns] if frames else pd.DataFrame(columns=columns)


def oscillation_figure(runs, title: str):
    """Fig. 2a-c: the loss of every unimodal head of every run, one facet row per (model, head) that
    exists (a unimodal model has only its own head), coloured by training subset; the batch loss
    and, where the runs logged a probe (``TrainConfig.probe_every``), the probe loss in a column
    beside it. A plotly figure, laid out by ``finish``."""
    import plotly.express as px

    curves = loss_curves(runs)
    if curves.empty:
        raise ValueError("no run has a loss_<head> column with data")
    alone = curves["model"] == curves["head"]
    curves["run"] = np.where(alone, curves["model"] + " alone", curves["model"] + ": " + curves["head"] + " head")
    order = curves.assign(fused=~alone).drop_duplicates("run").sort_values(["head", "fused", "model"])
    panels = [LOSS_CURVES[c] for c in LOSS_CURVES if c in set(curves["curve"])]
    curves["panel"] = curves["curve"].map(LOSS_CURVES)
    fig = px.line(curves, x="progress", y="loss", color="subset", facet_row="run",
                  facet_col="panel" if len(panels) > 1 else None,
                  category_orders={"run": list(order["run"]), "panel": panels, "subset": ["all", "head", "tail"]},
                  labels={"progress": "fraction of training", "loss": "training MSE (standardised MD)",
                          "subset": "trained on"},
                  title=title)
    fig.for_each_annotation(lambda a: a.update(text=a.text.split("=", 1)[-1]))
    fig.update_traces(line_width=1)
    fig.update_traces(mode="lines+markers", marker_size=3,
                      selector=lambda t: f"panel={LOSS_CURVES['probe']}" in (t.hovertemplate or ""))
    return finish(fig)


def compare_figure(results: pd.DataFrame, y_test: np.ndarray, y_train: np.ndarray, title: str, path: Path) -> Path:
    """Three panels: test R^2 per recipe and model (mean and SD over seeds), predicted vs true on
    the test split for the first seed, and the training label distribution (the long tail)."""
    label = results["recipe"] + np.where(results["model"].isin(["fusion"]), "", " [" + results["model"] + "]")
    results = results.assign(label=label)
    stats = results.groupby("label", sort=False)["test_r2"].agg(["mean", "std"]).fillna(0.0)
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    ax = axes[0]
    ax.barh(stats.index[::-1], stats["mean"][::-1], xerr=stats["std"][::-1], color="#4c72b0")
    for i, v in enumerate(stats["mean"][::-1]):
        ax.text(v, i, f" {v:.3f}", va="center")
    ax.set_xlabel("test R$^2$ (mean $\\pm$ SD over seeds)")
    ax.set_title(f"test R$^2$, seeds {sorted(results['seed'].unique().tolist())}")
    ax = axes[1]
    first = results[results["seed"] == results["seed"].min()]
    for _, row in first.iterrows():
        ax.scatter(y_test, row["test_predictions"], s=8, alpha=0.5, label=row["label"])
    lo, hi = float(np.min(y_test)), float(np.max(y_test))
    ax.plot([lo, hi], [lo, hi], "k--", lw=1)
    ax.set_xlabel("true label")
    ax.set_ylabel("prediction")
    ax.set_title(f"test predictions, seed {results['seed'].min()}")
    ax.legend(fontsize=7)
    ax = axes[2]
    ax.hist(y_train, bins=40, color="#8172b2")
    ax.set_xlabel("label")
    ax.set_ylabel("training samples")
    ax.set_title(f"training labels: median {np.median(y_train):.2f}")
    fig.suptitle(title)
    finish(fig)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
