"""TensorBoard scalars of one ``fit``, written once per epoch (issue 25, item 1).

``fit(log_dir=...)`` opens a ``RunBoard`` on that folder (``torch.utils.tensorboard.SummaryWriter``)
and hands it, at every epoch end, the epoch's per-step rows (the history rows ``fit`` has already
moved to the host in one transfer per key: no tensor is read here) and the epoch's row of
``FitResult.epochs``. ``epoch_scalars`` turns them into tags; each is written at global step = the
epoch (1, 2, ...), so every curve shares one x axis:

=================================  ===============================================================
tag                                value
=================================  ===============================================================
``train/loss_fused``,              mean over the epoch's steps of the batch losses (``loss_extra``:
``train/loss_<modality>``,         the contrastive or model-specific term)
``train/loss_extra``
``train/margin``                   stage 1's mean margin ``m(t)`` (contrastive runs only)
``train/lr``                       the learning rate after the epoch's scheduler step (as logged in
                                   ``FitResult.epochs``)
``val/r2``, ``val/mse``,           the epoch's validation metrics
``val/mae``
``strategy/<key>``                 mean over the epoch of every other value a strategy logs per
                                   step (SGM's ``gamma`` and ``sharpness``, MMPareto's ``cos_<m>``,
                                   ...); NaN steps (a value logged on some steps only) left out
``probe/loss_<head>[_head|_tail]`` mean of the fixed probe set's losses over the probes of the
                                   epoch (``diagnosis.probe``), when the run probes
``contribution/shapley_<m>``,      each modality's Shapley value on the validation split and its
``contribution/share_<m>``         share (``diagnosis.contribution``), fused models
=================================  ===============================================================

Per epoch, not per step: a step's scalars would be written from the same host rows, but an epoch
point is what a run is watched by, and the per-step curves are in ``history.csv``. The file is
flushed at every epoch end, so TensorBoard shows an epoch as soon as it ends. A resumed run opens
its writer with ``purge_step`` = the first epoch it trains, so TensorBoard drops whatever an
interrupted run wrote past its last checkpoint (and a run started afresh in a folder drops an older
run's points). ``benchmarks/bench_board.py`` measures the cost (at most 2 % of a step is the budget).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

EPOCH_TAGS = {"val_r2": "val/r2", "val_mse": "val/mse", "val_mae": "val/mae", "lr": "train/lr"}
"""Columns of ``FitResult.epochs`` and their tags (the contribution columns are added by prefix)."""
ROW_KEYS = ("step", "epoch")
"""Per-step row keys that are positions, not values."""


def _tag(key: str) -> str:
    if key.startswith("loss_") or key == "margin":
        return f"train/{key}"
    if key.startswith("probe_"):
        return f"probe/{key.removeprefix('probe_')}"
    return f"strategy/{key}"


def _mean(values: Sequence[float]) -> float | None:
    finite = [v for v in values if v is not None and not math.isnan(v)]
    return sum(finite) / len(finite) if finite else None


def epoch_scalars(step_rows: Sequence[Mapping], epoch_row: Mapping, margin: bool = True) -> dict[str, float]:
    """The scalars of one epoch (see the module docstring): tag -> value. ``step_rows``: the epoch's
    per-step history rows (host floats); ``epoch_row``: its row of ``FitResult.epochs``; ``margin``:
    whether to log the margin (False for a run without a contrastive term, where it is a constant)."""
    out = {}
    keys = dict.fromkeys(k for row in step_rows for k in row if k not in ROW_KEYS)
    for key in keys:
        if key == "margin" and not margin:
            continue
        value = _mean([row.get(key) for row in step_rows])
        if value is not None:
            out[_tag(key)] = value
    for key, tag in EPOCH_TAGS.items():
        if key in epoch_row:
            out[tag] = float(epoch_row[key])
    for key, value in epoch_row.items():
        if key.startswith(("shapley_", "share_")) and value is not None and not math.isnan(value):
            out[f"contribution/{key}"] = float(value)
    return out


class RunBoard:
    """A ``SummaryWriter`` on ``log_dir`` that ``fit`` feeds once per epoch (``epoch``). ``first_epoch``:
    the first epoch (1-based) this run writes; earlier points of a resumed run stay, later ones are
    purged. ``margin``: log the stage-1 margin."""

    def __init__(self, log_dir: str | Path, first_epoch: int = 1, margin: bool = True):
        from torch.utils.tensorboard import SummaryWriter  # imported here: 0.1 s, only for runs that log

        self.log_dir, self.margin = Path(log_dir), margin
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.writer = SummaryWriter(str(self.log_dir), purge_step=first_epoch, flush_secs=3600)

    def epoch(self, epoch: int, step_rows: Sequence[Mapping], epoch_row: Mapping) -> dict[str, float]:
        """Write epoch ``epoch``'s scalars (``epoch_scalars``) and flush; returns them."""
        scalars = epoch_scalars(step_rows, epoch_row, self.margin)
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, epoch)
        self.writer.flush()
        return scalars

    def close(self) -> None:
        self.writer.close()
