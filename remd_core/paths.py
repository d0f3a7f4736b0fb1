"""Where the workbench reads its catalog and writes run products.

Paths come from environment variables when set, else from the repository layout; no absolute
path of any machine is written in code.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def catalog_dir() -> Path:
    """The ``data_catalog`` folder (``REMD_CATALOG_DIR`` overrides it)."""
    return Path(os.environ.get("REMD_CATALOG_DIR", REPO_ROOT / "data_catalog"))


def outputs_dir() -> Path:
    """Root of all run products (``REMD_OUTPUTS`` overrides it); created on first use."""
    path = Path(os.environ.get("REMD_OUTPUTS", REPO_ROOT / "outputs"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def cache_dir() -> Path:
    """Cache of generated data sets, keyed by their configuration."""
    path = outputs_dir() / "cache"
    path.mkdir(parents=True, exist_ok=True)
    return path


def display_path(path) -> str:
    """``path`` as ``outputs/...`` when it lies under the outputs root, so printed messages and
    notebook outputs name no machine path; unchanged otherwise."""
    try:
        return str(Path("outputs") / Path(path).resolve().relative_to(outputs_dir().resolve()))
    except ValueError:
        return str(path)
