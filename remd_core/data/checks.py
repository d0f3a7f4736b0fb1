"""Input checks shared by every loader: bad input raises ``DataError`` naming the file or sample
and what is wrong. Nothing is dropped silently."""

from __future__ import annotations

from collections import Counter
from typing import Iterable, Sequence

import numpy as np

MD_RANGE_DB = (-35.0, 5.0)
"""Plausible MD (dB): the 24-2 and 30-2 tests floor near -35 dB; above about +3 dB is implausible,
+5 dB leaves room for measurement noise."""


class DataError(ValueError):
    """A data set on disk (or a generated one) does not satisfy what the workbench needs."""


def brief_list(items: Iterable, limit: int = 10) -> str:
    items = list(items)
    shown = ", ".join(map(str, items[:limit]))
    return shown + (f", ... ({len(items)} in all)" if len(items) > limit else "")


def check_unique_ids(ids: Sequence[str], source: str) -> None:
    duplicated = sorted(i for i, c in Counter(ids).items() if c > 1)
    if duplicated:
        raise DataError(f"{source}: duplicate sample id(s) {brief_list(duplicated)}")


def check_labels(ids: Sequence[str], y, source: str, valid_range: tuple[float, float] | None = MD_RANGE_DB,
                 label: str = "MD") -> np.ndarray:
    """Labels must be finite and, when ``valid_range`` is given, inside it (MD: -35 to +5 dB)."""
    y = np.asarray(y, dtype=np.float64)
    bad_nan = [i for i, v in zip(ids, y) if not np.isfinite(v)]
    if bad_nan:
        raise DataError(f"{source}: {label} is missing or not a number for sample(s) {brief_list(bad_nan)}")
    if valid_range is not None:
        lo, hi = valid_range
        bad = [f"{i} ({v:g})" for i, v in zip(ids, y) if not lo <= v <= hi]
        if bad:
            raise DataError(f"{source}: implausible {label} outside [{lo:g}, {hi:g}] for sample(s) {brief_list(bad)}")
    return y


def check_id_sets(label_ids: Iterable[str], disk_ids: Iterable[str], label_source: str, disk_source: str) -> None:
    """Every labelled sample must be on disk and every sample on disk must be labelled."""
    label_ids, disk_ids = set(label_ids), set(disk_ids)
    only_labels = sorted(label_ids - disk_ids)
    only_disk = sorted(disk_ids - label_ids)
    problems = []
    if only_labels:
        problems.append(f"id(s) in {label_source} but not in {disk_source}: {brief_list(only_labels)}")
    if only_disk:
        problems.append(f"id(s) in {disk_source} but not in {label_source}: {brief_list(only_disk)}")
    if problems:
        raise DataError("; ".join(problems))
