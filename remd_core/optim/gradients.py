"""Per-objective gradients on one forward pass: the shared core of SGM and MMPareto."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .strategy import Losses


@dataclass
class ObjectiveGradients:
    """Gradients of the multimodal objective (``L_m`` plus ``Losses.extra``) and of the weighted
    unimodal objective (``alpha * sum_k L_u^k``) on the shared parameters, and the plain gradient of
    their sum on the head parameters. Two backward passes over one graph: the unimodal losses touch
    disjoint encoders, so ``g_uni`` restricted to encoder k is the gradient of ``alpha * L_u^k``."""

    shared_mm: list[Tensor | None]
    shared_uni: list[Tensor | None]
    heads: list[Tensor | None]

    @property
    def shared_base(self) -> list[Tensor | None]:
        """The baseline gradient of Eq. 1 on the shared parameters: ``g_mm + g_uni``, no extra pass."""
        return [_add(a, b) for a, b in zip(self.shared_mm, self.shared_uni)]


def objective_gradients(losses: Losses, shared: list, heads: list, unimodal_weight: float) -> ObjectiveGradients:
    params = shared + heads
    multimodal = losses.fused if losses.extra is None else losses.fused + losses.extra
    g_mm = torch.autograd.grad(multimodal, params, retain_graph=True, allow_unused=True)
    unimodal = unimodal_weight * losses.unimodal_sum()
    g_uni = (torch.autograd.grad(unimodal, params, allow_unused=True) if unimodal.requires_grad
             else [None] * len(params))
    n = len(shared)
    return ObjectiveGradients(list(g_mm[:n]), list(g_uni[:n]), [_add(a, b) for a, b in zip(g_mm[n:], g_uni[n:])])


def _add(a, b):
    if a is None:
        return b
    return a if b is None else a + b
