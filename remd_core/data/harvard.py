"""Loader for the Harvard Ophthalmology AI Lab glaucoma sets: one ``.npz`` per eye.

Two layouts, chosen by ``layout``, under the folder the user points to (``root=`` or the catalog
entry's environment variable):

``"fairvision"`` (FairVision / Harvard-FairVision30k, glaucoma subset)::

    <root>/Glaucoma/{train,val,test}/*.npz   keys oct_bscans (200 x 200 x 200), slo_fundus
                                             (200 x 200), glaucoma, race, male, hispanic, ...

``"harvard-gf"`` (Harvard-GF)::

    <root>/{train,val,test}/*.npz  or  <root>/*.npz   keys oct_bscans, rnflt, md, tds, age, male, ...

Split folders may also be named training/validation (any case). The SLO ``.jpg`` copies are
ignored.

FairVision's metadata table (``data_summary_glaucoma.csv`` in ``Glaucoma/``, ``Glaucoma/ReadMe/``
or ``<root>``, or ``glaucoma_meta.csv`` as the EyeFairness release names it; ``metadata=`` names
another file, ``metadata=False`` skips it) is read when present: one row per npz (``filename``),
with ``age``, ``gender``, ``race``, ``ethnicity``, ``language``, ``maritalstatus``, ``glaucoma``,
``use`` (training/validation/test) and, in some copies, ``md``. Age and gender fill the tabular
columns where the npz has no value (FairVision's npz carries ``male`` but no age); a value that
both hold must agree (``md`` within 0.01 dB), else the load stops naming the npz and the line;
``use`` must match the eye's folder. The other columns are kept as text in
``dataset.notes["attributes"]`` (one row per eye, by id). Eyes without a row get NaN and are
listed in ``notes["no_metadata_row"]``; rows without a file in ``notes["metadata_rows_without_file"]``.

What is read, per eye: ``n_bscans`` B-scans picked evenly along axis 0 of ``oct_bscans`` (taken
as the B-scan index) and resized to ``image_size`` square; ``slo_fundus`` (FairVision) as the
"fundus" modality with one channel, ``[1, H, W]``; ``md`` as the label; ``age`` and ``male``
when the file has them (else NaN). Laterality is not stored in these files, so ``eye`` is NaN.

Choices:

- Sample id = file stem ("data_006691"), a string.
- ``md`` is not promised by the FairVision README: a file without it, and without an ``md`` in
  the metadata table, is a ``DataError`` naming the file, since the regression task needs it.
- Harvard-GF has no fundus photograph: the "fundus" modality is kept (1 channel, all zeros) with
  ``present[:, 0] = False`` for every eye, so missing-modality studies can use the same format.
  ``rnflt`` and ``tds`` are not read.
- ``split="official"`` uses the publisher's train/val/test folders (a flat Harvard-GF folder has
  none, so it falls back to the stratified split and says so in ``dataset.notes``);
  ``split="stratified"`` pools every eye and uses ``assemble``'s label-stratified split.
- ``stage`` (stratification only) is derived from MD with ``stage_from_md``: no stage field.
- All eyes must have the same number of B-scans unless ``resample_bscans=True``.
- Pixel arrays that are not uint8 are converted by ``imageio.to_uint8`` (floats in [0, 1] are
  scaled by 255).
- Decoded eyes are kept in the decoded-data store (``remd_core.data.store``; ``store=False``
  turns it off), keyed by the data folder, layout, ``image_size`` and ``n_bscans``; an eye's entry
  depends on its npz's size and mtime (its B-scan count, md, age and male are stored with it, so a
  cached load opens no npz). ``lazy=True`` leaves the images in the store
  (``remd_core.data.streaming``).
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..config import ConfigError
from ..paths import display_path
from .base import SplitConfig
from .checks import DataError, check_labels, check_unique_ids
from .format import DatasetSpec, ModalitySpec, MultimodalDataset, stage_from_md, tabular_tensor
from .imageio import resize_volume, select_bscans, to_uint8
from .store import Job, StoreOptions
from .streaming import decode_eyes, finish

LAYOUTS = ("fairvision", "harvard-gf")
SPLITS = ("official", "stratified")
SPLIT_FOLDER_NAMES = {"train": ("train", "training"), "val": ("val", "validation"), "test": ("test",)}


@dataclass
class Config(SplitConfig, StoreOptions):
    """Harvard npz loader settings (see the module docstring); ``test``/``val`` apply to the
    stratified split only; the store and streaming settings as in ``store.StoreOptions``.
    ``metadata``: the metadata csv (None: FairVision's ``data_summary_glaucoma.csv`` or
    ``glaucoma_meta.csv`` when one is found; a path, relative to ``root``; False: none)."""

    root: str | None = None
    layout: str = "fairvision"
    split: str = "official"
    image_size: int = 64
    n_bscans: int = 8
    resample_bscans: bool = False
    metadata: str | bool | None = None
    test: float = 0.2
    val: float = 0.15


def build(config: Config, name: str = "harvard") -> MultimodalDataset:
    if config.layout not in LAYOUTS:
        raise ConfigError(f"data set {name!r}: layout must be one of {LAYOUTS}, not {config.layout!r}")
    if config.split not in SPLITS:
        raise ConfigError(f"data set {name!r}: split must be one of {SPLITS}, not {config.split!r}")
    if config.image_size < 1 or config.n_bscans < 1:
        raise ConfigError(f"data set {name!r}: image_size and n_bscans must be at least 1")
    config.check_store_options(name)
    root = Path(config.root)
    base, folders = _find_files(root, config.layout)
    files = [f for part in folders.values() for f in part]
    ids = [f.stem for f in files]
    check_unique_ids(ids, f"{base} (across split folders)")

    size, n = config.image_size, config.n_bscans
    with_fundus = config.layout == "fairvision"
    shapes = {"fundus": (1, size, size), "oct": (n, size, size)}  # SLO (FairVision) or absent (Harvard-GF)
    jobs = [Job(key=eye, files=[str(path)], args=(str(path), with_fundus, size, n, config.resample_bscans))
            for eye, path in zip(ids, files)]
    settings = {"base": str(base.resolve()), "layout": config.layout, "image_size": size, "n_bscans": n}
    decoded = decode_eyes(config, "harvard", settings, shapes, jobs, decode_npz_eye, name)
    infos = decoded.infos
    _check_counts(ids, files, [i["count"] for i in infos], config.resample_bscans)

    split_of = {eye: split for split, part in folders.items() for eye in (f.stem for f in part)}
    meta = read_metadata(_metadata_path(config, root, base), ids, files, split_of)
    md = np.array([i["md"] for i in infos], float)
    for k, (eye, path) in enumerate(zip(ids, files)):
        md[k] = _merge(md[k], meta.md[k], "md", path, meta, eye, tolerance=0.01)
        if np.isnan(md[k]) and "keys" in infos[k]:
            also = f" nor a value in {meta.path}" if meta.path else ""
            raise DataError(f"{path}: key(s) ['md'] missing (it has {infos[k]['keys']}){also}; "
                            f"the MD regression task needs 'md'")
    age = np.array([i["age"] for i in infos], float)
    age = np.where(np.isnan(meta.age), age, meta.age)  # the metadata's age first: the npz has none in FairVision
    male = np.array([_merge(i["male"], meta.male[k], "male", path, meta, eye)
                     for k, (i, path, eye) in enumerate(zip(infos, files, ids))])

    y = check_labels(ids, md, str(base))
    present = np.ones((len(files), 2), bool)
    present[:, 0] = with_fundus
    predefined = None
    if config.split == "official" and folders.keys() == SPLIT_FOLDER_NAMES.keys():
        starts = np.cumsum([0] + [len(v) for v in folders.values()])
        predefined = {k: np.arange(starts[j], starts[j + 1]) for j, k in enumerate(folders)}
    spec = DatasetSpec(name=name, modalities=(ModalitySpec("fundus", "image", shapes["fundus"]),
                                              ModalitySpec("oct", "volume", shapes["oct"])))
    dataset = finish(decoded, spec, config, ids, present,
                     tabular_tensor(age, male, np.full(len(files), np.nan)), y, stage_from_md(y),
                     predefined=predefined, source=str(base))
    dataset.notes.update(layout=config.layout, split="official" if predefined is not None else "stratified",
                         fundus="slo_fundus" if with_fundus else "absent (zeros)",
                         metadata=display_path(meta.path) if meta.path else None, attributes=meta.attributes,
                         no_metadata_row=meta.no_row, metadata_rows_without_file=meta.without_file)
    return dataset


def decode_npz_eye(path: str, with_fundus: bool, size: int, n_bscans: int, resample: bool) -> dict:
    """One npz's picked B-scans and SLO as the store's rows, and its count, md, age and male."""
    eye = _read_npz(Path(path), with_fundus)
    count = eye["oct"].shape[0]
    picks = select_bscans(count, n_bscans, path, allow_repeats=resample)
    arrays = {"oct": resize_volume(to_uint8(eye["oct"][picks], path), size)}
    if eye["fundus"] is not None:
        arrays["fundus"] = resize_volume(to_uint8(eye["fundus"], path), size)
    info = {"count": count, "md": eye["md"], "age": eye["age"], "male": eye["male"]}
    if eye["keys"] is not None:
        info["keys"] = eye["keys"]
    return {"arrays": arrays, "info": info}


def _check_counts(ids, files, counts, resample: bool) -> None:
    if resample:
        return
    for eye, path, count in zip(ids, files, counts):
        if count != counts[0]:
            raise DataError(f"B-scan counts differ between eyes: {counts[0]} in {ids[0]}, {count} in {eye} ({path}) "
                            f"(pass resample_bscans=True to pick n_bscans from each eye's own count)")


def _find_files(root: Path, layout: str) -> tuple[Path, dict[str, list[Path]]]:
    """The data folder and its npz files per split folder (``{"all": [...]}`` for a flat folder)."""
    base = root / "Glaucoma" if layout == "fairvision" else root
    if not base.is_dir():
        raise DataError(f"{root}: expected the FairVision layout {base}/{{train,val,test}}/*.npz; "
                        f"{base} does not exist")
    children = {p.name.lower(): p for p in base.iterdir() if p.is_dir()}
    found = {}
    for split, names in SPLIT_FOLDER_NAMES.items():
        match = [children[x] for x in names if x in children]
        if match:
            found[split] = match[0]
    if (found and len(found) < len(SPLIT_FOLDER_NAMES)) or (layout == "fairvision" and not found):
        missing = [s for s in SPLIT_FOLDER_NAMES if s not in found]
        raise DataError(f"{base}: split folder(s) {missing} missing (found {sorted(found)}); "
                        f"expected {base}/{{train,val,test}}/*.npz")
    if found:
        return base, {split: sorted(folder.glob("*.npz")) for split, folder in found.items()}
    flat = sorted(base.glob("*.npz"))
    if not flat:
        raise DataError(f"{base}: no .npz files, neither directly inside nor in train/val/test folders")
    return base, {"all": flat}


def _read_npz(path: Path, with_fundus: bool) -> dict:
    """One eye's arrays and scalars; a missing required key or an unreadable file is a ``DataError``."""
    try:
        with np.load(path, allow_pickle=False) as data:
            keys = set(data.files)
            required = ["oct_bscans"] + (["slo_fundus"] if with_fundus else [])
            missing = [k for k in required if k not in keys]
            if missing:
                raise DataError(f"{path}: key(s) {missing} missing (it has {sorted(keys)})")
            volume = data["oct_bscans"]
            if volume.ndim != 3:
                raise DataError(f"{path}: oct_bscans has shape {volume.shape}, expected [B-scans, H, W]")
            fundus = data["slo_fundus"] if with_fundus else None
            if fundus is not None:
                if fundus.ndim == 3 and fundus.shape[-1] in (1, 3):  # channel-last: average to one channel
                    fundus = fundus.mean(-1)
                if fundus.ndim != 2:
                    raise DataError(f"{path}: slo_fundus has shape {fundus.shape}, expected [H, W]")
                fundus = fundus[None]
            return {"oct": volume, "fundus": fundus, "md": _scalar(data, "md", path),
                    "keys": None if "md" in keys else sorted(keys),
                    "age": _scalar(data, "age", path), "male": _scalar(data, "male", path)}
    except DataError:
        raise
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as err:
        raise DataError(f"{path}: unreadable npz file ({type(err).__name__}: {err})") from None


