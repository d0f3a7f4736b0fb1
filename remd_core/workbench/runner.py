"""Headless execution of the ordered notebooks with papermill (``remd run``).

Each notebook declares its parameters in one cell tagged ``parameters`` (flat UPPER_CASE
literals). A profile (``smoke`` for CI, ``cpu`` for this machine, ``gpu`` for the paper's scale)
sets the parameters a notebook declares; overrides must name declared parameters: an unknown name
is an error here, where papermill would only warn. Executed notebooks go to ``outputs/<run>/``
with the run's provenance.
"""

from __future__ import annotations

import ast
import json
import os
import tempfile
import threading
import time
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from ..config import ConfigError
from ..files import read_json, write_json
from .. import progress as progress_lines
from ..paths import REPO_ROOT, display_path, outputs_dir
from ..experiments.provenance import write as write_provenance
# the profiles and the library settings' defaults live in ``profiles``; their names stay importable from here
from .profiles import (DATA_KNOBS, LIBRARY_SETTINGS, PROFILES, fill_defaults, library_default,  # noqa: F401
                       profile_values)

NOTEBOOK_DIR = REPO_ROOT / "notebooks"


def ordered_notebooks(folder: Path = NOTEBOOK_DIR) -> list[Path]:
    """Notebooks named ``NN_name.ipynb``, in order."""
    return sorted(p for p in Path(folder).glob("[0-9][0-9]_*.ipynb"))


