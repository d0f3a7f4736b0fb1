"""A plain training loop for unimodal and naive-fusion regressors (the baselines of the Re-M3Dr
paper, Table 1 "Baseline" rows).

Objective: mean squared error on standardised labels (train-split mean and SD), on the fused
prediction. With ``unimodal_weight > 0`` the unimodal heads' losses are added, Eq. 1 of the paper
with every alpha_k equal; the default 0 is naive fusion. With one modality this is the unimodal
baseline. The paper trains with a SMAPE + R^2 loss, ResNet34 and batch 8; the CPU defaults here
are a narrow ResNet18 and batch 16 (see the data card's calibration section).

Model selection: the epoch with the best validation R^2 is kept and evaluated on the test split.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from . import metrics
from .data.format import MultimodalDataset, MultimodalSplit
from .models import EncoderConfig, MultimodalRegressor
from .transforms import prepare_inputs


@dataclass
class TrainConfig:
    modalities: tuple[str, ...] = ("fundus", "oct")
    epochs: int = 30
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 1e-4
    unimodal_weight: float = 0.0
    augment: bool = True
    seed: int = 0
    device: str = "cpu"
    encoder: EncoderConfig = field(default_factory=EncoderConfig)


@dataclass
class FitResult:
    model: MultimodalRegressor
    history: pd.DataFrame
    metrics: dict[str, dict]
    predictions: dict[str, np.ndarray]
    best_epoch: int
    label_mean: float
    label_std: float
    seconds: float
    config: TrainConfig

    def summary(self) -> dict:
        return {"modalities": "+".join(self.config.modalities), "best_epoch": self.best_epoch,
                "seconds": round(self.seconds, 1),
                **{f"{split}_{k}": v for split, m in self.metrics.items() for k, v in m.items()}}


def _kinds(dataset: MultimodalDataset) -> dict[str, str]:
    return {m.name: m.kind for m in dataset.spec.modalities}


@torch.no_grad()
def predict(model: MultimodalRegressor, split: MultimodalSplit, kinds: dict[str, str], label_mean: float,
            label_std: float, batch_size: int = 64, device: str = "cpu") -> np.ndarray:
    """Fused predictions for a split, in label units."""
    model.eval()
    out = []
    for batch in split.batches(batch_size):
        inputs = prepare_inputs(batch, model.modalities, kinds, augment=False, device=device)
        out.append(model(inputs)["fused"].float().cpu())
    return (torch.cat(out) * label_std + label_mean).numpy()


def fit(dataset: MultimodalDataset, config: TrainConfig, progress: bool = True) -> FitResult:
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    kinds = _kinds(dataset)
    model = MultimodalRegressor(dataset.spec, config.modalities, config.encoder).to(config.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    mean, std = float(dataset.train.y.mean()), float(dataset.train.y.std())
    rows, best = [], (-np.inf, 0, None)
    start = time.perf_counter()
    label = "+".join(config.modalities)
    for epoch in tqdm(range(1, config.epochs + 1), desc=f"training {label}", disable=not progress, unit="epoch"):
        model.train()
        losses = []
        for batch in dataset.train.batches(config.batch_size, shuffle=True, generator=generator, drop_last=True):
            inputs = prepare_inputs(batch, config.modalities, kinds, config.augment, generator, config.device)
            target = ((batch["y"] - mean) / std).to(config.device)
            out = model(inputs)
            loss = torch.nn.functional.mse_loss(out["fused"], target)
            if config.unimodal_weight:
                loss = loss + config.unimodal_weight * sum(
                    torch.nn.functional.mse_loss(p, target) for p in out["unimodal"].values())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.detach())
        scheduler.step()
        val_pred = predict(model, dataset.val, kinds, mean, std, device=config.device)
        val_r2 = metrics.r2(dataset.val.y.numpy(), val_pred)
        rows.append({"epoch": epoch, "train_loss": float(torch.stack(losses).mean()), "val_r2": val_r2,
                     "val_mae": metrics.mae(dataset.val.y.numpy(), val_pred)})
        if val_r2 > best[0]:
            best = (val_r2, epoch, copy.deepcopy(model.state_dict()))
    model.load_state_dict(best[2])
    predictions = {s: predict(model, dataset[s], kinds, mean, std, device=config.device) for s in ("val", "test")}
    results = {s: metrics.regression_report(dataset[s].y.numpy(), p) for s, p in predictions.items()}
    return FitResult(model, pd.DataFrame(rows), results, predictions, best[1], mean, std,
                     time.perf_counter() - start, config)

