"""The data catalog: ``data_catalog/catalog.yaml`` names every data set, its loader, its default
parameters and its dataset card. ``load(name, **overrides)`` is the one entry point."""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..config import from_dict
from ..paths import catalog_dir
from ..timing import timed
from .checks import DataError
from .format import MultimodalDataset

LOADERS = {
    "synthetic": "remd_core.data.synthetic",
    "stage2": "remd_core.data.stage2",
    "harvard_npz": "remd_core.data.harvard",
    "randhie": "remd_core.data.randhie",
    "manifest": "remd_core.data.manifest",
}


class CatalogError(KeyError):
    """An unknown catalog name or a malformed catalog file."""

    def __str__(self):  # KeyError quotes its message; keep it readable
        return str(self.args[0])


@dataclass
class CatalogEntry:
    name: str
    loader: str
    card: str
    description: str = ""
    params: dict = field(default_factory=dict)
    root_env: str | None = None

    def card_text(self) -> str:
        path = catalog_dir() / self.card
        return path.read_text() if path.exists() else ""


def read_catalog(path: Path | None = None) -> dict[str, CatalogEntry]:
    path = path or catalog_dir() / "catalog.yaml"
    if not path.exists():
        raise CatalogError(f"no catalog file at {path}; set REMD_CATALOG_DIR to the data_catalog folder")
    raw = yaml.safe_load(path.read_text()) or {}
    entries = {}
    for name, values in (raw.get("datasets") or {}).items():
        entry = from_dict(CatalogEntry, {"name": name, **values}, context=f"{path.name} entry {name!r}")
        if entry.loader not in LOADERS:
            raise CatalogError(f"{path.name} entry {name!r}: unknown loader {entry.loader!r}; known: {sorted(LOADERS)}")
        entries[name] = entry
    return entries


def default_name() -> str:
    raw = yaml.safe_load((catalog_dir() / "catalog.yaml").read_text()) or {}
    return raw.get("default", "synthetic-stage2")


def entry(name: str) -> CatalogEntry:
    entries = read_catalog()
    if name not in entries:
        raise CatalogError(f"unknown data set {name!r}; the catalog has: {', '.join(entries)}")
    return entries[name]


def loader_config(name: str, **overrides):
    """The loader's config dataclass for entry ``name``: catalog defaults, then ``overrides``.
    Unknown keys raise ``ConfigError`` listing the allowed ones."""
    e = entry(name)
    module = importlib.import_module(LOADERS[e.loader])
    return from_dict(module.Config, {**e.params, **overrides}, context=f"data set {name!r}")


def _resolve_root(config, e: CatalogEntry):
    """Real data sets read from ``root=...`` or, failing that, the entry's environment variable."""
    root = config.root or (os.environ.get(e.root_env) if e.root_env else None)
    if not root:
        hint = f" or set {e.root_env}" if e.root_env else ""
        raise DataError(f"data set {e.name!r} reads real data from a folder: pass root=...{hint}")
    if not Path(root).is_dir():
        raise DataError(f"data set {e.name!r}: data folder {root} does not exist")
    config.root = str(root)
    return config


def _resolve_manifest(config, e: CatalogEntry, from_entry: bool):
    """A manifest loader reads ``path=...`` or, failing that, the entry's environment variable. A
    relative path written in the catalog entry is relative to the catalog folder; one passed as
    an override or in the variable, to the working directory."""
    path = config.path or (os.environ.get(e.root_env) if e.root_env else None)
    if not path:
        hint = f" or set {e.root_env}" if e.root_env else ""
        raise DataError(f"data set {e.name!r} reads a manifest (csv or parquet, one row per eye): pass path=...{hint}")
    path = Path(path).expanduser()
    if from_entry and config.path and not path.is_absolute():
        path = catalog_dir() / path
    if not path.is_file():
        raise DataError(f"data set {e.name!r}: manifest {path} does not exist")
    config.path = str(path)
    return config


@timed("data")
def load(name: str | None = None, **overrides) -> MultimodalDataset:
    """Load catalog entry ``name`` (the catalog's default when None) with parameter overrides."""
    name = name or default_name()
    e = entry(name)
    module = importlib.import_module(LOADERS[e.loader])
    config = loader_config(name, **overrides)
    if hasattr(config, "root"):
        config = _resolve_root(config, e)
    if e.loader == "manifest":
        config = _resolve_manifest(config, e, from_entry="path" not in overrides)
    dataset = module.build(config, name)
    dataset.card = e.card_text()
    return dataset
