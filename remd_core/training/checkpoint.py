"""Training checkpoints: everything ``training.fit`` needs to continue a run exactly where it stopped.

A run's checkpoint folder holds two checkpoints, no more:

- ``last.pt``: the model, the optimizer, the learning-rate schedule, the strategy's state (SGM's
  sharpness window and gamma, OGM-GE's noise generator), every random state that decides the run
  (torch's global generator, numpy's, Python's, and the trainer's data-order and augmentation
  generator), the epoch's sample order and position in it, the per-step and per-epoch history so
  far, the best validation score and which file holds its weights, and a fingerprint of the
  training settings and data (a checkpoint of other settings is refused, never mixed in);
- ``best-epoch<k>.pt``: the weights of the best validation epoch so far. Its name carries the
  epoch, and the older one is deleted only after ``last.pt`` names the newer, so a crash between
  the two writes never leaves ``last.pt`` pointing at weights of another epoch.

Everything is stored as tensors, numbers, strings, lists and dicts, so checkpoints load with
``torch.load(..., weights_only=True)`` (``files.load_torch``): opening one that someone sent cannot
execute code. Each file is written atomically with a SHA-256 sidecar (``files.save_torch``); a
corrupt one is reported and the run starts over rather than reading it.
"""

from __future__ import annotations

import json
import random
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

from ..files import load_torch, remove_stale_temporaries, save_torch
from ..paths import display_path
from ..timing import timed

FORMAT = 1
LAST = "last.pt"


class CheckpointMismatchError(RuntimeError):
    """A checkpoint was written by a run with other settings or data than the one resuming it."""


def rng_state(generator: torch.Generator) -> dict:
    """Every random state of a run in weights-only form: torch's global generator, numpy's global
    generator, Python's ``random`` and the trainer's own ``generator``."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {"torch": torch.get_rng_state(), "generator": generator.get_state(),
            "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
                      "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
            "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next}}


def restore_rng_state(state: dict, generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    generator.set_state(state["generator"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["position"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))


@dataclass
class LoopState:
    """Where a run of ``fit`` stands, in weights-only form: the epoch and global step, the epoch's
    sample order and position in it, the per-step rows of finished epochs (``step_rows``) and of the
    current one up to the last checkpoint (``partial_rows``), the per-epoch rows, the best validation
    score with its epoch and weights file, and the seconds spent before this process."""

    epoch: int = 0
    step: int = 0
    order: torch.Tensor | None = None
    position: int = 0
    step_rows: list = field(default_factory=list)
    epoch_rows: list = field(default_factory=list)
    partial_rows: list = field(default_factory=list)
    best: dict = field(default_factory=lambda: {"r2": -np.inf, "epoch": 0, "file": None})
    elapsed: float = 0.0

    def as_dict(self) -> dict:
        """The fields as a flat dict (no copy: a checkpoint is written before the loop moves on)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass
