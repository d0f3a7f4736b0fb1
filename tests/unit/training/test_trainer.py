import numpy as np
import pytest
import torch

from remd_core.evaluation import metrics
from remd_core.data import load
from remd_core.models import EncoderConfig
import pandas as pd

from remd_core.training import TrainConfig, TrainingError, build_model, build_objective, fit, predict

SMALL = dict(n_eyes=80, image_size=32, oct_size=32, n_bscans=2, test=20, val=12, cache=False)
TINY = EncoderConfig(width=0.125)


@pytest.fixture(scope="module")
def dataset():
    return load("synthetic-stage2", **SMALL)


@pytest.mark.slow
def test_fit_lowers_the_training_loss_and_reports_test_metrics(dataset):
    config = TrainConfig(modalities=("fundus",), epochs=4, batch_size=8, augment=False, encoder=TINY)
    result = fit(dataset, config, progress=False)
    assert len(result.epochs) == 4
    per_epoch = result.history.groupby("epoch")["loss_fused"].mean()
    assert per_epoch.iloc[-1] < per_epoch.iloc[0]
    assert result.best_epoch == int(result.epochs["val_r2"].idxmax()) + 1
    y = dataset.test.y.numpy()
    assert result.metrics["test"]["r2"] == pytest.approx(metrics.r2(y, result.predictions["test"]))
    assert result.metrics["test"]["n"] == 20


@pytest.mark.slow
def test_predictions_come_back_in_label_units(dataset):
    result = fit(dataset, TrainConfig(modalities=("oct",), epochs=1, batch_size=8, encoder=TINY), progress=False)
    model = result.model
    with torch.no_grad():  # a zeroed fusion head predicts the standardised mean: the train mean in dB
        model.fusion_head.weight.zero_()
        model.fusion_head.bias.zero_()
    kinds = {m.name: m.kind for m in dataset.spec.modalities}
    pred = predict(model, dataset.test, kinds, result.label_mean, result.label_std)
    assert np.allclose(pred, dataset.train.y.mean().item(), atol=1e-4)


@pytest.mark.slow
def test_fusion_trains_both_encoders_and_unimodal_weight_reaches_the_heads(dataset):
    naive = fit(dataset, TrainConfig(epochs=1, batch_size=8, encoder=TINY, strategy_options={"unimodal_weight": 0.0}),
                progress=False)
    untouched = {k: v for k, v in naive.model.heads.state_dict().items()}
    fresh = fit(dataset, TrainConfig(epochs=1, batch_size=8, encoder=TINY, strategy_options={"unimodal_weight": 0.0}),
                progress=False)
    joint = fit(dataset, TrainConfig(epochs=1, batch_size=8, encoder=TINY, strategy_options={"unimodal_weight": 1.0}),
                progress=False)
    # naive fusion never updates the unimodal heads: same seed, same initial heads
    assert all(torch.equal(untouched[k], fresh.model.heads.state_dict()[k]) for k in untouched)
    assert any(not torch.equal(untouched[k], joint.model.heads.state_dict()[k]) for k in untouched)


def test_training_is_deterministic_on_cpu(dataset):
    config = TrainConfig(epochs=1, batch_size=8, encoder=TINY, strategy="sgm")
    a, b = fit(dataset, config, progress=False), fit(dataset, config, progress=False)
    pd.testing.assert_frame_equal(a.history, b.history)
    assert np.array_equal(a.predictions["test"], b.predictions["test"])


def test_head_and_tail_subsets_train_on_their_samples_only():
    from remd_core.evaluation.metrics import head_tail_split
    from remd_core.training import training_split

    dataset = load("synthetic-stage2", n_eyes=500, image_size=8, oct_size=8, n_bscans=1, cache=False)
    head, few = head_tail_split(dataset.train.y.numpy())
    _, not_head = head_tail_split(dataset.train.y.numpy(), medium_as_tail=True)
    assert len(training_split(dataset, "head")) == head.sum() > 0
    assert len(training_split(dataset, "few")) == few.sum() > 0
    assert len(training_split(dataset, "tail")) == not_head.sum() == len(dataset.train) - head.sum()
    assert few.sum() < not_head.sum()
    assert len(training_split(dataset, "all")) == len(dataset.train)


def test_non_finite_loss_names_the_step_and_the_samples():
    data = load("randhie", n_rows=400)
    data.train.modalities["plan"][5, 0] = float("nan")
    bad_id = data.train.ids[5]
    with pytest.raises(TrainingError, match=rf"step \d+.*{bad_id}"):
        fit(data, TrainConfig(epochs=1, batch_size=400, augment=False), progress=False)


def test_stage1_loss_adds_the_contrastive_term(dataset):
    config = TrainConfig(modalities=("oct",), epochs=1, batch_size=8, encoder=TINY, contrastive=True,
                         margin_m0=0.5, margin_warmup=2, margin_beta=0.1)
    result = fit(dataset, config, progress=False)
    assert (result.history["loss_extra"] > 0).any()
    margins = result.history["margin"].tolist()
    assert margins[:3] == [0.5, 0.5, 0.5] and margins[3] == pytest.approx(0.5 * np.exp(-0.1))


@pytest.mark.parametrize("bad", [dict(subset="middle"), dict(optimizer="lion"), dict(margin_m0=-0.1), dict(epochs=0),
                                 dict(temperature=0.0)])
def test_bad_training_settings_are_value_errors(bad):
    with pytest.raises(ValueError):
        TrainConfig(**bad)


def test_the_public_builders_give_the_model_and_the_objective_fit_uses():
    data = load("randhie", n_rows=300)
    config = TrainConfig(encoder=EncoderConfig(mlp_hidden=8), augment=False, device="cpu", precision="float64")
    model = build_model(data, config)
    assert model.modalities == ("plan", "health") and model.fusion_head.weight.dtype == torch.float64
    objective = build_objective(data, config)
    y = data.train.y.double()
    assert objective.label_mean == pytest.approx(float(y.mean())) and objective.label_std == pytest.approx(float(y.std()))
    batch = data.train.batch(torch.arange(16))
    inputs, target = objective.prepare(batch)
    torch.testing.assert_close(target, (batch["y"].double() - y.mean()) / y.std())
    losses = objective.closure(model, inputs, target)()
    out = model(inputs)
    mse = torch.nn.functional.mse_loss
    assert losses.fused.item() == pytest.approx(mse(out["fused"], target).item(), rel=1e-12)
    assert losses.unimodal["plan"].item() == pytest.approx(mse(out["unimodal"]["plan"], target).item(), rel=1e-12)
    assert losses.extra is None and losses.target is target and set(losses.features) == {"plan", "health"}
    stage1 = build_objective(data, TrainConfig(modalities=("plan",), contrastive=True, supcon_weight=0.5,
                                               device="cpu"))
    with pytest.raises(ValueError, match="margin"):
        stage1.closure(model, inputs, target)


def test_a_validation_split_that_cannot_select_a_model_is_refused_by_name():
    tiny = load("synthetic-stage2", n_eyes=6, image_size=32, oct_size=32, n_bscans=2, test=0.2, val=0.15, cache=False)
    assert len(tiny.val) == 1  # R2 of one eye is undefined
    with pytest.raises(TrainingError, match=r"validation R2 is nan after epoch 1 \(1 validation eyes"):
        fit(tiny, TrainConfig(modalities=("oct",), epochs=1, encoder=TINY), progress=False)
