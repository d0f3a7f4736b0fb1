"""How the command line checks what it is given before anything is written: the one-line ``UsageError``, typed
``KEY=VALUE`` settings, the training and data settings of ``compare``, recipes, notebook parameters."""

from __future__ import annotations

import argparse
import importlib
import re
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import yaml

from .. import data
from ..config import ConfigError, field_types, from_dict, parse_settings, parse_value, split_assignment
from ..models import EncoderConfig
from ..training import TrainConfig


BASELINE_RECIPES = ("unimodal-fundus", "unimodal-oct", "naive-fusion")
TRAIN_FLAGS = {"epochs": ("--epochs", 30), "batch_size": ("--batch-size", 16), "lr": ("--lr", 1e-3)}
"""``compare``'s own training options: TrainConfig field -> (option, default)."""
YAML_NULLS = ("null", "Null", "NULL", "~", "")
SYNTHETIC_MINIMUMS = {"n_eyes": 1, "image_size": 8, "oct_size": 8, "n_bscans": 1}
"""What ``data.synthetic.generate`` needs; checked here, before its cache file is opened."""


# ---------------------------------------------------------------------------------------------------
# Mistakes on the command line: one line on stderr, status 2, nothing written

class UsageError(Exception):
    """A mistake on the command line, found before any folder was made: ``main`` prints
    ``remd <command>: error: <argument>: <message>`` as one line on stderr and returns 2."""

    def __init__(self, argument: str, message):
        message = one_line(message)
        given = argument.split(" ", 1)[-1]
        if message.startswith(f"{given}: "):  # the library named the file too: say it once
            message = message[len(given) + 2:]
        self.argument, self.message = argument, message
        super().__init__(f"{argument}: {message}" if argument else message)


