"""The Harvard npz loader (FairVision glaucoma, Harvard-GF) on tiny fake eyes in the published layouts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from remd_core.config import ConfigError
from remd_core.data import DataError, load, stage_from_md
from test_manifest import own_outputs  # noqa: F401 (autouse: each test's store in its own folder)

N_BSCANS = 12
SPLITS = {"train": ["data_000101", "data_000102", "data_000103", "data_000104"],
          "val": ["data_000105"], "test": ["data_000106"]}
IDS = [i for ids in SPLITS.values() for i in ids]
MD = dict(zip(IDS, [-1.5, -4.0, -8.5, -14.0, 0.5, -22.0]))
AGE = dict(zip(IDS, [58.0, 63.5, 71.0, 45.0, 66.0, 80.0]))
MALE = dict(zip(IDS, [1, 0, 1, 0, 0, 1]))


def bscan_value(j: int) -> int:
    return 10 + 20 * j


def eye_arrays(eye: str, n_bscans: int = N_BSCANS, fundus: bool = True, md: bool = True) -> dict:
    """One npz's content: B-scan j along axis 0 has intensity bscan_value(j); the SLO fundus is flat."""
    k = IDS.index(eye) if eye in IDS else 0
    arrays = {"oct_bscans": np.repeat(np.array([bscan_value(j) for j in range(n_bscans)], np.uint8)[:, None, None],
                                      20, 1).repeat(24, 2),
              "age": np.array(AGE.get(eye, 50.0)), "male": np.array(MALE.get(eye, 0)), "race": np.array(2),
              "glaucoma": np.array(1), "rnflt": np.zeros((10, 10), np.float32)}
    if fundus:
        arrays["slo_fundus"] = np.full((30, 30), 30 * k, np.uint8)
    if md:
        arrays["md"] = np.array(MD.get(eye, -3.0))
    return arrays


def write_fairvision(root: Path, **kw) -> Path:
    for split, ids in SPLITS.items():
        folder = root / "Glaucoma" / split
        folder.mkdir(parents=True)
        for eye in ids:
            np.savez_compressed(folder / f"{eye}.npz", **eye_arrays(eye, **kw))
            (folder / f"slo_{eye[5:]}.jpg").write_bytes(b"ignored copy")
    return root


def write_harvard_gf(root: Path, split_folders: bool) -> Path:
    for split, ids in SPLITS.items():
        folder = root / split if split_folders else root
        folder.mkdir(parents=True, exist_ok=True)
        for eye in ids:
            np.savez(folder / f"{eye}.npz", **eye_arrays(eye, fundus=False))
    return root


def npz_path(root: Path, eye: str) -> Path:
    return next(root.rglob(f"{eye}.npz"))


def load_fv(root: Path, **kw):
    return load("fairvision-glaucoma", **{"root": str(root), "image_size": 16, "n_bscans": 4, **kw})


def samples(dataset) -> dict[str, tuple[str, dict]]:
    return {split.ids[i]: (name, split[i]) for name, split in dataset.splits.items() for i in range(len(split))}


@pytest.fixture
def fairvision(tmp_path):
    return write_fairvision(tmp_path)


def test_fairvision_official_split_values(fairvision):
    ds = load_fv(fairvision)
    assert {k: v.ids for k, v in ds.splits.items()} == SPLITS
    assert ds.spec.modality_names == ("fundus", "oct") and ds.spec.modality("fundus").shape == (1, 16, 16)
    expected = np.array([bscan_value(j) for j in (0, 4, 7, 11)]) / 255  # evenly spaced along axis 0
    for eye, (split, s) in samples(ds).items():
        np.testing.assert_allclose(s["oct"].mean(dim=(1, 2)).numpy(), expected, atol=1e-6)
        np.testing.assert_allclose(s["fundus"].numpy(), 30 * IDS.index(eye) / 255, atol=1e-6)
        assert s["present"].tolist() == [True, True]
        assert s["y"].item() == pytest.approx(MD[eye])
        age, male, side = s["tabular"].tolist()
        assert (age, male) == (AGE[eye], MALE[eye]) and np.isnan(side)  # laterality is not in the files
        assert s["stage"].item() == stage_from_md(np.array([MD[eye]]))[0]
    assert ds.notes["split"] == "official"


def test_fairvision_stratified_split(fairvision):
    ds = load_fv(fairvision, split="stratified", test=1, val=1)
    assert {k: len(v) for k, v in ds.splits.items()} == {"train": 4, "val": 1, "test": 1}
    assert sorted(samples(ds)) == sorted(IDS) and ds.notes["split"] == "stratified"


def test_fairvision_npz_without_md(fairvision):
    path = npz_path(fairvision, "data_000103")
    np.savez(path, **eye_arrays("data_000103", md=False))
    with pytest.raises(DataError, match=r"data_000103\.npz: key\(s\) \['md'\] missing.*needs 'md'"):
        load_fv(fairvision)


def test_harvard_gf_flat_folder_has_absent_fundus(tmp_path):
    root = write_harvard_gf(tmp_path, split_folders=False)
    ds = load("harvard-gf", root=str(root), image_size=16, n_bscans=4, test=1, val=1)
    assert {k: len(v) for k, v in ds.splits.items()} == {"train": 4, "val": 1, "test": 1}
    for eye, (_, s) in samples(ds).items():
        assert s["present"].tolist() == [False, True]
        assert s["fundus"].shape == (1, 16, 16) and s["fundus"].abs().sum() == 0
        assert s["y"].item() == pytest.approx(MD[eye])
    assert ds.notes["split"] == "stratified" and ds.notes["fundus"].startswith("absent")


