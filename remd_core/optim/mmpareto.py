"""MMPareto (Wei & Hu, "MMPareto: Boosting Multimodal Learning with Innocent Unimodal Assistance",
ICML 2024), faithful to the official code (GeWu-Lab/MMPareto_ICML2024, ``code/MMPareto.py``), as
the Re-M3Dr paper's main baseline (Table 1) and its ablation "AM w/ MP" (Table 2).

Per encoder k (each modality solves its own two-objective problem; heads are not modulated):

1. ``g_m``: gradient of the multimodal loss on encoder k; ``g_k``: gradient of ``L_u^k`` on it;
   the baseline is their sum (the gradient of the summed loss on encoder k).
2. ``cos`` over the flattened encoder gradient. ``cos > 0``: weights 0.5/0.5; otherwise the
   two-vector MinNorm solution clipped to [0.001, 0.999] as in their ``min_norm_solvers``.
3. ``new = 2 a_m g_m + 2 a_k g_k``; per tensor, if ``||base|| / ||new|| > 1`` scale ``new`` up to
   the baseline norm (never down); then multiply by a fixed ``gamma`` (1.5).

Where we differ: the official code runs one backward per loss plus one for the baseline (K+2
passes for K modalities) with per-tensor Python loops; the unimodal losses touch disjoint
encoders, so two passes give the same gradients here, and the per-tensor work uses fused
multi-tensor operations. A zero ``new`` norm gives ``inf * 0 = NaN`` in the official code (an
open issue reports NaN weights): we guard it by leaving such a tensor at zero. The official
weights for ``cos > 0`` are taken when ``cos > 0`` strictly; at ``cos == 0`` MinNorm is used, as there.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .functions import min_norm_weight, dot_and_norms
from .gradients import objective_gradients
from .strategy import Strategy, assign_grads, encoder_slices, shared_and_head_params


@dataclass
class MMParetoConfig:
    unimodal_weight: float = 1.0
    gamma: float = 1.5
    clip_low: float = 0.001
    clip_high: float = 0.999

    def __post_init__(self):
        if self.gamma <= 0 or self.unimodal_weight < 0:
            raise ValueError(f"need gamma > 0 and unimodal_weight >= 0; got {self.gamma}, {self.unimodal_weight}")
        if not 0 <= self.clip_low <= self.clip_high <= 1:
            raise ValueError(f"need 0 <= clip_low <= clip_high <= 1; got {self.clip_low}, {self.clip_high}")


class MMPareto(Strategy):
    name = "mmpareto"
    Config = MMParetoConfig

    def backward(self, compute, step, epoch):
        cfg = self.config
        shared, heads = shared_and_head_params(self.model)
        losses = compute()
        grads = objective_gradients(losses, shared, heads, cfg.unimodal_weight)
        logs, out = losses.logs(), []
        for name, part in encoder_slices(self.model):
            update, info = self._encoder_step(grads.shared_mm[part], grads.shared_uni[part])
            out += update
            logs.update({f"{k}_{name}": v for k, v in info.items()})
        assign_grads(shared, out)
        assign_grads(heads, grads.heads)
        return logs

    def _encoder_step(self, g_m, g_k):
        cfg = self.config
        keep = [i for i, (a, b) in enumerate(zip(g_m, g_k)) if a is not None or b is not None]
        out = [None] * len(g_m)
        if not keep:
            return out, {}
        gm = [g_m[i] if g_m[i] is not None else torch.zeros_like(g_k[i]) for i in keep]
        gk = [g_k[i] if g_k[i] is not None else torch.zeros_like(g_m[i]) for i in keep]
        with torch.no_grad():
            dot, norm_m, norm_k = dot_and_norms(gm, gk)
            cos = dot / (norm_m * norm_k).clamp_min(1e-30)
            a_min = min_norm_weight(norm_k.square() - dot, norm_m.square() + norm_k.square() - 2 * dot,
                                     (cfg.clip_low, cfg.clip_high))
            a_m = torch.where(cos > 0, torch.full_like(a_min, 0.5), a_min)
            new = torch._foreach_mul(gm, 2 * a_m)
            torch._foreach_add_(new, torch._foreach_mul(gk, 2 * (1 - a_m)))
            base = torch._foreach_add(gm, gk)
            n_new = torch.stack(torch._foreach_norm(new, 2))
            n_base = torch.stack(torch._foreach_norm(base, 2))
            ratio = torch.where(n_new > 0, n_base / n_new.clamp_min(1e-30), torch.ones_like(n_new))
            scale = torch.where(ratio > 1, ratio, torch.ones_like(ratio)) * cfg.gamma
            torch._foreach_mul_(new, list(scale.unbind()))
        for i, g in zip(keep, new):
            out[i] = g
        return out, {"cos": cos, "a_mm": a_m, "a_uni": 1 - a_m, "norm_mm": norm_m, "norm_uni": norm_k}
