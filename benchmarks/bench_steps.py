"""Step cost of every training strategy, side by side, against its physical floor (``make bench``).

In one process, on the trainer's model and objective (``remd_core.training.build_model`` and
``build_objective``; one model copy per strategy, all from the same initial weights), the
same batches and the same device, this times one optimisation step of

==================  ===================================================================  ==========
row                 what                                                                 ideal
==================  ===================================================================  ==========
joint               plain joint training, ``L_m + alpha sum_k L_u^k`` (Eq. 1), alpha=1    F + B
naive_fusion        the fused loss only (alpha = 0)                                      F + B
ogm_ge              OGM-GE: one backward, then per-kernel scaling and Gaussian noise     F + B + E
mmpareto            MMPareto (ours): two backward passes over one forward                F + 2B
sgm_k1              SGM, probe every step: + two graph-free forwards                     F + 2B + 2G
sgm_k4              SGM, probe every 4 steps                                             F + 2B + G/2
sam                 SAM: forward and backward at w, then at w + e                        2F + 2B
imbsam              ImbSAM: head and tail parts of the first backward apart              2F + 3B
sse_sam             SSE-SAM with its head radius on: head and tail perturbed apart       3F + 4B
bsam                BSAM: SAM on the loss re-weighted per MD bin                         2F + 2B
igm                 IGM: one encoder's backward, the flat term's second pass (a bound)   2F + 2B
mmpareto_reference  MMPareto structured like the official code (the peer reference)      F + 3B
sgm_reference       SGM written out straightforwardly (separate passes, loops, copies)   F + 3B + 2G
==================  ===================================================================  ==========

plus, every ideal, the optimizer step ``O`` (the same AdamW update in every row). The components
are timed on their own in the same rounds, on the same batches: ``F`` one forward pass with its
graph and the losses, ``B`` one backward pass of Eq. 1's loss, ``G`` one forward pass without a
graph (train-mode BatchNorm with frozen statistics, as the probe runs it), ``O`` one
``optimizer.step()``, ``E`` the irreducible work of OGM-GE's noise (one Gaussian draw per modulated
gradient element, one fused scale and one fused add over the modulated kernels).

Where the ideal counts come from
--------------------------------
- Plain, naive fusion: one forward, one backward. Naive fusion back-propagates only the fused loss,
  which still reaches both encoders: a full backward.
- MMPareto needs, on each encoder, the gradient of the multimodal loss and that of its own
  unimodal loss. The unimodal losses touch disjoint encoders, so ONE backward of their sum gives
  every encoder its own unimodal gradient: two backward passes over one graph; the baseline
  gradient (of the summed loss) is the sum of the two, free.
- SGM needs the same two gradients at every step (the Pareto combination runs every step, the
  probe only every k), plus for the probe two evaluations of the loss at ``theta +/- Delta``
  without a graph: ``F + 2B + 2G`` for k = 1 and ``F + 2B + 2G/k`` for k = 4.
- The official MMPareto code (GeWu-Lab/MMPareto_ICML2024, ``code/MMPareto.py``) calls backward
  once per objective with the graph retained (the multimodal loss, then each of the K unimodal
  losses) and once more for the summed loss: K + 2 = 4 calls for two modalities. A unimodal loss
  only reaches its own encoder, so the K unimodal calls together cost about one full backward:
  ``F + 3B``. The straightforward SGM adds its probe: ``F + 3B + 2G``.

``ideal ratio = (F + nB B + nG G + O [+ E]) / (F + B + O)`` and the table's ``/ideal`` is the
measured ratio to the plain step over the ideal ratio (1.00 = at the floor; the target is <= 1.10).

How it is measured
------------------
- Strategies and the component timer are interleaved step by step: a sweep times every entry
  once (one step of each strategy, one set of components), the order rotating from sweep to
  sweep; ``--steps`` sweeps make a round, ``--repeats`` rounds the run, after ``--warmup`` untimed
  sweeps. A contention burst on a shared machine (seconds long) therefore hits neighbouring
  entries alike.
- One step is timed with ``time.perf_counter`` around ``strategy.step`` (with
  ``torch.cuda.synchronize()`` before and after on CUDA, never inside a strategy). SGM with k = 4
  costs more at its probe steps: each of its visits runs a whole cycle of 4 steps and its sample is
  their mean.
- Ratios are paired: for each sweep, the strategy's time over the plain step's time of the same
  sweep, and over the ideal ratio computed from the same sweep's components; the table gives the
  median over sweeps (robust to drift slower than a sweep). Times are the median and the
  interquartile range of the samples.
- ``check_finite`` is off (its one host synchronisation per step is a training safety net, not
  part of a strategy); the trainer keeps it on.
- Host reads per step: one extra step per strategy with ``Tensor.item``, ``tolist``, ``__bool__``,
  ``__float__``, ``__int__``, ``numpy`` and ``cpu`` (of a device tensor) counted, and a stub
  optimizer (AdamW's own CPU step counter is not the strategy's). On CUDA the same step also runs
  under ``torch.cuda.set_sync_debug_mode("warn")`` with the real optimizer, and the warnings are
  counted as device synchronisations.
- Peak memory: two more steps per strategy; on CUDA ``torch.cuda.max_memory_allocated`` (reset
  before), on CPU the process RSS sampled every 2 ms by a thread (after ``malloc_trim``), so a
  spike shorter than that can be missed. Every strategy's model copy is resident during every
  pass, so the peak includes them all; ``+step`` is the peak minus the memory before the pass.
- Data: the loader is the trainer's (``MultimodalSplit.batches`` and ``Objective.prepare`` with
  augmentation, the target standardised, everything moved to the device), timed over up to
  ``--loader-batches`` batches; its samples per second are set against each strategy's
  consumption (batch size over median step time). On this machine the loader runs in the
  training process, so its time adds to the step's: the headroom says how far it is from being the
  bottleneck, not that it overlaps.
- Epoch pass (one epoch of the training split per strategy by default, or ``--epoch-steps``
  batches; loader included, as the trainer runs them): samples per second end to end, and on CUDA
  the GPU busy fraction (time covered by device events from ``torch.profiler`` over wall time).

Profiles: ``cpu`` is the default data set and model of this workbench (``synthetic-stage2`` at
64 px with 8 B-scans, ResNet18 x0.25, batch 16). ``gpu`` is the paper's scale: ResNet34 at full
width, fundus 224 x 224, 32 B-scans of 224 x 224, batch 8 (the paper's) and 16 (a larger batch:
one eye is 33 images of 224 px, so batch 16 already runs 528 images through ResNet34 per step),
on a small synthetic set generated at that size (cached under ``outputs/cache``). On CUDA the
model runs as the trainer runs it: bf16 autocast, channels-last, pinned non-blocking copies and
augmentation on the device; ``--compile`` compiles the encoders.

``make bench`` runs the device's own profile (cpu on CPU, gpu on CUDA; ``--profile`` chooses).
Writes ``outputs/bench/steps-<device>.json`` and ``.md`` (``steps-<device>-<profile>`` when the
profile is not the device's own). ``--end-to-end`` instead times both
stages of ``re-m3dr`` at the ``cpu`` notebook profile, and ``--make-run`` times ``make run``;
those write ``outputs/bench/end-to-end-<device>.json`` and ``.md``.

This script is the entry point; its parts are in ``benchmarks/stepbench/`` (``inputs``: profiles,
data and workload; ``strategies``: the rows, runners and component timer; ``measure``: host reads,
memory, epoch pass; ``report``: statistics, targets, tables, files; ``end_to_end``).
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the stepbench package next to this script

from remd_core.experiments.provenance import git_revision  # noqa: E402
from remd_core.models import EncoderConfig  # noqa: E402
from remd_core.paths import outputs_dir  # noqa: E402
from remd_core.training import resolve_device  # noqa: E402
from stepbench.end_to_end import end_to_end  # noqa: E402
from stepbench.inputs import NATURAL_PROFILE, PROFILES, Workload, dataset_for, loader_throughput  # noqa: E402
from stepbench.measure import cuda_syncs_per_step, epoch_pass, host_reads_per_step, peak_memory  # noqa: E402
from stepbench.report import (build_rows, check_targets, device_name, device_tag, end_to_end_markdown, log,  # noqa: E402
                              markdown, write_outputs)
from stepbench.strategies import PLAIN, SPECS, ComponentTimer, Runner  # noqa: E402


def bench_batch(work: Workload, specs, args) -> dict:
    runners = {s.name: Runner(s, work) for s in specs}
    components = ComponentTimer(work)
    entries = list(runners.values()) + [components]
    log(f"  warmup: {args.warmup} visits per entry")
    for _ in range(args.warmup):
        for e in entries:
            e.visit(timed=False)
    sweep = 0
    for r in range(args.repeats):
        start = time.perf_counter()
        for _ in range(args.steps):  # one sweep: every entry once, the order rotating sweep by sweep
            k = sweep % len(entries)
            for e in entries[k:] + entries[:k]:
                e.visit()
            sweep += 1
        log(f"  round {r + 1}/{args.repeats}: {time.perf_counter() - start:.1f} s")
    comp = components.medians()
    rows = build_rows(runners, components.samples, work.batch_size)
    log("  host reads, device synchronisations and peak memory per strategy")
    for row in rows:
        runner = runners[row["strategy"]]
        row["host_reads_per_step"] = host_reads_per_step(runner)
        row["cuda_syncs_per_step"] = cuda_syncs_per_step(runner)
        row["memory"] = peak_memory(runner)
    block = {"components_ms": {k: 1e3 * v for k, v in comp.items()},
             "components_samples_ms": {k: [1e3 * x for x in v] for k, v in components.samples.items()},
             "rows": rows}
    if args.loader_batches > 0:
        log("  data loader")
        block["loader"] = loader_throughput(work, args.loader_batches)
    if args.epoch_steps != 0:
        train = work.dataset.train
        n = args.epoch_steps if args.epoch_steps > 0 else max(1, len(train) // work.batch_size)
        log(f"  epoch pass: {n} batches per strategy, loader included")
        block["epoch"] = {name: epoch_pass(r, n) for name, r in runners.items()}
    block["targets"] = check_targets(rows, block.get("loader"))
    return block



def run_steps(args) -> dict:
    profile = PROFILES[args.profile]
    device = resolve_device(args.device)
    encoder = EncoderConfig(**{**profile.encoder, **({"arch": args.arch} if args.arch else {}),
                               **({"width": args.width} if args.width else {})})
    batch_sizes = tuple(int(b) for b in args.batch_sizes.split(",")) if args.batch_sizes else profile.batch_sizes
    names = args.strategies.split(",") if args.strategies else [s.name for s in SPECS]
    unknown = set(names) - {s.name for s in SPECS}
    if unknown:
        raise SystemExit(f"unknown strategies {sorted(unknown)}; known: {[s.name for s in SPECS]}")
    if PLAIN not in names:
        names = [PLAIN] + names
    specs = [s for s in SPECS if s.name in names]
    start = time.perf_counter()
    dataset, overrides = dataset_for(profile, args)
    log(f"data: synthetic-stage2 {overrides or '(defaults)'}: {len(dataset.train)} training eyes "
        f"({time.perf_counter() - start:.1f} s to load or generate)")
    meta = {"profile": args.profile, "device": str(device), "device_name": device_name(device),
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "git": git_revision(), "steps": args.steps, "warmup": args.warmup,
            "repeats": args.repeats, "pool": args.pool, "model": f"{encoder.arch} x{encoder.width:g}",
            "data": {k: v for k, v in overrides.items()} or "synthetic-stage2 defaults",
            "compile": args.compile, "bf16": device.type == "cuda", "channels_last": device.type == "cuda",
            "check_finite": False, "command": " ".join(sys.argv)}
    result = {"meta": meta, "batches": {}}
    out_of_memory = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)
    for bs in batch_sizes:
        log(f"batch {bs}: building {len(specs)} model copies and {args.pool} batches on {device}")
        try:
            work = Workload(dataset, encoder, bs, device, args.pool, compile_encoders=args.compile)
            result["batches"][str(bs)] = bench_batch(work, specs, args)
        except out_of_memory as err:  # report it and go on with the other batch sizes
            log(f"  batch {bs}: out of memory ({str(err).splitlines()[0]})")
            result["batches"][str(bs)] = {"error": "out of memory", "detail": str(err).splitlines()[0]}
        work = None
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return result


def print_table(result: dict) -> None:
    print()
    print(markdown(result))


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", choices=sorted(PROFILES), default=None,
                    help="default: the device's own (cpu on CPU, gpu on CUDA)")
    ap.add_argument("--steps", type=int, default=20,
                    help="timed sweeps per round (a sweep: one step of every strategy, a 4-step cycle for sgm_k4)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed sweeps first")
    ap.add_argument("--repeats", type=int, default=5, help="rounds over all strategies")
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    ap.add_argument("--batch-sizes", default=None, help="comma-separated; default: the profile's")
    ap.add_argument("--out", default=None, help="output folder (default outputs/bench)")
    ap.add_argument("--strategies", default=None, help=f"comma-separated subset of {[s.name for s in SPECS]}")
    ap.add_argument("--pool", type=int, default=4, help="distinct prepared batches, cycled")
    ap.add_argument("--loader-batches", type=int, default=16, help="batches timed through the loader (0: skip)")
    ap.add_argument("--epoch-steps", type=int, default=-1,
                    help="batches per strategy in the epoch pass (-1: one epoch of the training split; 0: skip)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the encoders")
    ap.add_argument("--image-size", type=int, default=None, help="override the profile's image and B-scan size")
    ap.add_argument("--n-bscans", type=int, default=None, help="override the profile's B-scan count")
    ap.add_argument("--n-eyes", type=int, default=None, help="override the profile's number of eyes")
    ap.add_argument("--arch", default=None, help="override the profile's backbone")
    ap.add_argument("--width", type=float, default=None, help="override the profile's width multiplier")
    ap.add_argument("--end-to-end", action="store_true", help="time both stages of re-m3dr (cpu notebook profile)")
    ap.add_argument("--make-run", action="store_true", help="time `make run`")
    args = ap.parse_args(argv)
    if args.steps < 1 or args.repeats < 1 or args.warmup < 0 or args.pool < 1:
        ap.error("need --steps >= 1, --repeats >= 1, --warmup >= 0 and --pool >= 1")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out) if args.out else outputs_dir() / "bench"
    device = resolve_device(args.device)
    args.profile = args.profile or NATURAL_PROFILE.get(device.type, "cpu")
    if args.end_to_end or args.make_run:
        result = end_to_end(args)
        paths = write_outputs(result, out, f"end-to-end-{device_tag(device)}")
        print(end_to_end_markdown(result))
    else:
        result = run_steps(args)
        stem = f"steps-{device_tag(device)}"
        if NATURAL_PROFILE.get(device.type) != args.profile:
            stem += f"-{args.profile}"
        paths = write_outputs(result, out, stem)
        print_table(result)
    print(f"wrote {paths[0]} and {paths[1]}")
    return result


if __name__ == "__main__":
    main()
