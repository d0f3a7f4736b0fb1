"""Step cost of every training strategy, side by side, against its physical floor (``make bench``).

In one process, on the same model (one copy per strategy, all from the same initial weights), the
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
- Data: the loader is the trainer's (``MultimodalSplit.batches`` and ``prepare_inputs`` with
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
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import ctypes
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from torch import nn

from remd_core.data import load
from remd_core.losses import regression_loss
from remd_core.models import EncoderConfig, MultimodalRegressor
from remd_core.optim import Losses, build_strategy
from remd_core.optim.strategy import frozen_batchnorm_stats
from remd_core.files import write_json
from remd_core.paths import REPO_ROOT, outputs_dir
from remd_core.experiments.provenance import git_revision
from remd_core.trainer import resolve_device
from remd_core.transforms import prepare_inputs, to_device

# --------------------------------------------------------------------------------------------------
# profiles and strategies
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Profile:
    data: dict
    encoder: dict
    batch_sizes: tuple[int, ...]


PROFILES = {
    "cpu": Profile(data={}, encoder={}, batch_sizes=(16,)),
    "gpu": Profile(data={"image_size": 224, "oct_size": 224, "n_bscans": 32, "n_eyes": 160, "test": 16, "val": 16},
                   encoder={"arch": "resnet34", "width": 1.0}, batch_sizes=(8, 16)),
}
NATURAL_PROFILE = {"cpu": "cpu", "cuda": "gpu"}


@dataclass(frozen=True)
class StrategySpec:
    """A row of the table: how to build the strategy and its floor in units of F, B, G and E."""

    name: str
    strategy: str
    options: dict = field(default_factory=dict)
    n_backward: float = 1.0
    n_nograd: float = 0.0
    noise: bool = False
    cycle: int = 1
    peer: str | None = None

    def ideal(self, c: dict) -> float:
        """Floor in seconds: ``F + nB B + nG G + O`` (+ ``E`` for OGM-GE)."""
        return (c["forward"] + self.n_backward * c["backward"] + self.n_nograd * c["nograd"] + c["optimizer"]
                + (c["noise"] if self.noise else 0.0))


SPECS = (
    StrategySpec("joint", "joint", {"unimodal_weight": 1.0}),
    StrategySpec("naive_fusion", "joint", {"unimodal_weight": 0.0}),
    StrategySpec("ogm_ge", "ogm_ge", noise=True),
    StrategySpec("mmpareto", "mmpareto", n_backward=2, peer="mmpareto_reference"),
    StrategySpec("sgm_k1", "sgm", {"probe_every": 1}, n_backward=2, n_nograd=2, peer="sgm_reference"),
    StrategySpec("sgm_k4", "sgm", {"probe_every": 4}, n_backward=2, n_nograd=0.5, cycle=4),
    StrategySpec("mmpareto_reference", "mmpareto_reference", n_backward=3),
    StrategySpec("sgm_reference", "sgm_reference", {"probe_every": 1}, n_backward=3, n_nograd=2),
)
PLAIN = "joint"
OURS = ("joint", "naive_fusion", "ogm_ge", "mmpareto", "sgm_k1", "sgm_k4")
TARGETS = {"ratio_to_ideal_max": 1.10, "sgm_k1_max": 2.5, "sgm_k4_max": 2.05, "mmpareto_max": 1.9,
           "mmpareto_vs_official_max": 0.7}

# --------------------------------------------------------------------------------------------------
# the workload: model, batches, closures
# --------------------------------------------------------------------------------------------------


class Workload:
    """Model copies, a pool of prepared batches and the trainer's stage-2 closure on one device."""

    def __init__(self, dataset, encoder: EncoderConfig, batch_size: int, device: torch.device, pool: int,
                 compile_encoders: bool = False, seed: int = 0):
        self.dataset, self.batch_size, self.device = dataset, batch_size, device
        self.kinds = {m.name: m.kind for m in dataset.spec.modalities}
        self.modalities = dataset.spec.modality_names
        train = dataset.train
        self.mean, self.std = float(train.y.mean()), float(train.y.std())
        self.loss_fn = regression_loss("mse")
        self.cuda = device.type == "cuda"
        torch.manual_seed(seed)
        model = MultimodalRegressor(dataset.spec, self.modalities, encoder).to(device)
        if self.cuda:
            model = model.to(memory_format=torch.channels_last)
        if compile_encoders:
            for enc in model.encoders.values():
                enc.compile()
        self.model = model
        generator = torch.Generator().manual_seed(seed)
        self.batches = []
        while len(self.batches) < pool:
            for batch in train.batches(batch_size, shuffle=True, generator=generator, drop_last=len(train) > batch_size):
                self.batches.append(self.prepare(batch, generator))
                if len(self.batches) == pool:
                    break

    def prepare(self, batch, generator):
        inputs = prepare_inputs(batch, self.modalities, self.kinds, True, generator, self.device)
        return inputs, to_device((batch["y"] - self.mean) / self.std, self.device)

    def autocast(self):
        return torch.autocast("cuda", dtype=torch.bfloat16) if self.cuda else contextlib.nullcontext()

    def closure(self, model, i: int):
        inputs, target = self.batches[i % len(self.batches)]
        loss_fn = self.loss_fn

        def compute():
            with self.autocast():
                out = model(inputs)
            return Losses(fused=loss_fn(out["fused"].float(), target),
                          unimodal={m: loss_fn(p.float(), target) for m, p in out["unimodal"].items()},
                          outputs={**out, "target": target})
        return compute

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize(self.device)


