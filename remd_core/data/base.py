"""What every loader shares: the split settings and the assembly of arrays into the sample format."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .checks import DataError, check_unique_ids
from .format import DatasetSpec, MultimodalDataset, MultimodalSplit
from .splits import split_sizes, stratified_split


@dataclass
class SplitConfig:
    """Split settings shared by every catalog entry.

    ``test`` and ``val`` are counts or fractions (``val`` as a fraction of what remains after the
    test set is carved out). Splits are deterministic in ``seed`` and stratified over
    ``n_label_bins`` quantile bins of the label.
    """

    seed: int = 0
    test: float = 200
    val: float = 0.15
    n_label_bins: int = 10


def assemble(spec: DatasetSpec, config: SplitConfig, ids, modalities: dict[str, np.ndarray],
             present: np.ndarray, tabular: torch.Tensor, y: np.ndarray, stage: np.ndarray,
             predefined: dict[str, np.ndarray] | None = None, source: str = "") -> MultimodalDataset:
    """Cut arrays of all samples into train / val / test splits in the common format.

    ``predefined`` gives split positions chosen by the data's publisher (official folders);
    otherwise the split is stratified by label with ``config``.
    """
    ids = [str(i) for i in ids]
    check_unique_ids(ids, source or spec.name)
    if predefined is None:
        predefined = stratified_split(y, split_sizes(len(ids), config.test, config.val), config.seed,
                                      config.n_label_bins)
    empty = [k for k, v in predefined.items() if len(v) == 0]
    if empty:
        raise DataError(f"{source or spec.name}: split(s) {empty} are empty after filtering")
    # arrays, or rows read per split when indexed (``streaming.StoredRows``: one copy from the store)
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) if isinstance(v, (np.ndarray, torch.Tensor, list)) else v
               for k, v in modalities.items()}
    present_t = torch.as_tensor(present, dtype=torch.bool)
    y_t = torch.as_tensor(y, dtype=torch.float32)
    stage_t = torch.as_tensor(stage, dtype=torch.int64)
    splits = {}
    for name, index in predefined.items():
        idx = torch.as_tensor(index, dtype=torch.int64)
        splits[name] = MultimodalSplit(
            name=name, spec=spec, ids=[ids[i] for i in idx.tolist()],
            modalities={k: v[idx] for k, v in tensors.items()}, present=present_t[idx],
            tabular=tabular[idx], y=y_t[idx], stage=stage_t[idx],
        )
    return MultimodalDataset(spec=spec, splits=splits, config=config)