def _scalar(data, key: str, path: Path) -> float:
    """A one-value field as float; absent or not a number -> NaN (``check_labels`` then reports a
    NaN ``md`` by sample id)."""
    if key not in data.files:
        return np.nan
    value = np.asarray(data[key]).reshape(-1)
    if value.size != 1:
        raise DataError(f"{path}: {key} holds {value.size} values, expected one")
    try:
        return float(value[0])
    except (TypeError, ValueError):
        return np.nan


METADATA_NAMES = ("data_summary_glaucoma.csv", "glaucoma_meta.csv")
USE_CODES = {"training": "train", "train": "train", "validation": "val", "val": "val", "test": "test"}
GENDER_CODES = {"male": 1.0, "m": 1.0, "female": 0.0, "f": 0.0}


@dataclass
class Metadata:
    """The metadata table's values for the loaded eyes (NaN where it has none) and what did not match."""

    path: Path | None
    md: np.ndarray
    age: np.ndarray
    male: np.ndarray
    line: dict
    attributes: object = None
    no_row: list = field(default_factory=list)
    without_file: list = field(default_factory=list)

    def where(self, eye: str) -> str:
        return f"{self.path} line {self.line[eye]}"


def _metadata_path(config: Config, root: Path, base: Path) -> Path | None:
    """The metadata csv: ``config.metadata`` (relative to ``root``), else for FairVision the first
    of ``METADATA_NAMES`` found in the data folder, its ``ReadMe`` folder or ``root``; False: none."""
    if config.metadata is False:
        return None
    if config.metadata:
        path = Path(config.metadata)
        path = path if path.is_absolute() else root / path
        if not path.is_file():
            raise DataError(f"metadata file {path} (metadata={config.metadata!r}) does not exist")
        return path
    if config.layout != "fairvision":
        return None
    candidates = [folder / name for folder in (base, base / "ReadMe", root) for name in METADATA_NAMES]
    return next((p for p in candidates if p.is_file()), None)


