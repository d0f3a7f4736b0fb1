"""The head registry: a head's name gives its model and its objective, and a new head is one entry."""

import pytest
import torch

from remd_core.data import load
from remd_core.models import EncoderConfig, MultimodalRegressor
from remd_core.optim import Losses
from remd_core.training import HEADS, Head, TrainConfig, build_model, build_objective, fit
from remd_core.training.objectives import Objective

SMALL = dict(n_eyes=80, image_size=32, oct_size=32, n_bscans=2, test=20, val=12, cache=False)


class AbsoluteErrorObjective(Objective):
    """A made-up head's objective: the mean absolute error of the fused prediction, nothing else."""

    calls = 0

    def losses(self, model, inputs, target, out, second, margin) -> Losses:
        type(self).calls += 1
        return Losses(fused=(out["fused"].to(self.dtype) - target).abs().mean(), features=out["features"],
                      target=target)


def fused_only(dataset, modalities, config):
    return MultimodalRegressor(dataset.spec, modalities, config.encoder)


@pytest.fixture(scope="module")
def dataset():
    return load("synthetic-stage2", **SMALL)


def test_a_made_up_head_is_one_registry_entry_and_one_objective_and_trains(dataset, monkeypatch):
    monkeypatch.setitem(HEADS, "absolute", Head(fused_only, AbsoluteErrorObjective))
    config = TrainConfig(head="absolute", epochs=2, batch_size=8, encoder=EncoderConfig(width=0.125),
                         precision="float64", augment=False)
    objective = build_objective(dataset, config)
    assert type(objective) is AbsoluteErrorObjective
    result = fit(dataset, config, progress=False)
    steps = len(result.history)
    assert AbsoluteErrorObjective.calls == steps == 2 * (len(dataset.train) // 8)
    # the logged loss is the objective's: re-evaluate the first batch's closure on fresh initial weights
    torch.manual_seed(config.seed)
    model = build_model(dataset, config)
    generator = torch.Generator().manual_seed(config.seed)
    order = torch.randperm(len(dataset.train), generator=generator)
    inputs, target = objective.prepare(dataset.train.batch(order[:8]), generator)
    model.train()
    first = objective.closure(model, inputs, target)()
    assert result.history["loss_fused"].iloc[0] == pytest.approx(float(first.fused.detach()), rel=1e-9)


def test_every_registered_head_builds_its_objective_class(dataset):
    for name, head in HEADS.items():
        config = TrainConfig(head=name, encoder=EncoderConfig(width=0.125), precision="float64")
        assert type(build_objective(dataset, config)) is head.objective
        assert build_model(dataset, config).modalities == dataset.spec.modality_names


def test_an_unknown_head_is_refused_naming_the_known_ones():
    with pytest.raises(ValueError, match="head must be one of .*'linear'.*got 'nope'"):
        TrainConfig(head="nope")


@pytest.mark.parametrize("head", [name for name, h in HEADS.items() if not h.extras])
def test_heads_without_projections_refuse_a_contrastive_term(head):
    with pytest.raises(ValueError, match="no projections"):
        TrainConfig(head=head, contrastive=True)