class Runner:
    """One strategy on its own copy of the model, with its own AdamW and step counter."""

    def __init__(self, spec: StrategySpec, work: Workload):
        self.spec, self.work = spec, work
        self.model = copy.deepcopy(work.model)
        extra = {"generator": torch.Generator().manual_seed(1)} if spec.strategy == "ogm_ge" else {}
        self.strategy = build_strategy(spec.strategy, spec.options, check_finite=False, **extra).bind(self.model)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-4, weight_decay=1e-4)
        self.t = 0
        self.samples: list[float] = []

    def step(self, optimizer=None):
        self.strategy.step(self.work.closure(self.model, self.t), optimizer or self.optimizer, step=self.t, epoch=0)
        self.t += 1

    def visit(self, timed: bool = True) -> None:
        """One cycle of steps (one step; four for SGM with k = 4), each timed on its own; the
        sample is their mean."""
        times = []
        for _ in range(self.spec.cycle):
            self.work.sync()
            start = time.perf_counter()
            self.step()
            self.work.sync()
            times.append(time.perf_counter() - start)
        if timed:
            self.samples.append(sum(times) / len(times))


class ComponentTimer:
    """F, B, G and O on their own (one model copy, AdamW), and E for OGM-GE's noise."""

    KEYS = ("forward", "backward", "nograd", "optimizer", "noise")

    def __init__(self, work: Workload):
        self.work = work
        self.model = copy.deepcopy(work.model)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-4, weight_decay=1e-4)
        self.kernels = [m.weight for enc in self.model.encoders.values() for m in enc.modules()
                        if isinstance(m, nn.modules.conv._ConvNd)]
        self.generator = torch.Generator().manual_seed(2)
        self.samples = {k: [] for k in self.KEYS}
        self.t = 0

    def _time(self, fn):
        self.work.sync()
        start = time.perf_counter()
        out = fn()
        self.work.sync()
        return time.perf_counter() - start, out

    def once(self) -> None:
        compute = self.work.closure(self.model, self.t)
        self.optimizer.zero_grad(set_to_none=True)
        dt, total = self._time(lambda: compute().total(1.0))
        self.samples["forward"].append(dt)
        self.samples["backward"].append(self._time(total.backward)[0])
        if self.kernels:
            grads = [p.grad for p in self.kernels if p.grad is not None]
            self.samples["noise"].append(self._time(lambda: self._noise(grads))[0])
        else:
            self.samples["noise"].append(0.0)
        self.samples["optimizer"].append(self._time(self.optimizer.step)[0])

        def nograd():
            with torch.no_grad(), frozen_batchnorm_stats(self.model):
                return compute().total(1.0)
        self.samples["nograd"].append(self._time(nograd)[0])
        self.t += 1

    def _noise(self, grads):
        """One Gaussian draw per modulated element (per tensor, which is faster on CPU than one
        long draw), one fused reduction standing in for the per-tensor standard deviation, and
        fused in-place scale, noise scale and add."""
        if not grads:
            return
        gen = None if self.work.cuda else self.generator
        noise = [torch.randn(g.shape, generator=gen, device=g.device) for g in grads]
        scales = torch._foreach_norm(grads)
        torch._foreach_mul_(grads, 1.0)
        torch._foreach_mul_(noise, scales)
        torch._foreach_add_(grads, noise, alpha=1e-6)

    def visit(self, timed: bool = True) -> None:
        self.once()
        if not timed:
            for v in self.samples.values():
                v.pop()

    def medians(self) -> dict:
        return {k: statistics.median(v) for k, v in self.samples.items()}


