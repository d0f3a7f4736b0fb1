"""Training checkpoints: everything ``trainer.fit`` needs to continue a run exactly where it stopped.

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
from pathlib import Path

import numpy as np
import torch

from .files import load_torch, remove_stale_temporaries, save_torch
from .timing import timed

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
