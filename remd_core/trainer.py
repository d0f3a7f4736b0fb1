"""One trainer for both stages of Re-M3Dr and every baseline.

- Stage 1 (section 4.1): ``contrastive=True`` on a single-modality model adds
  ``lambda * L_SupCon`` with the adaptive margin ``m(t)`` (``adaptive_margin=False`` keeps ``m0``:
  the "w/o AM" ablation) to the regression loss. Labels are standardised with the training
  split's mean and SD before the loss and before the margin test, so ``margin_m0 = 0.4`` means
  0.4 SD of training MD (the paper does not say which units it uses). ``m0 = 0.4`` and
  ``beta = 0.0005`` per iteration are the paper's; ``t_n`` (``margin_warmup``, 100 iterations, about
  4 epochs of 425 eyes at batch 16) and ``lambda`` (``supcon_weight``, 1.0) are not reported and
  are our choices. ``save_encoders`` keeps the encoders for stage 2.
- Stage 2 (section 4.2): any strategy of ``remd_core.optim`` (``joint`` for naive fusion and
  plain joint training, ``sgm``, ``mmpareto``, ``ogm_ge``), from scratch or from stage-1 encoders
  (``init_encoders``).

The regression loss is MSE by default; the paper's SMAPE + R^2 combination is
``regression_loss="smape_r2"`` (SMAPE is unstable for MD near 0 dB, which is why it is not the
default here). The paper uses Adam, batch 8 and ResNet34; the CPU defaults are AdamW (weight decay
1e-4), batch 16, cosine learning-rate decay and a ResNet18 of width 0.25.

On CUDA the model runs in bf16 autocast and channels-last memory format, and batches reach the
device through pinned memory with non-blocking copies. ``compile=True`` wraps each encoder with
``torch.compile`` (``nn.Module.compile``, so parameter names and saved encoders are unchanged); it
is off by default: compilation takes minutes, and on this workbench's small CPU models it has not
been shown to pay (``benchmarks/bench_steps.py --compile`` measures it).

Everything else is shared: seeded and deterministic on CPU, bf16 autocast on CUDA, a progress
bar, validation every epoch, best-epoch selection on validation R^2, a per-step history (every
head's loss, every strategy log) and a per-epoch history as DataFrames. A non-finite loss or
gradient stops training with an error naming the step and the batch's sample ids.
"""

from __future__ import annotations

import copy
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from . import metrics
from .data.format import MultimodalDataset, MultimodalSplit
from .losses import am_supcon_loss, margin_schedule, regression_loss
from .models import EncoderConfig, MultimodalRegressor
from .optim import Losses, NonFiniteError, build_strategy
from .transforms import prepare_inputs, to_device

SUBSETS = ("all", "head", "tail", "few")
OPTIMIZERS = ("adam", "adamw", "sgd")