def read_metadata(path: Path | None, ids: list[str], files: list[Path], split_of: dict) -> Metadata:
    """Age, gender, MD and the other columns of the FairVision metadata csv for eyes ``ids``.
    Required column ``filename`` (``data_006691.npz`` or the stem); optional ``age``, ``gender``
    (male/female, m/f), ``md``, ``use`` (training/validation/test: must match the eye's folder);
    every other column is kept as text in ``attributes``. Bad cells and duplicate rows are errors
    naming the line."""
    nan = np.full(len(ids), np.nan)
    if path is None:
        return Metadata(None, nan, nan.copy(), nan.copy(), {})
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as err:  # pandas raises many types for a bad file  # noqa: BLE001
        raise DataError(f"{path}: cannot read the metadata table ({type(err).__name__}: {err})") from None
    table.columns = [str(c).strip().lower() for c in table.columns]
    if "filename" not in table.columns:
        raise DataError(f"{path}: no 'filename' column to match rows to npz files; it has {list(table.columns)}")
    stems = [Path(f.strip()).stem if f.strip().lower().endswith(".npz") else f.strip() for f in table["filename"]]
    line = {}
    for k, stem in enumerate(stems):
        if stem in line:
            raise DataError(f"{path}: lines {line[stem]} and {k + 2} both describe {stem}")
        line[stem] = k + 2
    rows = {stem: k for k, stem in enumerate(stems)}
    meta = Metadata(path, nan.copy(), nan.copy(), nan.copy(), line)
    for j, (eye, file) in enumerate(zip(ids, files)):
        if eye not in rows:
            meta.no_row.append(eye)
            continue
        r = table.iloc[rows[eye]]
        where = f"{path} line {line[eye]} ({eye})"
        meta.age[j] = _number(r.get("age", ""), where, "age")
        meta.md[j] = _number(r.get("md", ""), where, "md")
        gender = r.get("gender", "").strip().lower()
        if gender and gender not in GENDER_CODES:
            raise DataError(f"{where}: gender {gender!r}, expected male or female")
        meta.male[j] = GENDER_CODES.get(gender, np.nan)
        use = r.get("use", "").strip().lower()
        folder = split_of.get(eye)
        if use and folder in SPLIT_FOLDER_NAMES and USE_CODES.get(use) != folder:
            raise DataError(f"{where}: use {use!r}, but {file} lies in the {folder} folder")
    loaded = set(ids)
    meta.without_file = [s for s in stems if s not in loaded]
    others = [c for c in table.columns if c not in ("filename", "age", "gender", "md")]
    meta.attributes = pd.DataFrame([table.iloc[rows[i]][others] if i in rows else pd.Series(index=others, dtype=str)
                                    for i in ids], index=pd.Index(ids, name="id")).replace("", np.nan)
    return meta


def _number(text: str, where: str, column: str) -> float:
    text = str(text).strip()
    if not text:
        return np.nan
    try:
        return float(text)
    except ValueError:
        raise DataError(f"{where}: {column} {text!r} is not a number") from None


def _merge(npz_value: float, csv_value: float, column: str, path: Path, meta: Metadata, eye: str,
           tolerance: float = 0.0) -> float:
    """A value the npz and the metadata may both hold: either one when the other is NaN; both
    present and different (beyond ``tolerance``) is an error naming both places."""
    if np.isnan(csv_value):
        return npz_value
    if np.isnan(npz_value):
        return csv_value
    if abs(npz_value - csv_value) > tolerance:
        raise DataError(f"{path} has {column} {npz_value:g} but {meta.where(eye)} has {csv_value:g}")
    return npz_value
