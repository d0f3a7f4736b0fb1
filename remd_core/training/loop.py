"""``fit``: the training loop every recipe runs, both stages of Re-M3Dr and every comparator.

Seeded and deterministic on CPU; a progress bar and one progress line per epoch; validation every
epoch and best-epoch selection on validation R^2; a per-step history (every head's loss, every
strategy log, the probe's losses on its steps) and a per-epoch history as DataFrames. A non-finite
loss or gradient stops training with an error naming the step and the batch's sample ids. The loop's
state is a ``checkpoint.LoopState``, which ``checkpoint.Checkpoints`` writes at every epoch end (and
every N steps) and restores on resume. With ``log_dir`` every epoch's scalars go to TensorBoard event
files there (``training.board``). A fused model's modality contributions (Shapley values,
``diagnosis.contribution``) are measured on the validation split every epoch and on the test split at
the end."""

from __future__ import annotations

import copy
import hashlib
import json
import time
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from ..data.format import MultimodalDataset, MultimodalSplit
from ..data.labels import head_tail_split, region_labels
from ..data.transforms import prepare_inputs, to_device
from ..diagnosis.contribution import modality_contributions, recorded_features
from ..diagnosis.probe import build_probe
from ..evaluation import metrics
from ..losses.am_supcon import margin_schedule, reference_step
from ..models import MultimodalRegressor
from ..optim import NonFiniteError, RunInfo, build_strategy
from ..progress import report
from .board import RunBoard
from .checkpoint import Checkpoints, LoopState, Trainables
from .config import TrainConfig
from .evaluate import FitResult, final_report, predict
from .heads import build_model, build_objective
from .runtime import build_optimizer, build_scheduler, resolve_device


class TrainingError(RuntimeError):
    """Training cannot go on (a non-finite loss or gradient, or a validation score that cannot select
    a model); the message names what went wrong where."""


def training_split(dataset: MultimodalDataset, subset: str) -> MultimodalSplit:
    train = dataset.train
    if subset == "all":
        return train
    head, tail = head_tail_split(train.y.numpy(), medium_as_tail=subset == "tail")
    mask = head if subset == "head" else tail
    if not mask.any():
        raise ValueError(f"the {subset} subset of {dataset.name!r} is empty")
    return train.subset(mask, name=f"train-{subset}")


