"""The subcommands ``list``, ``compare`` (and ``baselines``), ``run`` and ``sweep``."""

from __future__ import annotations

import shlex
import sys
import time
from dataclasses import asdict
from datetime import datetime

from .. import data
from ..config import ConfigError
from ..experiments.compare import compare
from ..experiments.provenance import write as write_provenance
from ..experiments.results import summarize
from ..paths import display_path, outputs_dir
from ..workbench.figures import compare_figure
from .checks import UsageError, assignment_candidates, blame, check_notebook_parameters, check_recipes, load_dataset, naming, notebook_settings, parse_seeds, train_config


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
    from ..workbench.runner import ordered_notebooks, run_notebooks

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
    from ..experiments.executors import slurm_profile, tls_security
    from ..workbench.sweep import SweepError, group_summaries, load_grid, run_sweep, select_groups

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


def resume_command(args, run: str, flag: bool = True) -> str:
    """The command line that continues this one: the same arguments, ``--run`` naming its folder
    and (for compare and run) ``--resume``."""
    argv = list(args.argv)
    if "--run" in argv:
        del argv[argv.index("--run"):argv.index("--run") + 2]
    argv = [a for a in argv if a != "--resume" and not a.startswith("--run=")]
    return shlex.join(["remd", *argv, "--run", run, *(["--resume"] if flag else [])])
