"""Static figures of the command-line runs (matplotlib PNG; the notebooks add plotly views)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402


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
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
