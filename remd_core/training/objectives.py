"""What ``fit`` minimises, batch by batch: one ``Objective`` class per model family, chosen by the
head's registry entry (``training.heads.HEADS``), never by looking at a model's outputs.

Every objective turns a batch into model inputs and standardised targets (``prepare``) and gives the
loss closure a strategy calls (``closure``; ``remd_core.optim.Strategy.step``), returning a
``Losses``: the fused loss, the unimodal heads' losses where the model has them, and an ``extra``
term (a contrastive term, SimMLM's MoFe, RIMA's alignment) that strategies add as it is. A new
model family is one subclass that implements ``losses``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch

from ..data.transforms import DRAW_SEED, LABELS, PRESENT, SECOND_VIEW, drop_modalities, prepare_inputs, to_device
from ..losses.contrastive import Contrast, contrastive_term
from ..losses.echomen import fit_expert_weights, multi_expert_loss
from ..losses.lds import lds_weights, weighted_mse
from ..models.evidential_regressor import evidential_losses
from ..models.rima import rima_alignment_loss
from ..models.simmlm import mofe_term
from ..optim import Losses
from .runtime import autocast_context

if TYPE_CHECKING:
    from .config import TrainConfig


@dataclass
class Objective:
    """The shared part: ``prepare`` turns a batch of the data set into model inputs and standardised
    targets on the device (augmented when ``config.augment``, modalities dropped with
    ``config.modality_dropout``), ``closure`` runs the forward pass under the precision's autocast
    and hands the outputs to ``losses`` (in the parameter dtype). Build one with
    ``training.heads.build_objective``."""

    config: TrainConfig
    modalities: tuple[str, ...]
    kinds: dict[str, str]
    device: torch.device
    dtype: torch.dtype
    label_mean: float
    label_std: float
    loss_fn: Callable
    sample_weights: Callable | None = None   # labels in dB -> LDS weights [B] or EchoMEN's expert weights [B, M]

    draws: ClassVar[bool] = False  # its loss draws random numbers: each batch gets a seed from fit's generator

    @classmethod
    def weights_for(cls, config: TrainConfig, y_train_db: torch.Tensor):
        """Per-sample weights fitted on the training labels (dB), or ``None``."""
        return None

    @property
    def multimodal(self) -> bool:
        return len(self.modalities) > 1

    def prepare(self, batch: dict, generator: torch.Generator | None = None) -> tuple[dict, torch.Tensor]:
        """``(inputs, target)``: the batch's modalities (augmented with ``generator`` when
        ``config.augment``) and its labels standardised with the training split's mean and SD."""
        if self.config.modality_dropout:
            batch = {**batch, PRESENT: drop_modalities(batch[PRESENT], self.config.modality_dropout, generator)}
        inputs = prepare_inputs(batch, self.modalities, self.kinds, self.config.augment, generator, self.device,
                                self.dtype)
        if self.config.views() == 2:
            inputs[SECOND_VIEW] = prepare_inputs(batch, self.modalities, self.kinds, self.config.augment, generator,
                                                 self.device, self.dtype)
        if self.config.fds:  # FDS calibrates each training sample with the statistics of its MD bin
            inputs[LABELS] = to_device(batch["y"], self.device)
        if self.draws:  # from fit's generator, so a resumed run draws the same
            inputs[DRAW_SEED] = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        return inputs, to_device((batch["y"] - self.label_mean) / self.label_std, self.device).to(self.dtype)

    def closure(self, model, inputs: dict, target: torch.Tensor, margin: float | None = None) -> Callable[[], Losses]:
        """The loss closure of one batch (forward under the precision's autocast, losses in the
        parameter dtype). ``margin``: stage 1's current ``m(t)`` (``config.contrastive`` only)."""
        if self.config.contrastive and margin is None:
            raise ValueError("a contrastive (stage-1) objective needs the current margin")
        autocast = autocast_context(self.config.precision, self.device)

        def compute():
            with autocast:
                out = model(inputs)
                second = model(inputs[SECOND_VIEW]) if SECOND_VIEW in inputs else None
            return self.losses(model, inputs, target, out, second, margin)
        return compute

    def losses(self, model, inputs: dict, target: torch.Tensor, out: dict, second: dict | None,
               margin: float | None) -> Losses:
        """The batch's ``Losses`` from the model's outputs ``out`` (``second``: of the second view)."""
        raise NotImplementedError

    def draws_generator(self, inputs: dict) -> torch.Generator:
        """The generator of a drawing loss, seeded by the batch's draw (``prepare``)."""
        return torch.Generator().manual_seed(inputs.get(DRAW_SEED, self.config.seed))

    def labels_db(self, target: torch.Tensor) -> torch.Tensor:
        return target * self.label_std + self.label_mean

    def regression(self, target: torch.Tensor) -> Callable:
        """The regression loss of a batch: ``loss_fn``, or with ``config.lds`` the MSE weighted by the
        LDS weights of the batch's labels."""
        if self.sample_weights is None or not self.config.lds:
            return self.loss_fn
        weights = self.sample_weights(self.labels_db(target))
        return lambda pred, t: weighted_mse(pred, t, weights)


