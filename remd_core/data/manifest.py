"""Loader for in-house data described by a manifest: one CSV or parquet row per eye.

``load("manifest", path="eyes.csv")`` (or a catalog entry with ``loader: manifest`` and a ``path``
parameter). Columns (names case-insensitive; other columns are not model inputs: they are listed in
``dataset.notes["ignored_columns"]`` and kept as text in ``dataset.notes["attributes"]``, one row
per eye by id, for results by patient group, ``evaluation.groups``):

``id``       required, kept as a string ("0201" keeps its zero).
``md``       required: the label, MD in dB (``label="mtd"`` reads another column); must be a number
             inside ``label_range`` (default -35 to +5 dB; ``label_range=None`` for other labels).
``split``    optional: train / val / test for every row (the data's own split); without the column
             the split is label-stratified (``test``, ``val``, ``seed`` as for every loader).
``age``      optional, years; ``sex`` optional, M/F (or male/female); ``eye`` optional, OD/OS.
             Blank cells are unknown (NaN); any other value is an error.
``oct``      the OCT: a folder of B-scan images, or a ``.npy``/``.npz`` volume, a multi-page TIFF,
             a DICOM ophthalmic tomography file, or a vendor export (``.vol``, ``.e2e``, ``.xml``,
             ``.fda``; needs the ``vendor`` extra, untested). See ``remd_core.data.readers``.
``fundus``   the fundus: an image file, a DICOM ophthalmic photograph or a ``.npy`` array.

Paths are relative to the manifest's folder unless absolute. A blank ``oct`` or ``fundus`` cell
means the modality was not acquired for that eye: its images are zeros and ``present`` is False
(listed in ``notes["absent"]``); a row with neither is an error. ``n_bscans`` B-scans are picked
evenly through each volume; all volumes must have the same B-scan count unless
``resample_bscans=True``. ``fundus_channels`` is 3 (colour photographs) or 1 (SLO).

Every problem stops the load with a ``DataError`` that names the manifest, the line (CSV: the
file's line, header = line 1; parquet: the row, from 1) and the file: a missing or unreadable file,
too few B-scans, B-scan counts that differ, a blank, non-numeric or implausible label, a duplicate
or blank id, an unknown split, sex or eye value, and a split left empty. Nothing is dropped.

Decoded eyes go to the decoded-data store (``remd_core.data.store``) keyed by the manifest's path
and the decoding settings; each eye's entry depends on its id, its files' paths, sizes and mtimes,
so editing labels in the manifest re-decodes nothing and replacing one volume re-decodes one eye.
``lazy=True`` keeps the images in the store (``remd_core.data.streaming``). ``stage`` (strata for
reports only) is derived from MD with ``stage_from_md``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..config import ConfigError
from .base import SplitConfig
from .checks import MD_RANGE_DB, DataError, check_labels
from .format import EYE_CODES, DatasetSpec, ModalitySpec, MultimodalDataset, stage_from_md, tabular_tensor
from .imageio import select_bscans
from .readers import bscan_folder, read_bscans, read_fundus, read_volume
from .store import Job, StoreOptions
from .streaming import decode_eyes, finish

SPLIT_NAMES = ("train", "val", "test")
SEX_CODES = {"m": 1.0, "male": 1.0, "f": 0.0, "female": 0.0}


@dataclass
class Config(SplitConfig, StoreOptions):
    """Manifest loader settings (module docstring); ``test``/``val`` apply when the manifest has no
    ``split`` column; the store and streaming settings as in ``store.StoreOptions``."""

    path: str | None = None
    label: str = "md"
    label_range: tuple[float, float] | None = MD_RANGE_DB
    image_size: int = 64
    n_bscans: int = 8
    resample_bscans: bool = False
    fundus_channels: int = 3
    npz_key: str = "oct_bscans"
    test: float = 0.2
    val: float = 0.15


def build(config: Config, name: str = "manifest") -> MultimodalDataset:
    if config.image_size < 1 or config.n_bscans < 1:
        raise ConfigError(f"data set {name!r}: image_size and n_bscans must be at least 1")
    if config.fundus_channels not in (1, 3):
        raise ConfigError(f"data set {name!r}: fundus_channels must be 1 or 3, not {config.fundus_channels}")
    config.check_store_options(name)
    path = Path(config.path)
    table, where = read_manifest(path, config.label.strip().lower())
    ids = list(table["id"])
    size, n = config.image_size, config.n_bscans
    label = config.label.strip().lower()
    y = check_labels([f"{i} ({where[k]})" for k, i in enumerate(ids)],
                     pd.to_numeric(table[label], errors="coerce").to_numpy(float, copy=True), str(path),
                     tuple(config.label_range) if config.label_range is not None else None,
                     label="MD" if label == "md" else config.label)

    shapes = {"fundus": (config.fundus_channels, size, size), "oct": (n, size, size)}
    jobs, present = [], np.zeros((len(ids), 2), bool)
    for k, eye in enumerate(ids):
        fundus, oct_ = (_resolve(table[c].iloc[k], path) for c in ("fundus", "oct"))
        present[k] = fundus is not None, oct_ is not None
        if fundus is None and oct_ is None:
            raise DataError(f"{path} {where[k]} (id {eye}): neither an oct nor a fundus file")
        try:
            jobs.append(_job(eye, f"{path} {where[k]} (id {eye})", fundus, oct_, config))
        except DataError as err:
            raise DataError(f"{path} {where[k]} (id {eye}): {err}") from None
    settings = {"manifest": str(path.resolve()), "image_size": size, "n_bscans": n,
                "fundus_channels": config.fundus_channels, "npz_key": config.npz_key}
    decoded = decode_eyes(config, "manifest", settings, shapes, jobs, decode_manifest_eye, name)
    _check_counts(ids, where, path, [i.get("count") for i in decoded.infos], present[:, 1], config.resample_bscans)

    age = _numbers(table, "age", path, where)
    male = _codes(table, "sex", SEX_CODES, path, where, "M or F")
    side = _codes(table, "eye", {k.lower(): v for k, v in EYE_CODES.items()}, path, where, "OD or OS")
    predefined = _predefined(table, path, where)
    spec = DatasetSpec(name=name, modalities=(ModalitySpec("fundus", "image", shapes["fundus"]),
                                              ModalitySpec("oct", "volume", shapes["oct"])),
                       label_name="MD" if label == "md" else config.label)
    dataset = finish(decoded, spec, config, ids, present, tabular_tensor(age, male, side), y, stage_from_md(y),
                     predefined=predefined, source=str(path))
    known = {"id", label, "split", "age", "sex", "eye", "fundus", "oct"}
    extra = [c for c in table.columns if c not in known]
    attributes = table[extra].set_axis(pd.Index(ids, name="id")).replace("", np.nan) if extra else None
    dataset.notes.update(manifest=str(path), split="manifest" if predefined is not None else "stratified",
                         ignored_columns=extra, attributes=attributes,
                         absent={m: [i for i, p in zip(ids, present[:, j]) if not p]
                                 for j, m in enumerate(spec.modality_names)})
    return dataset


def read_manifest(path: Path, label: str) -> tuple[pd.DataFrame, list[str]]:
    """The manifest as strings with lower-case column names, and each row's place for messages
    ("line 4" in a CSV, "row 3" in a parquet file). Required columns, blank and duplicate ids are
    checked here."""
    if not path.is_file():
        raise DataError(f"manifest {path} does not exist")
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            table = pd.read_parquet(path).astype("string").fillna("").astype(str)
            where = [f"row {k + 1}" for k in range(len(table))]
        else:
            table = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
            where = [f"line {k + 2}" for k in range(len(table))]
    except Exception as err:  # pandas and pyarrow raise many types for a bad file  # noqa: BLE001
        raise DataError(f"{path}: cannot read the manifest ({type(err).__name__}: {err})") from None
    table.columns = [str(c).strip().lower() for c in table.columns]
    missing = [c for c in ("id", label) if c not in table.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; it has {list(table.columns)}")
    if not {"oct", "fundus"} & set(table.columns):
        raise DataError(f"{path}: no 'oct' or 'fundus' column naming the eyes' files; it has {list(table.columns)}")
    if len(table) == 0:
        raise DataError(f"{path}: the manifest has no rows")
    for column in ("oct", "fundus"):
        if column not in table.columns:
            table[column] = ""
    table = table.apply(lambda c: c.str.strip())
    blank = [where[k] for k in np.flatnonzero(table["id"] == "")]
    if blank:
        raise DataError(f"{path}: {', '.join(blank)}: no id")
    first = {}
    for k, eye in enumerate(table["id"]):
        if eye in first:
            raise DataError(f"{path}: duplicate id {eye} on {where[first[eye]]} and {where[k]}")
        first[eye] = k
    return table, where


def _resolve(cell: str, manifest: Path) -> Path | None:
    if not cell:
        return None
    p = Path(cell).expanduser()
    return p if p.is_absolute() else manifest.parent / p


def _job(eye: str, where: str, fundus: Path | None, oct_: Path | None, config: Config) -> Job:
    """The decoding job of one row. A B-scan folder is listed here (its picks depend on its file
    names, which go into the fingerprint); a volume file is opened only by the decoder."""
    files, extra, oct_arg = [], "", None
    if oct_ is not None and oct_.is_dir():
        bscans = bscan_folder(oct_, f"id {eye}")
        picks = select_bscans(len(bscans), config.n_bscans, str(oct_), allow_repeats=config.resample_bscans)
        oct_arg = ("folder", [str(bscans[i]) for i in picks], len(bscans))
        files += oct_arg[1]
        extra = "\n".join(p.name for p in bscans)
    elif oct_ is not None:
        oct_arg = ("file", str(oct_))
        files.append(str(oct_))
    if fundus is not None:
        files.append(str(fundus))
    return Job(key=eye, files=files, where=where, extra=extra,
               args=(oct_arg, fundus and str(fundus), config.image_size, config.n_bscans, config.resample_bscans,
                     config.fundus_channels, config.npz_key))


def decode_manifest_eye(oct_arg, fundus: str | None, size: int, n_bscans: int, resample: bool, channels: int,
                        npz_key: str) -> dict:
    """One row's OCT (``("folder", picked files, count)`` or ``("file", path)``) and fundus as the
    store's rows, and the OCT's B-scan count."""
    arrays, info = {}, {}
    if oct_arg is not None and oct_arg[0] == "folder":
        arrays["oct"], info["count"] = read_bscans(oct_arg[1], size), oct_arg[2]
    elif oct_arg is not None:
        arrays["oct"], info["count"] = read_volume(oct_arg[1], n_bscans, size, resample, npz_key)
    if fundus is not None:
        arrays["fundus"] = read_fundus(fundus, size, channels)
    return {"arrays": arrays, "info": info}


def _check_counts(ids, where, path: Path, counts, has_oct, resample: bool) -> None:
    if resample:
        return
    groups: dict[int, list[str]] = {}
    for eye, w, c, has in zip(ids, where, counts, has_oct):
        if has:
            groups.setdefault(c, []).append(f"{eye} ({w})")
    if len(groups) > 1:
        described = "; ".join(f"{c} in {', '.join(e[:5])}{' ...' if len(e) > 5 else ''}" for c, e in sorted(groups.items()))
        raise DataError(f"{path}: B-scan counts differ between eyes: {described} "
                        f"(pass resample_bscans=True to pick n_bscans from each eye's own count)")


def _numbers(table: pd.DataFrame, column: str, path: Path, where) -> np.ndarray:
    if column not in table.columns:
        return np.full(len(table), np.nan)
    values = pd.to_numeric(table[column].replace("", np.nan), errors="coerce").to_numpy(float)
    bad = [f"{w} ({table[column].iloc[k]!r})" for k, w in enumerate(where)
           if table[column].iloc[k] and np.isnan(values[k])]
    if bad:
        raise DataError(f"{path}: {column} is not a number on {', '.join(bad[:10])}")
    return values


def _codes(table: pd.DataFrame, column: str, codes: dict, path: Path, where, expected: str) -> np.ndarray:
    if column not in table.columns:
        return np.full(len(table), np.nan)
    text = table[column].str.lower()
    bad = [f"{w} ({table[column].iloc[k]!r})" for k, w in enumerate(where) if text.iloc[k] and text.iloc[k] not in codes]
    if bad:
        raise DataError(f"{path}: {column} must be {expected} (or blank) on {', '.join(bad[:10])}")
    return np.array([codes.get(t, np.nan) for t in text], float)


def _predefined(table: pd.DataFrame, path: Path, where) -> dict[str, np.ndarray] | None:
    """Split positions from the ``split`` column (every row must name train, val or test)."""
    if "split" not in table.columns:
        return None
    text = table["split"].str.lower()
    bad = [f"{w} ({table['split'].iloc[k]!r})" for k, w in enumerate(where) if text.iloc[k] not in SPLIT_NAMES]
    if bad:
        raise DataError(f"{path}: split must be one of {list(SPLIT_NAMES)} on {', '.join(bad[:10])}")
    return {s: np.flatnonzero(text.to_numpy() == s) for s in SPLIT_NAMES}
