"""SimCLR's NT-Xent loss (normalised temperature-scaled cross entropy) over two augmented views.

Source
------
Chen, Kornblith, Norouzi, Hinton, "A Simple Framework for Contrastive Learning of Visual
Representations", ICML 2020: Eq. (1) (the number as the paper is usually cited; we checked the formula
against a summary of the paper, not the PDF), the loss of one positive pair,

    l(i, j) = -log( exp(sim(z_i, z_j) / tau) / sum_{k != i} exp(sim(z_i, z_k) / tau) ),

with ``sim`` the cosine similarity and the sum over the 2N augmented samples of a batch of N
examples (two views each); the batch loss is the mean of ``l`` over the 2N ordered positive pairs
``(i, j)`` and ``(j, i)`` (the paper's Algorithm 1). For each anchor the other view of the same
example is the positive and the other 2N - 2 samples are the negatives.

Official code read: google-research/simclr, ``objective.py`` (``add_contrastive_loss``), ``run.py``
(flags) and ``README.md``.

Temperature
-----------
The default here is ``tau = 0.5``: the official README's CIFAR-10 pretraining command (``--temperature=0.5``,
batch 512, small images). The official ``run.py`` flag defaults to 0.1 (the ImageNet command, batch 4096)
and ``add_contrastive_loss`` itself to 1.0. Our batches and images are small, closer to the CIFAR-10 setting.

Where we differ from the official code
--------------------------------------
- Scale: the official loss is ``loss_a + loss_b``, two cross entropies each averaged over the N anchors
  of one view, i.e. TWICE the paper's mean over the 2N anchors. We return the paper's mean; multiply by 2
  to match the official value (with a learning rate tuned for it).
- Self-similarity is removed by setting the logit to ``-inf`` (the official code subtracts 1e9); the
  cross entropy is the same.
- Features are rescaled by their largest absolute entry before the L2 normalisation
  (``remd_core.losses._l2_normalise``), which leaves the cosine similarity unchanged and avoids
  overflow or underflow of the norm. An all-zero feature vector stays zero (cosine 0 to everything).
- No cross-replica gathering (single process).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .am_supcon import _l2_normalise

SIMCLR_TEMPERATURE = 0.5
"""Default temperature: the official README's CIFAR-10 command (see the module docstring)."""


def _check_temperature(temperature: float) -> float:
    temperature = float(temperature)
    if not (temperature > 0 and math.isfinite(temperature)):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
    return temperature


def nt_xent_loss(z1: torch.Tensor, z2: torch.Tensor, temperature: float = SIMCLR_TEMPERATURE) -> torch.Tensor:
    """NT-Xent (SimCLR Eq. 1) averaged over the 2N anchors of two views.

    Args:
        z1, z2: ``[N, D]`` projections of two augmentations of the same N examples (row ``k`` of ``z1``
            and row ``k`` of ``z2`` come from the same example); any scale, normalised here.
        temperature: ``tau`` > 0.

    Returns the 0-dim loss ``1/(2N) sum_k [l(k, N + k) + l(N + k, k)]`` over the concatenation
    ``[z1; z2]``. With N = 1 each anchor's only other sample is its positive and the loss is 0.
    """
    temperature = _check_temperature(temperature)
    if z1.ndim != 2 or z1.shape != z2.shape:
        raise ValueError(f"z1 and z2 must both be [N, D] with the same shape, got {tuple(z1.shape)} "
                         f"and {tuple(z2.shape)}")
    n = z1.shape[0]
    if n == 0:
        raise ValueError("nt_xent_loss needs at least one example per view")
    feats = _l2_normalise(torch.cat([z1, z2], dim=0))
    logits = feats @ feats.T / temperature
    self_mask = torch.eye(2 * n, dtype=torch.bool, device=feats.device)
    logits = logits.masked_fill(self_mask, float("-inf"))
    idx = torch.arange(n, device=feats.device)
    positive = torch.cat([idx + n, idx])  # anchor k (view 1) <-> N + k (view 2)
    return F.cross_entropy(logits, positive)
