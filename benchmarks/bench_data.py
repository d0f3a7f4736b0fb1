"""Data-path benchmark (issue 15): first-load decoding speed with 1 and 2 processes, cached-load
time, peak memory of a streamed epoch at 1,000 and 4,000 eyes, and the loader's samples per second
against what a gpu-profile training step consumes.

    .venv/bin/python benchmarks/bench_data.py            # defaults: about 5-8 min, about 9 GB of temp disk
    .venv/bin/python benchmarks/bench_data.py --quick    # small sizes, a minute (a smoke check of the script)

Fixtures are written to a temporary folder (``--workdir``; removed at the end) and decoded at the
gpu profile's scale (224 px, 32 B-scans). What is real size and what is not, honestly:

- First load, FairVision layout: ``--fv-eyes`` npz files at the published size (``oct_bscans``
  200 x 200 x 200 uint8, ``slo_fundus`` 200 x 200, ``md``, ``age``, ``male``; written uncompressed
  with ``np.savez``: 8 MB each).
- First load, STAGE layout: ``--stage-eyes`` eyes of 256 B-scan JPEGs of 992 x 512 px (the size of
  the same organisers' GAMMA volumes; the STAGE size is not recorded in our data notes) and a
  1956 x 1934 colour fundus JPEG. Only 32 of 256 B-scans are decoded per eye, so the 256 files of an
  eye are hard links to 16 distinct real JPEGs (and the fundus to one of 4): every decoded file is a
  real JPEG of real size, the disk holds only the distinct ones.
- Cached load and streamed epochs: 1,000 and 4,000 eyes whose npz sources are small (32 B-scans of
  32 x 32, hard links to 64 distinct files). A cached load opens no source file (it stats them and
  reads the decoded rows), and an epoch reads only the store, whose rows are the real size at the
  gpu profile (32 x 224 x 224 + 224 x 224 bytes an eye, 1.66 MB): the small sources change only the
  time of the one-off decoding, which is not what these rows measure.
- Memory is the proportional set size (PSS) of the loading process and its DataLoader workers,
  sampled every 20 ms: pages shared between them count once. The store file's pages sit in the
  kernel's page cache, which is not part of it.
- The epoch is the loader's side of a training epoch: ``LazySplit.stream_batches`` (2 workers,
  batch 8) with the uint8 to float conversion (on the CPU here), and a reduction standing in for
  the model step; no model runs, so its samples/s is what the loader can deliver.
- The gpu profile's step consumption is not measured here (no GPU on this machine): ``--gpu-eyes-
  per-s`` (default 100) is an assumption: ResNet34 forward and backward in bf16 at 224 px runs at
  roughly 3,000 images/s on a current data-centre GPU, and an eye is 33 images (32 B-scans and a
  fundus), about 90 eyes/s.

Writes ``outputs/bench/data.csv`` and prints the table.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from remd_core.data import load  # noqa: E402
from remd_core.data.harvard import decode_npz_eye  # noqa: E402
from remd_core.paths import outputs_dir  # noqa: E402

SIZE, N_BSCANS = 224, 32  # the gpu profile's scale


def write_fairvision(root: Path, n: int, shape=(200, 200, 200), distinct: int | None = None) -> Path:
    """``n`` npz eyes in ``root/Glaucoma/{train,val,test}``; with ``distinct`` only that many are
    written and the rest are hard links to them (with their own names and ids)."""
    rng = np.random.default_rng(0)
    folders = {s: root / "Glaucoma" / s for s in ("train", "val", "test")}
    for f in folders.values():
        f.mkdir(parents=True, exist_ok=True)
    originals = []
    for k in range(n):
        split = "test" if k % 10 == 0 else "val" if k % 10 == 1 else "train"
        path = folders[split] / f"data_{k:06d}.npz"
        if distinct is not None and k >= distinct:
            os.link(originals[k % distinct], path)
            continue
        oct_ = rng.integers(0, 256, shape, dtype=np.uint8)
        np.savez(path, oct_bscans=oct_, slo_fundus=rng.integers(0, 256, shape[1:], dtype=np.uint8),
                 md=np.array(-rng.gamma(1.5, 3.0)), age=np.array(60.0), male=np.array(k % 2))
        originals.append(path)
    return root


def write_stage(root: Path, n: int) -> Path:
    """``n`` eyes in the STAGE 2024 layout with real-size JPEGs (hard links, see the docstring)."""
    rng = np.random.default_rng(1)
    pool = root / "pool"
    pool.mkdir(parents=True)
    bscans, fundi = [], []
    for j in range(16):  # speckle-like texture so JPEG does real work
        image = np.clip(rng.gamma(2.0, 40.0, (992, 512)), 0, 255).astype(np.uint8)
        Image.fromarray(image).save(pool / f"b{j}.jpg", quality=90)
        bscans.append(pool / f"b{j}.jpg")
    for j in range(4):
        image = np.clip(rng.normal(120, 40, (1934, 1956, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(image).save(pool / f"f{j}.jpg", quality=90)
        fundi.append(pool / f"f{j}.jpg")
    base = root / "STAGE_training"
    ids = [f"{k:04d}" for k in range(n)]
    for k, eye in enumerate(ids):
        folder = base / "training_images" / eye
        folder.mkdir(parents=True)
        for j in range(256):
            os.link(bscans[(j + k) % 16], folder / f"{j}_image.jpg")
        os.link(fundi[k % 4], folder / f"{eye}.jpg")
    (base / "training_GT").mkdir()
    md = -rng.gamma(1.5, 3.0, n)
    pd.DataFrame({"ID": ids, "MD": md}).to_csv(base / "training_GT" / "task1_GT_training.csv", index=False)
    pd.DataFrame({"ID": ids, "gender": "male", "age": 60, "eye": "OD", "stage": "early"}).to_csv(
        base / "data_info_training.csv", index=False)
    return root


class PeakMemory:
    """Peak PSS (MiB) of this process and its children, sampled every ``interval`` seconds."""

    def __init__(self, interval: float = 0.02):
        self.interval, self.peak, self._stop = interval, 0.0, threading.Event()

    def sample(self) -> float:
        me = psutil.Process()
        total = 0
        for p in [me, *me.children(recursive=True)]:
            try:
                total += p.memory_full_info().pss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        return total / 2 ** 20

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.sample())
            time.sleep(self.interval)

    def __enter__(self):
        self.peak = self.sample()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def first_load(name: str, root: Path, n: int, store: Path, **kw) -> list[dict]:
    rows, rates = [], {}
    for workers in (1, 2):
        cpu0 = _cpu_seconds()
        ds, seconds = timed(lambda: load(name, root=str(root), image_size=SIZE, n_bscans=N_BSCANS, workers=workers,
                                         store_dir=str(store / f"{name}-{workers}"), lazy=True, **kw))
        cpu = (_cpu_seconds() - cpu0) / n
        assert ds.notes["store"]["decoded"] == n and ds.notes["store"]["workers"] == workers
        rates[workers] = n / seconds
        rows.append({"measure": f"first load, {name} layout, {workers} process(es)", "eyes": n,
                     "value": round(rates[workers], 2), "unit": "eyes/s", "target": "",
                     "met": f"CPU {1000 * cpu:.0f} ms/eye, load avg {os.getloadavg()[0]:.1f}"})
    speedup = rates[2] / rates[1]
    rows.append({"measure": f"first load speed-up with 2 processes, {name}", "eyes": n, "value": round(speedup, 2),
                 "unit": "x", "target": ">= 1.7", "met": "yes" if speedup >= 1.7 else "no"})
    return rows


def where_time_goes(path: Path) -> str:
    """One FairVision eye at the gpu scale, by part (median of 5), in one process and thread."""
    torch.set_num_threads(1)
    parts = {"np.load of the 8 MB npz": [], "pick + uint8": [], "resize 32 B-scans + SLO to 224": []}
    from remd_core.data.imageio import resize_volume, select_bscans

    for _ in range(5):
        t0 = time.perf_counter()
        with np.load(path) as data:
            vol, slo = data["oct_bscans"], data["slo_fundus"]
        t1 = time.perf_counter()
        picked = np.ascontiguousarray(vol[select_bscans(vol.shape[0], N_BSCANS)])
        t2 = time.perf_counter()
        resize_volume(picked, SIZE), resize_volume(slo[None], SIZE)
        t3 = time.perf_counter()
        for key, value in zip(parts, (t1 - t0, t2 - t1, t3 - t2)):
            parts[key].append(value)
    total = sum(np.median(v) for v in parts.values())
    decode_npz_eye(str(path), True, SIZE, N_BSCANS, False)  # the decoder itself runs (a check)
    return "; ".join(f"{k} {1000 * np.median(v):.1f} ms ({100 * np.median(v) / total:.0f}%)" for k, v in parts.items())


def cached_and_epoch(root: Path, n: int, store: Path, epoch: bool, gpu_rate: float) -> list[dict]:
    kw = dict(root=str(root), image_size=SIZE, n_bscans=N_BSCANS, store_dir=str(store), workers=2)
    ds, seconds = timed(lambda: load("fairvision-glaucoma", lazy=True, **kw))  # the one-off decoding
    rows = [{"measure": "one-off decoding (small sources, see docstring)", "eyes": n, "value": round(seconds, 1),
             "unit": "s", "target": "", "met": ""}]
    ds, seconds = timed(lambda: load("fairvision-glaucoma", lazy=True, **kw))
    assert ds.notes["store"]["decoded"] == 0
    rows.append({"measure": "cached load, lazy (stat sources, read entries)", "eyes": n, "value": round(seconds, 2),
                 "unit": "s", "target": "< 5 at 1000 eyes" if n == 1000 else "", "met": _met(seconds < 5, n == 1000)})
    if n <= 1000:
        _, seconds = timed(lambda: load("fairvision-glaucoma", **kw))
        del _  # the in-memory copy must not stay resident during the streamed epoch
        rows.append({"measure": "cached load, in memory (reads every row)", "eyes": n, "value": round(seconds, 2),
                     "unit": "s", "target": "< 5 at 1000 eyes", "met": _met(seconds < 5, n == 1000)})
    if epoch:
        train = ds.train
        train.loader_workers = 2
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))
        stop = len(train) - len(train) % 8
        with PeakMemory() as memory:
            start = time.perf_counter()
            total = 0.0
            for batch in train.stream_batches(order, 0, stop, 8, "cpu"):
                total += float(batch["oct"].mean() + batch["fundus"].mean())  # the stand-in for a step
            seconds = time.perf_counter() - start
        rate = stop / seconds
        rows.append({"measure": "streamed epoch, peak PSS (loader + 2 workers)", "eyes": n,
                     "value": round(memory.peak, 0), "unit": "MiB", "target": "flat within 20 %", "met": ""})
        rows.append({"measure": "streamed epoch, loader samples/s (CPU conversion)", "eyes": n,
                     "value": round(rate, 1), "unit": "eyes/s", "target": f">= {gpu_rate:g} (assumed gpu step)",
                     "met": "yes" if rate >= gpu_rate else "no"})
    return rows


def _cpu_seconds() -> float:
    """CPU seconds of this process and its finished children (the decoding pool's workers)."""
    import resource

    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _met(ok: bool, applies: bool) -> str:
    return ("yes" if ok else "no") if applies else ""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fv-eyes", type=int, default=48)
    parser.add_argument("--stage-eyes", type=int, default=24)
    parser.add_argument("--epoch-eyes", default="1000,4000")
    parser.add_argument("--gpu-eyes-per-s", type=float, default=100.0)
    parser.add_argument("--workdir", default=None, help="folder for the fixtures and stores (default: a temp folder)")
    parser.add_argument("--quick", action="store_true", help="small sizes: check that the script runs")
    args = parser.parse_args(argv)
    if args.quick:
        args.fv_eyes, args.stage_eyes, args.epoch_eyes = 6, 10, "40,80"
    epoch_sizes = [int(x) for x in args.epoch_eyes.split(",")]
    work = Path(tempfile.mkdtemp(prefix="bench_data_", dir=args.workdir))
    print(f"work folder on a disk with {shutil.disk_usage(work).free / 2 ** 30:.0f} GiB free; torch threads "
          f"{torch.get_num_threads()}, cores {os.cpu_count()}", flush=True)
    rows = []
    try:
        fv = write_fairvision(work / "fv", args.fv_eyes)
        rows += first_load("fairvision-glaucoma", fv, args.fv_eyes, work / "stores")
        note = where_time_goes(next((fv / "Glaucoma" / "train").glob("*.npz")))
        print("one FairVision eye, 1 thread:", note, flush=True)
        stage = write_stage(work / "stage", args.stage_eyes)
        rows += first_load("stage2", stage, args.stage_eyes, work / "stores")
        shutil.rmtree(work / "stores")
        for n in epoch_sizes:
            root = write_fairvision(work / f"small{n}", n, shape=(N_BSCANS, 32, 32), distinct=64)
            rows += cached_and_epoch(root, n, work / f"store{n}", epoch=True, gpu_rate=args.gpu_eyes_per_s)
            print(f"disk used by the work folder: {_du(work) / 2 ** 30:.1f} GiB", flush=True)
            shutil.rmtree(work / f"store{n}")
        peaks = [r["value"] for r in rows if r["measure"].startswith("streamed epoch, peak")]
        if len(peaks) >= 2:
            growth = peaks[-1] / peaks[0] - 1
            rows.append({"measure": f"peak PSS growth {epoch_sizes[0]} -> {epoch_sizes[-1]} eyes", "eyes": epoch_sizes[-1],
                         "value": round(100 * growth, 1), "unit": "%", "target": "<= 20",
                         "met": "yes" if abs(growth) <= 0.2 else "no"})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    table = pd.DataFrame(rows)
    out = outputs_dir() / "bench"
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / ("data-quick.csv" if args.quick else "data.csv"), index=False)
    print(table.to_string(index=False))
    print(f"where the time of one FairVision eye goes: {note}")
    print(f"written: outputs/bench/{'data-quick.csv' if args.quick else 'data.csv'}")
    return 0


def _du(path: Path) -> int:
    seen, total = set(), 0
    for p in path.rglob("*"):
        if p.is_file():
            st = p.stat()
            if st.st_ino not in seen:
                seen.add(st.st_ino)
                total += st.st_blocks * 512
    return total


if __name__ == "__main__":
    raise SystemExit(main())
