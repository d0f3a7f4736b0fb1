"""Step times and the GPU's busy share of a training run, read from outside the trainer.

- ``StepTimer``: a global optimizer post-hook (``torch.optim.optimizer.register_optimizer_step_post_hook``,
  public torch API; ``fit`` is not touched) notes each optimizer step's host time and, on CUDA, records a
  CUDA event on the current stream. Each ``fit`` builds its own optimizer, so steps group into fits by
  optimizer, and into epochs by the known steps per epoch. A step's time is the interval between two
  consecutive steps of one epoch: on the GPU's timeline (``Event.elapsed_time``: everything the GPU did
  or waited for between them, the loader's batch included) and on the host clock. The first step of each
  epoch is left out (its interval holds the validation pass and the loader's start). Every strategy of a
  Re-M3Dr stage steps its optimizer once per training step.
- ``BusySampler``: a thread that reads NVML's ``utilization.gpu`` (``torch.cuda.utilization``: the percent of
  the driver's last sample period, 1/6 s to 1 s, in which a kernel ran) every ``interval`` seconds, or
  from ``nvidia-smi --query-gpu=utilization.gpu -lms`` where pynvml is missing. A fit's busy share is the
  mean of the samples taken between the first and the last step of each of its epochs.
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import threading
import time

import numpy as np
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook


class StepTimer:
    def __init__(self, device: torch.device, steps_per_epoch: int):
        self.cuda = device.type == "cuda"
        self.device, self.steps_per_epoch = device, steps_per_epoch
        self.fits: list[dict] = []  # per fit: label, host times, events, peak memory
        self._handle = None

    def __enter__(self):
        self._handle = register_optimizer_step_post_hook(self._hook)
        return self

    def __exit__(self, *exc):
        self._handle.remove()
        self._close_fit()

    def _hook(self, optimizer, args, kwargs):
        host = time.perf_counter()
        if getattr(optimizer, "_gpu_check_fit", None) is None:  # a new fit
            self._close_fit()
            optimizer._gpu_check_fit = len(self.fits)
            self.fits.append({"label": f"fit {len(self.fits) + 1}", "host": [], "events": [], "peak_gib": None})
            if self.cuda:
                torch.cuda.reset_peak_memory_stats(self.device)
        fit = self.fits[optimizer._gpu_check_fit]
        fit["host"].append(host)
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            fit["events"].append(event)

    def _close_fit(self):
        if self.fits and self.cuda and self.fits[-1]["peak_gib"] is None:
            self.fits[-1]["peak_gib"] = round(torch.cuda.max_memory_allocated(self.device) / 2**30, 2)

    def label(self, labels: list[str]) -> None:
        for fit, name in zip(self.fits, labels):
            fit["label"] = name

    def epochs(self, fit: dict) -> list[tuple[int, int]]:
        """(first, last) step index of each epoch of ``fit``."""
        n, k = len(fit["host"]), self.steps_per_epoch
        return [(a, min(a + k, n) - 1) for a in range(0, n, k)]

    def summary(self, fit: dict, busy: "BusySampler | None" = None, batch_size: int = 0, synced: bool = True) -> dict:
        """Steps, step times (ms: median, 10th and 90th percentile, on the GPU's timeline when ``synced``
        and on the host clock), eyes per second at the median, the busy share, the peak memory."""
        host, events = fit["host"], fit["events"]
        gpu_ms, host_ms, spans = [], [], []
        for a, b in self.epochs(fit):
            spans.append((host[a], host[b]))
            for i in range(a + 1, b + 1):
                host_ms.append(1e3 * (host[i] - host[i - 1]))
                if events and synced:
                    gpu_ms.append(events[i - 1].elapsed_time(events[i]))
        out = {"fit": fit["label"], "steps": len(host), "epochs": len(spans),
               "train_s": round(sum(b - a for a, b in spans), 2),
               "host_step_ms": _stats(host_ms), "gpu_step_ms": _stats(gpu_ms) if gpu_ms else None,
               "peak_gib": fit["peak_gib"]}
        median = (out["gpu_step_ms"] or out["host_step_ms"] or {}).get("median")
        out["eyes_per_s"] = round(1e3 * batch_size / median, 1) if median and batch_size else None
        out["gpu_busy"] = busy.share(spans) if busy is not None else None
        return out


def _stats(values: list[float]) -> dict | None:
    if not values:
        return None
    q = np.percentile(values, [10, 50, 90])
    return {"n": len(values), "median": round(float(q[1]), 2), "p10": round(float(q[0]), 2),
            "p90": round(float(q[2]), 2), "mean": round(statistics.fmean(values), 2)}


class BusySampler(threading.Thread):
    """NVML ``utilization.gpu`` every ``interval`` seconds (see the module docstring)."""

    def __init__(self, device: torch.device, interval: float = 0.1):
        super().__init__(daemon=True)
        self.device, self.interval = device, interval
        self.samples: list[tuple[float, float]] = []
        self.source, self.problem = None, None
        self._halt = threading.Event()
        self._smi = None

    def __enter__(self):
        try:
            torch.cuda.utilization(self.device)
            self.source = "torch.cuda.utilization (NVML utilization.gpu)"
        except Exception as err:  # noqa: BLE001 - pynvml missing or NVML refused: fall back, say why
            if shutil.which("nvidia-smi"):
                index = self.device.index or 0
                self._smi = subprocess.Popen(["nvidia-smi", f"--id={index}", "--query-gpu=utilization.gpu",
                                              "--format=csv,noheader,nounits", f"-lms={int(1e3 * self.interval)}"],
                                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
                self.source = f"nvidia-smi utilization.gpu (torch.cuda.utilization failed: {err!r})"
            else:
                self.problem = f"no NVML reading: torch.cuda.utilization failed ({err!r}) and nvidia-smi is missing"
                return self
        self.start()
        return self

    def run(self):
        if self._smi is not None:
            for line in self._smi.stdout:
                if self._halt.is_set():
                    break
                try:
                    self.samples.append((time.perf_counter(), float(line.strip())))
                except ValueError:
                    pass
            return
        while not self._halt.is_set():
            try:
                self.samples.append((time.perf_counter(), float(torch.cuda.utilization(self.device))))
            except Exception as err:  # noqa: BLE001
                self.problem = f"NVML read failed: {err!r}"
                return
            time.sleep(self.interval)

    def __exit__(self, *exc):
        self._halt.set()
        if self._smi is not None:
            self._smi.terminate()
            self._smi.wait()
        if self.is_alive():
            self.join(timeout=2)

    def share(self, spans: list[tuple[float, float]]) -> dict | None:
        """Mean utilization (0-1) of the samples inside ``spans`` and their count."""
        inside = [u for t, u in self.samples if any(a <= t <= b for a, b in spans)]
        if not inside:
            return {"share": None, "samples": 0, "source": self.source, "problem": self.problem or "no sample in the span"}
        return {"share": round(statistics.fmean(inside) / 100, 3), "samples": len(inside), "source": self.source}
