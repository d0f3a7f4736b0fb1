"""Command line: ``remd list`` shows the catalog; ``remd baselines`` trains the unimodal and
naive-fusion baselines on a catalog entry and writes metrics, predictions and a figure under
``outputs/<run>/``. A finished model's results are written as soon as it finishes, and a rerun with
the same ``--run`` skips the models already done, so an interrupted run loses no finished work."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from datetime import datetime
from pathlib import Path

import pandas as pd
import yaml

from . import data
from .config import from_dict
from .figures import baselines_figure
from .models import EncoderConfig
from .paths import outputs_dir
from .provenance import write as write_provenance
from .train import TrainConfig, fit

DEFAULT_MODELS = ("fundus", "oct", "fundus+oct")


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


def cmd_baselines(args) -> int:
    dataset = data.load(args.dataset, **parse_assignments(args.data))
    run = args.run or f"baselines-{dataset.name}-{datetime.now():%Y%m%d-%H%M%S}"
    folder = outputs_dir() / run
    (folder / "models").mkdir(parents=True, exist_ok=True)
    encoder = from_dict(EncoderConfig, parse_assignments(args.encoder), context="--encoder")
    print(f"data set {dataset.name}: " + ", ".join(f"{k} {len(v)}" for k, v in dataset.splits.items()))
    write_provenance(folder, {"command": sys.argv, "dataset": dataset.name, "data_config": asdict(dataset.config)})

    for model in args.models.split(","):
        done = folder / "models" / f"{model}.json"
        if done.exists():
            print(f"{model}: already done in {done.parent}, skipped")
            continue
        modalities = tuple(model.split("+"))
        config = TrainConfig(modalities=modalities, epochs=args.epochs, seed=args.seed, encoder=encoder,
                             batch_size=args.batch_size, lr=args.lr)
        result = fit(dataset, config, progress=not args.quiet)
        test_pred = result.predictions["test"]
        test = dataset.test
        pd.DataFrame({"model": model, "id": test.ids, "y": test.y.numpy(), "prediction": test_pred}).to_csv(
            folder / "models" / f"{model}.predictions.csv", index=False)
        result.history.assign(model=model).to_csv(folder / "models" / f"{model}.history.csv", index=False)
        summary = {"model": model, **result.summary(), "train_config": asdict(config)}
        tmp = done.with_suffix(".tmp")
        tmp.write_text(json.dumps(summary, indent=2, default=str))
        tmp.replace(done)
        print(f"{model}: test R2 {summary['test_r2']:.3f}  MSE {summary['test_mse']:.2f}  "
              f"MAE {summary['test_mae']:.2f} dB  (best epoch {result.best_epoch}, {result.seconds:.0f} s)")

    summaries = [json.loads((folder / "models" / f"{m}.json").read_text()) for m in args.models.split(",")]
    metrics = pd.DataFrame([{k: v for k, v in s.items() if k != "train_config"} for s in summaries])
    metrics.to_csv(folder / "metrics.csv", index=False)
    predictions = pd.concat([pd.read_csv(folder / "models" / f"{m}.predictions.csv") for m in args.models.split(",")])
    predictions.to_csv(folder / "predictions.csv", index=False)
    figure = baselines_figure(metrics, predictions, dataset.train.y.numpy(),
                              f"{dataset.name}: unimodal vs naive fusion ({args.epochs} epochs, seed {args.seed})",
                              folder / "baselines.png")
    print(metrics[["model", "test_r2", "test_mse", "test_mae", "test_stage_score"]].to_string(index=False))
    print(f"results: {folder}\n  metrics.csv, predictions.csv, {figure.name}, provenance.json")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="remd", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list the data catalog").set_defaults(func=cmd_list)
    b = sub.add_parser("baselines", help="train unimodal and naive-fusion baselines")
    b.add_argument("--dataset", default=None, help="catalog entry (default: the catalog's default)")
    b.add_argument("--data", nargs="*", default=[], metavar="KEY=VALUE", help="data set overrides")
    b.add_argument("--encoder", nargs="*", default=[], metavar="KEY=VALUE",
                   help="encoder settings (arch, width, stem, bscan_pool, mlp_hidden)")
    b.add_argument("--models", default=",".join(DEFAULT_MODELS), help="comma-separated, '+' joins modalities")
    b.add_argument("--epochs", type=int, default=30)
    b.add_argument("--batch-size", type=int, default=16)
    b.add_argument("--lr", type=float, default=1e-3)
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--run", default=None, help="run folder name under outputs/ (reuse it to resume)")
    b.add_argument("--quiet", action="store_true", help="no progress bars")
    b.set_defaults(func=cmd_baselines)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)
