"""Moved: the losses to ``remd_core.losses`` (``lds``, ``ntxent``, ``rnc``, ``conr``, ``echomen``,
``contrastive``, once ``imbalance.objectives``), FDS to ``remd_core.models.fds``, the label bins to
``remd_core.data.labels``. These aliases go in the next release."""

from .._moved import moved

__getattr__ = moved(__name__, "remd_core.losses")
