"""EchoMEN's stage-2 model (Lai et al., MICCAI 2024, section 2.2) on the workbench's encoders: the
stage-1 encoders, frozen, and one multi-expert head (``imbalance.echomen.MultiExpertHead``) on their
concatenated features (one modality: its features alone).

Selected with ``TrainConfig.head = "echomen"``; the trainer's objective is then
``imbalance.echomen.multi_expert_loss`` with Eq. (4)'s weights fitted on the training MD in dB
(1 dB bins). Frozen means: the encoders' parameters take no gradient and their BatchNorm layers stay
in evaluation mode (``train()`` keeps them there), so stage 2 changes nothing in them, as the paper
freezes ``f``. ``freeze_encoders=False`` fine-tunes them with the head (not the paper's method).
The paper fuses nothing (echocardiography is one modality); for OCT + fundus the experts and the
aggregator read the concatenation of both encoders' features, as naive fusion's head does.
"""

from __future__ import annotations

import torch

from ..data.format import DatasetSpec
from ..imbalance.echomen import MultiExpertHead
from .encoders import EncoderConfig
from .regressor import ModalityEncoders


class MultiExpertRegressor(ModalityEncoders):
    """Satisfies ``remd_core.models.contract.MultimodalModel``."""

    def __init__(self, spec: DatasetSpec, modalities: tuple[str, ...] | None = None,
                 encoder: EncoderConfig | None = None, num_experts: int = 3, freeze_encoders: bool = True):
        super().__init__(spec, modalities, encoder)
        self.experts = MultiExpertHead(sum(e.out_features for e in self.encoders.values()), num_experts)
        self.freeze_encoders = bool(freeze_encoders)
        if self.freeze_encoders:
            for p in self.encoder_parameters():
                p.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.freeze_encoders:
            self.encoders.eval()
        return self

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict:
        """Returns ``fused`` (the aggregated prediction, ``[B]``), ``unimodal`` (none: the experts read
        every modality), ``features`` and ``experts`` (the head's ``MultiExpertOutput``)."""
        features = self.encode(inputs)
        out = self.experts(torch.cat([features[m] for m in self.modalities], dim=-1))
        return {"fused": out.prediction, "unimodal": {}, "features": features, "experts": out}

    def fusion_contributions(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Each modality's share of ``sum_k gate_k (W_k x + b_k)``: ``sum_k gate_k W_k[m] x_m`` plus an
        equal share of the gated bias; the shares sum to the prediction."""
        x = torch.cat([features[m] for m in self.modalities], dim=-1)
        out = self.experts(x)
        weight, bias = self.experts.experts.weight, self.experts.experts.bias
        shares, start = {}, 0
        for m in self.modalities:
            width = features[m].shape[-1]
            per_expert = features[m] @ weight[:, start:start + width].T       # [B, K]
            shares[m] = (out.gate * per_expert).sum(-1) + (out.gate * bias).sum(-1) / len(self.modalities)
            start += width
        return shares
