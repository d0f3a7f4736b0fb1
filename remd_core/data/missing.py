"""The missing-modality protocol: extra absent modalities drawn by seed on top of the data's own mask.

An eye may arrive with only a fundus photograph or only an OCT (issue 13). The sample format already
carries a per-sample ``present`` mask (``remd_core.data.format``); this module makes more modalities
absent, at a chosen rate per modality, for training and for testing, reproducibly:

    ds = with_missing(load(...), MissingConfig(train={"fundus": 0.3}, test={"oct": 0.5}, seed=0))

Choices made here (each one is tested in ``tests/unit/data/test_missing.py``):

- **Which rates a split gets.** ``train`` gets ``config.train``, ``test`` gets ``config.test``, and
  ``val`` gets ``config.train`` by default (``config.val = "train"``): validation selects the epoch of
  a model trained under the training conditions, so it is scored under them. ``val="test"`` scores
  validation under the test rates, ``val="none"`` leaves it as the data has it. A split with another
  name is an error naming it.
- **Draws.** One uniform ``u[i, k]`` per sample and modality from ``numpy.random.default_rng``,
  seeded with ``config.seed`` and a stable (SHA-256, never Python's salted ``hash()``) code of the
  split's name, so each split draws independently and the same seed gives the same masks in every
  process. Modality ``k`` of sample ``i`` is drawn absent when ``u[i, k] < rate_k``. ``u`` does not
  depend on the rates, so the absent sets are nested in the rate (an eye missing its OCT at rate 0.3
  is also missing it at 0.5, apart from the rule below) and one modality's rate never changes
  another modality's draw. Draws are by position in the split, not by sample id.
- **On top of the data's mask.** A modality absent in the data stays absent (never revived); only
  modalities present in the data can be drawn absent.
- **At least one modality per eye.** When the draw would remove every modality an eye has in the
  data, the eye keeps one of the modalities the draw removed, chosen uniformly among them (the one
  with the largest ``u[i, k] / rate_k``: given a draw, that ratio is uniform on [0, 1), so the choice
  needs no further random numbers). So the realised rate of a modality is below its requested rate
  whenever the draw can remove every modality of an eye: with two modalities at rates p and q it is
  p - p q / 2 for the fundus, and for an eye whose data has only an OCT, an OCT rate removes nothing.
  Eyes with no modality in the data itself are left as they are (nothing can be revived) and counted.
- **Zeros.** A newly absent modality's tensor is set to zeros of its own dtype (uint8 zeros for
  images stored as uint8), as the format requires of every absent modality; present ones are
  untouched. The input data set is never modified: changed tensors are copies, unchanged ones shared.
- **Rates of 0** everywhere give a data set with the input's very tensors.
- **Report.** ``dataset.notes["missing"]`` holds the configuration, the rule, and per split and
  modality the requested rate, how many eyes had the modality in the data (``eligible``), how many
  the draw removed (``drawn``), how many of those the at-least-one rule kept (``kept``), how many were
  removed (``dropped = drawn - kept``), the realised rate ``dropped / eligible`` and the share of the
  split's eyes without the modality afterwards (``absent``), plus the counts of missing patterns.
  ``missing_table(dataset)`` gives it as one table. Applying ``with_missing`` to a data set that
  already went through it is an error: put both sets of rates into one ``MissingConfig``.

Missing patterns (``missing_pattern``): ``"both"`` when the two modalities of a two-modality set are
present, ``"<name> only"`` when exactly one is, ``"none"`` when none is; otherwise (three or more
modalities) the present names joined by ``"+"`` in the spec's order, the full set included (so a
pattern is never ``"all"``, the name of the all-samples row of ``metrics.per_pattern_report``).
``PATTERNS`` is the table order for the eye data sets; ``patterns_for(names)`` gives it for any.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import math
import numbers
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from ..config import from_dict
from .format import MultimodalDataset, MultimodalSplit

PATTERNS = ("both", "fundus only", "oct only")
"""Row order of per-pattern tables for the fundus + OCT data sets (see ``patterns_for``)."""

VAL_CHOICES = ("train", "test", "none")
SPLITS = ("train", "val", "test")
AT_LEAST_ONE_RULE = ("an eye keeps at least one modality: when the draw would remove every modality it has "
                     "in the data, it keeps one of the drawn ones, chosen uniformly (largest u/rate)")


def _check_rates(rates: Any, which: str) -> dict[str, float]:
    if not isinstance(rates, Mapping):
        raise ValueError(f"MissingConfig.{which} must be a mapping modality -> rate, got {type(rates).__name__}")
    out = {}
    for name, rate in rates.items():
        if not isinstance(name, str):
            raise ValueError(f"MissingConfig.{which}: modality names must be strings, got {name!r}")
        if isinstance(rate, bool) or not isinstance(rate, numbers.Real):
            raise ValueError(f"MissingConfig.{which}: rate of modality {name!r} must be a number in [0, 1], "
                             f"got {rate!r}")
        rate = float(rate)
        if not (math.isfinite(rate) and 0.0 <= rate <= 1.0):
            raise ValueError(f"MissingConfig.{which}: rate of modality {name!r} must be in [0, 1], got {rate:g}")
        out[name] = rate
    return out


@dataclass(frozen=True)
class MissingConfig:
    """Per-modality missing rates (share of eyes whose modality is removed, in [0, 1]).

    ``train`` and ``test``: modality name -> rate for the train and test splits (a modality not
    named has rate 0). ``val``: which rates the validation split gets, "train" (default: validation
    selects the epoch of a model trained under the training rates), "test" or "none". ``seed``: a
    non-negative integer; the masks are a function of it and the split's name only.
    """

    train: dict = field(default_factory=dict)
    test: dict = field(default_factory=dict)
    val: str = "train"
    seed: int = 0

    def __post_init__(self):
        object.__setattr__(self, "train", _check_rates(self.train, "train"))
        object.__setattr__(self, "test", _check_rates(self.test, "test"))
        if self.val not in VAL_CHOICES:
            raise ValueError(f"MissingConfig.val must be one of {VAL_CHOICES}, got {self.val!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, numbers.Integral) or self.seed < 0:
            raise ValueError(f"MissingConfig.seed must be a non-negative integer, got {self.seed!r}")
        object.__setattr__(self, "seed", int(self.seed))

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], context: str = "") -> "MissingConfig":
        """Build from a mapping; unknown keys raise ``ConfigError`` naming them."""
        return from_dict(cls, values, context or "the missing-modality protocol")

    @property
    def active(self) -> bool:
        """Whether any rate is above 0 (otherwise ``with_missing`` changes nothing)."""
        return any(r > 0 for r in (*self.train.values(), *self.test.values()))

    def rates(self, split: str) -> dict[str, float]:
        """The rates split ``split`` gets (see the class docstring for the validation split)."""
        if split not in SPLITS:
            raise ValueError(f"the missing-modality protocol has rates for splits {SPLITS}, not {split!r}")
        source = self.val if split == "val" else split
        return {} if source == "none" else dict(getattr(self, source))

    def check_modalities(self, names: Sequence[str], dataset: str = "") -> None:
        """Every modality named in the rates must be one of ``names``."""
        where = f" of data set {dataset!r}" if dataset else ""
        for which in ("train", "test"):
            unknown = sorted(set(getattr(self, which)) - set(names))
            if unknown:
                raise ValueError(f"MissingConfig.{which} names unknown modality(ies) {unknown}; the modalities"
                                 f"{where} are {tuple(names)}")


def _stable_code(text: str) -> int:
    """A 64-bit integer from ``text`` that is the same in every process (unlike ``hash()``)."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "little")


