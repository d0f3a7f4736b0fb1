"""The eyes parts (b) and (c) train on: synthetic eyes at the check's scale (``data.synthetic``), written as a
manifest of ``.npy`` files (``data.manifest``) and decoded once into the store, so that part (c) reads them
through the streamed loader (``load(..., lazy=True, loader_workers=N)``: ``data.streaming``), as a data set
larger than memory is read, and part (b) reads them into memory from the same store.

The generator runs in one process per block of eyes (each block its own ``data_seed``), so 192 eyes at
224 px and 32 B-scans take seconds on the GPU machine's 16 cores instead of a minute in one process."""

from __future__ import annotations

import importlib
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from .plan import Plan

COLUMNS = ("id", "md", "split", "age", "sex", "eye", "fundus", "oct")


def _block(args) -> list[dict]:
    """Generate one block of eyes and write their images; their manifest rows."""
    folder, first, n, image_size, n_bscans, seed = args
    from remd_core.data.synthetic import Config, generate

    arrays = generate(Config(n_eyes=n, image_size=image_size, oct_size=image_size, n_bscans=n_bscans,
                             data_seed=seed, cache=False), progress=False)
    rows = []
    for k in range(n):
        eye = f"gc{first + k:05d}"
        np.save(folder / f"{eye}-oct.npy", arrays["oct"][k])
        np.save(folder / f"{eye}-fundus.npy", arrays["fundus"][k])
        rows.append({"id": eye, "md": float(arrays["md"][k]), "age": float(arrays["age"][k]),
                     "sex": "M" if arrays["male"][k] else "F", "eye": "OS" if arrays["eye"][k] else "OD",
                     "fundus": f"{eye}-fundus.npy", "oct": f"{eye}-oct.npy"})
    return rows


def processes(plan: Plan) -> int:
    return plan.gen_processes or max(1, min(12, (os.cpu_count() or 2) - 2))


def write_manifest(plan: Plan, folder: Path) -> Path:
    """``plan.n_eyes`` synthetic eyes as ``.npy`` files and ``folder/eyes.csv`` (the first ``n_test`` eyes
    test, the next ``n_val`` validation, the rest training)."""
    importlib.import_module("remd_core.data.synthetic")  # imported once here, inherited by the forked processes

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    n_proc = min(processes(plan), plan.n_eyes)
    sizes = [plan.n_eyes // n_proc + (k < plan.n_eyes % n_proc) for k in range(n_proc)]
    firsts = np.cumsum([0, *sizes[:-1]])
    jobs = [(folder, int(first), n, plan.image_size, plan.n_bscans, 7000 + k) for k, (first, n) in
            enumerate(zip(firsts, sizes))]
    if n_proc == 1:
        blocks = [_block(jobs[0])]
    else:
        with ProcessPoolExecutor(n_proc) as pool:
            blocks = list(pool.map(_block, jobs))
    rows = [row for block in blocks for row in block]
    for k, row in enumerate(rows):
        row["split"] = "test" if k < plan.n_test else "val" if k < plan.n_test + plan.n_val else "train"
    lines = [",".join(COLUMNS)] + [",".join(str(row[c]) for c in COLUMNS) for row in rows]
    path = folder / "eyes.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def load_eyes(plan: Plan, manifest: Path, store: Path, lazy: bool):
    """The check's data set from ``manifest`` through the store at ``store``: streamed (``lazy``, with
    ``plan.loader_workers`` loader processes) or in memory."""
    from remd_core.data import load

    options = {"lazy": True, "loader_workers": plan.loader_workers} if lazy else {}
    return load("manifest", path=str(manifest), image_size=plan.image_size, n_bscans=plan.n_bscans,
                store_dir=str(store), **options)


def prepare_data(plan: Plan, work: Path) -> dict:
    """Generate, write and decode the eyes; seconds and sizes of each step."""
    work = Path(work)
    start = time.perf_counter()
    manifest = write_manifest(plan, work / "eyes")
    generated = time.perf_counter() - start
    start = time.perf_counter()
    dataset = load_eyes(plan, manifest, work / "store", lazy=True)
    decoded = time.perf_counter() - start
    per_eye = plan.n_bscans * plan.image_size ** 2 + 3 * plan.image_size ** 2
    store = dataset.notes.get("store", {})
    return {"status": "pass", "manifest": str(manifest), "eyes": plan.n_eyes,
            "splits": {s: len(dataset[s]) for s in ("train", "val", "test")}, "processes": processes(plan),
            "generate_s": round(generated, 2), "decode_s": round(decoded, 2),
            "decoded_eyes": store.get("decoded"), "decode_workers": store.get("workers"),
            "mib_per_eye": round(per_eye / 2**20, 2), "mib": round(plan.n_eyes * per_eye / 2**20, 1)}
