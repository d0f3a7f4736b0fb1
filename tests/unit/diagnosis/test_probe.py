"""The fixed probe set (``diagnosis.probe``, ``TrainConfig.probe_every``): frozen weights give a probe
oscillation of exactly 0 while the batch loss still oscillates; the set is stratified over the MD
regions and the same across calls and after a resume; probes change no training loss or weight; a
probe loss equals the objective evaluated by hand on the probe eyes; bad settings are refused."""

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from remd_core.evaluation import metrics
from remd_core.training.checkpoint import Checkpoints
from remd_core.data import load
from remd_core.diagnosis import (describe_probe_oscillation, probe_allocation, probe_oscillation_table,
                                 select_probe_set)
from remd_core.diagnosis.probe import REGION_GROUPS, build_probe
from remd_core.losses import regression_loss
from remd_core.models import EncoderConfig
from remd_core.training import TrainConfig, build_model, build_objective, fit
from remd_core.data.transforms import prepare_inputs

SMALL = dict(n_eyes=80, image_size=32, oct_size=32, n_bscans=2, test=20, val=12, cache=False)
SIZE = 16
BASE = dict(batch_size=8, encoder=EncoderConfig(width=0.125), precision="float64", probe_size=SIZE)
CONFIGS = {  # two-modality joint training; stage 1 (one modality, a contrastive term and its margin)
    "joint": dict(),
    "stage1": dict(modalities=("oct",), contrastive=True, strategy_options={"unimodal_weight": 0.0}),
}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def dataset():
    return load("synthetic-stage2", **SMALL)


def config(epochs=1, probe_every=1, **overrides) -> TrainConfig:
    return TrainConfig(epochs=epochs, probe_every=probe_every, **{**BASE, **overrides})


def probe_columns(history: pd.DataFrame) -> list[str]:
    return [c for c in history.columns if c.startswith("probe_loss_")]


# (1) frozen weights: the probe is constant, the batch loss is not

def test_frozen_weights_give_zero_probe_oscillation_while_the_batch_loss_oscillates(dataset):
    cfg = config(epochs=2, optimizer="adam", weight_decay=0.0, lr_schedule="constant")
    cfg.lr = 0.0  # refused by TrainConfig for a real run; Adam with lr 0 leaves every weight bit-identical
    torch.manual_seed(cfg.seed)
    initial = build_model(dataset, cfg, torch.device("cpu")).state_dict()
    result = fit(dataset, cfg, progress=False)
    weights = {k: v for k, v in result.model.state_dict().items() if "running_" not in k and "num_batches" not in k}
    assert all(torch.equal(v, initial[k]) for k, v in weights.items())  # BatchNorm's running statistics do move
    table = probe_oscillation_table(result.history)
    assert set(table["head"]) == {"fused", "fundus", "oct"}
    assert (table["probe_points"] == len(result.history)).all()
    assert (table["probe_oscillation"] == 0.0).all()
    assert (table[["probe_oscillation_head", "probe_oscillation_tail"]] == 0.0).all().all()
    assert (table["batch_oscillation"] > 0).all()
    assert result.history["probe_loss_fused"].nunique() == 1


# (2) the probe set: stratified, deterministic, the same after a resume

def test_probe_allocation_deals_equal_shares_tail_first():
    assert probe_allocation({"many": 30, "medium": 15, "few": 3}, 12) == {"few": 3, "medium": 5, "many": 4}
    assert probe_allocation({"many": 100, "medium": 50, "few": 30}, 64) == {"few": 22, "medium": 21, "many": 21}
    assert probe_allocation({"many": 5, "medium": 2, "few": 1}, 64) == {"few": 1, "medium": 2, "many": 5}
    assert probe_allocation({"many": 9, "medium": 0, "few": 0}, 4) == {"few": 0, "medium": 0, "many": 4}


def test_the_probe_set_is_stratified_and_a_function_of_labels_size_and_seed(dataset):
    y = dataset.train.y
    names = metrics.region_labels(y.numpy()).assign(y.numpy())
    available = {r: int(np.sum(names == r)) for r in metrics.REGIONS}
    assert available["few"] + available["medium"] > 0, "the test set needs tail eyes"
    probe = select_probe_set(y, SIZE, seed=0)
    assert len(probe.index) == SIZE == len(np.unique(probe.index))
    assert probe.counts() == {r: probe_allocation(available, SIZE)[r] for r in metrics.REGIONS}
    assert np.array_equal(probe.regions, names[probe.index])
    again = select_probe_set(y.clone(), SIZE, seed=0)
    assert np.array_equal(again.index, probe.index) and np.array_equal(again.regions, probe.regions)
    assert not np.array_equal(select_probe_set(y, SIZE, seed=1).index, probe.index)
    assert np.array_equal(select_probe_set(y, 10_000, seed=0).index, np.arange(len(y)))  # all eyes
    # every subset run on one data set probes the same eyes of the whole training split
    eyes = {s: build_probe(dataset.train, config(subset=s), build_objective(dataset, config(subset=s))).probe_set.index
            for s in ("all", "head", "tail")}
    assert all(np.array_equal(index, probe.index) for index in eyes.values())


