"""The rows of the step-cost table (a strategy and its floor), one runner per strategy on its own
model copy, and the component timer (F, B, G, O and OGM-GE's E) on another."""

from __future__ import annotations

import copy
import statistics
import time
from dataclasses import dataclass, field

import torch

from remd_core.optim import build_strategy
from remd_core.optim.strategy import frozen_batchnorm_stats

from .inputs import Workload


@dataclass(frozen=True)
class StrategySpec:
    """A row of the table: how to build the strategy and its floor in units of F, B, G and E."""

    name: str
    strategy: str
    options: dict = field(default_factory=dict)
    n_forward: float = 1.0
    n_backward: float = 1.0
    n_nograd: float = 0.0
    noise: bool = False
    cycle: int = 1
    peer: str | None = None

    def ideal(self, c: dict) -> float:
        """Floor in seconds: ``nF F + nB B + nG G + O`` (+ ``E`` for OGM-GE)."""
        return (self.n_forward * c["forward"] + self.n_backward * c["backward"] + self.n_nograd * c["nograd"] + c["optimizer"]
                + (c["noise"] if self.noise else 0.0))


SPECS = (
    StrategySpec("joint", "joint", {"unimodal_weight": 1.0}),
    StrategySpec("naive_fusion", "joint", {"unimodal_weight": 0.0}),
    StrategySpec("ogm_ge", "ogm_ge", noise=True),
    StrategySpec("mmpareto", "mmpareto", n_backward=2, peer="mmpareto_reference"),
    StrategySpec("sgm_k1", "sgm", {"probe_every": 1}, n_backward=2, n_nograd=2, peer="sgm_reference"),
    StrategySpec("sgm_k4", "sgm", {"probe_every": 4}, n_backward=2, n_nograd=0.5, cycle=4),
    # the sharpness-aware family: a forward and backward at w, then at the perturbed weights; ImbSAM
    # back-propagates the head and tail parts of its first loss separately, SSE-SAM perturbs both
    # (its head radius stays on here: the bench does not tell it the run length)
    StrategySpec("sam", "sam", n_forward=2, n_backward=2),
    StrategySpec("imbsam", "imbsam", n_forward=2, n_backward=3),
    StrategySpec("sse_sam", "sse-sam", n_forward=3, n_backward=4),
    # BSAM is SAM on a re-weighted loss: the re-weighting is a backward through the loss alone, to the outputs.
    # IGM: a forward of both encoders (the fusion head reads both), a backward through the current modality's
    # encoder, and at its official radius the flat term's second forward and backward; 2F + 2B bounds that from
    # above (each backward reaches one encoder, and the fused head's gradient stops at the features)
    StrategySpec("bsam", "bsam", n_forward=2, n_backward=2),
    StrategySpec("igm", "igm", n_forward=2, n_backward=2),
    StrategySpec("mmpareto_reference", "mmpareto_reference", n_backward=3),
    StrategySpec("sgm_reference", "sgm_reference", {"probe_every": 1}, n_backward=3, n_nograd=2),
)
PLAIN = "joint"
OURS = ("joint", "naive_fusion", "ogm_ge", "mmpareto", "sgm_k1", "sgm_k4", "sam", "imbsam", "sse_sam", "bsam", "igm")


class Runner:
    """One strategy on its own copy of the model, with its own AdamW and step counter. Strategies
    are built by name (``build_strategy``, seeded: whichever draws random numbers gets them)."""

    def __init__(self, spec: StrategySpec, work: Workload):
        self.spec, self.work = spec, work
        self.model = copy.deepcopy(work.model)
        self.strategy = build_strategy(spec.strategy, spec.options, seed=1, check_finite=False).bind(self.model)
        self.strategy.prepare_run(work.run_info())  # as fit does: ImbSAM's head region from the training labels
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
        ogm_ge = build_strategy("ogm_ge")  # the parameters OGM-GE modulates, by its own rule
        self.kernels = [p for enc in self.model.encoders.values() for p in ogm_ge.modulated_parameters(enc)]
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

