"""Stage 1 of Re-M3Dr: the adaptive margin, the adaptive-margin supervised contrastive loss (AM-SupCon)
and the stage-1 total with a regression loss.

Sources
-------
- Re-M3Dr (seed 001), section 4.1 "Adaptive Margin Supervised Contrastive Pretraining":
  positives ``P(i) = {j : |y_i - y_j| < m(t)}`` and negatives ``N(i) = {j : |y_i - y_j| >= m(t)}``
  (the two set equations of section 4.1), the margin schedule ``m(t) = m0`` for ``t < t_n`` and
  ``m0 * exp(-beta * (t - t_n))`` afterwards (``margin_schedule``), the "standard supervised
  contrastive loss" ``-log( exp(z_i.z_p / tau) / sum_a exp(z_i.z_a / tau) )`` (``am_supcon_loss``)
  and the stage-1 total ``L = L_regression + lambda * L_SupCon`` (``stage1_loss``). Reported
  defaults: ``m0 = 0.4``, ``beta = 0.0005`` (section 5.6, Fig. 6; we read ``t`` as the iteration
  count); ``t_n`` is not reported. The equations of section 4.1 are unnumbered in our copy of the
  paper, so they are cited by what they define.
- Supervised contrastive loss: Khosla et al., "Supervised Contrastive Learning", NeurIPS 2020, the
  L_out form (mean over positives outside the log), and its official code
  (HobbitLong/SupContrast, ``losses.py``): features L2-normalised, logits shifted by a detached row
  maximum, self-contrast excluded from the denominator, loss scaled by ``tau / base_tau``,
  defaults ``tau = base_tau = 0.07``.

Label units of the margin (our choice; the paper does not say)
--------------------------------------------------------------
The functions here are unit-agnostic: the margin is compared with whatever labels are passed.
Our trainer passes STANDARDISED labels, ``(MD - mean) / SD`` with the training split's mean and SD,
so ``m0 = 0.4`` means 0.4 SD of training MD. On STAGE2-like data one SD of MD is a few dB; a raw
margin of 0.4 dB would leave almost no positive pairs in a batch of 8 (the paper's batch size), and
the loss would be zero most of the time.

Where we differ from the official SupContrast code
--------------------------------------------------
- Positives come from label distance (``positive_mask``), not class equality, and never include
  the anchor itself.
- One view per sample: ``z`` is ``[B, D]``. For several augmented views, concatenate the views and
  repeat the labels (``torch.cat(views)``, ``y.repeat(n_views)``); this is SupContrast's
  ``contrast_mode='all'``, except that two views of one sample are positives only when
  ``margin > 0`` (their label distance is 0 and the test is strict).
- Anchors without a positive are EXCLUDED from the mean. The original code divides by a zero
  positive count and returns NaN (a reported bug); the later fix divides by 1 instead, so such
  anchors count as zeros in the mean and the loss shrinks as the margin decays. A batch where no
  anchor has a positive returns a zero that is still attached to the graph.
- Features are rescaled by their largest absolute entry before the L2 normalisation, so very large
  or very small features neither overflow nor underflow the norm (the result is unchanged).
- The stabilising shift is the maximum over the OTHER samples (SupContrast's row maximum includes
  the self-similarity). The shift cancels exactly; ours guarantees a denominator of at least 1 after
  the shift, so no ``+ eps`` inside the log is needed even at a tiny temperature.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .regression import RegressionLoss, regression_loss

PAPER_RUN_STEPS = 6300
"""Iterations of a run at the paper's scale, the length ``reference_step`` maps shorter runs onto:
500 training eyes at batch 8 is 63 iterations an epoch (the last batch kept); the paper does not
state its epochs, so we take the gpu profile's 100. The margin then ends at
``0.4 * exp(-0.0005 * (6300 - 100)) = 0.018``."""


# --------------------------------------------------------------------------------------------------
# Adaptive margin
# --------------------------------------------------------------------------------------------------

def margin_schedule(step, m0: float, beta: float, t_n: float):
    """The adaptive margin of section 4.1:

        m(t) = m0                            if t <  t_n
        m(t) = m0 * exp(-beta * (t - t_n))   if t >= t_n

    ``step`` is the iteration count ``t`` (int or float, or a numpy array for plotting a whole
    schedule). Returns a float for a scalar step, an array of the same shape otherwise. The paper's
    defaults are ``m0 = 0.4`` and ``beta = 0.0005`` (section 5.6); it does not report ``t_n`` nor
    say whether ``t`` counts iterations or epochs (we use iterations).
    """
    for name, value in (("m0", m0), ("beta", beta), ("t_n", t_n)):
        if not value >= 0:  # also rejects NaN
            raise ValueError(f"{name} must be >= 0, got {value}")
    t = np.asarray(step, dtype=np.float64)
    # exp of the clipped exponent: no overflow warning from the unused branch when step << t_n
    out = np.where(t < t_n, m0, m0 * np.exp(-beta * np.maximum(t - t_n, 0.0)))
    return float(out) if out.ndim == 0 else out


def reference_step(step, total_steps: int, reference_steps: int | None):
    """The iteration ``t`` of a run of ``reference_steps`` at the same fraction of the run as ``step``
    of this run of ``total_steps``: ``t = step * reference_steps / total_steps`` (``step`` itself
    when ``reference_steps`` is None).

    Why: the paper's ``beta = 0.0005`` is per iteration (section 5.6) in a run of thousands of
    iterations (``PAPER_RUN_STEPS``), by whose end the margin has decayed to about 0.02 (5 % of
    ``m0``). A short run read per iteration never gets there (the cpu profile's 208 steps end at
    0.379, 95 % of ``m0``), so "adaptive" and "fixed" margin would be nearly the same run. Mapping
    the run onto the reference length keeps the schedule's shape: warm-up and decay happen at the
    same fractions of the run as at the paper's scale. This rescaling is ours, not the paper's.
    """
    if reference_steps is None:
        return step
    if not total_steps >= 1 or not reference_steps >= 1:
        raise ValueError(f"total_steps and reference_steps must be >= 1, got {total_steps} and {reference_steps}")
    return np.asarray(step, dtype=np.float64) * (reference_steps / total_steps)


def _check_margin(margin) -> float:
    margin = float(margin)
    if not margin >= 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    return margin


def _labels(y: torch.Tensor, n: int | None = None) -> torch.Tensor:
    """Labels as a 1-D floating tensor ([B] or [B, 1] accepted), detached."""
    y = torch.as_tensor(y).detach().reshape(-1)
    if not torch.is_floating_point(y):
        y = y.to(torch.get_default_dtype())
    if n is not None and y.numel() != n:
        raise ValueError(f"got {y.numel()} labels for {n} feature vectors")
    return y


def positive_mask(y: torch.Tensor, margin: float) -> torch.Tensor:
    """``[B, B]`` bool mask of P(i) (section 4.1): ``mask[i, j] = |y_i - y_j| < margin`` for j != i.

    Strict inequality as in the paper (a pair exactly ``margin`` apart is a negative), so
    ``margin = 0`` gives no positives. The diagonal is False: the anchor is never its own positive.
    The comparison is made in the labels' floating dtype.
    """
    margin = _check_margin(margin)
    y = _labels(y)
    mask = (y[:, None] - y[None, :]).abs() < margin
    mask.fill_diagonal_(False)
    return mask


# --------------------------------------------------------------------------------------------------
# Adaptive-margin supervised contrastive loss
# --------------------------------------------------------------------------------------------------

def _l2_normalise(z: torch.Tensor) -> torch.Tensor:
    """Row-wise L2 normalisation that neither overflows nor underflows: rows are first divided by
    their largest absolute entry (the normalised result is the same function of ``z``, so the
    gradient is unchanged). An all-zero row stays zero."""
    scale = z.detach().abs().amax(dim=1, keepdim=True)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return torch.nn.functional.normalize(z / scale, dim=1)


def am_supcon_loss(z: torch.Tensor, y: torch.Tensor, margin: float, temperature: float = 0.07,
                   base_temperature: float = 0.07) -> torch.Tensor:
    """Adaptive-margin SupCon loss (section 4.1; SupCon L_out of Khosla et al. 2020).

    For anchor i with positives ``P(i) = {p != i : |y_i - y_p| < margin}`` and ``s_ia = z_i.z_a / tau``
    on L2-normalised features:

        L_i = -(tau / base_tau) * mean_{p in P(i)} log( exp(s_ip) / sum_{a != i} exp(s_ia) )

    averaged over the anchors that have at least one positive. When no anchor has one (margin 0, a
    batch of one, all labels far apart) the result is a zero still attached to ``z``'s graph, so
    ``backward()`` works and gives zero gradients.

    Args:
        z: ``[B, D]`` projected features (normalised here; any scale).
        y: ``[B]`` (or ``[B, 1]``) labels in the units of ``margin``.
        margin: the current margin ``m(t)`` (see ``margin_schedule``); >= 0.
        temperature, base_temperature: ``tau`` and ``base_tau``; > 0.
    """
    margin = _check_margin(margin)
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if not base_temperature > 0:
        raise ValueError(f"base_temperature must be > 0, got {base_temperature}")
    if z.ndim != 2:
        raise ValueError(f"z must be [batch, dim], got shape {tuple(z.shape)}")
    n = z.shape[0]
    pos = positive_mask(_labels(y, n).to(z.device), margin)
    has_pos = pos.any(dim=1)
    if not bool(has_pos.any()):
        return (z * 0.0).sum()  # zero, connected to the graph; elementwise so huge z cannot give NaN

    feats = _l2_normalise(z)
    logits = feats @ feats.T / temperature
    self_mask = torch.eye(n, dtype=torch.bool, device=z.device)
    others = logits.masked_fill(self_mask, float("-inf"))
    shift = others.amax(dim=1, keepdim=True).detach()  # max over a != i: exp-sum below is >= 1
    log_denominator = torch.log(torch.exp(others - shift).sum(dim=1, keepdim=True))
    log_prob = logits - shift - log_denominator  # finite everywhere, diagonal included (B >= 2 here)

    pos_f = pos.to(log_prob.dtype)
    mean_log_prob_pos = (pos_f * log_prob).sum(dim=1) / pos_f.sum(dim=1).clamp(min=1.0)
    loss_per_anchor = -(temperature / base_temperature) * mean_log_prob_pos
    return loss_per_anchor[has_pos].mean()


# --------------------------------------------------------------------------------------------------
# Stage-1 objective
# --------------------------------------------------------------------------------------------------

def stage1_loss(pred: torch.Tensor, target: torch.Tensor, z: torch.Tensor | Sequence[torch.Tensor],
                     y_for_margin: torch.Tensor, margin: float, lam: float,
                     regression: str | RegressionLoss = "mse", temperature: float = 0.07, *,
                     base_temperature: float = 0.07) -> dict:
    """Stage-1 loss of section 4.1, ``L = L_regression + lam * L_SupCon``; the trainer's stage 1
    (``contrastive=True``) calls this.

    ``regression`` is a name for ``regression_loss`` or a ready callable (e.g. a ``smape_r2`` bound
    to the training label mean and SD). ``z``: the ``[B, D]`` projections, or several (one per
    modality of a fused model), whose SupCon losses are summed into ``L_SupCon`` (the paper trains
    stage 1 per modality, one ``z``). ``y_for_margin`` are the labels in the margin's units
    (standardised, in our trainer). Returns tensors: ``"loss"``, its terms ``"regression"``,
    ``"supcon"`` and ``"contrastive"`` (``lam * supcon``, the term a strategy adds to the regression
    loss as ``Losses.extra``), and ``"n_anchors_with_positive"`` (0-dim int64: how many anchors the
    SupCon term averages over; a tensor, so that a training step never waits to read it).
    """
    if not lam >= 0:
        raise ValueError(f"lam must be >= 0, got {lam}")
    reg_fn = regression_loss(regression) if isinstance(regression, str) else regression
    reg = reg_fn(pred, target)
    views = [z] if isinstance(z, torch.Tensor) else list(z)
    if not views:
        raise ValueError("stage1_loss needs at least one projection z")
    supcon = sum(am_supcon_loss(v, y_for_margin, margin, temperature=temperature, base_temperature=base_temperature)
                 for v in views)
    contrastive = lam * supcon
    n_anchors = positive_mask(_labels(y_for_margin, views[0].shape[0]), margin).any(dim=1).sum()
    return {"loss": reg + contrastive, "regression": reg, "supcon": supcon, "contrastive": contrastive,
            "n_anchors_with_positive": n_anchors}
