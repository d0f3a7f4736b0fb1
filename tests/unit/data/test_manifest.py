"""The manifest loader on tiny eyes in every supported format, written by the test (PNG folders,
.npy, .npz, multi-page TIFF via tifffile, DICOM via pydicom), and its bad-input rules."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from remd_core.data import DataError, load

N_BSCANS = 12
PICKS = (0, 4, 7, 11)  # rint(linspace(0, 11, 4))
OPT = "1.2.840.10008.5.1.4.1.1.77.1.5.4"  # Ophthalmic Tomography Image Storage
OP = "1.2.840.10008.5.1.4.1.1.77.1.5.1"  # Ophthalmic Photography 8 Bit Image Storage
ROWS = {  # id: (oct format, fundus format, md, age, sex, eye)
    "0101": ("folder", "png", -1.0, 61, "M", "OD"),
    "0102": ("npy", "npy", -3.5, 55, "F", "OS"),
    "0103": ("npz", "tif", -7.25, 70, "m", "os"),
    "0104": ("tiff", "png", -15.5, "", "", ""),
    "0105": ("dcm", "dcm", 0.75, 66, "female", "OD"),
    "0106": ("dcm16", "", -25.0, 73, "F", "OS"),
}
IDS = list(ROWS)


def bscan_value(j: int) -> int:
    return 10 + 20 * j


def volume(n: int = N_BSCANS) -> np.ndarray:
    """B-scan j is flat at bscan_value(j): the picked slices' values reveal which were read."""
    return np.repeat(np.array([bscan_value(j) for j in range(n)], np.uint8)[:, None, None], 20, 1).repeat(24, 2)


def colour(k: int) -> tuple[int, int, int]:
    return (30 * k, 100, 200)


def dicom(path: Path, pixels: np.ndarray, sop: str, bits: int = 8, photometric: str | None = None) -> Path:
    """A DICOM file written with pydicom: frames [F, H, W] (OPT) or one RGB photograph [H, W, 3] (OP)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = sop, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop, meta.MediaStorageSOPInstanceUID
    ds.Modality = "OPT" if sop == OPT else "OP"
    rgb = pixels.ndim == 3 and pixels.shape[-1] == 3 and sop == OP
    ds.SamplesPerPixel = 3 if rgb else 1
    ds.PhotometricInterpretation = photometric or ("RGB" if rgb else "MONOCHROME2")
    if rgb:
        ds.PlanarConfiguration = 0
    else:
        ds.NumberOfFrames = pixels.shape[0]
    ds.Rows, ds.Columns = pixels.shape[-3 if rgb else -2], pixels.shape[-2 if rgb else -1]
    ds.BitsAllocated = 8 if bits == 8 else 16
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits - 1, 0
    ds.PixelData = np.ascontiguousarray(pixels, np.uint8 if bits == 8 else np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def write_oct(folder: Path, eye: str, kind: str, n: int = N_BSCANS) -> str:
    vol = volume(n)
    if kind == "folder":
        (folder / eye).mkdir()
        for j in range(n):
            Image.fromarray(vol[j]).save(folder / eye / f"{j}_bscan.png")
        return eye
    if kind == "npy":
        np.save(folder / f"{eye}.npy", vol)
        return f"{eye}.npy"
    if kind == "npz":
        np.savez_compressed(folder / f"{eye}.npz", oct_bscans=vol, other=np.zeros(3))
        return f"{eye}.npz"
    if kind == "tiff":
        tifffile.imwrite(folder / f"{eye}.tif", vol)  # one page per B-scan
        return f"{eye}.tif"
    if kind == "dcm":
        return dicom(folder / f"{eye}_oct.dcm", vol, OPT).name
    if kind == "dcm16":  # 12 bits stored: value v is written as v * 4095 / 255
        return dicom(folder / f"{eye}_oct.dcm", np.rint(vol * (4095 / 255)).astype(np.uint16), OPT, bits=12).name
    raise ValueError(kind)


def write_fundus(folder: Path, eye: str, kind: str, k: int) -> str:
    rgb = np.broadcast_to(np.array(colour(k), np.uint8), (30, 30, 3)).copy()
    if kind == "":
        return ""
    if kind in ("png", "tif"):
        Image.fromarray(rgb).save(folder / f"{eye}_fundus.{kind}")
        return f"{eye}_fundus.{kind}"
    if kind == "npy":
        np.save(folder / f"{eye}_fundus.npy", rgb)
        return f"{eye}_fundus.npy"
    if kind == "dcm":
        return dicom(folder / f"{eye}_fundus.dcm", rgb, OP).name
    raise ValueError(kind)


def write_eyes(root: Path, split: bool = False) -> Path:
    """Every format once, files in ``root/images``, the manifest in ``root`` naming them relatively."""
    images = root / "images"
    images.mkdir()
    rows = []
    for k, (eye, (oct_kind, fundus_kind, md, age, sex, side)) in enumerate(ROWS.items()):
        rows.append({"id": eye, "md": md, "age": age, "sex": sex, "eye": side,
                     "oct": f"images/{write_oct(images, eye, oct_kind)}",
                     "fundus": f"images/{write_fundus(images, eye, fundus_kind, k)}" if fundus_kind else "",
                     "notes": "ignored"})
    frame = pd.DataFrame(rows)
    if split:
        frame["split"] = ["train", "train", "train", "train", "val", "test"]
    frame.to_csv(root / "eyes.csv", index=False)
    return root / "eyes.csv"


def load_manifest(path: Path, **kw):
    return load("manifest", **{"path": str(path), "test": 1, "val": 1, "image_size": 16, "n_bscans": 4, **kw})


def samples(dataset) -> dict[str, dict]:
    return {s.ids[i]: s[i] for s in dataset.splits.values() for i in range(len(s))}


def rewrite(manifest: Path, **columns) -> None:
    frame = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    for column, values in columns.items():
        frame[column] = values
    frame.to_csv(manifest, index=False)


@pytest.fixture(autouse=True)
def own_outputs(tmp_path_factory, monkeypatch):
    """The decoded-data store of each test goes to its own folder, never to the repository's outputs/."""
    monkeypatch.setenv("REMD_OUTPUTS", str(tmp_path_factory.mktemp("outputs")))