# --------------------------------------------------------------------------------------------------
# host reads, memory, loader, epoch pass
# --------------------------------------------------------------------------------------------------


class _StubOptimizer:
    """``zero_grad`` and ``step`` that do nothing a host read could hide in."""

    def __init__(self, params):
        self.params = list(params)

    def zero_grad(self, set_to_none=True):
        for p in self.params:
            p.grad = None

    def step(self):
        pass


@contextlib.contextmanager
def count_host_reads():
    """Count Python-side reads of tensor values (each one a device synchronisation on a GPU)."""
    counter = {"n": 0}
    patched = {}

    def wrap(name, only_device=False):
        original = getattr(torch.Tensor, name)

        def wrapper(self, *args, **kwargs):
            if not only_device or self.device.type != "cpu":
                counter["n"] += 1
            return original(self, *args, **kwargs)
        patched[name] = original
        setattr(torch.Tensor, name, wrapper)

    for name in ("item", "tolist", "__bool__", "__float__", "__int__", "numpy"):
        wrap(name)
    wrap("cpu", only_device=True)
    try:
        yield counter
    finally:
        for name, original in patched.items():
            setattr(torch.Tensor, name, original)


def host_reads_per_step(runner: Runner) -> int:
    stub = _StubOptimizer(runner.model.parameters())
    with count_host_reads() as counter:
        runner.step(optimizer=stub)
    return counter["n"]


def cuda_syncs_per_step(runner: Runner) -> int | None:
    if not runner.work.cuda:
        return None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            runner.step()
            runner.work.sync()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message).lower() for w in caught)


def current_rss() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _malloc_trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class RssSampler(threading.Thread):
    def __init__(self, interval: float = 0.002):
        super().__init__(daemon=True)
        self.interval, self.peak, self.stop = interval, current_rss(), threading.Event()

    def run(self):
        while not self.stop.is_set():
            self.peak = max(self.peak, current_rss())
            time.sleep(self.interval)


def peak_memory(runner: Runner, steps: int = 2) -> dict:
    """Peak memory over ``steps`` steps (MiB) and the rise above the memory before them."""
    work = runner.work
    if work.cuda:
        work.sync()
        torch.cuda.reset_peak_memory_stats(work.device)
        before = torch.cuda.memory_allocated(work.device)
        for _ in range(steps):
            runner.step()
        work.sync()
        peak = torch.cuda.max_memory_allocated(work.device)
        kind = "cuda_max_allocated"
    else:
        _malloc_trim()
        before = current_rss()
        sampler = RssSampler()
        sampler.start()
        try:
            for _ in range(steps):
                runner.step()
        finally:
            sampler.stop.set()
            sampler.join()
        peak = max(sampler.peak, current_rss())
        kind = "process_rss"
    return {"kind": kind, "peak_mib": peak / 2**20, "step_mib": (peak - before) / 2**20}


def loader_throughput(work: Workload, max_batches: int) -> dict:
    """Samples per second of the trainer's data path: gather, augment, normalise, move."""
    train = work.dataset.train
    generator = torch.Generator().manual_seed(5)
    n, batches = 0, 0
    work.sync()
    start = time.perf_counter()
    while batches < max_batches:
        for batch in train.batches(work.batch_size, shuffle=True, generator=generator,
                                   drop_last=len(train) > work.batch_size):
            inputs, target = work.prepare(batch, generator)
            n += len(batch["id"])
            batches += 1
            if batches >= max_batches:
                break
    work.sync()
    seconds = time.perf_counter() - start
    return {"batches": batches, "samples": n, "seconds": seconds, "samples_per_s": n / seconds}


