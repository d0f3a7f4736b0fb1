"""Evidential multimodal regression: EyeMoSt and EyeMoSt+ for one continuous output (visual-field MD).

Papers
------
- EyeMoSt: Zou, Du, Zhou, Fu, Liu, Zhang. "Reliable Multimodality Eye Disease Screening via Mixture of
  Student's t Distributions", MICCAI 2023.
- EyeMoSt+: Zou et al. "Confidence-aware multimodality learning for eye disease screening", Medical
  Image Analysis 2024, arXiv 2405.18167 (the same fusion plus a confidence-aware ranking
  regularisation: the fused confidence should not fall below a single modality's).
- The per-modality likelihood and its regulariser are those of Amini, Schwarting, Soleimany, Rus,
  "Deep Evidential Regression", NeurIPS 2020 (Sec. 3: the NIG marginal, its NLL (Eq. 8) and the
  evidence regulariser (Eq. 9)).
- Official code: github.com/Cocofeat/EyeMoSt, ``MedIA-24/model.py`` (``NIG_NLL``, ``ST_NLL``,
  ``NIG_Reg``, ``EyeMost.infer``, ``EyeMost.ST_Combin``, ``calculate_cml_u_loss``); defaults from
  ``train3_trans.py`` (``ev_dec_alpha_max = ev_dec_v_max = 20``, ``ev_dec_beta_min = 0.2``).

What each modality predicts
---------------------------
A Normal-Inverse-Gamma (NIG) prior over the mean and variance of ``y``: ``(gamma, v, alpha, beta)``.
Integrating the prior out gives a Student-t for ``y`` (Amini Sec. 3):
``St(y; loc=gamma, df=2 alpha, scale^2=beta (1 + v) / (v alpha))`` (Amini Sec. 3; EyeMoSt's "NIG as
Student-t" step).

The fusion (EyeMoSt's mixture of Student-t distributions, official ``ST_Combin``)
--------------------------------------------
For two modalities the official code takes as *base* the modality with the smaller degrees of freedom
(the heavier tail: the less certain one), keeps its ``df``, matches the other Student-t to that ``df``
by keeping its variance (``s_o^2 df_o/(df_o-2) = s'^2 df_b/(df_b-2)``), averages the two squared scales,
and takes the location as the ``df``-weighted mean of the locations. ``fuse_student_t`` does exactly that
for two present modalities, and for K present modalities its natural generalisation (base = smallest
``df``; location weighted by ``df``; squared scale = mean of the ``df``-matched squared scales). With a
single present modality it returns that modality's Student-t unchanged.

Where this differs from the official code, and why
--------------------------------------------------
1. The official code is written for classification (one-hot ``y``; a cross-entropy on the location):
   here ``y`` is one real number. The cross-entropy terms become absolute errors ``|y - gamma|``
   (per modality, in the regulariser) and ``|y - loc|`` (fused), keeping the official weights
   (0.01 and 0.5). With several outputs the official code chooses the base by a vote over outputs;
   with one output (MD) the vote is the plain comparison used here.
2. ``ST_Combin`` computes a *squared* scale and then passes it as the *scale* of
   ``torch.distributions.StudentT`` and of ``ST_NLL``. We take its square root: the variance matching
   and the NIG marginal are both stated in squared-scale units, so the official code's interval widths
   and likelihood are in the wrong units (dB^2 instead of dB for MD).
3. ``alpha`` is floored at ``1 + 1e-4`` and ``v`` at ``1e-6`` (the official ``softplus + 1`` and
   ``softplus`` reach 1 and 0 exactly in float32 for very negative inputs, where the variance matching
   divides 0 by 0 and the scale is infinite). The official caps (alpha, v <= 20) and beta floor (+0.2)
   are kept.
4. A per-sample ``present`` mask: an absent modality is left out of the fusion and of the losses
   (the official code assumes both modalities for every eye). An eye with no modality raises.
5. The official code adds ``ev_st_u_min = 1e-4`` to the fused location (a positivity guard for the
   class scores); a regression target needs no such shift, so it is left out.
6. EyeMoSt+'s confidence loss. The official ``EyeMost_Plus`` forward (weight 10) calls
   ``calculate_cml_loss``, which compares the *softmax maximum probabilities* of each modality's and of
   the fused class scores: ``relu(conf_m - conf_F) `` summed over the eyes that modality classifies
   correctly. A regression output has no class scores, so that loss cannot carry over. The same file
   defines, but never calls, ``calculate_cml_u_loss``, the same ranking on the evidential confidences
   (``v + alpha + 1/beta`` per modality, ``1/scale_2^2 + df`` fused); ``confidence_consistency_loss``
   is an adaptation of that uncalled loss, not of the one the official model trains with. "Correctly
   classified" has no regression meaning either: every present eye counts by default, or only eyes
   whose unimodal error is at most ``tolerance``. Its fused confidence is ``1/scale^2 + df`` with our
   scale (difference 2), i.e. ``1/scale_2 + df`` in the official squared-scale units, where the official
   writes ``1/scale_2^2``; ``fused_confidence(official_units=True)`` gives the official expression.
   The official code sums over the batch; so do we (``reduction="sum"``), ``"mean"`` is available.
7. EyeMoSt's per-modality regulariser multiplies the *batch-mean* task error by each eye's evidence
   (``evidential_terms(regulariser_error="batch")``, the default; see there).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# Official defaults (Cocofeat/EyeMoSt train3_trans.py and MICCAI23/train.py argparse defaults).
ALPHA_MAX = 20.0
V_MAX = 20.0
BETA_MIN = 0.2
# Our floors (difference 3 in the module docstring).
ALPHA_MIN = 1.0 + 1e-4
V_MIN = 1e-6
# Official loss weights (calculate_evidential_loss_constraints, calculate_evidential_st_loss_constraints,
# EyeMost_Plus_transformer.forward).
REGULARISER_WEIGHT = 0.01
FUSED_ERROR_WEIGHT = 0.5
CONFIDENCE_WEIGHT = 10.0

_LOG_SQRT_PI = 0.5 * math.log(math.pi)


@dataclass(frozen=True)
class NIG:
    """Normal-Inverse-Gamma parameters, each ``[B]`` (or any common shape)."""

    gamma: torch.Tensor
    v: torch.Tensor
    alpha: torch.Tensor
    beta: torch.Tensor


@dataclass(frozen=True)
class StudentT:
    """A Student-t: location, scale (not squared) and degrees of freedom, each ``[B]``."""

    loc: torch.Tensor
    scale: torch.Tensor
    df: torch.Tensor


def nig_parameters(raw: torch.Tensor, *, alpha_max: float = ALPHA_MAX, v_max: float = V_MAX,
                   beta_min: float = BETA_MIN) -> NIG:
    """``raw [..., 4]`` (a linear layer's outputs) -> NIG ``(gamma, v, alpha, beta)``, each ``[...]``.

    EyeMoSt ``infer``: ``gamma = raw0``; ``v = min(softplus(raw1), v_max)``;
    ``alpha = min(softplus(raw2) + 1, alpha_max)``; ``beta = softplus(raw3) + beta_min``. We also floor
    ``alpha`` at ``1 + 1e-4`` and ``v`` at ``1e-6`` (module docstring, difference 3), so ``df = 2 alpha > 2``
    and the squared scale stays finite."""
    if raw.shape[-1] != 4:
        raise ValueError(f"nig_parameters needs 4 raw outputs in the last dimension, got shape {tuple(raw.shape)}")
    if not (alpha_max > ALPHA_MIN and v_max > V_MIN and beta_min > 0):
        raise ValueError(f"need alpha_max > {ALPHA_MIN}, v_max > {V_MIN}, beta_min > 0; got "
                         f"alpha_max={alpha_max}, v_max={v_max}, beta_min={beta_min}")
    gamma = raw[..., 0]
    v = F.softplus(raw[..., 1]).clamp(min=V_MIN, max=v_max)
    alpha = (F.softplus(raw[..., 2]) + 1.0).clamp(min=ALPHA_MIN, max=alpha_max)
    beta = F.softplus(raw[..., 3]) + beta_min
    return NIG(gamma, v, alpha, beta)


def nig_to_student_t(gamma: torch.Tensor, v: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor) -> StudentT:
    """The marginal of ``y`` under the NIG prior (Amini Sec. 3): location ``gamma``,
    ``df = 2 alpha``, ``scale^2 = beta (1 + v) / (v alpha)``. Returns the scale, not its square
    (the official ``ST_Combin`` keeps the square; difference 2)."""
    scale2 = beta * (1.0 + v) / (v * alpha)
    return StudentT(loc=gamma, scale=torch.sqrt(scale2), df=2.0 * alpha)


def nig_nll(y: torch.Tensor, gamma: torch.Tensor, v: torch.Tensor, alpha: torch.Tensor,
            beta: torch.Tensor) -> torch.Tensor:
    """Per-sample negative log marginal likelihood of ``y`` under the NIG (Amini Eq. 8, official ``NIG_NLL``):

    ``0.5 log(pi/v) - alpha log(Omega) + (alpha + 1/2) log(v (y - gamma)^2 + Omega)
    + lgamma(alpha) - lgamma(alpha + 1/2)``, with ``Omega = 2 beta (1 + v)``.
    The official code adds 1e-16 inside the logs; our floors on ``v`` and ``beta`` make that unnecessary."""
    omega = 2.0 * beta * (1.0 + v)
    return (_LOG_SQRT_PI - 0.5 * torch.log(v) - alpha * torch.log(omega)
            + (alpha + 0.5) * torch.log(v * (y - gamma) ** 2 + omega)
            + torch.lgamma(alpha) - torch.lgamma(alpha + 0.5))


def nig_evidence(v: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor, *, form: str = "eyemost") -> torch.Tensor:
    """A modality's evidence: ``form="amini"`` ``2 v + alpha`` (Amini et al. 2020, Eq. 9);
    ``form="eyemost"`` ``v + alpha + 1/beta``, the official ``NIG_Reg`` confidence (its ``+1e-15`` on
    ``beta`` is left out: ``beta`` is floored at 0.2)."""
    if form == "amini":
        return 2.0 * v + alpha
    if form == "eyemost":
        return v + alpha + 1.0 / beta
    raise ValueError(f"evidence form must be 'amini' or 'eyemost', got {form!r}")


def evidence_regulariser(y: torch.Tensor, gamma: torch.Tensor, v: torch.Tensor, alpha: torch.Tensor,
                         beta: torch.Tensor, *, form: str = "eyemost") -> torch.Tensor:
    """Per-sample evidence regulariser ``|y - gamma_i| * evidence_i`` (Amini Eq. 9), the per-sample
    error form (``evidential_terms(regulariser_error="sample")``; EyeMoSt's own is ``"batch"``, see there).
    Evidence: ``nig_evidence(form)``. Weight it with ``REGULARISER_WEIGHT`` (0.01)."""
    return torch.abs(y - gamma) * nig_evidence(v, alpha, beta, form=form)


def student_t_nll(y: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor, df: torch.Tensor) -> torch.Tensor:
    """Per-sample Student-t negative log-likelihood (official ``ST_NLL``, with ``scale`` the scale, not its
    square; difference 2): ``log s + 0.5 log(pi df) + (df+1)/2 log(1 + (y-loc)^2/(df s^2))
    + lgamma(df/2) - lgamma((df+1)/2)``."""
    z2 = ((y - loc) / scale) ** 2
    return (torch.log(scale) + _LOG_SQRT_PI + 0.5 * torch.log(df)
            + 0.5 * (df + 1.0) * torch.log1p(z2 / df)
            + torch.lgamma(0.5 * df) - torch.lgamma(0.5 * df + 0.5))


def _present_matrix(present, k: int, batch: int, device) -> torch.Tensor:
    if present is None:
        return torch.ones(batch, k, dtype=torch.bool, device=device)
    present = torch.as_tensor(present, device=device).bool()
    if present.shape != (batch, k):
        raise ValueError(f"present must be [B, K] = {(batch, k)}, got {tuple(present.shape)}")
    return present


def fuse_student_t(locs: Sequence[torch.Tensor], scales: Sequence[torch.Tensor], dfs: Sequence[torch.Tensor],
                   present: torch.Tensor | None = None, *, eps: float = 1e-8) -> StudentT:
    """Mixture-of-Student-t fusion (EyeMoSt's mixture of Student-t, official ``ST_Combin``), per eye over present modalities.

    Inputs: K lists of ``[B]`` tensors (scales, not squared) and ``present`` bool ``[B, K]`` (all present if
    None). For each eye, base ``b`` = present modality with the smallest ``df``;
    ``df_F = df_b``;
    ``loc_F = sum_m (df_m + eps) loc_m / sum_m (df_m + eps)``;
    ``s_F^2 = mean_m s_m^2 * df_m (df_b - 2) / ((df_m - 2) df_b)`` (each Student-t matched to ``df_b`` with
    its variance kept; the base's own term is ``s_b^2``). For K = 2 this is the official rule exactly
    (``(s_b^2 + s'_o^2)/2``); ties in ``df`` give the same result whichever is the base. Absent modalities
    contribute nothing (their values may be anything finite or not). Raises ``ValueError`` when an eye
    has no present modality."""
    k = len(locs)
    if not (k == len(scales) == len(dfs)) or k == 0:
        raise ValueError("fuse_student_t needs the same positive number of locs, scales and dfs")
    loc = torch.stack(list(locs), dim=-1)          # [B, K]
    scale = torch.stack(list(scales), dim=-1)
    df = torch.stack(list(dfs), dim=-1)
    mask = _present_matrix(present, k, loc.shape[0], loc.device)
    empty = ~mask.any(dim=-1)
    if bool(empty.any()):
        rows = torch.nonzero(empty).flatten().tolist()
        raise ValueError(f"fuse_student_t: eyes {rows[:10]} have no present modality; the evidential fusion "
                         f"needs at least one")
    # Replace absent entries by harmless finite values before any arithmetic, so no NaN/inf can leak
    # into the result or its gradient through a masked-out branch.
    one = torch.ones_like(loc)
    loc = torch.where(mask, loc, torch.zeros_like(loc))
    scale = torch.where(mask, scale, one)
    df_safe = torch.where(mask, df, torch.full_like(df, 3.0))
    df_min = torch.where(mask, df_safe, torch.full_like(df, float("inf"))).min(dim=-1, keepdim=True).values
    w = torch.where(mask, df_safe + eps, torch.zeros_like(df))
    loc_f = (w * loc).sum(-1) / w.sum(-1)
    matched = scale ** 2 * df_safe * (df_min - 2.0) / ((df_safe - 2.0) * df_min)
    count = mask.sum(-1).to(loc.dtype)
    scale2_f = torch.where(mask, matched, torch.zeros_like(matched)).sum(-1) / count
    return StudentT(loc=loc_f, scale=torch.sqrt(scale2_f), df=df_min.squeeze(-1))


def modality_confidence(v: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """A modality's confidence in EyeMoSt+ (official ``calculate_cml_u_loss``): ``v + alpha + 1/beta``."""
    return v + alpha + 1.0 / beta


def fused_confidence(scale: torch.Tensor, df: torch.Tensor, *, official_units: bool = False) -> torch.Tensor:
    """The fused confidence in EyeMoSt+ (the uncalled official ``calculate_cml_u_loss``): ``1/scale^2 + df``
    for the Student-t scale ``scale``; ``official_units=True`` gives the official ``1/scale_2^2 + df``
    with ``scale_2 = scale^2`` (its squared scale, difference 2), i.e. ``1/scale^4 + df``."""
    return (1.0 / scale ** 4 if official_units else 1.0 / scale ** 2) + df


def confidence_consistency_loss(y: torch.Tensor, nigs: Sequence[NIG], fused: StudentT,
                                present: torch.Tensor | None = None, *, tolerance: float | None = None,
                                reduction: str = "sum", eps: float = 1e-16) -> torch.Tensor:
    """EyeMoSt+'s confidence-aware loss (MedIA 2024; official ``calculate_cml_u_loss``): for each modality,
    ``relu((conf_m - conf_F) * sign - eps)`` where ``sign`` marks the eyes that count: every present eye
    (``tolerance=None``), or present eyes with ``|y - gamma_m| <= tolerance`` (the regression stand-in
    for "correctly classified"; difference 6). Summed over modalities; over eyes summed (official) or
    averaged."""
    if reduction not in ("sum", "mean"):
        raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
    mask = _present_matrix(present, len(nigs), y.shape[0], y.device)
    conf_f = fused_confidence(fused.scale, fused.df)
    total = y.new_zeros(())
    for m, nig in enumerate(nigs):
        counts = mask[:, m]
        if tolerance is not None:
            counts = counts & (torch.abs(y - nig.gamma).detach() <= tolerance)
        gap = modality_confidence(nig.v, nig.alpha, nig.beta) - conf_f
        term = torch.relu(torch.where(counts, gap, torch.zeros_like(gap)) - eps)
        total = total + (term.sum() if reduction == "sum" else term.mean())
    return total


def predictive_interval(loc, scale, df, level: float = 0.9):
    """Two-sided central ``level`` interval of a Student-t: ``loc -+ t_{df}^{-1}((1+level)/2) * scale``.

    Uses ``scipy.stats.t.ppf`` on detached values (no gradient: this is for reporting). Returns
    ``(lo, hi)`` as tensors when ``loc`` is a tensor, else as numpy arrays."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    from scipy import stats

    as_tensor = isinstance(loc, torch.Tensor)

    def to_np(x):
        return x.detach().cpu().double().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, float)

    loc_n, scale_n, df_n = to_np(loc), to_np(scale), to_np(df)
    q = stats.t.ppf(0.5 + level / 2.0, df_n)
    lo, hi = loc_n - q * scale_n, loc_n + q * scale_n
    if as_tensor:
        return (torch.as_tensor(lo, dtype=loc.dtype, device=loc.device),
                torch.as_tensor(hi, dtype=loc.dtype, device=loc.device))
    return lo, hi


@dataclass(frozen=True)
class EvidentialOutput:
    """What ``EvidentialHead`` returns: per-modality NIG and Student-t, the fused Student-t, the point
    prediction (the fused location, ``[B]``) and the ``present`` mask used."""

    nig: dict[str, NIG]
    student: dict[str, StudentT]
    fused: StudentT
    prediction: torch.Tensor
    present: torch.Tensor


class EvidentialHead(nn.Module):
    """One linear NIG head per modality on the encoders' features, fused by ``fuse_student_t``.

    The official heads are ReLU -> Linear(D, 64) -> ReLU -> Linear(64, 4 params); ``hidden`` (default None:
    one linear layer, as the issue asks) gives that two-layer form with ``hidden=64``."""

    def __init__(self, feature_dims: Mapping[str, int], *, hidden: int | None = None,
                 alpha_max: float = ALPHA_MAX, v_max: float = V_MAX, beta_min: float = BETA_MIN):
        super().__init__()
        if not feature_dims:
            raise ValueError("EvidentialHead needs at least one modality")
        self.modalities = tuple(feature_dims)
        self.alpha_max, self.v_max, self.beta_min = alpha_max, v_max, beta_min

        def make(d: int) -> nn.Module:
            if hidden is None:
                return nn.Linear(d, 4)
            return nn.Sequential(nn.ReLU(), nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, 4))

        self.heads = nn.ModuleDict({m: make(int(d)) for m, d in feature_dims.items()})

    def forward(self, features: Mapping[str, torch.Tensor], present: torch.Tensor | None = None) -> EvidentialOutput:
        """``features``: ``{modality: [B, D_m]}`` (every modality of the head); ``present``: bool ``[B, K]``
        in the order of ``self.modalities`` (all present if None)."""
        missing = [m for m in self.modalities if m not in features]
        if missing:
            raise ValueError(f"EvidentialHead: features lack modalities {missing}")
        batch = features[self.modalities[0]].shape[0]
        mask = _present_matrix(present, len(self.modalities), batch, features[self.modalities[0]].device)
        nig, student = {}, {}
        for j, m in enumerate(self.modalities):
            # An absent modality's features may be anything (zeros, NaN): zero them so nothing non-finite
            # reaches the head's output or, through 0 * NaN, its weight gradients.
            x = torch.where(mask[:, j:j + 1], features[m], torch.zeros_like(features[m]))
            nig[m] = nig_parameters(self.heads[m](x), alpha_max=self.alpha_max, v_max=self.v_max,
                                    beta_min=self.beta_min)
            p = nig[m]
            student[m] = nig_to_student_t(p.gamma, p.v, p.alpha, p.beta)
        fused = fuse_student_t([student[m].loc for m in self.modalities],
                               [student[m].scale for m in self.modalities],
                               [student[m].df for m in self.modalities], mask)
        return EvidentialOutput(nig=nig, student=student, fused=fused, prediction=fused.loc, present=mask)

    def fusion_contributions(self, features: Mapping[str, torch.Tensor],
                             present: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Each modality's additive share of the fused location (the model contract's
        ``fusion_contributions``): ``w_m gamma_m`` with ``w_m = (df_m + eps) / sum_present (df_k + eps)``,
        0 for an absent modality; the shares sum to ``prediction``."""
        out = self(features, present)
        df = torch.stack([out.student[m].df for m in self.modalities], dim=-1)
        w = torch.where(out.present, df + 1e-8, torch.zeros_like(df))
        w = w / w.sum(-1, keepdim=True)
        return {m: torch.where(out.present[:, j], w[:, j] * out.nig[m].gamma, torch.zeros_like(w[:, j]))
                for j, m in enumerate(self.modalities)}


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    n = mask.sum()
    return torch.where(mask, x, torch.zeros_like(x)).sum() / n.clamp(min=1).to(x.dtype)


@dataclass(frozen=True)
class EvidentialTerms:
    """EyeMoSt's loss in the parts a training strategy sees (``remd_core.optim.Losses``): ``fused``, the
    fused Student-t term; ``unimodal``, each modality's NIG term; ``confidence``, EyeMoSt+'s
    confidence-consistency term, already weighted (0 for EyeMoSt). ``total()`` is ``evidential_loss``."""

    fused: torch.Tensor
    unimodal: dict[str, torch.Tensor]
    confidence: torch.Tensor

    def total(self) -> torch.Tensor:
        return self.fused + sum(self.unimodal.values()) + self.confidence


def evidential_terms(out: EvidentialOutput, y: torch.Tensor, *, regulariser_weight: float = REGULARISER_WEIGHT,
                     regulariser_form: str = "eyemost", regulariser_error: str = "batch",
                     fused_error_weight: float = FUSED_ERROR_WEIGHT,
                     confidence_weight: float = 0.0, confidence_tolerance: float | None = None) -> EvidentialTerms:
    """EyeMoSt's loss (official ``EyeMost.forward``), for one real target ``y [B]``, term by term:

    - per modality: ``mean_{present eyes}(NIG_NLL_m + w_reg * err_m * evidence_m)``. With
      ``regulariser_error="batch"`` (default, the official ``calculate_evidential_loss_constraints``:
      ``nig_nll + 0.01 * nig_ce * nig_conf``, whose cross-entropy ``nig_ce`` is one batch-mean scalar)
      ``err_m`` is the batch mean of ``|y - gamma_m|`` over the present eyes, multiplying each eye's
      evidence, so the term is ``w_reg * mean(err) * mean(evidence)``; ``"sample"`` takes each eye's
      own ``|y_i - gamma_i|`` (Amini et al.'s Eq. 9 form, the workbench's before 2026-12-06);
    - fused: ``mean(ST_NLL_fused + w_err * |y - loc_F|)``;
    - ``confidence_weight`` times EyeMoSt+'s ``confidence_consistency_loss``
      (``EyeMost_Plus_transformer.forward``, weight 10); 0 (default) is EyeMoSt.

    ``w_reg = 0.01``, ``w_err = 0.5`` (official weights; the cross-entropies are absolute errors here,
    difference 1). A modality absent from every eye of the batch contributes 0."""
    for name, w in (("regulariser_weight", regulariser_weight), ("fused_error_weight", fused_error_weight),
                    ("confidence_weight", confidence_weight)):
        if not (w >= 0 and math.isfinite(w)):
            raise ValueError(f"{name} must be finite and >= 0, got {w}")
    if regulariser_error not in ("batch", "sample"):
        raise ValueError(f"regulariser_error must be 'batch' (official) or 'sample', got {regulariser_error!r}")
    y = y.reshape(-1).to(out.prediction.dtype)
    unimodal = {}
    for j, m in enumerate(out.nig):
        p, present = out.nig[m], out.present[:, j]
        per_eye = nig_nll(y, p.gamma, p.v, p.alpha, p.beta)
        if regulariser_weight and regulariser_error == "batch":
            error = _masked_mean(torch.abs(y - p.gamma), present)
            per_eye = per_eye + regulariser_weight * error * nig_evidence(p.v, p.alpha, p.beta, form=regulariser_form)
        elif regulariser_weight:
            per_eye = per_eye + regulariser_weight * evidence_regulariser(y, p.gamma, p.v, p.alpha, p.beta,
                                                                          form=regulariser_form)
        unimodal[m] = _masked_mean(per_eye, present)
    f = out.fused
    fused = (student_t_nll(y, f.loc, f.scale, f.df) + fused_error_weight * torch.abs(y - f.loc)).mean()
    confidence = y.new_zeros(())
    if confidence_weight:
        confidence = confidence_weight * confidence_consistency_loss(
            y, list(out.nig.values()), f, out.present, tolerance=confidence_tolerance)
    return EvidentialTerms(fused, unimodal, confidence)


def evidential_loss(out: EvidentialOutput, y: torch.Tensor, **weights) -> torch.Tensor:
    """EyeMoSt's loss, the sum of ``evidential_terms(out, y, **weights)`` (see there)."""
    return evidential_terms(out, y, **weights).total()