def notebook_parameters(path: Path) -> dict:
    """The literal assignments of the cell tagged ``parameters``."""
    notebook = json.loads(Path(path).read_text())
    cells = [c for c in notebook["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(cells) != 1:
        raise ConfigError(f"{path}: expected exactly one cell tagged 'parameters', found {len(cells)}")
    source = "".join(cells[0]["source"])
    values = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            values[node.targets[0].id] = ast.literal_eval(node.value)
    return values


def notebook_defaults(path: Path) -> dict:
    """The declared parameters, with ``None`` for a library setting replaced by its library default
    (profile-dependent values stay ``None``): what a grid compares a cell's values against."""
    return {k: library_default(k) if v is None and k in LIBRARY_SETTINGS else v
            for k, v in notebook_parameters(path).items()}


def resolve_parameters(path: Path, profile: str, overrides: dict, run_dir: Path) -> dict:
    values = profile_values(profile)
    declared = notebook_parameters(path)
    unknown = sorted(set(overrides) - set(declared))
    if unknown:
        raise ConfigError(f"{path.name}: unknown parameter(s) {unknown}; it declares {sorted(declared)}")
    params = {k: v for k, v in values.items() if k in declared}
    params.update(overrides)
    for key, value in (("PROFILE", profile), ("RUN_DIR", str(run_dir))):
        if key in declared:
            params[key] = value
    return params


def kernel_manager(socket_dir: str, log: Path | None = None) -> type:
    """A kernel manager class for one execution: the kernel talks to papermill over Unix sockets in
    ``socket_dir`` (IPC transport), not over TCP ports. Kernels started at once on one machine
    choose their TCP ports independently and can collide (nteract/papermill#511: a kernel that never
    answers, or one cell's messages in another's notebook); socket files are private to the
    execution, and no port is opened to the network. The kernel's own stdout and stderr (warnings,
    progress bars) go to ``log`` when given."""
    from jupyter_client.manager import AsyncKernelManager
    from traitlets import default

    class CellKernelManager(AsyncKernelManager):
        @default("transport")
        def _default_transport(self):
            return "ipc"

        @default("ip")
        def _default_ip(self):
            return os.path.join(socket_dir, "kernel")

        async def _async_launch_kernel(self, kernel_cmd, **kw):
            if log is not None:
                handle = open(log, "ab")  # the kernel process holds it; closed here once it is started
                kw.update(stdout=handle, stderr=handle)
                try:
                    await super()._async_launch_kernel(kernel_cmd, **kw)
                finally:
                    handle.close()
            else:
                await super()._async_launch_kernel(kernel_cmd, **kw)

    return CellKernelManager


def execute_notebook(path: Path, output: Path, params: dict, kernel_log: Path | None = None,
                     progress: bool = False) -> None:
    """Execute ``path`` with papermill into ``output``. Papermill saves the notebook as it goes,
    under ``<name>.running.ipynb``; it becomes ``output`` when the execution ends (a failed one
    included, with its error), so a file under the final name is always a finished execution.
    The kernel runs on private Unix sockets (``kernel_manager``); ``progress`` shows a bar of the
    notebook's cells done."""
    import papermill

    running = output.with_name(f"{output.stem}.running.ipynb")
    # short: a Unix socket path must fit in about 100 characters
    with tempfile.TemporaryDirectory(prefix="remd-k") as sockets:
        try:
            papermill.execute_notebook(str(path), str(running), parameters=params, kernel_name="python3",
                                       cwd=str(path.parent), progress_bar=progress,
                                       kernel_manager_class=kernel_manager(sockets, kernel_log))
        except papermill.PapermillExecutionError:
            running.replace(output)
            raise
    running.replace(output)


@contextmanager
def followed(path: Path, prefix: str, show: bool = True, every: float = 0.5):
    """Inside the block, the kernels (and the sweep workers they start) append progress lines to
    ``path`` (``progress.report``: every epoch of every training run, every finished sweep cell);
    a thread prints each new line with ``prefix`` as it comes, so the terminal says which notebook,
    which run and which epoch."""
    before = os.environ.get(progress_lines.ENV)
    os.environ[progress_lines.ENV] = str(path)  # inherited by the kernel and by its Dask workers
    path.touch()
    done = threading.Event()

    def follow():
        with open(path) as handle:
            handle.seek(0, os.SEEK_END)
            while True:
                stopping = done.is_set()
                for line in handle.readlines():
                    print(f"{prefix}{line.rstrip()}", flush=True)
                if stopping:
                    return
                done.wait(every)

    thread = threading.Thread(target=follow, daemon=True)
    if show:
        thread.start()
    try:
        yield
    finally:
        done.set()
        if show:
            thread.join()
        if before is None:
            os.environ.pop(progress_lines.ENV, None)
        else:
            os.environ[progress_lines.ENV] = before


def run_notebooks(profile: str = "cpu", run: str | None = None, names: list[str] | None = None,
                  overrides: dict | None = None, resume: bool = False, progress: bool = True) -> Path:
    """Execute the ordered notebooks (or ``names``) at ``profile`` into ``outputs/<run>/``.
    ``resume=True`` continues run folder ``run``: the notebooks it executed without error are
    skipped (``run.json`` lists them), the others run; the profile and overrides must be the run's.
    ``progress`` shows each notebook's cells done as it runs."""
    notebooks = ordered_notebooks()
    if names:
        chosen = [p for p in notebooks if p.stem in names or p.stem.split("_", 1)[0] in names]
        missing = sorted(set(names) - {p.stem for p in chosen} - {p.stem.split("_", 1)[0] for p in chosen})
        if missing:
            raise ConfigError(f"no notebook named {missing}; there are {[p.stem for p in notebooks]}")
        notebooks = chosen
    if resume and not run:
        raise ConfigError("resuming needs the run folder to continue (--run NAME)")
    folder = outputs_dir() / (run or f"notebooks-{profile}-{datetime.now():%Y%m%d-%H%M%S}")
    settings = {"profile": profile, "overrides": overrides or {}}
    finished = []
    if resume:
        before = read_json(folder / "run.json", required=("profile", "overrides", "finished"))
        if before is None:
            raise ConfigError(f"nothing to resume in {display_path(folder)}: it holds no run of `remd run`")
        finished = before.pop("finished")
        if before != settings:
            raise ConfigError(f"{display_path(folder)} was run with {before}, not {settings}; resume it with those")
    folder.mkdir(parents=True, exist_ok=True)
    plans = {p: resolve_parameters(p, profile, overrides or {}, folder) for p in notebooks}  # fail before running
    write_json(folder / "run.json", {**settings, "finished": finished})
    write_provenance(folder, {"profile": profile, "notebooks": [p.name for p in notebooks], "overrides": overrides})
    for i, (path, params) in enumerate(plans.items(), 1):
        if path.name in finished:
            print(f"[{i}/{len(plans)}] {path.name}: executed earlier in this run, skipped", flush=True)
            continue
        # whole lines: a kernel's warnings on the same line would be filtered out with it (`make run`)
        print(f"[{i}/{len(plans)}] {path.name} at the {profile} profile ...", flush=True)
        start = time.perf_counter()
        with followed(folder / "progress.log", f"[{i}/{len(plans)}]   ", show=progress):
            execute_notebook(path, folder / path.name, params, progress=progress)
        print(f"[{i}/{len(plans)}] {path.name} done in {time.perf_counter() - start:.0f} s", flush=True)
        finished.append(path.name)
        write_json(folder / "run.json", {**settings, "finished": finished})
    return folder
