"""Progress lines from kernels and workers reach the terminal of `remd run`."""

import subprocess
import sys

from remd_core import progress
from remd_core.workbench.runner import followed


def test_lines_reported_by_other_processes_are_printed_as_they_come(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(progress.ENV, raising=False)
    progress.report("nowhere to go: nothing happens")
    log = tmp_path / "progress.log"
    with followed(log, "[2/7]   ", every=0.05):
        code = "from remd_core.progress import report; report('joint oct seed 0: epoch 1/8, validation R2 0.123')"
        subprocess.run([sys.executable, "-c", code], check=True)  # a kernel: it inherits the variable
        progress.report("sweep mini [1/2] cell: test R2 0.5\n")
    assert capsys.readouterr().out.splitlines() == ["[2/7]   joint oct seed 0: epoch 1/8, validation R2 0.123",
                                                    "[2/7]   sweep mini [1/2] cell: test R2 0.5"]
    assert progress.ENV not in __import__("os").environ  # restored
