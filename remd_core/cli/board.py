"""``remd board RUN``: TensorBoard on 127.0.0.1 over a run or sweep folder's training scalars."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from pathlib import Path

from ..paths import display_path, outputs_dir
from .checks import UsageError


BOARD_PORT = 6006
"""TensorBoard's usual port; ``remd board`` takes a free one when it is in use."""


def board_folder(run: str) -> Path:
    """The folder ``remd board RUN`` shows: ``RUN`` as a path to a folder, else the folder of that
    name under outputs/, else the newest folder under outputs/ whose name starts with ``RUN``."""
    given = Path(run).expanduser()
    if given.is_dir():
        return given
    root = outputs_dir()
    if (root / run).is_dir():
        return root / run
    matches = sorted((d for d in root.iterdir() if d.is_dir() and d.name.startswith(run)),
                     key=lambda d: d.stat().st_mtime, reverse=True)
    if matches:
        if len(matches) > 1:
            print(f"{len(matches)} runs start with {run!r}; showing the newest, {matches[0].name} (the others: "
                  f"{', '.join(d.name for d in matches[1:6])}{' ...' if len(matches) > 6 else ''})")
        return matches[0]
    recent = sorted((d for d in root.iterdir() if d.is_dir() and d.name != "cache"),
                    key=lambda d: d.stat().st_mtime, reverse=True)[:5]
    raise UsageError(run, f"no run folder {run!r} under {display_path(root)}"
                     + (f"; the newest: {', '.join(d.name for d in recent)}" if recent else ""))


def free_port(preferred: int) -> int:
    """``preferred`` when nothing listens on it at 127.0.0.1, else a port the system hands out."""
    for port in (preferred, 0):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return probe.getsockname()[1]
    raise OSError("no free port on 127.0.0.1")


def cmd_board(args) -> int:
    from importlib.util import find_spec

    folder = board_folder(args.run)
    runs = sorted({p.parent for p in folder.rglob("events.out.tfevents.*")})
    if not runs:
        raise UsageError(args.run, f"{display_path(folder)} holds no TensorBoard event files (fits "
                         "write them to a tensorboard/ folder of their run; runs from before that wrote none)")
    if find_spec("tensorboard") is None:
        raise UsageError("board", "TensorBoard is not installed in this environment: pip install tensorboard")
    port = args.port if args.port is not None else free_port(BOARD_PORT)
    command = [sys.executable, "-m", "tensorboard.main", "--logdir", str(folder), "--host", "127.0.0.1",
               "--port", str(port)]
    print(f"TensorBoard over {display_path(folder)} ({len(runs)} run(s) with scalars): http://127.0.0.1:{port}/"
          "  (Ctrl-C stops it)", flush=True)
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL if args.quiet else None,
                              stderr=subprocess.DEVNULL if args.quiet else None)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a terminated `remd board` stops its server too
    try:
        return server.wait()
    except KeyboardInterrupt:  # Ctrl-C reaches TensorBoard too
        print("TensorBoard stopped", flush=True)
        return 0
    finally:
        if server.poll() is None:
            server.terminate()
        server.wait()
