"""The paper's training settings at every scale: the ``paper`` preset, schedules mapped onto the
paper's run length, and the guarded SMAPE + R^2 loss (issue 14, part 0)."""

import numpy as np
import pytest
import torch

from remd_core.evaluation import metrics
from remd_core.data import load
from remd_core.losses import PAPER_RUN_STEPS, margin_schedule, reference_step, smape_r2_loss
from remd_core.models import EncoderConfig
from remd_core.optim import RunInfo
from remd_core.optim.sgm import SGM, SGMConfig
from remd_core.training import TRAINING_PRESETS, TrainConfig, fit, preset_config
from remd_core.workbench.runner import PROFILES, fill_defaults

SMALL = dict(n_eyes=80, image_size=32, oct_size=32, n_bscans=2, test=20, val=12, cache=False)
TINY = EncoderConfig(width=0.125)


@pytest.fixture(scope="module")
def dataset():
    return load("synthetic-stage2", **SMALL)


def test_a_paper_scale_run_ends_with_the_margin_near_5_percent_of_m0():
    end = margin_schedule(PAPER_RUN_STEPS, 0.4, 0.0005, 100)
    assert end == pytest.approx(0.4 * np.exp(-0.0005 * 6200)) and 0.017 < end < 0.019
    # the cpu profile read per iteration (26 steps an epoch, 8 epochs) barely moves
    assert margin_schedule(208, 0.4, 0.0005, 100) == pytest.approx(0.4 * np.exp(-0.0005 * 108))
    # mapped onto the paper's run, its last step is the paper's last step
    assert margin_schedule(reference_step(208, 208, PAPER_RUN_STEPS), 0.4, 0.0005, 100) == pytest.approx(end)
    assert reference_step(13, 208, None) == 13


def test_fit_decays_the_margin_over_the_fraction_of_the_run(dataset):
    config = TrainConfig(modalities=("oct",), epochs=2, batch_size=8, encoder=TINY, contrastive=True,
                         reference_run_steps=PAPER_RUN_STEPS)
    margins = fit(dataset, config, progress=False).history["margin"].to_numpy()
    total = len(margins)
    assert total == 2 * (48 // 8)
    t = np.arange(total) * PAPER_RUN_STEPS / total  # by hand: step k is iteration k * 6300 / 12 of the paper's run
    expected = np.where(t < 100, 0.4, 0.4 * np.exp(-0.0005 * (t - 100)))
    np.testing.assert_allclose(margins, expected, rtol=1e-6)
    assert margins[-1] < 0.1 * 0.4 < margins[0]


def test_sgm_window_covers_the_same_fraction_of_the_run():
    regions = metrics.region_labels(np.linspace(-20, 2, 50))
    sgm = SGM(SGMConfig(window=50))
    sgm.prepare_run(RunInfo(regions, 0.0, 1.0, total_steps=208, reference_steps=PAPER_RUN_STEPS))
    assert sgm.window == round(50 * 208 / 6300) == 2 and sgm.scores.maxlen == 2
    sgm.prepare_run(RunInfo(regions, 0.0, 1.0, total_steps=100, reference_steps=PAPER_RUN_STEPS))
    assert sgm.window == 1  # never an empty window
    sgm.prepare_run(RunInfo(regions, 0.0, 1.0, total_steps=208))
    assert sgm.window == 50  # the paper's reading: steps of this run


def test_the_smape_floor_bounds_the_gradient_near_md_0():
    target = torch.tensor([0.05, -0.02, 0.01, -0.04], dtype=torch.float64)  # dB, normal eyes

    def smape_gradient(prediction, floor):
        pred = torch.tensor(prediction, dtype=torch.float64, requires_grad=True)
        smape_r2_loss(pred, target, r2_weight=0.0, eps=floor).backward()
        return pred.grad

    same_sign, opposite_sign = [0.01, -0.01, 0.02, -0.01], [-0.03, 0.02, -0.01, 0.03]
    # each term's gradient is at most 2 / floor per dB, and the loss averages 4 terms
    assert smape_gradient(same_sign, 1.0).abs().max() <= 2.0 / 1.0 / 4 + 1e-12
    # without the floor these eyes dominate the step (by hand, the first: (0.03 + 0.04 / 2) / 0.03^2 / 4 = 13.9)
    assert smape_gradient(same_sign, 1e-3)[0].item() == pytest.approx(-(0.03 + 0.02) / 0.03 ** 2 / 4)
    # and an eye predicted on the wrong side of 0 dB sits at SMAPE's ceiling of 2 with no gradient at all
    assert smape_gradient(opposite_sign, 1e-3).abs().max() == 0
    pred = torch.tensor(opposite_sign, dtype=torch.float64)
    # with the floor, every denominator here is 1 dB: the term is |y - yhat|, its gradient sign(yhat - y) / 4
    np.testing.assert_allclose(smape_gradient(opposite_sign, 1.0).numpy(), np.sign(pred - target).numpy() / 4, rtol=1e-12)


def test_the_paper_preset_holds_what_the_paper_states():
    config = preset_config("paper")
    assert (config.encoder.arch, config.batch_size, config.optimizer, config.regression_loss) == \
        ("resnet34", 8, "adam", "smape_r2")
    assert (config.margin_m0, config.margin_beta, config.weight_decay, config.lr_schedule) == (0.4, 0.0005, 0.0, "constant")
    assert preset_config("workbench") == TrainConfig()
    assert preset_config("paper", {"batch_size": 4}).batch_size == 4
    with pytest.raises(ValueError, match="unknown training preset 'papers'"):
        preset_config("papers")
    # the gpu profile trains with it: a notebook's None batch size is the paper's 8 there, 16 elsewhere
    assert PROFILES["gpu"]["TRAINING"] == "paper" and set(TRAINING_PRESETS) == {"workbench", "paper"}
    assert fill_defaults({"BATCH_SIZE": None, "TRAINING": None}, "gpu") == {"BATCH_SIZE": 8, "TRAINING": "paper"}
    assert fill_defaults({"BATCH_SIZE": None, "TRAINING": None}, "cpu") == {"BATCH_SIZE": 16, "TRAINING": "workbench"}


def test_a_constant_learning_rate_stays_put(dataset):
    config = TrainConfig(modalities=("oct",), epochs=3, batch_size=16, encoder=TINY, lr_schedule="constant", lr=3e-4)
    assert fit(dataset, config, progress=False).epochs["lr"].tolist() == [3e-4] * 3
    cosine = fit(dataset, TrainConfig(modalities=("oct",), epochs=3, batch_size=16, encoder=TINY, lr=3e-4),
                 progress=False).epochs["lr"].to_numpy()
    np.testing.assert_allclose(cosine, 3e-4 * (1 + np.cos(np.pi * np.arange(1, 4) / 3)) / 2, atol=1e-15)


@pytest.mark.parametrize("bad, message", [(dict(lr_schedule="step"), "lr_schedule"),
                                          (dict(reference_run_steps=0), "reference_run_steps"),
                                          (dict(smape_floor_db=0.0), "smape_floor_db")])
def test_bad_schedule_settings_are_refused(bad, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**bad)
