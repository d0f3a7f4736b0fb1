"""Command line: ``remd list`` shows the catalog; ``remd compare`` runs experiment recipes
(``remd_core.recipes``) over several seeds on a catalog entry and writes one tidy results table
under ``outputs/<run>/``; ``remd baselines`` is ``compare`` with the unimodal and naive-fusion
recipes and one seed, plus a figure. Each finished (recipe, seed) cell is written at once, and a
rerun with the same ``--run`` skips finished cells, so an interrupted run loses no finished work."""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from dataclasses import asdict
from datetime import datetime

import yaml

from . import data
from .config import ConfigError, from_dict
from .experiments.compare import compare
from .experiments.results import summarize
from .workbench.figures import compare_figure
from .models import EncoderConfig
from .paths import display_path, outputs_dir
from .experiments.provenance import write as write_provenance
from .experiments.recipes import FUSION_RECIPES
from .trainer import TrainConfig

BASELINE_RECIPES = ("unimodal-fundus", "unimodal-oct", "naive-fusion")


def parse_assignments(items: list[str]) -> dict:
    """``["n_eyes=100", "distribution=inhouse"]`` -> typed dict (values parsed as YAML scalars)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"expected key=value, got {item!r}")
        out[key.strip()] = yaml.safe_load(value)
    return out


def cmd_list(_args) -> int:
    for name, e in data.read_catalog().items():
        print(f"{name:22s} {e.loader:12s} {e.description}")
    return 0


def cmd_compare(args) -> int:
    dataset = data.load(args.dataset, **parse_assignments(args.data))
    recipes = args.recipes.split(",") if args.recipes else None
    seeds = [int(s) for s in args.seeds.split(",")]
    if args.resume and not args.run:
        raise SystemExit(f"remd {args.command}: --resume needs the run to continue (--run NAME)")
    run = args.run or f"{args.command}-{dataset.name}-{datetime.now():%Y%m%d-%H%M%S}"
    folder = outputs_dir() / run
    if args.resume and not (folder / "cells").is_dir() and not (folder / "checkpoints").is_dir():
        raise SystemExit(f"remd {args.command}: nothing to resume in {display_path(folder)}")
    folder.mkdir(parents=True, exist_ok=True)
    args.resume_command = resume_command(args, run)
    base = from_dict(TrainConfig, {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
                                   "encoder": from_dict(EncoderConfig, parse_assignments(args.encoder),
                                                        context="--encoder"),
                                   **parse_assignments(args.train)}, context="--train")
    print(f"data set {dataset.name}: " + ", ".join(f"{k} {len(v)}" for k, v in dataset.splits.items()))
    write_provenance(folder, {"command": sys.argv, "dataset": dataset.name, "data_config": asdict(dataset.config),
                              "train_config": asdict(base), "seeds": seeds})
    start = time.perf_counter()
    results = compare(dataset, recipes, seeds, base, folder, progress=not args.quiet,
                      checkpoint_every=args.checkpoint_every)
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
    from .workbench.runner import run_notebooks

    names = args.notebooks.split(",") if args.notebooks else None
    args.run = args.run or f"notebooks-{args.profile}-{datetime.now():%Y%m%d-%H%M%S}"
    args.resume_command = resume_command(args, args.run)
    try:
        folder = run_notebooks(args.profile, args.run, names, parse_assignments(args.set), resume=args.resume)
    except ConfigError as err:  # found before any notebook ran
        print(f"remd run: {err}", file=sys.stderr)
        return 2
    print(f"executed notebooks, figures and results: {folder}")
    return 0


def cmd_sweep(args) -> int:
    from .workbench.sweep import SweepError, group_summaries, load_grid, run_sweep, select_groups

    start = time.perf_counter()
    failure = None
    try:
        grid = load_grid(args.grid)
        seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else None
        groups = args.groups.split(",") if args.groups else None
        folder = outputs_dir() / (args.run or f"sweep-{grid.name}")
        args.resume_command = resume_command(args, folder.name, flag=False)
        tls = {k: v for k, v in (("ca", args.tls_ca), ("cert", args.tls_cert), ("key", args.tls_key)) if v}
        table = run_sweep(grid, folder, args.profile, seeds, groups, parse_assignments(args.set), args.workers,
                          scheduler=args.scheduler, slurm=args.slurm, tls=tls or None, notebooks=args.notebooks)
    except SweepError as err:
        table, failure = err.table, err
    except ConfigError as err:  # a mistake in the grid or the command, found before anything ran
        print(f"remd sweep: {err}", file=sys.stderr)
        return 2
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="remd", description=__doc__.split("\n")[0])
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
        b.add_argument("--epochs", type=int, default=30)
        b.add_argument("--batch-size", type=int, default=16)
        b.add_argument("--lr", type=float, default=1e-3)
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
    except KeyboardInterrupt:  # Ctrl-C: every file written so far is whole (remd_core.files)
        print(f"\nremd {args.command}: interrupted. Finished work and the last checkpoints are kept"
              + (f"; continue with:\n  {args.resume_command}" if args.resume_command else "."), file=sys.stderr,
              flush=True)
        return 130
