"""Command line: ``remd list`` shows the catalog; ``remd compare`` runs experiment recipes
(``remd_core.recipes``) over several seeds on a catalog entry and writes one tidy results table
under ``outputs/<run>/``; ``remd baselines`` is ``compare`` with the unimodal and naive-fusion
recipes and one seed, plus a figure. Each finished (recipe, seed) cell is written at once, and a
rerun with the same ``--run`` skips finished cells, so an interrupted run loses no finished work.
``remd board RUN`` starts TensorBoard on 127.0.0.1 over a run or sweep folder's training scalars.

A mistake on the command line (an unknown key, recipe, profile or notebook, a value of the wrong
kind, a data set that cannot be built) is found before any folder is made and printed as one line,
``remd <command>: error: <argument as given>: <what is wrong and what is allowed>``, with status 2.
``KEY=VALUE`` settings are typed by the dataclass field they name (``config.parse_settings``).

Here: the parser and ``main``; ``checks`` (what is checked before anything is written), ``commands`` (the
subcommands), ``board`` (``remd board``)."""

from __future__ import annotations

import argparse
import sys

from ..experiments.recipes import FUSION_RECIPES
from .board import BOARD_PORT, cmd_board
from .checks import BASELINE_RECIPES, SYNTHETIC_MINIMUMS, TRAIN_FLAGS, Parser, UsageError, train_config  # noqa: F401
from .commands import cmd_compare, cmd_list, cmd_run, cmd_sweep


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
