"""Command line: ``remd list`` shows the catalog; ``remd compare`` runs experiment recipes
(``remd_core.recipes``) over several seeds on a catalog entry and writes one tidy results table
under ``outputs/<run>/``; ``remd baselines`` is ``compare`` with the unimodal and naive-fusion
recipes and one seed, plus a figure. Each finished (recipe, seed) cell is written at once, and a
rerun with the same ``--run`` skips finished cells, so an interrupted run loses no finished work.
``remd board RUN`` starts TensorBoard on 127.0.0.1 over a run or sweep folder's training scalars.

A mistake on the command line (an unknown key, recipe, profile or notebook, a value of the wrong
kind, a data set that cannot be built) is found before any folder is made and printed as one line,
``remd <command>: error: <argument as given>: <what is wrong and what is allowed>``, with status 2.
``KEY=VALUE`` settings are typed by the dataclass field they name (``config.parse_settings``)."""

from __future__ import annotations

import argparse
import importlib
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict
from datetime import datetime
from pathlib import Path

import yaml

from . import data
from .config import ConfigError, field_types, from_dict, parse_settings, parse_value, split_assignment
from .experiments.compare import compare
from .experiments.results import summarize
from .workbench.figures import compare_figure
from .models import EncoderConfig
from .paths import display_path, outputs_dir
from .experiments.provenance import write as write_provenance
from .experiments.recipes import FUSION_RECIPES
from .training import TrainConfig

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
    from .data.catalog import LOADERS
    from .data.splits import split_sizes

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
    from .experiments.recipes import recipe

    for name in recipes or []:
        with blame(f"{option} {text}"):
            r = recipe(name)
        has = dataset.spec.modality_names if dataset is not None else ()
        if dataset is not None and r.modality and r.modality not in has:
            raise UsageError(f"{option} {text}", f"recipe {name!r} trains on modality {r.modality!r}, which data set "
                                                 f"{dataset.name!r} lacks; it has {', '.join(has)}")


def library_classes() -> dict:
    from .data.synthetic import Config as SyntheticConfig
    from .optim.sgm import SGMConfig

    return {"train": TrainConfig, "sgm": SGMConfig, "data": SyntheticConfig}


def notebook_settings(items: list[str]) -> dict:
    """``--set NAME=VALUE`` of ``run`` and ``sweep``: a library setting (``profiles.LIBRARY_SETTINGS``)
    typed by its config field (a YAML null: the library default), any other notebook parameter read as a
    YAML scalar; then the library settings are built into their configs, so a value a config rejects
    is named here, before anything runs."""
    from .workbench.runner import LIBRARY_SETTINGS

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
    from .workbench.runner import resolve_parameters

    placeholder = Path("RUN_DIR")  # resolve_parameters only records it
    with blame(f"--profile {profile}"):
        resolve_parameters(notebook, profile, {}, placeholder)
    with blame(naming(assignment_candidates("--set", items), "--set")):
        resolve_parameters(notebook, profile, overrides, placeholder)


# ---------------------------------------------------------------------------------------------------
# Commands

def cmd_list(_args) -> int:
    with blame("catalog"):
        catalog = data.read_catalog()
    for name, e in catalog.items():
        print(f"{name:22s} {e.loader:12s} {e.description}")
    return 0


def cmd_compare(args) -> int:
    # every check and every config before a folder is made: a mistake leaves nothing behind
    seeds = parse_seeds(args.seeds)
    if args.resume and not args.run:
        raise UsageError("--resume", "needs the run to continue (--run NAME)")
    recipes = [r.strip() for r in args.recipes.split(",")] if args.recipes else None
    check_recipes("--recipes", args.recipes, recipes)
    base = train_config(args)
    dataset = load_dataset(args)
    check_recipes("--recipes", args.recipes, recipes, dataset)
    lacking = sorted(set(base.modalities or ()) - set(dataset.spec.modality_names))
    if lacking:
        raise UsageError(naming(assignment_candidates("--train", args.train), "--train")("modalities"),
                         f"data set {dataset.name!r} has no modality {lacking}; it has "
                         f"{', '.join(dataset.spec.modality_names)}")
    run = args.run or f"{args.command}-{dataset.name}-{datetime.now():%Y%m%d-%H%M%S}"
    folder = outputs_dir() / run
    if args.resume and not (folder / "cells").is_dir() and not (folder / "checkpoints").is_dir():
        raise UsageError(f"--resume --run {run}", f"nothing to resume in {display_path(folder)}")
    folder.mkdir(parents=True, exist_ok=True)
    args.resume_command = resume_command(args, run)
    print(f"data set {dataset.name}: " + ", ".join(f"{k} {len(v)}" for k, v in dataset.splits.items()))
    write_provenance(folder, {"command": sys.argv, "dataset": dataset.name, "data_config": asdict(dataset.config),
                              "train_config": asdict(base), "seeds": seeds})
    start = time.perf_counter()
    try:
        results = compare(dataset, recipes, seeds, base, folder, progress=not args.quiet,
                          checkpoint_every=args.checkpoint_every)
    except ConfigError as err:  # before any cell ran (a failed cell raises RuntimeError): stale cells in --run
        raise UsageError(f"--run {run}", err) from None
    summary = summarize(results)
    columns = [c for c in ("seeds", "test_r2_mean", "test_r2_std", "test_mse_mean", "test_mse_std", "test_mae_mean",
                           "test_mae_std", "few_mse_mean") if c in summary]
    print(summary[columns].round(3).to_string())
    figure = compare_figure(results, dataset.test.y.numpy(), dataset.train.y.numpy(),
                            f"{dataset.name}: {args.epochs} epochs, {base.encoder.arch} width {base.encoder.width}",
                            folder / "test_r2.png")
    print(f"wall time {time.perf_counter() - start:.0f} s")
    print(f"results: {folder}\n  results.csv (per seed), summary.csv (mean and SD), {figure.name}, cells/, "
          "provenance.json")
    return 0


