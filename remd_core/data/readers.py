"""Readers for the file formats eyes arrive in: they turn one OCT volume or one fundus photograph
into the uint8 arrays of the sample format (``[n_bscans, S, S]``, ``[C, S, S]``).

Which library reads what, and why:

- B-scan image folders (``.jpg``, ``.png``, ``.bmp``, ``.tif`` one file per B-scan) and fundus
  images: Pillow, through ``imageio.read_image`` (the STAGE loader's reader: JPEG draft decoding
  at a reduced scale, antialiased bilinear resize). B-scans are ordered by the integer their file
  name starts with (``2_x.png`` before ``10_x.png``); only the picked ones are decoded.
- ``.npy`` / ``.npz`` volumes: NumPy (``.npy`` memory-mapped, so only the picked B-scans are read;
  ``.npz`` by key, ``oct_bscans`` by default as in the Harvard files, or the archive's only array).
- Multi-page TIFF (one page per B-scan, as ImageJ or a vendor's "export as TIFF stack" writes
  it): ``tifffile``, reading only the picked pages when the pages are the B-scans.
- DICOM: ``pydicom``. Ophthalmic Tomography (OPT, one multi-frame file whose frames are the
  B-scans) for the OCT, Ophthalmic Photography (OP, one frame, RGB or monochrome) for the fundus;
  any other SOP class with the same pixel layout is read the same way. MONOCHROME1 is inverted;
  pixel data with more than 8 stored bits is scaled from ``0 .. 2**BitsStored - 1`` to 0..255
  (OCT exports are often 16-bit). Compressed transfer syntaxes need pydicom's decoder plugins
  (e.g. ``pylibjpeg``); without one the error says so. MONAI's ``PydicomReader`` is built for
  CT/MR series (one slice per file, patient-space affine, axes swapped) and is not used.
- Vendor exports, through the optional ``eyepy`` package (``pip install 'remd-core[vendor]'``):
  Heidelberg ``.vol`` (``import_heyex_vol``), ``.e2e`` (``import_heyex_e2e``), HEYEX XML exports
  (``.xml``, ``import_heyex_xml``) and Topcon ``.fda`` (``import_topcon_fda``), each taken as
  ``EyeVolume.data`` (B-scans along axis 0). UNTESTED on real files: no vendor file can be written
  by a test, so the tests check only the glue, with eyepy's import function replaced by a stand-in.

Every volume is picked with ``imageio.select_bscans`` (evenly from the first B-scan to the last),
converted with ``imageio.to_uint8`` and resized to a square with ``imageio.resize_volume``; a
colour source is reduced to one channel with the ITU-R 601 luma weights (what Pillow's "L" uses),
and a monochrome fundus is repeated to three channels when three are asked for. A file that is
missing, unreadable or of the wrong shape is a ``DataError`` naming it.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import numpy as np

from .checks import DataError
from .imageio import IMAGE_SUFFIXES, read_image, resize_volume, select_bscans, to_uint8

BSCAN_IMAGE_SUFFIXES = IMAGE_SUFFIXES + (".bmp", ".tif", ".tiff")
TIFF_SUFFIXES = (".tif", ".tiff")
DICOM_SUFFIXES = (".dcm", ".dicom")
VENDOR_READERS = {".vol": "import_heyex_vol", ".e2e": "import_heyex_e2e", ".xml": "import_heyex_xml",
                  ".fda": "import_topcon_fda"}
VOLUME_SUFFIXES = (".npy", ".npz", *TIFF_SUFFIXES, *DICOM_SUFFIXES, *VENDOR_READERS)
LUMA = np.array([0.299, 0.587, 0.114])


# ---- B-scan folders --------------------------------------------------------------------------
def order_bscans(files, context: str) -> list[Path]:
    """B-scan files in volume order, by the integer each name starts with; a name without one, or
    two names with the same one, is a ``DataError`` (``context`` names the eye)."""
    keyed = []
    for p in files:
        lead = re.match(r"\d+", p.name)
        if not lead:
            raise DataError(f"{p}: B-scan file name does not start with an integer, so its place in the volume "
                            f"of {context} is unknown")
        keyed.append((int(lead.group()), p.name, p))
    keyed.sort()
    for (a, _, pa), (b, _, pb) in zip(keyed, keyed[1:]):
        if a == b:
            raise DataError(f"{context}: B-scans {pa.name} and {pb.name} share the index {a}")
    return [p for *_, p in keyed]


def bscan_folder(folder: Path, context: str) -> list[Path]:
    """The B-scan images of ``folder`` in volume order (hidden files and other suffixes ignored)."""
    files = [p for p in Path(folder).iterdir()
             if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in BSCAN_IMAGE_SUFFIXES]
    if not files:
        raise DataError(f"{folder}: no B-scan images ({', '.join(BSCAN_IMAGE_SUFFIXES)}) in the folder")
    return order_bscans(files, context)


def read_bscans(paths, size: int) -> np.ndarray:
    """The B-scan image files ``paths`` as one uint8 volume ``[len(paths), size, size]``."""
    return np.stack([read_image(p, size, "L") for p in paths])


# ---- volume files ----------------------------------------------------------------------------
def read_volume(path, n_bscans: int, size: int, allow_repeats: bool = False, npz_key: str = "oct_bscans"):
    """``(volume, count)``: ``n_bscans`` B-scans picked from the volume file ``path`` (any of
    ``VOLUME_SUFFIXES``), uint8 ``[n_bscans, size, size]``, and the file's B-scan count."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: OCT file is missing")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        stack = _open_npy(path)
    elif suffix == ".npz":
        stack = _read_npz(path, npz_key)
    elif suffix in TIFF_SUFFIXES:
        stack = _TiffStack(path)
    elif suffix in DICOM_SUFFIXES:
        stack = read_dicom(path)
        stack = _luma(stack) if stack.ndim == 4 else stack
    elif suffix in VENDOR_READERS:
        stack = read_vendor(path)
    else:
        raise DataError(f"{path}: unknown OCT format {suffix!r}; expected a folder of B-scan images or one of "
                        f"{', '.join(VOLUME_SUFFIXES)}")
    if len(stack.shape) != 3:
        raise DataError(f"{path}: OCT volume has shape {tuple(stack.shape)}, expected [B-scans, H, W]")
    count = int(stack.shape[0])
    picks = select_bscans(count, n_bscans, str(path), allow_repeats=allow_repeats)
    try:
        picked = stack[picks]
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: unreadable OCT volume ({type(err).__name__}: {err})") from None
    return resize_volume(to_uint8(picked, str(path)), size), count


