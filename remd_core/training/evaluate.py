"""A trained model's predictions in label units, its predictive intervals, and ``FitResult``: what
``fit`` returns."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from ..data.format import MultimodalDataset, MultimodalSplit
from ..data.labels import region_labels
from ..data.transforms import prepare_inputs
from ..diagnosis.contribution import modality_contributions, recorded_features
from ..evaluation import metrics
from ..models import MultimodalRegressor
from ..models.evidential import predictive_interval
from ..models.evidential_regressor import standardised_to_labels
from ..timing import timed
from .config import TrainConfig


@dataclass
class FitResult:
    model: MultimodalRegressor
    history: pd.DataFrame
    epochs: pd.DataFrame
    metrics: dict[str, dict]
    regions: pd.DataFrame
    predictions: dict[str, np.ndarray]
    intervals: dict[str, np.ndarray]   # split -> [N, 2] predictive intervals (metrics.INTERVAL_LEVEL); empty
    best_epoch: int                    # for a model that predicts no distribution
    label_mean: float
    label_std: float
    seconds: float
    config: TrainConfig
    contributions: dict[str, dict] = field(default_factory=dict)  # split -> each modality's Shapley value and
    # share (``diagnosis.contribution.modality_contributions``); empty for a single-modality model

    def summary(self) -> dict:
        return {"modalities": "+".join(self.model.modalities), "best_epoch": self.best_epoch,
                "seconds": round(self.seconds, 1),
                **{f"{split}_{k}": v for split, m in self.metrics.items() for k, v in m.items()},
                **{f"{split}_{k}": v for split, c in self.contributions.items() for k, v in c.items()}}


def _outputs(model, split: MultimodalSplit, kinds: dict[str, str], batch_size: int, device):
    """The model's outputs on ``split``, batch by batch, in evaluation mode and without gradients."""
    model.eval()
    with torch.no_grad():
        for batch in split.batches(batch_size):
            yield model(prepare_inputs(batch, model.modalities, kinds, augment=False, device=device, dtype=model.dtype))


@timed("evaluation")
def predict(model, split: MultimodalSplit, kinds: dict[str, str], label_mean: float,
            label_std: float, batch_size: int = 64, device="cpu", head: str = "fused") -> np.ndarray:
    """Predictions of the fused head (or of unimodal head ``head``) for a split, in label units."""
    out = [(r["fused"] if head == "fused" else r["unimodal"][head]).double().cpu()
           for r in _outputs(model, split, kinds, batch_size, device)]
    return (torch.cat(out) * label_std + label_mean).numpy()


@timed("evaluation")
def predict_intervals(model, split: MultimodalSplit, kinds: dict[str, str], label_mean: float, label_std: float,
                      batch_size: int = 64, device="cpu", level: float = metrics.INTERVAL_LEVEL) -> np.ndarray | None:
    """Central ``level`` predictive intervals ``[N, 2]`` in label units, for a model whose outputs hold a
    ``predictive`` Student-t (the evidential heads); ``None`` for a model that predicts none."""
    parts = []
    for r in _outputs(model, split, kinds, batch_size, device):
        if "predictive" not in r:
            return None
        t = standardised_to_labels(r["predictive"], label_mean, label_std)
        lo, hi = predictive_interval(t.loc, t.scale, t.df, level)
        parts.append(torch.stack([lo, hi], dim=-1).double().cpu())
    return torch.cat(parts).numpy()


def final_report(model, dataset: MultimodalDataset, config: TrainConfig, mean: float, std: float, device,
                 contributions: bool = False):
    """The selected model's predictions, intervals and metrics on the validation and test splits, its
    test errors per MD region of the training labels, and with ``contributions`` each modality's
    Shapley value and share on the test split (``{"test": ...}``, from the encoders' features of the
    test prediction: ``diagnosis.contribution``; else ``{}``)."""
    kinds = dataset.spec.kinds
    predictions = {"val": predict(model, dataset.val, kinds, mean, std, config.eval_batch_size, device)}
    with recorded_features(model) if contributions else nullcontext() as features:
        predictions["test"] = predict(model, dataset.test, kinds, mean, std, config.eval_batch_size, device)
    intervals = {s: predict_intervals(model, dataset[s], kinds, mean, std, config.eval_batch_size, device)
                 for s in ("val", "test")}
    intervals = {s: i for s, i in intervals.items() if i is not None}
    results = {s: metrics.regression_report(dataset[s].y.numpy(), p,
                                            (intervals[s][:, 0], intervals[s][:, 1]) if s in intervals else None)
               for s, p in predictions.items()}
    regions = region_labels(dataset.train.y.numpy())
    region_table = metrics.per_region_report(dataset.test.y.numpy(), predictions["test"], regions)
    shapley = {"test": modality_contributions(model, dataset.test, kinds, mean, std, config.eval_batch_size, device,
                                              full=predictions["test"], features=features)} if contributions else {}
    return predictions, intervals, results, region_table, shapley
