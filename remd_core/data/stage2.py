"""Loader for the MICCAI STAGE 2023 / 2024 challenge data ("STAGE2") in its published layout.

Layout, under the folder the user points to (``root=`` or ``REMD_STAGE2_ROOT``), for
``split_folder="STAGE_training"`` (``"STAGE_validation"`` works the same with "validation"
in every name)::

    STAGE_training/
      training_images/<ID>/0_xxx.jpg, 1_xxx.jpg, ..., 255_xxx.jpg   OCT B-scans
      training_images/<ID>/<ID>.jpg                                 colour fundus (2024 only)
      training_GT/task1_GT_training.csv   (2024) or .xlsx (2023)     columns ID, MD
      data_info_training.xlsx (or .csv)                             ID, gender, age, eye, stage

What is read, per eye: ``n_bscans`` B-scans picked evenly through the volume (only those are
decoded, so an unreadable B-scan that is not picked goes unnoticed), each resized to
``image_size`` square grayscale; the fundus resized to ``image_size`` square RGB; MD from the GT
file; age, gender and eye from the info file. Other files in an eye's folder (e.g. ``.npy``
caches from preprocessing scripts) are ignored; hidden folders (``.xxx``) too.

Choices:

- B-scans are ordered by the integer their file name starts with (``2_x.jpg`` before
  ``10_x.jpg``); a B-scan name without a leading integer, or two with the same one, is an error.
- IDs are the eye folder names, kept as strings ("0201"). GT and info IDs are read as strings;
  when one is not a folder name but is a number (Excel stores "0201" as 201), it is matched to the
  folder whose name is the same integer (zero-padded to the folder's width).
- Edition: a csv GT file means the 2024 layout (a fundus per eye), an xlsx one the 2023 layout
  (none). ``require_fundus=None`` (default) requires the fundus in the 2024 layout only. An eye
  without a fundus, when not required, gets an all-zero fundus and ``present[:, 0] = False``.
- ``stage`` (stratification only, never a model input) comes from the info file's stage column
  (normal/early/intermediate/advanced, or 0-3); for an eye the info file has no row or a blank
  stage for, it is derived from MD with ``stage_from_md`` and the eye is listed in
  ``dataset.notes["stage_from_md"]``.
- Tabular: gender male -> 1, female -> 0; eye OD -> 0, OS -> 1; blank or other values -> NaN.
  An eye the info file has no row for gets NaN and is listed in ``dataset.notes["no_info_row"]``.
- All eyes must have the same number of B-scans (so the picks sit at the same depth) unless
  ``resample_bscans=True``, which picks ``n_bscans`` from each eye's own count.
- The split is label-stratified over all eyes (``assemble``): the challenge publishes no
  train/val split of its training set.
- Decoded eyes are kept in the decoded-data store (``remd_core.data.store``; ``store=False``
  turns it off), keyed by the images folder, ``image_size`` and ``n_bscans``; an eye's entry
  depends on the B-scan file names in its folder and the size and mtime of the files it decoded,
  so a changed, added or removed B-scan re-decodes that eye only. ``lazy=True`` leaves the images
  in the store (``remd_core.data.streaming``). The GT and info tables are read on every load.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from ..config import ConfigError
from .base import SplitConfig
from .checks import DataError, brief_list, check_id_sets, check_labels, check_unique_ids
from .format import (EYE_CODES, GLAUCOMA_STAGES, DatasetSpec, ModalitySpec, MultimodalDataset, stage_from_md,
                     tabular_tensor)
from .imageio import IMAGE_SUFFIXES, read_image, select_bscans
from .readers import order_bscans, read_bscans
from .store import Job, StoreOptions
from .streaming import decode_eyes, finish


@dataclass
class Config(SplitConfig, StoreOptions):
    """STAGE loader settings (see the module docstring); ``test``/``val`` as in ``SplitConfig``,
    the store and streaming settings as in ``store.StoreOptions``."""

    root: str | None = None
    split_folder: str = "STAGE_training"
    image_size: int = 64
    n_bscans: int = 8
    resample_bscans: bool = False
    require_fundus: bool | None = None
    test: float = 0.2
    val: float = 0.15


GENDER_CODES = {"male": 1.0, "m": 1.0, "female": 0.0, "f": 0.0}


def build(config: Config, name: str = "stage2") -> MultimodalDataset:
    if config.image_size < 1 or config.n_bscans < 1:
        raise ConfigError(f"data set {name!r}: image_size and n_bscans must be at least 1")
    config.check_store_options(name)
    paths = _layout(Path(config.root), config.split_folder)
    folders = {p.name: p for p in sorted(paths["images"].iterdir()) if p.is_dir() and not p.name.startswith(".")}

    gt = _read_table(paths["gt"], required=("id", "md"))
    gt_ids = _match_ids(gt["id"], folders)
    check_unique_ids(gt_ids, str(paths["gt"]))
    check_id_sets(gt_ids, folders, str(paths["gt"]), str(paths["images"]))
    ids = sorted(folders)
    md_by_id = dict(zip(gt_ids, pd.to_numeric(gt["md"], errors="coerce")))
    y = check_labels(ids, [md_by_id[i] for i in ids], str(paths["gt"]))

    edition = "2024" if paths["gt"].suffix == ".csv" else "2023"
    require = (edition == "2024") if config.require_fundus is None else bool(config.require_fundus)
    bscans, fundus_files = _list_eyes(folders, ids, require)
    picks = _pick_bscans(bscans, config.n_bscans, config.resample_bscans)

    size, n = config.image_size, config.n_bscans
    shapes = {"fundus": (3, size, size), "oct": (n, size, size)}
    jobs = [Job(key=eye, files=[str(bscans[eye][i]) for i in picks[eye]] + ([str(fundus_files[eye])] if fundus_files[eye] else []),
                args=([str(bscans[eye][i]) for i in picks[eye]], fundus_files[eye] and str(fundus_files[eye]), size),
                where=f"eye {eye}", extra="\n".join(p.name for p in bscans[eye])) for eye in ids]
    settings = {"images": str(paths["images"].resolve()), "image_size": size, "n_bscans": n}
    decoded = decode_eyes(config, "stage2", settings, shapes, jobs, decode_eye, name)
    present = np.stack([[fundus_files[i] is not None for i in ids], np.ones(len(ids), bool)], 1)

    tabular, stage, derived, no_info = _read_info(paths["info"], folders, ids, y)
    spec = DatasetSpec(name=name, modalities=(ModalitySpec("fundus", "image", shapes["fundus"]),
                                              ModalitySpec("oct", "volume", shapes["oct"])))
    dataset = finish(decoded, spec, config, ids, present, tabular, y, stage, source=str(paths["gt"]))
    dataset.notes.update(edition=edition, stage_from_md=derived, no_info_row=no_info,
                         fundus_missing=[i for i in ids if fundus_files[i] is None])
    return dataset


def _layout(root: Path, split_folder: str) -> dict[str, Path]:
    """Paths of the images folder, the GT file and the info file; missing ones are errors."""
    part = split_folder.split("_", 1)[-1].lower()  # "training" or "validation"
    base = root / split_folder
    images = base / f"{part}_images"
    if not images.is_dir():
        raise DataError(f"{root}: expected the STAGE layout with eye folders in {images}, which does not exist")
    gt_dir = base / f"{part}_GT"
    gt = _first_existing([gt_dir / f"task1_GT_{part}.csv", gt_dir / f"task1_GT_{part}.xlsx"],
                         f"MD labels (the regression target; the {split_folder} folder may ship without them)")
    info = _first_existing([base / f"data_info_{part}.xlsx", base / f"data_info_{part}.csv"], "the eye info file")
    return {"images": images, "gt": gt, "info": info}


def _first_existing(candidates: list[Path], what: str) -> Path:
    for path in candidates:
        if path.is_file():
            return path
    raise DataError(f"{what}: none of {', '.join(map(str, candidates))} exists")


def _read_table(path: Path, required: tuple[str, ...]) -> pd.DataFrame:
    """A csv or xlsx table with every cell as a string (IDs keep their zeros) and column names
    lower-cased; missing ``required`` columns and blank IDs are errors."""
    try:
        frame = pd.read_csv(path, dtype=str) if path.suffix == ".csv" else pd.read_excel(path, dtype=str)
    except Exception as err:  # pandas and openpyxl raise many types for a bad file
        raise DataError(f"{path}: cannot read the table ({type(err).__name__}: {err})") from None
    frame.columns = [str(c).strip().lower() for c in frame.columns]
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; it has {list(frame.columns)}")
    blank = [int(i) + 2 for i in np.flatnonzero(frame["id"].isna() | (frame["id"].str.strip() == ""))]
    if blank:
        raise DataError(f"{path}: row(s) {brief_list(blank)} (spreadsheet numbering) have no ID")
    return frame


def _match_ids(raw_ids, folders: dict[str, Path]) -> list[str]:
    """Table IDs as folder names: exact match first, else a numeric ID is matched to the one folder
    with the same integer value ("201" or "201.0" -> "0201"); anything else is kept as written,
    for ``check_id_sets`` to report."""
    by_int: dict[int, list[str]] = {}
    for folder in folders:
        if folder.isdigit():
            by_int.setdefault(int(folder), []).append(folder)
    out = []
    for raw in raw_ids:
        text = str(raw).strip()
        number = re.fullmatch(r"(\d+)(?:\.0*)?", text)
        if text not in folders and number and len(by_int.get(int(number.group(1)), [])) == 1:
            text = by_int[int(number.group(1))][0]
        out.append(text)
    return out


def _list_eyes(folders: dict[str, Path], ids: list[str], require_fundus: bool):
    """Per eye: its B-scan files in volume order and its fundus file (None when absent)."""
    bscans, fundus = {}, {}
    missing_fundus = []
    for eye in ids:
        files = [p for p in folders[eye].iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
        found = [p for p in files if p.stem == eye]
        fundus[eye] = found[0] if found else None
        if not found:
            missing_fundus.append(str(folders[eye] / f"{eye}.jpg"))
        bscans[eye] = order_bscans([p for p in files if p.stem != eye], f"eye {eye}")
    if missing_fundus and require_fundus:
        raise DataError(f"fundus photograph missing for {len(missing_fundus)} eye(s): {brief_list(missing_fundus)} "
                        f"(pass require_fundus=False to load them with an absent fundus)")
    return bscans, fundus


def decode_eye(bscans: list[str], fundus: str | None, size: int) -> dict:
    """One eye's picked B-scans and its fundus (when it has one) as the store's uint8 rows."""
    arrays = {"oct": read_bscans(bscans, size)}
    if fundus is not None:
        arrays["fundus"] = read_image(fundus, size, "RGB")
    return {"arrays": arrays}


def _pick_bscans(bscans: dict[str, list[Path]], n: int, resample: bool) -> dict[str, np.ndarray]:
    counts = {eye: len(files) for eye, files in bscans.items()}
    if not resample and len(set(counts.values())) > 1:
        groups = {}
        for eye, c in counts.items():
            groups.setdefault(c, []).append(eye)
        described = "; ".join(f"{c} in eye(s) {brief_list(e)}" for c, e in sorted(groups.items()))
        raise DataError(f"B-scan counts differ between eyes: {described} "
                        f"(pass resample_bscans=True to pick n_bscans from each eye's own count)")
    return {eye: select_bscans(c, n, f"eye {eye}", allow_repeats=resample) for eye, c in counts.items()}


def _read_info(path: Path, folders: dict[str, Path], ids: list[str], y: np.ndarray):
    """Tabular ``[N, 3]`` (age, male, eye), stage indices, the eyes whose stage came from MD and the
    eyes the info file has no row for (their tabular values are NaN)."""
    info = _read_table(path, required=("id", "gender", "age", "eye"))
    info_ids = _match_ids(info["id"], folders)
    check_unique_ids(info_ids, str(path))
    rows = {i: r for i, (_, r) in zip(info_ids, info.iterrows())}
    blank = pd.Series({"gender": None, "age": None, "eye": None, "stage": None})
    records = [rows.get(i, blank) for i in ids]
    age = pd.to_numeric(pd.Series([r["age"] for r in records], dtype=object), errors="coerce").to_numpy(float)
    male = [GENDER_CODES.get(_text(r["gender"]).lower(), np.nan) for r in records]
    eye = [EYE_CODES.get(_text(r["eye"]).upper(), np.nan) for r in records]
    codes = {s: k for k, s in enumerate(GLAUCOMA_STAGES)} | {str(k): k for k in range(len(GLAUCOMA_STAGES))}
    stage = stage_from_md(y)
    derived = []
    for k, (i, r) in enumerate(zip(ids, records)):
        text = _text(r.get("stage")).lower()
        if not text:
            derived.append(i)
        elif text in codes:
            stage[k] = codes[text]
        else:
            raise DataError(f"{path}: eye {i} has stage {text!r}; expected one of {list(GLAUCOMA_STAGES)}")
    return tabular_tensor(age, male, eye), stage, derived, [i for i in ids if i not in rows]


def _text(value) -> str:
    return "" if value is None or (isinstance(value, float) and np.isnan(value)) else str(value).strip()