class RegressionObjective(Objective):
    """The linear heads of section 3.1: the regression loss of the fused head and, in a model of two or
    more modalities, of every unimodal head; with ``config.contrastive`` a contrastive term of
    ``losses.contrastive`` (stage 1's AM-SupCon of section 4.1, or a comparator's) as ``Losses.extra``;
    with ``config.lds`` the MSE weighted by LDS."""

    @classmethod
    def weights_for(cls, config: TrainConfig, y_train_db: torch.Tensor):
        return lds_weights(y_train_db, config.label_bin_width) if config.lds else None

    def losses(self, model, inputs, target, out, second, margin) -> Losses:
        cfg, dtype = self.config, self.dtype
        regression = self.regression(target)
        losses = Losses(fused=regression(out["fused"].to(dtype), target), features=out["features"], target=target)
        if cfg.contrastive:
            contrast = Contrast(target, self.label_mean, self.label_std, margin, cfg.temperature)
            term = contrastive_term(cfg.contrastive_loss, _in_dtype(out, dtype),
                                    None if second is None else _in_dtype(second, dtype), contrast)
            losses.extra = cfg.contrastive_term_weight() * term
        if self.multimodal:
            losses.unimodal = {m: regression(p.to(dtype), target) for m, p in out["unimodal"].items()}
        return losses


class EvidentialObjective(Objective):
    """EyeMoSt and EyeMoSt+: the model's own evidential likelihood, split into fused, per-modality and
    extra terms (``models.evidential_regressor.evidential_losses``)."""

    def losses(self, model, inputs, target, out, second, margin) -> Losses:
        fused, unimodal, extra = evidential_losses(out["evidential"], target, model.confidence_weight,
                                                   self.multimodal)
        return Losses(fused=fused, unimodal=unimodal, extra=extra, features=out["features"], target=target)


class MultiExpertObjective(Objective):
    """EchoMEN's multi-expert head: its re-weighted expert losses, with Eq. (4)'s expert weights over
    1 dB bins of training MD (``losses.echomen``)."""

    @classmethod
    def weights_for(cls, config: TrainConfig, y_train_db: torch.Tensor):
        return fit_expert_weights(y_train_db, bin_width=1.0)

    def losses(self, model, inputs, target, out, second, margin) -> Losses:
        o, dtype = out["experts"], self.dtype
        return Losses(fused=multi_expert_loss(o.experts.to(dtype), o.gate.to(dtype), target,
                                              self.sample_weights(self.labels_db(target)))["loss"],
                      features=out["features"], target=target)


class SimMLMObjective(Objective):
    """SimMLM: the task loss over both copies of each pair, plus MoFe's ranking term (``models.simmlm``).

    The official training step puts the more- and the fewer-modality copy of every sample in one batch
    of 2B and takes the task loss's batch mean over all of them, then adds ``0.1 * ranking``. Here an eye
    with a single present modality has no fewer copy (``models.simmlm``, difference 6), so the task loss
    is ``loss_fn`` over the B more-modality copies and the fewer copies of the paired eyes together (the
    mean over all 2B copies when every eye has a pair): ``Losses.fused``, so ``loss_fused`` covers both
    copies. Before 2026-12-06 it was ``mean(more) + mean(fewer)``, which halved the ranking term's weight
    against the task loss (0.05 in effect)."""

    draws = True

    def losses(self, model, inputs, target, out, second, margin) -> Losses:
        dtype = self.dtype
        ranking, info = mofe_term(model, inputs, target, out, self.draws_generator(inputs))
        pred, truth = out["fused"].to(dtype), target
        if info["out_fewer"] is not None:
            paired = info["has_pair"].to(target.device)
            pred = torch.cat([pred, info["out_fewer"]["fused"][paired].to(dtype)])
            truth = torch.cat([target, target[paired]])
        return Losses(fused=self.loss_fn(pred, truth), extra=ranking, features=out["features"], target=target)


class RIMAObjective(Objective):
    """RIMA: the regression loss plus its class-wise alignment (weight 1, as the official code)."""

    draws = True

    def losses(self, model, inputs, target, out, second, margin) -> Losses:
        md_db = self.labels_db(target.detach()).cpu()
        return Losses(fused=self.loss_fn(out["fused"].to(self.dtype), target),
                      extra=rima_alignment_loss(model, out, md_db, self.draws_generator(inputs)),
                      features=out["features"], target=target)


def _in_dtype(out: dict, dtype: torch.dtype) -> dict:
    """A model's ``fused``, ``features`` and ``projections`` in ``dtype`` (out of an autocast's bf16)."""
    return {"fused": out["fused"].to(dtype), **{k: {m: v.to(dtype) for m, v in out[k].items()}
                                               for k in ("features", "projections")}}
