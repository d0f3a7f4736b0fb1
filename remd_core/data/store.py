"""The decoded-data store: every real loader (``stage2``, ``harvard``, ``manifest``) decodes each eye
once, in parallel worker processes, into uint8 arrays on disk, and later loads read from there.

Layout. One folder per loader and decoding settings (image size, B-scans, channels, the data
folder or manifest, ...), ``<store_dir>/<loader>-<hash of the settings>/``, under
``outputs/cache/decoded/`` (``paths.cache_dir``; ``REMD_OUTPUTS`` moves it) or the folder named by
``store_dir=``. It holds:

``<modality>.u8``  one raw uint8 file per modality: the rows of all eyes, slot after slot, each row
                   one eye's decoded array (``[S, H, W]`` or ``[C, H, W]``, C order). A row is the
                   store's chunk: a batch reads whole rows with ``os.preadv``.
``entries.json``   eye key -> its slot, a hash of its source files' paths, sizes and modification
                   times (and of anything else its decoding depended on, e.g. the B-scan file names
                   of a folder), and the values read with the pixels (B-scan count, MD, ...).
``meta.json``      the settings, the row shapes and the number of slots, for people and checks.
``lock``           ``fcntl.flock`` while a load checks and fills the store, so two processes (two
                   sweep cells) never decode into the same slots.

Why NumPy raw files and not zarr: an eye is the unit we read, write and invalidate, and every row
has the same shape, so a flat file with a fixed row size *is* a chunked array (chunk = one eye)
with no dependency, no compression to pay for on every epoch (the data are already small uint8;
measured decoding is the cost, not bytes), and reads that land straight in a preallocated batch
buffer. What the store adds is small and hand-written: the entry table, the fingerprints, the
lock. Slots are append-only: a changed source file gets a new slot and its old row is left as
dead space (``meta.json`` counts it; ``make clean-cache`` removes every store), so a process still
reading the old table never sees a row change under it.

What we took from MONAI and what not (monai is installed; its ``PersistentDataset``,
``CacheDataset``, ``PydicomReader`` and ``ITKReader`` were read before writing this):

- ``PersistentDataset`` caches each item's deterministic transforms as a ``torch.save`` file whose
  name is a hash of the item's dict, i.e. of the *file names*. An overwritten file with the same
  name is served stale, and the cache fills lazily, inside whichever DataLoader worker first
  touches an item. We keep its two good ideas, a content-addressed key and a write that cannot
  leave a half-written entry behind (here: a row is published only when the entry table is
  replaced atomically after it was written), but key by size and mtime too, and fill the store
  up front in a process pool so the first epoch is not the slow one.
- ``CacheDataset`` holds every decoded item in RAM, which is what data sets larger than memory
  cannot do; the in-memory path of the loaders does the same for small sets already.
- ``PydicomReader`` targets CT/MR series: it builds a patient-space affine from
  ``ImagePositionPatient``, swaps the first two axes by default and stacks one file per slice.
  Ophthalmic tomography is one multi-frame file whose frames are the B-scans, so
  ``remd_core.data.readers`` calls pydicom directly (frames in file order, MONOCHROME1 inverted,
  more than 8 stored bits rescaled). ``ITKReader`` needs the ``itk`` package (not installed, some
  100 MB) and adds nothing for 2-D B-scan stacks.

Parallel decoding uses ``concurrent.futures.ProcessPoolExecutor``: the ``fork`` start method on
Linux (a worker inherits the imported modules; spawning one costs an import of torch, several
seconds here), ``spawn`` elsewhere. Each worker runs torch with one thread: a forked child must
not enter an OpenMP region of its parent's thread pool, and one thread per process is the fair
unit of the benchmark's processes-versus-speed table. Workers write their rows themselves
(``os.pwrite`` at the slot's offset) and return only the small ``info`` dict. An error in one eye
(a ``DataError`` naming the manifest row and the file) stops the load; the eyes decoded before it
stay in the store.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import multiprocessing as mp
import os
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from math import prod
from pathlib import Path
from typing import Callable

import numpy as np
from tqdm.auto import tqdm

from ..paths import cache_dir
from .checks import DataError

STORE_VERSION = 1
AUTO_POOL_MIN_EYES = 16
"""With ``workers=0`` (auto) fewer eyes than this are decoded in the loading process: starting a
pool costs more than it saves on a handful of eyes."""
MAX_AUTO_WORKERS = 8


@dataclass
class StoreOptions:
    """Settings every real loader shares (none of them changes a decoded value).

    ``store``: decode into the on-disk store and read from it (False: decode in this process into
    memory on every load, the old behaviour). ``store_dir``: the store's root folder (default
    ``outputs/cache/decoded``). ``workers``: decoding processes; 0 picks one per available core (at
    most 8) when at least 16 eyes need decoding, else 1 (in this process). ``lazy``: splits read
    their images from the store batch by batch (``streaming.LazySplit``) instead of holding them in
    memory; needs ``store``. ``loader_workers``: with ``lazy``, ``fit`` streams training batches
    through a ``torch.utils.data.DataLoader`` with this many worker processes and pinned memory
    (0: read in the training process)."""

    store: bool = True
    store_dir: str | None = None
    workers: int = 0
    lazy: bool = False
    loader_workers: int = 0

    def check_store_options(self, name: str) -> None:
        from ..config import ConfigError

        if self.workers < 0 or self.loader_workers < 0:
            raise ConfigError(f"data set {name!r}: workers and loader_workers must be >= 0")
        if self.lazy and not self.store:
            raise ConfigError(f"data set {name!r}: lazy=True reads from the store; it needs store=True")
        if self.loader_workers and not self.lazy:
            raise ConfigError(f"data set {name!r}: loader_workers streams a lazy split; set lazy=True too")


@dataclass
class Job:
    """One eye to decode: ``decode(*args)`` returns ``{"arrays": {modality: uint8 array}, "info":
    {...}}`` (a modality left out stays all zeros). ``files``: the files its result depends on
    (fingerprinted by path, size and mtime); ``extra``: anything else it depends on (e.g. a
    folder's file names, which decide which B-scans are picked); ``where``: prefix of error
    messages (the manifest row, the eye)."""

    key: str
    files: list[str]
    args: tuple
    where: str = ""
    extra: str = ""


@dataclass
class Entry:
    slot: int
    info: dict = field(default_factory=dict)


def fingerprint(job: Job) -> str:
    """Hash of the job's files (path, size, mtime in ns) and ``extra``; a missing file is a
    ``DataError`` naming it."""
    parts = [job.extra]
    for path in job.files:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise DataError(f"{_prefix(job.where)}{path}: file is missing") from None
        except OSError as err:
            raise DataError(f"{_prefix(job.where)}{path}: cannot read ({err.strerror})") from None
        parts.append(f"{path}\0{st.st_size}\0{st.st_mtime_ns}")
    return hashlib.sha1("\n".join(parts).encode()).hexdigest()


def _prefix(where: str) -> str:
    return f"{where}: " if where else ""


def auto_workers(requested: int, n_jobs: int) -> int:
    if requested:
        return requested
    if n_jobs < AUTO_POOL_MIN_EYES:
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cores, MAX_AUTO_WORKERS, n_jobs))


class DecodedStore:
    """One folder of decoded rows for one loader and its decoding settings (module docstring)."""

    def __init__(self, folder: Path, shapes: dict[str, tuple[int, ...]], meta: dict):
        self.folder = Path(folder)
        self.shapes = {k: tuple(int(s) for s in v) for k, v in shapes.items()}
        self.meta = meta
        self.last_sync = {"decoded": 0, "reused": 0, "workers": 0, "seconds": 0.0}

    @classmethod
    def open(cls, loader: str, settings: dict, shapes: dict[str, tuple[int, ...]],
             store_dir: str | Path | None = None) -> "DecodedStore":
        described = {"version": STORE_VERSION, "loader": loader, "settings": settings,
                     "shapes": {k: list(v) for k, v in shapes.items()}}
        digest = hashlib.sha1(json.dumps(described, sort_keys=True, default=str).encode()).hexdigest()[:16]
        root = Path(store_dir) if store_dir else cache_dir() / "decoded"
        folder = root / f"{loader}-{digest}"
        folder.mkdir(parents=True, exist_ok=True)
        meta_path = folder / "meta.json"
        meta = json.loads(meta_path.read_text()) if meta_path.exists() else {**described, "n_slots": 0, "dead_slots": 0}
        store = cls(folder, shapes, meta)
        if not meta_path.exists():
            store._write_json("meta.json", meta)
        return store

    # ---- filling ---------------------------------------------------------------------------
    def sync(self, jobs: list[Job], decode: Callable, workers: int = 0, desc: str = "decoding") -> list[Entry]:
        """The entry of every job, in order: reused when its fingerprint matches, else decoded
        (in ``workers`` processes, see ``auto_workers``) into a new slot."""
        start = time.perf_counter()
        with self._locked():
            self.meta = json.loads((self.folder / "meta.json").read_text())
            entries = self._read_entries()
            out: list[Entry | None] = [None] * len(jobs)
            todo = []
            for k, job in enumerate(jobs):
                fp = fingerprint(job)
                known = entries.get(job.key)
                if known is not None and known["fp"] == fp:
                    out[k] = Entry(known["slot"], known["info"])
                else:
                    todo.append((k, job, fp, known is not None))
            n_workers = auto_workers(workers, len(todo)) if todo else 0
            if todo:
                first = self.meta["n_slots"]
                self.meta["n_slots"] = first + len(todo)
                self.meta["dead_slots"] += sum(1 for *_, stale in todo if stale)
                for m, shape in self.shapes.items():  # extend with zeros (sparse): absent modalities stay 0
                    with open(self.folder / f"{m}.u8", "ab") as f:
                        f.truncate(self.meta["n_slots"] * prod(shape))
                self._write_json("meta.json", self.meta)
                tasks = [(k, job, fp, first + j) for j, (k, job, fp, _) in enumerate(todo)]
                try:
                    for k, job, fp, slot, info in self._run(tasks, decode, n_workers, desc):
                        entries[job.key] = {"slot": slot, "fp": fp, "info": info}
                        out[k] = Entry(slot, info)
                finally:  # keep every eye decoded so far, also when one failed
                    self._write_json("entries.json", entries)
        self.last_sync = {"decoded": len(todo), "reused": len(jobs) - len(todo), "workers": n_workers,
                          "seconds": time.perf_counter() - start}
        return out  # type: ignore[return-value]

    def _run(self, tasks, decode, workers: int, desc: str):
        bar = tqdm(total=len(tasks), desc=desc, unit="eye", disable=len(tasks) < 2)
        try:
            if workers <= 1:
                with one_torch_thread():
                    for k, job, fp, slot in tasks:
                        yield k, job, fp, slot, decode_into(self.folder, self.shapes, slot, decode, job.args, job.where)
                        bar.update()
                return
            context = mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")
            with ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_init) as pool:
                futures = {pool.submit(decode_into, self.folder, self.shapes, slot, decode, job.args, job.where):
                           (k, job, fp, slot) for k, job, fp, slot in tasks}
                pending = set(futures)
                try:
                    while pending:
                        done, pending = wait(pending, return_when=FIRST_COMPLETED)
                        for future in done:
                            info = future.result()  # re-raises a worker's DataError
                            yield (*futures[future], info)
                            bar.update()
                except BaseException:
                    for future in pending:
                        future.cancel()
                    raise
        finally:
            bar.close()

    # ---- reading ---------------------------------------------------------------------------
    def path(self, modality: str) -> Path:
        return self.folder / f"{modality}.u8"

    def read(self, modality: str, slots) -> np.ndarray:
        """Rows ``slots`` of ``modality`` as one uint8 array ``[len(slots), *shape]``."""
        return read_rows(self.path(modality), self.shapes[modality], slots)

    # ---- housekeeping ----------------------------------------------------------------------
    def _read_entries(self) -> dict:
        path = self.folder / "entries.json"
        if not path.exists():
            return {}
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError:  # only a crash between write and rename could do this: start over
            return {}

    def _write_json(self, name: str, value) -> None:
        tmp = self.folder / f".{name}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(value))
        os.replace(tmp, self.folder / name)

    @contextlib.contextmanager
    def _locked(self):
        try:
            import fcntl
        except ImportError:  # Windows: no advisory locks; one loading process at a time, please
            yield
            return
        with open(self.folder / "lock", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)


def decode_into(folder: Path, shapes: dict, slot: int, decode: Callable, args: tuple, where: str) -> dict:
    """Run ``decode(*args)`` and write its rows into ``slot`` of the store in ``folder`` (in a worker
    or in the loading process); returns the ``info`` dict. A ``DataError`` gets ``where`` in front."""
    result = run_decode(decode, args, where)
    for m, array in result["arrays"].items():
        if array.dtype != np.uint8 or tuple(array.shape) != tuple(shapes[m]):
            raise ValueError(f"decoder returned {m} as {array.dtype} {array.shape}, the store holds uint8 {shapes[m]}")
        fd = os.open(Path(folder) / f"{m}.u8", os.O_WRONLY)
        try:
            data = memoryview(np.ascontiguousarray(array).reshape(-1))
            offset, done = slot * data.nbytes, 0
            while done < data.nbytes:
                done += os.pwrite(fd, data[done:], offset + done)
        finally:
            os.close(fd)
    return result.get("info", {})


def run_decode(decode: Callable, args: tuple, where: str) -> dict:
    """``decode(*args)``, with ``where`` (the manifest row, the eye) in front of a ``DataError``."""
    try:
        return decode(*args)
    except DataError as err:
        raise DataError(f"{_prefix(where)}{err}") from None


def read_rows(path: Path, shape: tuple[int, ...], slots) -> np.ndarray:
    """Rows ``slots`` of a raw uint8 file of rows of ``shape``: one ``preadv`` per run of consecutive
    slots, straight into the result."""
    slots = np.asarray(slots, dtype=np.int64).reshape(-1)
    row = prod(shape)
    out = np.empty((len(slots), row), np.uint8)
    if len(slots) == 0:
        return out.reshape(0, *shape)
    fd = os.open(path, os.O_RDONLY)
    try:
        breaks = np.flatnonzero(np.diff(slots) != 1) + 1
        for a, b in zip(np.r_[0, breaks], np.r_[breaks, len(slots)]):
            _read_exactly(fd, memoryview(out[a:b]).cast("B"), int(slots[a]) * row, path)
    finally:
        os.close(fd)
    return out.reshape(len(slots), *shape)


def _read_exactly(fd: int, buffer: memoryview, offset: int, path: Path) -> None:
    done = 0
    while done < buffer.nbytes:
        n = os.preadv(fd, [buffer[done:]], offset + done) if hasattr(os, "preadv") else _pread_copy(fd, buffer[done:], offset + done)
        if n == 0:
            raise DataError(f"{path}: the store file is shorter than its entry table says; delete {path.parent} "
                            f"(or run make clean-cache) and load again")
        done += n


def _pread_copy(fd: int, buffer: memoryview, offset: int) -> int:
    data = os.pread(fd, buffer.nbytes, offset)
    buffer[:len(data)] = data
    return len(data)


def _worker_init() -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)


@contextlib.contextmanager
def one_torch_thread():
    """Decode with one torch thread in this process too (see the module docstring)."""
    torch = sys.modules.get("torch")
    if torch is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
