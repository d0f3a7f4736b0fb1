"""BSAM: Balanced Sharpness-Aware Minimization (Liu, Wang, Duan, Li, "Balanced Sharpness-Aware
Minimization for Imbalanced Regression", ICCV 2025), as a newer rival in our Table 1 grid (it is not
in the Re-M3Dr paper).

Sources, and what was read: the official code, manmanjun/BSAM_for_Imbalanced_Regression at commit
ae9a273 (2025-07-13), ``agedb/train.py`` (``train`` and the class ``SAM``: ``first_step``,
``second_step``), its copy ``imdb-wiki/train.py``, the READMEs, and the weight files
``agedb/agedb_sqrt_weight.pt`` and ``imdb-wiki/imdb_sqrt_weight.pt`` (loaded and checked against
``agedb/data/agedb.csv``: each entry is exactly ``sqrt(count)`` of the training labels in one 1-year
bin, with no smoothing and no normalisation). The paper's full text could not be read here, only its
abstract (imbalanced regression read as imbalanced generalisation; SAM with a "targeted
reweighting" over the observation space so that every target region gets the same flatness), so no
section or equation number is cited: everything below follows the official code.

What the official step does (regression, one scalar output):

1. per-sample weights ``w_i = 1 / sqrt(n_b(y_i))``, ``n_b`` the number of training labels in the
   sample's label bin (the square-root inverse frequency of Yang et al.'s ``sqrt_inv``, without LDS);
2. ``L(theta) = (1/B) sum_i w_i l_i(theta)`` with ``l_i`` the per-sample L1 error;
3. ``e = rho * g / (||g|| + 1e-16)``, ``g = grad L(theta)``, ONE global norm over every parameter with
   a gradient (SAM's perturbation, on the re-weighted loss: the "balanced" sharpness);
4. ``g' = grad L(theta + e)`` with the same weights; the weights are restored and the base optimizer
   (SGD, momentum 0.9, weight decay 1e-4, cosine decay) steps with ``g'``.
   ``rho``: 0.2 is the ``--rho`` default of both ``train.py`` files and the AgeDB README's command;
   the IMDB-WIKI README runs 0.05.

Here, per step, on the objective of ``joint`` (``L_m + alpha sum_k L_u^k``; the ``bsam`` recipe sets
``alpha = 0``, naive fusion's loss): a forward hook records the model's ``fused`` and ``unimodal``
outputs, ``dL/dyhat_i`` is taken once, multiplied by ``w_i`` and back-propagated (``weighted_vjp``:
one vector-Jacobian product over the graph). For a loss that is a batch mean of per-sample terms
(MSE, L1, Huber) this is exactly the gradient of ``(1/B) sum_i w_i l_i``, the official objective with
the closure's loss in place of L1, and the closure needs no change. The perturbation is
``sam.sam_perturbation`` of that gradient; the second pass does the same at ``theta + e``.

Where we differ from the official code, and why:

- Loss: the official code re-weights the per-sample L1 error; we re-weight the per-sample
  cotangents of whatever loss the closure computes (the trainer's ``regression_loss``, MSE by
  default), so that BSAM's row differs from naive fusion by the optimiser alone, like the other
  sharpness-aware rows. For a loss coupling samples (``smape_r2``'s R^2 term) each sample's share of
  the gradient is scaled, which is the natural reading but not a per-sample loss.
- Bins: the official bins are integer labels (1-year ages; about 100 training faces per bin on
  AgeDB-DIR). Ours are the bins of the MD regions of the TRAINING labels that the trainer gives every
  strategy (``RunInfo.regions``: 2 dB bins by default, ``data.labels.region_labels``; about 30 eyes per
  bin at 500 training eyes), with the workbench's one binning rule (``floor((y - origin) / width)``
  in float64, on the device: no host read). The closure's targets are standardised, so they are
  mapped back to dB first. A bin with no training label, or a label outside every bin (never a
  training label), gets the largest weight of the table (the rarest region), not ``1 / 0``.
- ``power`` (default 0.5, the official square root) generalises ``n_b^-1/2`` to ``n_b^-power``;
  ``power = 0`` is SAM on the same objective. ``normalize`` (default False, as the official code)
  scales the weights so that they average 1 over the training labels, as LDS does; unnormalised, the
  loss is smaller by about the mean of ``1 / sqrt(n_b)``, which an Adam-type optimiser (the trainer's)
  largely cancels and SGD would not.
- ``Losses.extra`` (a stage-1 contrastive term, head regularisers) is back-propagated plainly at
  ``theta``, not re-weighted and not perturbed, as by ImbSAM; the official code has no such term.
- BatchNorm: the perturbed forward runs with the running statistics frozen (``frozen_batchnorm_stats``,
  as ``sam``), so they are updated once per step; the official code lets both forwards update them.
- The weights are restored by copying the saved ``theta`` (bit-exact); the official code subtracts
  ``e``. Its ``1e-16`` added to the norm is our ``eps`` default.
- Optimiser, schedule, batch size, epochs: the trainer's, as for every recipe (the official code: SGD
  lr 0.2, cosine to 1e-3 of it, batch 256, 400 epochs).
- Without ``set_regions`` (your own loop, the strategy harness) the bins and counts come from the
  batch's own targets with ``bin_width`` (in the targets' units; one host read per step): a stand-in
  for loops that know no training labels, not the method; ``fit`` calls ``prepare_run``.
- A model whose outputs other than ``fused``, ``unimodal``, ``features`` and ``projections`` could
  carry the loss (the evidential heads) is refused with a ``ValueError`` rather than re-weighted in
  part.

Cost: 2 forward + 2 backward passes (plus two backward passes through the loss alone, to the
outputs), as SAM.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..data.labels import LabelBins, Regions
from .imbsam import recorded_outputs
from .sam import perturbed, sam_perturbation, trainable
from .strategy import Strategy, assign_grads, frozen_batchnorm_stats

WEIGHTED_OUTPUTS = ("fused", "unimodal")
"""The model outputs whose per-sample cotangents are re-weighted."""
READ_ONLY_OUTPUTS = ("features", "projections")
"""Outputs the regression losses never read (the stage-1 contrastive term, in ``extra``, may)."""


@dataclass
class BSAMConfig:
    rho: float = 0.2
    power: float = 0.5
    normalize: bool = False
    unimodal_weight: float = 1.0
    eps: float = 1e-16
    bin_width: float = 2.0

    def __post_init__(self):
        if not (self.rho >= 0 and self.power >= 0 and self.unimodal_weight >= 0 and self.eps >= 0):
            raise ValueError(f"need rho >= 0, power >= 0, unimodal_weight >= 0 and eps >= 0; got {self.rho}, "
                             f"{self.power}, {self.unimodal_weight}, {self.eps}")
        if not self.bin_width > 0:
            raise ValueError(f"bin_width must be > 0, got {self.bin_width}")
        if not isinstance(self.normalize, bool):
            raise ValueError(f"normalize must be true or false, got {self.normalize!r}")


def balanced_weights(counts, power: float = 0.5, normalize: bool = False) -> np.ndarray:
    """Per-bin weights ``n_b ** -power`` (float64) from the training counts per bin; an empty bin gets
    the largest weight of the non-empty ones. ``normalize``: scaled so that the training labels'
    weights average 1 (``sum_b n_b w_b = N``)."""
    counts = np.asarray(counts, dtype=np.float64).reshape(-1)
    if counts.size == 0 or np.any(counts < 0) or not np.all(np.isfinite(counts)) or counts.sum() <= 0:
        raise ValueError(f"need non-negative finite bin counts with at least one label, got {counts}")
    if power < 0:
        raise ValueError(f"power must be >= 0, got {power}")
    filled = counts > 0
    table = np.empty_like(counts)
    table[filled] = counts[filled] ** -float(power)
    table[~filled] = table[filled].max()
    if normalize:
        table *= counts.sum() / float((counts * table).sum())
    return table


def sample_weights(labels: Tensor, bins: LabelBins, table: Tensor) -> Tensor:
    """Each label's bin weight, on the device (``[B]``, float64): the bin is ``bins``' floor rule; a
    label outside every bin takes the table's largest weight (no training label was there)."""
    y = labels.detach().reshape(-1).to(torch.float64)
    b = torch.floor((y - bins.origin) / bins.width)
    inside = (b >= 0) & (b < bins.n)
    values = table[b.clamp(0, bins.n - 1).to(torch.int64)]
    return torch.where(inside, values, table.max())


