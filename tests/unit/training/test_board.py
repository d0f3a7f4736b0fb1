"""TensorBoard scalars of a fit (``training.board``, ``fit(log_dir=...)``): the event files read back
with TensorBoard's ``EventAccumulator`` hold, per epoch, the means of the history's per-step values
(losses, SGM's gamma and sharpness, probe losses) and the epoch rows (validation metrics, learning rate,
modality contributions); logging and contributions change nothing a seeded fit computes; a resumed
writer replaces the points an interrupted run wrote past its restart."""

import numpy as np
import pytest
import torch

from remd_core.data import load
from remd_core.models import EncoderConfig
from remd_core.training import TrainConfig, fit
from remd_core.training.board import RunBoard, epoch_scalars

tensorboard = pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

SMALL = dict(n_eyes=80, image_size=32, oct_size=32, n_bscans=2, test=20, val=12, cache=False)


def read_scalars(folder) -> dict[str, list[tuple[int, float]]]:
    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_epoch_scalars_name_every_kind_of_value():
    rows = [{"step": 0, "epoch": 1, "loss_fused": 1.0, "loss_oct": 2.0, "margin": 0.4, "gamma": 3.0,
             "probe_loss_fused": float("nan")},
            {"step": 1, "epoch": 1, "loss_fused": 3.0, "loss_oct": 4.0, "margin": 0.6, "gamma": 5.0,
             "probe_loss_fused": 0.5}]
    epoch = {"epoch": 1, "val_r2": 0.25, "val_mse": 9.0, "val_mae": 2.0, "lr": 1e-3, "shapley_oct": 0.1,
             "share_oct": 1.0, "shapley_empty": float("nan")}
    assert epoch_scalars(rows, epoch) == {
        "train/loss_fused": 2.0, "train/loss_oct": 3.0, "train/margin": 0.5, "strategy/gamma": 4.0,
        "probe/loss_fused": 0.5, "val/r2": 0.25, "val/mse": 9.0, "val/mae": 2.0, "train/lr": 1e-3,
        "contribution/shapley_oct": 0.1, "contribution/share_oct": 1.0}
    assert "train/margin" not in epoch_scalars(rows, epoch, margin=False)


def test_a_restarted_writer_replaces_the_points_past_its_first_epoch(tmp_path):
    first = RunBoard(tmp_path)
    for epoch in (1, 2, 3):
        first.epoch(epoch, [{"loss_fused": float(epoch)}], {"val_r2": 0.1 * epoch})
    first.close()
    resumed = RunBoard(tmp_path, first_epoch=2)  # the checkpoint was written after epoch 1
    for epoch in (2, 3):
        resumed.epoch(epoch, [{"loss_fused": 10.0 * epoch}], {"val_r2": 0.0})
    resumed.close()
    assert read_scalars(tmp_path)["train/loss_fused"] == [(1, 1.0), (2, 20.0), (3, 30.0)]


@pytest.mark.slow
def test_event_files_hold_the_history_and_logging_changes_no_result(tmp_path):
    dataset = load("synthetic-stage2", **SMALL)
    config = TrainConfig(epochs=3, batch_size=8, encoder=EncoderConfig(width=0.125), strategy="sgm", probe_every=2,
                         probe_size=16)
    logged = fit(dataset, config, progress=False, log_dir=tmp_path / "board")
    plain = fit(dataset, config, progress=False, contributions=False)

    # bit-identical: logging and the contribution passes draw nothing and change no weight
    for split in ("val", "test"):
        assert np.array_equal(logged.predictions[split], plain.predictions[split])
    assert all(torch.equal(a, b) for a, b in zip(logged.model.state_dict().values(), plain.model.state_dict().values()))
    assert logged.history.equals(plain.history)
    assert logged.epochs[plain.epochs.columns].equals(plain.epochs)
    assert not plain.contributions and "shapley_oct" not in plain.epochs

    scalars = read_scalars(tmp_path / "board")
    epochs = [1, 2, 3]
    by_epoch = logged.history.groupby("epoch")

    def check(tag, expected):
        assert [s for s, _ in scalars[tag]] == epochs, tag
        assert [v for _, v in scalars[tag]] == pytest.approx(list(expected), rel=1e-6, abs=1e-7), tag

    check("train/loss_fused", by_epoch["loss_fused"].mean())
    for m in ("oct", "fundus"):
        check(f"train/loss_{m}", by_epoch[f"loss_{m}"].mean())
        check(f"contribution/shapley_{m}", logged.epochs[f"shapley_{m}"])
        check(f"contribution/share_{m}", logged.epochs[f"share_{m}"])
    check("strategy/gamma", by_epoch["gamma"].mean())
    check("strategy/sharpness", by_epoch["sharpness"].mean())
    check("probe/loss_fused", by_epoch["probe_loss_fused"].mean())  # pandas' mean skips the NaN steps
    check("val/r2", logged.epochs["val_r2"])
    check("val/mse", logged.epochs["val_mse"])
    check("train/lr", logged.epochs["lr"])
    assert "train/margin" not in scalars  # no contrastive term: the margin is a constant

    # efficiency of the per-epoch values: they add up to v(all) - v(empty) = val R2 - the mean's R2
    total = logged.epochs["shapley_oct"] + logged.epochs["shapley_fundus"]
    assert total.tolist() == pytest.approx((logged.epochs["val_r2"] - logged.epochs["shapley_empty"]).tolist())
    test = logged.contributions["test"]
    assert test["shapley_oct"] + test["shapley_fundus"] == pytest.approx(logged.metrics["test"]["r2"]
                                                                         - test["shapley_empty"])


@pytest.mark.slow
def test_a_unimodal_fit_logs_its_loss_and_no_contribution(tmp_path):
    dataset = load("synthetic-stage2", **SMALL)
    config = TrainConfig(modalities=("oct",), epochs=2, batch_size=8, encoder=EncoderConfig(width=0.125),
                         contrastive=True, strategy_options={"unimodal_weight": 0.0})
    result = fit(dataset, config, progress=False, log_dir=tmp_path)
    scalars = read_scalars(tmp_path)
    assert not any(tag.startswith("contribution/") for tag in scalars) and not result.contributions
    assert [v for _, v in scalars["train/margin"]] == pytest.approx(
        result.history.groupby("epoch")["margin"].mean().tolist(), rel=1e-6)
    assert [v for _, v in scalars["train/loss_extra"]] == pytest.approx(
        result.history.groupby("epoch")["loss_extra"].mean().tolist(), rel=1e-6)
