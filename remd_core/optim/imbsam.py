"""ImbSAM (Zhou et al., "ImbSAM: A Closer Look at Sharpness-Aware Minimization in Class-Imbalanced
Recognition", ICCV 2023, section 3.2, Eq. 6-8), adapted to regression, as a comparator of the
Re-M3Dr paper (Table 1).

The batch is split into head and tail samples; the update is

    g = grad L_head(w) + c * grad L_tail(w + e_tail),   e_tail = rho * g_tail / (||g_tail|| + eps),
    g_tail = c * grad L_tail(w)

(one global norm over every trainable parameter, as in SAM), with the tail weight ``c = 2`` of the
official training step (``tail_weight``; the paper's Eq. 8 has none). Head and tail are regions of MD
(our regression stand-in for the paper's classes): the tail is the "few" bins of
``data.labels.region_labels`` of the TRAINING labels (and labels outside the training bins), as the
official tail is the classes with fewer than ``eta`` training samples; the head is everything else
("many" and "medium"). ``tail=("medium", "few")`` and ``tail_weight=1`` give the workbench's reading
before 2026-12-06. ``set_regions(regions, label_mean, label_std)`` gives the strategy those
training regions (the closure's ``Losses.target`` is standardised, so the bin edges are mapped into
its units); the mask of a batch is then computed on the device (``torch.bucketize``), with no host
synchronisation. Without ``set_regions`` (your own loop, the strategy harness) the regions come
from the batch's own targets with the config's ``bin_width``, ``many``, ``few`` (one host read per
step), in the targets' units (in the trainer they are standardised, so ``bin_width = 2`` is two SDs):
a stand-in for loops without training labels, not the paper's training counts; ``fit`` should call
``set_regions``.

How the losses are split, with no change to the closure: ``L_head`` and ``L_tail`` are the parts of
the objective of ``joint`` (fused plus ``alpha`` times unimodal) carried by the head and by the tail
samples' predictions. The strategy records the model's ``fused`` and ``unimodal`` outputs with a
forward hook, takes the cotangents ``dL/dyhat_i`` once, and back-propagates them masked to the head
or the tail samples (``split_gradients``: vector-Jacobian products over one graph). For a loss that
is a batch mean of per-sample terms (MSE, L1, Huber) this is exactly the gradient of
``sum_{i in head} l_i / B`` (and of the tail's), so ``L_head + L_tail`` is the usual batch loss; for a
loss coupling samples (``smape_r2``'s R^2 term) it is the gradient through each group's predictions.
``Losses.extra`` (stage 1's contrastive term, head regularisers) is back-propagated plainly at
``w``, as by every strategy. The losses must depend on the parameters only through those outputs
(true for ``MultimodalRegressor``; a model whose losses read other outputs needs them recorded too).

Edge cases, with no branch on the device's values (no host synchronisation): a batch with no tail
sample has ``g_tail = 0``, so ``e_tail = 0`` and the step is the plain gradient (at the cost of the
second pass); a batch with no head sample is SAM on the tail.

Where we differ from the official code (cool-xuan/Imbalanced_SAM, ``utils/trainval.py``
``forbackward`` and ``imbsam.py``, classification): there the tail is a set of classes and the loss
is per-sample (``reduction='none'``): ``head_loss = loss[~tail].sum() / B`` and
``tail_loss = loss[tail].sum() / B * 2`` (our ``tail_weight``, at ``w`` and at ``w + e``) are
back-propagated over one forward, then a second full-batch forward at ``w + e_tail`` gives the
tail gradient. We split by MD region and take the group gradients by masked cotangents of the
closure's unchanged (batch-mean) losses, which for a per-sample loss are the same gradients, with
the same ``/ B`` normalisation. The official code lets both forwards update the BatchNorm running
statistics and restores the weights by subtracting ``e``; we freeze the statistics in the perturbed
forward (see ``sam``) and copy the weights back; its ``1e-16`` in the norm is our ``eps`` (1e-12,
davda54/sam's). The model's outputs other than ``fused``, ``unimodal``, ``features`` and
``projections`` are refused (``ValueError``) rather than silently left out of the split.
Cost: 2 forward + 3 backward (two over the graph at ``w``, one at ``w + e_tail``).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..data.labels import Regions, region_labels
from .sam import perturbed, sam_perturbation, trainable
from .strategy import Strategy, assign_grads, frozen_batchnorm_stats


@dataclass
class HeadTailConfig:
    """What ImbSAM and SSE-SAM share: the unimodal losses' weight, the perturbation norm's ``eps``
    and the batch-regions stand-in's ``bin_width``, ``many`` and ``few`` (used without ``set_regions``)."""

    unimodal_weight: float = 1.0
    eps: float = 1e-12
    bin_width: float = 2.0
    many: float = 0.08
    few: float = 0.02

    def __post_init__(self):
        if self.unimodal_weight < 0 or self.eps < 0 or self.bin_width <= 0:
            raise ValueError(f"need unimodal_weight >= 0, eps >= 0 and bin_width > 0; got {self.unimodal_weight}, "
                             f"{self.eps}, {self.bin_width}")


