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

NOTEBOOK_DIR = REPO_ROOT / "notebooks"

# The scale of a run. ``smoke``: seconds per notebook, for nbval in CI. ``cpu``: this 2-core
# machine, the whole pipeline within 15 minutes (fewer epochs and one seed; full-scale tables come
# from `remd sweep`). ``gpu``: the paper's scale (ResNet34, 224 px, 32 B-scans, 3 seeds).
# ``PRECISION`` (``TrainConfig.precision``): the smoke profile trains in float64, so that the outputs
# nbval checks to three decimals come out the same on every processor and thread count (float32
# differs in the third decimal between an Intel and an AMD CPU); the others train as the trainer
# decides ("auto": float32 on CPU, bf16 autocast on CUDA). ``TRAINING`` names the training preset
# (``trainer.TRAINING_PRESETS``): the gpu profile trains with every setting the paper states
# (batch 8, Adam, SMAPE + R^2), the others with the workbench's (batch 16, AdamW, cosine, MSE).
# ``testbed``: the scale at which this machine runs notebook 06's testbed (``sweeps/fusion_fails.yaml``, 288
# cells, 3 seeds): the smallest at which both modalities learn on the default data (each unimodal model's mean
# test R^2 >= 0.3 over 3 seeds), chosen by the measured scan ``sweeps/testbed_scale.yaml`` (docs/testbed.md).
# ``cpu`` is what ``make run`` runs within 15 minutes here (docs/performance.md): 4 B-scans (the scan measured
# the same R^2 as 8 at 60 % of the cost), Table 2 alone in notebook 04 (Table 1's 20 recipes: ``remd sweep``),
# the baseline and the two missing-modality systems in notebook 05 (``METHODS``), the testbed's control in 06.
# ``reduced``: the testbed's earlier scale, where the fundus model learns nothing (test R^2 0.04); kept for
# ``benchmarks/bench_cell.py``'s comparisons. ``TESTBED_GROUPS`` are the testbed's sub-grids notebook 06 runs
# itself when no full sweep is there (None: all): at the cpu and smoke profiles, the positive control and its
# reference, which is what ``make run`` can afford.
PROFILES = {
    "smoke": {"N_EYES": 80, "IMAGE_SIZE": 32, "N_BSCANS": 2, "EPOCHS": 1, "SEEDS": [0], "WIDTH": 0.125,
              "ARCH": "resnet18", "SWEEP_GROUPS": ["table1", "table2", "sensitivity"], "USE_FULL_SWEEPS": False,
              "WORKERS": 2, "PRECISION": "float64", "TRAINING": "workbench", "TESTBED_GROUPS": ["control"]},
    "cpu": {"N_EYES": 700, "IMAGE_SIZE": 64, "N_BSCANS": 4, "EPOCHS": 8, "SEEDS": [0], "WIDTH": 0.25,
            "ARCH": "resnet18", "SWEEP_GROUPS": ["table2"], "USE_FULL_SWEEPS": True, "WORKERS": 2,
            "PRECISION": "auto", "TRAINING": "workbench", "TESTBED_GROUPS": ["control"],
            "METHODS": ["naive-fusion", "simmlm", "rima"]},
    "reduced": {"N_EYES": 400, "IMAGE_SIZE": 32, "N_BSCANS": 2, "EPOCHS": 12, "SEEDS": [0, 1, 2], "WIDTH": 0.125,
                "ARCH": "resnet18", "SWEEP_GROUPS": ["table1", "table2"], "USE_FULL_SWEEPS": True, "WORKERS": 2,
                "PRECISION": "auto", "TRAINING": "workbench", "TESTBED_GROUPS": None},
    "testbed": {"N_EYES": 500, "IMAGE_SIZE": 64, "N_BSCANS": 4, "EPOCHS": 12, "SEEDS": [0, 1, 2], "WIDTH": 0.25,
                "ARCH": "resnet18", "SWEEP_GROUPS": ["table1", "table2"], "USE_FULL_SWEEPS": True, "WORKERS": 2,
                "PRECISION": "auto", "TRAINING": "workbench", "TESTBED_GROUPS": None},
    "gpu": {"N_EYES": 700, "IMAGE_SIZE": 224, "N_BSCANS": 32, "EPOCHS": 100, "SEEDS": [0, 1, 2], "WIDTH": 1.0,
            "ARCH": "resnet34", "SWEEP_GROUPS": ["table1", "table2", "sensitivity"], "USE_FULL_SWEEPS": True,
            "WORKERS": 1, "PRECISION": "auto", "TRAINING": "paper", "TESTBED_GROUPS": None},
}


