"""Straightforward reference implementations of MMPareto and SGM, written for clarity, not speed.

They are the peers of the fast strategies (``MMPareto``, ``SGM``) in two places: the step-cost
benchmark (``benchmarks/bench_steps.py``), where ``mmpareto_reference`` is the "structured like the
official code" row, and the equivalence tests (``tests/unit/optim/test_reference_equivalence.py``), where the
fast strategies must give the same parameters and logs (same seed, CPU, float64) as these.

Both follow the structure of the official MMPareto code (GeWu-Lab/MMPareto_ICML2024,
``code/MMPareto.py`` and ``code/min_norm_solvers.py``), read, not copied:

- one forward pass, then ONE BACKWARD PER OBJECTIVE with the graph retained (the multimodal loss,
  then each unimodal loss), the gradients cloned tensor by tensor and zeroed between passes;
- a further backward of the summed loss of Eq. 1 for the baseline gradient: K + 2 backward calls for
  K modalities. Each unimodal loss only reaches its own encoder, so the K unimodal calls together
  cost about one full backward: about three full backward passes per step;
- per-tensor Python loops, and host reads (``float(tensor)``) for cosines, dot products and MinNorm
  weights, as the official solver does (``.data.cpu()`` per tensor). Each host read waits for the
  device; that is acceptable here, it is what the fast strategies avoid.

``MMParetoReference`` ("mmpareto_reference") is MMPareto as the official code computes it, with
one generalisation shared with ``MMPareto``: the unimodal objective of modality k is
``unimodal_weight * L_u^k`` (the official code has weight 1). Where it differs from ``MMPareto``:

- MinNorm follows the official ``_min_norm_element_from2`` branch by branch: weight 0.999 when
  ``<g1,g2> >= <g1,g1>``, 0.001 when ``<g1,g2> >= <g2,g2>``, otherwise the closed form UNCLIPPED.
  ``MMPareto`` clips the closed form to [0.001, 0.999], so the two differ only when the interior
  solution falls in (0, 0.001) or (0.999, 1), i.e. when one gradient is about 30 times longer than
  the other while they conflict. The official solver sums dot products over a list that also holds
  the concatenated gradient (every product counted twice); the weight is scale-invariant, so we
  count each tensor once.
- The rescale divides by the combined norm with no guard, as the official code does: a zero
  combined tensor gives NaN, which ``check_finite`` reports (``MMPareto`` leaves it at zero).

``SGMReference`` ("sgm_reference") is section 4.2 of the Re-M3Dr paper (seed 001) written out
step by step: per-objective backward passes as above, the baseline from its own backward pass (the
fast ``SGM`` adds the per-objective gradients instead), the probe by explicit parameter copies and
per-tensor in-place perturbation, ``gamma_t`` from a Python list with ``statistics.median``, and the
Pareto combination and rescale tensor by tensor. It takes ``SGMConfig`` and follows every choice of
``SGM`` (documented in ``remd_core.optim.sgm`` and ``remd_core.optim.functions``): the probe's
gradient is the full gradient of Eq. 1 over all parameters, BatchNorm statistics are frozen during
the probe, the window holds previous scores, the rescale is ``gamma ||base_i|| / (||g_i|| + eps)``.

Neither is in ``STRATEGIES`` (the user-facing list that recipes and the command line show); they are
in ``REFERENCE_STRATEGIES`` and ``build_strategy`` accepts their names, so ``TrainConfig(strategy=
"sgm_reference")`` runs one through the trainer.
"""

from __future__ import annotations

import math
import statistics

import torch
from torch import Tensor

from .mmpareto import MMParetoConfig
from .sgm import SGMConfig
from .strategy import Strategy, encoder_slices, frozen_batchnorm_stats, shared_and_head_params

# --------------------------------------------------------------------------------------------------
# shared helpers: one backward per objective, host-side dot products
# --------------------------------------------------------------------------------------------------


