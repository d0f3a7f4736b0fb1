"""Rank-N-Contrast (RnC): contrast samples by their ranking in label space.

Source
------
Zha, Cao, Son, Yang, Katabi, "Rank-N-Contrast: Learning Continuous Representations for Regression",
NeurIPS 2023, and its official code (kaiwenzha/Rank-N-Contrast: ``RnCLoss`` in ``loss.py``; its use
in ``main_rnc.py``). For anchor i and every other sample j of a batch of M, with the feature similarity
``s_ij = -||z_i - z_j||_2`` (negative L2 distance) and label distance ``d_ij = |y_i - y_j|`` (L1):

    l(i, j) = -log( exp(s_ij / tau) / sum_{k in S(i, j)} exp(s_ik / tau) ),
    S(i, j) = {k != i : d_ik >= d_ij},

so the denominator runs over the samples at least as far from the anchor in label as j (j included),
and ``L_RnC`` is the mean of ``l(i, j)`` over the ``M (M - 1)`` ordered pairs ``i != j``, exactly as the
official code averages it. Defaults (official): temperature ``tau = 2``, ``label_diff='l1'``,
``feature_sim='l2'``; features are the encoder's output as is (no normalisation in the official code).
(Equation numbers of the paper were not checked in our copy; the definitions are the official code's.)

Views
-----
The official code takes ``[bs, 2, dim]`` features of two augmentations and concatenates them to
``[2 bs, dim]`` with the labels repeated; pass that concatenation here
(``rnc_loss(torch.cat([z1, z2]), y.repeat(2))``) to get the official value. One view (``[B, D]``) is
the same loss over B samples; each anchor then lacks the "other view" pair (label distance 0).

Where we differ from the official code
--------------------------------------
- Computation: the official code loops over the M - 1 columns and builds an ``[M, M - 1]`` mask per
  column (M^3 work). We sort each anchor's label distances once, take a cumulative ``logsumexp`` of the
  logits from the farthest sample inwards, and read each pair's denominator at the count of samples at
  least as far (ties included), found by ``searchsorted``: the same value in ``O(M^2 log M)``.
- Distances use ``torch.cdist`` without the matrix-product shortcut (exact for coincident features; the
  gradient at a zero distance is 0, as for the official ``norm``). The official row-max shift is omitted:
  the self-logit 0 is the row maximum, so that shift is 0, and ``logcumsumexp`` is stable on its own.
- Scalar labels only (``[M]`` or ``[M, 1]``); the official ``l1`` distance also sums over label dims.
- A batch of one sample has no pair: the result is a zero attached to ``z``'s graph.
"""

from __future__ import annotations

import math

import torch

from .am_supcon import _labels

RNC_TEMPERATURE = 2.0
"""The official default temperature (``--temp 2``, ``RnCLoss(temperature=2)``)."""


def _off_diagonal(a: torch.Tensor) -> torch.Tensor:
    """``[M, M] -> [M, M - 1]``: each row without its diagonal entry, by index arithmetic (a boolean mask
    would make the output size depend on a device value)."""
    m = a.shape[0]
    col = torch.arange(m - 1, device=a.device)
    row = torch.arange(m, device=a.device)
    cols = col[None, :] + (col[None, :] >= row[:, None]).to(col.dtype)
    return a.gather(1, cols)


def rnc_loss(z: torch.Tensor, y: torch.Tensor, temperature: float = RNC_TEMPERATURE) -> torch.Tensor:
    """Rank-N-Contrast loss, the mean of ``l(i, j)`` over all ordered pairs of the batch.

    Args:
        z: ``[M, D]`` features (one view, or two views concatenated with ``y`` repeated); not normalised.
        y: ``[M]`` (or ``[M, 1]``) labels.
        temperature: ``tau`` > 0.

    Returns a 0-dim tensor. No value is read back to the host.
    """
    temperature = float(temperature)
    if not (temperature > 0 and math.isfinite(temperature)):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
    if z.ndim != 2:
        raise ValueError(f"z must be [batch, dim], got shape {tuple(z.shape)}")
    m = z.shape[0]
    y = _labels(y, m).to(z.device)
    if m < 2:
        return (z * 0.0).sum()

    dist = torch.cdist(z[None], z[None], compute_mode="donot_use_mm_for_euclid_dist")[0]
    logits = _off_diagonal(-dist / temperature)                      # [M, M-1]: s_ij / tau, j != i
    label_dist = _off_diagonal((y[:, None] - y[None, :]).abs())      # [M, M-1]: d_ij

    order = torch.argsort(label_dist, dim=1, descending=True)        # farthest in label first
    cum_log_sum = torch.logcumsumexp(logits.gather(1, order), dim=1)  # [i, r]: log sum of the r+1 farthest
    ascending = label_dist.gather(1, order).flip(1).contiguous()
    n_as_far = (m - 1) - torch.searchsorted(ascending, label_dist)   # |S(i, j)| = #{k != i : d_ik >= d_ij}
    log_denominator = cum_log_sum.gather(1, n_as_far - 1)
    return (log_denominator - logits).mean()
