"""Moved to ``remd_core.models.fds``; this alias goes in the next release."""

from .._moved import moved

__getattr__ = moved(__name__, "remd_core.models.fds")