def clear_grads(params) -> None:
    """Zero the gradients between per-objective passes (``optimizer.zero_grad()`` in the official code)."""
    for p in params:
        p.grad = None


def grads_of(loss: Tensor, params, retain_graph: bool = True) -> list[Tensor | None]:
    """One backward pass of ``loss``; each parameter's gradient cloned (``None`` where untouched),
    then cleared, as the official code does between its per-objective passes."""
    clear_grads(params)
    loss.backward(retain_graph=retain_graph)
    out = [p.grad.detach().clone() if p.grad is not None else None for p in params]
    clear_grads(params)
    return out


def host_dot(a_list, b_list) -> float:
    """``<a, b>`` over lists of tensors, one host read per tensor pair (``None`` counts as zeros)."""
    total = 0.0
    for a, b in zip(a_list, b_list):
        if a is not None and b is not None:
            total += float(torch.dot(a.reshape(-1).double(), b.reshape(-1).double()))
    return total


def host_norm(tensors) -> float:
    """Global L2 norm over a list of tensors, one host read per tensor."""
    return math.sqrt(sum(float(t.double().pow(2).sum()) for t in tensors if t is not None))


def add_grads(a: Tensor | None, b: Tensor | None) -> Tensor | None:
    if a is None:
        return b
    return a if b is None else a + b


def official_min_norm_2(v11: float, v12: float, v22: float) -> float:
    """Weight of g1 in ``min_c ||c g1 + (1 - c) g2||`` as the official ``_min_norm_element_from2``
    computes it: 0.999 if ``v12 >= v11``, 0.001 if ``v12 >= v22``, else the closed form unclipped."""
    if v12 >= v11:
        return 0.999
    if v12 >= v22:
        return 0.001
    return (v22 - v12) / (v11 + v22 - 2.0 * v12)


def simplex_min_norm_2(v11: float, v12: float, v22: float, clip=(0.0, 1.0)) -> float:
    """Weight of g1 minimising ``||a g1 + (1 - a) g2||`` over ``a`` in ``clip``; 0.5 (clipped) when
    ``g1 == g2`` (zero denominator), as ``functions.min_norm_2``."""
    denom = v11 + v22 - 2.0 * v12
    a = (v22 - v12) / denom if denom > 0 else 0.5
    return min(max(a, clip[0]), clip[1])


def _scalar(value: float, like: Tensor) -> Tensor:
    return torch.tensor(value, dtype=torch.float64 if like.dtype == torch.float64 else torch.float32,
                        device=like.device)


# --------------------------------------------------------------------------------------------------
# MMPareto, structured like the official code
# --------------------------------------------------------------------------------------------------


