"""What the step-cost benchmark measures besides time: host reads and device synchronisations per
step, peak memory, and the epoch pass (loader included) with the GPU busy fraction."""

from __future__ import annotations

import contextlib
import ctypes
import os
import threading
import time
import warnings

import torch

from .report import log
from .strategies import Runner


class StubOptimizer:
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
    stub = StubOptimizer(runner.model.parameters())
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
                work.batches.append(work.objective.prepare(batch, generator))
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

