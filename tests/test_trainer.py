import numpy as np
import pytest
import torch

from remd_core import metrics
from remd_core.data import load
from remd_core.models import EncoderConfig
from remd_core.trainer import TrainConfig, fit, predict

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