class MMParetoReference(Strategy):
    """MMPareto with the official code's structure (K + 2 backward calls, per-tensor loops, host reads)."""

    name = "mmpareto_reference"
    Config = MMParetoConfig

    def backward(self, compute, step, epoch):
        cfg = self.config
        params = list(self.model.parameters())
        losses = compute()
        # the official code reads every loss on the host for its running averages
        logs = {k: _scalar(float(v), v) for k, v in losses.logs().items()}
        encoders = {name: list(enc.parameters()) for name, enc in self.model.encoders.items()}

        # one backward per objective: the multimodal loss, then each unimodal loss
        multimodal = losses.fused if losses.extra is None else losses.fused + losses.extra
        g_both = dict(zip(map(id, params), grads_of(multimodal, params)))
        g_uni = {}
        for m, loss in losses.unimodal.items():
            g_uni[m] = dict(zip(map(id, params), grads_of(cfg.unimodal_weight * loss, params)))

        # per encoder: cosine, then equal weights or the MinNorm solution
        weights = {}
        for m, enc_params in encoders.items():
            gm = [g_both[id(p)] for p in enc_params]
            gk = [g_uni[m][id(p)] if m in g_uni else None for p in enc_params]
            flat_m = torch.cat([g.flatten() if g is not None else torch.zeros_like(p).flatten()
                                for g, p in zip(gm, enc_params)])
            flat_k = torch.cat([g.flatten() if g is not None else torch.zeros_like(p).flatten()
                                for g, p in zip(gk, enc_params)])
            cos = float(torch.nn.functional.cosine_similarity(flat_m, flat_k, dim=0))
            if cos > 0:
                a_m = 0.5
            else:
                a_m = official_min_norm_2(host_dot(gm, gm), host_dot(gm, gk), host_dot(gk, gk))
            weights[m] = (a_m, 1.0 - a_m)
            logs.update({f"cos_{m}": _scalar(cos, flat_m), f"a_mm_{m}": _scalar(a_m, flat_m),
                         f"a_uni_{m}": _scalar(1.0 - a_m, flat_m)})

        # the baseline: one more backward of the summed loss
        clear_grads(params)
        losses.total(cfg.unimodal_weight).backward()

        # per tensor: combine, scale up to the baseline norm (never down), times the fixed gamma
        for m, enc_params in encoders.items():
            a_m, a_k = weights[m]
            for p in enc_params:
                if p.grad is None:
                    continue
                three_norm = torch.norm(p.grad.detach().clone())
                g_m = g_both[id(p)] if g_both[id(p)] is not None else torch.zeros_like(p)
                g_k = g_uni[m][id(p)] if m in g_uni and g_uni[m][id(p)] is not None else torch.zeros_like(p)
                new_grad = 2 * a_m * g_m + 2 * a_k * g_k
                diff = three_norm / torch.norm(new_grad)
                if diff > 1:
                    p.grad = diff * new_grad * cfg.gamma
                else:
                    p.grad = new_grad * cfg.gamma
        return logs


# --------------------------------------------------------------------------------------------------
# SGM, written out step by step
# --------------------------------------------------------------------------------------------------


