"""SimMLM for MD regression: the Dynamic Mixture of Modality Experts (DMoME) and the More-vs-Fewer
(MoFe) ranking loss (Li, Chen and Han, "SimMLM: A Simple Framework for Multi-modal Learning with
Missing Modality", ICCV 2025; seed 004).

The mixture (``SimMLMRegressor``)
    One expert per modality predicts MD from its own encoder's features; a router reads the
    encoders' features of all modalities together and gives one logit per modality; the logit of a
    modality the eye lacks is set to ``-inf`` and a softmax over modalities turns the logits into
    weights ``w`` (an absent modality gets exactly 0); the prediction is ``sum_m w_m * expert_m``.

The MoFe loss (``mofe_loss``)
    For a pair of copies of one eye, one with more modalities and one with a strict subset of them,
    ``lambda * relu(err_more - err_fewer)`` averaged over the pairs, ``lambda = 0.1``: adding a
    modality should never make the error grow. ``per_sample_error`` gives the per-eye errors
    (squared or absolute) and ``fewer_subset`` draws the fewer-modality copy's mask.

How the trainer uses it (``mofe_term`` does steps 2-4 in one call)::

    out = model(inputs)                                    # 1. regression loss on out["fused"]
    fewer, has_pair = fewer_subset(inputs[PRESENT], gen)   # 2. the fewer copy's mask
    out_fewer = model(with_present(inputs, fewer, model.modalities))   # 3. same inputs, fewer modalities
    loss = loss + mofe_loss(per_sample_error(out["fused"][has_pair], y[has_pair]),
                            per_sample_error(out_fewer["fused"][has_pair], y[has_pair]))   # 4.

What the official code does (the authors' release, read in the copy stored as Tony-Khor/simmlm:
``models/dmome.py``, ``loss/blended_loss.py``, ``dataset/processors.py``,
``configs_joint_training.py``, ``train/trainer_joint_training.py``, ``pipeline_joint_training.py``;
BraTS 2018 segmentation with four MRI sequences):

- Experts: one whole nnU-Net per modality on that modality's channel alone (pretrained one by one
  in a stage 1, then trained jointly); the default ``DMoMEOutputLevel`` mixes the experts' outputs
  (segmentation logits, one per class) at the output level. Variants mix probabilities or decoder
  features followed by one shared head; the output-level one is the default and the one here.
- Router: ONE network reading every modality JOINTLY: the raw multi-channel volume (an absent
  sequence is an all-zero channel) goes through five blocks of stride-2 3x3x3 convolution (as many
  channels as modalities), affine instance norm and ReLU, is flattened and mapped by one linear
  layer to one logit per (modality, class). It does not read per-modality features one by one,
  and it reads an absent modality as the zeros of its input channel.
- Masking: a modality is absent when its whole input channel is zero; its logits are set to -inf,
  then softmax over the modality axis; absent experts are not run (their output is a zero tensor).
  A sample with every modality absent would give NaN; the code never draws one (the drop
  combinations exclude dropping all four).
- MoFe: each training sample is loaded twice and both copies go through one batch; the dropped sets
  (d_more, d_fewer) are drawn from the 15 combinations by rejection until one strictly contains the
  other (and the first draw is not the empty set), then ordered. Enumerating that sampler shows
  that, given the more-modality copy's set, the fewer copy's set is uniform over the strict
  non-empty subsets of it. Per-sample Dice and BCE losses (averaged over voxels) give, per class,
  ``relu(loss_more - loss_fewer)``, averaged over pairs and classes, Dice and BCE terms summed;
  ``task = seg_loss(both copies) + 0.1 * ranking`` (``ranking_loss_weight = 0.1``). The task loss
  covers BOTH copies, not only the more-modality one; both sides of the ranking term carry gradients.
- Optimiser: Adam, learning rate 1e-3 for the joint stage (1e-2 for the expert pretraining).

Where this differs, and why:

1. Experts are the workbench's encoders (``ModalityEncoders``: the ResNets of the fundus and OCT)
   plus a head on their features, so every Table 1 row shares one backbone; the official expert is a
   whole U-Net whose last layer is a 1x1x1 convolution, i.e. linear in its own features, so the head
   here is linear by default (``expert_hidden=None``); ``expert_hidden=H`` gives Linear-ReLU-Linear.
2. The router reads the encoders' features (concatenated, one vector per eye) instead of the raw
   images, since a fundus photograph and an OCT volume cannot be stacked as channels of one volume.
   It mirrors the official "absent = zero channel" by zeroing an absent modality's features before
   the concatenation (an encoder's features of a blank image are not zero). The official router is
   a conv stack then one linear layer; on feature vectors we use an MLP: Linear(sum D, H), ReLU,
   Linear(H, K) with ``router_hidden=64`` (the official final linear reads 64 values per modality
   channel, 4x4x4 after five halvings of 128), ``router_hidden=None`` gives one linear layer.
   One logit per modality (regression has one output; the official has one per class).
3. Absence is read from ``inputs[PRESENT]`` (bool ``[B, K]``, all present when missing), not
   inferred from an all-zero input: a real image is never tested for zeros.
4. Every expert runs on the whole batch and an absent one's term is replaced by an exact zero
   (``torch.where``), instead of a per-sample loop; the result is the same and a non-finite output of
   an absent expert cannot leak.
5. A sample with no present modality raises ``ValueError`` naming its batch positions.
6. Pairs: the more-modality copy is the batch as the missing-modality protocol left it (its
   ``present`` mask) and only the fewer copy is drawn, uniform over the strict non-empty subsets of
   the present set: the official conditional distribution (see above). The official also draws the
   more copy from the drop combinations; here that is the job of the training missing rates.
   Both copies share one input (the official augments them independently, which mixes augmentation
   noise into the ranking term); eyes with a single present modality get no pair.
7. The loss is regression: per-eye squared (default) or absolute error instead of Dice + BCE.
   ``mofe_term`` returns the ranking term alone and the fewer copy's output; the trainer's task loss
   covers both copies in one batch mean, as the official one does (``training.objectives.SimMLMObjective``).
8. No stage-1 expert pretraining here: a recipe may start from the workbench's stage-1 encoders.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn
from torch.nn import functional as F

from ..data.format import DatasetSpec
from ..data.transforms import PRESENT
from .encoders import EncoderConfig
from .regressor import ModalityEncoders

MOFE_WEIGHT = 0.1
"""lambda of the MoFe ranking loss (official ``ranking_loss_weight``)."""
ROUTER_HIDDEN = 64
"""Hidden width of the router MLP (our choice; see the module docstring, difference 2)."""
ERROR_KINDS = ("squared", "absolute")


def _mlp(d_in: int, d_out: int, hidden: int | None) -> nn.Module:
    if hidden is None:
        return nn.Linear(d_in, d_out)
    if int(hidden) < 1:
        raise ValueError(f"hidden width must be a positive int or None, got {hidden!r}")
    return nn.Sequential(nn.Linear(d_in, int(hidden)), nn.ReLU(inplace=True), nn.Linear(int(hidden), d_out))


NONE_PRESENT = "the mixture's softmax over -inf logits would be NaN"


class SimMLMRegressor(ModalityEncoders):
    """DMoME for regression on the workbench's encoders; satisfies
    ``remd_core.models.contract.MultimodalModel`` (the experts and the router are head parameters).

    ``expert_hidden``: None (default) for a linear expert head on each modality's features, or a
    hidden width for Linear-ReLU-Linear. ``router_hidden``: the router MLP's hidden width (64), or
    None for one linear layer over the concatenated features."""

    def __init__(self, spec: DatasetSpec, modalities: tuple[str, ...] | None = None,
                 encoder: EncoderConfig | None = None, expert_hidden: int | None = None,
                 router_hidden: int | None = ROUTER_HIDDEN):
        super().__init__(spec, modalities, encoder)
        self.experts = nn.ModuleDict({m: _mlp(e.out_features, 1, expert_hidden) for m, e in self.encoders.items()})
        width = sum(e.out_features for e in self.encoders.values())
        self.router = _mlp(width, len(self.modalities), router_hidden)

    def mixture(self, features: Mapping[str, torch.Tensor], present: torch.Tensor | None = None) -> dict:
        """The mixture from the encoders' features: ``experts`` {m: [B]}, ``logits`` [B, K] (-inf where
        absent), ``weights`` [B, K] (softmax, exactly 0 where absent), ``contributions`` {m: [B]}
        (``w_m * expert_m``, exactly 0 where absent), ``fused`` [B] (their sum) and ``present``."""
        first = features[self.modalities[0]]
        batch = first.shape[0]
        mask = self.present_mask(present, batch, first.device, NONE_PRESENT)
        experts = {m: self.experts[m](features[m]).squeeze(-1) for m in self.modalities}
        routed = torch.cat([features[m] * mask[:, j:j + 1].to(features[m].dtype)
                            for j, m in enumerate(self.modalities)], dim=-1)
        logits = self.router(routed).masked_fill(~mask, float("-inf"))
        weights = torch.softmax(logits, dim=-1)
        contributions = {m: torch.where(mask[:, j], weights[:, j] * experts[m], torch.zeros_like(experts[m]))
                         for j, m in enumerate(self.modalities)}
        fused = contributions[self.modalities[0]]
        for m in self.modalities[1:]:
            fused = fused + contributions[m]
        return {"experts": experts, "logits": logits, "weights": weights, "contributions": contributions,
                "fused": fused, "present": mask}

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict:
        """``inputs`` maps modality names to float batches and ``PRESENT`` to the bool ``[B, K]`` mask in
        the order of ``self.modalities`` (all present when missing). Returns ``fused`` [B],
        ``unimodal`` {m: expert prediction [B]} (computed for every modality; an absent modality's
        is its expert on the zero-filled input: mask it before using it as a loss), ``features``
        {m: [B, D]} (the encoders' own), ``router`` (the weights [B, K]), ``router_logits`` and
        ``present`` (the mask used). Raises ``ValueError`` for a sample with no present modality."""
        batch = inputs[self.modalities[0]].shape[0]
        present = self.present_mask(inputs.get(PRESENT), batch, inputs[self.modalities[0]].device, NONE_PRESENT)
        features = self.encode(inputs)
        mix = self.mixture(features, present)
        return {"fused": mix["fused"], "unimodal": mix["experts"], "features": features,
                "router": mix["weights"], "router_logits": mix["logits"], "present": mix["present"]}

    def fusion_contributions(self, features: Mapping[str, torch.Tensor],
                             present: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """``{m: w_m * expert_m}`` [B], which sum to the prediction for the same ``present`` (all
        present when None: a caller that knows the batch's mask, such as a strategy on a batch with
        missing modalities, should pass ``out["present"]``)."""
        return self.mixture(features, present)["contributions"]


def per_sample_error(pred: torch.Tensor, target: torch.Tensor, kind: str = "squared") -> torch.Tensor:
    """Per-sample error ``[B]``: ``(pred - target)**2`` (``"squared"``) or ``|pred - target|`` (``"absolute"``)."""
    if kind not in ERROR_KINDS:
        raise ValueError(f"kind must be one of {ERROR_KINDS}, got {kind!r}")
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} must have one shape")
    diff = pred - target.to(pred.dtype)
    return diff * diff if kind == "squared" else diff.abs()


def mofe_loss(err_more: torch.Tensor, err_fewer: torch.Tensor, weight: float = MOFE_WEIGHT) -> torch.Tensor:
    """More-vs-Fewer ranking loss: ``weight * mean_pairs relu(err_more - err_fewer)``, where element i
    of both is the error of the same sample with more and with fewer modalities. Zero (still attached
    to the graph) when there are no pairs."""
    weight = float(weight)
    if not weight >= 0.0:
        raise ValueError(f"weight must be >= 0, got {weight}")
    if err_more.shape != err_fewer.shape:
        raise ValueError(f"err_more {tuple(err_more.shape)} and err_fewer {tuple(err_fewer.shape)} must pair up")
    gap = err_more - err_fewer
    if gap.numel() == 0:
        return gap.sum() * 0.0
    return weight * F.relu(gap).mean()


def fewer_subset(present: torch.Tensor, generator: torch.Generator | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """The fewer-modality copy's mask for MoFe: ``(fewer [B, K] bool, has_pair [B] bool)``.

    For a sample with ``n >= 2`` present modalities, ``fewer`` is a strict non-empty subset of its
    present set, drawn uniformly among the ``2**n - 2`` such subsets (an integer ``r`` uniform in
    ``1 .. 2**n - 2`` whose bit ``i`` keeps the ``i``-th present modality); the official sampler
    gives the same conditional distribution. A sample with one present modality has no pair
    (``has_pair`` False) and keeps its own mask, so a forward pass over the whole batch with
    ``fewer`` never meets a sample with nothing present. Draws come from ``generator`` (on the CPU:
    one float64 per sample), so they reproduce by its seed whatever device ``present`` is on."""
    present = torch.as_tensor(present).bool()
    if present.dim() != 2:
        raise ValueError(f"present must be bool [B, K], got shape {tuple(present.shape)}")
    if present.shape[1] > 30:
        raise ValueError(f"fewer_subset draws subsets as integers: at most 30 modalities, got {present.shape[1]}")
    n = present.sum(dim=1).to(torch.int64)
    has_pair = n >= 2
    choices = (2 ** n - 2).clamp(min=1)                       # strict non-empty subsets (1 for no pair)
    u = torch.rand(present.shape[0], generator=generator, dtype=torch.float64).to(present.device)
    r = 1 + torch.minimum((u * choices.double()).floor().to(torch.int64), choices - 1)
    rank = present.to(torch.int64).cumsum(dim=1) - 1           # i-th present modality -> bit i
    keep = ((r.unsqueeze(1) >> rank.clamp(min=0)) & 1).bool()
    fewer = torch.where(has_pair.unsqueeze(1), present & keep, present)
    return fewer, has_pair


def with_present(inputs: Mapping, present: torch.Tensor, modalities: tuple[str, ...],
                 rows: torch.Tensor | None = None) -> dict:
    """Model inputs for another modality mask: each modality's tensor multiplied by its column of
    ``present`` (zero-filled like ``transforms.prepare_inputs``) and ``PRESENT`` set to it; with a bool
    ``rows`` [B], only those samples (of the modalities and the mask). Other keys are left out."""
    present = torch.as_tensor(present).bool()
    if rows is not None:
        rows = torch.as_tensor(rows, device=present.device).bool()
        present = present[rows]
    out = {PRESENT: present}
    for j, m in enumerate(modalities):
        x = inputs[m] if rows is None else inputs[m][rows.to(inputs[m].device)]
        keep = present[:, j].to(device=x.device, dtype=x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
        out[m] = x * keep
    return out


def mofe_term(model: SimMLMRegressor, inputs: Mapping, target: torch.Tensor, out: Mapping,
              generator: torch.Generator | None = None, *, weight: float = MOFE_WEIGHT,
              kind: str = "squared") -> tuple[torch.Tensor, dict]:
    """The MoFe term of a batch: draw the fewer masks (``fewer_subset`` on the mask ``out`` used),
    run ``model`` once more on the same inputs with those masks (``with_present``) and compare
    per-sample errors with ``out["fused"]`` on the samples with a pair. The second forward runs on the
    whole batch (a sample without a pair keeps its own mask and is left out of the loss), so a
    training-mode BatchNorm never meets a batch of one pair. Returns ``(loss, info)``; ``info`` holds
    ``has_pair`` [B], ``fewer`` [B, K] and ``out_fewer`` (the second forward, every sample of the
    batch; None without pairs)."""
    fewer, has_pair = fewer_subset(out["present"], generator)
    if not bool(has_pair.any()):
        return out["fused"].sum() * 0.0, {"has_pair": has_pair, "fewer": fewer, "out_fewer": None}
    out_fewer = model(with_present(inputs, fewer, model.modalities))
    rows = has_pair.to(out["fused"].device)
    y = target[rows.to(target.device)].to(out["fused"].device)
    loss = mofe_loss(per_sample_error(out["fused"][rows], y, kind),
                     per_sample_error(out_fewer["fused"][rows], y, kind), weight)
    return loss, {"has_pair": has_pair, "fewer": fewer, "out_fewer": out_fewer}
