"""One interface for every optimisation strategy.

A strategy turns the losses of one batch into gradients and takes one optimizer step. The
trainer (or your own loop) gives it a *closure* that runs the forward pass on the current batch
with the current parameters and returns a ``Losses``:

    def compute():
        out = model(inputs)
        return Losses(fused=mse(out["fused"], y), unimodal={m: mse(p, y) for m, p in out["unimodal"].items()})

    logs = strategy.step(compute, optimizer, step=t, epoch=e)

The model must satisfy ``remd_core.models.MultimodalModel`` (``bind`` checks it): a strategy uses
only the members that contract declares, and of a batch only what ``Losses`` declares.

Why a closure: a strategy may need the losses at other parameters (SGM's probe, and the two-pass
SAM family a later issue adds, evaluate the loss at perturbed weights), and may need the losses
split by objective (Pareto methods). Because a ``Losses`` carries the terms, new heads (evidential
ones, for EyeMoSt) only change the closure, never the strategy.

``Losses.extra`` holds terms that every strategy back-propagates plainly with the multimodal loss
(the stage-1 contrastive loss, regularisers of a head). ``Losses.features`` and ``Losses.target``
are for strategies that score modalities by their predictions (OGM-GE); a closure that leaves them
out works with every other strategy, and OGM-GE says what is missing.

Random numbers a strategy draws (OGM-GE's noise) come from its ``generator`` (``build_strategy(...,
seed=s)`` makes one), saved and restored with its state, so a caller never needs to know which
strategies draw any.

Logs are 0-dim tensors, never Python numbers, so a step never waits for the device; the trainer
moves them to the host once per epoch.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass, field, replace
from typing import Callable

import torch
from torch import Tensor, nn

from ..models.contract import MultimodalModel, check_model


@dataclass
class Losses:
    """The losses of one batch, and what a strategy may read about it.

    ``fused``: the multimodal loss ``L_m``; ``unimodal``: ``{modality: L_u^k}`` (empty for a
    single-modality model or a closure without unimodal heads); ``extra``: terms back-propagated
    with ``L_m`` by every strategy; ``features``: ``{modality: [B, F]}`` the encoders' features of the
    batch (with their graph; strategies detach what they only read); ``target``: ``[B]`` the labels
    in the units of the loss (standardised, in the trainer)."""

    fused: Tensor
    unimodal: dict[str, Tensor] = field(default_factory=dict)
    extra: Tensor | None = None
    features: dict[str, Tensor] | None = None
    target: Tensor | None = None

    def total(self, unimodal_weight: float) -> Tensor:
        """Eq. 1 of the paper: ``L = L_m + sum_k alpha_k L_u^k`` (one alpha for all k), plus extra."""
        total = self.fused + unimodal_weight * self.unimodal_sum() if self.unimodal else self.fused
        return total + self.extra if self.extra is not None else total

    def unimodal_sum(self) -> Tensor:
        if not self.unimodal:
            return torch.zeros((), device=self.fused.device)
        return torch.stack(list(self.unimodal.values())).sum()

    def logs(self) -> dict[str, Tensor]:
        out = {"loss_fused": self.fused.detach()}
        out.update({f"loss_{m}": v.detach() for m, v in self.unimodal.items()})
        if self.extra is not None:
            out["loss_extra"] = self.extra.detach()
        return out


@dataclass
class RunInfo:
    """A training run as ``fit`` sees it before its first step: the MD regions of the training
    labels (``metrics.region_labels``), the label mean and SD that standardise the targets the
    closure sees, the number of optimisation steps the run will take, and the run length its
    schedules are stated for (``TrainConfig.reference_run_steps``; None: this run's own steps)."""

    regions: object
    label_mean: float
    label_std: float
    total_steps: int
    reference_steps: int | None = None

    def scaled_steps(self, steps: int) -> int:
        """A span of ``steps`` of the reference run as steps of this run (at least 1): SGM's window."""
        if self.reference_steps is None:
            return steps
        return max(1, round(steps * self.total_steps / self.reference_steps))


class NonFiniteError(FloatingPointError):
    """A loss or gradient became NaN or infinite."""


class Strategy:
    """Base class: subclasses implement ``backward`` (set ``.grad`` of every parameter, return logs).

    ``check_finite`` stops at the first non-finite loss or gradient, before the optimizer step, so
    the model keeps its last finite weights (one host synchronisation per step; switch it off for
    benchmarks).
    """

    name = "strategy"
    Config: type = None
    modulates_encoders = True
    """Whether the strategy changes the encoders' gradients; if so, ``bind`` refuses a model where
    ``modulated_parameters`` finds nothing in some encoder (a step would silently be plain training)."""

    def __init__(self, config=None, check_finite: bool = True, generator: torch.Generator | None = None):
        self.config = config if config is not None else self.Config()
        self.check_finite = check_finite
        self.generator = generator
        self.model: MultimodalModel | None = None

    def bind(self, model: MultimodalModel) -> "Strategy":
        """Attach to a model satisfying ``remd_core.models.MultimodalModel`` (``TypeError`` if it does
        not); ``ValueError`` naming the encoder when the strategy finds nothing to act on in one."""
        check_model(model, who=self.name)
        self.check_bindable(model)
        self.model = model
        return self

    def prepare_run(self, run: "RunInfo") -> None:
        """What the trainer knows before the first step (``RunInfo``); strategies that need it
        (ImbSAM's head region, SSE-SAM's switch step) read it here. Default: nothing."""

    def check_bindable(self, model: MultimodalModel) -> None:
        """Raise ``ValueError`` if the strategy cannot act on ``model`` (a contract-satisfying one):
        here, an encoder where ``modulated_parameters`` finds nothing (when ``modulates_encoders``)."""
        if self.modulates_encoders:
            for name, encoder in model.encoders.items():
                if not self.modulated_parameters(encoder):
                    raise ValueError(f"{self.name}: nothing to modulate in encoder {name!r} "
                                     f"({type(encoder).__name__}){self._nothing_hint()}")

    def modulated_parameters(self, encoder: nn.Module) -> list[nn.Parameter]:
        """The parameters of ``encoder`` whose gradients the strategy changes (default: the trainable ones)."""
        return [p for p in encoder.parameters() if p.requires_grad]

    def _nothing_hint(self) -> str:
        return ": it has no trainable parameter"

    def backward(self, compute: Callable[[], Losses], step: int, epoch: int) -> dict[str, Tensor]:
        raise NotImplementedError

    def step(self, compute: Callable[[], Losses], optimizer: torch.optim.Optimizer, step: int = 0,
             epoch: int = 0) -> dict[str, Tensor]:
        if self.model is None:
            raise RuntimeError(f"{self.name}: call bind(model) before step()")
        optimizer.zero_grad(set_to_none=True)
        logs = self.backward(compute, step, epoch)
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        logs["grad_norm"] = _global_norm(grads)
        if self.check_finite:
            device = logs["grad_norm"].device
            values = torch.stack([v.detach().float().reshape(()).to(device) for v in logs.values()])
            if not torch.isfinite(values).all():  # the step's one host synchronisation
                bad = [k for k, ok in zip(logs, torch.isfinite(values).tolist()) if not ok]
                raise NonFiniteError(f"{self.name}: non-finite {', '.join(bad)} at step {step}")
        optimizer.step()
        return logs

    # state: hyperparameters, the generator, plus whatever a subclass keeps between steps
    def state_dict(self) -> dict:
        state = {"config": asdict(self.config)}
        if self.generator is not None:
            state["generator"] = self.generator.get_state()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.config = self.Config(**state["config"])
        if "generator" in state:
            self.generator = self.generator or torch.Generator()
            self.generator.set_state(state["generator"])


def run_length(config, total_steps: int):
    """``config`` with the run's length ``total_steps`` (what ``fit`` knows) unless it already names one:
    an explicit ``total_steps`` option wins. For strategies whose schedule spans the run (SSE-SAM, IGM)."""
    if total_steps < 0:
        raise ValueError(f"total_steps must be >= 0, got {total_steps}")
    return config if config.total_steps else replace(config, total_steps=int(total_steps))


def _global_norm(tensors) -> Tensor:
    if not tensors:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(tensors, 2)))


def shared_and_head_params(model) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    return list(model.encoder_parameters()), list(model.head_parameters())


def encoder_slices(model) -> list[tuple[str, slice]]:
    """Each encoder's name and the slice of ``model.encoder_parameters()`` its parameters occupy."""
    out, start = [], 0
    for name, encoder in model.encoders.items():
        n = sum(1 for _ in encoder.parameters())
        out.append((name, slice(start, start + n)))
        start += n
    return out


def assign_grads(params, grads) -> None:
    """Write gradients (``None`` leaves a parameter without gradient: the optimizer skips it)."""
    for p, g in zip(params, grads):
        if g is not None:
            p.grad = g if p.grad is None else p.grad + g


@contextlib.contextmanager
def frozen_batchnorm_stats(model: nn.Module):
    """Keep BatchNorm in training mode (batch statistics) but stop it updating its running
    statistics: extra forward passes (SGM's probe) must not count as training steps, as in SAM."""
    saved = []
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training:
            saved.append((m, m.momentum, m.num_batches_tracked.clone() if m.num_batches_tracked is not None else None))
            m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum, tracked in saved:
            m.momentum = momentum
            if tracked is not None:
                m.num_batches_tracked.copy_(tracked)