class Interrupted(Exception):
    pass


def test_a_resumed_run_probes_the_same_eyes_and_ends_bit_identical(dataset, tmp_path, monkeypatch):
    cfg = config(epochs=2, probe_every=2)
    whole = fit(dataset, cfg, progress=False)
    save, saved = Checkpoints.save, []

    def save_then_die(self, state, best_weights=None):  # killed right after a mid-epoch checkpoint of epoch 2
        save(self, state, best_weights)
        saved.append(state["step"])
        if state["epoch"] == 1 and state["position"] > 0:
            raise Interrupted

    monkeypatch.setattr(Checkpoints, "save", save_then_die)
    with pytest.raises(Interrupted):
        fit(dataset, cfg, progress=False, checkpoint_dir=tmp_path, checkpoint_every=3)
    monkeypatch.setattr(Checkpoints, "save", save)
    resumed = fit(dataset, cfg, progress=False, checkpoint_dir=tmp_path, resume=True, checkpoint_every=3)
    assert 0 < saved[-1] < len(whole.history)
    pd.testing.assert_frame_equal(whole.history, resumed.history, check_exact=True)
    assert resumed.history["probe_loss_fused"].notna().sum() == len(whole.history) // 2
    state_a, state_b = whole.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)


# (3) probes on or off: the same training

@pytest.mark.parametrize("name", list(CONFIGS))
def test_probes_change_no_training_loss_or_weight(dataset, name):
    on = fit(dataset, config(epochs=2, probe_every=1, **CONFIGS[name]), progress=False)
    off = fit(dataset, config(epochs=2, probe_every=0, **CONFIGS[name]), progress=False)
    assert probe_columns(on.history) and not probe_columns(off.history)
    pd.testing.assert_frame_equal(on.history.drop(columns=probe_columns(on.history)), off.history, check_exact=True)
    pd.testing.assert_frame_equal(on.epochs, off.epochs, check_exact=True)
    state_on, state_off = on.model.state_dict(), off.model.state_dict()
    assert all(torch.equal(state_on[k], state_off[k]) for k in state_off)  # running statistics included
    assert np.array_equal(on.predictions["test"], off.predictions["test"])
    if name == "stage1":  # one modality: its head is the fused one, named as in the batch rows
        assert on.history["probe_loss_oct"].equals(on.history["probe_loss_fused"])


def test_the_probe_leaves_modes_running_statistics_and_random_states_alone(dataset):
    cfg = config()
    torch.manual_seed(0)
    model = build_model(dataset, cfg, torch.device("cpu"))
    model.train()
    model.encoders["fundus"].eval()  # a mixed state must come back as it was
    modes = [m.training for m in model.modules()]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    probe = build_probe(dataset.train, cfg, build_objective(dataset, cfg))
    rng = torch.get_rng_state()
    probe.evaluate(model)
    assert torch.equal(torch.get_rng_state(), rng)
    assert [m.training for m in model.modules()] == modes
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


# (4) the probe loss is the objective on the probe eyes

def test_the_last_probe_equals_the_objective_evaluated_by_hand_on_the_probe_eyes(dataset):
    cfg = config(epochs=1, probe_every=1)  # one epoch: the best epoch is the last, its model the last step's
    result = fit(dataset, cfg, progress=False)
    assert result.best_epoch == 1
    last = result.history.iloc[-1]
    probe = select_probe_set(dataset.train.y, cfg.probe_size, cfg.seed)
    batch = dataset.train.batch(torch.as_tensor(probe.index))
    target = ((batch["y"] - result.label_mean) / result.label_std).double()
    model = result.model.eval()  # dropout and the like off; BatchNorm on the probe batch's own statistics
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.train()
    with torch.no_grad():
        out = model(prepare_inputs(batch, model.modalities, dataset.spec.kinds, augment=False, dtype=torch.float64))
    mse = regression_loss("mse")
    predictions = {"fused": out["fused"], **out["unimodal"]}
    for head, pred in predictions.items():
        assert last[f"probe_loss_{head}"] == float(mse(pred, target))
        for region, names in REGION_GROUPS.items():
            mask = torch.as_tensor(np.isin(probe.regions, names))
            assert last[f"probe_loss_{head}_{region}"] == float(mse(pred[mask], target[mask]))
    assert (result.history["probe_loss_fused"].diff().dropna() != 0).any()  # the weights moved between probes