class Parser(argparse.ArgumentParser):
    """argparse, with its own mistakes (an unknown option, a missing value) on one line, no usage block."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {one_line(message)} (see {self.prog} --help)\n")


SETTING_ERRORS = (ConfigError, ValueError, TypeError, KeyError, OSError, yaml.YAMLError)
"""What the library raises about settings it is given (``ConfigError``, a config's ``ValueError``,
``data.CatalogError`` (a ``KeyError``), ``data.DataError`` (a ``ValueError``), a missing file, a
malformed YAML file). Caught only while configs are built, never around training."""


def one_line(error) -> str:
    """A message on one line: its non-empty lines joined with '; '; a YAML syntax error as what is
    wrong and where."""
    if isinstance(error, yaml.MarkedYAMLError) and error.problem:
        mark = error.problem_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        return f"not valid YAML: {error.problem}{where}"
    return "; ".join(line.strip() for line in str(error).splitlines() if line.strip())


@contextmanager
def blame(argument: str | Callable[[str], str]):
    """Inside, a library error about settings (``SETTING_ERRORS``) becomes a ``UsageError`` naming
    ``argument`` (or ``argument(message)``: which argument the message is about)."""
    try:
        yield
    except UsageError:
        raise
    except SETTING_ERRORS as err:
        message = one_line(err)
        raise UsageError(argument(message) if callable(argument) else argument, err) from None


def naming(candidates: list[tuple[str, str, str]], fallback: str, keys: tuple[str, ...] = ()) -> Callable[[str], str]:
    """The argument an error message is about. ``candidates`` are ``(option, text, key)`` as given
    (``("--train", "lr=0", "lr")``, ``("--epochs", "0", "epochs")``): those whose key the message
    names (or that are in ``keys``); none named: all of them; none given: ``fallback``."""

    def argument(message: str) -> str:
        named = [c for c in candidates if c[2] in keys or re.search(rf"(?<!\w){re.escape(c[2])}(?!\w)", message)]
        parts = []
        for option, text, _ in named or candidates:
            if parts and parts[-1][0] == option:
                parts[-1][1].append(text)
            else:
                parts.append((option, [text]))
        return " ".join(f"{option} {' '.join(texts)}" for option, texts in parts) or fallback

    return argument


def assignment_candidates(option: str, items: list[str]) -> list[tuple[str, str, str]]:
    return [(option, item, item.partition("=")[0].strip()) for item in items]


def parse_items(option: str, cls: type, items: list[str], context: str) -> dict:
    """``--train lr=0.01 ...`` -> ``{"lr": 0.01}``, each value typed by ``cls``'s field
    (``config.parse_settings``); a bad item is a ``UsageError`` naming it."""
    values = {}
    for item in items:
        with blame(f"{option} {item}"):
            values.update(parse_settings(cls, [item], context=context))
    return values


def parse_seeds(text: str, option: str = "--seeds") -> list[int]:
    with blame(f"{option} {text}"):
        seeds = list(parse_value(tuple[int, ...], text, "seeds"))
        if not seeds:
            raise ConfigError("seeds takes at least one seed")
    return seeds


def train_config(args) -> TrainConfig:
    """The base ``TrainConfig`` of ``compare`` from ``--epochs``, ``--batch-size``, ``--lr``,
    ``--encoder`` and ``--train`` (the last wins), every value typed by its field."""
    encoder = parse_items("--encoder", EncoderConfig, args.encoder, "--encoder")
    train = parse_items("--train", TrainConfig, args.train, "--train")
    given = assignment_candidates("--encoder", args.encoder)
    with blame(naming(given, "--encoder")):
        encoder_config = from_dict(EncoderConfig, encoder, context="--encoder")
    given += [(flag, str(getattr(args, key)), key) for key, (flag, default) in TRAIN_FLAGS.items()
              if getattr(args, key) != default]
    given += assignment_candidates("--train", args.train)
    with blame(naming(given, "--train")):
        return from_dict(TrainConfig, {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
                                       "encoder": encoder_config, **train}, context="--train")


def load_dataset(args) -> data.MultimodalDataset:
    """``--dataset`` with ``--data`` overrides, each typed by the loader config's field; the loader's
    config and the split sizes are checked before anything is generated, read or cached."""
    from ..data.catalog import LOADERS
    from ..data.splits import split_sizes

    with blame(f"--dataset {args.dataset}" if args.dataset else "catalog"):
        name = args.dataset or data.default_name()
        entry = data.entry(name)
    loader = importlib.import_module(LOADERS[entry.loader])
    overrides = parse_items("--data", loader.Config, args.data, f"data set {name!r}")
    given = assignment_candidates("--data", args.data)
    with blame(naming(given, f"--dataset {name}")):
        config = data.loader_config(name, **overrides)
    if entry.loader == "synthetic":
        with blame(naming(given, f"--dataset {name}", keys=(*SYNTHETIC_MINIMUMS, "test", "val"))):
            small = {k: getattr(config, k) for k, least in SYNTHETIC_MINIMUMS.items() if getattr(config, k) < least}
            if small:
                raise ConfigError("synthetic data needs n_eyes >= 1, image_size and oct_size >= 8 and n_bscans >= 1; "
                                  "got " + ", ".join(f"{k}={v}" for k, v in small.items()))
            split_sizes(config.n_eyes, config.test, config.val)
    with blame(naming(given, f"--dataset {name}")):
        return data.load(name, **overrides)


def check_recipes(option: str, text: str | None, recipes: list[str] | None, dataset=None) -> None:
    """Every recipe name is known and, given the data set, trains on modalities it has."""
    from ..experiments.recipes import recipe

    for name in recipes or []:
        with blame(f"{option} {text}"):
            r = recipe(name)
        has = dataset.spec.modality_names if dataset is not None else ()
        if dataset is not None and r.modality and r.modality not in has:
            raise UsageError(f"{option} {text}", f"recipe {name!r} trains on modality {r.modality!r}, which data set "
                                                 f"{dataset.name!r} lacks; it has {', '.join(has)}")


def library_classes() -> dict:
    from ..data.synthetic import Config as SyntheticConfig
    from ..optim.sgm import SGMConfig

    return {"train": TrainConfig, "sgm": SGMConfig, "data": SyntheticConfig}


def notebook_settings(items: list[str]) -> dict:
    """``--set NAME=VALUE`` of ``run`` and ``sweep``: a library setting (``profiles.LIBRARY_SETTINGS``)
    typed by its config field (a YAML null: the library default), any other notebook parameter read as a
    YAML scalar; then the library settings are built into their configs, so a value a config rejects
    is named here, before anything runs."""
    from ..workbench.profiles import LIBRARY_SETTINGS

    classes = library_classes()
    kinds = {name: field_types(classes[config])[field] for name, (config, field) in LIBRARY_SETTINGS.items()}
    values, fields = {}, {}
    for item in items:
        with blame(f"--set {item}"):
            name, text = split_assignment(item)
            if name in kinds:  # a YAML null (null, ~, nothing) asks for the library default, as before
                values[name] = None if text.strip() in YAML_NULLS else parse_value(kinds[name], text, name)
                fields[name] = (item, LIBRARY_SETTINGS[name])
            else:
                values[name] = yaml.safe_load(text)
    for config, cls in classes.items():
        given = {name: (item, field) for name, (item, (c, field)) in fields.items()
                 if c == config and values[name] is not None}
        if given:
            with blame(naming([("--set", item, field) for item, field in given.values()], "--set")):
                from_dict(cls, {field: values[name] for name, (_, field) in given.items()}, context="--set")
    return values


def check_notebook_parameters(notebook: Path, profile: str, overrides: dict, items: list[str]) -> None:
    """``--profile`` is a known profile and every ``--set`` name a parameter ``notebook`` declares."""
    from ..workbench.runner import resolve_parameters

    placeholder = Path("RUN_DIR")  # resolve_parameters only records it
    with blame(f"--profile {profile}"):
        resolve_parameters(notebook, profile, {}, placeholder)
    with blame(naming(assignment_candidates("--set", items), "--set")):
        resolve_parameters(notebook, profile, overrides, placeholder)