@dataclass
class TrainConfig:
    """``modalities=None`` uses every modality of the data set. ``subset`` trains on all training
    samples, on the head only ("many" MD bins of ``metrics.region_labels``), on the tail only (every
    sample outside the head: "medium" and "few" bins, the paper's tail classes of Fig. 2) or on the
    "few" bins only (a handful of samples on small sets)."""

    modalities: tuple[str, ...] | None = None
    strategy: str = "joint"
    strategy_options: dict = field(default_factory=dict)
    epochs: int = 30
    batch_size: int = 16
    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 1e-4
    regression_loss: str = "mse"
    augment: bool = True
    subset: str = "all"
    seed: int = 0
    device: str = "auto"
    bf16: bool = True
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    contrastive: bool = False
    supcon_weight: float = 1.0
    margin_m0: float = 0.4
    margin_beta: float = 0.0005
    margin_warmup: int = 100
    adaptive_margin: bool = True
    temperature: float = 0.07
    init_encoders: dict = field(default_factory=dict)
    eval_batch_size: int = 64
    compile: bool = False

    def __post_init__(self):
        if isinstance(self.encoder, dict):
            self.encoder = EncoderConfig(**self.encoder)
        if self.modalities is not None:
            self.modalities = tuple(self.modalities)
        if self.subset not in SUBSETS:
            raise ValueError(f"subset must be one of {SUBSETS}, got {self.subset!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError(f"need epochs >= 1, batch_size >= 1 and lr > 0; got {self.epochs}, {self.batch_size}, {self.lr}")
        if self.margin_m0 < 0 or self.margin_beta < 0 or self.margin_warmup < 0 or self.supcon_weight < 0:
            raise ValueError("margin_m0, margin_beta, margin_warmup and supcon_weight must be >= 0")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")


@dataclass
class FitResult:
    model: MultimodalRegressor
    history: pd.DataFrame
    epochs: pd.DataFrame
    metrics: dict[str, dict]
    regions: pd.DataFrame
    predictions: dict[str, np.ndarray]
    best_epoch: int
    label_mean: float
    label_std: float
    seconds: float
    config: TrainConfig

    def summary(self) -> dict:
        return {"modalities": "+".join(self.model.modalities), "best_epoch": self.best_epoch,
                "seconds": round(self.seconds, 1),
                **{f"{split}_{k}": v for split, m in self.metrics.items() for k, v in m.items()}}


class TrainingError(RuntimeError):
    """Training cannot go on (a non-finite loss or gradient); the message names step and samples."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def training_split(dataset: MultimodalDataset, subset: str) -> MultimodalSplit:
    train = dataset.train
    if subset == "all":
        return train
    head, tail = metrics.head_tail_split(train.y.numpy(), medium_as_tail=subset == "tail")
    mask = head if subset == "head" else tail
    if not mask.any():
        raise ValueError(f"the {subset} subset of {dataset.name!r} is empty")
    return train.subset(mask, name=f"train-{subset}")


def build_optimizer(model, config: TrainConfig) -> torch.optim.Optimizer:
    params = model.parameters()
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=0.9, weight_decay=config.weight_decay)
    cls = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=config.lr, weight_decay=config.weight_decay)


def load_encoders(model: MultimodalRegressor, paths: dict[str, str]) -> None:
    for modality, path in paths.items():
        if modality not in model.encoders:
            raise ValueError(f"init_encoders names {modality!r}, but the model has {list(model.encoders)}")
        model.encoders[modality].load_state_dict(torch.load(path, map_location="cpu", weights_only=True))


def save_encoders(model: MultimodalRegressor, folder: Path) -> dict[str, str]:
    """Write each encoder's weights to ``folder/<modality>.pt``; returns the paths for ``init_encoders``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for modality, encoder in model.encoders.items():
        path = folder / f"{modality}.pt"
        tmp = path.with_suffix(".tmp")
        torch.save(encoder.state_dict(), tmp)
        tmp.replace(path)
        paths[modality] = str(path)
    return paths


@torch.no_grad()
def predict(model: MultimodalRegressor, split: MultimodalSplit, kinds: dict[str, str], label_mean: float,
            label_std: float, batch_size: int = 64, device="cpu", head: str = "fused") -> np.ndarray:
    """Predictions of the fused head (or of unimodal head ``head``) for a split, in label units."""
    model.eval()
    out = []
    for batch in split.batches(batch_size):
        inputs = prepare_inputs(batch, model.modalities, kinds, augment=False, device=device)
        result = model(inputs)
        pred = result["fused"] if head == "fused" else result["unimodal"][head]
        out.append(pred.float().cpu())
    return (torch.cat(out) * label_std + label_mean).numpy()


def fit(dataset: MultimodalDataset, config: TrainConfig, progress: bool = True) -> FitResult:
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    device = resolve_device(config.device)
    kinds = {m.name: m.kind for m in dataset.spec.modalities}
    modalities = config.modalities or dataset.spec.modality_names
    model = MultimodalRegressor(dataset.spec, modalities, config.encoder).to(device)
    load_encoders(model, config.init_encoders)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    if config.compile:
        for encoder in model.encoders.values():
            encoder.compile()
    extra = {"generator": torch.Generator().manual_seed(config.seed + 1)} if config.strategy == "ogm_ge" else {}
    strategy = build_strategy(config.strategy, config.strategy_options, **extra).bind(model)
    optimizer = build_optimizer(model, config)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    train = training_split(dataset, config.subset)
    mean, std = float(dataset.train.y.mean()), float(dataset.train.y.std())
    loss_fn = regression_loss(config.regression_loss, **({"label_mean": mean, "label_std": std}
                                                        if config.regression_loss == "smape_r2" else {}))
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" and config.bf16
                else nullcontext())
    multimodal = len(modalities) > 1

    step_rows, epoch_rows, best = [], [], (-np.inf, 0, None)
    start, step = time.perf_counter(), 0
    label = f"{config.strategy} {'+'.join(modalities)}" + (" stage 1" if config.contrastive else "")
    for epoch in tqdm(range(config.epochs), desc=label, disable=not progress, unit="epoch"):
        model.train()
        logs = []
        for batch in train.batches(config.batch_size, shuffle=True, generator=generator, drop_last=len(train) > config.batch_size):
            inputs = prepare_inputs(batch, modalities, kinds, config.augment, generator, device)
            target = to_device((batch["y"] - mean) / std, device)
            margin = _margin(config, step)

            def compute(inputs=inputs, target=target, margin=margin):
                with autocast:
                    out = model(inputs)
                losses = Losses(fused=loss_fn(out["fused"].float(), target), outputs={**out, "target": target})
                if multimodal:
                    losses.unimodal = {m: loss_fn(p.float(), target) for m, p in out["unimodal"].items()}
                if config.contrastive:
                    losses.extra = config.supcon_weight * sum(
                        am_supcon_loss(z.float(), target, margin, config.temperature) for z in out["projections"].values())
                return losses

            try:
                step_logs = strategy.step(compute, optimizer, step=step, epoch=epoch)
            except NonFiniteError as err:
                raise TrainingError(f"{err} (epoch {epoch}); batch sample ids: {batch['id']}") from err
            step_logs["margin"] = torch.tensor(margin)
            logs.append(step_logs)
            step += 1
        scheduler.step()
        step_rows.extend(_rows(logs, epoch, step - len(logs)))
        val_pred = predict(model, dataset.val, kinds, mean, std, config.eval_batch_size, device)
        val = metrics.regression_report(dataset.val.y.numpy(), val_pred)
        epoch_rows.append({"epoch": epoch + 1, "val_r2": val["r2"], "val_mse": val["mse"], "val_mae": val["mae"],
                           "lr": scheduler.get_last_lr()[0]})
        if val["r2"] > best[0]:
            best = (val["r2"], epoch + 1, copy.deepcopy(model.state_dict()))
    model.load_state_dict(best[2])

    history = pd.DataFrame(step_rows)
    if not multimodal:  # the model's only prediction is its unimodal one
        history[f"loss_{modalities[0]}"] = history["loss_fused"]
    predictions = {s: predict(model, dataset[s], kinds, mean, std, config.eval_batch_size, device) for s in ("val", "test")}
    results = {s: metrics.regression_report(dataset[s].y.numpy(), p) for s, p in predictions.items()}
    regions = metrics.region_labels(dataset.train.y.numpy())
    region_table = metrics.per_region_report(dataset.test.y.numpy(), predictions["test"], regions)
    return FitResult(model, history, pd.DataFrame(epoch_rows), results, region_table, predictions, best[1], mean, std,
                     time.perf_counter() - start, config)


def _margin(config: TrainConfig, step: int) -> float:
    if not config.adaptive_margin:
        return config.margin_m0
    return float(margin_schedule(step, config.margin_m0, config.margin_beta, config.margin_warmup))


def _rows(logs: list[dict], epoch: int, first_step: int) -> list[dict]:
    """Move one epoch of per-step logs to the host in one transfer per key."""
    if not logs:
        return []
    keys = list(dict.fromkeys(k for entry in logs for k in entry))
    device = logs[0]["loss_fused"].device
    missing = torch.tensor(float("nan"), device=device)
    columns = {k: torch.stack([entry.get(k, missing).detach().float().to(device) for entry in logs]).cpu().tolist()
               for k in keys}
    return [{"step": first_step + i, "epoch": epoch + 1, **{k: columns[k][i] for k in keys}} for i in range(len(logs))]
