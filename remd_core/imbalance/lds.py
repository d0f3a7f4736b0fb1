"""Moved to ``remd_core.losses.lds``; this alias goes in the next release."""

from .._moved import moved

__getattr__ = moved(__name__, "remd_core.losses.lds")
