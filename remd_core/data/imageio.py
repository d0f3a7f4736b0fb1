"""Small image helpers shared by the real-data loaders (``stage2``, ``harvard``).

Everything returns uint8 arrays, the storage type of the sample format, and every failure to read
a file is a ``DataError`` naming the file. Choices:

- Images are resized to a square ``size x size`` (the aspect ratio is not kept: STAGE B-scans are
  wider than tall, and a square keeps one shape for every modality and data set).
- PIL's bilinear resize filters over the whole source footprint when it shrinks (it is
  antialiased, close to area averaging); for JPEGs ``Image.draft`` first lets the decoder drop
  to the smallest DCT scale still at least ``size`` wide, which makes large B-scans cheap to read.
- Numpy volumes (the npz loaders) are resized with ``torch.nn.functional.interpolate``
  (bilinear, antialiased), the same filter family as PIL's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from .checks import DataError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def read_image(path: str | Path, size: int, mode: str = "L") -> np.ndarray:
    """Read a JPEG/PNG, resize it to ``size x size``; ``mode`` "L" (grayscale, B-scans) gives
    ``[size, size]``, "RGB" (colour fundus) gives ``[3, size, size]``, both uint8."""
    if mode not in ("L", "RGB"):
        raise ValueError(f"mode must be 'L' or 'RGB', not {mode!r}")
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: image file is missing")
    try:
        with Image.open(path) as im:
            im.draft(mode, (size, size))  # JPEG only: decode at a reduced scale >= size
            im = im.convert(mode).resize((size, size), Image.Resampling.BILINEAR)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        # PIL reports corrupt bytes as UnidentifiedImageError and truncated files as OSError.
        raise DataError(f"{path}: unreadable image ({type(err).__name__}: {err})") from None
    array = np.asarray(im, dtype=np.uint8)
    return np.ascontiguousarray(array.transpose(2, 0, 1)) if mode == "RGB" else array


def select_bscans(count: int, n_bscans: int, source: str = "", allow_repeats: bool = False) -> np.ndarray:
    """Indices of ``n_bscans`` evenly spaced B-scans out of ``count`` (``np.linspace`` from the
    first to the last, rounded), so the picks span the whole volume.

    Fewer B-scans on disk than asked for is a ``DataError`` unless ``allow_repeats`` (then some
    B-scans are picked twice)."""
    if n_bscans < 1:
        raise ValueError(f"n_bscans must be at least 1, not {n_bscans}")
    if count < 1:
        raise DataError(f"{source}: no B-scans found")
    if n_bscans > count and not allow_repeats:
        raise DataError(f"{source}: {count} B-scan(s) on disk, fewer than n_bscans={n_bscans}")
    return np.rint(np.linspace(0, count - 1, n_bscans)).astype(np.int64)


def to_uint8(array: np.ndarray, source: str) -> np.ndarray:
    """Pixel values as uint8: uint8 passes through; other integers are clipped to 0..255; floats
    in [0, 1] are scaled by 255, other floats are taken as 0..255 and clipped."""
    array = np.asarray(array)
    if array.dtype == np.uint8:
        return array
    if array.dtype.kind in "iub":
        return np.clip(array, 0, 255).astype(np.uint8)
    if array.dtype.kind != "f":
        raise DataError(f"{source}: pixel array has dtype {array.dtype}, expected numbers")
    if not np.isfinite(array).all():
        raise DataError(f"{source}: pixel array holds NaN or infinite values")
    if array.size and array.min() >= 0.0 and array.max() <= 1.0:
        array = array * 255.0
    return np.clip(np.rint(array), 0, 255).astype(np.uint8)


def resize_volume(volume: np.ndarray, size: int) -> np.ndarray:
    """Resize every slice of a uint8 volume ``[S, H, W]`` to ``[S, size, size]`` (bilinear,
    antialiased), returning uint8."""
    volume = np.asarray(volume)
    if volume.ndim != 3:
        raise ValueError(f"expected a volume [S, H, W], got shape {volume.shape}")
    if volume.shape[1:] == (size, size):
        return np.ascontiguousarray(volume, dtype=np.uint8)
    t = torch.from_numpy(np.ascontiguousarray(volume)).float()[:, None]
    t = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return t[:, 0].round_().clamp_(0, 255).to(torch.uint8).numpy()