def _open_npy(path: Path):
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise DataError(f"{path}: unreadable npy file ({type(err).__name__}: {err})") from None


def _read_npz(path: Path, key: str) -> np.ndarray:
    try:
        with np.load(path, allow_pickle=False) as data:
            names = list(data.files)
            if key in names:
                return data[key]
            if len(names) == 1:
                return data[names[0]]
            raise DataError(f"{path}: no array {key!r} (it has {names}); pass npz_key=... to name the volume's key")
    except DataError:
        raise
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as err:
        raise DataError(f"{path}: unreadable npz file ({type(err).__name__}: {err})") from None


class _TiffStack:
    """A multi-page TIFF as ``[pages, H, W]`` whose indexing reads only the asked-for pages (when
    each page is one B-scan); other layouts (one 3-D page, an ImageJ hyperstack) are read whole."""

    def __init__(self, path: Path):
        import tifffile

        self.path = path
        try:
            with tifffile.TiffFile(path) as tif:
                series = tif.series[0]
                self.shape, self.per_page = tuple(series.shape), len(series.pages) == series.shape[0]
        except (tifffile.TiffFileError, OSError, ValueError, IndexError, KeyError) as err:
            raise DataError(f"{path}: unreadable TIFF file ({type(err).__name__}: {err})") from None
        if len(self.shape) == 4 and self.shape[-1] in (3, 4):  # colour pages: one channel (luma)
            self.shape, self.colour = self.shape[:3], True
        else:
            self.colour = False
        if len(self.shape) == 2:  # a single-page TIFF is one B-scan
            self.shape, self.per_page = (1, *self.shape), True

    def __getitem__(self, picks) -> np.ndarray:
        import tifffile

        try:
            if self.per_page:
                arrays = tifffile.imread(self.path, key=[int(i) for i in picks])
                arrays = arrays.reshape(len(picks), *arrays.shape[-(3 if self.colour else 2):])
            else:
                arrays = tifffile.imread(self.path)[picks]
        except (tifffile.TiffFileError, OSError, ValueError) as err:
            raise DataError(f"{self.path}: unreadable TIFF page ({type(err).__name__}: {err})") from None
        return _luma(arrays) if self.colour else arrays


