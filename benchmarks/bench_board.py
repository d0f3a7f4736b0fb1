"""What TensorBoard logging and the per-epoch modality contributions cost a fit (issue 25, items 1
and 3), at the cpu profile's sizes, in one run.

The fit: naive fusion (``joint``, ``unimodal_weight=0``: the cheapest step of any fusion recipe, so the
largest relative cost) on ``synthetic-stage2`` at the cpu profile's scale (``PROFILES["cpu"]``: 700
eyes, 64 px, 4 B-scans, ResNet18 of width 0.25, the workbench preset's batch 16, float32), ``--epochs``
epochs. Four variants of the same seeded fit:

- ``plain``: ``fit(log_dir=None, contributions=False)``, the loop as it was;
- ``board``: TensorBoard scalars every epoch (``log_dir``), no contributions;
- ``contributions``: the per-epoch validation contributions and the final test ones, no scalars;
- ``both``: what every recipe runs by default.

Two readings, side by side:

1. End to end, PAIRED: every round runs the four variants once, in an order rotating from round to
   round (after ``--warmup`` untimed rounds); ``x plain`` is the median over rounds of a variant's fit
   time over the ``plain`` fit's of the same round, with its interquartile range, and beside it the
   ratio of the fastest fits (the least disturbed by other work on a shared machine).
2. The components, timed inside the same fits by wrapping the library's functions in this process
   (two ``perf_counter`` calls each): ``RunBoard`` (opening the writer, each epoch's scalars and
   flush, closing) and ``modality_contributions`` (per epoch on validation, once on test). Their
   seconds are set against the fit's training steps: ``step`` is the ``plain`` fit's time less its
   evaluation (``predict``, ``final_report``), over its steps. ``per step`` spreads a component's
   time in a fit over that fit's steps; ``x step`` is that time over the same fit's training time
   (its time less its evaluation: both under the same load), median over fits. The budget for the
   scalars is 2 % of a step.

The one-time import of ``torch.utils.tensorboard`` (once per process, paid by the first fit that
logs) is timed in a fresh interpreter after ``import torch``. Record ``uptime``'s load beside the
numbers: the 2-core machine is shared, and a busy machine makes the end-to-end ratios noisy (the
component times much less so).

    .venv/bin/python benchmarks/bench_board.py                      # 5 rounds of 2-epoch fits, ~6 min here
    .venv/bin/python benchmarks/bench_board.py --rounds 2 --warmup 0 --epochs 1   # quick look
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

VARIANTS = {"plain": dict(board=False, contributions=False), "board": dict(board=True, contributions=False),
            "contributions": dict(board=False, contributions=True), "both": dict(board=True, contributions=True)}


def import_seconds() -> float:
    code = ("import time, torch; t = time.perf_counter(); import torch.utils.tensorboard; "
            "print(time.perf_counter() - t)")
    return float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)


class Timers:
    """Exclusive seconds inside wrapped functions, per label, for the fit being timed."""

    def __init__(self):
        self.seconds = defaultdict(float)

    def wrap(self, owner, name: str, label: str):
        original = getattr(owner, name)

        @functools.wraps(original)
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds[label] += time.perf_counter() - start
        setattr(owner, name, timed)


def quartiles(values):
    q = statistics.quantiles(values, n=4) if len(values) > 1 else [values[0]] * 3
    return q[0], statistics.median(values), q[2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--out", default="outputs/bench/board")
    args = parser.parse_args()

    import torch

    from remd_core.training import board as board_module
    from remd_core.training import evaluate, fit, loop
    from remd_core.workbench.profiles import PROFILES
    from remd_core.workbench.setup import load_dataset, train_config

    imported = import_seconds()
    cpu = PROFILES["cpu"]
    dataset = load_dataset("synthetic-stage2", cpu["N_EYES"], cpu["IMAGE_SIZE"], cpu["N_BSCANS"])
    config = train_config(args.epochs, cpu["ARCH"], cpu["WIDTH"], training=cpu["TRAINING"],
                          strategy_options={"unimodal_weight": 0.0})
    timers = Timers()
    timers.wrap(board_module.RunBoard, "__init__", "board: open")
    timers.wrap(board_module.RunBoard, "epoch", "board: epochs")
    timers.wrap(board_module.RunBoard, "close", "board: close")
    timers.wrap(loop, "modality_contributions", "contributions: validation, every epoch")
    timers.wrap(evaluate, "modality_contributions", "contributions: test, once")
    timers.wrap(loop, "predict", "evaluation")
    timers.wrap(loop, "final_report", "evaluation")
    import remd_core.training.board  # noqa: F401  (the import is paid here, once, like a notebook's first fit)

    names = list(VARIANTS)
    walls, parts, steps = defaultdict(list), defaultdict(lambda: defaultdict(list)), None
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.warmup + args.rounds):
            order = names[r % len(names):] + names[:r % len(names)]
            for name in order:
                v = VARIANTS[name]
                timers.seconds.clear()
                start = time.perf_counter()
                result = fit(dataset, config, progress=False, contributions=v["contributions"],
                             log_dir=Path(tmp) / f"{name}-{r}" if v["board"] else None)
                wall = time.perf_counter() - start
                steps = len(result.history)
                if r < args.warmup:
                    continue
                walls[name].append(wall)
                for label, seconds in timers.seconds.items():
                    parts[name][label].append(seconds)
            print(f"round {r + 1}/{args.warmup + args.rounds}: " + ", ".join(
                f"{n} {walls[n][-1]:.2f} s" for n in names if walls[n] and r >= args.warmup), flush=True)

    plain_train = [w - e for w, e in zip(walls["plain"], parts["plain"]["evaluation"])]
    step = statistics.median(plain_train) / steps
    trained = {n: [w - e for w, e in zip(walls[n], parts[n]["evaluation"])] for n in names}  # each fit's steps
    lines = [f"cpu profile (700 eyes, 64 px, 4 B-scans, resnet18 x0.25, batch 16, float32), naive fusion, "
             f"{args.epochs} epochs = {steps} steps a fit; {args.rounds} rounds after {args.warmup} warm-up; "
             f"torch {torch.__version__}, {torch.get_num_threads()} threads; load average {os.getloadavg()}",
             "", f"step (plain fit less its evaluation, over its steps): {1000 * step:.1f} ms",
             f"import torch.utils.tensorboard (once per process): {1000 * imported:.0f} ms", "",
             "| variant | fit (median s) | x plain (paired median) | IQR | x plain (fastest fits) |",
             "| --- | --- | --- | --- | --- |"]
    table = {"step_s": step, "steps": steps, "import_s": imported, "load": os.getloadavg(), "variants": {}}
    for name in names:
        ratios = [w / p for w, p in zip(walls[name], walls["plain"])]
        lo, mid, hi = quartiles(ratios)
        lines.append(f"| {name} | {statistics.median(walls[name]):.2f} | {mid:.4f} | {lo:.4f} to {hi:.4f} | "
                     f"{min(walls[name]) / min(walls['plain']):.4f} |")
        table["variants"][name] = {"fit_s": walls[name], "ratio": ratios,
                                   "parts": {k: v for k, v in parts[name].items()}}
    lines += ["", "| variant | component | s per fit (median) | per step | x step (median over fits) |",
              "| --- | --- | --- | --- | --- |"]
    for name in names[1:]:
        for label in sorted(parts[name]):
            if label == "evaluation":
                continue
            seconds = statistics.median(parts[name][label])
            shares = [c / t for c, t in zip(parts[name][label], trained[name])]  # within one fit: the same load
            lines.append(f"| {name} | {label} | {seconds:.4f} | {1000 * seconds / steps:.2f} ms | "
                         f"{statistics.median(shares):.2%} |")
    text = "\n".join(lines)
    print("\n" + text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(text + "\n")
    out.with_suffix(".json").write_text(json.dumps(table, indent=1))
    print(f"\nwritten: {out.with_suffix('.md')}, {out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
