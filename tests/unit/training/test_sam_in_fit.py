"""The sharpness-aware strategies inside ``fit``: what the trainer tells them before the first step."""

import pytest

from remd_core.evaluation import metrics
from remd_core.data import load
from remd_core.models import EncoderConfig
from remd_core.optim import SSESAM, RunInfo
from remd_core.training import TrainConfig, fit

SMALL = dict(n_eyes=80, image_size=32, oct_size=32, n_bscans=2, test=20, val=12, cache=False)


def test_fit_gives_imbsam_the_training_regions_and_sse_sam_the_run_length(monkeypatch):
    dataset = load("synthetic-stage2", **SMALL)
    seen = []
    original = SSESAM.prepare_run
    monkeypatch.setattr(SSESAM, "prepare_run", lambda self, run: (seen.append(run), original(self, run))[1])
    config = TrainConfig(strategy="sse-sam", epochs=2, batch_size=8, encoder=EncoderConfig(width=0.125))
    result = fit(dataset, config, progress=False)
    (run,) = seen
    train = dataset.train.y.numpy()
    assert isinstance(run, RunInfo) and run.total_steps == 2 * (len(train) // 8) == len(result.history)
    expected = metrics.region_labels(train)
    assert run.regions.regions == expected.regions and (run.regions.edges == expected.edges).all()
    assert run.label_mean == pytest.approx(train.mean()) and run.label_std == pytest.approx(train.std(ddof=1), rel=1e-6)
