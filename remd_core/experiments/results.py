"""The one results store of the engine, and the tables made from it.

A run folder holds one folder per cell, ``cells/<key>/``: ``cell.json`` (the key, the cell's place
in the grid, its groups, the swept parameters, its settings and where its result goes) and the
result itself, ``results/<name>.json`` (``{"parameters": ..., "rows": [...]}``, one row per model),
written atomically by whoever ran the cell (a notebook through ``workbench.record``, ``compare``
in-process). A cell is finished when its result exists and is intact; a corrupt one is reported,
moved aside, and its cell runs again. Because every cell writes into the run folder itself, the
client may die and a rerun still finds every finished cell (on a cluster the folder must be on a
file system the workers share). ``collect`` turns the store into one tidy table (``results.csv``,
``results.parquet``), one row per (cell, model); ``summarize`` gives mean and SD over seeds;
``group_summaries`` one summary per sub-grid; ``sensitivity`` the curves of the sub-grids that vary
one parameter.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pandas as pd

from ..config import ConfigError
from ..files import atomic_path, read_json, write_json, write_text

TABLE_FIRST = ("dataset", "recipe", "seed", "groups")
TABLE_METRICS = ("profile", "epochs", "model", "test_r2", "test_mse", "test_mae", "test_stage_score", "many_mse",
                 "many_mae", "medium_mse", "medium_mae", "few_mse", "few_mae", "val_r2", "best_epoch", "seconds")
SUMMARY_METRICS = ("test_r2", "test_mse", "test_mae", "test_stage_score", "many_mse", "medium_mse", "few_mse",
                   "many_mae", "medium_mae", "few_mae", "test_coverage", "test_interval_width")
CONTRIBUTION_PREFIXES = ("shapley_", "share_")
"""Columns of a fused model's modality contributions (``diagnosis.contribution``), summarised as metrics."""
CONSTANT_IN_SUMMARY = ("dataset", "profile", "epochs")
META_KEYS = ("key", "swept", "settings", "groups", "index")


class ResultStore:
    """The cells of one run folder (see the module docstring). ``result_name`` is the stem of each
    cell's result file (``train_recipe`` for the sweep's cell notebook, ``compare`` in-process)."""

    def __init__(self, folder: str | Path, result_name: str):
        self.folder, self.result_name = Path(folder), result_name

    def cell_dir(self, key: str) -> Path:
        return self.folder / "cells" / key

    def result_path(self, key: str) -> Path:
        return self.cell_dir(key) / "results" / f"{self.result_name}.json"

    def finished(self, key: str) -> dict | None:
        """The cell's recorded result, or ``None`` when it has none yet (a corrupt one is reported and
        moved aside, so the cell runs again)."""
        return read_json(self.result_path(key), required=("rows",))

    def write_meta(self, cell, swept: list[str], settings: dict) -> None:
        write_json(self.cell_dir(cell.key) / "cell.json",
                   {"key": cell.key, "index": cell.index, "groups": list(cell.groups), "swept": swept,
                    "result": f"results/{self.result_name}.json", "settings": settings}, indent=2)

    def write_result(self, key: str, rows: list[dict], parameters: dict, test: dict | None = None) -> None:
        """``test``: the test eyes' ``ids`` and labels ``y``, with which ``eye_predictions`` reads the
        rows' ``test_predictions`` eye by eye."""
        write_json(self.result_path(key), {"parameters": parameters, "rows": rows, **({"test": test} if test else {})})

    def write_error(self, key: str, summary: str, detail: str = "") -> None:
        write_text(self.cell_dir(key) / "error.txt", f"cell {key} failed (its folder: {self.cell_dir(key)}; a "
                                                     f"notebook cell's kernel output is in kernel.log)\n{summary}\n\n{detail}")

    def stale(self, settings: dict[str, dict]) -> list[str]:
        """Finished cells (of ``settings``: key -> this run's settings) recorded with other settings,
        each as ``key: NAME old -> new, ...``: their results must not be mixed with this run's."""
        out = []
        for key, now in settings.items():
            recorded = read_json(self.cell_dir(key) / "cell.json", required=("settings",))
            if recorded is None or self.finished(key) is None:
                continue
            before = recorded["settings"]
            changed = {k: (before.get(k), v) for k, v in now.items() if before.get(k) != v}
            changed.update({k: (v, None) for k, v in before.items() if k not in now})
            if changed:
                out.append(f"  {key}: " + ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changed.items()))
        return out

    def check_fresh(self, settings: dict[str, dict]) -> None:
        stale = self.stale(settings)
        if stale:
            raise ConfigError(f"{self.folder} holds finished cells run with other settings than this run's:\n"
                              + "\n".join(stale) + "\nuse another run folder (--run), or delete those cells to redo them")


