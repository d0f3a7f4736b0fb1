"""What one ``fit`` runs with: ``TrainConfig`` (every setting, validated on construction) and the named
presets of its values (``TRAINING_PRESETS``: the workbench's and the paper's)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..config import from_dict
from ..diagnosis.probe import probe_cadence
from ..losses.contrastive import CONTRASTIVE, CONTRASTIVE_LOSSES, NEEDS_TWO_VIEWS, OFFICIAL_VIEWS
from ..losses.regression import SMAPE_FLOOR_DB
from ..models import EncoderConfig
from .heads import HEADS

SUBSETS = ("all", "head", "tail", "few")
OPTIMIZERS = ("adam", "adamw", "sgd")
LR_SCHEDULES = ("cosine", "constant")
PRECISIONS = ("auto", "float32", "bf16", "float64")


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
    ``losses.contrastive``: ``simclr``, ``rnc``, ``echomen``, ``conr``, weighted by
    ``contrastive_weight``, None for the method's own), on ``contrastive_views`` augmented views of
    each batch (None: the method's own, 1 for AM-SupCon, 2 for the others). ``lds``: the regression
    loss weighted by label distribution smoothing (``losses.lds``; Yang et al. 2021) over bins of
    ``label_bin_width`` dB of training MD (MSE only); ``fds``: feature distribution smoothing
    (``models.fds``) of each modality's features before the heads, over the same bins, its
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
            raise ValueError(f"head must be one of {tuple(HEADS)}, got {self.head!r}")
        if not HEADS[self.head].extras and (self.contrastive or self.lds or self.fds):
            raise ValueError(f"the {self.head} head has no projections or feature statistics: it takes no contrastive "
                             f"term, LDS or FDS (got contrastive={self.contrastive}, lds={self.lds}, fds={self.fds})")
        if HEADS[self.head].own_loss and self.regression_loss != "mse":
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

    def contrastive_term_weight(self) -> float:
        """The contrastive term's weight: ``supcon_weight`` for AM-SupCon, else ``contrastive_weight`` or,
        when None, the method's own (``losses.contrastive.CONTRASTIVE``)."""
        if self.contrastive_loss == "am-supcon":
            return self.supcon_weight
        return CONTRASTIVE[self.contrastive_loss].weight if self.contrastive_weight is None else self.contrastive_weight

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
