"""The multimodal regressor of the Re-M3Dr setting (seed 001, section 3.1, Eq. 1): one encoder and
one unimodal regression head per modality, and a fusion head over the concatenated features.

``forward`` returns every prediction, every feature and a projection of each feature for the
contrastive loss of stage 1 (section 4.1; a two-layer MLP head as in SupCon), so any training
objective (the fused loss alone, Eq. 1's weighted sum with unimodal losses, a gradient-modulation
strategy, the stage-1 objective) can be built on one forward pass. A single-modality model is the
same class with one modality. It satisfies the model contract of the training strategies
(``remd_core.models.contract.MultimodalModel``).
"""

from __future__ import annotations

import torch
from torch import nn

from ..data.format import DatasetSpec
from ..data.labels import LabelBins
from ..data.transforms import LABELS, PRESENT
from .encoders import EncoderConfig, build_encoder
from .fds import FDS


class ModalityEncoders(nn.Module):
    """One encoder per modality and the contract's parameter split (``encoder_parameters``,
    ``head_parameters``), shared by every model of the workbench; subclasses add their heads."""

    def __init__(self, spec: DatasetSpec, modalities: tuple[str, ...] | None = None,
                 encoder: EncoderConfig | None = None):
        super().__init__()
        self.modalities = tuple(modalities or spec.modality_names)
        if not self.modalities:
            raise ValueError("a regressor needs at least one modality")
        encoder = encoder or EncoderConfig()
        self.encoders = nn.ModuleDict({m: build_encoder(spec.modality(m), encoder) for m in self.modalities})

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the weights (inputs are cast to it)."""
        return next(self.parameters()).dtype

    def encode(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``{modality: [B, F]}``: each encoder on its input, cast to the weights' dtype (a float64
        model, for CPU regression checks, takes the float32 batches of the data sets)."""
        return {m: self.encoders[m](inputs[m].to(self.dtype)) for m in self.modalities}

    def present_mask(self, present: torch.Tensor | None, batch: int, device, why: str) -> torch.Tensor:
        """The per-sample modality mask as bool ``[B, K]`` in ``self.modalities`` order (all True when
        ``present`` is None), checked for shape; a ``ValueError`` names the batch positions of samples
        with no modality present, and says ``why`` the model needs one."""
        k = len(self.modalities)
        if present is None:
            return torch.ones(batch, k, dtype=torch.bool, device=device)
        present = torch.as_tensor(present, device=device).bool()
        if tuple(present.shape) != (batch, k):
            raise ValueError(f"inputs[{PRESENT!r}] must be bool [B, K] = {(batch, k)} in the order {self.modalities}, "
                             f"got {tuple(present.shape)}")
        none = (~present.any(dim=1)).nonzero().flatten().tolist()
        if none:
            raise ValueError(f"{type(self).__name__}: the samples at batch positions {none[:20]}"
                             f"{' ...' if len(none) > 20 else ''} have no present modality (of {self.modalities}); "
                             f"{why}: drop them from the batch")
        return present

    def encoder_parameters(self):
        """Parameters shared between the fused and the unimodal objectives."""
        return [p for e in self.encoders.values() for p in e.parameters()]

    def head_parameters(self):
        """Parameters each objective owns alone: the fusion head, the unimodal heads, the projections."""
        shared = {id(p) for p in self.encoder_parameters()}
        return [p for p in self.parameters() if id(p) not in shared]


class MultimodalRegressor(ModalityEncoders):
    """Satisfies ``remd_core.models.contract.MultimodalModel``, the contract of the strategies."""

    def __init__(self, spec: DatasetSpec, modalities: tuple[str, ...] | None = None,
                 encoder: EncoderConfig | None = None, projection_dim: int = 128, fds_bins: LabelBins | None = None):
        super().__init__(spec, modalities, encoder)
        self.heads = nn.ModuleDict({m: nn.Linear(self.encoders[m].out_features, 1) for m in self.modalities})
        self.projections = nn.ModuleDict({
            m: nn.Sequential(nn.Linear(e.out_features, e.out_features), nn.ReLU(inplace=True),
                             nn.Linear(e.out_features, projection_dim))
            for m, e in self.encoders.items()})
        fused_features = sum(e.out_features for e in self.encoders.values())
        self.fusion_head = nn.Linear(fused_features, 1)
        self.fds = None if fds_bins is None else nn.ModuleDict(
            {m: FDS(e.out_features, fds_bins) for m, e in self.encoders.items()})

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict:
        """``inputs`` maps modality names to float batches. Returns ``fused`` ``[B]``,
        ``unimodal`` {modality: ``[B]``}, ``features`` {modality: ``[B, F]``} and
        ``projections`` {modality: ``[B, projection_dim]``}. Other entries of ``inputs`` (the
        ``present`` mask) are not read, except ``LABELS`` with FDS: in training, the heads then read
        each modality's features calibrated by its FDS (Yang et al. 2021; ``features`` and the
        projections stay the encoders' own, which FDS's statistics are computed from)."""
        features = self.encode(inputs)
        heads_in = features
        if self.fds is not None and LABELS in inputs:
            heads_in = {m: self.fds[m](f, inputs[LABELS], self.fds[m].last_update_epoch + 1)
                        for m, f in features.items()}
        unimodal = {m: self.heads[m](f).squeeze(-1) for m, f in heads_in.items()}
        projections = {m: self.projections[m](f) for m, f in features.items()}
        fused = self.fusion_head(torch.cat([heads_in[m] for m in self.modalities], dim=-1)).squeeze(-1)
        return {"fused": fused, "unimodal": unimodal, "features": features, "projections": projections}

    def fusion_contributions(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Each modality's share of the fused prediction: its slice of the fusion head's weight
        times its features, plus an equal share of the bias (OGM-GE's per-modality outputs,
        Peng et al. CVPR 2022). The shares sum to the fused prediction."""
        out, start = {}, 0
        weight, bias = self.fusion_head.weight, self.fusion_head.bias
        for m in self.modalities:
            width = features[m].shape[-1]
            out[m] = (features[m] @ weight[:, start:start + width].T).squeeze(-1) + bias / len(self.modalities)
            start += width
        return out
