"""Durable files: every result, checkpoint and cache the workbench writes goes through here.

Writes are atomic: the bytes go to a temporary file beside the target, which is renamed over it
only once complete, and removed if the write is interrupted (an exception, Ctrl-C), so no reader
ever finds a half-written file and no ``.tmp`` is left behind.

Reads are verified, and a file that fails verification is reported (a ``CorruptFileWarning``
naming its path and what is wrong), moved aside to ``<name>.corrupt`` and treated as missing, so
the caller recomputes it; it is never silently read:

- JSON: must parse and hold the keys the caller requires. A truncated file fails to parse; a
  flipped digit inside a valid number cannot be detected without a checksum (not kept for JSON).
- torch files (checkpoints, stage-1 encoders): a SHA-256 sidecar ``<name>.sha256`` is written
  beside each, because ``torch.load`` does not check the CRCs of its zip archive (measured: a
  flipped byte inside a tensor loads silently). Loading uses ``weights_only=True``, so a file
  someone sent that carries a pickled object is refused rather than executed.
- ``.npz`` (the synthetic-data cache): Python's ``zipfile`` checks each member's CRC-32 on read.

Written here rather than taken from a library: the standard library has the pieces (``os.replace``,
``hashlib``), and no well-kept package offers atomic writes with verified torch loading.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from contextlib import contextmanager
from pathlib import Path

SIDECAR = ".sha256"


class CorruptFileWarning(UserWarning):
    """A file failed verification; it was moved aside and will be recomputed."""


class UntrustedFileError(RuntimeError):
    """A torch file holds something ``weights_only`` loading refuses (a pickled object)."""


@contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path beside ``path``; on success it replaces ``path``, on any exception
    (Ctrl-C included) it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete the temporary files under ``folder`` that a killed process left (its ``finally``
    never ran); those of a live process are kept. Returns what was removed."""
    removed = []
    for tmp in Path(folder).rglob(".*.tmp"):
        pid = tmp.name.rsplit(".", 2)[-2]
        if pid.isdigit() and not _alive(int(pid)):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # PermissionError: alive, another user's
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def write_json(path: str | Path, payload, indent: int | None = None) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=indent, default=float))


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def quarantine(path: str | Path, reason: str) -> None:
    """Report ``path`` as corrupt and move it (and its sidecar) to ``<name>.corrupt``."""
    path = Path(path)
    warnings.warn(f"{path} is corrupt ({reason}); moved to {path.name}.corrupt and recomputed",
                  CorruptFileWarning, stacklevel=3)
    for source in (path, path.with_name(path.name + SIDECAR)):
        if source.exists():
            os.replace(source, source.with_name(source.name + ".corrupt"))


def read_json(path: str | Path, required: tuple[str, ...] = ()):
    """The payload of ``path``, or ``None`` when it is missing or corrupt (then quarantined).
    ``required`` keys must be present when the payload is a mapping (a list: in every item)."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        payload = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        quarantine(path, f"not valid JSON: {err}")
        return None
    items = payload if isinstance(payload, list) else [payload]
    missing = sorted({k for item in items for k in required if not isinstance(item, dict) or k not in item})
    if missing:
        quarantine(path, f"lacks {missing}")
        return None
    return payload


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_torch(path: str | Path, obj) -> None:
    """``torch.save`` atomically, with its SHA-256 in ``<path>.sha256``. The sidecar is updated
    before the data is renamed into place and lists the new and the previous hash, so a crash at
    any point leaves a file that verifies (the old one or the new one), never a false alarm."""
    import torch

    path = Path(path)
    sidecar = path.with_name(path.name + SIDECAR)
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
        previous = (sidecar.read_text().split() or [""])[0] if path.exists() and sidecar.exists() else ""
        write_text(sidecar, "\n".join(filter(None, (_sha256(tmp), previous))) + "\n")


def load_torch(path: str | Path, map_location="cpu"):
    """The object saved by ``save_torch``, or ``None`` when missing or corrupt (then quarantined).
    Raises ``UntrustedFileError`` for a file that carries a pickled object."""
    import pickle

    import torch

    path = Path(path)
    if not path.exists():
        return None
    sidecar = path.with_name(path.name + SIDECAR)
    if not sidecar.exists():
        quarantine(path, f"no checksum file {sidecar.name}")
        return None
    if _sha256(path) not in sidecar.read_text().split():
        quarantine(path, "its SHA-256 does not match the one recorded when it was written")
        return None
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise UntrustedFileError(f"{path} holds objects that weights-only loading refuses (it could run code "
                                 f"when unpickled); not loaded: {str(err).splitlines()[0]}") from None
    except (RuntimeError, EOFError, OSError) as err:
        quarantine(path, f"torch.load failed: {str(err).splitlines()[0]}")
        return None


def load_npz(path: str | Path) -> dict | None:
    """The arrays of ``path`` (read whole, so every member's CRC is checked), or ``None`` when
    missing or corrupt (then quarantined)."""
    import zipfile

    import numpy as np

    path = Path(path)
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {k: archive[k] for k in archive.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as err:
        quarantine(path, f"{type(err).__name__}: {err}")
        return None


def save_npz(path: str | Path, arrays: dict) -> None:
    import numpy as np

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:  # a file object: np.savez would append ".npz" to a path
            np.savez(handle, **arrays)
