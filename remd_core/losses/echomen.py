"""EchoMEN: label-distance weighted SupCon pretraining (stage 1) and a multi-expert head (stage 2).

Source
------
Lai, Zhao, Zhao, Chang, Yuan, Liu, Zhang, Meng, "EchoMEN: Combating Data Imbalance in Ejection
Fraction Regression via Multi-Expert Network", MICCAI 2024 (LNCS, doi 10.1007/978-3-031-72083-3_58).
Read: the anonymised submission PDF committed to the official repository (laisong-22004009/EchoMEN,
commit 39d196c), and that repository's ``train_stage1.py``, ``train_stage2.py``, ``datasets.py`` and
``test.py``. The repository does NOT contain ``model.py``, which holds the contrastive loss class
(``LDW_SupConLoss``), the projector and the encoder: the loss below is written from the paper alone.

What the paper defines, and what here implements it
---------------------------------------------------
- Section 2.1, Eq. (1), the Label-Distance Weighted SupCon loss (``ldw_supcon_loss``): positives
  ``P(i) = {j != i : y_j = y_i}``, negatives ``Q(i) = {j : y_j != y_i}``, and

      L = -sum_i 1/|P(i)| sum_{p in P(i)} log( exp(z_i.z_p / tau) / sum_{j != i} beta_ij exp(z_i.z_j / tau) )

  on normalised projections ``z = h(f(x))`` (``h`` a two-layer MLP with ReLU, section 3.2).
- Eq. (2), the negative weights (``ldw_pair_weights``):
  ``beta_ij = |Q(i)| exp(d_ij) / sum_{k in Q(i)} exp(d_ik)``, ``d_ij`` "the L1 or L2 label difference".
  The weights of an anchor's negatives average to 1; farther labels are pushed harder.
- Section 2.1, last paragraph: stage 1 is ``L_stage1 = L_regression + lambda * L_LDW-SupCon`` with an
  extra regression head ``e`` on ``f(x)`` (the trainer's ``contrastive_loss="echomen"``,
  ``losses.contrastive``); lambda = 0.5, MSE (3.2).
- Section 2.2: stage 2 freezes the encoder ``f`` and trains ``M`` linear experts on ``f(x)``
  (``MultiExpertHead``), expert ``m`` with the re-weighted loss of Eq. (3),
  ``L_m = sum_i w_i^m L(yhat_i^m, y_i)``, whose weights are Eq. (4), ``w_i^m = f_{b(i)}^(-p_m)`` with
  ``p_m = m / (M - 1)``, ``m = 0..M-1``, ``f_b`` the training count of the label's bin among
  equally spaced bins (``fit_expert_weights``): p = 0 weights every sample equally, p = 1 is
  inverse-frequency weighting. An aggregator ``g`` (linear layers then a softmax, 3.2) maps the same
  features to weights ``alpha_m``; the prediction is ``yhat = sum_m alpha_m yhat^m`` (the paper prints
  ``alpha_m = h(f(x))``, a typo for ``g``), and ``g`` is trained with the plain regression loss of
  ``yhat`` (``multi_expert_loss``). Section 3.4's "w/o aggregator" ablation averages the experts
  (``aggregator="mean"``).

What the official code adds (read in its training scripts)
----------------------------------------------------------
- Stage 2 (``train_stage2.py``): three experts, "none", "inverse" and "sqrt_inv" (p = 0, 1, 1/2:
  Eq. (4) with M = 3); each a ``Linear(features, 1)`` with weight ~ N(0, 0.01) and bias = the mean
  EF (55.6); the selector is ``Linear(features, 128) -> ReLU -> Linear(128, 3) -> Softmax`` on the
  frozen encoder's features; expert losses are MSE, the two re-weighted ones as
  ``mean(w * (yhat - y)^2)``, summed; the selector's loss is the MSE of the weighted sum. Two SGD
  optimisers (lr 1e-4, x0.1 every 5 epochs, 20 epochs): the experts step on their own losses only,
  the selector on the ensemble loss only.
- Weights (``datasets.Echo_One_Reweight``): 100 bins of width 1 over EF 0..100; counts clipped to
  [80, 1000]; the count at a label is LINEARLY INTERPOLATED between bin centres (``np.interp``), not
  read from the label's bin; each expert's weights are divided by their mean over the training set.
- Stage 1 (``train_stage1.py``): two augmented clips per video, features passed as
  ``[B, 2 views, D]``; labels for the loss are ``EF_CLS``, the training-set mid-rank of the label's
  0.05-wide EF bucket (so "equal labels" means the same bucket, in practice the other view of the
  same video), used also as the distance with ``normalize_factor = 2/7465`` and
  ``scale_factor = 150`` (how these enter is in the missing ``model.py``); temperature = base
  temperature = 1; the contrastive weight is 0.75 (the paper says 0.5).

Where we differ, and why
------------------------
1. Positives: ``|y_i - y_j| <= positive_radius`` (default 0, the paper's equality). MD is continuous,
   so with ONE view per sample the default finds (almost) no positive pairs and the loss is (almost)
   always zero: pass several views (``z`` as ``[B, V, D]``, as the official code does with two clips;
   views of one sample are positives since their label difference is 0), or a radius in label units.
2. Positives in the denominator of Eq. (1) get weight 1 (Eq. (2) defines ``beta`` for negatives
   only). With ``distance_scale = 0`` every ``beta`` is 1 and the loss is SupCon (the paper's
   "w/o L_LDW-SupCon" ablation); with equal distances too.
3. Reduction: Eq. (1) sums over anchors; we take the MEAN over anchors that have a positive and scale
   by ``tau / base_tau`` (SupContrast's reduction, so lambda does not grow with the batch); anchors
   without a positive are left out (SupContrast would divide by zero). No anchor with a positive
   gives a zero attached to the graph.
4. Distance: ``d_ij = distance_scale * |y_i - y_j|`` ("l1") or ``distance_scale * (y_i - y_j)^2``
   ("l2") in the units of the labels passed (the trainer's standardised MD); the official rank-based
   distance can be had by passing training-set ranks (the empirical CDF) as the labels, up to the
   unknown scale. Computed in log space (``log beta`` by a shifted log-sum-exp), so large distances
   neither overflow nor make ``beta`` underflow to an infinite loss.
5. Defaults: temperature = base temperature = 1 (official call; the paper gives none); lambda = 0.5
   (paper, not the code's 0.75); M = 3 (official code; the paper does not state M); experts ordered
   by increasing ``p_m`` (the code's order is p = 0, 1, 1/2).
6. Weights: the paper's bin lookup by default, the code's interpolation with ``interpolate=True``;
   counts clipped to ``[min_count, max_count]`` with defaults 1 and none (the code's 80 and 1000 were
   about 1 % and 13 % of its 7,460 training videos, far too high for a few hundred eyes; 1 only keeps
   an empty bin from dividing by zero); bin width is a parameter in label units (default 1: 1 dB bins
   when dB labels are passed, as the paper's width-1 EF bins); each expert's weights are normalised
   to mean 1 over the training labels (code). Eq. (3) sums over samples; we take the batch mean of
   ``w * L`` (code), so expert losses do not grow with the batch.
7. Training the aggregator: one loss, ``sum_m L_m + aggregator_weight * L(sum_m alpha_m yhat^m
   [experts detached], y)``. Its gradient is the code's two-optimiser scheme's (experts get only their
   own losses, the aggregator only the ensemble's), so one optimiser and one backward suffice.
8. Initialisation: expert weights ~ N(0, ``weight_init_std`` = 0.01) as in the code, bias
   ``bias_init`` (the code's 55.6 is the mean EF; 0 for standardised labels).
9. Freezing the encoder in stage 2 and discarding ``h`` and ``e`` is the trainer's job, not this
   module's: the head trains whatever features it is given.

Everything here is pure tensor arithmetic with no host synchronisation in the training-step
functions (``ldw_supcon_loss``, ``MultiExpertHead.forward``,
``ExpertWeights.__call__``, ``multi_expert_loss``), provided the labels are on the device of the
features and the ``ExpertWeights`` table was moved there once (``ExpertWeights.to``);
``fit_expert_weights`` runs once, on the host.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, replace

import numpy as np
import torch

from ..data.labels import LabelBins
from .am_supcon import _l2_normalise, _labels

DISTANCES = ("l1", "l2")
EXPERT_LOSSES = ("mse", "l1")
AGGREGATORS = ("learned", "mean")


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


# --------------------------------------------------------------------------------------------------
# Stage 1: Label-Distance Weighted SupCon (section 2.1, Eqs. 1-2)
# --------------------------------------------------------------------------------------------------

def _check_ldw(temperature, base_temperature, positive_radius, distance, distance_scale) -> None:
    if not (temperature > 0 and math.isfinite(temperature)):
        raise ValueError(f"temperature must be finite and > 0, got {temperature}")
    if not (base_temperature > 0 and math.isfinite(base_temperature)):
        raise ValueError(f"base_temperature must be finite and > 0, got {base_temperature}")
    if not (positive_radius >= 0 and math.isfinite(positive_radius)):
        raise ValueError(f"positive_radius must be finite and >= 0, got {positive_radius}")
    if distance not in DISTANCES:
        raise ValueError(f"distance must be one of {DISTANCES}, got {distance!r}")
    if not (distance_scale >= 0 and math.isfinite(distance_scale)):
        raise ValueError(f"distance_scale must be finite and >= 0, got {distance_scale}")


def _log_pair_weights(y: torch.Tensor, positive_radius: float, distance: str,
                      distance_scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(positive [B, B] bool, log_weight [B, B])``: log of 1 on positives, of ``beta_ij`` (Eq. 2) on
    negatives, -inf on the diagonal. Labels carry no gradient, so only finiteness matters here."""
    n = y.shape[0]
    dy = y[:, None] - y[None, :]
    d = distance_scale * (dy.abs() if distance == "l1" else dy * dy)
    eye = torch.eye(n, dtype=torch.bool, device=y.device)
    pos = (dy.abs() <= positive_radius) & ~eye
    neg = ~pos & ~eye
    # log beta_ij = log|Q(i)| + d_ij - logsumexp_{k in Q(i)} d_ik, shifted by the row max over Q(i)
    neg_inf = torch.full_like(d, float("-inf"))
    shift = torch.where(neg, d, neg_inf).amax(dim=1, keepdim=True)
    shift = torch.where(torch.isfinite(shift), shift, torch.zeros_like(shift))  # rows without negatives
    a = torch.where(neg, d - shift, neg_inf)
    log_z = torch.logsumexp(a, dim=1, keepdim=True)
    log_z = torch.where(torch.isfinite(log_z), log_z, torch.zeros_like(log_z))
    n_neg = neg.sum(dim=1, keepdim=True).clamp(min=1).to(d.dtype)
    log_beta = torch.log(n_neg) + a - log_z  # -inf off the negatives
    log_w = torch.where(pos, torch.zeros_like(d), log_beta)
    return pos, log_w


