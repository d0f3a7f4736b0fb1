"""Checkpoint and resume: a run killed with SIGKILL mid-epoch, resumed, ends bit-identical to an
uninterrupted run (weights, per-step history, test metrics); checkpoints load weights-only and a
corrupt or foreign one is never silently used."""

import pickle
import random
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pandas as pd
import pytest
import torch
from pathlib import Path

from remd_core.training.checkpoint import CheckpointMismatchError, Checkpoints, restore_rng_state, rng_state
from remd_core.data import load
from remd_core.files import CorruptFileWarning, UntrustedFileError, load_torch, save_torch
from remd_core.models import EncoderConfig
from remd_core.paths import REPO_ROOT
from remd_core.training import TrainConfig, fit

SMALL = dict(n_eyes=80, image_size=32, oct_size=32, n_bscans=2, test=20, val=12, cache=False)
CONFIGS = {  # strategies with state between steps, augmentation drawing from the run's generator
    "sgm": dict(strategy="sgm", strategy_options={"window": 3}),
    "ogm_ge": dict(strategy="ogm_ge"),
    "stage1": dict(modalities=("oct",), contrastive=True, strategy_options={"unimodal_weight": 0.0}),
}
EPOCHS, BATCH, EVERY = 3, 8, 1


def config_for(name: str) -> TrainConfig:
    return TrainConfig(epochs=EPOCHS, batch_size=BATCH, encoder=EncoderConfig(width=0.125), **CONFIGS[name])


@pytest.fixture(scope="module")
def dataset():
    return load("synthetic-stage2", **SMALL)


CHILD = textwrap.dedent("""
    import sys, torch
    torch.set_num_threads(1)
    sys.path.insert(0, {tests!r})
    from test_checkpoint import SMALL, EVERY, config_for
    from remd_core.data import load
    from remd_core.training import fit
    fit(load("synthetic-stage2", **SMALL), config_for(sys.argv[1]), progress=False, checkpoint_dir=sys.argv[2],
        resume=True, checkpoint_every=EVERY)
""")


