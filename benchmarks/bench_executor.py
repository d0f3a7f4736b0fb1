"""The sweep executor's overhead: Dask (an embedded ``LocalCluster``, what ``remd sweep`` uses) against
the local process pool the sweep used before it, side by side on the same grid, in one run.

Both run the same cells through the same engine (``experiments.engine``) and the same cell task
(``workbench.sweep.execute_cell``: one papermill execution each), each in a fresh run folder (so
stage 1 is trained in both), in the order pool, Dask, Dask, pool, so that drift of the machine
falls on both. Wall time includes starting and closing the executor. Prints one line per run (its wall
time, and the summed duration of its notebook executions as papermill recorded them), the ratio of
the medians and the overhead per cell; writes ``outputs/bench/executor.json``.

    .venv/bin/python benchmarks/bench_executor.py                          # smoke: table1, seed 0
    .venv/bin/python benchmarks/bench_executor.py --profile cpu --groups table1
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

from remd_core.experiments.executors import cores, kernel_threads
from remd_core.paths import outputs_dir
from remd_core.workbench.sweep import expand, load_grid, run_sweep


def _limit_threads(threads: int) -> None:
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = str(threads)


class ProcessPool:
    """The executor of the sweep before Dask: spawned worker processes, each kernel its share of the
    cores."""

    def __init__(self, workers: int):
        self.slots, self.description = workers, f"process pool of {workers}"
        self.pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                        initializer=_limit_threads, initargs=(kernel_threads(workers),))

    def run(self, tasks):
        futures = {self.pool.submit(function, *args): task for task, function, args in tasks}
        for future in as_completed(futures):
            yield futures[future], future

    def close(self):
        self.pool.shutdown()


def kernel_seconds(folder: Path) -> float:
    """The summed duration of the cells' papermill executions (what the kernels themselves took)."""
    return sum(json.loads(p.read_text())["metadata"]["papermill"]["duration"]
               for p in folder.glob("cells/*/train_recipe.ipynb"))


def timed(kind: str, grid, args, workers: int, scratch: Path) -> tuple[float, float]:
    folder = scratch / f"{kind}-{time.monotonic_ns()}"
    start = time.perf_counter()
    if kind == "pool":
        pool = ProcessPool(workers)
        try:
            run_sweep(grid, folder, args.profile, args.seeds, args.groups, workers=workers, progress=False,
                      executor=pool)
        finally:
            pool.close()
    else:
        run_sweep(grid, folder, args.profile, args.seeds, args.groups, workers=workers, progress=False)
    seconds = time.perf_counter() - start
    inside = kernel_seconds(folder)
    shutil.rmtree(folder, ignore_errors=True)
    return seconds, inside


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--grid", default="paper")
    parser.add_argument("--profile", default="smoke")
    parser.add_argument("--groups", default="table1")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--workers", type=int, default=None, help="default: the cores, at most the cells")
    args = parser.parse_args()
    args.groups, args.seeds = args.groups.split(","), [int(s) for s in args.seeds.split(",")]
    grid = load_grid(args.grid)
    cells = len(expand(grid, args.seeds, args.groups))
    workers = args.workers or max(1, min(cores(), cells))
    times, kernels = {"pool": [], "dask": []}, {"pool": [], "dask": []}
    with tempfile.TemporaryDirectory(prefix="remd-bench-") as scratch:
        for kind in ("pool", "dask", "dask", "pool"):
            seconds, inside = timed(kind, grid, args, workers, Path(scratch))
            times[kind].append(seconds)
            kernels[kind].append(inside)
            print(f"{kind:5s} {cells} cells on {workers} worker(s): {seconds:7.1f} s wall, {inside:7.1f} s in the "
                  "notebook executions (summed)", flush=True)
    pool, dask = statistics.median(times["pool"]), statistics.median(times["dask"])
    report = {"grid": args.grid, "groups": args.groups, "seeds": args.seeds, "profile": args.profile, "cells": cells,
              "workers": workers, "cores": cores(), "seconds": times, "kernel_seconds": kernels,
              "dask_over_pool": dask / pool,
              "overhead_per_cell_s": (dask - pool) / cells}
    print(f"Dask / process pool: {dask / pool:.3f} (median {dask:.1f} s against {pool:.1f} s); "
          f"{(dask - pool) / cells:+.2f} s a cell")
    out = outputs_dir() / "bench"
    out.mkdir(parents=True, exist_ok=True)
    (out / "executor.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