def draw_uniforms(seed: int, split: str, n: int, k: int) -> np.ndarray:
    """The uniforms ``u[n, k]`` behind the masks of split ``split`` (see the module docstring)."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), _stable_code(f"remd_core.missing/{split}")]))
    return rng.random((n, k))


def draw_absent(present: np.ndarray, rates: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Which modalities the protocol removes, as bool ``[N, K]`` arrays ``(dropped, kept)``.

    ``present``: the data's mask; ``rates``: ``[K]``; ``u``: the uniforms. ``drawn = present & (u <
    rates)``; where ``drawn`` covers every modality of an eye that has one, the drawn modality with
    the largest ``u / rate`` is kept (``kept``); ``dropped = drawn & ~kept``.
    """
    present = np.asarray(present, bool)
    drawn = present & (u < rates[None, :])
    kept = np.zeros_like(drawn)
    emptied = drawn.any(1) & ~(present & ~drawn).any(1)
    if emptied.any():
        score = np.where(drawn, u / np.where(rates > 0, rates, 1.0)[None, :], -np.inf)  # drawn implies rate > 0
        rows = np.flatnonzero(emptied)
        kept[rows, score[rows].argmax(1)] = True
    return drawn & ~kept, kept


def missing_pattern(present, names: Sequence[str]) -> list[str]:
    """The missing pattern of each sample of a ``present`` mask ``[N, K]`` (names in mask order):
    "both" (two modalities, both present), "<name> only", "none", else the "+"-joined present names."""
    mask = present.detach().cpu().numpy() if hasattr(present, "detach") else np.asarray(present)
    mask = mask.astype(bool)
    names = tuple(names)
    if mask.ndim != 2 or mask.shape[1] != len(names):
        raise ValueError(f"present has shape {mask.shape}, expected [N, {len(names)}] for modalities {names}")
    return [_pattern_name(tuple(n for n, p in zip(names, row) if p), names) for row in mask.tolist()]


