"""Regression losses: MSE, L1, SMAPE, 1 - R^2 and the paper's SMAPE + R^2 combination, by name
(``regression_loss``).

Source: Re-M3Dr (seed 001), section 5.2: "we use a combination of SMAPE and R^2 as loss function"
(``smape_r2_loss``; the paper gives no formula, see there). SMAPE as in the MICCAI STAGE challenge
(``evaluation.metrics.smape``). Units: whatever labels are passed; the trainer passes standardised
MD, ``(MD - mean) / SD`` of the training split.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from functools import partial

import torch

from ..evaluation.metrics import SMAPE_EPS

RegressionLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

SMAPE_FLOOR_DB = 1.0
"""Floor (dB) of the SMAPE denominator ``(|y| + |yhat|) / 2`` in the TRAINING loss ``smape_r2_loss``.
Without it the term's gradient grows like ``1 / (|y| + |yhat|)`` for eyes near MD 0 dB (normal eyes,
a large share of any glaucoma clinic), up to ``1 / SMAPE_EPS = 1000`` per dB, while an eye predicted
on the wrong side of 0 dB sits at SMAPE's ceiling of 2 with no gradient at all. With the floor the
gradient is at most ``2 / 1 dB`` and near 0 dB the term is the absolute error. The floor sits at the
size of MD test-retest variation in normal eyes (about 1 dB), below which a relative error carries
no information. Our choice; the paper gives no
formula (section 5.2)."""

MIN_LABEL_VAR = 1e-2
"""Floor on the batch label variance inside ``1 - R^2`` (units of the labels passed to the loss;
the trainer passes standardised labels, so (0.1 SD)^2). See ``one_minus_r2``."""


# --------------------------------------------------------------------------------------------------
# Regression losses
# --------------------------------------------------------------------------------------------------

def _pair(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Flatten both to 1-D after checking sizes ([B] vs [B, 1] would otherwise broadcast to [B, B])."""
    if pred.numel() != target.numel():
        raise ValueError(f"pred has {pred.numel()} values but target has {target.numel()}")
    return pred.reshape(-1), target.reshape(-1).to(pred.dtype)


def mse_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error (in the units passed; the trainer passes standardised labels)."""
    pred, target = _pair(pred, target)
    return ((pred - target) ** 2).mean()


def l1_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute error (in the units passed)."""
    pred, target = _pair(pred, target)
    return (pred - target).abs().mean()


def smape_loss(pred: torch.Tensor, target: torch.Tensor, eps: float = SMAPE_EPS) -> torch.Tensor:
    """SMAPE as a fraction, ``mean(|y - yhat| / max((|y| + |yhat|) / 2, eps))``, the same definition
    and denominator floor as ``remd_core.metrics.smape`` (see ``metrics.SMAPE_EPS``). Meaningful
    only in the labels' original units (dB), not on standardised labels."""
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    pred, target = _pair(pred, target)
    denom = ((target.abs() + pred.abs()) / 2).clamp(min=eps)
    return ((target - pred).abs() / denom).mean()


def one_minus_r2(pred: torch.Tensor, target: torch.Tensor,
                 min_label_var: float = MIN_LABEL_VAR) -> torch.Tensor:
    """``1 - R^2`` over the batch, ``SSE / SST`` with ``SST = sum (y - mean(y))^2``, guarded:

    - a batch of fewer than 2 samples has no R^2: the result is a zero attached to ``pred``'s graph;
    - the denominator is ``max(SST, B * min_label_var)``: a batch whose labels (nearly) coincide
      would otherwise divide by (almost) zero and blow the loss up. With the default floor and the
      trainer's standardised labels this binds only when the batch SD is below 0.1 training SD;
    - with ``min_label_var = 0`` and all labels equal the result is again an attached zero.
    """
    if not min_label_var >= 0:
        raise ValueError(f"min_label_var must be >= 0, got {min_label_var}")
    pred, target = _pair(pred, target)
    n = target.numel()
    if n < 2:
        return (pred * 0.0).sum()
    sse = ((target - pred) ** 2).sum()
    sst = ((target - target.mean()) ** 2).sum()
    denom = torch.clamp(sst, min=n * min_label_var)
    if not bool(denom > 0):
        return (pred * 0.0).sum()
    return sse / denom


def smape_r2_loss(pred: torch.Tensor, target: torch.Tensor, *, label_mean: float = 0.0,
                  label_std: float = 1.0, smape_weight: float = 1.0, r2_weight: float = 1.0,
                  eps: float = SMAPE_FLOOR_DB, min_label_var: float = MIN_LABEL_VAR) -> torch.Tensor:
    """The paper's "combination of SMAPE and R^2" (section 5.2), defined by us as

        smape_weight * SMAPE(pred_dB, target_dB) + r2_weight * (1 - R^2_batch(pred, target))

    The paper gives no formula: the sum, the unit weights and the guards are our choice.

    Units: the trainer standardises labels, ``(MD - mean) / SD``, before the loss. SMAPE on
    standardised labels would divide by values near zero for every eye close to the training mean,
    so SMAPE is computed on labels mapped back to dB, ``x * label_std + label_mean`` (pass the
    training mean and SD; the defaults 0 and 1 mean "already in original units"). R^2 is invariant to
    that affine map and is computed on the values passed (so ``min_label_var`` is in those units).
    Even in dB, SMAPE is large for MD near 0 dB (normal eyes): a property of the paper's loss.

    Guards: the SMAPE denominator is floored at ``eps`` dB (``SMAPE_FLOOR_DB``, 1 dB, as a training
    loss; the reported metric keeps ``metrics.SMAPE_EPS``): each term's gradient with respect to
    the prediction in dB is then at most ``2 / eps`` per dB, however close to 0 dB the eye's MD is.
    ``1 - R^2`` is dropped for a batch of one and floored in its denominator (see ``one_minus_r2``),
    so no batch gives NaN or inf.
    """
    if not label_std > 0:
        raise ValueError(f"label_std must be > 0, got {label_std}")
    if not math.isfinite(label_mean):
        raise ValueError(f"label_mean must be finite, got {label_mean}")
    for name, value in (("smape_weight", smape_weight), ("r2_weight", r2_weight)):
        if not value >= 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
    pred, target = _pair(pred, target)
    smape = smape_loss(pred * label_std + label_mean, target * label_std + label_mean, eps=eps)
    return smape_weight * smape + r2_weight * one_minus_r2(pred, target, min_label_var=min_label_var)


REGRESSION_LOSSES: dict[str, RegressionLoss] = {
    "mse": mse_loss,
    "l1": l1_loss,
    "smape_r2": smape_r2_loss,
}


def regression_loss(name: str, **kwargs) -> RegressionLoss:
    """The regression loss ``callable(pred, target)`` called ``name`` ("mse", "l1", "smape_r2").

    Keyword arguments are bound to the loss (for example
    ``regression_loss("smape_r2", label_mean=m, label_std=s)``); an argument the loss does not take
    is a ``ValueError`` here, not a surprise at the first batch.
    """
    if name not in REGRESSION_LOSSES:
        raise ValueError(f"unknown regression loss {name!r}; known: {sorted(REGRESSION_LOSSES)}")
    fn = REGRESSION_LOSSES[name]
    if not kwargs:
        return fn
    try:
        inspect.signature(fn).bind(None, None, **kwargs)
    except TypeError as err:
        raise ValueError(f"regression loss {name!r} does not take {sorted(kwargs)}: {err}") from None
    return partial(fn, **kwargs)
