"""Moved to ``remd_core.training`` (a package: config, heads, objectives, loop, checkpoint, evaluate,
runtime); this alias goes in the next release."""

from ._moved import moved

__getattr__ = moved(__name__, "remd_core.training")