@dataclass
class ImbSAMConfig(HeadTailConfig):
    """``tail``: the MD regions whose samples are the tail (official: the few-shot classes);
    ``tail_weight``: the tail loss's factor at ``w`` and at ``w + e`` (official: 2)."""

    rho: float = 0.05
    tail: tuple[str, ...] = ("few",)
    tail_weight: float = 2.0

    def __post_init__(self):
        super().__post_init__()
        self.tail = tuple(self.tail)
        if self.rho < 0 or not self.tail_weight > 0:
            raise ValueError(f"need rho >= 0 and tail_weight > 0, got {self.rho}, {self.tail_weight}")
        if not self.tail or set(self.tail) - {"many", "medium", "few"}:
            raise ValueError(f"tail must name some of the regions 'many', 'medium', 'few', got {self.tail}")


SPLIT_OUTPUTS = {"fused", "unimodal"}
"""The model outputs whose per-sample cotangents are split into head and tail."""


def head_mask(target: Tensor, edges: Tensor, is_many: Tensor) -> Tensor:
    """``True`` where ``target`` falls in a head bin ``[edges[k], edges[k+1])`` (a label outside
    every bin is tail, as ``Regions.assign`` calls it "few"). ``is_many``: ``[n_bins]`` booleans, True
    for the head's bins."""
    idx = torch.bucketize(target.detach(), edges, right=True) - 1
    inside = (idx >= 0) & (idx < is_many.numel())
    return inside & is_many[idx.clamp(0, is_many.numel() - 1)]


def split_gradients(outputs: list[Tensor], objective: Tensor, params: list, masks: list[Tensor]):
    """The gradient of ``objective`` carried by each group of samples: ``dL/dyhat`` (one backward
    to the outputs), then one vector-Jacobian product per mask with the cotangents outside the
    group set to zero. ``outputs``: the model's per-sample outputs ``[B, ...]`` the objective reads."""
    used = [o for o in outputs if o.requires_grad]
    cotangents = torch.autograd.grad(objective, used, retain_graph=True, allow_unused=True)
    pairs = [(o, c) for o, c in zip(used, cotangents) if c is not None]
    out = []
    for i, mask in enumerate(masks):
        grads = torch.autograd.grad([o for o, _ in pairs],
                                    params,
                                    grad_outputs=[c * mask.reshape(-1, *[1] * (c.dim() - 1)).to(c.dtype)
                                                  for _, c in pairs],
                                    retain_graph=i < len(masks) - 1, allow_unused=True)
        out.append(list(grads))
    return out


@contextlib.contextmanager
def recorded_outputs(model, name: str, reads, why: str):
    """Record the per-sample outputs the losses read (``fused``, then every ``unimodal`` head) of each
    forward pass of ``model`` inside the block, into the list it yields; an output outside ``reads`` is
    refused, since the loss may depend on it too (``why`` says what the strategy can split)."""
    outputs: list[Tensor] = []

    def hook(module, args, out):
        unknown = sorted(set(out) - set(reads))
        if unknown:
            raise ValueError(f"{name}: the model's outputs {unknown} may carry the losses too; {why}")
        outputs[:] = [out["fused"], *out.get("unimodal", {}).values()]

    handle = model.register_forward_hook(hook)
    try:
        yield outputs
    finally:
        handle.remove()


def add_grads(a, b):
    return [x if y is None else y if x is None else x + y for x, y in zip(a, b)]


