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

Table 1's comparators use the same trainer: the model's head (``TrainConfig.head``: the linear
heads above, EyeMoSt's evidential heads, EchoMEN's multi-expert head on frozen encoders), a
comparator's contrastive term in place of AM-SupCon (``contrastive_loss``: SimCLR, Rank-N-Contrast,
EchoMEN, ConR; ``imbalance.objectives``) and the imbalanced-regression options LDS and FDS
(``lds``, ``fds``). Each reaches the strategies as a ``Losses``, so no strategy knows about them.

The regression loss is MSE by default; the paper's SMAPE + R^2 combination is
``regression_loss="smape_r2"`` (SMAPE is unstable for MD near 0 dB, which is why it is not the
default here). The paper uses Adam, batch 8 and ResNet34; the CPU defaults are AdamW (weight decay
1e-4), batch 16, cosine learning-rate decay and a ResNet18 of width 0.25.

Precision (``precision``): "auto" runs bf16 autocast on CUDA and float32 on CPU; "bf16" asks for
bf16 autocast on any device (CPU included, which is how the GPU path is tested without a GPU);
"float64" keeps weights and arithmetic in float64, on CPU only. float64 is what the smoke profile
(nbval's regression checks) uses: float32 results of a trained model differ in the third decimal
between processors and thread counts (different vector kernels and reduction orders), float64
results near 1e-12, so checked outputs hold on every machine. Channels-last memory format
(``channels_last``; None: on CUDA only) and pinned, non-blocking copies are used on CUDA.
``compile=True`` wraps each encoder with ``torch.compile`` (``nn.Module.compile``, so parameter
names and saved encoders are unchanged); it is off by default: compilation takes minutes, and on
this workbench's small CPU models it has not been shown to pay (``benchmarks/bench_steps.py
--compile`` measures it).

Checkpoints (``fit(checkpoint_dir=..., resume=True)``, ``remd_core.checkpoint``) are written at
every epoch end and, optionally, every N steps; a run killed at any point resumes from the last
one, bit-identical to an uninterrupted run on CPU.

