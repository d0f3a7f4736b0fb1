"""Part (b): the step benchmark (``benchmarks/bench_steps.py``, ``make bench``) at the gpu profile's model
(ResNet34 at full width) on the check's eyes (224 px, 32 B-scans): every strategy of ``stepbench.strategies``
against its floor, at the paper's batch of 8, with the trainer's CUDA path (bf16 autocast, channels-last,
pinned non-blocking copies). The sweeps are fewer than ``make bench``'s (``Plan.bench_*``) so that it fits
its budget; each ratio is still a median of paired per-sweep ratios. Before timing, one forward pass checks
that the path is the one claimed: a convolution's output in bfloat16 and its weight channels-last."""

from __future__ import annotations

import copy
import statistics
import sys
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace

import torch

from .plan import Plan

BENCHMARKS = Path(__file__).resolve().parents[1]


def _bench_steps():
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    import bench_steps  # noqa: E402 - the script as a module: its bench_batch and the stepbench package

    return bench_steps


def check_path(work) -> dict:
    """The dtype of a convolution's output and the memory format of its weight, on one pooled batch."""
    model = copy.deepcopy(work.model)  # its batch-norm statistics move; the runners copy the untouched one
    # a convolution whose weight's two layouts differ (more than one input channel, a kernel wider than 1)
    name, conv = next((n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d) and m.in_channels > 1
                      and m.weight.shape[-2:].numel() > 1)
    seen = {}
    handle = conv.register_forward_hook(lambda module, args, out: seen.update(dtype=str(out.dtype).replace("torch.", "")))
    try:
        with torch.no_grad():
            work.closure(model, 0)()
    finally:
        handle.remove()
    return {"conv": name, "conv_output_dtype": seen.get("dtype"),
            "conv_weight_channels_last": bool(conv.weight.is_contiguous(memory_format=torch.channels_last)
                                              and not conv.weight.is_contiguous())}


def run_bench(plan: Plan, dataset, device: torch.device, git: str = "unknown") -> dict:
    """The benchmark's result in ``bench_steps``' format (``meta``, ``batches``), plus the path check and a
    status: ``pass`` when it ran and every target of ``stepbench.report.TARGETS`` is met (on a dry run: when it
    ran), ``fail`` with the unmet ones otherwise."""
    bench_steps = _bench_steps()
    from remd_core.models import EncoderConfig
    from stepbench.inputs import Workload
    from stepbench.report import device_name
    from stepbench.strategies import PLAIN, SPECS

    encoder = EncoderConfig(arch=plan.arch, width=plan.width)
    args = SimpleNamespace(warmup=plan.bench_warmup, steps=plan.bench_steps, repeats=plan.bench_repeats,
                           loader_batches=plan.bench_loader_batches, epoch_steps=plan.bench_epoch_steps)
    meta = {"profile": "gpu" if not plan.dry_run else "dry-run", "device": str(device), "device_name": device_name(device),
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "git": git, "steps": plan.bench_steps, "warmup": plan.bench_warmup,
            "repeats": plan.bench_repeats, "pool": plan.bench_pool, "model": f"{encoder.arch} x{encoder.width:g}",
            "data": f"{len(dataset.train)} synthetic training eyes, {plan.image_size} px, {plan.n_bscans} B-scans",
            "compile": False, "bf16": device.type == "cuda", "channels_last": device.type == "cuda",
            "check_finite": False, "command": "benchmarks/gpu_check.py (part bench)"}
    specs = [s for s in SPECS if plan.bench_strategies is None or s.name in plan.bench_strategies or s.name == PLAIN]
    unknown = set(plan.bench_strategies or ()) - {s.name for s in SPECS}
    if unknown:
        raise ValueError(f"unknown strategies {sorted(unknown)}; known: {[s.name for s in SPECS]}")
    print(f"batch {plan.batch_size}: building {len(specs)} model copies and {plan.bench_pool} batches on {device}",
          flush=True)
    work = Workload(dataset, encoder, plan.batch_size, device, plan.bench_pool)
    path = check_path(work)
    print(f"path: {path}", flush=True)
    block = bench_steps.bench_batch(work, specs, args)
    result = {"meta": meta, "batches": {str(plan.batch_size): block}}
    targets = block["targets"]
    unmet = [t["target"] for t in targets if not t["met"]]
    rows = block["rows"]
    finite = all(r["median_s"] > 0 and r["ratio_to_ideal"] == r["ratio_to_ideal"] for r in rows)
    path_ok = device.type != "cuda" or (path["conv_output_dtype"] == "bfloat16" and path["conv_weight_channels_last"])
    # a dry run's sweeps are too few and its model too small for the targets: they are reported, not judged
    status = "pass" if finite and path_ok and (not unmet or plan.dry_run) else "fail"
    detail = "; ".join(filter(None, [
        "" if path_ok else f"not the trainer's CUDA path: {path}",
        "" if finite else "a strategy's time is not finite",
        f"{len(unmet)} of {len(targets)} targets not met: " + "; ".join(unmet)
        + (" (a dry run: reported, not judged)" if plan.dry_run else "") if unmet else ""]))
    summary = {"strategies": len(rows), "targets_met": f"{len(targets) - len(unmet)}/{len(targets)}",
               "plain_step_ms": round(1e3 * next(r["median_s"] for r in rows if r["strategy"] == "joint"), 2),
               "worst_ratio_to_ideal": dict(zip(("ratio", "strategy"), max((round(r["ratio_to_ideal"], 3), r["strategy"])
                                                                          for r in rows))),
               "median_ratio_to_ideal": round(statistics.median(r["ratio_to_ideal"] for r in rows), 3)}
    return {"status": status, "detail": detail, "path": path, "summary": summary, "result": result}
