"""Data sets larger than memory: splits that read their images from the decoded-data store
(``remd_core.data.store``) batch by batch, and a ``torch.utils.data`` path that streams training
batches through worker processes and pinned memory.

- ``StoreArray`` stands where a split keeps a modality's uint8 tensor: it has the tensor's
  ``shape`` and ``dtype``, and indexing it reads those rows from the store file (``os.preadv``
  into one buffer per batch). ``take`` makes a view of some rows without reading anything;
  ``clone`` then ``a[mask] = 0`` and ``torch.zeros_like(a)`` zero rows at read time, which is all
  the missing-modality protocol (``data/missing.py``) does to a split's images.
- ``LazySplit`` is a ``MultimodalSplit`` whose modalities are ``StoreArray``s. ``batch``,
  ``batches``, ``subset`` and ``[i]`` work as for an in-memory split and give the same values bit
  for bit (the same uint8 to float32 conversion), so ``fit``, ``predict`` and the reports use it
  unchanged. Ids, labels, strata, ``present`` and the tabular values stay in memory (a few dozen
  bytes an eye).
- ``LazySplit.stream_batches`` is the opt-in DataLoader path, used by ``fit`` when a split has
  ``loader_workers > 0`` (``load(..., lazy=True, loader_workers=N)``): a ``DataLoader`` whose
  sampler yields the index lists of fit's own shuffled order, so each worker reads whole batches
  (no per-sample collation), ``pin_memory`` on CUDA, and the images cross to the device as uint8
  (a quarter of float32's bytes) and become float32 in [0, 1] there. Labels and masks stay on the
  host, as ``train.batch`` gives them.

Memory during an epoch: the loading side holds at most ``loader_workers * prefetch + 2`` batches
(uint8 in flight, one float batch), whatever the number of eyes; the store file's pages sit in the
kernel's page cache, which is reclaimable and not part of a process's resident set. The in-memory
splits stay the default: on a small set one array gather per batch beats any reader.

Hand-written rather than MONAI's ``PersistentDataset`` (see ``store``'s docstring): a batch here is
one read per eye into a preallocated array, not one unpickled file per item.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator

import numpy as np
import torch

from tqdm.auto import tqdm

from ..paths import display_path
from .base import assemble
from .format import DatasetSpec, MultimodalDataset, MultimodalSplit
from .store import DecodedStore, Job, StoreOptions, fingerprint, read_rows, run_decode


class StoreArray:
    """The uint8 rows ``slots`` of one modality's store file, read on indexing (module docstring)."""

    dtype = torch.uint8

    def __init__(self, path, row_shape: tuple[int, ...], slots, zeroed=None):
        self.path = path
        self.row_shape = tuple(row_shape)
        self.slots = np.asarray(slots, dtype=np.int64)
        self.zeroed = np.zeros(len(self.slots), bool) if zeroed is None else np.asarray(zeroed, bool)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.slots), *self.row_shape))

    def __len__(self) -> int:
        return len(self.slots)

    def _positions(self, index) -> np.ndarray:
        if index is None:
            return np.arange(len(self.slots))
        if isinstance(index, torch.Tensor):
            index = index.cpu().numpy()
        positions = np.arange(len(self.slots))[index]
        return np.atleast_1d(positions)

    def read(self, index=None) -> torch.Tensor:
        """Rows ``index`` (positions, a boolean mask, a slice or None for all) as a uint8 tensor."""
        positions = self._positions(index)
        rows = read_rows(self.path, self.row_shape, self.slots[positions])
        zero = self.zeroed[positions]
        if zero.any():
            rows[zero] = 0
        return torch.from_numpy(rows)

    __getitem__ = read

    def take(self, index) -> "StoreArray":
        """A view of rows ``index``; nothing is read."""
        positions = self._positions(index)
        return StoreArray(self.path, self.row_shape, self.slots[positions], self.zeroed[positions])

    def clone(self) -> "StoreArray":
        return StoreArray(self.path, self.row_shape, self.slots.copy(), self.zeroed.copy())

    def __setitem__(self, index, value) -> None:
        if not (np.isscalar(value) or (isinstance(value, torch.Tensor) and value.numel() == 1)) or float(value) != 0:
            raise TypeError("a StoreArray is read-only; only whole rows can be set to 0 (an absent modality)")
        self.zeroed[self._positions(index)] = True

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func is torch.zeros_like and not kwargs:
            a = args[0]
            return StoreArray(a.path, a.row_shape, a.slots.copy(), np.ones(len(a.slots), bool))
        raise TypeError(f"{func.__name__} is not defined on a StoreArray (a lazy split's images); "
                        f"read rows with split.batch(index) or materialize the split first")

    def __repr__(self) -> str:
        return f"StoreArray({tuple(self.shape)}, uint8, {self.path})"


