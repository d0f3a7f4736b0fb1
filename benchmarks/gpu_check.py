"""The first minutes on a GPU machine, as one command (``make gpu-check``; docs/install.md, GPU section).

Within 5.5 minutes (the budgets below; with a lent machine's start, within 8 minutes of device time) it runs:

==========  ==========  ==========================================================================
part        budget      what
==========  ==========  ==========================================================================
setup       20 s        installs the wheels carried in ``outputs/gpu-wheels`` where this Python lacks
                        a package the parts import (``make gpu-wheels`` downloads them, here)
(a) tests   60 s        every test marked ``gpu`` or skipping with "needs CUDA" (``gpucheck.cuda_tests``)
data        40 s        192 synthetic eyes at 224 px and 32 B-scans, written as a manifest and decoded
                        into the store (``gpucheck.data``)
(b) bench   100 s       the step benchmark: every strategy against its floor, ResNet34 x1, batch 8, bf16
                        autocast and channels-last checked on a convolution (``gpucheck.bench``)
(c) stages  110 s       ``re-m3dr`` at the paper's settings through the streamed loader: stage 1 (one
                        AM-SupCon encoder per modality), then SGM fusion, 3 epochs of 20 steps each;
                        step times from CUDA events, the GPU's busy share from NVML (``gpucheck.stages``)
==========  ==========  ==========================================================================

Each part runs in its own process group and is stopped when it overruns its budget (``gpucheck.budget``);
the report says so, with what it measured before. One report, ``gpu-check.json`` and ``gpu-check.md``
(device name, torch, CUDA, cuDNN and driver versions, date, each part's status, numbers and wall time), goes
to ``$OUT`` when that variable is set (the device tool copies it back), else to ``outputs/gpu-check/``,
with ``gpu-check.log`` (every part's output).

Without a CUDA device it refuses at once, in one line naming what is missing, with exit status 2;
``--device cpu --dry-run`` runs every part at a tiny scale on the CPU (the tests check the script so).
Exit status 0 when every part passed, 1 otherwise.

    python benchmarks/gpu_check.py                       # on the GPU machine (make gpu-check)
    python benchmarks/gpu_check.py --device cpu --dry-run
    python benchmarks/gpu_check.py --parts tests,data,stages --budget stages=150 --set epochs=5
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent
sys.path[:0] = [p for p in (str(HERE), str(REPO_ROOT)) if p not in sys.path]

from gpucheck.budget import run_part, write_result  # noqa: E402
from gpucheck.environment import (WHEELS, cuda_problem, device_info, install_wheels, missing_modules,  # noqa: E402
                                  part_environment)
from gpucheck.plan import BUDGETS, PARTS, Plan, dry_run  # noqa: E402
from gpucheck.report import build_report, headline, write_report  # noqa: E402

REFUSED = 2


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="cuda (default), cuda:1, ... or cpu (with --dry-run)")
    ap.add_argument("--dry-run", action="store_true", help="every part at a tiny scale (gpucheck.plan.DRY_RUN)")
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    ap.add_argument("--budget", action="append", default=[], metavar="PART=SECONDS",
                    help=f"override a part's budget (default {BUDGETS})")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="override a size of gpucheck.plan.Plan (n_eyes, epochs, loader_workers, bench_steps, ...)")
    ap.add_argument("--out", default=None, help="report folder (default: $OUT, else outputs/gpu-check)")
    ap.add_argument("--revision", default=os.environ.get("REMD_GIT_REV"),
                    help="the git revision to record (default: git's, 'unknown' without .git)")
    ap.add_argument("--keep-work", action="store_true", help="keep the parts' folder (outputs/gpu-check-work)")
    ap.add_argument("--part", default=None, help=argparse.SUPPRESS)  # internal: run one part in this process
    ap.add_argument("--work", default=None, help=argparse.SUPPRESS)  # the parts' folder (default work_folder())
    return ap.parse_args(argv)


def build_plan(args) -> Plan:
    plan = dry_run(args.device) if args.dry_run else Plan(device=args.device)
    fields = {f.name: f for f in dataclasses.fields(Plan)}
    changes = {}
    for item in args.set:
        key, _, value = item.partition("=")
        if key not in fields or key in ("budgets", "dry_run", "device"):
            raise ValueError(f"--set {item!r}: unknown size; known: "
                             f"{sorted(k for k in fields if k not in ('budgets', 'dry_run', 'device'))}")
        changes[key] = tuple(value.split(",")) if key == "bench_strategies" else type(getattr(plan, key))(value)
    budgets = dict(plan.budgets)
    for item in args.budget:
        part, _, value = item.partition("=")
        budgets[part] = float(value)
    return dataclasses.replace(plan, budgets=budgets, **changes)


def out_folder(args) -> Path:
    if args.out:
        return Path(args.out)
    if os.environ.get("OUT"):
        return Path(os.environ["OUT"])
    from remd_core.paths import outputs_dir

    return outputs_dir() / "gpu-check"


def work_folder() -> Path:
    """Where the parts keep the eyes, the store, their logs and results (removed at the end unless
    ``--keep-work``): ``outputs/gpu-check-work``, never the report's folder, which the device tool copies back."""
    from remd_core.paths import outputs_dir

    return outputs_dir() / "gpu-check-work"


def revision(args) -> str:
    if args.revision:
        return args.revision
    from remd_core.experiments.provenance import git_revision

    return git_revision()


def display(path: Path) -> str:
    return str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else str(path)