@pytest.fixture
def manifest(tmp_path):
    return write_eyes(tmp_path)


def test_every_format_decodes_to_the_written_values(manifest, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path.parent)  # relative paths resolve against the manifest's folder, not the cwd
    ds = load_manifest(manifest)
    eyes = samples(ds)
    assert sorted(eyes) == IDS and {k: len(v) for k, v in ds.splits.items()} == {"train": 4, "val": 1, "test": 1}
    expected_oct = np.repeat(np.array([bscan_value(j) for j in PICKS], np.float32)[:, None, None] / 255, 16, 1).repeat(16, 2)
    for k, (eye, (oct_kind, fundus_kind, md, age, sex, side)) in enumerate(ROWS.items()):
        s = eyes[eye]
        np.testing.assert_array_equal(s["oct"].numpy(), expected_oct, err_msg=f"{eye} ({oct_kind})")
        if fundus_kind:
            expected = np.broadcast_to(np.array(colour(k), np.float32)[:, None, None] / 255, (3, 16, 16))
            np.testing.assert_array_equal(s["fundus"].numpy(), expected, err_msg=f"{eye} ({fundus_kind})")
            assert s["present"].tolist() == [True, True]
        else:
            assert s["present"].tolist() == [False, True] and s["fundus"].abs().sum() == 0
        assert s["y"].item() == pytest.approx(md)
        tab = s["tabular"].numpy()
        expected_tab = [float(age) if age != "" else np.nan, {"m": 1.0, "f": 0.0, "female": 0.0}.get(sex.lower(), np.nan),
                        {"od": 0.0, "os": 1.0}.get(side.lower(), np.nan)]
        np.testing.assert_array_equal(tab, np.array(expected_tab, np.float32))
    assert ds.notes["ignored_columns"] == ["notes"] and ds.notes["absent"] == {"fundus": ["0106"], "oct": []}
    assert ds.notes["split"] == "stratified"


def test_parquet_and_split_column(tmp_path):
    csv = write_eyes(tmp_path, split=True)
    parquet = tmp_path / "eyes.parquet"
    pd.read_csv(csv, dtype=str, keep_default_na=False).to_parquet(parquet)
    from_csv, from_parquet = load_manifest(csv), load_manifest(parquet)
    assert {k: v.ids for k, v in from_csv.splits.items()} == {"train": IDS[:4], "val": ["0105"], "test": ["0106"]}
    assert from_csv.notes["split"] == "manifest"
    for split in ("train", "val", "test"):
        np.testing.assert_array_equal(from_csv[split].batch(np.arange(len(from_csv[split])))["oct"],
                                      from_parquet[split].batch(np.arange(len(from_parquet[split])))["oct"])


