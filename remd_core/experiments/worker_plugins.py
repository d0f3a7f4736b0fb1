"""Dask worker plugins of the embedded cluster (imported only where a cluster starts: ``distributed``
takes a second to import)."""

from __future__ import annotations

import signal

from distributed.diagnostics.plugin import WorkerPlugin


class IgnoreInterrupts(WorkerPlugin):
    """Ctrl-C in the terminal reaches every process of the command's group; the workers leave it to
    the command, which closes them (``DaskExecutor.close``), instead of each printing its own
    shutdown."""

    name = "remd-ignore-interrupts"

    def setup(self, worker):
        try:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        except ValueError:  # not the worker process's main thread: nothing to change there
            pass