def setup(budget: float) -> dict:
    """The packages the parts import: installed from the carried wheels where this Python lacks them."""
    start = time.perf_counter()
    missing = missing_modules()
    result = {"status": "pass", "missing_before": missing, "installed": 0}
    if missing and any(WHEELS.glob("*.whl")):
        print(f"gpu-check: this Python lacks {', '.join(m.split(' ')[0] for m in missing)}: installing the wheels "
              f"in {display(WHEELS)}", flush=True)
        try:
            result.update(install_wheels(timeout=budget))
        except (OSError, subprocess.SubprocessError) as err:
            lines = (getattr(err, "stderr", "") or str(err)).strip().splitlines()
            result["install_error"] = lines[-1] if lines else repr(err)
        missing = missing_modules()
    if missing:
        result.update(status="fail", detail=f"missing: {'; '.join(missing)}")
    result.update(wall_s=round(time.perf_counter() - start, 1), budget_s=budget)
    return result


def run_check(args, argv: list[str] | None = None) -> int:
    try:
        plan = build_plan(args)
    except (TypeError, ValueError) as err:
        print(f"gpu-check: {err}", file=sys.stderr)
        return REFUSED
    parts = [p for p in args.parts.split(",") if p]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        print(f"gpu-check: unknown parts {unknown}; known: {list(PARTS)}", file=sys.stderr)
        return REFUSED
    problem = cuda_problem(plan.device)
    if problem:
        print(f"gpu-check: no CUDA GPU here: {problem}. Run it on a GPU machine (docs/install.md, GPU section), "
              f"or check the script with --device cpu --dry-run.", file=sys.stderr)
        return REFUSED
    start = time.perf_counter()
    results = {"setup": setup(plan.budgets["setup"])}
    if results["setup"]["status"] != "pass":
        print(f"gpu-check: this Python lacks packages the check imports ({results['setup']['detail']}); "
              f"run `make gpu-wheels` where PyPI is reached and carry {display(WHEELS)} "
              "(docs/install.md, GPU section).", file=sys.stderr)
        return REFUSED
    out = out_folder(args)
    work = Path(args.work) if args.work else work_folder()
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    plan.save(work / "plan.json")
    git = revision(args)
    (work / "git").write_text(git)
    info = device_info(plan.device)
    print(f"gpu-check on {info['device_name']}: torch {info['torch']}, CUDA {info['cuda']}; parts {parts}; budgets "
          f"{plan.budgets}", flush=True)
    env = part_environment()
    for part in parts:
        if part in ("bench", "stages") and results.get("data", {}).get("status") != "pass":
            results[part] = {"status": "skipped", "detail": "no eyes: the data part did not pass"}
            continue
        results[part] = run_part(part, [sys.executable, str(Path(__file__).resolve()), "--part", part, "--work",
                                        str(work)], plan.budgets[part], work, env=env)
        print(f"gpu-check: {part}: {results[part]['status']} in {results[part]['wall_s']} s: "
              f"{headline(part, results[part])}", flush=True)
    report = build_report(results, plan, info, git, time.perf_counter() - start,
                          " ".join(["benchmarks/gpu_check.py", *(argv or [])]))
    json_path, md_path = write_report(report, out)
    with open(out / "gpu-check.log", "w") as log:
        for part in parts:
            path = work / f"{part}.log"
            if path.exists():
                log.write(f"==== {part}\n{path.read_text(errors='replace')}\n")
    if not args.keep_work:
        shutil.rmtree(work, ignore_errors=True)
    print(md_path.read_text().split("\n\n## ")[0])
    print(f"\ngpu-check: {'PASS' if report['passed'] else 'FAIL'} in {report['meta']['wall_s']:.0f} s; wrote "
          f"{json_path}, {md_path.name} and gpu-check.log")
    return 0 if report["passed"] else 1


def run_one_part(name: str, work: Path) -> int:
    """Part ``name`` of the check planned in ``work`` (``plan.json``), in this process."""
    import torch

    plan = Plan.load(work / "plan.json")
    device = torch.device(plan.device)
    if device.type == "cpu":  # the dry run: its numbers measure nothing, and one thread a part cannot stall on
        torch.set_num_threads(1)  # a loaded machine's cores (two threads of a tiny model ran 30x slower here)
    manifest, store = work / "eyes" / "eyes.csv", work / "store"
    try:
        if name == "tests":
            from gpucheck.cuda_tests import run_cuda_tests

            result = run_cuda_tests(REPO_ROOT, work, on_cuda=device.type == "cuda")
        elif name == "data":
            from gpucheck.data import prepare_data

            result = prepare_data(plan, work)
        elif name == "bench":
            from gpucheck.bench import run_bench
            from gpucheck.data import load_eyes

            git = (work / "git").read_text() if (work / "git").exists() else "unknown"
            result = run_bench(plan, load_eyes(plan, manifest, store, lazy=False), device, git)
        elif name == "stages":
            from gpucheck.budget import on_termination
            from gpucheck.stages import StagesRun

            run = StagesRun(plan, manifest, store, work, device)
            on_termination(lambda: write_result(work, name, run.partial()))  # stopped at its budget: what it has
            result = run.run()
        else:
            raise ValueError(f"unknown part {name!r}")
    except Exception as err:  # noqa: BLE001 - the report records it; the other parts go on
        traceback.print_exc()
        write_result(work, name, {"status": "error", "detail": f"{type(err).__name__}: {err}".splitlines()[0]})
        return 1
    write_result(work, name, result)
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.part:
        return run_one_part(args.part, Path(args.work))
    return run_check(args, sys.argv[1:] if argv is None else list(argv))


if __name__ == "__main__":
    sys.exit(main())
