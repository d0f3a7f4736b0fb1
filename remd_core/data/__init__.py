"""Data catalog access: ``load(name, **overrides)`` returns a ``MultimodalDataset`` whose splits
share one sample format (see ``remd_core.data.format``)."""

from .catalog import CatalogError, default_name, entry, load, loader_config, read_catalog
from .checks import DataError
from .format import (GLAUCOMA_STAGES, TABULAR_COLUMNS, DatasetSpec, ModalitySpec, MultimodalDataset,
                     MultimodalSplit, stage_from_md)

__all__ = [
    "CatalogError", "DataError", "DatasetSpec", "GLAUCOMA_STAGES", "ModalitySpec", "MultimodalDataset",
    "MultimodalSplit", "TABULAR_COLUMNS", "default_name", "entry", "load", "loader_config", "read_catalog",
    "stage_from_md",
]