def gpu_busy_fraction(prof, seconds: float) -> float | None:
    """Time covered by at least one device event (kernels, copies; the union of their intervals,
    so concurrent kernels count once) over the wall time of the pass."""
    from torch.autograd import DeviceType

    spans = sorted((e.time_range.start, e.time_range.end) for e in prof.events()
                   if getattr(e, "device_type", None) == DeviceType.CUDA)
    if not spans:
        return None
    busy_us, (lo, hi) = 0.0, spans[0]
    for a, b in spans[1:]:
        if a > hi:
            busy_us, lo, hi = busy_us + hi - lo, a, b
        else:
            hi = max(hi, b)
    return (busy_us + hi - lo) * 1e-6 / seconds


def epoch_pass(runner: Runner, n_batches: int) -> dict:
    """``n_batches`` training steps with the loader in the loop, as the trainer runs them; on CUDA
    the GPU busy fraction (sum of kernel times over wall time, from ``torch.profiler``)."""
    work = runner.work
    train = work.dataset.train
    generator = torch.Generator().manual_seed(7)

    def run():
        n = done = 0
        while done < n_batches:
            for batch in train.batches(work.batch_size, shuffle=True, generator=generator,
                                       drop_last=len(train) > work.batch_size):
                inputs, target = work.prepare(batch, generator)
                work.batches.append((inputs, target))
                runner.strategy.step(work.closure(runner.model, len(work.batches) - 1), runner.optimizer,
                                     step=runner.t, epoch=0)
                work.batches.pop()
                runner.t += 1
                n += len(batch["id"])
                done += 1
                if done >= n_batches:
                    break
        return n

    busy = None
    work.sync()
    if work.cuda:
        from torch.profiler import ProfilerActivity, profile
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            start = time.perf_counter()
            n = run()
            work.sync()
            seconds = time.perf_counter() - start
        try:
            busy = gpu_busy_fraction(prof, seconds)
        except Exception as err:  # a profiler without device events must not lose the timing
            log(f"    no GPU busy fraction: {err!r}")
    else:
        start = time.perf_counter()
        n = run()
        seconds = time.perf_counter() - start
    return {"batches": n_batches, "samples": n, "seconds": seconds, "samples_per_s": n / seconds,
            "gpu_busy_fraction": busy}


# --------------------------------------------------------------------------------------------------
# statistics, table, files
# --------------------------------------------------------------------------------------------------


def summarise(samples: list[float]) -> dict:
    q = np.percentile(samples, [25, 50, 75])
    return {"n": len(samples), "median_s": float(q[1]), "p25_s": float(q[0]), "p75_s": float(q[2]),
            "min_s": float(min(samples)), "max_s": float(max(samples))}


def paired_ratios(samples: dict[str, list[float]], components: dict[str, list[float]], spec: StrategySpec,
                  plain: StrategySpec, peer: str | None) -> dict[str, list[float]]:
    """Per sweep j (every entry timed once, next to each other): ``T_s / T_plain``, the ideal
    ratio from that sweep's components, their quotient, and ``T_s / T_peer``."""
    out = {"ratio_to_plain": [], "ratio_to_ideal": [], "ratio_to_peer": []}
    for j, t in enumerate(samples[spec.name]):
        c = {k: v[j] for k, v in components.items()}
        ratio = t / samples[plain.name][j]
        out["ratio_to_plain"].append(ratio)
        out["ratio_to_ideal"].append(ratio / (spec.ideal(c) / plain.ideal(c)))
        if peer:
            out["ratio_to_peer"].append(t / samples[peer][j])
    return out


