"""Loss closures on a fixed evaluation batch, for the landscape slices and the Hessian."""

from __future__ import annotations

import torch

from ..data.format import MultimodalSplit
from ..data.transforms import prepare_inputs


def fixed_batch_loss(model, split: MultimodalSplit, label_mean: float, label_std: float, size: int = 64,
                     seed: int = 0, head: str = "fused"):
    """``loss_fn(model)``: MSE on standardised labels of head ``head`` ("fused" or a modality) over
    ``size`` samples of ``split`` drawn once with ``seed`` (no augmentation)."""
    index = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))[:size]
    batch = split.batch(index)
    kinds = split.spec.kinds
    device = next(model.parameters()).device
    inputs = prepare_inputs(batch, model.modalities, kinds, augment=False, device=device)
    target = ((batch["y"] - label_mean) / label_std).to(device)

    def loss_fn(m):
        out = m(inputs)
        pred = out["fused"] if head == "fused" else out["unimodal"][head]
        wide = torch.promote_types(pred.dtype, torch.float32)  # bf16 is upcast, float64 kept
        return torch.nn.functional.mse_loss(pred.to(wide), target.to(wide))

    return loss_fn