def ldw_pair_weights(y: torch.Tensor, positive_radius: float = 0.0, distance: str = "l1",
                     distance_scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The pairs of Eq. (1) and the weights of Eq. (2): ``(positive, weight)``, both ``[B, B]``.

    ``positive[i, j]``: ``j != i`` and ``|y_i - y_j| <= positive_radius`` (P(i); radius 0 is the
    paper's ``y_j = y_i``). ``weight[i, j]``: ``beta_ij = |Q(i)| exp(d_ij) / sum_{k in Q(i)} exp(d_ik)``
    for a negative ``j`` (so an anchor's negative weights average to 1), 1 for a positive (our choice,
    see the module docstring), 0 on the diagonal. ``d_ij`` is ``distance_scale * |y_i - y_j|``
    ("l1") or ``distance_scale * (y_i - y_j)^2`` ("l2").
    """
    _check_ldw(1.0, 1.0, positive_radius, distance, distance_scale)
    pos, log_w = _log_pair_weights(_labels(y), float(positive_radius), distance, float(distance_scale))
    return pos, log_w.exp()


def _ldw_supcon(z, y, temperature, base_temperature, positive_radius, distance, distance_scale):
    """``(loss, n_anchors_with_positive)``; see ``ldw_supcon_loss``."""
    _check_ldw(temperature, base_temperature, positive_radius, distance, distance_scale)
    if z.ndim not in (2, 3):
        raise ValueError(f"z must be [batch, dim] or [batch, views, dim], got shape {tuple(z.shape)}")
    y = _labels(y, z.shape[0]).to(z.device)
    if z.ndim == 3:  # [B, V, D] -> [V*B, D], view-major as SupContrast's contrast_mode='all'
        n_views = z.shape[1]
        z = z.transpose(0, 1).reshape(-1, z.shape[-1])
        y = y.repeat(n_views)
    pos, log_w = _log_pair_weights(y, float(positive_radius), distance, float(distance_scale))

    feats = _l2_normalise(z)
    sim = feats @ feats.T / temperature
    log_w = log_w.to(sim.dtype)
    contrast = torch.isfinite(log_w)  # the j != i of the denominator
    # shift by the detached max over the contrast set (it cancels); 0 for a row with no contrast term
    shift = sim.detach().masked_fill(~contrast, float("-inf")).amax(dim=1, keepdim=True)
    shift = torch.where(torch.isfinite(shift), shift, torch.zeros_like(shift))
    terms = torch.where(contrast, log_w + sim - shift, torch.full_like(sim, float("-inf")))
    has_contrast = contrast.any(dim=1, keepdim=True)
    terms = torch.where(has_contrast, terms, torch.zeros_like(terms))  # keeps such rows finite; they have
    log_den = torch.logsumexp(terms, dim=1, keepdim=True) + shift        # no positive and are dropped
    log_prob = sim - log_den

    pos_f = pos.to(sim.dtype)
    n_pos = pos_f.sum(dim=1)
    mean_log_prob_pos = (pos_f * log_prob).sum(dim=1) / n_pos.clamp(min=1.0)
    per_anchor = -(temperature / base_temperature) * mean_log_prob_pos
    has_pos = (n_pos > 0).to(sim.dtype)
    n_anchors = has_pos.sum()
    return (per_anchor * has_pos).sum() / n_anchors.clamp(min=1.0), n_anchors.to(torch.int64)


def ldw_supcon_loss(z: torch.Tensor, y: torch.Tensor, *, temperature: float = 1.0, base_temperature: float = 1.0,
                    positive_radius: float = 0.0, distance: str = "l1", distance_scale: float = 1.0) -> torch.Tensor:
    """Label-Distance Weighted SupCon loss, EchoMEN Eqs. (1)-(2), mean over anchors with a positive.

    With ``s_ij = z_i.z_j / tau`` on L2-normalised features and the pairs and weights of
    ``ldw_pair_weights``:

        L_i = -(tau / base_tau) * mean_{p in P(i)} log( exp(s_ip) / sum_{j != i} w_ij exp(s_ij) )

    Args:
        z: ``[B, D]`` projections, or ``[B, V, D]`` for ``V`` views of each sample (views of a sample
            are positives of each other: their label difference is 0).
        y: ``[B]`` labels (detached here), in the units of ``positive_radius`` and of the distance.
        temperature, base_temperature: ``tau`` and ``base_tau`` (> 0; default 1, the official call).
        positive_radius: >= 0; 0 is the paper's "same label". See the module docstring (item 1): with
            one view and continuous labels, 0 leaves (almost) every anchor without a positive.
        distance: "l1" or "l2" label difference; distance_scale: >= 0 factor on it (0: plain SupCon).

    Anchors without a positive are left out of the mean; if there is none, the result is a zero
    attached to ``z``'s graph. No host synchronisation.
    """
    return _ldw_supcon(z, y, temperature, base_temperature, positive_radius, distance, distance_scale)[0]


# --------------------------------------------------------------------------------------------------
# Stage 2: re-weighted experts (section 2.2, Eqs. 3-4) and the aggregator
# --------------------------------------------------------------------------------------------------

def expert_exponents(num_experts: int) -> torch.Tensor:
    """Eq. (4)'s ``p_m = m / (M - 1)``, ``m = 0..M-1`` (float64, ``[M]``); ``M >= 2``."""
    num_experts = _check_int("num_experts", num_experts, 2)
    return torch.arange(num_experts, dtype=torch.float64) / (num_experts - 1)


@dataclass(frozen=True)
class ExpertWeights:
    """Eq. (4)'s sample weights, fitted on the training labels by ``fit_expert_weights``.

    ``counts[k]``: the (clipped) training count of bin ``[low + k * bin_width, low + (k+1) * bin_width)``;
    ``exponents``: ``p_m``; ``norm[m]``: the mean over the training labels of ``count^(-p_m)``.
    Calling it on labels ``[B]`` gives ``[B, M]`` weights ``count(y)^(-p_m) / norm[m]`` (labels
    outside the fitted range take the end bins). The table is a pure function of the training labels
    and the arguments, so a resumed run refits it rather than saving it. Move it to the labels'
    device once with ``to``.
    """

    low: float
    bin_width: float
    counts: torch.Tensor
    exponents: torch.Tensor
    norm: torch.Tensor
    interpolate: bool = False
    min_count: float = 1.0

    @property
    def num_experts(self) -> int:
        return int(self.exponents.numel())

    def to(self, device: torch.device | str) -> ExpertWeights:
        """The same table with its tensors on ``device``. Move it once, before training: a call on labels
        on another device copies the table over at every step (a host-to-device copy that waits)."""
        return replace(self, counts=self.counts.to(device), exponents=self.exponents.to(device),
                       norm=self.norm.to(device))

    def count_at(self, y: torch.Tensor) -> torch.Tensor:
        """The clipped training count at each label ``[B]``: the label's bin (paper), or the counts
        linearly interpolated between bin centres (code). Under interpolation a label in the outer half of
        the first or last bin is interpolated toward the empty neighbour bin, whose count is clipped to
        ``min_count``, as in the official code, whose bins span the label's whole range; beyond that
        neighbour's centre the count stays ``min_count``."""
        y = _labels(y)
        counts = self.counts.to(device=y.device, dtype=torch.float64)
        t = (y.to(torch.float64) - self.low) / self.bin_width
        last = counts.numel() - 1
        if not self.interpolate:
            return counts[LabelBins(self.low, self.bin_width, last + 1).index(y)]
        counts = torch.cat([counts.new_full((1,), self.min_count), counts, counts.new_full((1,), self.min_count)])
        t, last = t + 0.5, last + 2  # centres of the padded bins: the first real one at 1
        i0 = t.floor().clamp(0, last)
        frac = (t - i0).clamp(0.0, 1.0)
        i0 = i0.long()
        i1 = (i0 + 1).clamp(max=last)
        return counts[i0] * (1.0 - frac) + counts[i1] * frac

    def __call__(self, y: torch.Tensor) -> torch.Tensor:
        y = _labels(y)
        count = self.count_at(y)
        exps = self.exponents.to(device=count.device)
        w = count[:, None] ** (-exps[None, :]) / self.norm.to(device=count.device)[None, :]
        return w.to(y.dtype)


def fit_expert_weights(train_labels, num_experts: int = 3, *, bin_width: float = 1.0, min_count: float = 1.0,
                       max_count: float | None = None, interpolate: bool = False) -> ExpertWeights:
    """Fit Eq. (4)'s weight table on the training labels (once, on the host).

    Bins of width ``bin_width`` (label units; the paper's EF bins have width 1) start at
    ``floor(min(train) / bin_width) * bin_width`` and cover the training labels. Counts are clipped to
    ``[min_count, max_count]`` (defaults 1 and none; the official code's 80 and 1000 suit its 7,460
    videos only). ``interpolate``: the official code's linear interpolation of counts between bin
    centres instead of the paper's bin lookup. Each expert's weights are normalised to mean 1 over
    ``train_labels`` (official code).
    """
    exponents = expert_exponents(num_experts)
    if not (bin_width > 0 and math.isfinite(bin_width)):
        raise ValueError(f"bin_width must be finite and > 0, got {bin_width}")
    if not (min_count > 0 and math.isfinite(min_count)):
        raise ValueError(f"min_count must be finite and > 0, got {min_count}")
    if max_count is not None and not max_count >= min_count:
        raise ValueError(f"max_count must be >= min_count ({min_count}), got {max_count}")
    y = np.asarray(train_labels.detach().cpu() if isinstance(train_labels, torch.Tensor) else train_labels,
                   dtype=np.float64).reshape(-1)
    if y.size == 0 or not np.isfinite(y).all():
        raise ValueError("train_labels must be a non-empty array of finite values")
    low = math.floor(y.min() / bin_width) * bin_width
    n_bins = int(np.floor((y.max() - low) / bin_width)) + 1
    idx = LabelBins(low, bin_width, n_bins).index_np(y)
    counts = np.bincount(idx, minlength=n_bins).astype(np.float64)
    counts = np.clip(counts, min_count, np.inf if max_count is None else max_count)
    table = ExpertWeights(low=float(low), bin_width=float(bin_width), counts=torch.from_numpy(counts),
                          exponents=exponents, norm=torch.ones(num_experts, dtype=torch.float64),
                          interpolate=bool(interpolate), min_count=float(min_count))
    raw = table.count_at(torch.from_numpy(y))[:, None] ** (-exponents[None, :])
    return ExpertWeights(low=table.low, bin_width=table.bin_width, counts=table.counts, exponents=exponents,
                         norm=raw.mean(dim=0), interpolate=table.interpolate, min_count=table.min_count)


def multi_expert_loss(experts: torch.Tensor, gate: torch.Tensor, target: torch.Tensor,
                      sample_weights: torch.Tensor | None = None, *, loss: str = "mse",
                      aggregator_weight: float = 1.0) -> dict:
    """Stage-2 loss of EchoMEN (section 2.2), one scalar for one optimiser:

        per_expert[m] = mean_i w_im * L(experts_im, y_i)                       (Eq. 3, batch mean)
        aggregator    = mean_i L(sum_m gate_im * stopgrad(experts_im), y_i)
        loss          = sum_m per_expert[m] + aggregator_weight * aggregator

    ``experts``, ``gate``: ``[B, M]`` (``MultiExpertOutput``); ``target``: ``[B]``;
    ``sample_weights``: ``[B, M]`` from an ``ExpertWeights`` (detached here; ``None``: all 1);
    ``L``: "mse" (paper) or "l1". The stop-gradient keeps the experts "trained independently": they
    get only their own losses, the aggregator only the ensemble's (the official two optimisers).
    Returns tensors ``"loss"``, ``"experts"`` (the sum of ``per_expert``), ``"per_expert"`` ``[M]``
    and ``"aggregator"``.
    """
    if loss not in EXPERT_LOSSES:
        raise ValueError(f"loss must be one of {EXPERT_LOSSES}, got {loss!r}")
    if not (aggregator_weight >= 0 and math.isfinite(aggregator_weight)):
        raise ValueError(f"aggregator_weight must be finite and >= 0, got {aggregator_weight}")
    if experts.ndim != 2 or gate.shape != experts.shape:
        raise ValueError(f"experts and gate must both be [batch, experts], got {tuple(experts.shape)} "
                         f"and {tuple(gate.shape)}")
    if target.numel() != experts.shape[0]:
        raise ValueError(f"got {target.numel()} targets for {experts.shape[0]} samples")
    if sample_weights is not None and sample_weights.shape != experts.shape:
        raise ValueError(f"sample_weights must be {tuple(experts.shape)}, got {tuple(sample_weights.shape)}")
    y = target.reshape(-1, 1).to(experts.dtype)

    def elementwise(pred):
        return (pred - y) ** 2 if loss == "mse" else (pred - y).abs()

    err = elementwise(experts)
    if sample_weights is not None:
        err = sample_weights.detach().to(err.dtype) * err
    per_expert = err.mean(dim=0)
    ensemble = (gate * experts.detach()).sum(dim=1, keepdim=True)
    aggregator = elementwise(ensemble).mean()
    experts_term = per_expert.sum()
    return {"loss": experts_term + aggregator_weight * aggregator, "experts": experts_term,
            "per_expert": per_expert, "aggregator": aggregator}
