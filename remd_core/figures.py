"""Static figures of the command-line runs (matplotlib PNG; the notebooks add plotly views)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402


def baselines_figure(metrics: pd.DataFrame, predictions: pd.DataFrame, y_train: np.ndarray, title: str,
                     path: Path) -> Path:
    """Three panels: test R^2 per model, predicted vs true MD on the test split, and the training
    MD distribution (the long tail every model has to cope with)."""
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    ax = axes[0]
    ax.bar(metrics["model"], metrics["test_r2"], color=["#4c72b0", "#dd8452", "#55a868", "#c44e52"][: len(metrics)])
    for i, v in enumerate(metrics["test_r2"]):
        ax.text(i, v, f"{v:.3f}", ha="center", va="bottom")
    ax.set_ylabel("test R$^2$")
    ax.set_title("test R$^2$ per model")
    ax = axes[1]
    lo, hi = predictions["y"].min(), predictions["y"].max()
    for model, group in predictions.groupby("model", sort=False):
        ax.scatter(group["y"], group["prediction"], s=10, alpha=0.6, label=model)
    ax.plot([lo, hi], [lo, hi], "k--", lw=1)
    ax.set_xlabel("true MD (dB)")
    ax.set_ylabel("predicted MD (dB)")
    ax.set_title("test predictions")
    ax.legend()
    ax = axes[2]
    ax.hist(y_train, bins=40, color="#8172b2")
    ax.set_xlabel("MD (dB)")
    ax.set_ylabel("training eyes")
    ax.set_title(f"training MD: median {np.median(y_train):.2f} dB")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
