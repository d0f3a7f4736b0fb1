"""The multimodal regressor of the Re-M3Dr setting (seed 001, section 3.1, Eq. 1): one encoder and
one unimodal regression head per modality, and a fusion head over the concatenated features.

``forward`` returns every prediction and every feature, so any training objective (the fused
loss alone, Eq. 1's weighted sum with unimodal losses, or a gradient-modulation strategy) can be
built on one forward pass. A single-modality model is the same class with one modality.
"""

from __future__ import annotations

import torch
from torch import nn

from ..data.format import DatasetSpec
from .encoders import EncoderConfig, build_encoder


class MultimodalRegressor(nn.Module):
    def __init__(self, spec: DatasetSpec, modalities: tuple[str, ...] | None = None,
                 encoder: EncoderConfig | None = None):
        super().__init__()
        self.modalities = tuple(modalities or spec.modality_names)
        if not self.modalities:
            raise ValueError("a regressor needs at least one modality")
        encoder = encoder or EncoderConfig()
        self.encoders = nn.ModuleDict({m: build_encoder(spec.modality(m), encoder) for m in self.modalities})
        self.heads = nn.ModuleDict({m: nn.Linear(self.encoders[m].out_features, 1) for m in self.modalities})
        fused_features = sum(e.out_features for e in self.encoders.values())
        self.fusion_head = nn.Linear(fused_features, 1)

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict:
        """``inputs`` maps modality names to float batches. Returns ``fused`` ``[B]``,
        ``unimodal`` {modality: ``[B]``} and ``features`` {modality: ``[B, F]``}."""
        features = {m: self.encoders[m](inputs[m]) for m in self.modalities}
        unimodal = {m: self.heads[m](f).squeeze(-1) for m, f in features.items()}
        fused = self.fusion_head(torch.cat([features[m] for m in self.modalities], dim=-1)).squeeze(-1)
        return {"fused": fused, "unimodal": unimodal, "features": features}

    def encoder_parameters(self):
        """Parameters shared between the fused and the unimodal objectives."""
        return [p for e in self.encoders.values() for p in e.parameters()]