# Notebook parameters that are library settings. Their home is the config dataclass; a parameter cell
# holds ``None`` for them, and ``setup`` (in a kernel) or ``notebook_defaults`` (for a grid) read the
# dataclass field, so a default is changed in one place. Values a profile sets (``EPOCHS``, ``ARCH``,
# ...) come from the profile first.
LIBRARY_SETTINGS = {
    "BATCH_SIZE": ("train", "batch_size"), "LR": ("train", "lr"), "MARGIN_M0": ("train", "margin_m0"),
    "MARGIN_BETA": ("train", "margin_beta"), "MARGIN_WARMUP": ("train", "margin_warmup"),
    "REFERENCE_RUN_STEPS": ("train", "reference_run_steps"), "PROBE_EVERY": ("train", "probe_every"),
    "GAMMA_BASE": ("sgm", "gamma_base"), "GAMMA_MIN": ("sgm", "gamma_min"), "GAMMA_MAX": ("sgm", "gamma_max"),
    "WINDOW": ("sgm", "window"), "SHARPNESS": ("sgm", "sharpness"),
    # the synthetic generator's mechanism knobs (issue 14's testbed; remd_core.data.synthetic.Config)
    "TAIL": ("data", "tail"), "OCT_DISCORDANCE_DB": ("data", "oct_discordance_db"),
    "FUNDUS_DISCORDANCE_DB": ("data", "fundus_discordance_db"), "REDUNDANCY": ("data", "redundancy"),
    "OCT_FLOOR_UM": ("data", "oct_floor_um"), "LABEL_NOISE": ("data", "label_noise"), "SHORTCUT": ("data", "shortcut"),
    "NULL_MODALITY": ("data", "null_modality"),
}
DATA_KNOBS = {name: field for name, (config, field) in LIBRARY_SETTINGS.items() if config == "data"}


def library_default(name: str, training: str = "workbench"):
    """The default of notebook parameter ``name`` (``LIBRARY_SETTINGS``): its config dataclass's,
    with training preset ``training`` applied to ``TrainConfig``."""
    from ..data.synthetic import Config as SyntheticConfig
    from ..optim.sgm import SGMConfig
    from ..trainer import preset_config

    config, field = LIBRARY_SETTINGS[name]
    defaults = {"train": lambda: preset_config(training), "sgm": SGMConfig, "data": SyntheticConfig}[config]()
    return getattr(defaults, field)


def fill_defaults(params: dict, profile: str) -> dict:
    """``params`` with each ``None`` replaced by the profile's value, else the library default;
    a ``None`` that neither sets is an error naming the parameter."""
    values = PROFILES[profile]
    out = dict(params)
    for name, value in params.items():
        if value is None:
            if name in values:
                out[name] = values[name]
            elif name in LIBRARY_SETTINGS:
                out[name] = library_default(name, params.get("TRAINING") or values["TRAINING"])
            else:
                raise ConfigError(f"parameter {name} is None and neither profile {profile!r} nor the library sets "
                                  f"it; the profile sets {sorted(values)}, the library {sorted(LIBRARY_SETTINGS)}")
    return out


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
    if profile not in PROFILES:
        raise ConfigError(f"unknown profile {profile!r}; known: {sorted(PROFILES)}")
    declared = notebook_parameters(path)
    unknown = sorted(set(overrides) - set(declared))
    if unknown:
        raise ConfigError(f"{path.name}: unknown parameter(s) {unknown}; it declares {sorted(declared)}")
    params = {k: v for k, v in PROFILES[profile].items() if k in declared}
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