@dataclasses.dataclass
class LazySplit(MultimodalSplit):
    """A split whose images stay in the store until a batch asks for them (module docstring).
    ``loader_workers``: processes of ``stream_batches``' DataLoader; ``prefetch``: batches each of
    them reads ahead."""

    loader_workers: int = 0
    prefetch: int = 2

    def modality_as_float(self, name: str, index=None) -> torch.Tensor:
        return self.modalities[name].read(index).float().div_(255.0)

    def subset(self, index, name: str | None = None) -> "LazySplit":
        index = torch.as_tensor(np.asarray(index))
        if index.dtype == torch.bool:
            index = index.nonzero().flatten()
        return dataclasses.replace(
            self, name=name or self.name, ids=[self.ids[i] for i in index.tolist()],
            modalities={k: v.take(index) for k, v in self.modalities.items()}, present=self.present[index],
            tabular=self.tabular[index], y=self.y[index], stage=self.stage[index])

    def materialize(self) -> MultimodalSplit:
        """The same split held in memory (reads every row)."""
        return MultimodalSplit(name=self.name, spec=self.spec, ids=list(self.ids),
                               modalities={k: v.read() for k, v in self.modalities.items()},
                               present=self.present, tabular=self.tabular, y=self.y, stage=self.stage)

    def stream_batches(self, order: torch.Tensor, start: int, stop: int, batch_size: int,
                       device: torch.device | str = "cpu") -> Iterator[dict] | None:
        """The batches ``order[p:p + batch_size]`` for ``p`` from ``start`` below ``stop``, as
        ``batch`` gives them but with the images already on ``device`` (read by a DataLoader's
        workers, pinned on CUDA, converted on the device). None when ``loader_workers`` is 0:
        then ``fit`` calls ``batch`` itself."""
        if not self.loader_workers:
            return None
        return _stream(self, order, start, stop, batch_size, torch.device(device))


class _BatchReader(torch.utils.data.Dataset):
    """A map-style dataset whose items are whole batches: ``reader[index_list]`` reads those rows
    of every modality as uint8."""

    def __init__(self, arrays: dict[str, StoreArray]):
        self.arrays = arrays

    def __len__(self) -> int:
        return len(next(iter(self.arrays.values())))

    def __getitem__(self, index) -> dict[str, torch.Tensor]:
        return {m: a.read(index) for m, a in self.arrays.items()}


def batch_loader(split: LazySplit, index_lists, device: torch.device, workers: int | None = None,
                 prefetch: int | None = None) -> torch.utils.data.DataLoader:
    """A DataLoader reading the uint8 images of ``split`` for each index list of ``index_lists``."""
    workers = split.loader_workers if workers is None else workers
    prefetch = split.prefetch if prefetch is None else prefetch
    return torch.utils.data.DataLoader(_BatchReader(split.modalities), batch_size=None, sampler=index_lists,
                                       num_workers=workers, pin_memory=device.type == "cuda",
                                       prefetch_factor=prefetch if workers else None)


