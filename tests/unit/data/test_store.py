"""The decoded-data store: reuse, per-eye invalidation, parallel decoding, partial progress."""

from __future__ import annotations

import os

import numpy as np
import pytest

from remd_core.data import DataError, load
from remd_core.data.store import DecodedStore, read_rows
from test_manifest import IDS, ROWS, manifest, own_outputs, volume  # noqa: F401 (fixtures)


def load_m(path, **kw):
    return load("manifest", **{"path": str(path), "test": 1, "val": 1, "image_size": 16, "n_bscans": 4, **kw})


def images(ds) -> dict[str, np.ndarray]:
    return {s.ids[i]: np.concatenate([s[i]["fundus"].numpy().ravel(), s[i]["oct"].numpy().ravel()])
            for s in ds.splits.values() for i in range(len(s))}


def test_second_load_reuses_every_entry(manifest):
    first = load_m(manifest)
    assert first.notes["store"]["decoded"] == 6 and first.notes["store"]["reused"] == 0
    assert first.notes["store"]["folder"].startswith("outputs/cache/decoded/manifest-")
    second = load_m(manifest)
    assert second.notes["store"]["decoded"] == 0 and second.notes["store"]["reused"] == 6
    a, b = images(first), images(second)
    assert all(np.array_equal(a[i], b[i]) for i in IDS)
    plain = images(load_m(manifest, store=False))  # no store: the same values
    assert all(np.array_equal(a[i], plain[i]) for i in IDS)


def test_changed_file_invalidates_only_its_eye(manifest):
    load_m(manifest)
    path = manifest.parent / "images" / "0102.npy"
    np.save(path, 255 - volume())
    os.utime(path, ns=(1, 1))  # a different mtime even on coarse clocks
    ds = load_m(manifest)
    assert ds.notes["store"]["decoded"] == 1 and ds.notes["store"]["reused"] == 5
    s = {sp.ids[i]: sp[i] for sp in ds.splits.values() for i in range(len(sp))}["0102"]
    np.testing.assert_array_equal(s["oct"][:, 0, 0].numpy() * 255, [245, 165, 105, 25])
    meta = DecodedStore.open("manifest", {}, {}, manifest.parent / "x").meta  # another key: an empty store
    assert meta["n_slots"] == 0


def test_added_eye_and_changed_settings(manifest):
    load_m(manifest)
    text = manifest.read_text().splitlines()
    text.append(text[2].replace("0102,", "0199,", 1))  # a new id on the same files
    manifest.write_text("\n".join(text) + "\n")
    assert load_m(manifest).notes["store"]["decoded"] == 1
    other = load_m(manifest, image_size=8)  # other settings: another store, decoded afresh
    assert other.notes["store"]["decoded"] == 7 and other.notes["store"]["folder"] != load_m(manifest).notes["store"]["folder"]


def test_parallel_decoding_matches_one_process(manifest, tmp_path):
    one = load_m(manifest, workers=1, store_dir=str(tmp_path / "one"))
    two = load_m(manifest, workers=2, store_dir=str(tmp_path / "two"))
    assert two.notes["store"]["workers"] == 2 and one.notes["store"]["workers"] == 1
    a, b = images(one), images(two)
    assert all(np.array_equal(a[i], b[i]) for i in IDS)


def test_a_failing_eye_keeps_the_others(manifest):
    bad = manifest.parent / "images" / "0104.tif"
    good = bad.read_bytes()
    bad.write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"line 5 \(id 0104\).*unreadable TIFF"):
        load_m(manifest, workers=1)
    bad.write_bytes(good)
    ds = load_m(manifest)  # the three eyes decoded before 0104 failed are kept; 0104 and the two after it are new
    assert ds.notes["store"]["decoded"] == 3 and ds.notes["store"]["reused"] == 3


def test_read_rows_gathers_any_order(tmp_path):
    rows = np.arange(5 * 6, dtype=np.uint8).reshape(5, 2, 3)
    path = tmp_path / "m.u8"
    path.write_bytes(rows.tobytes())
    slots = [3, 4, 0, 2, 2]
    np.testing.assert_array_equal(read_rows(path, (2, 3), slots), rows[slots])
    with pytest.raises(DataError, match="shorter than its entry table"):
        read_rows(path, (2, 3), [7])


def test_stage2_and_harvard_use_the_store(tmp_path):
    from test_loaders_harvard import write_fairvision
    from test_loaders_stage2 import write_stage

    stage = write_stage(tmp_path / "stage")
    kw = {"root": str(stage), "test": 1, "val": 1, "image_size": 16, "n_bscans": 4}
    assert load("stage2", **kw).notes["store"]["decoded"] == 6
    assert load("stage2", **kw).notes["store"]["decoded"] == 0
    fv = write_fairvision(tmp_path / "fv")
    assert load("fairvision-glaucoma", root=str(fv), image_size=8, n_bscans=2).notes["store"]["decoded"] == 6
    assert load("fairvision-glaucoma", root=str(fv), image_size=8, n_bscans=2).notes["store"]["reused"] == 6
    assert len(ROWS) == 6
