"""Loader for the Harvard Ophthalmology AI Lab glaucoma sets: one ``.npz`` per eye.

Two layouts, chosen by ``layout``, under the folder the user points to (``root=`` or the catalog
entry's environment variable):

``"fairvision"`` (FairVision / Harvard-FairVision30k, glaucoma subset)::

    <root>/Glaucoma/{train,val,test}/*.npz   keys oct_bscans (200 x 200 x 200), slo_fundus
                                             (200 x 200), glaucoma, race, male, hispanic, ...

``"harvard-gf"`` (Harvard-GF)::

    <root>/{train,val,test}/*.npz  or  <root>/*.npz   keys oct_bscans, rnflt, md, tds, age, male, ...

Split folders may also be named training/validation (any case). Other files (the SLO ``.jpg``
copies, ``data_summary_*.csv``) are ignored.

What is read, per eye: ``n_bscans`` B-scans picked evenly along axis 0 of ``oct_bscans`` (taken
as the B-scan index) and resized to ``image_size`` square; ``slo_fundus`` (FairVision) as the
"fundus" modality with one channel, ``[1, H, W]``; ``md`` as the label; ``age`` and ``male``
when the file has them (else NaN). Laterality is not stored in these files, so ``eye`` is NaN.

Choices:

- Sample id = file stem ("data_006691"), a string.
- ``md`` is not promised by the FairVision README: a file without it is a ``DataError`` naming
  the file, since the regression task needs it.
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
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..config import ConfigError
from .base import SplitConfig, assemble
from .checks import DataError, check_labels, check_unique_ids
from .format import DatasetSpec, ModalitySpec, MultimodalDataset, stage_from_md, tabular_tensor
from .imageio import resize_volume, select_bscans, to_uint8

LAYOUTS = ("fairvision", "harvard-gf")
SPLITS = ("official", "stratified")
SPLIT_FOLDER_NAMES = {"train": ("train", "training"), "val": ("val", "validation"), "test": ("test",)}


@dataclass
class Config(SplitConfig):
    """Harvard npz loader settings (see the module docstring); ``test``/``val`` apply to the
    stratified split only."""

    root: str | None = None
    layout: str = "fairvision"
    split: str = "official"
    image_size: int = 64
    n_bscans: int = 8
    resample_bscans: bool = False
    test: float = 0.2
    val: float = 0.15


def build(config: Config, name: str = "harvard") -> MultimodalDataset:
    if config.layout not in LAYOUTS:
        raise ConfigError(f"data set {name!r}: layout must be one of {LAYOUTS}, not {config.layout!r}")
    if config.split not in SPLITS:
        raise ConfigError(f"data set {name!r}: split must be one of {SPLITS}, not {config.split!r}")
    if config.image_size < 1 or config.n_bscans < 1:
        raise ConfigError(f"data set {name!r}: image_size and n_bscans must be at least 1")
    base, folders = _find_files(Path(config.root), config.layout)
    files = [f for part in folders.values() for f in part]
    ids = [f.stem for f in files]
    check_unique_ids(ids, f"{base} (across split folders)")

    size, n = config.image_size, config.n_bscans
    fundus = np.zeros((len(files), 1, size, size), np.uint8)  # SLO (FairVision) or absent (Harvard-GF)
    oct_ = np.zeros((len(files), n, size, size), np.uint8)
    md, age, male = (np.full(len(files), np.nan) for _ in range(3))
    first_count = None
    for k, path in enumerate(tqdm(files, desc=f"{name}: reading eyes", unit="eye")):
        eye = _read_npz(path, with_fundus=config.layout == "fairvision")
        count = eye["oct"].shape[0]
        if first_count is None:
            first_count = (count, ids[k])
        elif count != first_count[0] and not config.resample_bscans:
            raise DataError(f"B-scan counts differ between eyes: {first_count[0]} in {first_count[1]}, {count} in "
                            f"{ids[k]} ({path}) (pass resample_bscans=True to pick n_bscans from each eye's own count)")
        picks = select_bscans(count, n, str(path), allow_repeats=config.resample_bscans)
        oct_[k] = resize_volume(to_uint8(eye["oct"][picks], str(path)), size)
        if eye["fundus"] is not None:
            fundus[k] = resize_volume(to_uint8(eye["fundus"], str(path)), size)
        md[k], age[k], male[k] = eye["md"], eye["age"], eye["male"]

    y = check_labels(ids, md, str(base))
    present = np.ones((len(files), 2), bool)
    present[:, 0] = config.layout == "fairvision"
    predefined = None
    if config.split == "official" and folders.keys() == SPLIT_FOLDER_NAMES.keys():
        starts = np.cumsum([0] + [len(v) for v in folders.values()])
        predefined = {k: np.arange(starts[j], starts[j + 1]) for j, k in enumerate(folders)}
    spec = DatasetSpec(name=name, modalities=(ModalitySpec("fundus", "image", (1, size, size)),
                                              ModalitySpec("oct", "volume", (n, size, size))))
    dataset = assemble(spec, config, ids, {"fundus": fundus, "oct": oct_}, present,
                       tabular_tensor(age, male, np.full(len(files), np.nan)), y, stage_from_md(y),
                       predefined=predefined, source=str(base))
    dataset.notes.update(layout=config.layout, split="official" if predefined is not None else "stratified",
                         fundus="slo_fundus" if config.layout == "fairvision" else "absent (zeros)")
    return dataset


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
            required = ["oct_bscans", "md"] + (["slo_fundus"] if with_fundus else [])
            missing = [k for k in required if k not in keys]
            if missing:
                need = "; the MD regression task needs 'md'" if "md" in missing else ""
                raise DataError(f"{path}: key(s) {missing} missing (it has {sorted(keys)}){need}")
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