def fit(dataset: MultimodalDataset, config: TrainConfig, progress: bool = True, checkpoint_dir: str | Path | None = None,
        resume: bool = False, checkpoint_every: int = 0, log_dir: str | Path | None = None,
        contributions: bool = True) -> FitResult:
    """Train a model on ``dataset`` with ``config``; return it at its best validation epoch.

    ``checkpoint_dir``: write a checkpoint there at every epoch end and, with ``checkpoint_every``
    N > 0, every N steps (``training.checkpoint``: the last one and the best weights, nothing
    else). ``resume=True`` continues from the last checkpoint in that folder when there is one (and
    starts fresh when there is none); on CPU a resumed run ends bit-identical to an uninterrupted
    one. A checkpoint written with other settings or data is refused.

    ``log_dir``: write TensorBoard scalars there at every epoch end (``training.board``; None: none).
    ``contributions``: for a model of two or more modalities, each modality's Shapley value and share
    on the validation split at every epoch end (columns ``shapley_<m>``, ``share_<m>`` and
    ``shapley_empty`` of ``FitResult.epochs``) and on the test split at the end
    (``FitResult.contributions``); ``diagnosis.contribution``. Neither changes what the run trains:
    a seeded run's weights and predictions are the same with and without them."""
    if checkpoint_every < 0:
        raise ValueError(f"checkpoint_every must be >= 0 steps, got {checkpoint_every}")
    if resume and checkpoint_dir is None:
        raise ValueError("resume=True needs the checkpoint_dir to resume from")
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    device = resolve_device(config.device)
    if config.precision == "float64" and device.type != "cpu":
        raise ValueError(f"precision 'float64' is for CPU regression checks; {device} runs float32 or bf16")
    model = build_model(dataset, config, device)
    strategy = build_strategy(config.strategy, config.strategy_options, seed=config.seed + 1).bind(model)
    optimizer = build_optimizer(model, config)
    scheduler = build_scheduler(optimizer, config)
    parts = Trainables(model, optimizer, scheduler, strategy, generator)
    train = training_split(dataset, config.subset)
    objective = build_objective(dataset, config, device)
    kinds, modalities = objective.kinds, objective.modalities
    mean, std = objective.label_mean, objective.label_std
    drop_last = len(train) > config.batch_size
    stop = len(train) - len(train) % config.batch_size if drop_last else len(train)
    steps_per_epoch = stop // config.batch_size if drop_last else 1
    total_steps = config.epochs * steps_per_epoch
    strategy.prepare_run(RunInfo(region_labels(train.y.numpy()), float(mean), float(std), total_steps,
                                 config.reference_run_steps))
    probe = build_probe(dataset.train, config, objective)  # None unless config.probe_every
    probe_every = config.probe_steps(total_steps)
    contributions = contributions and objective.multimodal

    run, best_weights = LoopState(), None
    checkpoints = Checkpoints(checkpoint_dir, _fingerprint(dataset, config)) if checkpoint_dir is not None else None
    restored = checkpoints.restore(parts) if resume else None
    if restored is not None:
        run, best_weights = restored

    def save_checkpoint(logs, new_best=None):
        state = LoopState(**{**run.as_dict(), "elapsed": run.elapsed + time.perf_counter() - start,
                             "partial_rows": run.partial_rows + _rows(logs, run.epoch, run.step - len(logs))})
        checkpoints.dump(state, parts, new_best)

    start = time.perf_counter()
    label = f"{config.strategy} {'+'.join(modalities)}" + (" stage 1" if config.contrastive else "")
    bar = tqdm(total=config.epochs, initial=run.epoch, desc=label, disable=not progress, unit="epoch")
    board = RunBoard(log_dir, run.epoch + 1, margin=config.contrastive) if log_dir is not None else None
    try:
        for epoch in range(run.epoch, config.epochs):
            model.train()
            if run.order is None:  # the draw MultimodalSplit.batches(shuffle=True) makes
                run.order, run.position = torch.randperm(len(train), generator=generator), 0
            logs = []
            stream = getattr(train, "stream_batches", None)  # a lazy split with loader workers (data/streaming.py)
            batches = stream(run.order, run.position, stop, config.batch_size, device) if stream else None
            while run.position < stop:
                batch = next(batches) if batches is not None else \
                    train.batch(run.order[run.position:run.position + config.batch_size])
                inputs, target = objective.prepare(batch, generator)
                margin = _margin(config, run.step, total_steps)
                compute = objective.closure(model, inputs, target, margin)
                try:
                    step_logs = strategy.step(compute, optimizer, step=run.step, epoch=epoch)
                except NonFiniteError as err:
                    raise TrainingError(f"{err} (epoch {epoch}); batch sample ids: {batch['id']}") from err
                step_logs["margin"] = torch.tensor(margin)
                logs.append(step_logs)
                run.step += 1
                if probe is not None and run.step % probe_every == 0:
                    step_logs.update(probe.evaluate(model, margin))
                run.position += config.batch_size
                if checkpoints and checkpoint_every and run.step % checkpoint_every == 0 and run.position < stop:
                    save_checkpoint(logs)
            if config.fds:
                update_fds(model, train, kinds, config.eval_batch_size, device, epoch)
            scheduler.step()
            epoch_steps = run.partial_rows + _rows(logs, epoch, run.step - len(logs))
            run.step_rows += epoch_steps
            run.partial_rows, run.order, run.position = [], None, 0
            with recorded_features(model) if contributions else nullcontext() as features:  # the same predictions
                val_pred = predict(model, dataset.val, kinds, mean, std, config.eval_batch_size, device)
            val = metrics.regression_report(dataset.val.y.numpy(), val_pred)
            run.epoch_rows.append({"epoch": epoch + 1, "val_r2": val["r2"], "val_mse": val["mse"],
                                   "val_mae": val["mae"], "lr": scheduler.get_last_lr()[0]})
            if contributions:  # the heads on the recorded features, in evaluation mode, the random states restored
                run.epoch_rows[-1].update(modality_contributions(model, dataset.val, kinds, mean, std,
                                                                 config.eval_batch_size, device, full=val_pred,
                                                                 features=features))
            if board is not None:
                board.epoch(epoch + 1, epoch_steps, run.epoch_rows[-1])
            if not np.isfinite(val["r2"]):  # model selection would have nothing to choose from
                raise TrainingError(f"{dataset.name}: validation R2 is {val['r2']} after epoch {epoch + 1} "
                                    f"({len(dataset.val)} validation eyes; R2 needs at least 2 with different labels, "
                                    "and finite predictions)")
            improved = val["r2"] > run.best["r2"]
            if improved:
                best_weights = copy.deepcopy(model.state_dict())
                run.best = {"r2": val["r2"], "epoch": epoch + 1, "file": f"best-epoch{epoch + 1}.pt"}
            run.epoch = epoch + 1
            report(f"{label} seed {config.seed}: epoch {epoch + 1}/{config.epochs}, validation R2 {val['r2']:.3f}")
            if checkpoints:
                save_checkpoint([], best_weights if improved else None)
            bar.update(1)
    finally:
        bar.close()
        if board is not None:
            board.close()
    model.load_state_dict(best_weights)

    history = pd.DataFrame(run.step_rows)
    if not objective.multimodal:  # the model's only prediction is its unimodal one
        history[f"loss_{modalities[0]}"] = history["loss_fused"]
    predictions, intervals, results, region_table, shapley = final_report(model, dataset, config, mean, std, device,
                                                                          contributions)
    return FitResult(model, history, pd.DataFrame(run.epoch_rows), results, region_table, predictions, intervals,
                     run.best["epoch"], mean, std, run.elapsed + time.perf_counter() - start, config, shapley)


