"""Lazy, store-backed splits and the DataLoader path: the same values as the in-memory splits,
the same training run, and the missing-modality protocol on top."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from remd_core.data import load
from remd_core.data.missing import MissingConfig, with_missing
from remd_core.data.streaming import LazySplit, StoreArray
from remd_core.models import EncoderConfig
from remd_core.training import TrainConfig, fit
from test_manifest import own_outputs, write_eyes  # noqa: F401 (own_outputs: an autouse fixture)


@pytest.fixture
def manifest(tmp_path):
    # 24 eyes: the six formats four times over (ids 0101.. copied with new ids and spread labels)
    path = write_eyes(tmp_path)
    lines = path.read_text().splitlines()
    out = [lines[0]]
    for r in range(4):
        for k, line in enumerate(lines[1:]):
            eye, md, rest = line.split(",", 2)
            out.append(f"{r}{eye[1:]},{float(md) - 0.5 * r - 0.1 * k},{rest}")
    path.write_text("\n".join(out) + "\n")
    return path


def load_pair(manifest, **lazy_options):
    common = {"path": str(manifest), "test": 4, "val": 4, "image_size": 16, "n_bscans": 4}
    return load("manifest", **common), load("manifest", lazy=True, **common, **lazy_options)


def test_lazy_splits_equal_in_memory(manifest):
    memory, lazy = load_pair(manifest)
    assert isinstance(lazy.train, LazySplit) and isinstance(lazy.train.modalities["oct"], StoreArray)
    for name in ("train", "val", "test"):
        a, b = memory[name], lazy[name]
        assert a.ids == b.ids
        index = torch.randperm(len(a), generator=torch.Generator().manual_seed(1))
        ba, bb = a.batch(index), b.batch(index)
        for key in ("fundus", "oct", "present", "tabular", "y", "stage"):
            assert torch.equal(ba[key], bb[key]) or torch.allclose(ba[key], bb[key], equal_nan=True), key
        assert torch.equal(b.materialize().modalities["oct"], a.modalities["oct"])
    mask = memory.train.y.numpy() < -5
    sub = lazy.train.subset(mask)
    assert isinstance(sub, LazySplit) and torch.equal(sub.batch(torch.arange(len(sub)))["oct"],
                                                      memory.train.subset(mask).batch(torch.arange(len(sub)))["oct"])


def test_streamed_batches_equal_batch(manifest):
    _, lazy = load_pair(manifest, loader_workers=2)
    train = lazy.train
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))
    streamed = list(train.stream_batches(order, 0, 12, 4, "cpu"))
    assert len(streamed) == 3
    for p, batch in zip(range(0, 12, 4), streamed):
        direct = train.batch(order[p:p + 4])
        assert batch["id"] == direct["id"]
        for key in ("fundus", "oct", "y", "present"):
            assert torch.equal(batch[key], direct[key]), key
    assert load("manifest", path=str(manifest), test=4, val=4, image_size=16, n_bscans=4,
                lazy=True).train.stream_batches(order, 0, 12, 4) is None  # no loader workers: fit reads itself


def test_fit_on_lazy_and_streamed_splits_equals_in_memory(manifest):
    memory, lazy = load_pair(manifest)
    _, streamed = load_pair(manifest, loader_workers=2)
    config = TrainConfig(epochs=2, batch_size=4, encoder=EncoderConfig(width=0.125), device="cpu", augment=True)
    results = [fit(ds, config, progress=False) for ds in (memory, lazy, streamed)]
    for r in results[1:]:
        np.testing.assert_array_equal(r.predictions["test"], results[0].predictions["test"])
        np.testing.assert_array_equal(r.history["loss_fused"].to_numpy(), results[0].history["loss_fused"].to_numpy())


def test_missing_protocol_on_a_lazy_split(manifest):
    memory, lazy = load_pair(manifest)
    config = MissingConfig(test={"fundus": 0.5}, seed=3)
    a, b = with_missing(memory, config), with_missing(lazy, config)
    index = torch.arange(len(a.test))
    assert torch.equal(a.test.batch(index)["fundus"], b.test.batch(index)["fundus"])
    assert torch.equal(a.test.present, b.test.present)
    zero = torch.zeros_like(lazy.test.modalities["oct"])
    assert isinstance(zero, StoreArray) and zero.read().abs().sum() == 0


def test_lazy_needs_the_store(manifest):
    from remd_core.config import ConfigError

    with pytest.raises(ConfigError, match="lazy=True reads from the store"):
        load("manifest", path=str(manifest), lazy=True, store=False)
    with pytest.raises(ConfigError, match="set lazy=True too"):
        load("manifest", path=str(manifest), loader_workers=2)