def read_dicom(path: Path) -> np.ndarray:
    """The pixel data of DICOM file ``path`` as uint8: ``[frames, H, W(, 3)]`` when it has several
    frames, ``[H, W(, 3)]`` otherwise (see the module docstring for the value mapping)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(path)
    except (InvalidDicomError, OSError, ValueError, EOFError, KeyError, AttributeError, TypeError) as err:
        raise DataError(f"{path}: unreadable DICOM file ({type(err).__name__}: {err})") from None
    if "PixelData" not in ds:
        raise DataError(f"{path}: DICOM file has no pixel data (SOP class {_sop_class(ds)})")
    try:
        array = np.asarray(ds.pixel_array)
    except Exception as err:  # pydicom raises many types for a pixel-data problem  # noqa: BLE001
        raise DataError(f"{path}: cannot decode the DICOM pixel data of transfer syntax "
                        f"{ds.file_meta.get('TransferSyntaxUID', '?')} ({type(err).__name__}: {err}); compressed "
                        f"data needs a pydicom decoder plugin such as pylibjpeg") from None
    bits = int(ds.get("BitsStored", 8))
    if array.dtype.kind in "iu" and (bits > 8 or array.dtype.itemsize > 1):
        if int(ds.get("PixelRepresentation", 0)) == 1:
            array = array.astype(np.int64) + 2 ** (bits - 1)
        array = np.rint(array.astype(np.float64) * (255.0 / (2 ** bits - 1)))
        array = np.clip(array, 0, 255).astype(np.uint8)
    else:
        array = to_uint8(array, str(path))
    if str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        array = 255 - array
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    return array if frames > 1 else array[None]  # always a leading frame axis


def _sop_class(ds) -> str:
    uid = ds.get("SOPClassUID")
    return f"{getattr(uid, 'name', uid)}" if uid is not None else "not given"


def read_vendor(path: Path) -> np.ndarray:
    """A vendor export read by eyepy (UNTESTED on real files: see the module docstring)."""
    try:
        import eyepy
    except ImportError:
        raise DataError(f"{path}: reading {path.suffix} exports needs the optional eyepy package "
                        f"(pip install 'remd-core[vendor]')") from None
    reader = getattr(eyepy, VENDOR_READERS[path.suffix.lower()])
    try:
        volume = reader(str(path))
        return np.asarray(volume.data)
    except Exception as err:  # a vendor parser raises anything on a bad file  # noqa: BLE001
        raise DataError(f"{path}: unreadable {path.suffix} export ({type(err).__name__}: {err})") from None


def _luma(rgb: np.ndarray) -> np.ndarray:
    """One channel from the last axis's R, G, B (ITU-R 601 weights); uint8 stays uint8."""
    out = np.asarray(rgb[..., :3], dtype=np.float64) @ LUMA
    return np.rint(out).astype(np.uint8) if rgb.dtype == np.uint8 else out


# ---- fundus ----------------------------------------------------------------------------------
def read_fundus(path, size: int, channels: int = 3) -> np.ndarray:
    """The fundus photograph ``path`` (an image file, a DICOM photograph or a ``.npy`` array) as
    uint8 ``[channels, size, size]`` (``channels`` 1 or 3)."""
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, not {channels}")
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in DICOM_SUFFIXES or suffix == ".npy":
        if not path.is_file():
            raise DataError(f"{path}: fundus file is missing")
        if suffix == ".npy":
            array = to_uint8(np.asarray(_open_npy(path)), str(path))
            array = array[None] if array.ndim == 2 else array
            if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3):
                array = array.transpose(1, 2, 0)[None]  # [C, H, W] -> [1, H, W, C]
            elif array.ndim == 3 and array.shape[-1] in (1, 3):
                array = array[None]
        else:
            array = read_dicom(path)
        if array.shape[0] != 1:
            raise DataError(f"{path}: {array.shape[0]} frames; a fundus photograph is one frame")
        image = array[0]
        if image.ndim == 3 and image.shape[-1] == 1:
            image = image[..., 0]
        if image.ndim == 2:
            chw = np.repeat(image[None], channels, 0)
        elif image.ndim == 3 and image.shape[-1] == 3:
            chw = image.transpose(2, 0, 1) if channels == 3 else _luma(image)[None]
        else:
            raise DataError(f"{path}: fundus image has shape {image.shape}, expected [H, W] or [H, W, 3]")
        return resize_volume(np.ascontiguousarray(chw), size)
    if suffix not in BSCAN_IMAGE_SUFFIXES:
        raise DataError(f"{path}: unknown fundus format {suffix!r}; expected an image file "
                        f"({', '.join(BSCAN_IMAGE_SUFFIXES)}), a DICOM photograph (.dcm) or a .npy array")
    image = read_image(path, size, "RGB" if channels == 3 else "L")
    return image if channels == 3 else image[None]