def weighted_vjp(outputs: list[Tensor], objective: Tensor, params: list, weights: Tensor,
                 retain_graph: bool = False) -> list[Tensor | None]:
    """The gradient of ``objective`` with each sample's share multiplied by ``weights[i]``:
    ``dL/dyhat`` (one backward to the per-sample outputs ``[B, ...]``), scaled sample by sample, then
    one vector-Jacobian product to ``params``. For ``objective = mean_i l_i(yhat_i)`` this is the
    gradient of ``mean_i weights[i] * l_i``."""
    used = [o for o in outputs if o.requires_grad]
    cotangents = torch.autograd.grad(objective, used, retain_graph=True, allow_unused=True)
    pairs = [(o, c) for o, c in zip(used, cotangents) if c is not None]
    if not pairs:
        return [None] * len(params)
    scaled = [c * weights.reshape(-1, *[1] * (c.dim() - 1)).to(c.dtype) for _, c in pairs]
    return list(torch.autograd.grad([o for o, _ in pairs], params, grad_outputs=scaled, retain_graph=retain_graph,
                                    allow_unused=True))


class BSAM(Strategy):
    name = "bsam"
    Config = BSAMConfig
    modulates_encoders = False

    def __init__(self, config=None, check_finite: bool = True, generator: torch.Generator | None = None):
        super().__init__(config, check_finite, generator)
        self.bins: LabelBins | None = None
        self.table: Tensor | None = None        # float64 weight per bin
        self.standardise = (0.0, 1.0)            # (label_mean, label_std) of the closure's targets
        self._table_on: Tensor | None = None
        self._outputs: list[Tensor] = []

    def set_regions(self, regions: Regions, label_mean: float = 0.0, label_std: float = 1.0) -> "BSAM":
        """Weights from the bins and TRAINING counts of ``regions``; the closure's targets are
        ``(y - label_mean) / label_std`` (the trainer standardises them)."""
        cfg = self.config
        self.bins = regions.bins
        self.table = torch.as_tensor(balanced_weights(regions.counts, cfg.power, cfg.normalize))
        self.standardise = (float(label_mean), float(label_std))
        self._table_on = None
        return self

    def prepare_run(self, run) -> None:
        self.set_regions(run.regions, run.label_mean, run.label_std)

    def weights(self, target: Tensor) -> Tensor:
        """The batch's per-sample weights ``[B]`` (float64, on the target's device)."""
        cfg = self.config
        if self.bins is None:  # stand-in: bins and counts of the batch itself (one host read)
            y = target.detach().double().cpu().numpy().reshape(-1)
            bins = LabelBins.covering(y, cfg.bin_width)
            table = balanced_weights(np.bincount(bins.index_np(y), minlength=bins.n), cfg.power, cfg.normalize)
            return sample_weights(target, bins, torch.as_tensor(table, device=target.device))
        if self._table_on is None or self._table_on.device != target.device:
            self._table_on = self.table.to(target.device)
        mean, std = self.standardise
        return sample_weights(target.detach().to(torch.float64) * std + mean, self.bins, self._table_on)

    @contextlib.contextmanager
    def _recording(self):
        with recorded_outputs(self.model, self.name, WEIGHTED_OUTPUTS + READ_ONLY_OUTPUTS,
                              f"BSAM re-weights the samples only through {list(WEIGHTED_OUTPUTS)}") as outputs:
            self._outputs = outputs
            yield

    def _objective(self, losses):
        cfg = self.config
        return losses.fused + cfg.unimodal_weight * losses.unimodal_sum() if losses.unimodal else losses.fused

    def backward(self, compute, step, epoch):
        cfg = self.config
        params = trainable(self.model)
        with self._recording():
            losses = compute()
        if losses.target is None:
            raise ValueError(f"{self.name}: the closure's Losses has no target, needed for the per-sample weights")
        weights = self.weights(losses.target)
        if losses.extra is not None and losses.extra.requires_grad:  # first: it may share the graph
            assign_grads(params, torch.autograd.grad(losses.extra, params, retain_graph=True, allow_unused=True))
        grads = weighted_vjp(self._outputs, self._objective(losses), params, weights)
        offsets = sam_perturbation(params, grads, cfg.rho, eps=cfg.eps)
        with perturbed(params, offsets), frozen_batchnorm_stats(self.model), self._recording():
            sharp = compute()
            grads = weighted_vjp(self._outputs, self._objective(sharp), params, weights)
        assign_grads(params, grads)
        return {**losses.logs(), "loss_perturbed": self._objective(sharp).detach(),
                "weight_mean": weights.mean().to(losses.fused.dtype)}