def cmd_run(args) -> int:
    from .workbench.runner import ordered_notebooks, run_notebooks

    names = [n.strip() for n in args.notebooks.split(",")] if args.notebooks else None
    # every check before run_notebooks makes the run folder
    if args.resume and not args.run:
        raise UsageError("--resume", "needs the run to continue (--run NAME)")
    overrides = notebook_settings(args.set)
    notebooks = ordered_notebooks()
    if names:
        chosen = [p for p in notebooks if p.stem in names or p.stem.split("_", 1)[0] in names]
        missing = sorted(set(names) - {p.stem for p in chosen} - {p.stem.split("_", 1)[0] for p in chosen})
        if missing:
            raise UsageError(f"--notebooks {args.notebooks}",
                             f"no notebook named {missing}; there are {[p.stem for p in notebooks]}")
        notebooks = chosen
    for path in notebooks:
        check_notebook_parameters(path, args.profile, overrides, args.set)
    args.run = args.run or f"notebooks-{args.profile}-{datetime.now():%Y%m%d-%H%M%S}"
    args.resume_command = resume_command(args, args.run)
    try:
        folder = run_notebooks(args.profile, args.run, names, overrides, resume=args.resume)
    except ConfigError as err:  # found before any notebook ran: a --resume of another run's settings
        raise UsageError(f"--resume --run {args.run}" if args.resume else "", err) from None
    print(f"executed notebooks, figures and results: {folder}")
    return 0


def cmd_sweep(args) -> int:
    from .experiments.executors import slurm_profile, tls_security
    from .workbench.sweep import SweepError, group_summaries, load_grid, run_sweep, select_groups

    start = time.perf_counter()
    failure = None
    # every check of the command line before run_sweep (which checks the grid's cells itself)
    with blame(f"grid {args.grid}"):
        grid = load_grid(args.grid)
    seeds = parse_seeds(args.seeds) if args.seeds else None
    groups = [g.strip() for g in args.groups.split(",")] if args.groups else None
    if groups:
        with blame(f"--groups {args.groups}"):
            select_groups(grid, groups)
    overrides = notebook_settings(args.set)
    check_notebook_parameters(grid.notebook, args.profile, overrides, args.set)
    if args.workers is not None and args.workers < 1:
        raise UsageError(f"--workers {args.workers}", "workers must be >= 1")
    if args.scheduler and args.slurm:
        raise UsageError(f"--scheduler {args.scheduler} --slurm {args.slurm}",
                         "give a scheduler address or a Slurm profile, not both")
    if args.slurm:
        with blame(f"--slurm {args.slurm}"):
            slurm_profile(args.slurm)
    tls = {k: v for k, v in (("ca", args.tls_ca), ("cert", args.tls_cert), ("key", args.tls_key)) if v}
    if tls:
        with blame(" ".join(f"--tls-{k} {v}" for k, v in tls.items())):
            tls_security(tls)
    folder = outputs_dir() / (args.run or f"sweep-{grid.name}")
    args.resume_command = resume_command(args, folder.name, flag=False)
    try:
        table = run_sweep(grid, folder, args.profile, seeds, groups, overrides, args.workers,
                          scheduler=args.scheduler, slurm=args.slurm, tls=tls or None, notebooks=args.notebooks)
    except SweepError as err:
        table, failure = err.table, err
    except ConfigError as err:  # a mistake in the grid or the command, found before any cell ran
        raise UsageError(naming(assignment_candidates("--set", args.set), "")(str(err)), err) from None
    columns = ["seeds", "test_r2_mean", "test_r2_std", "test_mse_mean", "test_mse_std", "test_mae_mean",
               "test_mae_std", "few_mse_mean"]
    shown = table[table["seed"].isin(seeds)] if seeds and not table.empty else table
    for name, summary in group_summaries(shown, select_groups(grid, groups)).items():
        about = grid.groups[name].description or "sub-grid"
        print(f"\n{name} ({about}): mean and SD over seeds, profile {args.profile}")
        print(summary[[c for c in columns if c in summary]].round(3).to_string())
    print(f"\nwall time {time.perf_counter() - start:.0f} s")
    print(f"results: {folder}\n  results.csv and results.parquet (one row per cell and model), grid.yaml, "
          "provenance.json, cells/<key>/ (results, curves, error.txt if it failed; the executed notebook with --notebooks)")
    if failure:
        print(f"\n{failure}", file=sys.stderr)
        return 1
    return 0


