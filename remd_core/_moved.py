"""Old import paths of moved modules keep working for one release, with a ``DeprecationWarning``."""

from __future__ import annotations

import importlib
import warnings


def moved(old: str, new: str):
    """A module ``__getattr__`` for ``old`` that forwards every name to module ``new``."""

    def forward(name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        warnings.warn(f"{old} moved to {new}; import from there ({old} goes in the next release)",
                      DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module(new), name)

    return forward