def on_device(images: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """uint8 images to ``device`` (non-blocking from pinned memory), then float32 in [0, 1] there."""
    return {m: x.to(device, non_blocking=True).float().div_(255.0) for m, x in images.items()}


def _stream(split: LazySplit, order: torch.Tensor, start: int, stop: int, batch_size: int,
            device: torch.device) -> Iterator[dict]:
    index_lists = [order[p:p + batch_size] for p in range(start, stop, batch_size)]
    for index, images in zip(index_lists, batch_loader(split, index_lists, device)):
        yield {"id": [split.ids[i] for i in index.tolist()], **on_device(images, device),
               "present": split.present[index], "tabular": split.tabular[index], "y": split.y[index],
               "stage": split.stage[index]}


def assemble_lazy(spec: DatasetSpec, config, ids, store: DecodedStore, slots, present, tabular, y, stage,
                  predefined=None, source: str = "", loader_workers: int = 0) -> MultimodalDataset:
    """``base.assemble`` for images left in ``store`` (rows ``slots``, in the order of ``ids``): the
    same splits (``assemble`` cuts a skeleton without images), each a ``LazySplit``."""
    skeleton = assemble(dataclasses.replace(spec, modalities=()), config, ids, {}, np.asarray(present)[:, :0],
                        tabular, y, stage, predefined=predefined, source=source)
    position = {str(i): k for k, i in enumerate(ids)}
    present_t = torch.as_tensor(np.asarray(present), dtype=torch.bool)
    slots = np.asarray(slots, dtype=np.int64)
    splits = {}
    for name, s in skeleton.splits.items():
        rows = np.array([position[i] for i in s.ids], dtype=np.int64)
        splits[name] = LazySplit(
            name=name, spec=spec, ids=s.ids,
            modalities={m.name: StoreArray(store.path(m.name), m.shape, slots[rows]) for m in spec.modalities},
            present=present_t[rows], tabular=s.tabular, y=s.y, stage=s.stage, loader_workers=loader_workers)
    return MultimodalDataset(spec=spec, splits=splits, config=config)


@dataclasses.dataclass
class Decoded:
    """What ``decode_eyes`` gives a loader: each eye's ``info`` and its images, in memory
    (``arrays``) or left in ``store`` at rows ``slots``."""

    infos: list[dict]
    arrays: dict[str, np.ndarray] | None
    store: DecodedStore | None = None
    slots: np.ndarray | None = None


def decode_eyes(options: StoreOptions, loader: str, settings: dict, shapes: dict[str, tuple[int, ...]],
                jobs: list[Job], decode, name: str) -> Decoded:
    """Decode ``jobs`` (one per eye) with ``decode``: through the store (``options.store``, the
    default; reused entries are not decoded again) or in this process into memory."""
    if not options.store:
        arrays = {m: np.zeros((len(jobs), *shape), np.uint8) for m, shape in shapes.items()}
        infos = []
        for k, job in enumerate(tqdm(jobs, desc=f"{name}: reading eyes", unit="eye", disable=len(jobs) < 2)):
            fingerprint(job)  # a missing file reads as it does through the store
            result = run_decode(decode, job.args, job.where)
            for m, array in result["arrays"].items():
                arrays[m][k] = array
            infos.append(result.get("info", {}))
        return Decoded(infos, arrays)
    store = DecodedStore.open(loader, settings, shapes, options.store_dir)
    entries = store.sync(jobs, decode, options.workers, desc=f"{name}: decoding eyes")
    slots = np.array([e.slot for e in entries], dtype=np.int64)
    arrays = None if options.lazy else {m: StoredRows(store, m, slots) for m in shapes}
    return Decoded([e.info for e in entries], arrays, store, slots)


class StoredRows:
    """The rows of one modality of the store, read only when ``assemble`` indexes them: ``rows[idx]``
    reads the rows of eyes ``idx`` straight into one new array, in that order. An in-memory load
    then copies each eye once (store -> its split) instead of twice (store -> all eyes -> split),
    which was 3.1 of the 3.7 s of a cached 1,000-eye load at the gpu profile's size."""

    def __init__(self, store: DecodedStore, modality: str, slots: np.ndarray):
        self.store, self.modality, self.slots = store, modality, slots

    def __len__(self) -> int:
        return len(self.slots)

    def __getitem__(self, index) -> torch.Tensor:
        return torch.from_numpy(self.store.read(self.modality, self.slots[np.asarray(index, dtype=np.int64)]))


def finish(decoded: Decoded, spec: DatasetSpec, config, ids, present, tabular, y, stage, predefined=None,
           source: str = "") -> MultimodalDataset:
    """The data set of ``decoded`` eyes: ``base.assemble`` in memory, ``assemble_lazy`` for a lazy
    load; ``notes["store"]`` says where the store is and what this load decoded."""
    if decoded.arrays is not None:
        dataset = assemble(spec, config, ids, decoded.arrays, present, tabular, y, stage, predefined=predefined,
                           source=source)
    else:
        dataset = assemble_lazy(spec, config, ids, decoded.store, decoded.slots, present, tabular, y, stage,
                                predefined=predefined, source=source, loader_workers=config.loader_workers)
    if decoded.store is not None:
        dataset.notes["store"] = {"folder": display_path(decoded.store.folder), **decoded.store.last_sync}
    return dataset
