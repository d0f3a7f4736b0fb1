"""SAM: Sharpness-Aware Minimization (Foret et al., "Sharpness-Aware Minimization for Efficiently
Improving Generalization", ICLR 2021, section 3, Algorithm 1), with ASAM's element-wise scaling as
an option (Kwon et al., "ASAM: Adaptive Sharpness-Aware Minimization", ICML 2021, Eq. 9 as
davda54/sam implements it), as a comparator of the Re-M3Dr paper (Table 1).

Per step, on the same objective ``joint`` minimises (``Losses.total(unimodal_weight)``: the fused
loss, ``alpha`` times the unimodal losses, plus ``Losses.extra``), so SAM works on a fusion model
and on one modality alone:

1. ``g = grad L(w)`` over every trainable parameter;
2. ``e_w = rho * g / (||g|| + eps)`` with ONE global norm over all of them (``sam_perturbation``);
   adaptive: ``e_w = rho * w^2 * g / (|| |w| * g || + eps)``;
3. ``g_sam = grad L(w + e_w)`` on the same batch;
4. the weights are restored to ``w`` (copied back, so bit-exactly) and the base optimizer steps with
   ``g_sam``.

BatchNorm: the perturbed forward (3) runs in training mode (batch statistics, as in the paper) but
with the running statistics frozen (``strategy.frozen_batchnorm_stats``: momentum 0 for that pass,
``num_batches_tracked`` restored), so they are updated once per step, by the forward at ``w``,
exactly as a plain step would. We chose momentum 0 over saving and restoring ``running_mean/var``
because it copies nothing, and it is what SGM's probe already does. davda54/sam's example instead
disables the statistics around the FIRST pass (``disable_running_stats`` / ``enable_running_stats``
in ``example/utility/bypass_bn.py``) so they come from the perturbed pass; we keep those of the
unperturbed weights, the ones the model is evaluated at, so that SAM's running statistics equal
those of the joint strategy on the same weights.

Where we differ from davda54/sam: ``eps`` (1e-12 there) is the same default but a config option;
``rho`` is validated ``>= 0`` (``rho = 0`` is plain joint training, at twice the cost);
parameters with no gradient count as zero in the norm and are not perturbed. The weights are restored
by copying the saved ``w``, as the official ``second_step`` does since its later commits
(``p.data = self.state[p]["old_p"]``; its first release subtracted ``e_w``, which is off by rounding).
Cost: 2 forward + 2 backward passes per step.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import Tensor

from .strategy import Strategy, assign_grads, frozen_batchnorm_stats


@dataclass
class SAMConfig:
    rho: float = 0.05
    adaptive: bool = False
    unimodal_weight: float = 1.0
    eps: float = 1e-12

    def __post_init__(self):
        if self.rho < 0 or self.unimodal_weight < 0 or self.eps < 0:
            raise ValueError(f"need rho >= 0, unimodal_weight >= 0 and eps >= 0; got {self.rho}, "
                             f"{self.unimodal_weight}, {self.eps}")


def sam_perturbation(params: list[Tensor], grads: list[Tensor | None], rho: float, adaptive: bool = False,
                     eps: float = 1e-12) -> list[Tensor | None]:
    """Foret et al. Eq. 2 (the dual-norm solution for p = 2): ``e = rho * g / (||g|| + eps)`` with one
    global norm; adaptive (ASAM): ``e = rho * w^2 * g / (|| |w| * g || + eps)``. ``None`` where a
    parameter has no gradient (it is not perturbed)."""
    scaled = [None if g is None else (p.detach().abs() * g if adaptive else g) for p, g in zip(params, grads)]
    present = [s for s in scaled if s is not None]
    if not present:
        return [None] * len(params)
    norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(present, 2)))
    scale = rho / (norm + eps)
    return [None if g is None else (p.detach().square() * g if adaptive else g) * scale.to(g.dtype)
            for p, g in zip(params, grads)]


@contextlib.contextmanager
def perturbed(params: list[Tensor], offsets: list[Tensor | None]):
    """Weights ``w + e`` inside the block; ``w`` (bit-exactly, copied back) after it."""
    saved = [(p, p.detach().clone()) for p, e in zip(params, offsets) if e is not None]
    with torch.no_grad():
        for p, e in zip(params, offsets):
            if e is not None:
                p.add_(e)
    try:
        yield
    finally:
        with torch.no_grad():
            for p, w in saved:
                p.copy_(w)


def trainable(model) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


class SAM(Strategy):
    name = "sam"
    Config = SAMConfig
    modulates_encoders = False

    def backward(self, compute, step, epoch):
        cfg = self.config
        params = trainable(self.model)
        losses = compute()
        grads = torch.autograd.grad(losses.total(cfg.unimodal_weight), params, allow_unused=True)
        offsets = sam_perturbation(params, list(grads), cfg.rho, cfg.adaptive, cfg.eps)
        with perturbed(params, offsets), frozen_batchnorm_stats(self.model):
            sharp = compute().total(cfg.unimodal_weight)
            grads = torch.autograd.grad(sharp, params, allow_unused=True)
        assign_grads(params, grads)
        return {**losses.logs(), "loss_perturbed": sharp.detach()}
