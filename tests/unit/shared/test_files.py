"""Durable files: atomic writes, and truncated or corrupt results, caches and encoders detected,
reported with their path and recomputed, never silently read."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from remd_core.experiments.compare import compare
from remd_core.data import load
from remd_core.files import (CorruptFileWarning, atomic_path, load_npz, read_json, remove_stale_temporaries, save_npz,
                             save_torch, write_json)
from remd_core.models import EncoderConfig
from remd_core.experiments.recipes import run_recipe
from remd_core.training import TrainConfig

SMALL = dict(n_eyes=80, image_size=32, oct_size=32, n_bscans=2, test=20, val=12)
BASE = TrainConfig(epochs=1, batch_size=8, encoder=EncoderConfig(width=0.125))


def truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def test_an_interrupted_write_leaves_the_old_file_and_no_temporary(tmp_path):
    write_json(tmp_path / "r.json", {"a": 1})
    with pytest.raises(KeyboardInterrupt), atomic_path(tmp_path / "r.json") as tmp:
        tmp.write_text('{"a": 2')
        raise KeyboardInterrupt
    assert read_json(tmp_path / "r.json") == {"a": 1} and os.listdir(tmp_path) == ["r.json"]


def test_truncated_or_incomplete_json_is_reported_moved_aside_and_treated_as_missing(tmp_path):
    write_json(tmp_path / "r.json", {"rows": [1, 2]})
    truncate(tmp_path / "r.json")
    with pytest.warns(CorruptFileWarning, match=r"r.json is corrupt \(not valid JSON"):
        assert read_json(tmp_path / "r.json") is None
    assert (tmp_path / "r.json.corrupt").exists() and not (tmp_path / "r.json").exists()
    write_json(tmp_path / "s.json", {"other": 1})
    with pytest.warns(CorruptFileWarning, match=r"lacks \['rows'\]"):
        assert read_json(tmp_path / "s.json", required=("rows",)) is None
    assert read_json(tmp_path / "missing.json") is None  # missing is not corrupt: no warning


def test_a_corrupt_synthetic_cache_is_regenerated(tmp_path, monkeypatch):
    monkeypatch.setenv("REMD_OUTPUTS", str(tmp_path))
    first = load("synthetic-stage2", **SMALL)
    (cached,) = (tmp_path / "cache").glob("*.npz")
    data = bytearray(cached.read_bytes())
    data[len(data) // 2] ^= 0xFF  # a flipped bit in the middle of an array
    cached.write_bytes(bytes(data))
    with pytest.warns(CorruptFileWarning, match=f"{cached.name} is corrupt .*CRC"):
        again = load("synthetic-stage2", **SMALL)
    assert torch.equal(first.train.modalities["oct"], again.train.modalities["oct"])
    assert load_npz(cached) is not None  # rewritten whole


def test_npz_round_trip_and_truncation(tmp_path):
    save_npz(tmp_path / "a.npz", {"x": np.arange(10)})
    assert np.array_equal(load_npz(tmp_path / "a.npz")["x"], np.arange(10))
    truncate(tmp_path / "a.npz")
    with pytest.warns(CorruptFileWarning, match="a.npz is corrupt"):
        assert load_npz(tmp_path / "a.npz") is None


def test_a_corrupt_comparison_result_is_recomputed(tmp_path):
    dataset = load("synthetic-stage2", **SMALL, cache=False)
    compare(dataset, ["unimodal-oct"], [0], BASE, tmp_path, progress=False, log=lambda _: None)
    cell = tmp_path / "cells" / f"{dataset.name}__unimodal-oct__seed0" / "results" / "compare.json"
    before = json.loads(cell.read_text())
    truncate(cell, 0.3)
    messages = []
    with pytest.warns(CorruptFileWarning, match="compare.json is corrupt"):
        compare(dataset, ["unimodal-oct"], [0], BASE, tmp_path, progress=False, log=messages.append)
    assert not any("skipped" in m for m in messages)  # run again, not read
    assert json.loads(cell.read_text())["rows"][0]["test_r2"] == before["rows"][0]["test_r2"]


def test_a_corrupt_stage1_encoder_is_retrained_not_loaded(tmp_path):
    dataset = load("synthetic-stage2", **SMALL, cache=False)
    run_recipe("am-only", dataset, BASE, tmp_path, progress=False)
    (encoder,) = (tmp_path / "stage1").glob("*/oct.pt")
    stamp = (encoder.parent / "fundus.pt").stat().st_mtime_ns
    truncate(encoder)
    with pytest.warns(CorruptFileWarning, match="oct.pt is corrupt"):
        rows, _ = run_recipe("am-only", dataset, BASE, tmp_path, progress=False)
    assert (encoder.parent / "fundus.pt").stat().st_mtime_ns == stamp  # the intact one is reused
    assert encoder.exists() and {r["model"] for r in rows} == {"fundus", "oct"}


def test_stale_temporaries_of_dead_processes_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / "sub" / f".last.pt.{dead.stdout.strip()}.tmp"
    stale.parent.mkdir()
    stale.write_bytes(b"half")
    live = tmp_path / f".r.json.{os.getpid()}.tmp"
    live.write_text("{")
    assert remove_stale_temporaries(tmp_path) == [stale]
    assert live.exists() and not stale.exists()


def test_save_torch_sidecar_accepts_the_previous_file_while_the_new_one_is_renamed(tmp_path):
    save_torch(tmp_path / "w.pt", {"w": torch.zeros(2)})
    old = (tmp_path / "w.pt").read_bytes()
    save_torch(tmp_path / "w.pt", {"w": torch.ones(2)})
    (tmp_path / "w.pt").write_bytes(old)  # as if the process died after the sidecar, before the rename
    from remd_core.files import load_torch

    assert torch.equal(load_torch(tmp_path / "w.pt")["w"], torch.zeros(2))
