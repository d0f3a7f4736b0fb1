"""Helpers that notebooks call to leave their results beside the executed notebook.

``record_results`` writes the key numbers of a notebook (its results cell); ``save_figure`` writes
every figure as a static PNG and, for plotly, also as a self-contained HTML file; ``save_table``
writes a table as CSV and parquet. Everything lands under the run folder (``RUN_DIR``), so a run can
be read without a kernel. Every file is written atomically (``files.atomic_path``): an interrupted
run leaves the previous file or none, never half of one.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pandas as pd

from ..files import atomic_path, write_json
from ..paths import outputs_dir
from ..timing import timed


def run_folder(run_dir: str | Path = "") -> Path:
    """The run folder: ``run_dir``, or ``outputs/interactive`` outside ``remd run``."""
    folder = Path(run_dir) if run_dir else outputs_dir() / "interactive"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@timed("writing")
def record_results(notebook: str, values: dict, run_dir: str | Path = "") -> pd.Series:
    """Write ``values`` to ``<run_dir>/results/<notebook>.json`` and return them as a Series."""
    write_json(run_folder(run_dir) / "results" / f"{notebook}.json", values, indent=2)
    return pd.Series(values, name=notebook)


@timed("writing")
def save_figure(fig, name: str, run_dir: str | Path = "") -> list[Path]:
    """Save a figure under ``<run_dir>/figures/``: PNG always (plotly through kaleido), plus a
    self-contained HTML file (plotly.js embedded, no network needed) for plotly figures. The figure
    is laid out first, in place, by ``figures.finish`` (title fitted to the canvas, no facet without
    data, one title per shared axis), so the figure a notebook shows after saving it is the one saved."""
    from .figures import finish

    finish(fig)
    folder = run_folder(run_dir) / "figures"
    folder.mkdir(exist_ok=True)
    png = folder / f"{name}.png"
    if hasattr(fig, "write_html"):
        html = folder / f"{name}.html"
        with atomic_path(html) as tmp:
            fig.write_html(tmp, include_plotlyjs=True, full_html=True)
        with warnings.catch_warnings(), atomic_path(png) as tmp:  # kaleido 0.2.1 uses settings plotly 6
            warnings.simplefilter("ignore", DeprecationWarning)  # deprecates (see pyproject.toml)
            fig.write_image(tmp, format="png", scale=2)
        return [png, html]
    with atomic_path(png) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    return [png]


@timed("writing")
def save_table(table: pd.DataFrame, name: str, run_dir: str | Path = "") -> list[Path]:
    """Save a table under ``<run_dir>/tables/`` as CSV and parquet (index included)."""
    folder = run_folder(run_dir) / "tables"
    folder.mkdir(exist_ok=True)
    csv, parquet = folder / f"{name}.csv", folder / f"{name}.parquet"
    with atomic_path(csv) as tmp:
        table.to_csv(tmp)
    frame = table.copy()
    frame.columns = [str(c) for c in frame.columns]  # parquet needs string column names
    with atomic_path(parquet) as tmp:
        frame.to_parquet(tmp)
    return [csv, parquet]
