"""Wall time of both stages of ``re-m3dr`` at the ``cpu`` notebook profile, and of ``make run``
(``bench_steps.py --end-to-end``, ``--make-run``)."""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import datetime, timezone

import torch

from remd_core.data import load
from remd_core.experiments.provenance import git_revision
from remd_core.models import EncoderConfig
from remd_core.paths import REPO_ROOT, outputs_dir
from remd_core.training import resolve_device

from .report import device_name, log


def end_to_end(args) -> dict:
    """Wall time of both stages of ``re-m3dr`` at the ``cpu`` notebook profile, and of ``make run``."""
    out = {"meta": {"device_name": device_name(resolve_device(args.device)), "torch": torch.__version__,
                    "threads": torch.get_num_threads(), "git": git_revision(),
                    "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"), "command": " ".join(sys.argv)},
           "runs": {}}
    if args.end_to_end:
        from remd_core.workbench.runner import PROFILES as NOTEBOOK_PROFILES
        from remd_core.experiments.recipes import run_recipe
        from remd_core.training import TrainConfig

        p = NOTEBOOK_PROFILES["cpu"]
        start = time.perf_counter()
        small = {"test": 0.2, "val": 0.15} if p["N_EYES"] < 200 else {}  # as the notebooks load small sets
        dataset = load("synthetic-stage2", n_eyes=p["N_EYES"], image_size=p["IMAGE_SIZE"], oct_size=p["IMAGE_SIZE"],
                       n_bscans=p["N_BSCANS"], **small)
        load_s = time.perf_counter() - start
        base = TrainConfig(epochs=p["EPOCHS"], seed=p["SEEDS"][0], device=args.device,
                           encoder=EncoderConfig(arch=p["ARCH"], width=p["WIDTH"]))
        workdir = outputs_dir() / "bench" / f"end-to-end-{datetime.now():%Y%m%d-%H%M%S}"
        log(f"re-m3dr, both stages, cpu notebook profile ({p['EPOCHS']} epochs per stage) in {workdir.name}")
        start = time.perf_counter()
        rows, result = run_recipe("re-m3dr", dataset, base, workdir, progress=True)
        seconds = time.perf_counter() - start
        out["runs"]["re-m3dr"] = {"seconds": seconds, "data_seconds": load_s, "epochs_per_stage": p["EPOCHS"],
                                  "stage2_seconds": result.seconds if result is not None else None,
                                  "test_r2": rows[-1].get("test_r2")}
        log(f"re-m3dr: {seconds:.1f} s (stage 2 {result.seconds:.1f} s)")
    if args.make_run:
        log("make run")
        start = time.perf_counter()
        proc = subprocess.run(["make", "run"], cwd=REPO_ROOT)
        seconds = time.perf_counter() - start
        out["runs"]["make run"] = {"seconds": seconds, "returncode": proc.returncode}
        log(f"make run: {seconds:.1f} s (exit {proc.returncode})")
    return out

