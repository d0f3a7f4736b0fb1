"""The one helper a notebook's results cell calls: record key numbers beside the executed notebook."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .paths import outputs_dir, write_json


def record_results(notebook: str, values: dict, run_dir: str | Path = "") -> pd.Series:
    """Write ``values`` to ``<run_dir>/results/<notebook>.json`` (``outputs/interactive`` when the
    notebook runs outside ``remd run``) and return them as a Series for display."""
    folder = Path(run_dir) if run_dir else outputs_dir() / "interactive"
    write_json(folder / "results" / f"{notebook}.json", values, indent=2)
    return pd.Series(values, name=notebook)


def save_figure(fig, name: str, run_dir: str | Path = "") -> Path:
    """Save a figure under ``<run_dir>/figures/``: a plotly figure as self-contained HTML, a
    matplotlib figure as PNG. (Static PNG export of plotly needs kaleido and a Chrome, which our
    machines lack; notebooks draw their static figures with matplotlib.)"""
    folder = (Path(run_dir) if run_dir else outputs_dir() / "interactive") / "figures"
    folder.mkdir(parents=True, exist_ok=True)
    if hasattr(fig, "write_html"):
        path = folder / f"{name}.html"
        fig.write_html(path, include_plotlyjs=True, full_html=True)
    else:
        path = folder / f"{name}.png"
        fig.savefig(path, dpi=110, bbox_inches="tight")
    return path
