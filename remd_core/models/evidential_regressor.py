"""EyeMoSt and EyeMoSt+ as models of the workbench: the encoders of ``MultimodalRegressor`` with an
evidential head (``evidential.EvidentialHead``) in place of the linear fusion and unimodal heads.

The model is selected in the training config (``TrainConfig.head``: ``"eyemost"`` or
``"eyemost-plus"``); any strategy trains it, because its loss reaches the strategy as the usual
``Losses`` split (``evidential_losses``): the fused Student-t term as ``fused``, each modality's NIG
term as ``unimodal[m]``, EyeMoSt+'s confidence term in ``extra``. With ``joint`` and
``unimodal_weight = 1`` the sum is the official loss exactly (``evidential.evidential_loss``).

Where this differs from the official code (Cocofeat/EyeMoSt), beyond the differences listed in
``evidential``: the encoders are the workbench's (a 2-D ResNet on the fundus photograph, the
B-scan encoder of ``EncoderConfig.oct_encoder`` on the OCT volume), not the official Res2Net-50 and
3-D ResNet backbones, so every Table 1 row of the workbench shares one backbone and differs in the
method alone. The per-modality head is the official two-layer one (ReLU, Linear(D, 64), ReLU,
Linear(64, 4)); ``hidden=None`` gives a single linear layer.
"""

from __future__ import annotations

import torch

from ..data.format import DatasetSpec
from ..data.transforms import PRESENT
from .encoders import EncoderConfig
from .evidential import CONFIDENCE_WEIGHT, EvidentialHead, EvidentialOutput, StudentT, evidential_terms
from .regressor import ModalityEncoders

EVIDENTIAL_HEADS = {"eyemost": 0.0, "eyemost-plus": CONFIDENCE_WEIGHT}
"""Evidential head name -> weight of EyeMoSt+'s confidence-consistency loss (0: EyeMoSt)."""
OFFICIAL_HIDDEN = 64


class EvidentialRegressor(ModalityEncoders):
    """Satisfies ``remd_core.models.contract.MultimodalModel``. ``confidence_weight`` is the weight of
    EyeMoSt+'s confidence-consistency loss (``EVIDENTIAL_HEADS``)."""

    def __init__(self, spec: DatasetSpec, modalities: tuple[str, ...] | None = None,
                 encoder: EncoderConfig | None = None, hidden: int | None = OFFICIAL_HIDDEN,
                 confidence_weight: float = 0.0):
        super().__init__(spec, modalities, encoder)
        self.evidential = EvidentialHead({m: e.out_features for m, e in self.encoders.items()}, hidden=hidden)
        self.confidence_weight = float(confidence_weight)

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict:
        """``inputs`` maps modality names to float batches, and ``PRESENT`` to the bool ``[B, K]`` mask
        of acquired modalities (all present when missing). Returns ``fused`` (the fused Student-t's
        location, ``[B]``), ``unimodal`` (each modality's NIG location), ``features``, ``evidential``
        (the whole ``EvidentialOutput``) and ``predictive`` (the fused Student-t)."""
        features = self.encode(inputs)
        # the likelihood's lgamma and logs in the weights' dtype, never in an autocast's bf16
        with torch.autocast(next(iter(features.values())).device.type, enabled=False):
            out = self.evidential({m: f.to(self.dtype) for m, f in features.items()}, inputs.get(PRESENT))
        return {"fused": out.prediction, "unimodal": {m: p.gamma for m, p in out.nig.items()},
                "features": features, "evidential": out, "predictive": out.fused}

    def fusion_contributions(self, features: dict[str, torch.Tensor],
                             present: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Each modality's df-weighted share of the fused location (``EvidentialHead.fusion_contributions``)."""
        return self.evidential.fusion_contributions(features, present)


def evidential_losses(out: EvidentialOutput, target: torch.Tensor, confidence_weight: float, multimodal: bool):
    """``(fused, unimodal, extra)`` of ``remd_core.optim.Losses`` from ``evidential.evidential_terms``.
    A model of one modality has no unimodal objective beside its fused one, so its NIG term joins
    ``extra`` (back-propagated by every strategy); EyeMoSt+'s confidence term is ``extra`` too."""
    terms = evidential_terms(out, target, confidence_weight=confidence_weight)
    if multimodal:
        return terms.fused, terms.unimodal, terms.confidence
    return terms.fused, {}, terms.confidence + sum(terms.unimodal.values())


def standardised_to_labels(t: StudentT, label_mean: float, label_std: float) -> StudentT:
    """A Student-t over standardised labels, in label units (location shifted and scaled, scale
    scaled, degrees of freedom unchanged)."""
    return StudentT(loc=t.loc * label_std + label_mean, scale=t.scale * label_std, df=t.df)