class HeadTailSAM(Strategy):
    """The shared core of ImbSAM and SSE-SAM: head gradient at ``w + e_head`` (at ``w`` when
    ``rho_head == 0``), tail gradient at ``w + e_tail``, their sum plus the plain gradient of
    ``Losses.extra`` at ``w``."""

    modulates_encoders = False

    def __init__(self, config=None, check_finite: bool = True, generator: torch.Generator | None = None):
        super().__init__(config, check_finite, generator)
        self.bins: tuple[Tensor, Tensor] | None = None  # (edges in target units, is_many)
        self._bins_on: tuple[Tensor, Tensor] | None = None
        self._outputs: list[Tensor] = []

    def tail_regions(self) -> tuple[str, ...]:
        return getattr(self.config, "tail", ("medium", "few"))

    def tail_weight(self) -> float:
        return getattr(self.config, "tail_weight", 1.0)

    def set_regions(self, regions: Regions, label_mean: float = 0.0, label_std: float = 1.0):
        """Head = the bins of ``regions`` (from the TRAINING labels) outside ``tail_regions``; ``label_mean``
        and ``label_std`` standardise the bin edges as the closure's targets are standardised."""
        edges = (np.asarray(regions.edges, dtype=np.float64) - label_mean) / label_std
        self.bins = (torch.as_tensor(edges), torch.as_tensor([r not in self.tail_regions() for r in regions.regions]))
        self._bins_on = None
        return self

    def prepare_run(self, run) -> None:
        self.set_regions(run.regions, run.label_mean, run.label_std)

    def radii(self, step: int) -> tuple[float, float]:
        raise NotImplementedError

    def _head(self, target: Tensor) -> Tensor:
        cfg = self.config
        if self.bins is None:  # the batch's own regions: a stand-in (one host read)
            regions = region_labels(target.detach().double().cpu().numpy(), cfg.bin_width, cfg.many, cfg.few)
            names = regions.assign(target.detach().double().cpu().numpy())
            return torch.as_tensor(~np.isin(names, self.tail_regions()), device=target.device)
        if self._bins_on is None or self._bins_on[0].device != target.device or self._bins_on[0].dtype != target.dtype:
            self._bins_on = (self.bins[0].to(target.device, target.dtype), self.bins[1].to(target.device))
        return head_mask(target, *self._bins_on)

    @contextlib.contextmanager
    def _recording(self):
        with recorded_outputs(self.model, self.name, SPLIT_OUTPUTS | {"features", "projections"},
                              f"the head/tail split back-propagates only through {sorted(SPLIT_OUTPUTS)}") as outputs:
            self._outputs = outputs
            yield

    def _objective(self, losses):
        return losses.fused + self.config.unimodal_weight * losses.unimodal_sum() if losses.unimodal else losses.fused

    def _grads_at(self, compute, params, offsets, mask):
        with perturbed(params, offsets), frozen_batchnorm_stats(self.model), self._recording():
            losses = compute()
            (grads,) = split_gradients(self._outputs, self._objective(losses), params, [mask])
        return grads, self._objective(losses).detach()

    def backward(self, compute, step, epoch):
        cfg = self.config
        rho_head, rho_tail = self.radii(step)
        params = trainable(self.model)
        with self._recording():
            losses = compute()
        if losses.target is None:
            raise ValueError(f"{self.name}: the closure's Losses has no target, needed to split head and tail")
        head = self._head(losses.target)
        tail = (~head).to(losses.target.dtype) * self.tail_weight()  # the weighted tail loss's cotangent mask
        if losses.extra is not None and losses.extra.requires_grad:  # first: it may share the graph
            assign_grads(params, torch.autograd.grad(losses.extra, params, retain_graph=True, allow_unused=True))
        g_head, g_tail = split_gradients(self._outputs, self._objective(losses), params, [head, tail])
        logs = {**losses.logs(), "head_fraction": head.float().mean(),
                "rho_head": torch.full((), rho_head, device=head.device)}  # made on the device: no copy
        if rho_head > 0:
            g_head, logs["loss_at_e_head"] = self._grads_at(
                compute, params, sam_perturbation(params, g_head, rho_head, eps=cfg.eps), head)
        g_tail, logs["loss_at_e_tail"] = self._grads_at(
            compute, params, sam_perturbation(params, g_tail, rho_tail, eps=cfg.eps), tail)
        assign_grads(params, add_grads(g_head, g_tail))
        return logs


class ImbSAM(HeadTailSAM):
    name = "imbsam"
    Config = ImbSAMConfig

    def radii(self, step):
        return 0.0, self.config.rho