def collect(folder: str | Path, keys: list[str] | None = None, predictions: bool = False) -> pd.DataFrame:
    """One tidy row per (cell, model) from every finished cell under ``folder/cells``: ``dataset,
    recipe, seed, groups`` (the sub-grids holding the cell, ``;``-joined), each swept parameter at its
    effective value (as the cell recorded it), ``profile, epochs, model``, the metrics (test R2, MSE,
    MAE, STAGE score, per-region MSE and MAE, validation R2, best epoch, seconds), any other recorded
    metric, and ``cell`` (the key). Rows follow the grid's order. Writes ``results.csv`` and
    ``results.parquet`` in ``folder``; warns naming cells that have no results (yet). ``keys``
    limits the table to those cells; ``predictions`` keeps each row's ``test_predictions`` (a list
    per row, left out of the files)."""
    folder = Path(folder)
    rows, missing, swept = [], [], []
    for meta_path in sorted((folder / "cells").glob("*/cell.json")):
        meta = read_json(meta_path, required=META_KEYS)
        if meta is None or (keys is not None and meta["key"] not in keys):
            continue
        swept += [s for s in meta["swept"] if s not in swept]
        result_path = meta_path.parent / meta["result"]
        result = read_json(result_path, required=("rows",))
        if result is None:
            missing.append(meta["key"])
            continue
        params, settings = result.get("parameters", {}), meta["settings"]
        for row in result["rows"]:
            if row["recipe"] != settings["RECIPE"] or row["seed"] != settings["SEED"]:
                raise ConfigError(f"{result_path}: a row of recipe {row['recipe']!r} seed {row['seed']} in the cell of "
                                  f"recipe {settings['RECIPE']!r} seed {settings['SEED']}")
            out = {"dataset": params.get("DATASET", settings["DATASET"]), "recipe": row["recipe"], "seed": row["seed"],
                   "groups": ";".join(meta["groups"]), "profile": params.get("PROFILE", settings.get("PROFILE")),
                   "_index": meta["index"]}
            dropped = ("recipe", "seed", "dataset", *(() if predictions else ("test_predictions",)))
            out.update({k: v for k, v in row.items() if k not in dropped})
            out["cell"] = meta["key"]
            out["_params"] = {**settings, **params}
            rows.append(out)
    if missing:
        warnings.warn(f"{len(missing)} cell(s) in {folder} have no results (failed or not run yet): {missing}",
                      stacklevel=2)
    for row in rows:  # every swept parameter of any cell, at each cell's effective value
        row.update({name: row["_params"].get(name) for name in swept})
    table = pd.DataFrame(rows)
    if not table.empty:
        table = table.sort_values(["_index", "cell"], kind="stable").drop(columns=["_index", "_params"])
        table = table.reset_index(drop=True)
    if table["profile"].isna().all() if "profile" in table else False:
        table = table.drop(columns="profile")  # cells run in-process have no profile
    first = [*TABLE_FIRST, *swept, *TABLE_METRICS]
    columns = [c for c in first if c in table] + [c for c in table if c not in first and c != "cell"] + ["cell"]
    table = table.reindex(columns=columns)
    written = table.drop(columns="test_predictions", errors="ignore")
    for path, write in ((folder / "results.csv", lambda p: written.to_csv(p, index=False)),
                        (folder / "results.parquet", lambda p: written.to_parquet(p, index=False))):
        with atomic_path(path) as tmp:
            write(tmp)
    return table


def summarize(table: pd.DataFrame, by: tuple[str, ...] = ("recipe", "model")) -> pd.DataFrame:
    """Mean and SD over seeds of each metric (and of each modality contribution column, ``shapley_<m>``
    and ``share_<m>``) per ``by`` group (groups in order of first appearance), and the ``seeds`` count.
    Refuses to average rows that differ in a swept parameter (an UPPER_CASE column), the data set, the
    profile or the epochs: add that column to ``by`` or filter the table first (e.g.
    ``table[table.groups.str.contains("table1")]``)."""
    by = list(by)
    grouped = table.groupby(by, sort=False, dropna=False)
    varying = [c for c in table if (c.isupper() or c in CONSTANT_IN_SUMMARY) and c not in by
               and (grouped[c].nunique(dropna=False) > 1).any()]
    if varying:
        raise ValueError(f"rows of one {tuple(by)} group differ in {varying}; add them to `by` or select rows first")
    metrics = [m for m in SUMMARY_METRICS if m in table] + [c for c in table if c.startswith(CONTRIBUTION_PREFIXES)]
    summary = grouped[metrics].agg(["mean", "std"])
    summary.columns = [f"{metric}_{stat}" for metric, stat in summary.columns]
    summary.insert(0, "seeds", grouped.size())
    return summary


def distinct(values: pd.Series) -> str:
    """The distinct values of a column, sorted and comma-joined (``"0, 1, 2"``)."""
    return ", ".join(map(str, sorted(values.dropna().unique())))


