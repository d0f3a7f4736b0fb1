"""Deterministic label-stratified splits, so the long tail appears in every split."""

from __future__ import annotations

import numpy as np

from .checks import DataError


def label_bins(y: np.ndarray, n_bins: int) -> np.ndarray:
    """Quantile bins of a continuous label (ties fall in one bin). Quantile bins, not equal-width
    ones, so each bin holds enough samples to be shared across splits; the lowest bin is the
    severe tail."""
    y = np.asarray(y, dtype=np.float64)
    edges = np.unique(np.quantile(y, np.linspace(0, 1, n_bins + 1)[1:-1]))
    return np.searchsorted(edges, y, side="right")


def stratified_split(y, sizes: dict[str, int], seed: int, n_bins: int = 10) -> dict[str, np.ndarray]:
    """Split positions ``0..N-1`` into named parts of exact ``sizes`` (which must sum to N),
    stratified over quantile bins of ``y``.

    Within each bin the samples are shuffled with ``seed`` and dealt out in proportion to the part
    sizes (largest remainder), then leftovers are moved so each part has exactly its size.
    Returns sorted position arrays.
    """
    y = np.asarray(y, dtype=np.float64)
    n = len(y)
    if sum(sizes.values()) != n:
        raise DataError(f"split sizes {sizes} add up to {sum(sizes.values())}, but there are {n} samples")
    empty = [k for k, v in sizes.items() if v <= 0]
    if empty:
        raise DataError(f"split(s) {empty} would be empty (sizes {sizes} for {n} samples)")
    rng = np.random.default_rng(seed)
    names = list(sizes)
    target = np.array([sizes[k] for k in names], dtype=np.float64) / n
    parts: dict[str, list[int]] = {k: [] for k in names}
    bins = label_bins(y, n_bins)
    for b in np.unique(bins):
        members = rng.permutation(np.flatnonzero(bins == b))
        quota = target * len(members)
        counts = np.floor(quota).astype(int)
        for j in np.argsort(-(quota - counts))[: len(members) - counts.sum()]:
            counts[j] += 1
        start = 0
        for k, c in zip(names, counts):
            parts[k].extend(members[start:start + c].tolist())
            start += c
    _balance(parts, sizes, rng)
    return {k: np.sort(np.asarray(v, dtype=np.int64)) for k, v in parts.items()}


def _balance(parts: dict[str, list[int]], sizes: dict[str, int], rng: np.random.Generator) -> None:
    """Move random members from parts over their size to parts under it."""
    over = [k for k in parts if len(parts[k]) > sizes[k]]
    under = [k for k in parts if len(parts[k]) < sizes[k]]
    for k in over:
        rng.shuffle(parts[k])
    for k in under:
        while len(parts[k]) < sizes[k]:
            donor = next(d for d in over if len(parts[d]) > sizes[d])
            parts[k].append(parts[donor].pop())


def split_sizes(n: int, test: int | float, val: int | float) -> dict[str, int]:
    """Turn test and validation sizes (counts, or fractions of all samples for test and of the
    remaining training samples for validation) into exact counts."""
    n_test = int(round(test * n)) if isinstance(test, float) and test < 1 else int(test)
    n_trainval = n - n_test
    n_val = int(round(val * n_trainval)) if isinstance(val, float) and val < 1 else int(val)
    sizes = {"train": n_trainval - n_val, "val": n_val, "test": n_test}
    bad = [k for k, v in sizes.items() if v <= 0]
    if bad:
        raise DataError(f"with {n} samples, test={test} and val={val} leave split(s) {bad} empty")
    return sizes
