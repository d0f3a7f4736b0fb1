"""One registry of model heads: a head's name gives its model builder and its objective.

``HEADS[name]`` is a ``Head``: ``model(dataset, modalities, config)`` builds the model (in the dtype and
on the device ``build_model`` sets), ``objective`` is its ``training.objectives.Objective`` class,
``own_loss`` says its loss replaces ``TrainConfig.regression_loss``, ``extras`` that it takes
stage 1's contrastive term, LDS and FDS (the linear heads only: the others have no projections or
feature statistics). Adding a head is one entry here and one objective class."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..data.labels import LabelBins
from ..losses.regression import regression_loss
from ..models import MultimodalRegressor
from ..models.evidential_regressor import EVIDENTIAL_HEADS, EvidentialRegressor
from ..models.multi_expert import MultiExpertRegressor
from ..models.pretrained import load_pretrained
from ..models.rima import RIMARegressor
from ..models.simmlm import SimMLMRegressor
from .checkpoint import load_encoders
from .objectives import (EvidentialObjective, MultiExpertObjective, Objective, RegressionObjective, RIMAObjective,
                         SimMLMObjective)
from .runtime import default_dtype, resolve_device


@dataclass(frozen=True)
class Head:
    model: Callable
    objective: type[Objective]
    own_loss: bool = False
    extras: bool = False


def _linear(dataset, modalities, config):
    bins = LabelBins.covering(dataset.train.y.double(), config.label_bin_width) if config.fds else None
    return MultimodalRegressor(dataset.spec, modalities, config.encoder, fds_bins=bins)


def _evidential(dataset, modalities, config):
    return EvidentialRegressor(dataset.spec, modalities, config.encoder, confidence_weight=EVIDENTIAL_HEADS[config.head])


def _plain(cls):
    return lambda dataset, modalities, config: cls(dataset.spec, modalities, config.encoder)


HEADS: dict[str, Head] = {
    "linear": Head(_linear, RegressionObjective, extras=True),                      # section 3.1
    **{name: Head(_evidential, EvidentialObjective, own_loss=True) for name in EVIDENTIAL_HEADS},  # EyeMoSt(+)
    "echomen": Head(_plain(MultiExpertRegressor), MultiExpertObjective, own_loss=True),  # EchoMEN, frozen encoders
    "simmlm": Head(_plain(SimMLMRegressor), SimMLMObjective),
    "rima": Head(_plain(RIMARegressor), RIMAObjective),
}


def build_model(dataset, config, device: torch.device | None = None):
    """The model ``fit`` trains: ``config.modalities`` (None: every modality of ``dataset``) with
    ``config.encoder`` and ``config.head``, initial weights drawn from torch's global generator (seed it first) in the
    parameter dtype, pretrained encoder weights loaded from ``config.encoder.weights`` (a local
    torchvision or MedicalNet file, ``models.pretrained``), on ``device`` (default: ``config.device``),
    stage-1 encoders loaded from ``config.init_encoders`` (over the pretrained ones), channels-last
    where ``config.channels_last`` asks for it (None: on CUDA), encoders compiled when ``config.compile``."""
    device = resolve_device(config.device) if device is None else device
    modalities = config.modalities or dataset.spec.modality_names
    with default_dtype(config.parameter_dtype()):  # initial weights drawn in float64 too (float32 draws differ
        model = HEADS[config.head].model(dataset, modalities, config)  # between processors)
    load_pretrained(model, config.encoder, dataset.spec.modality_names)  # a local file; init_encoders below win
    model = model.to(device)
    load_encoders(model, config.init_encoders)
    if config.channels_last if config.channels_last is not None else device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    if config.compile:
        for encoder in model.encoders.values():
            encoder.compile()
    return model


def build_objective(dataset, config, device: torch.device | None = None) -> Objective:
    """The objective ``fit`` minimises on ``dataset`` with ``config`` (the head's ``Objective`` class):
    labels standardised with the mean and SD of the whole training split (whatever ``config.subset``),
    the regression loss ``config.regression_loss`` (``smape_r2`` bound to that mean and SD)."""
    device = resolve_device(config.device) if device is None else device
    mean, std = float(dataset.train.y.double().mean()), float(dataset.train.y.double().std())  # reductions in float64:
    # a float32 sum depends on the vector width of the processor (an Intel and an AMD CPU differ here)
    loss_fn = regression_loss(config.regression_loss, **({"label_mean": mean, "label_std": std, "eps": config.smape_floor_db}
                                                        if config.regression_loss == "smape_r2" else {}))
    cls = HEADS[config.head].objective
    weights = cls.weights_for(config, dataset.train.y.double())
    return cls(config, tuple(config.modalities or dataset.spec.modality_names), dataset.spec.kinds, device,
               config.parameter_dtype(), mean, std, loss_fn, None if weights is None else weights.to(device))
