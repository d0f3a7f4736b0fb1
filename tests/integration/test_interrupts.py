"""Interruptions, as users meet them: a sweep whose worker or kernel is killed mid-cell, and Ctrl-C
(SIGINT to the whole process group, as a terminal sends it) during `remd sweep`, `remd compare` and
`remd run`. Each command runs in a real subprocess; nothing is mocked."""

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from remd_core.files import read_json
from remd_core.paths import REPO_ROOT

GRID = """
name: mini
datasets: [synthetic-stage2]
seeds: [0]
recipes: [naive-fusion, mmpareto]
"""
FIRST, SECOND = "synthetic-stage2__naive-fusion__seed0", "synthetic-stage2__mmpareto__seed0"
# A cell long enough to be caught in the middle: 6 epochs were missed by the poll in CI once cells ran as
# functions in a warm worker (about half a second an epoch at the smoke profile); 12 epochs with the first 10
# as the window leave the poll some 5 s.
EPOCHS = 12
SLOW = ["--set", f"EPOCHS={EPOCHS}", "CHECKPOINT_EVERY=1"]
WINDOW = EPOCHS - 2
COMPARE_DATA = ["--data", "n_eyes=80", "image_size=32", "oct_size=32", "n_bscans=2", "test=20", "val=12",
                "--encoder", "width=0.125", "--epochs", "3", "--checkpoint-every", "1", "--quiet"]




def _as_in_a_terminal():
    """The command as a terminal starts it: SIGINT at its default disposition. A test session started in
    the background of a non-interactive shell (``... &``) inherits SIGINT ignored, which Python keeps
    ignored (it installs its KeyboardInterrupt handler only over the default), so Ctrl-C would not reach it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(args: list[str], outputs: Path) -> subprocess.Popen:
    """``remd ARGS`` in its own session (so a signal to its group reaches it and its workers only)."""
    env = {**os.environ, "REMD_OUTPUTS": str(outputs), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "remd_core", *args], cwd=REPO_ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                            preexec_fn=_as_in_a_terminal)


def wait_for(condition, process: subprocess.Popen, timeout: float = 240):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if process.poll() is not None:
            out, err = process.communicate()
            pytest.fail(f"the command ended (rc {process.returncode}) before the awaited moment:\n{out}\n{err}")
        time.sleep(0.05)
    process.kill()
    pytest.fail("timed out waiting")


def mid_run(checkpoint: Path, before_epoch: int = 2):
    """True once ``checkpoint`` records a step inside its run (past step 1, before ``before_epoch``)."""
    if not checkpoint.with_name(checkpoint.name + ".sha256").exists():
        return False
    import torch

    try:
        saved = torch.load(checkpoint, weights_only=True)
    except Exception:  # replaced while being read: look again
        return False
    return saved["step"] >= 2 and saved["epoch"] < before_epoch


def our_processes(outputs: Path) -> list[psutil.Process]:
    """Every live process (workers, kernels) started for this test's outputs folder."""
    found = []
    for process in psutil.process_iter():
        try:
            if process.environ().get("REMD_OUTPUTS") == str(outputs) and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def none_left(outputs: Path, timeout: float = 10) -> bool:
    """No process of this test's outputs folder lives (a kernel exits within about a second of its
    worker: ipykernel's parent poller looks once a second)."""
    deadline = time.monotonic() + timeout
    while our_processes(outputs):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def worker_of(outputs: Path, command: subprocess.Popen) -> psutil.Process:
    """The Dask worker process that runs cells as functions: a process the command spawned (its nanny
    lives in the command's own process)."""
    workers = [p for p in our_processes(outputs)
               if p.ppid() == command.pid and "spawn_main" in " ".join(p.cmdline())]
    assert len(workers) == 1, [(p.pid, p.ppid(), p.cmdline()) for p in our_processes(outputs)]
    return workers[0]


def kernel_of(outputs: Path) -> psutil.Process:
    kernels = [p for p in our_processes(outputs) if "ipykernel_launcher" in " ".join(p.cmdline())]
    assert len(kernels) == 1, kernels
    return kernels[0]


def half_written(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.endswith(".tmp")]


