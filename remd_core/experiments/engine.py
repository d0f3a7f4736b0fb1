"""The grid engine: cells -> executor -> one results store. Both front ends call ``run_grid``:
``remd compare`` (``compare``: recipes x seeds in this process) and ``remd sweep``
(``workbench.sweep``: a grid file of notebook cells on Dask). A front end gives it the grid, the
store, each cell's settings and each cell's task (a function and its arguments, run where the
executor puts it, that writes the cell's result into the store); the engine expands the grid into
cells (``grid``), skips finished cells, refuses finished cells of other settings, runs the rest,
reports each as it ends, writes ``error.txt`` for a failure while the others go on, and collects
the store into one table (``results.collect``). A cell's checkpoints (``cells/<key>/checkpoints/``)
are removed once its result is recorded; a cell retried after its worker died resumes from them.
"""

from __future__ import annotations

import re
import shutil
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd

from ..files import remove_stale_temporaries, write_text
from ..progress import report
from .executors import WORKER_RETRIES, InlineExecutor, dead_worker
from .grid import Cell, Grid, expand
from .results import ResultStore, collect


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


def run_grid(grid: Grid, store: ResultStore, settings: Callable[[Cell], dict], task: Callable[[Cell], tuple], *,
             title: str, seeds: list[int] | None = None, groups: list[str] | None = None, executor=None,
             open_executor: Callable[[int], object] | None = None, order: Callable[[list], list] | None = None,
             prepare: Callable[[], None] | None = None, announce: Callable[[object, list, list], None] | None = None,
             whole_folder: bool = True, predictions: bool = False,
             failure: Callable[[Outcome, pd.DataFrame], Exception] | None = None,
             progress: bool = True) -> tuple[pd.DataFrame, Outcome]:
    """Run the cells of ``grid`` that are not finished in ``store``; return the store's table
    (``results.collect``) and what this call did (``Outcome``). A front end gives each cell its
    ``settings`` and its ``task``; the rest is here, in this order:

    1. expand the selected sub-grids (``groups``, with ``seeds`` replacing theirs) into cells;
    2. ``settings(cell)`` for each cell: the values that decide whether a finished result can be
       reused (a front end may check them and raise: nothing is written before this step ends); a
       finished cell recorded with other settings is an error (``ResultStore.check_fresh``);
    3. create the folder, remove the temporary files a killed process left, call ``prepare()``;
    4. write each cell's ``cell.json`` (key, groups, the grid's swept parameters, its settings);
    5. split the cells into pending and finished earlier (``pending_cells``);
    6. if any are pending: take ``executor`` (already open; its caller closes it), or open one with
       ``open_executor(number of pending cells)`` (closed here once the cells ran, at once on
       Ctrl-C), or run them in this process (``executors.InlineExecutor``) when neither is given;
    7. ``announce(executor, pending, done)`` says what is about to happen (``executor`` is ``None``
       when nothing is pending);
    8. run the pending cells (``run_cells``), in the order ``order(pending)`` (default: the grid's),
       each as ``task(cell)``: ``(function, args)``, a call that records the cell's result in the store;
    9. if cells failed and no ``failure`` is given, raise a ``RuntimeError`` naming the first one;
    10. collect the table: of the whole folder (``whole_folder``: cells of earlier runs into it
        included, and a note names those without a result) or of this call's cells only; with each
        row's test predictions if ``predictions``;
    11. if cells failed, raise ``failure(outcome, table)`` (``workbench.sweep.SweepError`` carries
        the finished cells' table).

    ``title`` heads the progress bar and the progress lines; ``progress=False`` shows neither the
    bar nor a line per cell."""
    from tqdm.auto import tqdm

    cells = expand(grid, seeds, groups)
    per_cell = {cell.key: settings(cell) for cell in cells}
    store.check_fresh(per_cell)
    store.folder.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(store.folder)
    if prepare:
        prepare()
    for cell in cells:
        store.write_meta(cell, grid.swept, per_cell[cell.key])
    pending, done = pending_cells(store, cells)
    outcome = Outcome(skipped=[c.key for c in done])
    if not pending:
        if announce:
            announce(None, pending, done)
    else:
        owned = executor is None and open_executor is not None
        if owned:
            executor = open_executor(len(pending))
        elif executor is None:
            executor = InlineExecutor()
        try:  # an executor this call opened stays open only while cells run
            if announce:
                announce(executor, pending, done)
            tasks = {cell.key: task(cell) for cell in pending}
            run_cells(store, order(pending) if order else pending, tasks, executor, title, progress, outcome=outcome)
        except KeyboardInterrupt:
            if owned:
                executor.close(interrupted=True)
            # a worker process stopped mid-write (cells run in a worker thread, which the interrupt does not
            # reach, so the write's own clean-up never ran) leaves its temporary file: remove it
            remove_stale_temporaries(store.folder)
            raise
        if owned:
            executor.close()
    if outcome.failed and failure is None:
        key, error = next(iter(outcome.failed.items()))
        raise RuntimeError(f"{len(outcome.failed)} cell(s) failed in {store.folder}; {key}: {error} (see "
                           f"{store.cell_dir(key) / 'error.txt'}); rerun to retry them")
    keys = [cell.key for cell in cells]
    with warnings.catch_warnings(record=True) as caught:  # said here, in this run's terms
        warnings.simplefilter("always")
        table = collect(store.folder, keys=None if whole_folder else keys, predictions=predictions)
    if caught and whole_folder:
        others = sorted({p.parent.name for p in (store.folder / "cells").glob("*/cell.json")} - set(keys)
                        - set(table.get("cell", [])))
        if others and progress:
            tqdm.write(f"note: {len(others)} cell(s) of this folder outside this run have no results: {others}")
    if outcome.failed:
        raise failure(outcome, table)
    return table, outcome
