"""The STAGE loader on tiny fake eyes written in the published layout (see remd_core/data/stage2.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from remd_core.data import DataError, load, stage_from_md
from test_manifest import own_outputs  # noqa: F401 (autouse: each test's store in its own folder)

IDS = ["0201", "0202", "0203", "0204", "0205", "0206"]
MD = [-1.0, -3.5, -7.25, -15.5, 0.75, -25.0]
GENDER = ["male", "female", "male", "female", "male", "female"]
AGE = [61, 55, 70, 48, 66, 73]
EYE = ["OD", "OS", "OS", "OD", "OD", "OS"]
# 0201 has MD -1.0 (normal by stage_from_md) but is "early" in the info file: stage must come from the file.
STAGE = ["early", "early", "intermediate", "advanced", "normal", "advanced"]
N_BSCANS = 12


def bscan_value(j: int) -> int:
    """Pixel intensity of B-scan ``j``: the selected slices' means reveal which files were read."""
    return 10 + 20 * j


def write_stage(root: Path, edition: str = "2024", ids=IDS, md=MD) -> Path:
    """A STAGE_training tree: 12 B-scans of 32 x 40 per eye, a 48 x 48 fundus (2024), GT and info."""
    base = root / "STAGE_training"
    for k, eye in enumerate(ids):
        folder = base / "training_images" / eye
        folder.mkdir(parents=True)
        for j in range(N_BSCANS):
            Image.fromarray(np.full((32, 40), bscan_value(j), np.uint8)).save(folder / f"{j}_image.jpg")
        if edition == "2024":
            Image.fromarray(np.full((48, 48, 3), (40 * k, 100, 200), np.uint8)).save(folder / f"{eye}.jpg")
    (base / "training_GT").mkdir()
    gt = pd.DataFrame({"ID": ids, "MD": md})
    info = pd.DataFrame({"ID": ids, "gender": GENDER[:len(ids)], "age": AGE[:len(ids)], "eye": EYE[:len(ids)],
                         "stage": STAGE[:len(ids)]})
    if edition == "2024":
        gt.to_csv(base / "training_GT" / "task1_GT_training.csv", index=False)
    else:  # Excel users often end up with the IDs stored as numbers
        gt.assign(ID=[int(i) for i in ids]).to_excel(base / "training_GT" / "task1_GT_training.xlsx", index=False)
        info = info.assign(ID=[int(i) for i in ids])
    info.to_excel(base / "data_info_training.xlsx", index=False)
    return root


def gt_path(root: Path) -> Path:
    return root / "STAGE_training" / "training_GT" / "task1_GT_training.csv"


def rewrite_gt(root: Path, ids, md) -> None:
    pd.DataFrame({"ID": ids, "MD": md}).to_csv(gt_path(root), index=False)


def eye_dir(root: Path, eye: str) -> Path:
    return root / "STAGE_training" / "training_images" / eye


def load_stage(root: Path, **kw):
    return load("stage2", **{"root": str(root), "test": 1, "val": 1, "image_size": 16, "n_bscans": 4, **kw})


def samples(dataset) -> dict[str, dict]:
    out = {}
    for split in dataset.splits.values():
        for i in range(len(split)):
            out[split.ids[i]] = split[i]
    return out


@pytest.fixture
def stage2024(tmp_path):
    return write_stage(tmp_path, "2024")


def test_2024_layout_values(stage2024):
    ds = load_stage(stage2024)
    assert {k: len(v) for k, v in ds.splits.items()} == {"train": 4, "val": 1, "test": 1}
    eyes = samples(ds)
    assert sorted(eyes) == IDS and all(isinstance(i, str) and len(i) == 4 for i in eyes)
    assert ds.spec.modality_names == ("fundus", "oct")
    # picks 0, 4, 7, 11 of 12; lexicographic file order (0, 1, 10, 11, 2, ...) would give 0, 2, 5, 9
    expected = np.array([bscan_value(j) for j in (0, 4, 7, 11)]) / 255
    for k, eye in enumerate(IDS):
        s = eyes[eye]
        assert s["oct"].shape == (4, 16, 16) and s["fundus"].shape == (3, 16, 16)
        np.testing.assert_allclose(s["oct"].mean(dim=(1, 2)).numpy(), expected, atol=3 / 255)
        np.testing.assert_allclose(s["fundus"].mean(dim=(1, 2)).numpy(), np.array([40 * k, 100, 200]) / 255,
                                   atol=6 / 255)
        assert s["present"].tolist() == [True, True]
        assert s["y"].item() == pytest.approx(MD[k])
        assert s["tabular"].tolist() == [AGE[k], GENDER[k] == "male", {"OD": 0, "OS": 1}[EYE[k]]]
        assert ds.spec.strata_names[s["stage"].item()] == STAGE[k]
    assert ds.notes["edition"] == "2024" and ds.notes["stage_from_md"] == []


def test_2023_xlsx_with_numeric_ids_and_no_fundus(tmp_path):
    root = write_stage(tmp_path, "2023")
    info_path = root / "STAGE_training" / "data_info_training.xlsx"
    info = pd.read_excel(info_path)
    info.loc[info["ID"] == 203, "stage"] = None  # blank stage -> derived from MD
    info[info["ID"] != 206].to_excel(info_path, index=False)  # no info row -> NaN tabular
    ds = load_stage(root)
    eyes = samples(ds)
    assert sorted(eyes) == IDS  # 201 in the spreadsheets matched to folder "0201"
    for k, eye in enumerate(IDS):
        assert eyes[eye]["y"].item() == pytest.approx(MD[k])
        assert eyes[eye]["present"].tolist() == [False, True]
        assert eyes[eye]["fundus"].abs().sum() == 0
    assert eyes["0203"]["stage"].item() == stage_from_md(np.array([MD[2]]))[0]
    assert eyes["0201"]["tabular"][0].item() == AGE[0]
    assert np.isnan(eyes["0206"]["tabular"].numpy()).all()
    assert ds.notes["edition"] == "2023" and ds.notes["no_info_row"] == ["0206"]
    assert "0203" in ds.notes["stage_from_md"]


