"""The model contract: what a training strategy (``remd_core.optim``) may rely on in a model.

A strategy never looks inside a model beyond this. ``MultimodalRegressor`` satisfies it; any other
model (an evidential head, a mixture of modality experts) works with every strategy once it does.

- ``modalities``: the modality names, in the order of the fusion head's input.
- ``encoders``: one ``nn.Module`` per modality (``encoders[m]``), shared between the fused and that
  modality's unimodal objective. Gradient modulation acts on these (OGM-GE scales their weights'
  gradients, MMPareto solves one two-objective problem per encoder, SGM rescales their gradients).
- ``encoder_parameters()``: every encoder's parameters, encoder by encoder in the order of
  ``encoders`` (strategies slice this list per encoder).
- ``head_parameters()``: every other parameter (fusion head, unimodal heads, projections): each
  objective owns these alone, so strategies pass their gradients through unchanged. The two lists
  partition ``parameters()``.
- ``fusion_contributions(features)``: each modality's additive share of the fused prediction, from
  the encoders' features (OGM-GE's per-modality predictions); the shares sum to the fused prediction.
- ``nn.Module``'s ``parameters()`` and ``modules()`` (a strategy takes the optimizer step over all
  parameters and freezes BatchNorm statistics during extra forward passes).

The forward pass itself is not part of the contract: the training closure calls the model and
turns its outputs into a ``remd_core.optim.Losses``, which is all a strategy sees of a batch.

``isinstance(model, MultimodalModel)`` checks that the members exist (``typing.runtime_checkable``
checks names only); ``check_model`` also checks what they hold, and strategies call it in ``bind``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Protocol, runtime_checkable

import torch
from torch import nn


@runtime_checkable
class MultimodalModel(Protocol):
    """The members a strategy uses (see the module docstring for what each one means)."""

    modalities: tuple[str, ...]
    encoders: Mapping[str, nn.Module]

    def encoder_parameters(self) -> list[nn.Parameter]:
        """Parameters shared between the fused and the unimodal objectives, encoder by encoder."""
        ...

    def head_parameters(self) -> list[nn.Parameter]:
        """Every parameter that is not an encoder's."""
        ...

    def fusion_contributions(self, features: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``{modality: [B]}`` shares of the fused prediction that sum to it."""
        ...

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]: ...

    def modules(self) -> Iterator[nn.Module]: ...


def check_model(model, who: str = "a strategy") -> None:
    """Raise ``TypeError`` naming what is missing or wrong when ``model`` breaks the contract:
    a missing member, an encoder per modality, the encoder parameters in the order of ``encoders``,
    and the encoder and head parameters partitioning ``parameters()``."""
    if not isinstance(model, MultimodalModel):
        missing = [name for name in ("modalities", "encoders", "encoder_parameters", "head_parameters",
                                     "fusion_contributions", "parameters", "modules") if not hasattr(model, name)]
        raise TypeError(f"{who} needs a model satisfying remd_core.models.MultimodalModel; "
                        f"{type(model).__name__} lacks {missing}")
    if list(model.encoders) != list(model.modalities):
        raise TypeError(f"{who}: model.encoders {list(model.encoders)} must hold one encoder per modality, in the "
                        f"order of model.modalities {list(model.modalities)}")
    shared = [id(p) for p in model.encoder_parameters()]
    in_order = [id(p) for e in model.encoders.values() for p in e.parameters()]
    if shared != in_order:
        raise TypeError(f"{who}: model.encoder_parameters() must list each encoder's parameters, encoder by "
                        f"encoder in the order of model.encoders")
    heads = [id(p) for p in model.head_parameters()]
    every = [id(p) for p in model.parameters()]
    if set(shared) & set(heads) or sorted(shared + heads) != sorted(every):
        raise TypeError(f"{who}: model.encoder_parameters() and model.head_parameters() must partition "
                        f"model.parameters()")
