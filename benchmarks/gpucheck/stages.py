"""Part (c): a short run of both stages of ``re-m3dr`` (``experiments.recipes.run_recipe``: stage 1 trains one
encoder per modality with AM-SupCon, stage 2 fuses them with SGM) at the paper's settings (the ``paper``
training preset: ResNet34, batch 8, Adam, SMAPE + R^2; 224 px, 32 B-scans from the plan), reading the
check's eyes through the streamed loader (a lazy split with ``Plan.loader_workers`` DataLoader workers).

Each fit's step time and the GPU's busy share come from ``monitor`` (CUDA events between consecutive
optimizer steps; NVML utilization sampled every 100 ms). A part stopped at its budget writes the fits it
has seen so far, timed on the host clock alone."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from .data import load_eyes
from .monitor import BusySampler, StepTimer
from .plan import Plan


def stage_labels(modalities) -> list[str]:
    """Stage 1 trains one encoder per modality in the data set's order, then stage 2 fuses them."""
    return [f"stage 1 {m}" for m in modalities] + ["stage 2 SGM"]


class StagesRun:
    """One short ``re-m3dr`` run on the check's eyes (``run``), and what it has measured so far (``partial``:
    for a part stopped at its budget)."""

    def __init__(self, plan: Plan, manifest: Path, store: Path, work: Path, device: torch.device):
        from remd_core.training import preset_config

        self.plan, self.work, self.device = plan, Path(work), device
        self.dataset = load_eyes(plan, manifest, store, lazy=True)
        train = self.dataset.train
        self.streamed = getattr(train, "stream_batches", None) is not None and getattr(train, "loader_workers", 0) > 0
        self.base = preset_config("paper", {"epochs": plan.epochs, "seed": 0, "device": str(device),
                                            "batch_size": plan.batch_size,
                                            "encoder": {"arch": plan.arch, "width": plan.width}}, context="gpu-check")
        self.labels = stage_labels(self.dataset.spec.modality_names)
        self.setting = {"recipe": "re-m3dr", "preset": "paper", "model": f"{plan.arch} x{plan.width:g}",
                        "batch_size": plan.batch_size, "image_size": plan.image_size, "n_bscans": plan.n_bscans,
                        "epochs_per_stage": plan.epochs, "train_eyes": len(train), "steps_per_epoch": plan.steps_per_epoch,
                        "optimizer": self.base.optimizer, "regression_loss": self.base.regression_loss,
                        "precision": self.base.precision,
                        "loader": (f"streamed, {train.loader_workers} DataLoader worker(s)" if self.streamed
                                   else "in the training process")}
        self.busy = BusySampler(device) if device.type == "cuda" else None
        self.timer = StepTimer(device, plan.steps_per_epoch)

    def partial(self) -> dict:
        """The fits seen so far, on the host clock (no device synchronisation: the GPU may be mid-step)."""
        self.timer.label(self.labels)
        return {"status": "timeout", "partial": True, "setting": self.setting,
                "fits": [self.timer.summary(f, self.busy, self.plan.batch_size, synced=False) for f in self.timer.fits]}

    def run(self) -> dict:
        from remd_core.experiments.recipes import run_recipe
        from remd_core.timing import measured

        plan, busy, timer = self.plan, self.busy, self.timer
        print(f"re-m3dr: {self.setting}", flush=True)
        if busy is not None:
            busy.__enter__()
        try:
            with timer, measured() as phases:
                rows, result = run_recipe("re-m3dr", self.dataset, self.base, self.work / "recipe", progress=False)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
        finally:
            if busy is not None:
                busy.__exit__(None, None, None)
        timer.label(self.labels)
        fits = [timer.summary(f, busy, plan.batch_size) for f in timer.fits]
        expected = plan.epochs * plan.steps_per_epoch
        problems = [f"{f['fit']}: {f['steps']} steps, expected {expected}" for f in fits if f["steps"] != expected]
        if len(fits) != len(self.labels):
            problems.append(f"{len(fits)} fits seen, expected {len(self.labels)}")
        if not all(math.isfinite(x) for x in result.history["loss_fused"].to_numpy()):
            problems.append("stage 2 logged a non-finite loss")
        if not self.streamed:
            problems.append("the training split was not streamed")
        row = rows[-1]
        return {"status": "fail" if problems else "pass", "detail": "; ".join(problems), "setting": self.setting,
                "fits": fits, "stage_seconds": {k: round(v, 1) for k, v in phases.items() if k in ("stage1", "stage2")},
                "stage2_test_r2": row.get("test_r2"), "stage2_val_r2": row.get("val_r2"),
                "busy_source": busy.source if busy is not None else None,
                "busy_problem": busy.problem if busy is not None else "no CUDA device: no busy share"}
