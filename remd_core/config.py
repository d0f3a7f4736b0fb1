"""Strict dataclass configs: unknown keys are an error, never a silent no-op. Settings given as text
(``KEY=VALUE`` on the command line) are parsed by the type of the field they name
(``parse_settings``), so ``lr=abc`` is an error naming ``lr`` and its type, not a string in a float."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Mapping, TypeVar

import yaml

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


# ---------------------------------------------------------------------------------------------------
# Typed KEY=VALUE settings (the command line's ``--train lr=0.01 modalities=fundus,oct``)

NULL_WORDS = ("none", "None", "null", "Null", "NULL", "~", "")
TRUE_WORDS = ("true", "yes", "on", "1")
FALSE_WORDS = ("false", "no", "off", "0")


def field_types(cls: type) -> dict[str, Any]:
    """The resolved type of every field of dataclass ``cls`` (string annotations evaluated)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(cls)}


def describe_type(kind) -> str:
    """``kind`` in words, for a message: ``a float``, ``an int or a string``, ``a comma-separated list of
    strings or none``."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        members = [a for a in args if a is not type(None)]
        text = " or ".join(describe_type(a) for a in members)
        return f"{text} or none" if type(None) in args else text
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (tuple, list):
        if origin is tuple and args and args[-1] is not Ellipsis:
            names = [_type_name(a) for a in args]
            if len(set(names)) == 1:
                return f"{len(args)} comma-separated {_plural(args[0])}"
            return f"{len(args)} comma-separated values ({', '.join(names)})"
        return f"a comma-separated list of {_plural(args[0]) if args else 'values'}"
    if kind is dict or origin is dict:
        return "a mapping like {key: value}"
    if kind is bool:
        return "true or false"
    if kind is str:
        return "a string"
    if dataclasses.is_dataclass(kind):
        return f"a mapping of {kind.__name__} keys like {{key: value}}"
    name = _type_name(kind)
    return f"an {name}" if name[:1] in "aeiou" else f"a {name}"


def _type_name(kind) -> str:
    return getattr(kind, "__name__", str(kind))


def _plural(kind) -> str:
    return {str: "strings", bool: "booleans"}.get(kind, f"{_type_name(kind)}s")


def parse_value(kind, text: str, key: str = "value"):
    """Command-line text ``text`` as a value of type ``kind`` (a field's resolved type). Raises
    ``ConfigError`` saying what ``key`` takes and what was given.

    ``int``, ``float`` (an integer stays an int, as a YAML file would give it), ``bool``
    (true/false, yes/no, on/off, 1/0), ``str`` (as written; quotes are removed), ``X | None`` (none or
    null is None), unions in the order int, float, bool, the others, str (``probe_every``: ``14`` or ``auto``),
    tuples and lists (``fundus,oct`` or ``[fundus, oct]``), ``dict`` and nested dataclasses (a YAML
    mapping, ``{alpha: 0.5}``), ``Literal``. A field without a usable type is read as a YAML scalar."""
    text = text.strip()
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        if type(None) in args and text in NULL_WORDS:
            return None
        members = sorted((a for a in args if a is not type(None)), key=_union_rank)
        for member in members:
            try:
                return parse_value(member, text, key)
            except ConfigError:
                continue
        raise _wrong(key, kind, text)
    if origin is typing.Literal:
        for option in args:
            try:
                value = parse_value(type(option), text, key)
            except ConfigError:
                continue
            if value == option:
                return option
        raise _wrong(key, kind, text)
    if kind is bool:
        if text.lower() in TRUE_WORDS:
            return True
        if text.lower() in FALSE_WORDS:
            return False
        raise _wrong(key, kind, text)
    if kind is int:
        try:
            return int(text)
        except ValueError:
            raise _wrong(key, kind, text) from None
    if kind is float:
        try:
            return int(text)
        except ValueError:
            pass
        try:
            return float(text)
        except ValueError:
            raise _wrong(key, kind, text) from None
    if kind is str:
        return _unquote(text)
    if origin in (tuple, list):
        items = _split_list(text)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(items) != len(args):
                raise _wrong(key, kind, text)
            kinds = list(args)
        else:
            kinds = [args[0] if args else Any] * len(items)
        try:
            values = [parse_value(k, item, key) for k, item in zip(kinds, items)]
        except ConfigError:
            raise _wrong(key, kind, text) from None
        return tuple(values) if origin is tuple else values
    if kind is dict or origin is dict or dataclasses.is_dataclass(kind):
        try:
            value = yaml.safe_load(text) if text else {}
        except yaml.YAMLError:
            raise _wrong(key, kind, text) from None
        if not isinstance(value, dict):
            raise _wrong(key, kind, text)
        if dataclasses.is_dataclass(kind):
            kinds = field_types(kind)
            value = {k: parse_value(kinds[k], v, f"{key}.{k}") if isinstance(v, str) and k in kinds else v
                     for k, v in value.items()}
            return from_dict(kind, value, context=key)
        return value
    if kind is Any or not isinstance(kind, type):
        return _yaml_scalar(text)
    try:
        return kind(text)
    except (TypeError, ValueError):
        raise _wrong(key, kind, text) from None


def _union_rank(kind) -> int:
    """Try the strict kinds first: ``14`` is an int before it is a string, ``1`` an int before a bool."""
    order = (int, float, bool)
    if kind in order:
        return order.index(kind)
    return 4 if kind is str else 3


def _wrong(key: str, kind, text: str) -> ConfigError:
    return ConfigError(f"{key} takes {describe_type(kind)}, got {text!r}")


def _unquote(text: str) -> str:
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    return text


def _split_list(text: str) -> list[str]:
    if len(text) >= 2 and (text[0], text[-1]) in (("[", "]"), ("(", ")")):
        text = text[1:-1]
    return [item.strip() for item in text.split(",")] if text.strip() else []


def _yaml_scalar(text: str):
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def split_assignment(item: str) -> tuple[str, str]:
    """``"lr=0.01"`` -> ``("lr", "0.01")``; anything without ``KEY=`` raises ``ConfigError``."""
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"expected KEY=VALUE, got {item!r}")
    return key.strip(), value


def parse_settings(cls: type, items: list[str], context: str = "") -> dict[str, Any]:
    """``["lr=0.01", "modalities=fundus,oct"]`` -> ``{"lr": 0.01, "modalities": ("fundus", "oct")}``:
    each value parsed by the type of the field of dataclass ``cls`` it names (``parse_value``). An
    unknown key raises ``ConfigError`` listing the allowed ones, as ``from_dict`` does; a value of the
    wrong kind raises ``ConfigError`` naming the key, its type and the text given."""
    kinds = field_types(cls)
    out = {}
    for item in items:
        key, text = split_assignment(item)
        if key not in kinds:
            where = f" for {context}" if context else ""
            raise ConfigError(f"unknown key {key!r}{where}; allowed keys are: {', '.join(kinds)}")
        out[key] = parse_value(kinds[key], text, key)
    return out