def test_fundus_channels_one_is_luma(manifest):
    eyes = samples(load_manifest(manifest, fundus_channels=1))
    r, g, b = colour(0)
    assert eyes["0101"]["fundus"].shape == (1, 16, 16)
    np.testing.assert_allclose(eyes["0101"]["fundus"].numpy(), round(0.299 * r + 0.587 * g + 0.114 * b) / 255, atol=1 / 255)


def test_monochrome1_dicom_is_inverted(manifest):
    path = manifest.parent / "images" / "0105_oct.dcm"
    dicom(path, 255 - volume(), OPT, photometric="MONOCHROME1")
    s = samples(load_manifest(manifest))["0105"]
    np.testing.assert_array_equal(s["oct"][:, 0, 0].numpy(), np.array([bscan_value(j) for j in PICKS], np.float32) / 255)


def test_vendor_export_glue_with_a_stand_in_for_eyepy(manifest, monkeypatch):
    """No vendor file can be written here: eyepy's reader is replaced by a stand-in returning an
    object with ``.data``; this checks our glue only (the .vol parsing itself is untested)."""
    fake = types.ModuleType("eyepy")
    fake.import_heyex_vol = lambda path: types.SimpleNamespace(data=volume().astype(np.float32) / 255)
    monkeypatch.setitem(sys.modules, "eyepy", fake)
    (manifest.parent / "images" / "0104.vol").write_bytes(b"HSF-OCT-103 stand-in")
    rewrite(manifest, oct=[f"images/{n}" for n in ("0101", "0102.npy", "0103.npz", "0104.vol", "0105_oct.dcm", "0106_oct.dcm")])
    s = samples(load_manifest(manifest))["0104"]
    np.testing.assert_array_equal(s["oct"][:, 0, 0].numpy(), np.array([bscan_value(j) for j in PICKS], np.float32) / 255)


# ---- bad input: each test names the rule, and the file and row in the message ------------------
def test_missing_files(manifest):
    (manifest.parent / "images" / "0103.npz").unlink()
    with pytest.raises(DataError, match=r"eyes\.csv line 4 \(id 0103\): .*0103\.npz: file is missing"):
        load_manifest(manifest)


def test_missing_bscan_folder_file_and_fundus(manifest):
    (manifest.parent / "images" / "0102_fundus.npy").unlink()
    with pytest.raises(DataError, match=r"line 3 \(id 0102\): .*0102_fundus\.npy: file is missing"):
        load_manifest(manifest)


@pytest.mark.parametrize("name, what", [("0102.npy", "npy"), ("0103.npz", "npz"), ("0104.tif", "TIFF"),
                                        ("0105_oct.dcm", "DICOM"), ("0101/7_bscan.png", "image"),
                                        ("0105_fundus.dcm", "DICOM"), ("0103_fundus.tif", "image")])
def test_unreadable_files(manifest, name, what):
    (manifest.parent / "images" / name).write_bytes(b"this is not what the name says")
    eye = name[:4]
    line = IDS.index(eye) + 2
    with pytest.raises(DataError, match=rf"line {line} \(id {eye}\): .*{name.split('/')[-1]}: unreadable {what}"):
        load_manifest(manifest)


def test_bscan_counts_differ(manifest):
    np.save(manifest.parent / "images" / "0102.npy", volume(9))
    with pytest.raises(DataError, match=r"B-scan counts differ between eyes: 9 in 0102 \(line 3\); 12 in 0101"):
        load_manifest(manifest)
    s = samples(load_manifest(manifest, resample_bscans=True))["0102"]
    np.testing.assert_array_equal(s["oct"][:, 0, 0].numpy(),
                                  np.array([bscan_value(j) for j in (0, 3, 5, 8)], np.float32) / 255)


def test_fewer_bscans_than_asked(manifest):
    with pytest.raises(DataError, match=r"line 2 \(id 0101\): .*0101: 12 B-scan\(s\) on disk, fewer than n_bscans=13"):
        load_manifest(manifest, n_bscans=13)
    rewrite(manifest, oct=["images/0102.npy"] * 6, id=IDS)  # a volume file: the count is known once it is open
    with pytest.raises(DataError, match=r"0102\.npy: 12 B-scan\(s\) on disk, fewer than n_bscans=13"):
        load_manifest(manifest, n_bscans=13)


def test_nan_label(manifest):
    rewrite(manifest, md=["-1", "", "-7", "-15", "0.5", "-25"])
    with pytest.raises(DataError, match=r"eyes\.csv: MD is missing or not a number for sample\(s\) 0102 \(line 3\)"):
        load_manifest(manifest)
    rewrite(manifest, md=["-1", "n/a", "-7", "-15", "0.5", "-25"])
    with pytest.raises(DataError, match=r"0102 \(line 3\)"):
        load_manifest(manifest)


