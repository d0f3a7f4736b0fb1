"""Sharpness-aware Gradient Modulation (SGM), stage 2 of Re-M3Dr (seed 001, section 4.2).

Per step:

1. one forward pass; the gradients of the multimodal loss ``g_mm`` and of the summed unimodal
   losses ``g_uni`` on the shared encoder parameters (two backward passes over that one graph);
   the baseline gradient of Eq. 1 is their sum (no third pass); heads get their plain gradients;
2. every ``probe_every`` steps, the sharpness score ``s_t`` (``sharpness_score``): the loss of
   Eq. 1 on the same batch at ``theta +/- Delta`` with ``Delta = eps * g / ||g||``, without a graph
   and without updating BatchNorm statistics; in between, the last gamma is reused;
3. ``gamma_t = clip(gamma_base * s_t / median(window), gamma_min, gamma_max)`` over a window of
   previous scores (``modulation_gamma``);
4. ``combine_gradients``: cosine of ``g_mm`` and ``g_uni``, MinNorm weights if negative else
   0.5/0.5, ``g_i = 2 a_mm g_mm_i + 2 a_uni g_uni_i``, each tensor rescaled to
   ``gamma_t * ||g_base_i|| / (||g_i|| + eps)``.

Where the paper is silent (our choices, all options):
- ``gamma_base = 1.5`` (MMPareto's fixed gamma, which SGM makes adaptive), ``gamma_min = 0.5``,
  ``gamma_max = 5`` (the range of gammas the paper's Fig. 6 studies is 0.5 to 10), ``window = 50``
  steps (of the reference run when ``TrainConfig.reference_run_steps`` maps a short run onto one),
  ``probe_eps = 0.05`` (SAM's default rho). The probe uses the full gradient of Eq. 1 over all
  trainable parameters, the paper's ``grad_theta L(theta_t)``.
- ``g_uni`` is the gradient of ``alpha * sum_k L_u^k``: with the paper's alpha = 1 (our default)
  this is its ``sum_k g^(k)``.
- ``cos_scope="global"`` takes one cosine over all shared parameters (the paper);
  ``"per_encoder"`` solves one two-objective problem per encoder (as MMPareto does).
- ``sharpness="paper"`` is ``L(theta+Delta) - L(theta-Delta)``, which to first order is
  ``2 eps ||g||`` (a gradient-norm signal); ``"curvature"`` is ``L(+) + L(-) - 2 L(theta)``.
  Both are logged at every probe (``sharpness_paper``, ``sharpness_curvature``; they share the
  two evaluations), whichever one drives gamma.

Example, in your own loop::

    strategy = SGM(SGMConfig(gamma_base=1.5)).bind(model)
    for t, batch in enumerate(batches):
        def compute():
            out = model(batch_inputs)
            return Losses(fused=mse(out["fused"], y),
                          unimodal={m: mse(p, y) for m, p in out["unimodal"].items()})
        logs = strategy.step(compute, optimizer, step=t)   # logs["gamma"], logs["sharpness"], ...
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import torch

from .functions import SCORE_MODES, combine_gradients, modulation_gamma, sharpness_score
from .gradients import objective_gradients
from .strategy import Strategy, assign_grads, encoder_slices, frozen_batchnorm_stats, shared_and_head_params


@dataclass
class SGMConfig:
    unimodal_weight: float = 1.0
    gamma_base: float = 1.5
    gamma_min: float = 0.5
    gamma_max: float = 5.0
    window: int = 50
    probe_eps: float = 0.05
    sharpness: str = "paper"
    probe_every: int = 1
    cos_scope: str = "global"
    eps: float = 1e-8

    def __post_init__(self):
        if self.gamma_base <= 0 or self.gamma_min < 0 or self.gamma_min > self.gamma_max:
            raise ValueError(f"need gamma_base > 0 and 0 <= gamma_min <= gamma_max; got {self.gamma_base}, "
                             f"{self.gamma_min}, {self.gamma_max}")
        if self.window < 1 or self.probe_every < 1:
            raise ValueError(f"window and probe_every must be >= 1; got {self.window}, {self.probe_every}")
        if self.probe_eps <= 0 or self.unimodal_weight < 0:
            raise ValueError(f"need probe_eps > 0 and unimodal_weight >= 0; got {self.probe_eps}, {self.unimodal_weight}")
        if self.sharpness not in ("paper", "curvature"):
            raise ValueError(f"sharpness must be 'paper' or 'curvature', got {self.sharpness!r}")
        if self.cos_scope not in ("global", "per_encoder"):
            raise ValueError(f"cos_scope must be 'global' or 'per_encoder', got {self.cos_scope!r}")


class SGM(Strategy):
    name = "sgm"
    Config = SGMConfig

    def __init__(self, config=None, check_finite: bool = True, generator: torch.Generator | None = None):
        super().__init__(config, check_finite, generator)
        self.window = self.config.window
        self.scores: deque = deque(maxlen=self.window)
        self.gamma = torch.tensor(self.config.gamma_base)
        self.sharpness = torch.tensor(float("nan"))
        self.probe_scores = {f"sharpness_{m}": self.sharpness for m in SCORE_MODES}

    def prepare_run(self, run):
        """The window spans ``config.window`` steps of the reference run (``RunInfo.scaled_steps``):
        on a run mapped onto the paper's length, the same fraction of the run."""
        self.window = run.scaled_steps(self.config.window)
        self.scores = deque(self.scores, maxlen=self.window)

    def backward(self, compute, step, epoch):
        cfg = self.config
        shared, heads = shared_and_head_params(self.model)
        losses = compute()
        grads = objective_gradients(losses, shared, heads, cfg.unimodal_weight)
        base = grads.shared_base
        if step % cfg.probe_every == 0:
            self._probe(compute, shared + heads, base + grads.heads, losses.total(cfg.unimodal_weight).detach())
        combined, info = self._combine(grads.shared_mm, grads.shared_uni, base)
        assign_grads(shared, combined)
        assign_grads(heads, grads.heads)
        return {**losses.logs(), "sharpness": self.sharpness, **self.probe_scores, "gamma": self.gamma.detach().clone(),
                **info}

    def _probe(self, compute, params, full_grad, loss_now):
        cfg = self.config

        def loss_at():
            return compute().total(cfg.unimodal_weight)

        with frozen_batchnorm_stats(self.model):
            scores = sharpness_score(loss_at, params, full_grad, cfg.probe_eps, loss_now=loss_now, both=True)
        s_t = scores[cfg.sharpness]
        self.probe_scores = {f"sharpness_{k}": v.detach() for k, v in scores.items()}
        window = torch.stack(list(self.scores)) if self.scores else []
        self.gamma = modulation_gamma(s_t, window, cfg.gamma_base, cfg.gamma_min, cfg.gamma_max)
        self.sharpness = s_t.detach()
        self.scores.append(self.sharpness)

    def _combine(self, g_mm, g_uni, g_base):
        cfg = self.config
        if cfg.cos_scope == "global":
            return combine_gradients(g_mm, g_uni, g_base, self.gamma, eps=cfg.eps)
        out, logs = [], {}
        for name, part in encoder_slices(self.model):
            grads, info = combine_gradients(g_mm[part], g_uni[part], g_base[part], self.gamma, eps=cfg.eps)
            out += grads
            logs.update({f"{k}_{name}": v for k, v in info.items()})
        return out, logs

    def state_dict(self):
        return {**super().state_dict(), "scores": [s.cpu() for s in self.scores], "gamma": self.gamma.cpu(),
                "sharpness": self.sharpness.cpu(), "probe_scores": {k: v.cpu() for k, v in self.probe_scores.items()}}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.scores = deque(state["scores"], maxlen=self.window)
        self.gamma, self.sharpness = state["gamma"], state["sharpness"]
        self.probe_scores = dict(state.get("probe_scores", self.probe_scores))