``build_model`` and ``build_objective`` are the model and the per-batch objective (inputs, targets,
the loss closure a strategy calls) that ``fit`` uses, public so that benchmarks and notebooks run
exactly what training runs. Everything else is shared: seeded and deterministic on CPU, a progress
bar, validation every epoch, best-epoch selection on validation R^2, a per-step history (every
head's loss, every strategy log) and a per-epoch history as DataFrames. A non-finite loss or gradient stops training
with an error naming the step and the batch's sample ids.
"""

from __future__ import annotations

import copy
import hashlib
import json
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from . import metrics
from .checkpoint import Checkpoints, restore_rng_state, rng_state
from .config import from_dict
from .data.format import MultimodalDataset, MultimodalSplit
from .diagnosis.probe import build_probe, probe_cadence
from .files import load_torch, save_torch
from .paths import display_path
from .progress import report
from .timing import timed
from .losses import SMAPE_FLOOR_DB, margin_schedule, reference_step, regression_loss, stage1_objective
from .models import EncoderConfig, MultimodalRegressor
from .models.evidential import predictive_interval
from .models.evidential_regressor import (EVIDENTIAL_HEADS, EvidentialRegressor, evidential_losses,
                                          standardised_to_labels)
from .models.multi_expert import MultiExpertRegressor
from .models.rima import RIMARegressor, rima_alignment_loss
from .models.simmlm import SimMLMRegressor, mofe_term
from .imbalance.echomen import fit_expert_weights, multi_expert_loss
from .imbalance.lds import LabelBins, lds_weights, weighted_mse
from .imbalance.objectives import (CONTRASTIVE_LOSSES, CONTRASTIVE_WEIGHTS, NEEDS_TWO_VIEWS, OFFICIAL_VIEWS,
                                   contrastive_term)
from .optim import Losses, NonFiniteError, RunInfo, build_strategy
from .transforms import DRAW_SEED, LABELS, PRESENT, SECOND_VIEW, drop_modalities, prepare_inputs, to_device

SUBSETS = ("all", "head", "tail", "few")
OPTIMIZERS = ("adam", "adamw", "sgd")
LR_SCHEDULES = ("cosine", "constant")
PRECISIONS = ("auto", "float32", "bf16", "float64")
HEADS = ("linear", *EVIDENTIAL_HEADS, "echomen", "simmlm", "rima")
OWN_LOSS_HEADS = (*EVIDENTIAL_HEADS, "echomen")  # their loss replaces regression_loss
DRAWING_HEADS = ("simmlm", "rima")  # heads whose loss draws random numbers (each batch gets a seed from fit's generator)


@dataclass
class TrainConfig:
    """``modalities=None`` uses every modality of the data set. ``subset`` trains on all training
    samples, on the head only ("many" MD bins of ``metrics.region_labels``), on the tail only (every
    sample outside the head: "medium" and "few" bins, the paper's tail classes of Fig. 2) or on the
    "few" bins only (a handful of samples on small sets). ``head``: ``linear`` (the regressor of
    section 3.1) or an evidential head (``eyemost``, ``eyemost-plus``: ``models.evidential_regressor``),
    which trains on its own likelihood (``regression_loss`` must stay ``mse``, unused) and predicts a
    Student-t per eye, so its reports add interval coverage and width; or EchoMEN's multi-expert head
    on frozen encoders (``echomen``: ``models.multi_expert``, its own re-weighted expert losses).

    ``contrastive`` adds a contrastive term to the regression loss: ``contrastive_loss`` names it
    (``am-supcon``, stage 1 of section 4.1, weighted by ``supcon_weight``; or a comparator of
    ``imbalance.objectives``: ``simclr``, ``rnc``, ``echomen``, ``conr``, weighted by
    ``contrastive_weight``, None for the method's own), on ``contrastive_views`` augmented views of
    each batch (None: the method's own, 1 for AM-SupCon, 2 for the others). ``lds``: the regression
    loss weighted by label distribution smoothing (``imbalance.lds``; Yang et al. 2021) over bins of
    ``label_bin_width`` dB of training MD (MSE only); ``fds``: feature distribution smoothing
    (``imbalance.fds``) of each modality's features before the heads, over the same bins, its
    statistics updated at the end of every epoch (``update_fds``). ``modality_dropout``: each training
    sample's present modalities are dropped (zero-filled, ``present`` False) with this probability,
    never all of them (``transforms.drop_modalities``), a baseline for missing modalities.

    ``lr_schedule``: cosine decay over the epochs (the workbench's) or a constant learning rate (the
    paper states none). ``reference_run_steps``: None reads the margin's ``t_n`` and ``beta`` and
    SGM's window per iteration of this run (the paper's reading); a number S maps the run onto S
    iterations (``losses.reference_step``; SGM's window shrinks by the same factor), so a short run
    keeps the schedules' shape at the paper's scale (``losses.PAPER_RUN_STEPS``). ``smape_floor_db``:
    the SMAPE denominator's floor in the ``smape_r2`` loss (``losses.SMAPE_FLOOR_DB``).
    ``TRAINING_PRESETS["paper"]`` holds every setting the paper states (``preset_config``).

    ``probe_every``: every this many steps (0: never; ``"auto"``: as often as keeps the probes within
    ``diagnosis.probe.PROBE_BUDGET`` of training, ``probe_cadence``) evaluate a fixed probe set of
    ``probe_size`` training eyes, stratified over the MD regions, and log its per-head losses
    (``probe_loss_fused``, ``probe_loss_<modality>``, per region ``..._head``, ``..._tail``; NaN on
    other steps) beside the batch losses: a loss curve that moves only when the weights do
    (``diagnosis.probe``). It changes no training draw or weight."""

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
    precision: str = "auto"
    channels_last: bool | None = None
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    head: str = "linear"
    contrastive: bool = False
    contrastive_loss: str = "am-supcon"
    contrastive_views: int | None = None
    contrastive_weight: float | None = None
    lds: bool = False
    fds: bool = False
    label_bin_width: float = 1.0
    modality_dropout: float = 0.0
    lr_schedule: str = "cosine"
    reference_run_steps: int | None = None
    smape_floor_db: float = SMAPE_FLOOR_DB
    supcon_weight: float = 1.0
    margin_m0: float = 0.4
    margin_beta: float = 0.0005
    margin_warmup: int = 100
    adaptive_margin: bool = True
    temperature: float = 0.07
    init_encoders: dict = field(default_factory=dict)
    eval_batch_size: int = 64
    compile: bool = False
    probe_every: int | str = 0
    probe_size: int = 64

    def __post_init__(self):
        if isinstance(self.encoder, dict):
            self.encoder = EncoderConfig(**self.encoder)
        if self.modalities is not None:
            self.modalities = tuple(self.modalities)
        if self.subset not in SUBSETS:
            raise ValueError(f"subset must be one of {SUBSETS}, got {self.subset!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if self.reference_run_steps is not None and not self.reference_run_steps >= 1:
            raise ValueError(f"reference_run_steps must be None or >= 1 iterations, got {self.reference_run_steps}")
        if not self.smape_floor_db > 0:
            raise ValueError(f"smape_floor_db must be > 0 dB, got {self.smape_floor_db}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError(f"need epochs >= 1, batch_size >= 1 and lr > 0; got {self.epochs}, {self.batch_size}, {self.lr}")
        if self.margin_m0 < 0 or self.margin_beta < 0 or self.margin_warmup < 0 or self.supcon_weight < 0:
            raise ValueError("margin_m0, margin_beta, margin_warmup and supcon_weight must be >= 0")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {self.head!r}")
        if self.head != "linear" and (self.contrastive or self.lds or self.fds):
            raise ValueError(f"the {self.head} head has no projections or feature statistics: it takes no contrastive "
                             f"term, LDS or FDS (got contrastive={self.contrastive}, lds={self.lds}, fds={self.fds})")
        if self.head in OWN_LOSS_HEADS and self.regression_loss != "mse":
            raise ValueError(f"the {self.head} head trains on its own loss, not regression_loss "
                             f"{self.regression_loss!r}")
        if not 0.0 <= self.modality_dropout < 1.0:
            raise ValueError(f"modality_dropout must be in [0, 1), got {self.modality_dropout}")
        if not self.label_bin_width > 0:
            raise ValueError(f"label_bin_width must be > 0 dB, got {self.label_bin_width}")
        if self.contrastive_loss not in CONTRASTIVE_LOSSES:
            raise ValueError(f"contrastive_loss must be one of {CONTRASTIVE_LOSSES}, got {self.contrastive_loss!r}")
        if self.contrastive_views not in (None, 1, 2):
            raise ValueError(f"contrastive_views must be None (the method's own), 1 or 2, got {self.contrastive_views}")
        if self.contrastive_loss in NEEDS_TWO_VIEWS and self.views() < 2:
            raise ValueError(f"{self.contrastive_loss} contrasts two augmented views; contrastive_views=1 leaves none")
        if self.contrastive and self.views() == 2 and not self.augment:
            raise ValueError(f"{self.contrastive_loss} contrasts two augmented views: it needs augment=True")
        if self.contrastive_weight is not None and not self.contrastive_weight >= 0:
            raise ValueError(f"contrastive_weight must be >= 0 (or None), got {self.contrastive_weight}")
        if self.lds and self.regression_loss != "mse":
            raise ValueError(f"lds weights the MSE; got regression_loss={self.regression_loss!r}")
        if self.probe_every != "auto" and (isinstance(self.probe_every, str) or int(self.probe_every) != self.probe_every
                                           or self.probe_every < 0):
            raise ValueError(f"probe_every must be an integer >= 0 steps (0: no probe) or 'auto' (probes within "
                             f"diagnosis.probe.PROBE_BUDGET of training), got {self.probe_every!r}")
        if int(self.probe_size) != self.probe_size or self.probe_size < 2:
            raise ValueError(f"probe_size must be an integer >= 2 eyes (BatchNorm needs a batch statistic), "
                             f"got {self.probe_size!r}")

    def probe_steps(self, total_steps: int | None = None) -> int:
        """Steps between probes (0: no probe), ``"auto"`` resolved by ``diagnosis.probe.probe_cadence``
        for a run of ``total_steps``."""
        if self.probe_every == "auto":
            return probe_cadence(self.batch_size, self.probe_size, total_steps)
        return int(self.probe_every)

    def views(self) -> int:
        """How many augmented views of each batch the contrastive term contrasts (1 without one)."""
        if not self.contrastive:
            return 1
        return self.contrastive_views or OFFICIAL_VIEWS[self.contrastive_loss]

    def parameter_dtype(self) -> torch.dtype:
        """The dtype of the weights: float64 for ``precision="float64"``, else float32 (bf16 is
        autocast over float32 weights)."""
        return torch.float64 if self.precision == "float64" else torch.float32


TRAINING_PRESETS = {
    "workbench": {},
    "paper": {"encoder": {"arch": "resnet34", "width": 1.0}, "batch_size": 8, "optimizer": "adam", "weight_decay": 0.0,
              "lr_schedule": "constant", "regression_loss": "smape_r2", "margin_m0": 0.4, "margin_beta": 0.0005},
}
"""Named sets of ``TrainConfig`` values. ``workbench``: the dataclass defaults (AdamW, batch 16,
cosine decay, MSE: stable on small CPU runs). ``paper``: every training setting Re-M3Dr states
(section 5.2: ResNet34, batch 8, Adam, the SMAPE + R^2 loss; section 5.6: ``m0 = 0.4``,
``beta = 0.0005`` per iteration); where it states nothing (learning rate, its schedule, weight decay,
``t_n``, the epochs) the preset takes the plain reading: Adam's default rate 1e-3 held constant, no
weight decay, and the workbench's ``t_n`` and epochs. The gpu profile trains with ``paper``."""


def preset_config(name: str = "workbench", overrides: dict | None = None, context: str = "") -> TrainConfig:
    """``TrainConfig`` with preset ``name``'s values, then ``overrides``; an unknown key is a
    ``ConfigError`` naming ``context`` (where the overrides came from)."""
    if name not in TRAINING_PRESETS:
        raise ValueError(f"unknown training preset {name!r}; known: {sorted(TRAINING_PRESETS)}")
    return from_dict(TrainConfig, {**TRAINING_PRESETS[name], **(overrides or {})},
                     context=context or f"training preset {name!r}")


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

    def summary(self) -> dict:
        return {"modalities": "+".join(self.model.modalities), "best_epoch": self.best_epoch,
                "seconds": round(self.seconds, 1),
                **{f"{split}_{k}": v for split, m in self.metrics.items() for k, v in m.items()}}


class TrainingError(RuntimeError):
    """Training cannot go on (a non-finite loss or gradient, or a validation score that cannot select
    a model); the message names what went wrong where."""


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


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig):
    """Per-epoch learning-rate schedule: cosine decay to 0 over ``config.epochs``, or constant."""
    if config.lr_schedule == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: 1.0)
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)


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
        weights = load_torch(path)
        if weights is None:
            raise FileNotFoundError(f"no intact encoder weights at {path} (missing, or corrupt and moved aside)")
        model.encoders[modality].load_state_dict(weights)


def save_encoders(model: MultimodalRegressor, folder: Path) -> dict[str, str]:
    """Write each encoder's weights to ``folder/<modality>.pt`` (with a checksum sidecar, see
    ``files.save_torch``); returns the paths for ``init_encoders``."""
    folder = Path(folder)
    paths = {}
    for modality, encoder in model.encoders.items():
        path = folder / f"{modality}.pt"
        save_torch(path, encoder.state_dict())
        paths[modality] = str(path)
    return paths


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


def build_model(dataset: MultimodalDataset, config: TrainConfig, device: torch.device | None = None
                ) -> MultimodalRegressor | EvidentialRegressor:
    """The model ``fit`` trains: ``config.modalities`` (None: every modality of ``dataset``) with
    ``config.encoder`` and ``config.head``, initial weights drawn from torch's global generator (seed it first) in the
    parameter dtype, on ``device`` (default: ``config.device``), stage-1 encoders loaded from
    ``config.init_encoders``, channels-last where ``config.channels_last`` asks for it (None: on
    CUDA), encoders compiled when ``config.compile``."""
    device = resolve_device(config.device) if device is None else device
    modalities = config.modalities or dataset.spec.modality_names
    with default_dtype(config.parameter_dtype()):  # initial weights drawn in float64 too (float32 draws differ
        if config.head == "linear":                  # between processors)
            bins = LabelBins.covering(dataset.train.y.double(), config.label_bin_width) if config.fds else None
            model = MultimodalRegressor(dataset.spec, modalities, config.encoder, fds_bins=bins)
        elif config.head == "echomen":
            model = MultiExpertRegressor(dataset.spec, modalities, config.encoder)
        elif config.head == "simmlm":
            model = SimMLMRegressor(dataset.spec, modalities, config.encoder)
        elif config.head == "rima":
            model = RIMARegressor(dataset.spec, modalities, config.encoder)
        else:
            model = EvidentialRegressor(dataset.spec, modalities, config.encoder,
                                        confidence_weight=EVIDENTIAL_HEADS[config.head])
    model = model.to(device)
    load_encoders(model, config.init_encoders)
    if config.channels_last if config.channels_last is not None else device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    if config.compile:
        for encoder in model.encoders.values():
            encoder.compile()
    return model


@dataclass
class Objective:
    """What ``fit`` minimises, batch by batch: ``prepare`` turns a batch of the data set into model
    inputs and standardised targets on the device (augmented when ``augment``), ``closure`` gives
    the ``compute`` a strategy calls (``remd_core.optim.Strategy.step``): the regression loss of the
    fused head, of every unimodal head (models of two or more modalities), and in stage 1
    (``config.contrastive``) ``losses.stage1_objective``'s contrastive term as ``Losses.extra``.
    An evidential model's loss is its own, split the same way (``evidential_regressor.evidential_losses``).
    Build it with ``build_objective``."""

    config: TrainConfig
    modalities: tuple[str, ...]
    kinds: dict[str, str]
    device: torch.device
    dtype: torch.dtype
    label_mean: float
    label_std: float
    loss_fn: Callable
    sample_weights: Callable | None = None   # labels in dB -> LDS weights [B] or EchoMEN's expert weights [B, M]

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
        if self.config.head in DRAWING_HEADS:  # from fit's generator, so a resumed run draws the same
            inputs[DRAW_SEED] = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        return inputs, to_device((batch["y"] - self.label_mean) / self.label_std, self.device).to(self.dtype)

    def closure(self, model: MultimodalRegressor, inputs: dict, target: torch.Tensor,
                margin: float | None = None) -> Callable[[], Losses]:
        """The loss closure of one batch (forward under the precision's autocast, losses in the
        parameter dtype). ``margin``: stage 1's current ``m(t)`` (``config.contrastive`` only)."""
        cfg, dtype, loss_fn = self.config, self.dtype, self.loss_fn
        if cfg.contrastive and margin is None:
            raise ValueError("a contrastive (stage-1) objective needs the current margin")
        autocast = autocast_context(cfg.precision, self.device)

        def compute():
            with autocast:
                out = model(inputs)
                second = model(inputs[SECOND_VIEW]) if SECOND_VIEW in inputs else None
            if "experts" in out:
                y_db = target * self.label_std + self.label_mean
                o = out["experts"]
                return Losses(fused=multi_expert_loss(o.experts.to(dtype), o.gate.to(dtype), target,
                                                      self.sample_weights(y_db))["loss"],
                              features=out["features"], target=target)
            if "router" in out:  # SimMLM: the regression loss, plus MoFe's fewer-modality copy and ranking term
                draws = torch.Generator().manual_seed(inputs.get(DRAW_SEED, cfg.seed))
                ranking, info = mofe_term(model, inputs, target, out, draws)
                extra = ranking
                if info["out_fewer"] is not None:  # the official task loss covers both copies of a pair
                    paired = info["has_pair"].to(target.device)
                    extra = extra + self.loss_fn(info["out_fewer"]["fused"][paired].to(dtype), target[paired])
                return Losses(fused=self.loss_fn(out["fused"].to(dtype), target), extra=extra,
                              features=out["features"], target=target)
            if "rima" in out:  # RIMA: the regression loss plus its class-wise alignment (weight 1, official)
                draws = torch.Generator().manual_seed(inputs.get(DRAW_SEED, cfg.seed))
                md_db = (target.detach() * self.label_std + self.label_mean).cpu()
                return Losses(fused=self.loss_fn(out["fused"].to(dtype), target),
                              extra=rima_alignment_loss(model, out, md_db, draws),
                              features=out["features"], target=target)
            if "evidential" in out:
                fused, unimodal, extra = evidential_losses(out["evidential"], target, model.confidence_weight,
                                                           self.multimodal)
                losses = Losses(fused=fused, unimodal=unimodal, extra=extra, features=out["features"], target=target)
                return losses
            regression = self.regression(target)
            if cfg.contrastive and cfg.contrastive_loss == "am-supcon":
                projections = [z.to(dtype) for z in out["projections"].values()]
                stage1 = stage1_objective(out["fused"].to(dtype), target, projections, target, margin,
                                          cfg.supcon_weight, regression=regression, temperature=cfg.temperature)
                losses = Losses(fused=stage1["regression"], extra=stage1["contrastive"])
            elif cfg.contrastive:
                weight = CONTRASTIVE_WEIGHTS[cfg.contrastive_loss] if cfg.contrastive_weight is None \
                    else cfg.contrastive_weight
                term = contrastive_term(cfg.contrastive_loss, _in_dtype(out, dtype),
                                        None if second is None else _in_dtype(second, dtype), target,
                                        self.label_mean, self.label_std)
                losses = Losses(fused=regression(out["fused"].to(dtype), target), extra=weight * term)
            else:
                losses = Losses(fused=regression(out["fused"].to(dtype), target))
            losses.features, losses.target = out["features"], target
            if self.multimodal:
                losses.unimodal = {m: regression(p.to(dtype), target) for m, p in out["unimodal"].items()}
            return losses
        return compute

    def regression(self, target: torch.Tensor) -> Callable:
        """The regression loss of a batch: ``loss_fn``, or with ``config.lds`` the MSE weighted by the
        LDS weights of the batch's labels."""
        if self.sample_weights is None or not self.config.lds:
            return self.loss_fn
        weights = self.sample_weights(target * self.label_std + self.label_mean)
        return lambda pred, t: weighted_mse(pred, t, weights)


def _in_dtype(out: dict, dtype: torch.dtype) -> dict:
    """A model's ``fused``, ``features`` and ``projections`` in ``dtype`` (out of an autocast's bf16)."""
    return {"fused": out["fused"].to(dtype), **{k: {m: v.to(dtype) for m, v in out[k].items()}
                                               for k in ("features", "projections")}}


def build_objective(dataset: MultimodalDataset, config: TrainConfig, device: torch.device | None = None) -> Objective:
    """The objective ``fit`` minimises on ``dataset`` with ``config`` (see ``Objective``): labels
    standardised with the mean and SD of the whole training split (whatever ``config.subset``),
    the regression loss ``config.regression_loss`` (``smape_r2`` bound to that mean and SD)."""
    device = resolve_device(config.device) if device is None else device
    mean, std = float(dataset.train.y.double().mean()), float(dataset.train.y.double().std())  # reductions in float64:
    # a float32 sum depends on the vector width of the processor (an Intel and an AMD CPU differ here)
    loss_fn = regression_loss(config.regression_loss, **({"label_mean": mean, "label_std": std, "eps": config.smape_floor_db}
                                                        if config.regression_loss == "smape_r2" else {}))
    y_db = dataset.train.y.double()
    weights = None
    if config.lds:
        weights = lds_weights(y_db, config.label_bin_width).to(device)
    elif config.head == "echomen":  # Eq. (4) of EchoMEN over 1 dB bins of training MD
        weights = fit_expert_weights(y_db, bin_width=1.0).to(device)
    return Objective(config, tuple(config.modalities or dataset.spec.modality_names),
                     dataset.spec.kinds, device, config.parameter_dtype(), mean, std,
                     loss_fn, weights)


def fit(dataset: MultimodalDataset, config: TrainConfig, progress: bool = True, checkpoint_dir: str | Path | None = None,
        resume: bool = False, checkpoint_every: int = 0) -> FitResult:
    """Train a model on ``dataset`` with ``config``; return it at its best validation epoch.

    ``checkpoint_dir``: write a checkpoint there at every epoch end and, with ``checkpoint_every``
    N > 0, every N steps (``remd_core.checkpoint``: the last one and the best weights, nothing
    else). ``resume=True`` continues from the last checkpoint in that folder when there is one (and
    starts fresh when there is none); on CPU a resumed run ends bit-identical to an uninterrupted
    one. A checkpoint written with other settings or data is refused."""
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
    train = training_split(dataset, config.subset)
    objective = build_objective(dataset, config, device)
    kinds, modalities = objective.kinds, objective.modalities
    mean, std = objective.label_mean, objective.label_std
    drop_last = len(train) > config.batch_size
    stop = len(train) - len(train) % config.batch_size if drop_last else len(train)
    steps_per_epoch = stop // config.batch_size if drop_last else 1
    total_steps = config.epochs * steps_per_epoch
    strategy.prepare_run(RunInfo(metrics.region_labels(train.y.numpy()), float(mean), float(std), total_steps,
                                 config.reference_run_steps))
    probe = build_probe(dataset.train, config, objective)  # None unless config.probe_every
    probe_every = config.probe_steps(total_steps)

    run = {"epoch": 0, "step": 0, "order": None, "position": 0, "step_rows": [], "epoch_rows": [], "partial_rows": [],
           "best": {"r2": -np.inf, "epoch": 0, "file": None}, "elapsed": 0.0}
    best_weights = None
    checkpoints = Checkpoints(checkpoint_dir, _fingerprint(dataset, config)) if checkpoint_dir is not None else None
    saved = checkpoints.load() if resume else None
    if saved is not None:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        strategy.load_state_dict(saved["strategy"])
        restore_rng_state(saved["rng"], generator)
        run = {k: saved[k] for k in run}
        print(f"resuming from {display_path(checkpoints.last)}: epoch {run['epoch'] + 1}, step {run['step']}",
              file=sys.stderr, flush=True)
        if run["best"]["file"]:
            best_weights = checkpoints.best_weights(run["best"]["file"])

    def save_checkpoint(logs, new_best=None):
        state = {**run, "partial_rows": run["partial_rows"] + _rows(logs, run["epoch"], run["step"] - len(logs)),
                 "elapsed": run["elapsed"] + time.perf_counter() - start, "model": model.state_dict(),
                 "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                 "strategy": strategy.state_dict(), "rng": rng_state(generator)}
        checkpoints.save(state, new_best)

    start = time.perf_counter()
    label = f"{config.strategy} {'+'.join(modalities)}" + (" stage 1" if config.contrastive else "")
    bar = tqdm(total=config.epochs, initial=run["epoch"], desc=label, disable=not progress, unit="epoch")
    for epoch in range(run["epoch"], config.epochs):
        model.train()
        if run["order"] is None:  # the draw MultimodalSplit.batches(shuffle=True) makes
            run["order"], run["position"] = torch.randperm(len(train), generator=generator), 0
        logs = []
        stream = getattr(train, "stream_batches", None)  # a lazy split with loader workers (data/streaming.py)
        batches = stream(run["order"], run["position"], stop, config.batch_size, device) if stream else None
        while run["position"] < stop:
            batch = next(batches) if batches is not None else \
                train.batch(run["order"][run["position"]:run["position"] + config.batch_size])
            inputs, target = objective.prepare(batch, generator)
            margin = _margin(config, run["step"], total_steps)
            compute = objective.closure(model, inputs, target, margin)
            try:
                step_logs = strategy.step(compute, optimizer, step=run["step"], epoch=epoch)
            except NonFiniteError as err:
                raise TrainingError(f"{err} (epoch {epoch}); batch sample ids: {batch['id']}") from err
            step_logs["margin"] = torch.tensor(margin)
            logs.append(step_logs)
            run["step"] += 1
            if probe is not None and run["step"] % probe_every == 0:
                step_logs.update(probe.evaluate(model, margin))
            run["position"] += config.batch_size
            if checkpoints and checkpoint_every and run["step"] % checkpoint_every == 0 and run["position"] < stop:
                save_checkpoint(logs)
        if config.fds:
            update_fds(model, train, kinds, config.eval_batch_size, device, epoch)
        scheduler.step()
        run["step_rows"] += run["partial_rows"] + _rows(logs, epoch, run["step"] - len(logs))
        run["partial_rows"], run["order"], run["position"] = [], None, 0
        val_pred = predict(model, dataset.val, kinds, mean, std, config.eval_batch_size, device)
        val = metrics.regression_report(dataset.val.y.numpy(), val_pred)
        run["epoch_rows"].append({"epoch": epoch + 1, "val_r2": val["r2"], "val_mse": val["mse"],
                                  "val_mae": val["mae"], "lr": scheduler.get_last_lr()[0]})
        if not np.isfinite(val["r2"]):  # model selection would have nothing to choose from
            raise TrainingError(f"{dataset.name}: validation R2 is {val['r2']} after epoch {epoch + 1} ({len(dataset.val)} "
                             "validation eyes; R2 needs at least 2 with different labels, and finite predictions)")
        improved = val["r2"] > run["best"]["r2"]
        if improved:
            best_weights = copy.deepcopy(model.state_dict())
            run["best"] = {"r2": val["r2"], "epoch": epoch + 1, "file": f"best-epoch{epoch + 1}.pt"}
        run["epoch"] = epoch + 1
        report(f"{label} seed {config.seed}: epoch {epoch + 1}/{config.epochs}, validation R2 {val['r2']:.3f}")
        if checkpoints:
            save_checkpoint([], best_weights if improved else None)
        bar.update(1)
    bar.close()
    model.load_state_dict(best_weights)

    history = pd.DataFrame(run["step_rows"])
    if not objective.multimodal:  # the model's only prediction is its unimodal one
        history[f"loss_{modalities[0]}"] = history["loss_fused"]
    predictions = {s: predict(model, dataset[s], kinds, mean, std, config.eval_batch_size, device) for s in ("val", "test")}
    intervals = {s: predict_intervals(model, dataset[s], kinds, mean, std, config.eval_batch_size, device)
                 for s in ("val", "test")}
    intervals = {s: i for s, i in intervals.items() if i is not None}
    results = {s: metrics.regression_report(dataset[s].y.numpy(), p,
                                            (intervals[s][:, 0], intervals[s][:, 1]) if s in intervals else None)
               for s, p in predictions.items()}
    regions = metrics.region_labels(dataset.train.y.numpy())
    region_table = metrics.per_region_report(dataset.test.y.numpy(), predictions["test"], regions)
    return FitResult(model, history, pd.DataFrame(run["epoch_rows"]), results, region_table, predictions, intervals,
                     run["best"]["epoch"], mean, std, run["elapsed"] + time.perf_counter() - start, config)


def update_fds(model: MultimodalRegressor, split: MultimodalSplit, kinds: dict[str, str], batch_size: int, device,
               epoch: int) -> None:
    """FDS's end-of-epoch update (``imbalance.fds.FDS.update``) with every modality's features of the whole
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


@contextmanager
def default_dtype(dtype: torch.dtype):
    """Create tensors (a model's initial weights) in ``dtype`` inside the block."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


def autocast_context(precision: str, device: torch.device):
    """bf16 autocast where ``precision`` asks for it ("auto": on CUDA only); else nothing."""
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def _fingerprint(dataset: MultimodalDataset, config: TrainConfig) -> dict:
    """What a checkpoint must share with the run resuming it: every training setting (the
    device and the progress bar aside; the probe's settings while it is off) and the data (settings,
    and the training ids)."""
    settings = {k: v for k, v in asdict(config).items() if k not in ("device",)}
    if not config.probe_every:  # no probe: the fingerprint of a run from before probes existed
        settings = {k: v for k, v in settings.items() if k not in ("probe_every", "probe_size")}
    ids = hashlib.sha1("\n".join(dataset.train.ids).encode()).hexdigest()
    return {"config": json.dumps(settings, sort_keys=True, default=str), "dataset": dataset.name,
            "data": json.dumps(asdict(dataset.config), sort_keys=True, default=str), "train_ids": ids}


def _margin(config: TrainConfig, step: int, total_steps: int) -> float:
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