def build_rows(runners: dict[str, Runner], components: dict[str, list[float]], batch_size: int) -> list[dict]:
    """One row per strategy. Time: median and quartiles of its samples. Ratios: medians over
    sweeps of the paired ratios (``paired_ratios``), which cancels drift slower than one sweep.
    ``ideal_ratio`` is shown from the median components."""
    plain = runners[PLAIN].spec
    samples = {name: r.samples for name, r in runners.items()}
    med = {k: statistics.median(v) for k, v in components.items()}
    rows = []
    for name, r in runners.items():
        peer = r.spec.peer if r.spec.peer in runners else None
        paired = paired_ratios(samples, components, r.spec, plain, peer)
        stats = summarise(r.samples)
        row = {"batch_size": batch_size, "strategy": name, **stats,
               "ratio_to_plain": statistics.median(paired["ratio_to_plain"]),
               "ideal_ratio": r.spec.ideal(med) / plain.ideal(med),
               "ratio_to_ideal": statistics.median(paired["ratio_to_ideal"]),
               "ideal_s": r.spec.ideal(med), "consumption_samples_per_s": batch_size / stats["median_s"],
               "samples_ms": [1e3 * x for x in r.samples]}
        if peer:
            row["peer"] = peer
            row["ratio_to_peer"] = statistics.median(paired["ratio_to_peer"])
        rows.append(row)
    return rows


def check_targets(rows: list[dict], loader: dict) -> list[dict]:
    """Each target with the measured value and whether it is met."""
    by = {r["strategy"]: r for r in rows}
    out = []

    def add(what, value, limit, ok):
        out.append({"target": what, "value": value, "limit": limit, "met": bool(ok)})

    for name in OURS:
        if name in by:
            add(f"{name} within {TARGETS['ratio_to_ideal_max']}x of its ideal", by[name]["ratio_to_ideal"],
                TARGETS["ratio_to_ideal_max"], by[name]["ratio_to_ideal"] <= TARGETS["ratio_to_ideal_max"])
    for name, key in (("sgm_k1", "sgm_k1_max"), ("sgm_k4", "sgm_k4_max"), ("mmpareto", "mmpareto_max")):
        if name in by:
            add(f"{name} at most {TARGETS[key]}x plain", by[name]["ratio_to_plain"], TARGETS[key],
                by[name]["ratio_to_plain"] <= TARGETS[key])
    if "mmpareto" in by and "ratio_to_peer" in by["mmpareto"]:
        v = by["mmpareto"]["ratio_to_peer"]
        add(f"mmpareto at most {TARGETS['mmpareto_vs_official_max']}x the official-structured step", v,
            TARGETS["mmpareto_vs_official_max"], v <= TARGETS["mmpareto_vs_official_max"])
    for name in OURS:
        if name in by and by[name].get("host_reads_per_step") is not None:
            add(f"{name}: no host reads in the step", by[name]["host_reads_per_step"], 0,
                by[name]["host_reads_per_step"] == 0)
        if name in by and by[name].get("cuda_syncs_per_step") is not None:
            add(f"{name}: no device synchronisation in the step", by[name]["cuda_syncs_per_step"], 0,
                by[name]["cuda_syncs_per_step"] == 0)
    fastest = max((r["consumption_samples_per_s"] for r in rows), default=0.0)
    if loader and fastest:
        add("loader samples/s at least the fastest strategy's consumption", loader["samples_per_s"] / fastest, 1.0,
            loader["samples_per_s"] >= fastest)
    return out