class Trainables:
    """What a checkpoint holds beside the ``LoopState``: the model, optimizer, learning-rate schedule,
    strategy, and the random states (``generator``: the run's data-order and augmentation draws)."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    strategy: object
    generator: torch.Generator

    def state(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "strategy": self.strategy.state_dict(),
                "rng": rng_state(self.generator)}

    def load(self, saved: dict) -> None:
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        self.strategy.load_state_dict(saved["strategy"])
        restore_rng_state(saved["rng"], self.generator)


class Checkpoints:
    """The checkpoint folder of one ``fit``. ``fingerprint`` (JSON-able) identifies the settings and
    data; ``load`` refuses a checkpoint whose fingerprint differs."""

    def __init__(self, folder: str | Path, fingerprint: dict):
        self.folder = Path(folder)
        self.fingerprint = json.loads(json.dumps(fingerprint, sort_keys=True, default=str))

    @property
    def last(self) -> Path:
        return self.folder / LAST

    def load(self) -> dict | None:
        """The last checkpoint, or ``None`` when there is none (or it was corrupt: then reported
        and moved aside, and the run starts over)."""
        remove_stale_temporaries(self.folder)  # a write the killed run did not finish
        state = load_torch(self.last)
        if state is None:
            return None
        if state.get("format") != FORMAT:
            raise CheckpointMismatchError(f"{self.last}: checkpoint format {state.get('format')!r}, this version "
                                          f"reads {FORMAT}; delete {self.folder} to start over")
        if state["fingerprint"] != self.fingerprint:
            before, now = state["fingerprint"], self.fingerprint
            changed = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
            details = _config_changes(before, now)
            raise CheckpointMismatchError(f"{self.last} was written by a run with other {', '.join(changed)}"
                                          f"{details}; resume with the same settings, or delete {self.folder} "
                                          "to start over")
        if state["best"]["file"] and not (self.folder / state["best"]["file"]).exists():
            raise CheckpointMismatchError(f"{self.last} names best weights {state['best']['file']}, which are missing")
        self._remove_stale(state["best"]["file"])
        return state

    @timed("checkpoints")
    def save(self, state: dict, best_weights: dict | None = None) -> None:
        """Write ``last.pt`` (``state["best"]["file"]`` names the best weights); ``best_weights``,
        when given, are that file's new content and are written first."""
        if best_weights is not None:
            save_torch(self.folder / state["best"]["file"], best_weights)
        save_torch(self.last, {**state, "format": FORMAT, "fingerprint": self.fingerprint})
        self._remove_stale(state["best"]["file"])

    def dump(self, loop: LoopState, parts: Trainables, best_weights: dict | None = None) -> None:
        """``save`` a run: its ``loop`` state and its ``parts``."""
        self.save({**loop.as_dict(), **parts.state()}, best_weights)

    def restore(self, parts: Trainables) -> tuple[LoopState, dict | None] | None:
        """Load the last checkpoint into ``parts``; returns its ``LoopState`` and best weights so far,
        or ``None`` when there is no checkpoint to resume from."""
        saved = self.load()
        if saved is None:
            return None
        parts.load(saved)
        loop = LoopState(**{f.name: saved[f.name] for f in fields(LoopState)})
        print(f"resuming from {display_path(self.last)}: epoch {loop.epoch + 1}, step {loop.step}",
              file=sys.stderr, flush=True)
        return loop, self.best_weights(loop.best["file"]) if loop.best["file"] else None

    def best_weights(self, name: str) -> dict:
        weights = load_torch(self.folder / name)
        if weights is None:
            raise CheckpointMismatchError(f"the best weights {self.folder / name} are missing or corrupt")
        return weights

    def _remove_stale(self, keep: str | None) -> None:
        for path in self.folder.glob("best-epoch*.pt*"):
            if path.name not in (keep, f"{keep}.sha256"):
                path.unlink(missing_ok=True)


def _config_changes(before: dict, now: dict) -> str:
    try:
        a, b = json.loads(before.get("config", "{}")), json.loads(now.get("config", "{}"))
    except (TypeError, ValueError):
        return ""
    changed = [f"{k} {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    return f" (settings: {'; '.join(changed)})" if changed else ""


def load_encoders(model, paths: dict[str, str]) -> None:
    """Load stage-1 encoder weights (``save_encoders``' files) into ``model``'s encoders."""
    for modality, path in paths.items():
        if modality not in model.encoders:
            raise ValueError(f"init_encoders names {modality!r}, but the model has {list(model.encoders)}")
        weights = load_torch(path)
        if weights is None:
            raise FileNotFoundError(f"no intact encoder weights at {path} (missing, or corrupt and moved aside)")
        model.encoders[modality].load_state_dict(weights)


def save_encoders(model, folder: Path) -> dict[str, str]:
    """Write each encoder's weights to ``folder/<modality>.pt`` (with a checksum sidecar, see
    ``files.save_torch``); returns the paths for ``init_encoders``."""
    folder = Path(folder)
    paths = {}
    for modality, encoder in model.encoders.items():
        path = folder / f"{modality}.pt"
        save_torch(path, encoder.state_dict())
        paths[modality] = str(path)
    return paths
