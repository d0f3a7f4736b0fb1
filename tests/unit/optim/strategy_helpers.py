"""Helpers shared by the strategy tests (``test_strategies``, ``test_reference_equivalence``)."""

import torch

from remd_core.optim import Losses


def closure(model, inputs, y):
    """The ``compute`` a strategy calls: MSE of the fused and of every unimodal prediction."""
    def compute():
        out = model(inputs)
        mse = torch.nn.functional.mse_loss
        return Losses(fused=mse(out["fused"], y), unimodal={m: mse(p, y) for m, p in out["unimodal"].items()},
                      features=out["features"], target=y)
    return compute


def make_conflict(model):
    """Fusion head = minus half the unimodal heads: with a target far above every prediction the
    fused and unimodal losses pull each encoder in opposite directions (cosine about -1)."""
    with torch.no_grad():
        start = 0
        for m in model.modalities:
            width = model.heads[m].weight.shape[1]
            model.fusion_head.weight[:, start:start + width] = -0.5 * model.heads[m].weight
            model.heads[m].bias.zero_()
            start += width
        model.fusion_head.bias.zero_()