# (5) settings

@pytest.mark.parametrize("bad", [dict(probe_every=-1), dict(probe_every=1.5), dict(probe_size=1), dict(probe_size=0),
                                 dict(probe_size=8.5)])
def test_bad_probe_settings_are_refused(bad):
    with pytest.raises(ValueError, match="probe_"):
        TrainConfig(**bad)


def test_probes_off_keep_the_checkpoint_fingerprint_of_runs_from_before_probes(dataset):
    from remd_core.training.loop import _fingerprint

    off, on = _fingerprint(dataset, TrainConfig()), _fingerprint(dataset, TrainConfig(probe_every=5))
    assert "probe_" not in off["config"] and "probe_every" in on["config"]
    assert _fingerprint(dataset, TrainConfig(probe_size=8))["config"] == off["config"]


# the side-by-side table

def test_probe_oscillation_table_counts_the_probe_window_in_probe_points():
    steps = np.arange(40)
    batch = 1.0 + 0.2 * (-1.0) ** steps  # a zig-zag every step
    probe = np.where(steps % 4 == 3, 2.0 - steps / 100, np.nan)  # every 4 steps, monotone
    history = pd.DataFrame({"step": steps, "loss_fused": batch, "probe_loss_fused": probe, "run": "a"})
    history = pd.concat([history, history.assign(run="b", loss_oct=batch, probe_loss_oct=1.0)], ignore_index=True)
    table = probe_oscillation_table(history, groups="run", window=10)
    assert list(table.columns) == ["run", "head", "batch_steps", "batch_oscillation", "probe_points", "probe_every",
                                   "probe_window", "probe_oscillation"]
    a = table.set_index(["run", "head"])
    assert ("a", "oct") not in a.index  # a head a run does not have is left out
    assert a.loc[("a", "fused"), "probe_points"] == 10 and a.loc[("a", "fused"), "probe_every"] == 4
    assert a.loc[("a", "fused"), "probe_window"] == 2  # 10 steps / 4 steps per probe, rounded (at least 2)
    assert a.loc[("a", "fused"), "probe_oscillation"] == 0.0 < a.loc[("a", "fused"), "batch_oscillation"]
    assert a.loc[("b", "oct"), "probe_points"] == 40 and a.loc[("b", "oct"), "probe_window"] == 10
    assert probe_oscillation_table(history, groups="run", probe_window=3)["probe_window"].eq(3).all()
    with pytest.raises(ValueError, match="probe_every"):
        probe_oscillation_table(history[["step", "loss_fused"]])
    with pytest.raises(ValueError, match="probe_window"):
        probe_oscillation_table(history, probe_window=1)


def test_the_sentence_counts_curves_where_the_probe_oscillates_less():
    table = pd.DataFrame({"head": ["a", "b", "c"], "batch_steps": [12, 12, 2], "batch_oscillation": [0.5, 0.1, np.nan],
                          "probe_points": [12, 12, 2], "probe_oscillation": [0.0, 0.2, np.nan]})
    sentence = describe_probe_oscillation(table)
    assert sentence.startswith("In 1 of 2 curves with both indices (12 steps, 12 probes each; 1 curve too short")
    assert "probe 0.000 to 0.200, batch 0.100 to 0.500" in sentence and "some curves and not in others" in sentence
    assert "overstates how much" in describe_probe_oscillation(table.iloc[:1])
    assert describe_probe_oscillation(table.iloc[2:]).startswith("No curve has both indices")


def test_auto_probes_stay_within_their_budget_and_give_short_runs_points():
    from remd_core.diagnosis.probe import MIN_PROBE_POINTS, probe_cadence
    from remd_core.training import TrainConfig

    # k steps of 3 x batch eye-passes against one probe of 64 eyes: 64 / (3 * 16 * 14) = 9.5 % <= 10 %; 13 would be 10.3 %
    assert probe_cadence(16, 64) == 14 and probe_cadence(8, 64) == 27 and probe_cadence(16, 64, budget=0.5) == 3
    assert probe_cadence(16, 64, total_steps=208) == 14  # the cpu profile's 8 epochs of 26 steps
    assert probe_cadence(16, 64, total_steps=70) == 70 // MIN_PROBE_POINTS == 8
    assert probe_cadence(16, 64, total_steps=3) == 1
    assert TrainConfig(probe_every="auto").probe_steps(1000) == 14 and TrainConfig(probe_every=5).probe_steps(3) == 5
    assert TrainConfig().probe_steps(1000) == 0
    for bad in ("sometimes", -1, 2.5):
        with pytest.raises(ValueError, match="probe_every must be"):
            TrainConfig(probe_every=bad)