def markdown(result: dict) -> str:
    meta = result["meta"]
    lines = [f"# Step cost per strategy: {meta['device_name']} ({meta['profile']} profile)", "",
             f"{meta['date']}, torch {meta['torch']}, {meta['threads']} threads, git {meta['git']}; "
             f"{meta['steps']} sweeps x {meta['repeats']} rounds (warmup {meta['warmup']}); model {meta['model']}; "
             f"data {meta['data']}.", ""]
    for bs, block in result["batches"].items():
        if "error" in block:
            lines += [f"## Batch {bs}", "", f"Not measured: {block['error']} ({block.get('detail', '')}).", ""]
            continue
        c = block["components_ms"]
        lines += [f"## Batch {bs}", "",
                  f"Components (median ms): F {c['forward']:.1f}, B {c['backward']:.1f}, G (graph-free F) "
                  f"{c['nograd']:.1f}, O (optimizer) {c['optimizer']:.1f}, E (OGM noise) {c['noise']:.2f}.", "",
                  "| strategy | median ms | IQR ms | x plain | ideal x | /ideal | vs peer | peak MiB | +step MiB "
                  "| host reads | samples/s |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in block["rows"]:
            peer = f"{r['ratio_to_peer']:.2f}" if "ratio_to_peer" in r else ""
            mem = r.get("memory") or {}
            reads = r.get("host_reads_per_step")
            syncs = r.get("cuda_syncs_per_step")
            reads_txt = "" if reads is None else str(reads) + ("" if syncs is None else f" ({syncs} syncs)")
            lines.append(
                f"| {r['strategy']} | {1e3 * r['median_s']:.1f} | {1e3 * (r['p75_s'] - r['p25_s']):.1f} | "
                f"{r['ratio_to_plain']:.2f} | {r['ideal_ratio']:.2f} | {r['ratio_to_ideal']:.2f} | {peer} | "
                f"{mem.get('peak_mib', float('nan')):.0f} | {mem.get('step_mib', float('nan')):.0f} | {reads_txt} | "
                f"{r['consumption_samples_per_s']:.1f} |")
        loader = block.get("loader")
        if loader:
            fastest = max(r["consumption_samples_per_s"] for r in block["rows"])
            lines += ["", f"Loader: {loader['samples_per_s']:.1f} samples/s over {loader['batches']} batches; the "
                          f"fastest strategy consumes {fastest:.1f} samples/s (headroom "
                          f"{loader['samples_per_s'] / fastest:.1f}x)."]
        epochs = block.get("epoch")
        if epochs:
            lines += ["", "| strategy (epoch pass, loader included) | samples/s | GPU busy |", "|---|---:|---:|"]
            for name, e in epochs.items():
                busy = "" if e["gpu_busy_fraction"] is None else f"{e['gpu_busy_fraction']:.0%}"
                lines.append(f"| {name} | {e['samples_per_s']:.1f} | {busy} |")
        lines += ["", "| target | value | limit | met |", "|---|---:|---:|---|"]
        for t in block["targets"]:
            lines.append(f"| {t['target']} | {t['value']:.2f} | {t['limit']} | {'yes' if t['met'] else 'NO'} |")
        lines.append("")
    return "\n".join(lines)


def device_tag(device: torch.device) -> str:
    if device.type != "cuda":
        return device.type
    name = torch.cuda.get_device_name(device).lower()
    return "cuda-" + "".join(ch if ch.isalnum() else "-" for ch in name).strip("-")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{model}, {os.cpu_count()} cores"


def write_outputs(result: dict, out: Path, stem: str) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / f"{stem}.json", out / f"{stem}.md"
    write_json(json_path, result, indent=1)
    md_path.write_text(markdown(result) if "batches" in result else end_to_end_markdown(result))
    return json_path, md_path


# --------------------------------------------------------------------------------------------------
# the benchmark
# --------------------------------------------------------------------------------------------------


def log(msg: str) -> None:
    print(msg, flush=True)


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


def dataset_for(profile: Profile, args):
    overrides = dict(profile.data)
    for key, value in (("image_size", args.image_size), ("oct_size", args.image_size), ("n_bscans", args.n_bscans),
                       ("n_eyes", args.n_eyes)):
        if value is not None:
            overrides[key] = value
    if args.n_eyes is not None:  # fractions, so that any number of eyes splits
        overrides.update(test=0.2, val=0.15)
    return load("synthetic-stage2", **overrides), overrides


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


def end_to_end(args) -> dict:
    """Wall time of both stages of ``re-m3dr`` at the ``cpu`` notebook profile, and of ``make run``."""
    out = {"meta": {"device_name": device_name(resolve_device(args.device)), "torch": torch.__version__,
                    "threads": torch.get_num_threads(), "git": git_revision(),
                    "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"), "command": " ".join(sys.argv)},
           "runs": {}}
    if args.end_to_end:
        from remd_core.workbench.runner import PROFILES as NOTEBOOK_PROFILES
        from remd_core.experiments.recipes import run_recipe
        from remd_core.trainer import TrainConfig

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


def end_to_end_markdown(result: dict) -> str:
    meta = result["meta"]
    lines = [f"# End to end: {meta['device_name']}", "", f"{meta['date']}, torch {meta['torch']}, "
             f"{meta['threads']} threads, git {meta['git']}.", "", "| run | seconds | notes |", "|---|---:|---|"]
    for name, r in result["runs"].items():
        notes = ", ".join(f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}" for k, v in r.items() if k != "seconds")
        lines.append(f"| {name} | {r['seconds']:.1f} | {notes} |")
    return "\n".join(lines) + "\n"


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