def test_harvard_gf_split_folders_are_official(tmp_path):
    root = write_harvard_gf(tmp_path, split_folders=True)
    ds = load("harvard-gf", root=str(root), image_size=8, n_bscans=2)
    assert {k: v.ids for k, v in ds.splits.items()} == SPLITS


def test_unreadable_npz(fairvision):
    path = npz_path(fairvision, "data_000105")
    path.write_bytes(b"not a zip archive at all")
    with pytest.raises(DataError, match=r"data_000105\.npz: unreadable npz"):
        load_fv(fairvision)


def test_bscan_counts_differ(fairvision):
    np.savez(npz_path(fairvision, "data_000104"), **eye_arrays("data_000104", n_bscans=9))
    with pytest.raises(DataError, match=r"12 in data_000101, 9 in data_000104"):
        load_fv(fairvision)
    s = samples(load_fv(fairvision, resample_bscans=True))["data_000104"][1]
    expected = np.array([bscan_value(j) for j in (0, 3, 5, 8)]) / 255  # rint(linspace(0, 8, 4))
    np.testing.assert_allclose(s["oct"].mean(dim=(1, 2)).numpy(), expected, atol=1e-6)


@pytest.mark.parametrize("bad, message", [(np.nan, r"MD is missing or not a number for sample\(s\) data_000102"),
                                          (-40.0, r"implausible MD .* data_000102 \(-40\)"),
                                          (8.0, r"implausible MD .* data_000102 \(8\)")])
def test_bad_md(fairvision, bad, message):
    path = npz_path(fairvision, "data_000102")
    np.savez(path, **{**eye_arrays("data_000102"), "md": np.array(bad)})
    with pytest.raises(DataError, match=message):
        load_fv(fairvision)


def test_duplicate_ids_across_split_folders(fairvision):
    np.savez(fairvision / "Glaucoma" / "test" / "data_000101.npz", **eye_arrays("data_000101"))
    with pytest.raises(DataError, match=r"across split folders.*duplicate sample id\(s\) data_000101"):
        load_fv(fairvision)


def test_empty_official_split(fairvision):
    npz_path(fairvision, "data_000105").unlink()
    with pytest.raises(DataError, match=r"split\(s\) \['val'\] are empty"):
        load_fv(fairvision)


def test_missing_layout_folders(tmp_path):
    with pytest.raises(DataError, match=r"Glaucoma.*does not exist"):
        load_fv(tmp_path)
    (tmp_path / "Glaucoma" / "train").mkdir(parents=True)
    with pytest.raises(DataError, match=r"split folder\(s\) \['val', 'test'\] missing"):
        load_fv(tmp_path)


def test_root_from_env_var_or_error(fairvision, monkeypatch):
    monkeypatch.delenv("REMD_FAIRVISION_ROOT", raising=False)
    with pytest.raises(DataError, match="REMD_FAIRVISION_ROOT"):
        load("fairvision-glaucoma")
    with pytest.raises(DataError, match="does not exist"):
        load("harvard-gf", root=str(fairvision / "nowhere"))
    monkeypatch.setenv("REMD_FAIRVISION_ROOT", str(fairvision))
    assert load("fairvision-glaucoma", image_size=8, n_bscans=2).test.ids == SPLITS["test"]


def test_bad_config_values(fairvision):
    with pytest.raises(ConfigError, match="layout"):
        load_fv(fairvision, layout="eyepacs")
    with pytest.raises(ConfigError, match="split"):
        load_fv(fairvision, split="random")


def write_metadata(root: Path, **changes) -> Path:
    """FairVision's metadata table: filename, age, gender, race, use, md (as in data_summary_glaucoma.csv)."""
    import pandas as pd

    use = {"train": "training", "val": "validation", "test": "test"}
    rows = [{"filename": f"{eye}.npz", "age": AGE[eye] + 1, "gender": "Male" if MALE[eye] else "Female",
             "race": "White", "use": use[split], "md": MD[eye], "glaucoma": "yes"}
            for split, ids in SPLITS.items() for eye in ids]
    frame = pd.DataFrame(rows).astype(object)
    for column, (row, value) in changes.items():
        frame.loc[row, column] = value
    path = root / "Glaucoma" / "data_summary_glaucoma.csv"
    frame.to_csv(path, index=False)
    return path


def test_fairvision_metadata_csv(fairvision):
    write_metadata(fairvision)
    ds = load_fv(fairvision)
    for eye, (_, s) in samples(ds).items():
        assert s["tabular"][0].item() == AGE[eye] + 1  # the table's age wins over the npz's
        assert s["tabular"][1].item() == MALE[eye]
    assert ds.notes["attributes"].loc["data_000103", "race"] == "White"
    assert ds.notes["metadata"].endswith("data_summary_glaucoma.csv") and ds.notes["no_metadata_row"] == []


@pytest.mark.parametrize("change, message", [
    ({"md": (2, -1.0)}, r"data_000103\.npz has md -8\.5 but .*data_summary_glaucoma\.csv line 4 has -1"),
    ({"gender": (2, "Female")}, r"data_000103\.npz has male 1 but .*line 4 has 0"),
    ({"use": (4, "training")}, r"line 6 \(data_000105\): use 'training', but .* lies in the val folder"),
    ({"age": (0, "old")}, r"line 2 \(data_000101\): age 'old' is not a number")])
def test_fairvision_metadata_conflicts(fairvision, change, message):
    write_metadata(fairvision, **change)
    with pytest.raises(DataError, match=message):
        load_fv(fairvision)


def test_md_from_metadata_when_the_npz_has_none(fairvision):
    np.savez(npz_path(fairvision, "data_000103"), **eye_arrays("data_000103", md=False))
    write_metadata(fairvision)
    assert samples(load_fv(fairvision))["data_000103"][1]["y"].item() == pytest.approx(MD["data_000103"])