def update_fds(model: MultimodalRegressor, split: MultimodalSplit, kinds: dict[str, str], batch_size: int, device,
               epoch: int) -> None:
    """FDS's end-of-epoch update (``models.fds.FDS.update``) with every modality's features of the whole
    training split. The official code collects the features of the epoch's training forward passes
    (augmented, BatchNorm in training mode); we encode the split once more, without augmentation and
    in evaluation mode, because a strategy's step may run several forward passes (SAM's perturbed one,
    SGM's probes) whose features are not the model's at any one point."""
    features = {m: [] for m in model.modalities}
    labels = []
    model.eval()
    with torch.no_grad():
        for batch in split.batches(batch_size):
            inputs = prepare_inputs(batch, model.modalities, kinds, augment=False, device=device, dtype=model.dtype)
            for m, f in model.encode(inputs).items():
                features[m].append(f)
            labels.append(to_device(batch["y"], device))
    y = torch.cat(labels)
    for m in model.modalities:
        model.fds[m].update(torch.cat(features[m]), y, epoch)
    model.train()


def _fingerprint(dataset: MultimodalDataset, config: TrainConfig) -> dict:
    """What a checkpoint must share with the run resuming it: every training setting (the
    device and the progress bar aside; the probe's settings while it is off) and the data (settings,
    and the training ids)."""
    settings = {k: v for k, v in asdict(config).items() if k not in ("device",)}
    if not config.probe_every:  # no probe: the fingerprint of a run from before probes existed
        settings = {k: v for k, v in settings.items() if k not in ("probe_every", "probe_size")}
    if settings["encoder"].get("weights") is None:  # random initial weights: as before pretrained files existed
        settings["encoder"] = {k: v for k, v in settings["encoder"].items() if k != "weights"}
    ids = hashlib.sha1("\n".join(dataset.train.ids).encode()).hexdigest()
    return {"config": json.dumps(settings, sort_keys=True, default=str), "dataset": dataset.name,
            "data": json.dumps(asdict(dataset.config), sort_keys=True, default=str), "train_ids": ids}


def _margin(config: TrainConfig, step: int, total_steps: int) -> float:
    """Stage 1's margin at ``step``: ``losses.margin_schedule`` (section 4.1), or ``m0`` without AM."""
    if not config.adaptive_margin:
        return config.margin_m0
    t = reference_step(step, total_steps, config.reference_run_steps)
    return float(margin_schedule(t, config.margin_m0, config.margin_beta, config.margin_warmup))


def _rows(logs: list[dict], epoch: int, first_step: int) -> list[dict]:
    """Move one epoch of per-step logs to the host in one transfer per key."""
    if not logs:
        return []
    keys = list(dict.fromkeys(k for entry in logs for k in entry))
    device = logs[0]["loss_fused"].device
    missing = torch.tensor(float("nan"), device=device)
    columns = {k: torch.stack([entry.get(k, missing).detach().double().to(device) for entry in logs]).cpu().tolist()
               for k in keys}
    return [{"step": first_step + i, "epoch": epoch + 1, **{k: columns[k][i] for k in keys}} for i in range(len(logs))]
