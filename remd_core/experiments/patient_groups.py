"""Results by patient group for every model of a run folder: the per-group metrics and equity-scaled
summaries of ``evaluation.groups``, from the per-eye test predictions each cell records.

``results_by_group(folder, dataset)`` reads the finished cells' predictions
(``results.eye_predictions``), joins each test eye to its attributes (``groups.attributes_of``:
FairVision's race, gender, ethnicity; any manifest column named in ``columns``) and writes, beside
``results.csv`` (whose per-region columns these complement):

- ``patient_groups.csv``: one row per (cell, model, attribute, group) and per (cell, model,
  attribute) ``all``: ``recipe, seed, model, attribute, group, n, r2, mse, mae, cell``;
- ``equity.csv``: one row per (cell, model, attribute): the counts, each metric overall, its
  deviation over the groups and its equity-scaled value (``groups.equity_summary``).

Nothing is written when the data set has none of the attributes asked for. ``remd compare`` calls
it at the end of a comparison; after a sweep, call it with the sweep's data set (the client does
not hold one).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..evaluation.groups import attributes_of, group_tables
from ..files import atomic_path
from .results import eye_predictions

GROUP_FILE = "patient_groups.csv"
EQUITY_FILE = "equity.csv"
KEYS = ("recipe", "seed", "model")


def results_by_group(folder: str | Path, dataset, columns=None, keys: list[str] | None = None,
                     write: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The per-group table and the equity summaries of every model of the finished cells under
    ``folder`` (``keys``: only those cells), on ``dataset``'s test eyes; written to ``folder`` as
    ``GROUP_FILE`` and ``EQUITY_FILE`` when ``write`` (see the module docstring). A cell whose test
    eyes are not ``dataset``'s is an error naming it."""
    folder = Path(folder)
    attributes = attributes_of(dataset, "test", columns)
    if attributes.columns.empty:
        return pd.DataFrame(), pd.DataFrame()
    eyes = eye_predictions(folder, keys)
    tables, summaries = [], []
    for (cell, *values), rows in eyes.groupby(["cell", *KEYS], sort=False):
        ids = rows["eye"].astype(str)
        unknown = sorted(set(ids) - set(attributes.index))
        if unknown:
            raise ValueError(f"cell {cell}: test eye(s) {unknown[:5]} are not test eyes of {dataset.name!r}; "
                             f"give the data set the cell was run on")
        table, summary = group_tables(rows["y"].to_numpy(), rows["prediction"].to_numpy(), attributes.loc[ids])
        where = dict(zip(KEYS, values))
        tables.append(table.assign(**where, cell=cell))
        summaries.append(summary.assign(**where, cell=cell))
    table = _ordered(pd.concat(tables, ignore_index=True) if tables else pd.DataFrame())
    summary = _ordered(pd.concat(summaries, ignore_index=True) if summaries else pd.DataFrame())
    if write and not table.empty:
        for frame, name in ((table, GROUP_FILE), (summary, EQUITY_FILE)):
            with atomic_path(folder / name) as tmp:
                frame.to_csv(tmp, index=False)
    return table, summary


def _ordered(frame: pd.DataFrame) -> pd.DataFrame:
    first = [c for c in (*KEYS, "attribute", "group") if c in frame]
    return frame[first + [c for c in frame if c not in first and c != "cell"] + (["cell"] if "cell" in frame else [])]
