"""Moved to ``remd_core.data.transforms``; this alias goes in the next release."""

from ._moved import moved

__getattr__ = moved(__name__, "remd_core.data.transforms")
