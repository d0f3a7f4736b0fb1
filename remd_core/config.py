"""Strict dataclass configs: unknown keys are an error, never a silent no-op."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration names a key that does not exist or holds a value of the wrong kind."""


def field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def from_dict(cls: type[T], values: Mapping[str, Any], context: str = "") -> T:
    """Build dataclass ``cls`` from ``values``; unknown keys raise ``ConfigError`` naming them.

    ``context`` says where the values came from (a catalog entry, a command line), so the
    message points the user to the place to fix.
    """
    allowed = field_names(cls)
    unknown = sorted(set(values) - set(allowed))
    if unknown:
        where = f" for {context}" if context else ""
        raise ConfigError(
            f"unknown key(s) {unknown}{where}; allowed keys are: {', '.join(allowed)}"
        )
    return cls(**dict(values))


def replace(config: T, overrides: Mapping[str, Any], context: str = "") -> T:
    """Return a copy of ``config`` with ``overrides`` applied, rejecting unknown keys."""
    merged = {**dataclasses.asdict(config), **overrides}
    return from_dict(type(config), merged, context)
