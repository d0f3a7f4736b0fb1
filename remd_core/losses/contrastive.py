"""The contrastive terms the trainer adds to the regression loss: one registry, by name
(``CONTRASTIVE``; ``TrainConfig.contrastive_loss``), in which Re-M3Dr's own AM-SupCon is one entry.

Each name is one comparator of the Re-M3Dr paper's Table 1 (or a standard deep imbalanced-regression
baseline), applied to every modality of the model and summed over modalities:

- ``am-supcon``: Re-M3Dr's stage 1 (section 4.1): the adaptive-margin SupCon of each modality's
  projections (``am_supcon``), one view, with the current margin ``m(t)``, weighted by
  ``TrainConfig.supcon_weight`` (``stage1_loss`` is the same total as one function);

- ``simclr``: NT-Xent between the projections of two augmented views (``ntxent``), no labels;
- ``rnc``: Rank-N-Contrast on the encoder's features of both views (``rnc``; the official code
  contrasts the encoder output, not a projection), label distance on standardised MD;
- ``echomen``: EchoMEN's label-distance weighted SupCon on the projections of both views
  (``echomen``): positives are the other view (the paper's "same label", radius 0), negatives are
  weighted by ``exp`` of their L1 distance in standardised MD;
- ``conr``: ConR on the projections of both views (``conr``), with labels and the fused
  predictions (which choose the negatives) in dB, so ``w = 1`` is 1 dB, about the test-retest
  variability of MD, where the official ``w = 1`` is one year of age.

Where the trainer differs from each official recipe, and why: every method keeps the regression
loss beside its contrastive term (``L = L_regression + weight * L_contrastive``; SimCLR and
Rank-N-Contrast pretrain on the contrastive loss alone, then fit a regressor): so that stage 1
selects its epoch on validation R^2 like AM-SupCon does, and so that the stage-1 objectives of
Table 1 differ only in their contrastive term. The weight is ``CONTRASTIVE_WEIGHTS``
(``TrainConfig.contrastive_weight`` overrides it): ConR's official beta 4, EchoMEN's paper lambda
0.5, and 1 for SimCLR and Rank-N-Contrast (our choice: their official recipes have no regression
term to weigh against). Each method sees two augmented views (``OFFICIAL_VIEWS``), as its official
code does; the regression loss is taken on the first view only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from .am_supcon import am_supcon_loss
from .conr import CONR_BETA, conr_loss
from .echomen import ldw_supcon_loss
from .ntxent import nt_xent_loss
from .rnc import rnc_loss


@dataclass(frozen=True)
class Contrast:
    """What a contrastive term may read besides the model's outputs: ``target``, the ``[B]`` standardised
    labels; ``label_mean`` and ``label_std``, which map them (and the predictions) to dB; stage 1's
    current ``margin`` and the SupCon ``temperature``."""

    target: torch.Tensor
    label_mean: float
    label_std: float
    margin: float | None = None
    temperature: float = 0.07


@dataclass(frozen=True)
class ContrastiveLoss:
    """One registry entry: ``term(first, second, contrast, modality)`` is the unweighted term of one
    modality on the model's outputs of the first and second augmented view (``second`` None with one
    view); ``views`` the official number of views; ``weight`` the official weight against the regression
    loss (None: ``TrainConfig.supcon_weight``); ``needs_two_views``: refuses a single view."""

    term: Callable
    views: int
    weight: float | None
    needs_two_views: bool = False


def _am_supcon(first, second, contrast: Contrast, m: str) -> torch.Tensor:
    if contrast.margin is None:
        raise ValueError("am-supcon needs the current margin m(t)")
    return am_supcon_loss(first["projections"][m], contrast.target, contrast.margin, temperature=contrast.temperature)


def _simclr(first, second, contrast: Contrast, m: str) -> torch.Tensor:
    return nt_xent_loss(first["projections"][m], second["projections"][m])


def _rnc(first, second, contrast: Contrast, m: str) -> torch.Tensor:
    views = [first] if second is None else [first, second]
    return rnc_loss(torch.cat([v["features"][m] for v in views]), contrast.target.detach().repeat(len(views)))


def _echomen(first, second, contrast: Contrast, m: str) -> torch.Tensor:
    views = [first] if second is None else [first, second]
    return ldw_supcon_loss(torch.stack([v["projections"][m] for v in views], dim=1), contrast.target.detach())


def _conr(first, second, contrast: Contrast, m: str) -> torch.Tensor:
    views = [first] if second is None else [first, second]
    y = contrast.target.detach()
    y_db = (y * contrast.label_std + contrast.label_mean).repeat(len(views))
    pred_db = torch.cat([v["fused"].detach() for v in views]).to(y.dtype) * contrast.label_std + contrast.label_mean
    return conr_loss(torch.cat([v["projections"][m] for v in views]), y_db, pred_db)


CONTRASTIVE: dict[str, ContrastiveLoss] = {
    "am-supcon": ContrastiveLoss(_am_supcon, views=1, weight=None),
    "simclr": ContrastiveLoss(_simclr, views=2, weight=1.0, needs_two_views=True),
    "rnc": ContrastiveLoss(_rnc, views=2, weight=1.0),
    "echomen": ContrastiveLoss(_echomen, views=2, weight=0.5),
    "conr": ContrastiveLoss(_conr, views=2, weight=CONR_BETA),
}
# the registry's columns under the names the rest of the workbench has used
CONTRASTIVE_LOSSES = tuple(CONTRASTIVE)
OFFICIAL_VIEWS = {name: entry.views for name, entry in CONTRASTIVE.items()}
CONTRASTIVE_WEIGHTS = {name: entry.weight for name, entry in CONTRASTIVE.items() if entry.weight is not None}
NEEDS_TWO_VIEWS = tuple(name for name, entry in CONTRASTIVE.items() if entry.needs_two_views)


def contrastive_term(kind: str, first: Mapping, second: Mapping | None, contrast: Contrast) -> torch.Tensor:
    """The unweighted contrastive term ``kind``, summed over the model's modalities.

    ``first``, ``second``: the model's outputs (``projections``, ``features``, ``fused``) on the two
    augmented views of the batch (``second`` None: one view; SimCLR refuses it)."""
    if kind not in CONTRASTIVE:
        raise ValueError(f"unknown contrastive loss {kind!r}; known: {sorted(CONTRASTIVE)}")
    entry = CONTRASTIVE[kind]
    if second is None and entry.needs_two_views:
        raise ValueError(f"{kind} contrasts two augmented views of each sample; it got one")
    return sum(entry.term(first, second, contrast, m) for m in first["projections"])
