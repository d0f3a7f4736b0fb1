"""RIMA for MD regression (Yu et al., "Robust Incomplete-Modality Alignment for Ophthalmic Disease
Grading and Diagnosis via Labeled Optimal Transport", MICCAI 2025, arXiv 2507.04999; seeds 002 and
003): cross-modal prediction MLPs trained by class-wise optimal-transport alignment, a feature-wise
OT projection of OCT features into the fundus feature space, and an asymmetric fusion; an absent
modality is replaced by its prediction from the present one.

How the trainer uses it::

    out = model(inputs)                            # inputs[PRESENT]: bool [B, K] (all present if absent)
    loss = regression_loss(out["fused"], target)   # standardised targets, as for every model
    loss = loss + rima_alignment_loss(model, out, md_db, generator)   # weight 1 (official)

``md_db`` is the batch's MD in dB (``batch["y"]``): only its glaucoma stage
(``remd_core.data.format.stage_from_md``) is read, as the labels of the class-wise alignment; it is
a training target, never a model input. ``rima_alignment_loss`` also refreshes the feature
projection from the batch (training mode only, as the official refreshes it on every training
batch); ``RIMARegressor.refresh_feature_projection`` refreshes it from any set of features, e.g.
the whole training split at an epoch's end, which is what the official evaluation uses.

The model (``RIMARegressor``), for exactly the modalities ``fundus`` and ``oct``:

- encoders: the workbench's (``ModalityEncoders``), features ``f`` (fundus, ``D_f``) and ``o``
  (OCT, ``D_o``);
- replacement: an absent modality's features are replaced by their prediction from the present
  one (``fundus_to_oct(f)`` or ``oct_to_fundus(o)``); call the results ``f*`` and ``o*``. An eye
  with no modality raises ``ValueError`` naming its batch position;
- OCT side ``s_o = oct_fusion([o*, fundus_to_oct(f*)])`` (an MLP, ``D_o``);
- fundus side ``s_f``: a post-norm transformer block (4-head self-attention and a feed-forward
  layer) over the three tokens ``{f*, o* @ P, oct_to_fundus(o*)}``, mean-pooled (``D_f``), where
  ``P [D_o, D_f]`` is the feature projection (buffer ``feature_projection``, saved with the model);
- prediction ``head([s_f, s_o])`` (one linear layer).

``fusion_contributions`` splits the head's input into its two halves: the fundus side's share is
``W_f s_f + b / 2`` and the OCT side's ``W_o s_o + b / 2``; they sum to the prediction. They are
the shares of the two SIDES of the asymmetric fusion, not of the modalities alone: the OCT side
reads the fundus through ``fundus_to_oct`` and the fundus side reads the OCT through two tokens.
They are computed by running the fusion again on the given features, so in training mode (dropout)
they sum to that pass's prediction, equal to ``forward``'s only in evaluation mode.

What the official code does (Qinkaiyu/RIMA at commit 6d9191e, ``baseline_models_fusion.py`` and
``main.py``; the OT solvers are described in ``rima_ot``): a 4-class classifier of glaucoma grade
on a Res2Net-50 fundus encoder (384 px, 2048-d) and MedicalNet's 3-D ResNet-10 OCT encoder
(96^3, flattened to 6144-d); ``fundus2oct`` Linear(2048, 4096)-ReLU-Dropout(0.3)-Linear(4096, 6144)
and ``oct2fundus`` Linear(6144, 4096)-ReLU-Dropout(0.3)-Linear(4096, 2048); ``oct_fusion``
Linear(2 x 6144, 6144)-ReLU-Dropout(0.3)-Linear(6144, 6144); a post-norm transformer block
(``nn.MultiheadAttention`` with 4 heads, dropout 0.1, feed-forward width 2048) over the three
fundus-side tokens, mean-pooled; ``fc`` Linear(8192, classes) on ``[fundus side, OCT side]``.
In training, per batch: both modalities' features are detached and grouped by label; the labelled
GW coupling is solved twice (fundus->OCT and OCT->fundus); for each sample a partner is drawn from
its row and ``1 - cos(mlp(source), partner)`` is averaged over the batch, for both directions, and
the two averages summed (the MLPs read the DETACHED source features, so this loss trains the MLPs
alone); the feature coupling is recomputed from the batch; the loss is cross-entropy + the
alignment loss (weight 1). AdamW, learning rate 1e-4, weight decay 1e-5, batch 32, 200 epochs.
It never drops a modality.

Where this differs, and why:

1. Regression: the head has one output (standardised MD) and the task loss is the trainer's
   regression loss; the alignment's labels are the glaucoma stage bins of MD (normal, early,
   intermediate, advanced), derived from the label, used in training only.
2. Encoders: the workbench's (a 2-D ResNet on the fundus photograph, the B-scan encoder of
   ``EncoderConfig.oct_encoder`` on the OCT volume), not Res2Net-50 and MedicalNet's 3-D ResNet-10,
   so every Table 1 row shares one backbone (MONAI's ``resnet10`` with ``spatial_dims=3`` would be
   the official OCT encoder at the gpu profile; it is not wired here). Widths follow the official
   ratios: hidden width of both cross-modal MLPs ``2 * D_f`` (4096 = 2 x 2048), the transformer's
   feed-forward width ``D_f``; ``D_f`` must be divisible by the 4 heads.
3. Missing modalities: replaced by their prediction from the present one (the paper's use of the
   cross-modal MLPs; the released code never drops one), read from ``inputs[PRESENT]``; every
   downstream token is then computed from the replaced features, so an absent modality's input
   never reaches the prediction (its features are zeroed with ``torch.where`` before anything reads
   them, so even a non-finite value reaches neither the prediction nor the gradients of the layers
   after the encoders). The encoders still run on the whole batch,
   absent eyes included, like every model of the workbench: in training mode their BatchNorm
   statistics include the absent inputs (zeros under the missing-modality protocol).
4. The fusion reads the cross-modal predictions of the LIVE features in training and evaluation
   alike. The official training pass feeds the fusion the predictions made from the detached
   features, stacked in label order while the OCT features stay in batch order (rows of different
   eyes are concatenated unless the batch happens to be sorted by label), and its evaluation pass
   uses the live features: we keep one path, the evaluation one, for both.
5. The alignment loss solves the labelled coupling once (fundus->OCT) and uses its transpose for
   OCT->fundus: the GW objective and the solver's iteration are symmetric under transposition, so
   the second official solve gives the same coupling up to the solver's tolerance (a test checks
   it) at twice the CPU time. Only eyes with both modalities present take part; with none, the
   loss is an exact zero that still back-propagates.
6. Feature projection: solved with the labelled sample coupling in its own orientation (OCT x
   fundus; the official training pass passes the fundus x OCT coupling, i.e. its transpose) and
   normalised by columns (``rima_ot.projection_from_coupling``: each fundus feature is a convex
   combination of OCT features; the official multiplies by the raw coupling, which shrinks the token
   by ``D_f``). It starts as the uniform map (each fundus feature is the mean of the OCT features)
   and is refreshed by ``rima_alignment_loss`` on every training batch (official), so the forward
   pass of batch t uses the projection of batch t-1 (the official solves it inside the same forward);
   the model keeps it in a buffer, so evaluation and checkpoints use the last one computed. To
   follow the official evaluation exactly, refresh it on the whole training split before
   evaluating (``refresh_feature_projection``: a GW solve over all training eyes, seconds to
   minutes on a CPU for hundreds of eyes).
7. No unimodal heads (the official has none): ``unimodal`` is empty.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..data.format import DatasetSpec, stage_from_md
from ..data.transforms import PRESENT
from .encoders import EncoderConfig
from .regressor import ModalityEncoders
from .rima_ot import (EPSILON, MAX_ITER, feature_coupling, labelled_gw_coupling, projection_from_coupling,
                      sample_partners)

RIMA_MODALITIES = ("fundus", "oct")
ALIGNMENT_WEIGHT = 1.0
"""Weight of the alignment loss beside the task loss (official ``loss = loss + ot_loss``)."""
MLP_DROPOUT = 0.3
ATTENTION_DROPOUT = 0.1
ATTENTION_HEADS = 4


def _mlp(d_in: int, hidden: int, d_out: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, d_out))


class RIMARegressor(ModalityEncoders):
    """RIMA's cross-modal prediction, feature projection and asymmetric fusion on the workbench's
    encoders (module docstring); satisfies ``remd_core.models.contract.MultimodalModel``.

    ``hidden``: width of the two cross-modal MLPs (default ``2 * D_f``); ``epsilon`` and ``max_iter``:
    the OT solvers' (official 5e-3 and 2000)."""

    def __init__(self, spec: DatasetSpec, modalities: tuple[str, ...] | None = None,
                 encoder: EncoderConfig | None = None, hidden: int | None = None, dropout: float = MLP_DROPOUT,
                 attention_heads: int = ATTENTION_HEADS, attention_dropout: float = ATTENTION_DROPOUT,
                 epsilon: float = EPSILON, max_iter: int = MAX_ITER):
        chosen = tuple(modalities or spec.modality_names)
        if sorted(chosen) != sorted(RIMA_MODALITIES):
            raise ValueError(f"RIMA fuses exactly the modalities {RIMA_MODALITIES} (a fundus photograph and an OCT "
                             f"volume), got {chosen}")
        if not 0.0 <= dropout < 1.0 or not 0.0 <= attention_dropout < 1.0:
            raise ValueError(f"dropout rates must lie in [0, 1), got {dropout!r} and {attention_dropout!r}")
        if not epsilon > 0 or int(max_iter) < 1:
            raise ValueError(f"epsilon must be positive and max_iter at least 1, got {epsilon!r} and {max_iter!r}")
        super().__init__(spec, chosen, encoder)
        d_f, d_o = self.encoders["fundus"].out_features, self.encoders["oct"].out_features
        if d_f % int(attention_heads):
            raise ValueError(f"the fundus features' width {d_f} must be divisible by attention_heads={attention_heads}")
        hidden = 2 * d_f if hidden is None else int(hidden)
        if hidden < 1:
            raise ValueError(f"hidden must be a positive width, got {hidden!r}")
        self.fundus_to_oct = _mlp(d_f, hidden, d_o, dropout)
        self.oct_to_fundus = _mlp(d_o, hidden, d_f, dropout)
        self.oct_fusion = _mlp(2 * d_o, d_o, d_o, dropout)
        self.fundus_attention = nn.TransformerEncoderLayer(d_model=d_f, nhead=int(attention_heads), dim_feedforward=d_f,
                                                           dropout=attention_dropout, activation="relu",
                                                           batch_first=True, norm_first=False)
        self.head = nn.Linear(d_f + d_o, 1)
        self.register_buffer("feature_projection", torch.full((d_o, d_f), 1.0 / d_o))
        self.epsilon, self.max_iter = float(epsilon), int(max_iter)

    def fuse(self, features: Mapping[str, torch.Tensor], present: torch.Tensor | None = None) -> dict:
        """The fusion from the encoders' features (module docstring): a dict with ``fused`` ``[B]`` and
        the intermediate tensors (``present``, ``fundus`` and ``oct``: the features after replacement,
        ``oct_from_fundus``, ``fundus_from_oct``, ``projected_oct``, ``fundus_side``, ``oct_side``)."""
        f, o = features["fundus"], features["oct"]
        present = self.present_mask(present, f.shape[0], f.device, "a missing modality is predicted from the "
                                    "present one, so each eye needs at least one")
        has_f = present[:, self.modalities.index("fundus")].unsqueeze(1)
        has_o = present[:, self.modalities.index("oct")].unsqueeze(1)
        if not bool(present.all()):
            # an absent modality's features are zeroed first (whatever its input held, nothing
            # non-finite reaches an MLP), then replaced by the prediction from the present one
            f, o = torch.where(has_f, f, torch.zeros_like(f)), torch.where(has_o, o, torch.zeros_like(o))
            f, o = (torch.where(has_f, f, self.oct_to_fundus(o).to(f.dtype)),
                    torch.where(has_o, o, self.fundus_to_oct(f).to(o.dtype)))
        oct_from_fundus, fundus_from_oct = self.fundus_to_oct(f), self.oct_to_fundus(o)
        projected = o @ self.feature_projection.to(o.dtype)
        oct_side = self.oct_fusion(torch.cat([o, oct_from_fundus.to(o.dtype)], dim=-1))
        tokens = torch.stack([f, projected.to(f.dtype), fundus_from_oct.to(f.dtype)], dim=1)   # [B, 3, D_f]
        fundus_side = self.fundus_attention(tokens).mean(dim=1)
        fused = self.head(torch.cat([fundus_side, oct_side.to(fundus_side.dtype)], dim=-1)).squeeze(-1)
        return {"fused": fused, "present": present, "fundus": f, "oct": o, "oct_from_fundus": oct_from_fundus,
                "fundus_from_oct": fundus_from_oct, "projected_oct": projected, "fundus_side": fundus_side,
                "oct_side": oct_side}

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict:
        """``inputs`` maps ``fundus`` and ``oct`` to float batches and ``PRESENT`` to the bool ``[B, 2]``
        mask (all present when missing). Returns ``fused`` ``[B]``, ``unimodal`` (empty), ``features``
        (each encoder's ``[B, D]``, before replacement) and ``rima`` (``fuse``'s intermediates, which
        ``rima_alignment_loss`` reads)."""
        features = self.encode(inputs)
        present = inputs.get(PRESENT)
        rima = self.fuse(features, present)
        return {"fused": rima.pop("fused"), "unimodal": {}, "features": features, "rima": rima}

    def fusion_contributions(self, features: Mapping[str, torch.Tensor],
                             present: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The fundus side's and the OCT side's additive shares of the prediction (module docstring):
        ``W_f s_f + b / 2`` and ``W_o s_o + b / 2``, which sum to the prediction of this pass."""
        out = self.fuse({m: features[m].to(self.dtype) for m in RIMA_MODALITIES}, present)   # bf16 under autocast
        d_f = out["fundus_side"].shape[-1]
        w, b = self.head.weight[0], self.head.bias[0]
        return {"fundus": out["fundus_side"] @ w[:d_f] + b / 2,
                "oct": out["oct_side"].to(w.dtype) @ w[d_f:] + b / 2}

    @torch.no_grad()
    def refresh_feature_projection(self, oct_features, fundus_features, md_db=None, sample_coupling=None) -> np.ndarray:
        """Recompute the feature projection (buffer ``feature_projection``) from the features of the
        same eyes (``[N, D_o]`` and ``[N, D_f]``, detached here) and return the feature coupling.
        The sample coupling is ``sample_coupling`` (OCT x fundus) when given, else the labelled GW
        coupling of the eyes' glaucoma stages when ``md_db`` (dB) is given (official), else COOT's."""
        if sample_coupling is None and md_db is not None:
            stages = stage_from_md(np.asarray(torch.as_tensor(md_db).detach().cpu().double()))
            sample_coupling = labelled_gw_coupling(oct_features, fundus_features, stages, stages,
                                                   epsilon=self.epsilon, max_iter=self.max_iter)
        coupling = feature_coupling(oct_features, fundus_features, sample_coupling, epsilon=self.epsilon,
                                    sinkhorn_max_iter=self.max_iter)
        projection = torch.as_tensor(projection_from_coupling(coupling)).to(self.feature_projection)
        # a new tensor, not an in-place copy: a graph built on the old projection stays valid
        self.feature_projection = projection
        return coupling


def rima_alignment_loss(model: RIMARegressor, out: dict, md_db, generator: torch.Generator | None = None,
                        refresh_projection: bool = True, details: bool = False):
    """RIMA's class-wise alignment loss (official ``ot_loss``), a 0-dim tensor with gradient:
    over the eyes whose fundus and OCT are both present, the labelled GW coupling of their detached
    fundus and OCT features (labels: glaucoma stage of ``md_db``, MD in dB ``[B]``; solved under
    ``torch.no_grad``, fundus->OCT, its transpose for OCT->fundus), one partner drawn per eye and
    direction with ``generator``, and
    ``mean(1 - cos(fundus_to_oct(f_i), o_partner)) + mean(1 - cos(oct_to_fundus(o_i), f_partner))``
    with the MLPs reading the detached features and the partners detached (official: the loss trains
    the two MLPs alone). ``refresh_projection`` (default): in training mode, also refresh the
    model's feature projection from this batch's features and coupling (official: every batch).
    ``details=True`` returns ``(loss, dict)`` with the coupling, the stages, the partners and the
    batch positions used (for figures)."""
    features, present = out["features"], out["rima"]["present"]
    both = present.all(dim=1).nonzero().flatten()
    mlps = list(model.fundus_to_oct.parameters()) + list(model.oct_to_fundus.parameters())
    if both.numel() == 0:
        loss = sum(p.sum() for p in mlps) * 0.0
        return (loss, {"eyes": both.cpu()}) if details else loss
    f, o = features["fundus"][both].detach(), features["oct"][both].detach()
    md = torch.as_tensor(md_db).detach().cpu().double()
    if md.shape != (present.shape[0],):
        raise ValueError(f"md_db must hold the batch's MD in dB, shape ({present.shape[0]},), got {tuple(md.shape)}")
    stages = stage_from_md(md[both.cpu()].numpy())
    with torch.no_grad():
        coupling = labelled_gw_coupling(f, o, stages, stages, epsilon=model.epsilon, max_iter=model.max_iter)
        oct_partner = sample_partners(coupling, generator).to(f.device)
        fundus_partner = sample_partners(coupling.T, generator).to(f.device)
        if refresh_projection and model.training:
            model.refresh_feature_projection(o, f, sample_coupling=coupling.T)
    to_oct = 1 - F.cosine_similarity(model.fundus_to_oct(f).float(), o[oct_partner].float(), dim=-1)
    to_fundus = 1 - F.cosine_similarity(model.oct_to_fundus(o).float(), f[fundus_partner].float(), dim=-1)
    loss = (to_oct.mean() + to_fundus.mean()).to(model.dtype)
    if not details:
        return loss
    return loss, {"eyes": both.cpu(), "stages": stages, "coupling": coupling, "oct_partner": oct_partner.cpu(),
                  "fundus_partner": fundus_partner.cpu()}