class SGMReference(Strategy):
    """SGM (Re-M3Dr section 4.2) with separate backward passes, parameter copies and loops."""

    name = "sgm_reference"
    Config = SGMConfig

    def __init__(self, config=None, check_finite: bool = True, generator: torch.Generator | None = None):
        super().__init__(config, check_finite, generator)
        self.window: list[float] = []
        self.gamma = float(self.config.gamma_base)
        self.scores = {"paper": float("nan"), "curvature": float("nan")}

    def backward(self, compute, step, epoch):
        cfg = self.config
        shared, heads = shared_and_head_params(self.model)
        params = shared + heads
        losses = compute()

        # one backward per objective, then one for the baseline gradient of Eq. 1
        multimodal = losses.fused if losses.extra is None else losses.fused + losses.extra
        g_mm = grads_of(multimodal, params)
        g_uni = [None] * len(params)
        for loss in losses.unimodal.values():
            g_uni = [add_grads(a, b) for a, b in zip(g_uni, grads_of(cfg.unimodal_weight * loss, params))]
        total = losses.total(cfg.unimodal_weight)
        g_base = grads_of(total, params, retain_graph=False)

        if step % cfg.probe_every == 0:
            self._probe(compute, params, g_base, float(total.detach()))

        n = len(shared)
        logs = {k: v.detach() for k, v in losses.logs().items()}
        if cfg.cos_scope == "global":
            parts = [("", slice(0, n))]
        else:
            parts = [(f"_{name}", part) for name, part in encoder_slices(self.model)]
        for suffix, part in parts:
            out, info = self._combine(g_mm[part], g_uni[part], g_base[part])
            for p, g in zip(shared[part], out):
                p.grad = g
            logs.update({f"{k}{suffix}": _scalar(v, shared[0]) for k, v in info.items()})
        for p, g in zip(heads, g_base[n:]):  # heads: their plain gradient of Eq. 1
            p.grad = g
        ref = shared[0]
        logs.update({"sharpness": _scalar(self.scores[cfg.sharpness], ref), "gamma": _scalar(self.gamma, ref),
                     **{f"sharpness_{k}": _scalar(v, ref) for k, v in self.scores.items()}})
        return logs

    def _probe(self, compute, params, grads, loss_now: float):
        """``s = L(theta + Delta) - L(theta - Delta)`` (and the curvature score) with
        ``Delta = eps g / (||g|| + 1e-12)``, by saving copies of the parameters, perturbing them in
        place one by one and copying the saves back; then ``gamma_t`` from the window."""
        cfg = self.config
        scale = cfg.probe_eps / (host_norm(grads) + 1e-12)
        saved = [p.detach().clone() for p in params]

        def loss_at(sign: float) -> float:
            with torch.no_grad():
                for p, g in zip(params, grads):
                    if g is not None:
                        p.add_(sign * scale * g)
                value = float(compute().total(cfg.unimodal_weight))
                for p, s in zip(params, saved):
                    p.copy_(s)
            return value

        with frozen_batchnorm_stats(self.model):
            l_plus, l_minus = loss_at(1.0), loss_at(-1.0)
        self.scores = {"paper": l_plus - l_minus, "curvature": l_plus + l_minus - 2.0 * loss_now}
        s = self.scores[cfg.sharpness]
        self.gamma = self._gamma(s)
        self.window = (self.window + [s])[-cfg.window:]

    def _gamma(self, s: float) -> float:
        """``clip(gamma_base * s / median(window), gamma_min, gamma_max)``; ``clip(gamma_base)``
        when the window is empty, its median is not a positive finite number, or ``s`` is not finite."""
        cfg = self.config
        fallback = min(max(cfg.gamma_base, cfg.gamma_min), cfg.gamma_max)
        if not self.window or any(math.isnan(v) for v in self.window):
            return fallback
        med = statistics.median(self.window)
        if not (math.isfinite(med) and med > 0 and math.isfinite(s)):
            return fallback
        return min(max(cfg.gamma_base * s / med, cfg.gamma_min), cfg.gamma_max)

    def _combine(self, g_mm, g_uni, g_base):
        """Cosine of ``g_mm`` and ``g_uni``; MinNorm weights if negative, else 0.5/0.5; per tensor
        ``g_i = 2 a_mm g_mm_i + 2 a_uni g_uni_i`` rescaled to ``gamma ||g_base_i|| / (||g_i|| + eps)``."""
        cfg = self.config
        mm = [a if a is not None or b is None else torch.zeros_like(b) for a, b in zip(g_mm, g_uni)]
        uni = [b if b is not None or a is None else torch.zeros_like(a) for a, b in zip(g_mm, g_uni)]
        v11, v12, v22 = host_dot(mm, mm), host_dot(mm, uni), host_dot(uni, uni)
        n_mm, n_uni = math.sqrt(v11), math.sqrt(v22)
        cos = v12 / max(n_mm * n_uni, 1e-12)
        a_mm = simplex_min_norm_2(v11, v12, v22) if cos < 0 else 0.5
        a_uni = 1.0 - a_mm
        out = []
        for a, b, base in zip(mm, uni, g_base):
            if a is None:  # no objective reached this tensor
                out.append(None)
                continue
            g = 2 * a_mm * a + 2 * a_uni * b
            base_norm = float(base.double().norm()) if base is not None else 0.0
            out.append(g * (self.gamma * base_norm / (float(g.double().norm()) + cfg.eps)))
        return out, {"cos": cos, "a_mm": a_mm, "a_uni": a_uni, "norm_mm": n_mm, "norm_uni": n_uni}

    def state_dict(self):
        return {**super().state_dict(), "window": list(self.window), "gamma": self.gamma, "scores": dict(self.scores)}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.window, self.gamma, self.scores = list(state["window"]), state["gamma"], dict(state["scores"])


REFERENCE_STRATEGIES = {cls.name: cls for cls in (MMParetoReference, SGMReference)}
"""Reference strategies by name: kept apart from ``STRATEGIES`` so that recipes and the command line
do not offer them; ``build_strategy`` still builds them by name."""
