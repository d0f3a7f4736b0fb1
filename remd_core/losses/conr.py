"""ConR, the contrastive regulariser for deep imbalanced regression.

Source
------
Keramati, Meng, Evans, "ConR: Contrastive Regularizer for Deep Imbalanced Regression", ICLR 2024, and
its official code (BorealisAI/ConR: the ``ConR`` function of ``agedb-dir/loss.py`` and
``imdb-wiki-dir/loss.py``, the same computation as the README snippet, and the ``train`` loops of
both ``train.py``). The paper's total objective is ``L_sum = alpha * L_R + beta * L_ConR``; ``conr_loss``
returns ``L_ConR`` alone, unweighted. (Equation numbers of the paper were not checked in our copy; the
definitions below are the official code's.)

For anchor i of a batch of M projections (L2-normalised, ``s_ij = z_i.z_j / tau``), labels ``y`` and
detached predictions ``p``:

- positives ``P(i) = {j != i : |y_i - y_j| <= w}``;
- negatives ``N(i) = {j : |y_i - y_j| > w and |p_i - p_j| <= w}``: only the pairs whose labels are far
  apart but whose predictions are close (the model confuses them);
- a negative is pushed with weight ``S_ij = omega_i * exp(e * |y_i - y_j|)`` (``omega_i`` the anchor's
  sample weight, 1 unless LDS-style weights are passed);

      L_i = -1/|P(i)| sum_{j in P(i)} log( exp(s_ij) / (sum_{p in P(i)} exp(s_ip) + sum_{q in N(i)} S_iq exp(s_iq)) )

  and ``L_ConR = 1/M sum_i omega_i L_i``, where an anchor with no negative contributes 0 (the official
  "no_neg_flag") but still counts in M.

Defaults (official code): ``w = 1``, ``e = 0.01``, ``tau = 0.07`` (the agedb ``ConR`` overrides its
``t`` argument with 0.07; the imdb-wiki command-line default is 0.07), and the regulariser's weight
``beta = 4`` (``CONR_BETA``; apply it where ConR is added to the regression loss). ``w`` and ``e`` act
on labels and predictions in the units passed: the official runs use age in years (``w`` = 1 year);
our trainer passes standardised labels, so ``w = 1`` there means one training SD of MD (a wide window;
choose ``w`` for the units at hand).

Two views, as the official code does it
---------------------------------------
The official training step forwards two augmentations of the batch, concatenates their features
(``[2B, D]``), repeats the labels and weights, and passes the two views' own predictions, detached.
Do the same here: ``conr_loss(torch.cat([z1, z2]), y.repeat(2), torch.cat([p1, p2]).detach())``. Each
anchor then always has a positive, its other view. With ONE view (``[B, D]``, its labels and
predictions), the positives are only the other samples within ``w``; an anchor without one contributes
0 (it has nothing to pull towards).

Where we differ from the official code
--------------------------------------
- Denominator: the official code exponentiates the MASKED logit matrix, ``exp(prod * pos_mask).sum(1)``,
  so every non-positive entry of the row (the anchor itself and all the other samples, negatives
  included) adds ``exp(0) = 1``: its denominator is ours plus ``M - |P(i)|``. We use the sum over the
  positives and the weighted negatives only, as the loss is defined above.
- An anchor with no positive contributes 0; the official code divides by ``|P(i)| = 0`` and returns NaN
  (it cannot happen there with two views, since the other view is always a positive).
- Stability: the denominator is a ``logsumexp`` in log space (weights enter as ``log omega_i + e|dy|``);
  the official code exponentiates raw logits (``exp(1 / 0.07)`` is about 1.6e6: fine in float32, but
  a smaller temperature overflows).
- Features are rescaled by their largest absolute entry before the L2 normalisation (unchanged result;
  see ``remd_core.losses._l2_normalise``).
- The imdb-wiki ``train.py`` adds ``beta * L_ConR`` to the loss twice (effective weight 8); the agedb
  one adds it once. ``CONR_BETA`` is the argument's value, 4.
"""

from __future__ import annotations

import math

import torch

from .am_supcon import _l2_normalise, _labels

CONR_BETA = 4.0
"""The official weight ``beta`` of ConR in ``L = L_regression + beta * L_ConR`` (``--beta 4``)."""
CONR_TEMPERATURE = 0.07
"""The temperature the official code uses (see the module docstring)."""


