"""``remd board RUN``: finds a run or sweep folder under outputs/ (by name, by the start of its name, or
by path), serves TensorBoard over it on 127.0.0.1 and prints the URL; a run that does not exist or holds
no event files is a one-line error with status 2."""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from remd_core.cli.board import free_port

pytest.importorskip("tensorboard")


def remd(args, outputs, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "remd_core", "board", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "REMD_OUTPUTS": str(outputs)},
                            **kwargs)


def write_run(folder, value):
    from remd_core.training.board import RunBoard

    board = RunBoard(folder)
    board.epoch(1, [{"step": 0, "epoch": 1, "loss_fused": value}], {"val_r2": 0.5})
    board.close()


def test_board_serves_a_sweep_folder_on_localhost(tmp_path):
    sweep = tmp_path / "sweep-testbed"
    write_run(sweep / "cells" / "a__naive-fusion__seed0" / "tensorboard", 1.0)
    write_run(sweep / "cells" / "a__re-m3dr__seed0" / "tensorboard", 2.0)
    port = free_port(0)
    server = remd(["sweep-test", "--port", str(port), "--quiet"], tmp_path)
    try:
        line = server.stdout.readline()
        url = f"http://127.0.0.1:{port}/"
        assert url in line and "outputs/sweep-testbed" in line and "2 run(s)" in line
        runs, deadline = None, time.monotonic() + 60
        while runs is None and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(url + "data/runs", timeout=5) as response:
                    runs = json.loads(response.read())
            except OSError:
                time.sleep(0.5)
        assert sorted(runs) == ["cells/a__naive-fusion__seed0/tensorboard", "cells/a__re-m3dr__seed0/tensorboard"]
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
    with pytest.raises(OSError):  # the server went with the command
        urllib.request.urlopen(f"http://127.0.0.1:{port}/data/runs", timeout=2)


@pytest.mark.parametrize("make, name, message", [
    (lambda root: None, "nope", "no run folder 'nope'"),
    (lambda root: (root / "compare-old").mkdir(), "compare-old", "holds no TensorBoard event files"),
])
def test_a_missing_run_or_one_without_event_files_is_a_one_line_error(tmp_path, make, name, message):
    make(tmp_path)
    out = remd([name], tmp_path)
    stdout, stderr = out.communicate(timeout=60)
    assert out.returncode == 2 and message in stderr and stderr.count("\n") == 1 and "Traceback" not in stderr
