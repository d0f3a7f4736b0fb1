"""The one sample format every catalog entry produces.

A split holds its samples as stacked tensors (fast batch gathering on CPU, one copy to the GPU),
and ``split[i]`` gives one sample as a dict with these keys:

``id``        sample id, a string (real IDs such as "0201" are zero-padded: never cast them).
``<modality>``  one tensor per modality: images as float32 in [0, 1] (fundus ``[C, H, W]``,
              OCT ``[S, H, W]`` with S B-scans), vector modalities as float32 ``[D]``.
``present``   bool ``[K]``: which modalities were acquired for this sample (order of
              ``spec.modalities``). An absent modality's tensor is all zeros.
``tabular``   float32 ``[3]``: age (years), male (1/0), eye (0 = OD, 1 = OS); NaN where unknown.
``y``         float32 scalar: the regression label (MD in dB for the eye data sets).
``stage``     int64 scalar: a label-derived stratum (glaucoma stage for eyes). Strata are for
              stratification and per-region reports only, never model inputs.

Images are stored as uint8 and converted on access, which keeps a 700-eye set near 30 MB.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import torch

TABULAR_COLUMNS = ("age", "male", "eye")
EYE_CODES = {"OD": 0.0, "OS": 1.0}
GLAUCOMA_STAGES = ("normal", "early", "intermediate", "advanced")


@dataclass(frozen=True)
class ModalitySpec:
    """What one modality is: ``kind`` is "image" (fundus, ``[C, H, W]``), "volume" (OCT B-scan
    stack, ``[S, H, W]``) or "vector" (``[D]``); ``shape`` excludes the sample axis."""

    name: str
    kind: str
    shape: tuple[int, ...]
    feature_names: tuple[str, ...] = ()

    def __post_init__(self):
        if self.kind not in ("image", "volume", "vector"):
            raise ValueError(f"modality {self.name!r}: unknown kind {self.kind!r}")


@dataclass(frozen=True)
class DatasetSpec:
    """Everything a model or a report needs to know about a data set, but no data."""

    name: str
    modalities: tuple[ModalitySpec, ...]
    label_name: str = "MD"
    label_unit: str = "dB"
    strata_names: tuple[str, ...] = GLAUCOMA_STAGES

    @property
    def modality_names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.modalities)

    @property
    def kinds(self) -> dict[str, str]:
        """Modality name -> kind ("image", "volume", "vector"), what input preparation needs."""
        return {m.name: m.kind for m in self.modalities}

    def modality(self, name: str) -> ModalitySpec:
        for m in self.modalities:
            if m.name == name:
                return m
        raise KeyError(f"data set {self.name!r} has no modality {name!r}; it has {self.modality_names}")


@dataclass
class MultimodalSplit:
    """One split (train, val or test) of a data set in the common format."""

    name: str
    spec: DatasetSpec
    ids: list[str]
    modalities: dict[str, torch.Tensor]
    present: torch.Tensor
    tabular: torch.Tensor
    y: torch.Tensor
    stage: torch.Tensor

    def __post_init__(self):
        n = len(self.ids)
        if n == 0:
            raise ValueError(f"split {self.name!r} of {self.spec.name!r} is empty")
        if len(set(self.ids)) != n:
            raise ValueError(f"split {self.name!r} of {self.spec.name!r} has duplicate ids")
        names = self.spec.modality_names
        if tuple(self.modalities) != names:
            raise ValueError(f"split {self.name!r}: modalities {tuple(self.modalities)} != spec {names}")
        for m in self.spec.modalities:
            t = self.modalities[m.name]
            if tuple(t.shape) != (n, *m.shape):
                raise ValueError(
                    f"split {self.name!r}: modality {m.name!r} has shape {tuple(t.shape)}, "
                    f"expected {(n, *m.shape)}"
                )
        expected = {
            "present": (n, len(names)),
            "tabular": (n, len(TABULAR_COLUMNS)),
            "y": (n,),
            "stage": (n,),
        }
        for key, shape in expected.items():
            if tuple(getattr(self, key).shape) != shape:
                raise ValueError(f"split {self.name!r}: {key} has shape {tuple(getattr(self, key).shape)}, expected {shape}")

    def __len__(self) -> int:
        return len(self.ids)

    def modality_as_float(self, name: str, index: torch.Tensor | slice | None = None) -> torch.Tensor:
        """Modality ``name`` for rows ``index`` as float32 (images scaled to [0, 1])."""
        t = self.modalities[name] if index is None else self.modalities[name][index]
        return t.float().div_(255.0) if t.dtype == torch.uint8 else t.float()

    def batch(self, index: torch.Tensor) -> dict:
        """A batch of samples ``index`` in the sample format, stacked on a leading axis."""
        out = {"id": [self.ids[i] for i in index.tolist()]}
        for name in self.spec.modality_names:
            out[name] = self.modality_as_float(name, index)
        out.update(present=self.present[index], tabular=self.tabular[index], y=self.y[index], stage=self.stage[index])
        return out

    def __getitem__(self, i: int) -> dict:
        return {k: v[0] for k, v in self.batch(torch.tensor([i])).items()}

    def batches(self, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None,
                drop_last: bool = False) -> Iterator[dict]:
        """Iterate over batches; gathering from in-memory tensors is far cheaper than a
        per-sample DataLoader on a 2-core machine."""
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        stop = n - n % batch_size if drop_last else n
        for start in range(0, stop, batch_size):
            yield self.batch(order[start:start + batch_size])

    def subset(self, index, name: str | None = None) -> "MultimodalSplit":
        """A new split holding rows ``index`` (array of positions or a boolean mask)."""
        index = torch.as_tensor(np.asarray(index))
        if index.dtype == torch.bool:
            index = index.nonzero().flatten()
        return MultimodalSplit(
            name=name or self.name,
            spec=self.spec,
            ids=[self.ids[i] for i in index.tolist()],
            modalities={k: v[index] for k, v in self.modalities.items()},
            present=self.present[index],
            tabular=self.tabular[index],
            y=self.y[index],
            stage=self.stage[index],
        )

    def to_frame(self):
        """Per-sample table of everything except the modality tensors."""
        import pandas as pd

        frame = pd.DataFrame({"id": self.ids, "y": self.y.numpy(), "stage": self.stage.numpy()})
        frame["stage_name"] = [self.spec.strata_names[s] for s in self.stage.tolist()]
        for j, col in enumerate(TABULAR_COLUMNS):
            frame[col] = self.tabular[:, j].numpy()
        for j, name in enumerate(self.spec.modality_names):
            frame[f"has_{name}"] = self.present[:, j].numpy()
        frame.insert(0, "split", self.name)
        return frame


@dataclass
class MultimodalDataset:
    """A loaded catalog entry: its spec, its splits and the configuration that made them."""

    spec: DatasetSpec
    splits: dict[str, MultimodalSplit]
    config: object
    card: str = ""
    notes: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.spec.name

    def __getitem__(self, split: str) -> MultimodalSplit:
        try:
            return self.splits[split]
        except KeyError:
            raise KeyError(f"data set {self.name!r} has no split {split!r}; it has {list(self.splits)}") from None

    @property
    def train(self) -> MultimodalSplit:
        return self["train"]

    @property
    def val(self) -> MultimodalSplit:
        return self["val"]

    @property
    def test(self) -> MultimodalSplit:
        return self["test"]

    def to_frame(self):
        import pandas as pd

        return pd.concat([s.to_frame() for s in self.splits.values()], ignore_index=True)


def stage_from_md(md: np.ndarray) -> np.ndarray:
    """Glaucoma stage from MD (dB): normal (0) at or above ``NORMAL_MD_CUTOFF``, early (1) down to
    -6 dB, intermediate (2) from -6 to -12 dB, advanced (3) below -12 dB (Hodapp-Parrish-Anderson
    cut-offs). Label-derived: use for strata and reports only."""
    md = np.asarray(md, dtype=np.float64)
    stage = np.full(md.shape, 3, dtype=np.int64)
    stage[md >= -12.0] = 2
    stage[md >= -6.0] = 1
    stage[md >= NORMAL_MD_CUTOFF] = 0
    return stage


NORMAL_MD_CUTOFF = -2.0
"""MD at or above which an eye counts as normal for the synthetic strata. The paper and the STAGE
data give the stage as a column; for data without one we need a cut-off: -2 dB is the usual
lower limit of normal for the 24-2 MD (normal eyes are about 0 +/- 1.2 dB)."""


def tabular_tensor(age, male, eye) -> torch.Tensor:
    """Stack age, male and eye codes (each length N, NaN for unknown) as float32 ``[N, 3]``."""
    return torch.as_tensor(np.stack([np.asarray(age, float), np.asarray(male, float), np.asarray(eye, float)], 1),
                           dtype=torch.float32)
