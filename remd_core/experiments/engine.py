"""The grid engine: cells -> executor -> one results store. Both front ends use it: ``remd compare``
(``compare``: recipes x seeds in this process) and ``remd sweep`` (``workbench.sweep``: a grid file of
notebook cells on Dask). A front end expands its grid into cells (``grid``), gives each cell a task
(a function and its arguments, run where the executor puts it, that writes the cell's result into
the store) and its settings; the engine skips finished cells, refuses finished cells of other
settings, runs the rest, reports each as it ends, and writes ``error.txt`` for a failure while the
others go on. A cell's checkpoints (``cells/<key>/checkpoints/``) are removed once its result is
recorded; a cell retried after its worker died resumes from them.
"""

from __future__ import annotations

import re
import shutil
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from ..files import write_text
from ..progress import report
from .executors import WORKER_RETRIES, dead_worker
from .grid import Cell
from .results import ResultStore


@dataclass
class Outcome:
    """What one call of ``run_cells`` did: keys ``executed`` and ``skipped`` (finished earlier),
    ``failed`` key -> first line of the error."""

    executed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


def describe_error(err: BaseException) -> tuple[str, str]:
    """``(first line, full text)`` of a cell's error (a papermill error names the kernel's)."""
    summary = f"{err.ename}: {err.evalue}" if hasattr(err, "ename") else f"{type(err).__name__}: {err}"
    if dead_worker(err):
        summary = f"its worker process died {WORKER_RETRIES + 1} times while running it ({type(err).__name__})"
    detail = re.sub(r"\x1b\[[0-9;]*m", "", "".join(traceback.format_exception(type(err), err, err.__traceback__)))
    return (summary.splitlines()[0] if summary.strip() else type(err).__name__), detail


def attempt(cell_dir: str, function, args):
    """Run one cell's task where the executor put it, counting its starts in ``cell_dir/attempts``:
    a cell whose worker died is started again by the scheduler, and the count tells the user."""
    path = Path(cell_dir) / "attempts"
    starts = int(path.read_text()) + 1 if path.exists() else 1
    write_text(path, str(starts))
    return function(*args)


def pending_cells(store: ResultStore, cells: list[Cell]) -> tuple[list[Cell], list[Cell]]:
    """``(to run, finished earlier)``; checkpoints a finished cell left (its run was stopped between
    recording the result and removing them) are removed."""
    done = [c for c in cells if store.finished(c.key) is not None]
    keys = {c.key for c in done}
    for cell in done:
        shutil.rmtree(store.cell_dir(cell.key) / "checkpoints", ignore_errors=True)
    return [c for c in cells if c.key not in keys], done


def run_cells(store: ResultStore, cells: list[Cell], tasks: dict, executor, title: str, progress: bool = True,
              log=None, outcome: Outcome | None = None) -> Outcome:
    """Run ``cells`` (in this order) on ``executor``; ``tasks`` maps each key to ``(function,
    args)``, a call that returns ``None`` once the cell's result is in the store or ``(first line,
    text)`` of its error (raising counts as an error too). Shows a bar of cells done, running and
    failed; ``log`` (default: above the bar) gets one line per finished cell."""
    from tqdm.auto import tqdm

    outcome = outcome or Outcome()
    with tqdm(total=len(cells), desc=title, unit="cell", disable=not progress) as bar:
        say = log or (tqdm.write if progress else (lambda _line: None))

        def submitted():
            for cell in cells:
                for stale in ("error.txt", "attempts"):
                    (store.cell_dir(cell.key) / stale).unlink(missing_ok=True)
                yield cell, attempt, (str(store.cell_dir(cell.key)), *tasks[cell.key])

        bar.set_postfix_str(f"running {min(executor.slots, len(cells))}, failed 0")
        for cell, future in executor.run(submitted()):
            try:
                error = future.result()
            except Exception as err:  # a cell's own failure; the grid goes on with the others
                error = describe_error(err)
            result = store.finished(cell.key) if error is None else None
            if error is None and result is None:
                error = (f"it ran but recorded no {store.result_path(cell.key).relative_to(store.cell_dir(cell.key))}",
                         "")
            if error:
                outcome.failed[cell.key] = error[0]
                store.write_error(cell.key, *error)
                line = f"{cell.key}: FAILED, {error[0]}"
            else:
                outcome.executed.append(cell.key)
                shutil.rmtree(store.cell_dir(cell.key) / "checkpoints", ignore_errors=True)  # the result is recorded
                rows = result["rows"]
                line = f"{cell.key}: " + ", ".join(
                    f"test R2 {r['test_r2']:.3f}" + (f" [{r['model']}]" if len(rows) > 1 else "") for r in rows)
            starts = store.cell_dir(cell.key) / "attempts"
            if starts.exists() and int(starts.read_text()) > 1:
                line += f" (started {starts.read_text()} times: its worker process died; each start resumed from the last checkpoint)"
            bar.update(1)
            left = len(cells) - bar.n
            bar.set_postfix_str(f"running {min(executor.slots, left)}, failed {len(outcome.failed)}")
            say(line)
            report(f"{title} [{bar.n}/{len(cells)}] {line}")
    return outcome
