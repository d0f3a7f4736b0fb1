"""Each part in its own process, within its time budget.

A part runs as ``python benchmarks/gpu_check.py --part NAME --work DIR`` in a new session (its own process
group, so its DataLoader workers, Dask workers and pytest's children go with it). Its output goes to the
console, prefixed with its name, and to ``DIR/NAME.log``. When it runs past its budget, the group gets
SIGTERM (a part catches it and writes what it has measured so far), then SIGKILL five seconds later; the
part is recorded as ``timeout`` with the seconds it ran. A part's result is the JSON file it writes,
``DIR/NAME.json``; a part that wrote none ended in an error, recorded with the end of its log."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

GRACE_S = 5.0


def run_part(name: str, command: list[str], budget_s: float, work: Path, env: dict | None = None,
             echo=print) -> dict:
    """Run ``command`` as part ``name`` for at most ``budget_s`` seconds; return its result (its JSON file)
    with ``status`` (``pass``/``fail`` as the part decided; ``timeout``; ``error``), ``wall_s``, ``budget_s``
    and, unless it passed, ``log_tail``."""
    work = Path(work)
    log_path, result_path = work / f"{name}.log", work / f"{name}.json"
    result_path.unlink(missing_ok=True)
    start = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                                env=env, start_new_session=True)
        reader = threading.Thread(target=_copy, args=(proc.stdout, log, name, echo), daemon=True)
        reader.start()
        timed_out = False
        try:
            proc.wait(timeout=budget_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            echo(f"[{name}] over its budget of {budget_s:g} s: stopping it")
            _stop_group(proc)
        else:
            _kill_rest(proc)
        reader.join(timeout=GRACE_S)
    wall = time.perf_counter() - start
    result = _read(result_path)
    if timed_out:
        result.update(status="timeout", detail=f"stopped after {wall:.0f} s (budget {budget_s:g} s)"
                      + ("; the numbers are those measured before it was stopped" if result.get("partial") else ""))
    elif not result.get("status"):
        result.update(status="error", detail=f"exited with status {proc.returncode} without a result")
    result.update(wall_s=round(wall, 1), budget_s=budget_s, returncode=proc.returncode)
    if result["status"] != "pass":
        result["log_tail"] = _tail(log_path)
    return result


def _copy(stream, log, name, echo):
    for line in stream:
        log.write(line)
        log.flush()
        echo(f"[{name}] {line.rstrip()}")


def _stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM to the part's process group, SIGKILL to what is left of it ``GRACE_S`` later."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=GRACE_S)
    except subprocess.TimeoutExpired:
        pass
    _kill_rest(proc)


def _kill_rest(proc: subprocess.Popen) -> None:
    """SIGKILL to whatever of the part's process group outlived it (a worker it left behind)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def write_result(work: Path, name: str, result: dict) -> None:
    """A part's result, written atomically (a part stopped mid-write leaves the previous file or none)."""
    path = Path(work) / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=1, default=_plain))
    os.replace(tmp, path)


def _plain(value):
    try:
        return value.item()  # numpy and torch scalars
    except AttributeError:
        return str(value)


def on_termination(handler) -> None:
    """Call ``handler()`` when the part is stopped (SIGTERM), then exit with status 124."""
    def stop(signum, frame):
        try:
            handler()
        finally:
            sys.stdout.flush()
            os._exit(124)
    signal.signal(signal.SIGTERM, stop)
