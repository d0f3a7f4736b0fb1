"""The contrastive terms the trainer adds to the regression loss, by name (``TrainConfig.contrastive_loss``).

Each name is one comparator of the Re-M3Dr paper's Table 1 (or a standard deep imbalanced-regression
baseline), applied to every modality of the model and summed over modalities, as the adaptive-margin
SupCon of stage 1 is (``remd_core.losses.stage1_objective``):

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

from collections.abc import Mapping

import torch

from .conr import CONR_BETA, conr_loss
from .echomen import ldw_supcon_loss
from .ntxent import nt_xent_loss
from .rnc import rnc_loss

CONTRASTIVE_LOSSES = ("am-supcon", "simclr", "rnc", "echomen", "conr")
OFFICIAL_VIEWS = {"am-supcon": 1, "simclr": 2, "rnc": 2, "echomen": 2, "conr": 2}
CONTRASTIVE_WEIGHTS = {"simclr": 1.0, "rnc": 1.0, "echomen": 0.5, "conr": CONR_BETA}
NEEDS_TWO_VIEWS = ("simclr",)


def contrastive_term(kind: str, first: Mapping, second: Mapping | None, target: torch.Tensor,
                     label_mean: float, label_std: float) -> torch.Tensor:
    """The unweighted contrastive term ``kind`` (not ``am-supcon``, which needs the margin and stays in
    ``losses.stage1_objective``), summed over the model's modalities.

    ``first``, ``second``: the model's outputs (``projections``, ``features``, ``fused``) on the two
    augmented views of the batch (``second`` None: one view; SimCLR refuses it). ``target``: ``[B]``
    standardised labels; ``label_mean``, ``label_std`` map them (and the predictions) to dB for ConR."""
    if kind not in CONTRASTIVE_WEIGHTS:
        raise ValueError(f"unknown contrastive loss {kind!r} here; known: {sorted(CONTRASTIVE_WEIGHTS)}")
    if second is None and kind in NEEDS_TWO_VIEWS:
        raise ValueError(f"{kind} contrasts two augmented views of each sample; it got one")
    views = [first] if second is None else [first, second]
    y = target.detach()
    terms = []
    for m in first["projections"]:
        if kind == "simclr":
            terms.append(nt_xent_loss(first["projections"][m], second["projections"][m]))
        elif kind == "rnc":
            terms.append(rnc_loss(torch.cat([v["features"][m] for v in views]), y.repeat(len(views))))
        elif kind == "echomen":
            terms.append(ldw_supcon_loss(torch.stack([v["projections"][m] for v in views], dim=1), y))
        else:
            y_db = (y * label_std + label_mean).repeat(len(views))
            pred_db = torch.cat([v["fused"].detach() for v in views]).to(y.dtype) * label_std + label_mean
            terms.append(conr_loss(torch.cat([v["projections"][m] for v in views]), y_db, pred_db))
    return sum(terms)