def command_from(stderr: str) -> list[str]:
    """The resume command the interrupted command printed, as arguments for ``python -m remd_core``."""
    lines = stderr.splitlines()
    at = [i for i, line in enumerate(lines) if line.endswith("continue with:")]
    assert at, stderr  # kernels that exit after the command may print below it
    words = shlex.split(lines[at[-1] + 1])
    assert words[0] == "remd", stderr
    return words[1:]


def interrupt(process: subprocess.Popen) -> tuple[float, str, str]:
    """Ctrl-C: SIGINT to the process group; returns seconds until the command ended, and its output."""
    sent = time.monotonic()
    os.killpg(process.pid, signal.SIGINT)
    out, err = process.communicate(timeout=60)
    return time.monotonic() - sent, out, err


@pytest.fixture
def grid(tmp_path):
    path = tmp_path / "mini.yaml"
    path.write_text(GRID)
    return path


def caught_in_second_cell(tmp_path, grid):
    """A one-worker sweep of the mini grid, caught while its second cell trains (the first has
    finished). Returns the sweep's arguments, its process, and the first cell's result file."""
    outputs, folder = tmp_path / "outputs", tmp_path / "outputs" / "sweep-mini"
    args = ["sweep", str(grid), "--profile", "smoke", "--workers", "1", "--notebooks", *SLOW]  # a kernel per cell
    process = start(args, outputs)
    wait_for(lambda: mid_run(folder / "cells" / SECOND / "checkpoints" / "last.pt", WINDOW), process)
    finished = folder / "cells" / FIRST / "results" / "train_recipe.json"
    assert finished.exists()  # one worker: the first cell finished before the second began
    return args, process, finished


def rerun_resumes_the_second_cell_only(tmp_path, args, finished):
    outputs, folder = tmp_path / "outputs", tmp_path / "outputs" / "sweep-mini"
    stamp = finished.stat().st_mtime_ns
    rerun = start(args, outputs)
    out, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err
    assert "2 cells, 1 finished earlier (skipped), 1 to run" in out + err
    assert "resuming from" in (folder / "cells" / SECOND / "train_recipe.ipynb").read_text()  # the cell says so
    assert finished.stat().st_mtime_ns == stamp  # the finished cell was not redone
    assert read_json(folder / "cells" / SECOND / "results" / "train_recipe.json")["rows"][0]["epochs"] == EPOCHS
    assert not (folder / "cells" / SECOND / "checkpoints").exists()  # removed once the result is recorded
    assert not half_written(folder)


@pytest.mark.slow
def test_a_sweep_whose_kernel_is_killed_mid_cell_resumes_that_cell_on_rerun(tmp_path, grid):
    args, sweep, finished = caught_in_second_cell(tmp_path, grid)
    kernel_of(tmp_path / "outputs").kill()  # what the out-of-memory killer does
    out, err = sweep.communicate(timeout=120)
    assert sweep.returncode == 1 and "DeadKernelError" in err and SECOND in err, err
    rerun_resumes_the_second_cell_only(tmp_path, args, finished)


@pytest.mark.slow
def test_a_sweep_whose_client_is_killed_loses_no_finished_cell(tmp_path, grid):
    args, client, finished = caught_in_second_cell(tmp_path, grid)
    client.kill()  # the client alone (SIGKILL): its local cluster's workers and kernels are orphaned
    client.communicate(timeout=60)
    assert none_left(tmp_path / "outputs", timeout=90)  # workers notice the lost scheduler, kernels their worker
    rerun_resumes_the_second_cell_only(tmp_path, args, finished)


@pytest.mark.slow
def test_a_sweep_survives_a_killed_worker_process(tmp_path, grid):
    outputs, folder = tmp_path / "outputs", tmp_path / "outputs" / "sweep-mini"
    sweep = start(["sweep", str(grid), "--profile", "smoke", "--workers", "1", *SLOW], outputs)  # cells as functions
    wait_for(lambda: mid_run(folder / "cells" / FIRST / "checkpoints" / "last.pt", WINDOW), sweep)
    worker = worker_of(outputs, sweep)  # the worker process, which runs the cell itself
    assert worker.pid != sweep.pid
    worker.kill()
    out, err = sweep.communicate(timeout=300)
    assert sweep.returncode == 0, err
    assert f"{FIRST}: test R2" in out and "(started 2 times: its worker process died" in out, out
    assert "resuming from" in err
    assert all(read_json(folder / "cells" / key / "results" / "train_recipe.json") for key in (FIRST, SECOND))
    assert not half_written(folder) and none_left(outputs)