def _pattern_name(present_names: tuple[str, ...], names: tuple[str, ...]) -> str:
    if not present_names:
        return "none"
    if len(present_names) == 1:
        return f"{present_names[0]} only"
    if len(names) == 2:
        return "both"
    return "+".join(present_names)


def patterns_for(names: Sequence[str]) -> tuple[str, ...]:
    """Every pattern of modalities ``names`` with at least one present, most modalities first, then
    in the spec's order (``PATTERNS`` for fundus + OCT)."""
    names = tuple(names)
    return tuple(_pattern_name(c, names) for r in range(len(names), 0, -1) for c in itertools.combinations(names, r))


def _split_with_missing(split: MultimodalSplit, config: MissingConfig) -> tuple[MultimodalSplit, dict]:
    names = split.spec.modality_names
    rates_by_name = config.rates(split.name)
    rates = np.array([rates_by_name.get(m, 0.0) for m in names])
    present = split.present.numpy().astype(bool)
    n, k = present.shape
    u = draw_uniforms(config.seed, split.name, n, k)
    dropped, kept = draw_absent(present, rates, u)
    drawn = dropped | kept
    modalities = dict(split.modalities)
    for j, m in enumerate(names):
        if dropped[:, j].any():
            t = split.modalities[m].clone()
            t[torch.from_numpy(dropped[:, j])] = 0
            modalities[m] = t
    new_present = present & ~dropped
    new = dataclasses.replace(split, ids=list(split.ids), modalities=modalities,
                              present=torch.from_numpy(new_present) if dropped.any() else split.present)
    eligible = present.sum(0)
    counts = Counter(missing_pattern(new_present, names))
    report = {
        "n": int(n),
        "rates": {m: float(r) for m, r in zip(names, rates)},
        "modalities": {m: {"requested": float(rates[j]), "eligible": int(eligible[j]), "drawn": int(drawn[:, j].sum()),
                           "kept": int(kept[:, j].sum()), "dropped": int(dropped[:, j].sum()),
                           "realised": float(dropped[:, j].sum() / eligible[j]) if eligible[j] else float("nan"),
                           "absent": float((~new_present[:, j]).mean())}
                       for j, m in enumerate(names)},
        "patterns": {p: counts[p] for p in (*patterns_for(names), "none") if counts[p]},
        "no_modality_in_data": int((~present.any(1)).sum()),
    }
    return new, report


def with_missing(dataset: MultimodalDataset, config: MissingConfig) -> MultimodalDataset:
    """A new data set whose splits have the extra absent modalities ``config`` draws (see the module
    docstring for every rule); the input is not modified. ``notes["missing"]`` reports the draw."""
    if not isinstance(config, MissingConfig):
        raise TypeError(f"config must be a MissingConfig, got {type(config).__name__}")
    if "missing" in dataset.notes:
        raise ValueError(f"data set {dataset.name!r} already has missing modalities drawn (notes['missing']); "
                         "apply with_missing once, with every rate in one MissingConfig")
    config.check_modalities(dataset.spec.modality_names, dataset.name)
    for name in dataset.splits:
        if name not in SPLITS:
            raise ValueError(f"data set {dataset.name!r} has split {name!r}; the missing-modality protocol has rates "
                             f"for splits {SPLITS} only")
    splits, reports = {}, {}
    for name, split in dataset.splits.items():
        splits[name], reports[name] = _split_with_missing(split, config)
    notes = {**dataset.notes, "missing": {"config": dataclasses.asdict(config), "rule": AT_LEAST_ONE_RULE,
                                          "splits": reports}}
    return dataclasses.replace(dataset, splits=splits, notes=notes)


def missing_table(dataset: MultimodalDataset):
    """``notes["missing"]`` as one table: a row per split and modality with the requested rate, the
    counts and the realised rate (see the module docstring)."""
    import pandas as pd

    if "missing" not in dataset.notes:
        raise ValueError(f"data set {dataset.name!r} has no missing-modality draw; use with_missing first")
    rows = [{"split": s, "modality": m, "n": r["n"], **v}
            for s, r in dataset.notes["missing"]["splits"].items() for m, v in r["modalities"].items()]
    return pd.DataFrame(rows).set_index(["split", "modality"])
