"""Where a process's seconds go: named phases, timed exclusively.

``with phase("stage1"): ...`` adds the block's wall time to ``"stage1"``, minus the time of the
phases opened inside it (a probe evaluated during stage-1 training counts as ``"probes"``, not as
stage 1), so the totals add up to the time spent inside any phase. The library marks its own
phases: ``data`` (generating or loading a data set), ``stage1`` and ``stage2`` (training; a
one-stage recipe's training is ``stage2``), ``probes`` (``diagnosis.probe``), ``evaluation``
(validation and test predictions), ``checkpoints`` and ``writing`` (results, tables, figures).
A sweep cell records its totals (``workbench.cell``), and ``benchmarks/bench_cell.py`` reads them.

Cost: two ``perf_counter`` calls and a list append per phase entered; the most frequent phase is a
probe evaluation, which itself runs a forward pass over its eyes, so the timer is far below the
noise of what it times. Written by hand: the profilers (py-spy, ``torch.profiler``) sample or
trace every call, cost far more and answer a different question (which function, not which step
of the method).
"""

from __future__ import annotations

import functools
import threading
import time
from collections import defaultdict
from contextlib import contextmanager

_totals: defaultdict[str, float] = defaultdict(float)
_local = threading.local()


@contextmanager
def phase(name: str):
    """Time the block as phase ``name``, excluding the phases nested in it."""
    stack = getattr(_local, "stack", None)
    if stack is None:
        stack = _local.stack = []
    stack.append(0.0)  # the seconds of the phases nested in this one
    start = time.perf_counter()
    try:
        yield
    finally:
        elapsed = time.perf_counter() - start
        nested = stack.pop()
        _totals[name] += elapsed - nested
        if stack:
            stack[-1] += elapsed


def timed(name: str):
    """Decorator: every call of the function is timed as phase ``name``."""
    def wrap(function):
        @functools.wraps(function)
        def timed_call(*args, **kwargs):
            with phase(name):
                return function(*args, **kwargs)
        return timed_call
    return wrap


def totals() -> dict[str, float]:
    """Seconds per phase since this process started."""
    return dict(_totals)


@contextmanager
def measured():
    """Collect the phases of the block alone: yields a dict filled with their seconds when the block
    ends (the process's running totals are kept as they were, plus the block's)."""
    before = totals()
    out: dict[str, float] = {}
    try:
        yield out
    finally:
        after = totals()
        out.update({k: v - before.get(k, 0.0) for k, v in after.items() if v - before.get(k, 0.0) > 0})