@pytest.mark.slow
def test_ctrl_c_stops_a_sweep_leaves_whole_files_and_prints_the_resume_command(tmp_path, grid):
    outputs, folder = tmp_path / "outputs", tmp_path / "outputs" / "sweep-mini"
    sweep = start(["sweep", str(grid), "--profile", "smoke", "--workers", "1", *SLOW], outputs)
    wait_for(lambda: mid_run(folder / "cells" / FIRST / "checkpoints" / "last.pt", WINDOW), sweep)
    seconds, out, err = interrupt(sweep)
    assert sweep.returncode == 130 and seconds < 15, (seconds, err[-3000:])
    assert "interrupted" in err
    assert none_left(outputs) and not half_written(folder)
    resumed = start(command_from(err), outputs)
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert "resuming from" in err


@pytest.mark.slow
def test_ctrl_c_stops_compare_and_its_resume_command_continues_the_cell(tmp_path):
    outputs, folder = tmp_path / "outputs", tmp_path / "outputs" / "cmp"
    args = ["compare", "--recipes", "unimodal-fundus,naive-fusion", "--seeds", "0", *COMPARE_DATA, "--run", "cmp"]
    compare = start(args, outputs)
    cells = folder / "cells"
    wait_for(lambda: mid_run(cells / "synthetic-stage2__naive-fusion__seed0" / "checkpoints" / "last.pt"), compare)
    finished = cells / "synthetic-stage2__unimodal-fundus__seed0" / "results" / "compare.json"
    stamp = finished.stat().st_mtime_ns
    seconds, out, err = interrupt(compare)
    assert compare.returncode == 130 and seconds < 10, (seconds, err[-3000:])
    assert not half_written(folder) and none_left(outputs)
    command = command_from(err)
    assert command[-3:] == ["--run", "cmp", "--resume"]
    resumed = start(command, outputs)
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert "unimodal-fundus seed 0: done earlier, skipped" in out
    assert "naive-fusion seed 0: continuing from its checkpoint" in out and "resuming from" in err
    assert finished.stat().st_mtime_ns == stamp
    assert (folder / "results.csv").exists() and not (cells / "synthetic-stage2__naive-fusion__seed0" / "checkpoints").exists()


@pytest.mark.slow
def test_ctrl_c_stops_remd_run_and_resume_skips_the_notebooks_it_finished(tmp_path):
    outputs, folder = tmp_path / "outputs", tmp_path / "outputs" / "nb"
    run = start(["run", "--profile", "smoke", "--notebooks", "00,01", "--run", "nb"], outputs)
    wait_for(lambda: (folder / "01_coupled_imbalance.running.ipynb").exists(), run)
    assert (folder / "00_data.ipynb").exists()
    seconds, out, err = interrupt(run)
    assert run.returncode == 130 and seconds < 15, (seconds, err[-3000:])
    assert none_left(outputs) and not half_written(folder)
    assert not (folder / "01_coupled_imbalance.ipynb").exists()  # only finished executions carry the final name
    command = command_from(err)
    assert command[-1] == "--resume"
    resumed = start(command, outputs)
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert "00_data.ipynb: executed earlier in this run, skipped" in out
    assert (folder / "01_coupled_imbalance.ipynb").exists()


def test_the_resume_command_repeats_the_arguments_and_names_the_run():
    from types import SimpleNamespace

    from remd_core.cli.commands import resume_command

    args = SimpleNamespace(argv=["compare", "--recipes", "re-m3dr", "--run", "old", "--seeds", "0,1", "--resume"])
    assert resume_command(args, "old") == "remd compare --recipes re-m3dr --seeds 0,1 --run old --resume"
    args = SimpleNamespace(argv=["sweep", "sweeps/paper.yaml", "--set", "EPOCHS=30"])
    assert resume_command(args, "sweep-paper", flag=False) == "remd sweep sweeps/paper.yaml --set EPOCHS=30 --run sweep-paper"
