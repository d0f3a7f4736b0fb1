"""The committed notebooks carry the outputs of a ``smoke`` run, which nbval compares in CI.

``refresh`` executes a notebook in place at the ``smoke`` profile (one thread, outputs to a
temporary folder), strips what churns between runs (widget views whose state is not saved, memory
addresses), numbers the code cells 1, 2, 3, ... (nbval needs counts on cells with outputs; a fixed
numbering never churns) and stamps the notebook with a hash of its code cells. ``problems`` lists
what is wrong with a committed notebook: code changed since its outputs were made (stale), counts
out of sequence, memory addresses or machine paths in outputs. ``make notebooks`` refreshes them
all; ``tests/notebooks/test_notebooks.py`` fails on any problem.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path

import nbformat

STAMP = "remd"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")
MACHINE_PATH = re.compile(r"(?<![\w.])/(?:tmp|home|root|work|Users|var/folders|private)/[^\s'\"<>]*")


def committed_notebooks() -> list[Path]:
    """The notebooks whose outputs are committed: the ordered ones and the sweep's cell notebooks."""
    from .runner import NOTEBOOK_DIR, ordered_notebooks

    return ordered_notebooks() + sorted((NOTEBOOK_DIR / "cells").glob("*.ipynb"))


def source_hash(nb) -> str:
    """SHA-256 of the code cells' sources, in order: what the outputs were computed from."""
    digest = hashlib.sha256()
    for cell in nb.cells:
        if cell.cell_type == "code":
            digest.update(cell.source.encode())
            digest.update(b"\0")
    return digest.hexdigest()


def _texts(output) -> list[str]:
    if output.get("output_type") == "stream":
        return [output.get("text", "")]
    if output.get("output_type") == "error":
        return ["\n".join(output.get("traceback", []))]
    data = output.get("data", {})
    return [v if isinstance(v, str) else "".join(v) for k, v in data.items() if k.startswith("text/")]


def clean(nb) -> None:
    """Remove run-to-run churn in place."""
    nb.metadata.pop("widgets", None)
    nb.metadata.pop("papermill", None)
    count = 0
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
        cell.metadata.pop("papermill", None)
        if cell.cell_type != "code":
            continue
        count += 1
        cell.execution_count = count
        kept = []
        for output in cell.outputs:
            if "execution_count" in output:
                output.execution_count = count
            data = output.get("data")
            if data is not None:
                if WIDGET_VIEW in data:
                    del data[WIDGET_VIEW]  # its state is not saved: Lab would show an error
                    if set(data) <= {"text/plain"}:
                        continue  # nothing left but the widget's name; a figure it carries stays
                for key, value in list(data.items()):
                    if key.startswith("text/") and isinstance(value, str):
                        data[key] = ADDRESS.sub(" at 0x…", value)
            if output.get("output_type") == "stream" and "\r" in output.get("text", ""):
                continue  # progress bars redrawn in place: volatile and unreadable once saved
            kept.append(output)
        cell.outputs = kept


@contextmanager
def _smoke_environment(outputs: Path):
    saved = {k: os.environ.get(k) for k in ("REMD_PROFILE", "REMD_OUTPUTS", "OMP_NUM_THREADS")}
    os.environ.update(REMD_PROFILE="smoke", REMD_OUTPUTS=str(outputs), OMP_NUM_THREADS="1")
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def refresh(path: Path, timeout: int = 900) -> None:
    """Execute ``path`` in place at the smoke profile, clean it and stamp it."""
    from nbclient import NotebookClient

    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    from .runner import kernel_manager

    with (tempfile.TemporaryDirectory() as outputs, tempfile.TemporaryDirectory(prefix="remd-k") as sockets,
          _smoke_environment(Path(outputs))):
        NotebookClient(nb, kernel_name="python3", timeout=timeout, kernel_manager_class=kernel_manager(sockets),
                       resources={"metadata": {"path": str(path.parent)}}).execute()
    clean(nb)
    nb.metadata[STAMP] = {"profile": "smoke", "source_hash": source_hash(nb)}
    nbformat.write(nb, path)


def problems(path: Path) -> list[str]:
    """What is wrong with a committed notebook (empty when it is fit to commit)."""
    nb = nbformat.read(path, as_version=4)
    found = []
    stamp = nb.metadata.get(STAMP, {})
    if stamp.get("source_hash") != source_hash(nb):
        found.append("outputs are stale: code cells changed since the last `make notebooks`")
    count = 0
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        count += 1
        if cell.execution_count != count:
            found.append(f"cell {i}: execution count {cell.execution_count}, expected {count}")
        for output in cell.outputs:
            if output.get("output_type") == "error":
                found.append(f"cell {i}: an error output")
            for text in _texts(output):
                if ADDRESS.search(text):
                    found.append(f"cell {i}: a memory address in the output")
                if match := MACHINE_PATH.search(text):
                    found.append(f"cell {i}: a machine path in the output ({match.group(0)[:60]})")
    return found


def main(argv: list[str] | None = None) -> int:
    """``python -m remd_core.workbench.refresh [NAME ...]``: refresh the named committed notebooks
    (default: all of them, the ordered ones and the sweep's cell notebook)."""
    import sys

    from .runner import NOTEBOOK_DIR

    names = sys.argv[1:] if argv is None else argv
    paths = committed_notebooks()
    if names:
        paths = [p for p in paths if p.stem in names or p.stem.split("_", 1)[0] in names]
    for path in paths:
        print(f"refreshing {path.relative_to(NOTEBOOK_DIR.parent)} at the smoke profile ...", flush=True)
        refresh(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
