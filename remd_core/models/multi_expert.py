"""EchoMEN's stage-2 model (Lai et al., MICCAI 2024, section 2.2) on the workbench's encoders: the
stage-1 encoders, frozen, and one multi-expert head (``MultiExpertHead``, below) on their
concatenated features (one modality: its features alone).

Selected with ``TrainConfig.head = "echomen"``; the trainer's objective is then
``losses.echomen.multi_expert_loss`` with Eq. (4)'s weights fitted on the training MD in dB
(1 dB bins). Frozen means: the encoders' parameters take no gradient and their BatchNorm layers stay
in evaluation mode (``train()`` keeps them there), so stage 2 changes nothing in them, as the paper
freezes ``f``. ``freeze_encoders=False`` fine-tunes them with the head (not the paper's method).
The paper fuses nothing (echocardiography is one modality); for OCT + fundus the experts and the
aggregator read the concatenation of both encoders' features, as naive fusion's head does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..data.format import DatasetSpec
from ..losses.echomen import AGGREGATORS, _check_int, expert_exponents
from .encoders import EncoderConfig
from .regressor import ModalityEncoders


@dataclass
class MultiExpertOutput:
    """What ``MultiExpertHead`` returns: ``prediction`` ``[B]`` (``sum_m gate_m * experts_m``),
    ``experts`` ``[B, M]`` (each expert's prediction, column ``m`` trained with ``p_m``) and ``gate``
    ``[B, M]`` (the aggregator's ``alpha``, rows summing to 1)."""

    prediction: torch.Tensor
    experts: torch.Tensor
    gate: torch.Tensor


class MultiExpertHead(nn.Module):
    """EchoMEN's stage-2 head (section 2.2): ``M`` linear experts and an aggregator on features ``[B, D]``.

    Experts: one ``Linear(D, 1)`` each, held as the columns of one ``Linear(D, M)`` (the same maps and
    gradients); weights ~ N(0, ``weight_init_std``), bias ``bias_init`` (official code: 0.01 and the
    mean label). Aggregator ``"learned"``: ``Linear(D, hidden) -> ReLU -> Linear(hidden, M) ->
    Softmax`` (official selector, hidden 128, PyTorch's default initialisation); ``"mean"``: equal
    weights ``1/M`` (the paper's "w/o aggregator" ablation; no parameters).
    """

    def __init__(self, in_features: int, num_experts: int = 3, *, aggregator: str = "learned", hidden: int = 128,
                 bias_init: float = 0.0, weight_init_std: float = 0.01):
        super().__init__()
        exponents = expert_exponents(num_experts)
        in_features, num_experts = _check_int("in_features", in_features, 1), int(num_experts)
        if aggregator not in AGGREGATORS:
            raise ValueError(f"aggregator must be one of {AGGREGATORS}, got {aggregator!r}")
        hidden = _check_int("hidden", hidden, 1)
        if not math.isfinite(bias_init):
            raise ValueError(f"bias_init must be finite, got {bias_init}")
        if not (weight_init_std >= 0 and math.isfinite(weight_init_std)):
            raise ValueError(f"weight_init_std must be finite and >= 0, got {weight_init_std}")
        self.in_features, self.num_experts, self.aggregator_kind = in_features, num_experts, aggregator
        self.register_buffer("exponents", exponents, persistent=False)
        self.experts = nn.Linear(in_features, num_experts)
        with torch.no_grad():
            self.experts.weight.normal_(0.0, weight_init_std)
            self.experts.bias.fill_(bias_init)
        self.aggregator = (nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, num_experts))
                           if aggregator == "learned" else None)

    def forward(self, features: torch.Tensor) -> MultiExpertOutput:
        if features.ndim != 2 or features.shape[1] != self.in_features:
            raise ValueError(f"features must be [batch, {self.in_features}], got shape {tuple(features.shape)}")
        experts = self.experts(features)
        if self.aggregator is None:
            gate = torch.full_like(experts, 1.0 / self.num_experts)
        else:
            gate = torch.softmax(self.aggregator(features), dim=1)
        return MultiExpertOutput(prediction=(gate * experts).sum(dim=1), experts=experts, gate=gate)


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