def test_missing_fundus_is_an_error_unless_not_required(stage2024):
    (eye_dir(stage2024, "0204") / "0204.jpg").unlink()
    with pytest.raises(DataError, match=r"0204[/\\]0204\.jpg"):
        load_stage(stage2024)
    eyes = samples(load_stage(stage2024, require_fundus=False))
    assert eyes["0204"]["present"].tolist() == [False, True] and eyes["0204"]["fundus"].abs().sum() == 0
    assert eyes["0203"]["present"].tolist() == [True, True]


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_unreadable_bscan(stage2024, damage):
    path = eye_dir(stage2024, "0203") / ("0_image.jpg" if damage == "garbage" else "11_image.jpg")
    path.write_bytes(b"this is not a jpeg" if damage == "garbage" else path.read_bytes()[:200])
    with pytest.raises(DataError, match=rf"0203[/\\]{path.name}: unreadable image"):
        load_stage(stage2024)


def test_bscan_counts_differ(stage2024):
    (eye_dir(stage2024, "0205") / "5_image.jpg").unlink()
    with pytest.raises(DataError, match=r"11 in eye\(s\) 0205; 12 in eye\(s\) 0201"):
        load_stage(stage2024)
    eyes = samples(load_stage(stage2024, resample_bscans=True))
    # 11 files (5 missing): picks 0, 3, 7, 10 of the sorted files -> B-scans 0, 3, 8, 11
    expected = np.array([bscan_value(j) for j in (0, 3, 8, 11)]) / 255
    np.testing.assert_allclose(eyes["0205"]["oct"].mean(dim=(1, 2)).numpy(), expected, atol=3 / 255)


def test_nan_md(stage2024):
    rewrite_gt(stage2024, IDS, [MD[0], None] + MD[2:])
    with pytest.raises(DataError, match=r"task1_GT_training\.csv: MD is missing .* 0202"):
        load_stage(stage2024)


@pytest.mark.parametrize("bad", [-40.0, 8.0])
def test_implausible_md(stage2024, bad):
    rewrite_gt(stage2024, IDS, MD[:3] + [bad] + MD[4:])
    with pytest.raises(DataError, match=rf"implausible MD .* 0204 \({bad:g}\)"):
        load_stage(stage2024)


def test_duplicate_ids_in_gt(stage2024):
    rewrite_gt(stage2024, IDS + ["0203"], MD + [-2.0])
    with pytest.raises(DataError, match=r"task1_GT_training\.csv: duplicate sample id\(s\) 0203"):
        load_stage(stage2024)


def test_gt_id_without_folder(stage2024):
    rewrite_gt(stage2024, IDS + ["0299"], MD + [-2.0])
    with pytest.raises(DataError, match=r"id\(s\) in .*task1_GT_training\.csv but not in .*training_images: 0299"):
        load_stage(stage2024)


def test_folder_without_gt_row(stage2024):
    eye_dir(stage2024, "0207").mkdir()
    with pytest.raises(DataError, match=r"id\(s\) in .*training_images but not in .*\.csv: 0207"):
        load_stage(stage2024)


def test_bscan_name_without_leading_integer(stage2024):
    Image.fromarray(np.zeros((32, 40), np.uint8)).save(eye_dir(stage2024, "0202") / "scan.jpg")
    with pytest.raises(DataError, match=r"0202[/\\]scan\.jpg: B-scan file name does not start with an integer"):
        load_stage(stage2024)


def test_unknown_stage_label(stage2024):
    info_path = stage2024 / "STAGE_training" / "data_info_training.xlsx"
    pd.read_excel(info_path, dtype=str).assign(stage=["early"] * 5 + ["severe"]).to_excel(info_path, index=False)
    with pytest.raises(DataError, match=r"eye 0206 has stage 'severe'"):
        load_stage(stage2024)


@pytest.mark.parametrize("sizes", [{"test": 0}, {"val": 0}, {"test": 6}])
def test_empty_split(stage2024, sizes):
    with pytest.raises(DataError, match=r"leave split\(s\) \['(test|val|train)'\] empty"):
        load_stage(stage2024, **sizes)


def test_root_from_env_var_or_error(stage2024, monkeypatch):
    monkeypatch.delenv("REMD_STAGE2_ROOT", raising=False)
    with pytest.raises(DataError, match="REMD_STAGE2_ROOT"):
        load("stage2")
    with pytest.raises(DataError, match="does not exist"):
        load("stage2", root=str(stage2024 / "nowhere"))
    with pytest.raises(DataError, match=r"STAGE_validation[/\\]validation_images"):
        load("stage2", root=str(stage2024), split_folder="STAGE_validation")
    monkeypatch.setenv("REMD_STAGE2_ROOT", str(stage2024))
    ds = load("stage2", test=1, val=1, image_size=8, n_bscans=2)
    assert sum(len(s) for s in ds.splits.values()) == len(IDS)


def test_missing_gt_file_names_it(stage2024):
    gt_path(stage2024).unlink()
    with pytest.raises(DataError, match=r"MD labels.*task1_GT_training\.csv"):
        load_stage(stage2024)