def run_and_kill_mid_epoch(name: str, folder) -> dict:
    """Train in a real subprocess; SIGKILL it at a checkpoint written in the middle of an epoch after
    the first. The child is frozen (SIGSTOP) while its newest checkpoint is read, so it cannot write
    another before the verdict. Returns the checkpoint the resumed run starts from."""
    child = subprocess.Popen([sys.executable, "-c", CHILD.format(tests=str(Path(__file__).parent)), name, str(folder)],
                             cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    sidecar, seen = folder / "last.pt.sha256", None
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline:
            if child.poll() is not None:
                pytest.fail(f"the child finished before it was killed: {child.stderr.read().decode()[-2000:]}")
            stamp = sidecar.stat().st_mtime_ns if sidecar.exists() else None
            if stamp is not None and stamp != seen and (folder / "last.pt").exists():  # the sidecar comes first
                seen = stamp
                child.send_signal(signal.SIGSTOP)
                state = torch.load(folder / "last.pt", weights_only=True)
                if state["epoch"] >= 1 and state["position"] > 0:
                    child.send_signal(signal.SIGKILL)
                    child.wait(30)
                    return state
                child.send_signal(signal.SIGCONT)
            time.sleep(0.005)
        pytest.fail("no mid-epoch checkpoint within 300 s")
    finally:
        if child.poll() is None:
            child.kill()
        child.stderr.close()


def assert_same_run(a, b):
    state_a, state_b = a.model.state_dict(), b.model.state_dict()
    assert state_a.keys() == state_b.keys()
    different = [k for k in state_a if not torch.equal(state_a[k], state_b[k])]
    assert not different, f"weights differ: {different[:5]}"
    pd.testing.assert_frame_equal(a.history, b.history, check_exact=True)
    pd.testing.assert_frame_equal(a.epochs, b.epochs, check_exact=True)
    assert a.metrics == b.metrics and a.best_epoch == b.best_epoch
    assert np.array_equal(a.predictions["test"], b.predictions["test"])


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CONFIGS))
def test_a_run_killed_mid_epoch_resumes_bit_identical(dataset, tmp_path, name):
    torch.set_num_threads(1)
    killed_at = run_and_kill_mid_epoch(name, tmp_path / "run")
    assert 1 <= killed_at["epoch"] < EPOCHS and 0 < killed_at["position"] < len(dataset.train)
    assert len(killed_at["step_rows"]) == killed_at["epoch"] * (len(dataset.train) // BATCH)
    resumed = fit(dataset, config_for(name), progress=False, checkpoint_dir=tmp_path / "run", resume=True,
                  checkpoint_every=EVERY)
    uninterrupted = fit(dataset, config_for(name), progress=False)
    assert_same_run(resumed, uninterrupted)
    left = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert left == [f"best-epoch{resumed.best_epoch}.pt", f"best-epoch{resumed.best_epoch}.pt.sha256", "last.pt",
                    "last.pt.sha256"]  # only the last and the best checkpoint are kept


@pytest.mark.slow
def test_resuming_a_finished_run_trains_nothing_and_gives_the_same_model(dataset, tmp_path):
    config = replace_epochs(config_for("sgm"), 2)
    first = fit(dataset, config, progress=False, checkpoint_dir=tmp_path, resume=True)
    again = fit(dataset, config, progress=False, checkpoint_dir=tmp_path, resume=True)
    assert_same_run(first, again)
    assert again.seconds < first.seconds


def replace_epochs(config, epochs):
    from dataclasses import replace

    return replace(config, epochs=epochs)


def test_a_checkpoint_of_other_settings_is_refused_naming_them(dataset, tmp_path):
    config = replace_epochs(config_for("stage1"), 1)
    fit(dataset, config, progress=False, checkpoint_dir=tmp_path)
    from dataclasses import replace

    with pytest.raises(CheckpointMismatchError, match=r"lr 0.001 -> 0.002"):
        fit(dataset, replace(config, lr=2e-3), progress=False, checkpoint_dir=tmp_path, resume=True)


def test_a_corrupt_checkpoint_is_reported_moved_aside_and_the_run_starts_over(dataset, tmp_path):
    config = replace_epochs(config_for("stage1"), 1)
    fit(dataset, config, progress=False, checkpoint_dir=tmp_path)
    data = bytearray((tmp_path / "last.pt").read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside a tensor: torch.load alone would not notice
    (tmp_path / "last.pt").write_bytes(bytes(data))
    with pytest.warns(CorruptFileWarning, match="last.pt is corrupt"):
        restarted = fit(dataset, config, progress=False, checkpoint_dir=tmp_path, resume=True)
    assert (tmp_path / "last.pt.corrupt").exists()
    assert_same_run(restarted, fit(dataset, config, progress=False))


def test_a_truncated_checkpoint_is_reported_and_recomputed(tmp_path):
    save_torch(tmp_path / "w.pt", {"w": torch.arange(1000.0)})
    data = (tmp_path / "w.pt").read_bytes()
    (tmp_path / "w.pt").write_bytes(data[: len(data) // 3])
    with pytest.warns(CorruptFileWarning, match="w.pt is corrupt"):
        assert load_torch(tmp_path / "w.pt") is None
    assert not (tmp_path / "w.pt").exists() and (tmp_path / "w.pt.corrupt").exists()


class Payload:  # any class: unpickling it runs code chosen by whoever wrote the file
    def __reduce__(self):
        return (print, ("this ran while loading",))


def test_a_checkpoint_carrying_a_pickled_object_is_refused(dataset, tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    save_torch(folder / "last.pt", {"format": 1, "model": Payload()})  # a valid checksum: only the content is bad
    with pytest.raises(UntrustedFileError, match="weights-only loading refuses"):
        fit(dataset, replace_epochs(config_for("stage1"), 1), progress=False, checkpoint_dir=folder, resume=True)
    with pytest.raises(pickle.UnpicklingError):  # what torch itself says
        torch.load(folder / "last.pt", weights_only=True)


def test_every_random_state_round_trips_in_weights_only_form(tmp_path):
    generator = torch.Generator().manual_seed(3)
    torch.manual_seed(1), np.random.seed(2), random.seed(4)
    np.random.normal()  # leaves a cached Gaussian in numpy's state
    save_torch(tmp_path / "rng.pt", rng_state(generator))
    expected = (torch.rand(3), np.random.normal(size=3), random.random(), torch.rand(3, generator=generator))
    torch.manual_seed(9), np.random.seed(9), random.seed(9)
    restore_rng_state(load_torch(tmp_path / "rng.pt"), generator)
    again = (torch.rand(3), np.random.normal(size=3), random.random(), torch.rand(3, generator=generator))
    assert torch.equal(expected[0], again[0]) and np.array_equal(expected[1], again[1])
    assert expected[2] == again[2] and torch.equal(expected[3], again[3])


def test_a_crash_between_writing_the_best_weights_and_last_never_leaves_a_wrong_pair(tmp_path):
    checkpoints = Checkpoints(tmp_path, {"run": 1})
    checkpoints.save({"best": {"file": "best-epoch1.pt"}}, {"w": torch.ones(1)})
    save_torch(tmp_path / "best-epoch2.pt", {"w": torch.full((1,), 2.0)})  # written; then the process died
    state = checkpoints.load()  # last.pt still names epoch 1, whose weights are kept; epoch 2's are stale
    assert state["best"]["file"] == "best-epoch1.pt"
    assert torch.equal(checkpoints.best_weights("best-epoch1.pt")["w"], torch.ones(1))
    assert not (tmp_path / "best-epoch2.pt").exists()


def test_save_torch_leaves_no_temporary_file_when_interrupted(tmp_path, monkeypatch):
    def interrupted(obj, path):
        open(path, "wb").write(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_torch(tmp_path / "x.pt", {})
    assert list(tmp_path.iterdir()) == []


def test_resume_needs_a_checkpoint_folder(dataset):
    with pytest.raises(ValueError, match="checkpoint_dir"):
        fit(dataset, config_for("stage1"), progress=False, resume=True)