def overview(table: pd.DataFrame) -> pd.DataFrame:
    """Per sub-grid: the profiles, epochs and seeds its rows were run at, and its number of cells,
    so a table read from an earlier sweep states the scale that produced it."""
    by_group = table.assign(group=table["groups"].str.split(";")).explode("group")
    return by_group.groupby("group", sort=False).agg(profile=("profile", distinct), epochs=("epochs", distinct),
                                                     seeds=("seed", distinct), cells=("cell", "nunique"))


def in_group(table: pd.DataFrame, name: str) -> pd.DataFrame:
    """The rows of ``table`` whose cell belongs to sub-grid ``name``."""
    return table[table["groups"].str.split(";").apply(lambda groups: name in groups)]


def group_summaries(table: pd.DataFrame, groups: list[str] | None = None) -> dict[str, pd.DataFrame]:
    """``summarize`` per sub-grid (``groups``: names as in the table, default all, in order of first
    appearance), by recipe, model and whatever varies within the sub-grid among the swept parameters,
    the data set, the profile and the epochs (so rows of different settings are never averaged)."""
    if table.empty:
        return {}
    names = list(dict.fromkeys(g for text in table["groups"] for g in text.split(";")))
    out = {}
    for name in groups or names:
        rows = in_group(table, name)
        if rows.empty:
            continue
        varying = [c for c in rows if (c.isupper() or c in CONSTANT_IN_SUMMARY) and rows[c].nunique(dropna=False) > 1]
        order = rows["recipe"].map({r: i for i, r in enumerate(dict.fromkeys(rows["recipe"]))})
        rows = rows.assign(_recipe=order).sort_values(["_recipe", *varying], kind="stable")  # curves in order
        out[name] = summarize(rows.drop(columns="_recipe"), ("recipe", "model", *varying))
    return out


def sensitivity(table: pd.DataFrame, curves: dict[str, str]) -> pd.DataFrame:
    """Sensitivity curves: for each sub-grid -> parameter of ``curves`` (``Grid.sensitivity_groups``),
    the test R2 mean and SD over seeds at each value, compared on the seeds that every value of the
    curve shares (the default value also runs at the tables' seeds). Columns ``group, parameter,
    recipe, model, value, seeds, test_r2_mean, test_r2_std``, sorted by parameter and value."""
    parts = []
    for name, parameter in curves.items():
        rows = in_group(table, name) if not table.empty else table
        if rows.empty or parameter not in rows:
            continue
        shared = set.intersection(*(set(s) for s in rows.groupby(parameter)["seed"].unique()))
        rows = rows[rows["seed"].isin(shared)]
        if rows.empty:
            continue
        curve = summarize(rows, ("recipe", "model", parameter)).reset_index()
        parts.append(curve.assign(group=name, parameter=parameter, value=curve[parameter])[
            ["group", "parameter", "recipe", "model", "value", "seeds", "test_r2_mean", "test_r2_std"]])
    if not parts:
        return pd.DataFrame(columns=["group", "parameter", "recipe", "model", "value", "seeds", "test_r2_mean",
                                     "test_r2_std"])
    return pd.concat(parts, ignore_index=True).sort_values(["parameter", "value"], kind="stable").reset_index(drop=True)


def eye_predictions(folder: str | Path, keys: list[str] | None = None) -> pd.DataFrame:
    """Per-eye test predictions of the finished cells under ``folder/cells`` (``keys``: only those):
    one row per (cell, model, test eye), columns ``cell, recipe, seed, model, eye, y, prediction``,
    eyes in test-split order (``experiments.paired`` compares two recipes on them). A result holds
    them when its rows carry ``test_predictions`` and it records ``test`` (``ids`` and labels ``y``
    of the test eyes), as the sweep's cell notebook does; cells without them are left out, named in
    a warning and in ``attrs["without"]``."""
    parts, without = [], []
    for meta_path in sorted(Path(folder).glob("cells/*/cell.json")):
        meta = read_json(meta_path, required=META_KEYS)
        if meta is None or (keys is not None and meta["key"] not in keys):
            continue
        result = read_json(meta_path.parent / meta["result"], required=("rows",))
        if result is None:
            continue
        test = result.get("test") or {}
        if "ids" not in test or not all("test_predictions" in row for row in result["rows"]):
            without.append(meta["key"])
            continue
        for row in result["rows"]:
            parts.append(pd.DataFrame({"cell": meta["key"], "recipe": row["recipe"], "seed": row["seed"],
                                       "model": row["model"], "eye": test["ids"], "y": test["y"],
                                       "prediction": row["test_predictions"]}))
    if without:
        warnings.warn(f"{len(without)} finished cell(s) in {folder} record no per-eye test predictions (run before "
                      f"they were recorded): {without}", stacklevel=2)
    columns = ["cell", "recipe", "seed", "model", "eye", "y", "prediction"]
    table = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=columns)
    table.attrs["without"] = without
    return table
