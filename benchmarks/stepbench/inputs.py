"""Profiles, the data set and the workload of the step-cost benchmark: the trainer's model and
objective (``remd_core.training.build_model``, ``build_objective``) and a pool of prepared batches."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from remd_core.data import load
from remd_core.evaluation.metrics import region_labels
from remd_core.models import EncoderConfig
from remd_core.optim import RunInfo
from remd_core.training import TrainConfig, build_model, build_objective


@dataclass(frozen=True)
class Profile:
    data: dict
    encoder: dict
    batch_sizes: tuple[int, ...]


PROFILES = {
    "cpu": Profile(data={}, encoder={}, batch_sizes=(16,)),
    "gpu": Profile(data={"image_size": 224, "oct_size": 224, "n_bscans": 32, "n_eyes": 160, "test": 16, "val": 16},
                   encoder={"arch": "resnet34", "width": 1.0}, batch_sizes=(8, 16)),
}
NATURAL_PROFILE = {"cpu": "cpu", "cuda": "gpu"}


def dataset_for(profile: Profile, args):
    overrides = dict(profile.data)
    for key, value in (("image_size", args.image_size), ("oct_size", args.image_size), ("n_bscans", args.n_bscans),
                       ("n_eyes", args.n_eyes)):
        if value is not None:
            overrides[key] = value
    if args.n_eyes is not None:  # fractions, so that any number of eyes splits
        overrides.update(test=0.2, val=0.15)
    return load("synthetic-stage2", **overrides), overrides


class Workload:
    """One model (``build_model``), the trainer's stage-2 objective (``build_objective``: the fused
    and unimodal regression losses, bf16 autocast and channels-last on CUDA as the trainer runs them)
    and a pool of prepared batches (augmented, standardised, on the device)."""

    def __init__(self, dataset, encoder: EncoderConfig, batch_size: int, device: torch.device, pool: int,
                 compile_encoders: bool = False, seed: int = 0):
        self.dataset, self.batch_size, self.device = dataset, batch_size, device
        self.cuda = device.type == "cuda"
        config = TrainConfig(encoder=encoder, batch_size=batch_size, device=str(device), compile=compile_encoders,
                             seed=seed)
        torch.manual_seed(seed)
        self.model = build_model(dataset, config, device)
        self.objective = build_objective(dataset, config, device)
        train = dataset.train
        generator = torch.Generator().manual_seed(seed)
        self.batches = []
        while len(self.batches) < pool:
            for batch in train.batches(batch_size, shuffle=True, generator=generator, drop_last=len(train) > batch_size):
                self.batches.append(self.objective.prepare(batch, generator))
                if len(self.batches) == pool:
                    break

    def run_info(self, steps: int = 0) -> RunInfo:
        """What ``fit`` tells a strategy before the first step (``steps`` 0: the run length unknown)."""
        labels = self.dataset.train.y.numpy()
        return RunInfo(region_labels(labels), float(self.objective.label_mean), float(self.objective.label_std), steps)

    def closure(self, model, i: int):
        """The trainer's loss closure for ``model`` on pooled batch ``i`` (cycled)."""
        inputs, target = self.batches[i % len(self.batches)]
        return self.objective.closure(model, inputs, target)

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize(self.device)


class ConfigWorkload(Workload):
    """A workload from a whole ``TrainConfig`` (any head, stage-1 objective or training option) on given
    raw batches, built as ``fit`` builds them: the same initial weights for every workload of one seed,
    the raw batches prepared by its own objective (so every row times the same eyes), and the closure
    with stage 1's current ``margin`` (used only by contrastive objectives)."""

    def __init__(self, dataset, config: TrainConfig, raw_batches: list[dict], device: torch.device, seed: int = 0,
                 margin: float = 0.4):
        self.dataset, self.batch_size, self.device = dataset, config.batch_size, device
        self.cuda = device.type == "cuda"
        self.config, self.margin = config, margin
        torch.manual_seed(seed)
        self.model = build_model(dataset, config, device)
        self.objective = build_objective(dataset, config, device)
        generator = torch.Generator().manual_seed(seed + 1)
        self.batches = [self.objective.prepare(b, generator) for b in raw_batches]

    def closure(self, model, i: int):
        inputs, target = self.batches[i % len(self.batches)]
        return self.objective.closure(model, inputs, target, margin=self.margin)


def loader_throughput(work: Workload, max_batches: int) -> dict:
    """Samples per second of the trainer's data path: gather, augment, normalise, move."""
    train = work.dataset.train
    generator = torch.Generator().manual_seed(5)
    n, batches = 0, 0
    work.sync()
    start = time.perf_counter()
    while batches < max_batches:
        for batch in train.batches(work.batch_size, shuffle=True, generator=generator,
                                   drop_last=len(train) > work.batch_size):
            work.objective.prepare(batch, generator)
            n += len(batch["id"])
            batches += 1
            if batches >= max_batches:
                break
    work.sync()
    seconds = time.perf_counter() - start
    return {"batches": batches, "samples": n, "seconds": seconds, "samples_per_s": n / seconds}

