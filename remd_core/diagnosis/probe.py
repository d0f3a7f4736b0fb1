"""A fixed probe set: the same training eyes, evaluated every k steps, so that a loss curve moves
only when the weights do.

Why. Notebook 01 (Fig. 2a-c of the Re-M3Dr paper, seed 001, section 1) scores the oscillation of
each head's training-batch loss. On long-tailed MD labels a batch's loss depends on how many tail
eyes it happens to hold, so the batch-loss curve oscillates even for a model whose weights never
change, and all-data batches (mixed head and tail) oscillate more than head-only or tail-only ones.
The batch-loss oscillation therefore confounds batch composition with optimisation instability.
The probe loss is the same per-head loss on one fixed set of training eyes: with constant weights it
is constant (its oscillation index is exactly 0), so whatever it oscillates comes from the weights.

The probe set (``select_probe_set``). ``size`` eyes of the whole training split (not of
``TrainConfig.subset``: every run on one data set, all / head / tail, unimodal or fused, probes the
same eyes), stratified over the MD regions of ``data.labels.region_labels`` of the training labels:
``probe_allocation`` deals the eyes out one at a time over the regions, tail first (few, medium,
many), skipping a region once it has no eyes left, so the regions get equal shares as far as they
have eyes (64 eyes over three regions: 22 few, 21 medium, 21 many) and the tail is represented
however rare it is. A set as large as the training split is the whole split. Within a region the
eyes are drawn by a numpy generator seeded with ``(PROBE_STREAM, seed)``: independent of the
training generator (turning probes on changes no training draw), and a function of the seed and
the training labels only, so a resumed run probes the same eyes.

The evaluation (``Probe.evaluate``): the objective's own loss closure (``training.objectives.Objective``) on
the probe eyes, without augmentation, modality dropout or gradients, as one batch; the per-head
losses are the ones the batch rows log (``loss_fused``, ``loss_<modality>``: the regression loss
on standardised labels), logged as ``probe_loss_fused``, ``probe_loss_<modality>`` and, for heads
trained on the regression loss (not the evidential or EchoMEN heads, whose loss is their own), per
region: ``probe_loss_<head>_head`` ("many" eyes) and ``probe_loss_<head>_tail`` (medium and few,
the tail of ``TrainConfig.subset="tail"``), the regression loss restricted to those eyes of the
same forward pass.

Modes during the probe:

- BatchNorm in training mode on the probe batch's own statistics, its running statistics frozen
  (``optim.strategy.frozen_batchnorm_stats``: momentum 0, the batch counter restored). Evaluation
  mode would normalise with the running statistics, which every training batch moves: their drift
  is itself a function of batch composition (a batch rich in tail eyes shifts them), so an
  evaluation-mode probe would oscillate with constant weights and mix back in what the probe
  exists to remove. With the probe batch's own statistics the probe loss is a function of the
  weights and the (fixed) probe eyes only.
- Every other module in evaluation mode: the model is switched to ``eval()`` and only its BatchNorm
  layers back to ``train()``, so dropout (RIMA's MLPs and attention) and any other training-mode
  behaviour (FDS's calibration) are off. Every module's mode is restored afterwards.
- Random states: the global torch generators are forked (``torch.random.fork_rng``) around the
  probe, so nothing a forward pass might draw reaches the training run's draws.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..data.labels import REGIONS, region_labels
from ..data.transforms import LABELS, SECOND_VIEW, prepare_inputs, to_device
from ..optim.strategy import frozen_batchnorm_stats
from ..timing import timed

PROBE_STREAM = 0x9B0BE
"""First word of the probe generator's seed, so that its draws are not the training generator's."""

ALLOCATION_ORDER = ("few", "medium", "many")
"""The order in which ``probe_allocation`` deals eyes to regions (the tail first)."""

REGION_GROUPS = {"head": ("many",), "tail": ("medium", "few")}
"""Per-region probe columns: ``probe_loss_<head>_head`` and ``probe_loss_<head>_tail``."""


def probe_allocation(counts: dict[str, int], size: int) -> dict[str, int]:
    """How many probe eyes each region gets: ``size`` eyes dealt one at a time over the regions
    in ``ALLOCATION_ORDER`` (few, medium, many), a region skipped once its ``counts`` are used up.
    Equal shares as far as the regions have eyes; all eyes when ``size`` is at least their total."""
    if size < 0:
        raise ValueError(f"size must be >= 0, got {size}")
    take = {r: 0 for r in ALLOCATION_ORDER}
    left = min(int(size), sum(int(counts.get(r, 0)) for r in ALLOCATION_ORDER))
    while left:
        for r in ALLOCATION_ORDER:
            if left and take[r] < counts.get(r, 0):
                take[r] += 1
                left -= 1
    return take


@dataclass(frozen=True)
class ProbeSet:
    """Probe eyes: ``index`` (positions in the training split, ascending) and ``regions`` ("many",
    "medium" or "few" of each, ``data.labels.region_labels`` of the training labels)."""

    index: np.ndarray
    regions: np.ndarray

    def counts(self) -> dict[str, int]:
        return {r: int(np.sum(self.regions == r)) for r in REGIONS}


def select_probe_set(y_train, size: int, seed: int) -> ProbeSet:
    """The fixed probe set of a run: ``size`` training eyes stratified over the MD regions (see the
    module docstring), drawn with the seed ``(PROBE_STREAM, seed)``. A function of ``y_train``,
    ``size`` and ``seed`` only."""
    y = np.asarray(y_train.detach().cpu().numpy() if hasattr(y_train, "detach") else y_train,
                   dtype=np.float64).reshape(-1)
    names = region_labels(y).assign(y)
    take = probe_allocation({r: int(np.sum(names == r)) for r in ALLOCATION_ORDER}, size)
    rng = np.random.default_rng([PROBE_STREAM, int(seed) % 2**63])
    chosen = [rng.choice(np.flatnonzero(names == r), take[r], replace=False) for r in ALLOCATION_ORDER]
    index = np.sort(np.concatenate(chosen).astype(np.int64))
    return ProbeSet(index=index, regions=names[index])


class Probe:
    """A probe set prepared on the device for one run: its inputs (not augmented) and standardised
    targets, built once; ``evaluate`` gives the probe columns of a history row."""

    def __init__(self, split, probe_set: ProbeSet, objective):
        self.probe_set, self.objective = probe_set, objective
        cfg, device = objective.config, objective.device
        batch = split.batch(torch.as_tensor(probe_set.index))
        inputs = prepare_inputs(batch, objective.modalities, objective.kinds, augment=False, device=device,
                                dtype=objective.dtype)
        if cfg.views() == 2:  # a contrastive term needs its second view; here the same, unaugmented
            inputs[SECOND_VIEW] = prepare_inputs(batch, objective.modalities, objective.kinds, augment=False,
                                                 device=device, dtype=objective.dtype)
        if cfg.fds:
            inputs[LABELS] = to_device(batch["y"], device)
        self.inputs = inputs
        self.target = to_device((batch["y"] - objective.label_mean) / objective.label_std, device).to(objective.dtype)
        self.masks = {name: torch.as_tensor(np.isin(probe_set.regions, regions), device=device)
                      for name, regions in REGION_GROUPS.items()}

    @timed("probes")
    @torch.no_grad()
    def evaluate(self, model: nn.Module, margin: float | None = None) -> dict[str, torch.Tensor]:
        """The probe losses of ``model`` as it is now: ``probe_loss_fused``, ``probe_loss_<modality>``
        and the per-region columns (see the module docstring). Leaves the weights, the BatchNorm
        running statistics, every module's mode and the global random states as they were."""
        objective = self.objective
        modes = [(m, m.training) for m in model.modules()]
        outputs = []
        hook = model.register_forward_hook(lambda _module, _args, out: outputs.append(out))
        devices = [objective.device] if objective.device.type == "cuda" else []
        try:
            model.eval()
            for m in model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.train()
            with torch.random.fork_rng(devices=devices), frozen_batchnorm_stats(model):
                losses = objective.closure(model, self.inputs, self.target, margin)()
        finally:
            hook.remove()
            for m, training in modes:
                m.training = training
        heads = {"fused": losses.fused, **losses.unimodal}
        logs = {f"probe_loss_{h}": v.detach() for h, v in heads.items()}
        out = outputs[0] if outputs else {}
        if "fused" in out and not {"evidential", "experts"} & set(out):  # a loss of its own: no regions
            predictions = {"fused": out["fused"], **{m: out["unimodal"][m] for m in losses.unimodal}}
            for name, mask in self.masks.items():
                for h, pred in predictions.items():
                    logs[f"probe_loss_{h}_{name}"] = self._region_loss(pred, mask)
        if not objective.multimodal:  # the fused head is the modality's own, as in fit's history
            only = objective.modalities[0]
            logs.update({k.replace("probe_loss_fused", f"probe_loss_{only}", 1): v for k, v in list(logs.items())})
        return logs

    def _region_loss(self, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The objective's regression loss on the probe eyes of ``mask`` (NaN below 2 eyes)."""
        if int(mask.sum()) < 2:
            return torch.tensor(float("nan"), device=self.target.device)
        target = self.target[mask]
        return self.objective.regression(target)(pred[mask].to(self.objective.dtype), target).detach()


PROBE_BUDGET = 0.10
"""The share of training time probes may take by default (``TrainConfig.probe_every="auto"``)."""

MIN_PROBE_POINTS = 8
"""Probe points a run gets at least with ``"auto"``: fewer leave the probe's oscillation index (a
window of several points) nothing to score."""


def probe_cadence(batch_size: int, probe_size: int, total_steps: int | None = None,
                  budget: float = PROBE_BUDGET) -> int:
    """Steps between probes so that they cost at most ``budget`` of training: a probe is one
    forward pass over ``probe_size`` eyes without gradients; a training step is a forward and a
    backward pass over ``batch_size`` eyes, which costs about three forward passes (the backward
    pass about two) and more for strategies that take several passes a step (SAM, SGM, MMPareto).
    So ``k`` steps cost at least ``3 k batch_size`` eye-passes and a probe ``probe_size``:
    ``k = ceil(probe_size / (3 batch_size budget))``. A run of ``total_steps`` shorter than
    ``MIN_PROBE_POINTS`` such intervals is probed every ``total_steps // MIN_PROBE_POINTS`` steps
    (at least every step) instead: a short run costs little either way, and its probe curve needs
    points. ``benchmarks/bench_cell.py`` measures the share this gives (``docs/performance.md``)."""
    if not 0 < budget <= 1:
        raise ValueError(f"budget must be in (0, 1], got {budget}")
    k = max(1, math.ceil(probe_size / (3 * batch_size * budget)))
    if total_steps is not None:
        k = min(k, max(1, total_steps // MIN_PROBE_POINTS))
    return k


def build_probe(split, config, objective) -> Probe | None:
    """The run's ``Probe`` (None when ``config.probe_every`` is 0): ``config.probe_size`` eyes of
    ``split`` (the whole training split) chosen by ``select_probe_set`` with ``config.seed``."""
    if not config.probe_steps():
        return None
    return Probe(split, select_probe_set(split.y, config.probe_size, config.seed), objective)
