"""What a run came from: package versions, git revision, machine. Written beside every result."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from ..files import write_text
from ..paths import REPO_ROOT

PACKAGES = ("remd-core", "torch", "numpy", "pandas", "scipy", "matplotlib", "papermill", "plotly")


def git_revision() -> str:
    """The checkout's commit, with ``-dirty`` when it has uncommitted changes; "unknown" outside git."""
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def record() -> dict:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "time_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "git_revision": git_revision(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": versions,
    }


def write(folder: Path, extra: dict | None = None) -> Path:
    path = Path(folder) / "provenance.json"
    write_text(path, json.dumps({**record(), **(extra or {})}, indent=2, default=str))
    return path