def _check(name: str, value: float, *, positive: bool) -> float:
    value = float(value)
    ok = value > 0 if positive else value >= 0
    if not (ok and math.isfinite(value)):
        raise ValueError(f"{name} must be a finite number {'>' if positive else '>='} 0, got {value}")
    return value


def conr_masks(y: torch.Tensor, pred: torch.Tensor, w: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``[M, M]`` bool masks ``(positive, negative)`` of ConR for labels ``y`` and predictions ``pred``.

    ``positive[i, j] = |y_i - y_j| <= w`` for ``j != i``; ``negative[i, j] = |y_i - y_j| > w`` and
    ``|pred_i - pred_j| <= w`` (the diagonal is never a negative, as ``|dy| = 0``).
    """
    w = _check("w", w, positive=False)
    y = _labels(y)
    pred = _labels(pred, y.numel()).to(y.device)
    dy = (y[:, None] - y[None, :]).abs()
    dp = (pred[:, None] - pred[None, :]).abs()
    positive = dy <= w
    positive.fill_diagonal_(False)
    negative = (dy > w) & (dp <= w)
    return positive, negative


def conr_loss(z: torch.Tensor, y: torch.Tensor, pred: torch.Tensor, w: float = 1.0, e: float = 0.01,
              temperature: float = CONR_TEMPERATURE, weights: torch.Tensor | None = None) -> torch.Tensor:
    """The ConR regulariser ``L_ConR`` (unweighted; add ``CONR_BETA * conr_loss(...)`` to the regression loss).

    Args:
        z: ``[M, D]`` features of the batch (one view, or two views concatenated; any scale).
        y: ``[M]`` (or ``[M, 1]``) labels; for two views, repeated.
        pred: ``[M]`` (or ``[M, 1]``) predictions for the same M samples; used only to choose the
            negatives (detached here, as the official code detaches them).
        w: label/prediction window (>= 0), in the units of ``y``.
        e: pushing coefficient (>= 0) of the negative weights ``exp(e * |dy|)``.
        temperature: ``tau`` > 0.
        weights: optional ``[M]`` non-negative per-sample weights ``omega`` (e.g. LDS weights, as the
            official code passes its dataset weights); they scale each anchor's negatives and its loss.

    Returns a 0-dim tensor. Anchors with no positive or no negative contribute 0 and the mean is over all
    M anchors; when no anchor has both, the result is a zero still attached to ``z``'s graph. No value is
    read back to the host.
    """
    w = _check("w", w, positive=False)
    e = _check("e", e, positive=False)
    temperature = _check("temperature", temperature, positive=True)
    if z.ndim != 2:
        raise ValueError(f"z must be [batch, dim], got shape {tuple(z.shape)}")
    m = z.shape[0]
    if m == 0:
        raise ValueError("conr_loss needs a non-empty batch")
    y = _labels(y, m).to(z.device)  # masks are compared in the labels' own floating dtype
    positive, negative = conr_masks(y, _labels(pred, m).to(z.device), w)
    if weights is None:
        log_omega = torch.zeros(m, dtype=z.dtype, device=z.device)
        omega = torch.ones(m, dtype=z.dtype, device=z.device)
    else:
        omega = _labels(weights, m).to(device=z.device, dtype=z.dtype)
        log_omega = torch.log(omega)  # omega = 0 gives -inf: that anchor's negatives drop out

    feats = _l2_normalise(z)
    logits = feats @ feats.T / temperature
    dy = (y[:, None] - y[None, :]).abs().to(z.dtype)
    neg_logits = logits + log_omega[:, None] + e * dy
    terms = torch.where(positive, logits, torch.where(negative, neg_logits, torch.full_like(logits, float("-inf"))))
    # a row with no term at all would make logsumexp -inf and its gradient NaN; give it a finite dummy
    # (its own logit): such an anchor has no positive and is masked out below
    empty_row = ~(positive | negative).any(dim=1)
    eye = torch.eye(m, dtype=torch.bool, device=z.device)
    terms = torch.where(eye & empty_row[:, None], logits, terms)
    log_denominator = torch.logsumexp(terms, dim=1)

    pos_f = positive.to(z.dtype)
    n_pos = pos_f.sum(dim=1)
    mean_pos_logit = (pos_f * logits).sum(dim=1) / n_pos.clamp(min=1.0)
    loss_i = log_denominator - mean_pos_logit
    valid = (n_pos > 0) & negative.any(dim=1)
    loss_i = torch.where(valid, loss_i, torch.zeros_like(loss_i))
    return (omega * loss_i).mean()
