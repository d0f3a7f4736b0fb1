"""Progress lines a person can follow from a terminal while a notebook trains.

A notebook executed by ``remd run`` (or a sweep cell inside it) runs in a kernel whose output goes
into the notebook, not to the terminal: all the terminal would show is papermill's bar of cells
done. ``report`` appends one line to the file named by ``$REMD_PROGRESS_FILE`` (which ``remd run``
sets and tails, printing each line as it comes); without it, it does nothing. The trainer reports
each epoch of each training run, the grid engine each finished cell. Cost: one short append per
epoch or cell (written by hand: logging handlers do not cross into kernels and Dask workers, an
environment variable and a file do).
"""

from __future__ import annotations

import os

ENV = "REMD_PROGRESS_FILE"


def report(line: str) -> None:
    """Append ``line`` to the progress file when one is set (lines from several processes interleave
    whole: each is one short append)."""
    path = os.environ.get(ENV)
    if path:
        with open(path, "a") as handle:
            handle.write(line.rstrip("\n") + "\n")