BOARD_PORT = 6006
"""TensorBoard's usual port; ``remd board`` takes a free one when it is in use."""


def board_folder(run: str) -> Path:
    """The folder ``remd board RUN`` shows: ``RUN`` as a path to a folder, else the folder of that
    name under outputs/, else the newest folder under outputs/ whose name starts with ``RUN``."""
    given = Path(run).expanduser()
    if given.is_dir():
        return given
    root = outputs_dir()
    if (root / run).is_dir():
        return root / run
    matches = sorted((d for d in root.iterdir() if d.is_dir() and d.name.startswith(run)),
                     key=lambda d: d.stat().st_mtime, reverse=True)
    if matches:
        if len(matches) > 1:
            print(f"{len(matches)} runs start with {run!r}; showing the newest, {matches[0].name} (the others: "
                  f"{', '.join(d.name for d in matches[1:6])}{' ...' if len(matches) > 6 else ''})")
        return matches[0]
    recent = sorted((d for d in root.iterdir() if d.is_dir() and d.name != "cache"),
                    key=lambda d: d.stat().st_mtime, reverse=True)[:5]
    raise UsageError(run, f"no run folder {run!r} under {display_path(root)}"
                     + (f"; the newest: {', '.join(d.name for d in recent)}" if recent else ""))


def free_port(preferred: int) -> int:
    """``preferred`` when nothing listens on it at 127.0.0.1, else a port the system hands out."""
    for port in (preferred, 0):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return probe.getsockname()[1]
    raise OSError("no free port on 127.0.0.1")