@pytest.mark.parametrize("bad", [-40.0, 8.0])
def test_implausible_label(manifest, bad):
    rewrite(manifest, md=[-1, -3, -7, bad, 0.5, -25])
    with pytest.raises(DataError, match=rf"eyes\.csv: implausible MD .* 0104 \(line 5\) \({bad:g}\)"):
        load_manifest(manifest)
    assert len(samples(load_manifest(manifest, label_range=None))) == 6  # another label: no MD range


def test_other_label_column(manifest):
    rewrite(manifest, mtd=[-2, -4, -6, -8, -10, -12])
    ds = load_manifest(manifest, label="MTD")
    assert {i: s["y"].item() for i, s in samples(ds).items()} == dict(zip(IDS, [-2, -4, -6, -8, -10, -12]))
    assert ds.spec.label_name == "MTD"


def test_duplicate_and_blank_ids(manifest):
    rewrite(manifest, id=["0101", "0102", "0103", "0102", "0105", "0106"])
    with pytest.raises(DataError, match=r"eyes\.csv: duplicate id 0102 on line 3 and line 5"):
        load_manifest(manifest)
    rewrite(manifest, id=["0101", "0102", "0103", " ", "0105", "0106"])
    with pytest.raises(DataError, match=r"eyes\.csv: line 5: no id"):
        load_manifest(manifest)


def test_empty_and_unknown_split(tmp_path):
    csv = write_eyes(tmp_path, split=True)
    rewrite(csv, split=["train", "train", "train", "train", "test", "test"])
    with pytest.raises(DataError, match=r"eyes\.csv: split\(s\) \['val'\] are empty"):
        load_manifest(csv)
    rewrite(csv, split=["train", "train", "training", "train", "val", "test"])
    with pytest.raises(DataError, match=r"split must be one of .* line 4 \('training'\)"):
        load_manifest(csv)


def test_empty_stratified_split(manifest):
    with pytest.raises(DataError, match=r"leave split\(s\) \['test'\] empty"):
        load_manifest(manifest, test=0)


@pytest.mark.parametrize("column, value, message", [("sex", "X", r"sex must be M or F .* line 4 \('X'\)"),
                                                    ("eye", "right", r"eye must be OD or OS .* line 4 \('right'\)"),
                                                    ("age", "old", r"age is not a number on line 4 \('old'\)")])
def test_bad_tabular_values(manifest, column, value, message):
    values = pd.read_csv(manifest, dtype=str, keep_default_na=False)[column].tolist()
    values[2] = value
    rewrite(manifest, **{column: values})
    with pytest.raises(DataError, match=message):
        load_manifest(manifest)


def test_row_without_any_image(manifest):
    rewrite(manifest, oct=["images/0101", "", "images/0103.npz", "images/0104.tif", "images/0105_oct.dcm",
                           "images/0106_oct.dcm"], fundus=["images/0101_fundus.png"] + [""] * 5)
    with pytest.raises(DataError, match=r"line 3 \(id 0102\): neither an oct nor a fundus file"):
        load_manifest(manifest)


def test_missing_columns_and_manifest(manifest, monkeypatch):
    frame = pd.read_csv(manifest, dtype=str)
    frame.drop(columns=["md"]).to_csv(manifest, index=False)
    with pytest.raises(DataError, match=r"eyes\.csv: missing column\(s\) \['md'\]"):
        load_manifest(manifest)
    monkeypatch.delenv("REMD_MANIFEST", raising=False)
    with pytest.raises(DataError, match=r"pass path=\.\.\. or set REMD_MANIFEST"):
        load("manifest")
    with pytest.raises(DataError, match=r"manifest .*nowhere\.csv does not exist"):
        load("manifest", path=str(manifest.parent / "nowhere.csv"))


def test_unknown_oct_format(manifest):
    (manifest.parent / "images" / "0104.mha").write_bytes(b"x")
    rewrite(manifest, oct=["images/0101", "images/0102.npy", "images/0103.npz", "images/0104.mha",
                           "images/0105_oct.dcm", "images/0106_oct.dcm"])
    with pytest.raises(DataError, match=r"line 5 \(id 0104\): .*0104\.mha: unknown OCT format '\.mha'"):
        load_manifest(manifest)


def test_manifest_from_environment_variable(manifest, monkeypatch):
    monkeypatch.setenv("REMD_MANIFEST", str(manifest))
    assert sorted(samples(load("manifest", test=1, val=1, image_size=8, n_bscans=2))) == IDS