def cmd_board(args) -> int:
    from importlib.util import find_spec

    folder = board_folder(args.run)
    runs = sorted({p.parent for p in folder.rglob("events.out.tfevents.*")})
    if not runs:
        raise UsageError(args.run, f"{display_path(folder)} holds no TensorBoard event files (fits "
                         "write them to a tensorboard/ folder of their run; runs from before that wrote none)")
    if find_spec("tensorboard") is None:
        raise UsageError("board", "TensorBoard is not installed in this environment: pip install tensorboard")
    port = args.port if args.port is not None else free_port(BOARD_PORT)
    command = [sys.executable, "-m", "tensorboard.main", "--logdir", str(folder), "--host", "127.0.0.1",
               "--port", str(port)]
    print(f"TensorBoard over {display_path(folder)} ({len(runs)} run(s) with scalars): http://127.0.0.1:{port}/"
          "  (Ctrl-C stops it)", flush=True)
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL if args.quiet else None,
                              stderr=subprocess.DEVNULL if args.quiet else None)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a terminated `remd board` stops its server too
    try:
        return server.wait()
    except KeyboardInterrupt:  # Ctrl-C reaches TensorBoard too
        print("TensorBoard stopped", flush=True)
        return 0
    finally:
        if server.poll() is None:
            server.terminate()
        server.wait()


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="remd", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list the data catalog").set_defaults(func=cmd_list)
    for command, recipes, seeds, text in (
            ("compare", None, "0,1,2", "run recipes over seeds and write one results table"),
            ("baselines", ",".join(BASELINE_RECIPES), "0", "unimodal and naive-fusion baselines (one seed)")):
        b = sub.add_parser(command, help=text)
        b.add_argument("--dataset", default=None, help="catalog entry (default: the catalog's default)")
        b.add_argument("--data", nargs="*", default=[], metavar="KEY=VALUE", help="data set overrides")
        b.add_argument("--recipes", default=recipes,
                       help=f"comma-separated recipes (default: all); known: unimodal-<modality>, {', '.join(FUSION_RECIPES)}")
        b.add_argument("--seeds", default=seeds, help="comma-separated training seeds")
        b.add_argument("--encoder", nargs="*", default=[], metavar="KEY=VALUE",
                       help="encoder settings (arch, width, stem, bscan_pool, mlp_hidden)")
        b.add_argument("--train", nargs="*", default=[], metavar="KEY=VALUE",
                       help="other TrainConfig settings (optimizer, regression_loss, margin_m0, device, ...)")
        for key, (flag, default) in TRAIN_FLAGS.items():
            b.add_argument(flag, type=type(default), default=default)
        b.add_argument("--run", default=None, help="run folder name under outputs/ (reuse it to resume)")
        b.add_argument("--resume", action="store_true",
                       help="continue the run named by --run: finished cells are kept, the others resume from their "
                            "checkpoints")
        b.add_argument("--checkpoint-every", type=int, default=0, metavar="N",
                       help="also checkpoint every N steps (default: at epoch ends only)")
        b.add_argument("--quiet", action="store_true", help="no progress bars")
        b.set_defaults(func=cmd_compare)
    r = sub.add_parser("run", help="execute the ordered notebooks headlessly with papermill")
    r.add_argument("--profile", default="cpu", help="smoke (CI), cpu (this machine) or gpu (the paper's scale)")
    r.add_argument("--notebooks", default=None, help="comma-separated names or numbers (default: all, in order)")
    r.add_argument("--set", nargs="*", default=[], metavar="NAME=VALUE", help="notebook parameter overrides")
    r.add_argument("--run", default=None, help="run folder name under outputs/")
    r.add_argument("--resume", action="store_true",
                   help="continue the run named by --run: skip the notebooks it executed, run the others")
    r.set_defaults(func=cmd_run)
    w = sub.add_parser("sweep", help="run a grid of notebook cells (recipes x seeds x parameters), collect one table")
    w.add_argument("grid", help="grid file (sweeps/paper.yaml) or the name of one in sweeps/")
    w.add_argument("--profile", default="cpu", help="smoke (CI), cpu (this machine) or gpu (the paper's scale)")
    w.add_argument("--seeds", default=None,
                   help="comma-separated training seeds of every sub-grid (default: the grid's)")
    w.add_argument("--groups", default=None,
                   help="comma-separated sub-grids; a name also selects NAME_* (default: all)")
    w.add_argument("--set", nargs="*", default=[], metavar="NAME=VALUE", help="notebook parameters for every cell")
    w.add_argument("--workers", type=int, default=None,
                   help="worker processes of the embedded local Dask cluster (default: the CPU count)")
    w.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="run the cells on the existing Dask cluster at ADDRESS (tls://host:8786); default: "
                        "$REMD_SCHEDULER, else a local cluster this command starts and closes")
    w.add_argument("--slurm", default=None, metavar="PROFILE",
                   help="run the cells on a Slurm cluster: a profile in clusters/ (gpu) or a YAML file")
    for name, what in (("ca", "certificate authority"), ("cert", "client certificate"), ("key", "client key")):
        w.add_argument(f"--tls-{name}", default=None, metavar="FILE",
                       help=f"TLS {what} for --scheduler (default: $REMD_TLS_{name.upper()})")
    w.add_argument("--run", default=None, help="run folder under outputs/ (default: sweep-<grid name>); rerun: resume")
    w.add_argument("--notebooks", action="store_true",
                   help="execute the cell notebook for every cell (an executed notebook in each cell's folder); "
                        "default: its steps as a function in a warm worker process, the same results files")
    w.set_defaults(func=cmd_sweep)
    t = sub.add_parser("board", help="start TensorBoard on 127.0.0.1 over a run's or a sweep's training scalars")
    t.add_argument("run", help="run or sweep folder: its name under outputs/ (or the start of it: the newest "
                               "match), or a path")
    t.add_argument("--port", type=int, default=None,
                   help=f"port to serve on (default: {BOARD_PORT}, or a free one when that is in use)")
    t.add_argument("--quiet", action="store_true", help="hide TensorBoard's own output")
    t.set_defaults(func=cmd_board)
    return parser


def resume_command(args, run: str, flag: bool = True) -> str:
    """The command line that continues this one: the same arguments, ``--run`` naming its folder
    and (for compare and run) ``--resume``."""
    argv = list(args.argv)
    if "--run" in argv:
        del argv[argv.index("--run"):argv.index("--run") + 2]
    argv = [a for a in argv if a != "--resume" and not a.startswith("--run=")]
    return shlex.join(["remd", *argv, "--run", run, *(["--resume"] if flag else [])])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv, args.resume_command = argv, None
    try:
        return args.func(args)
    except UsageError as err:  # found before anything was written
        print(f"remd {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: every file written so far is whole (remd_core.files)
        print(f"\nremd {args.command}: interrupted. Finished work and the last checkpoints are kept"
              + (f"; continue with:\n  {args.resume_command}" if args.resume_command else "."), file=sys.stderr,
              flush=True)
        return 130
