"""What the machine has: a CUDA device or the reason there is none, the Python packages the check imports
(installed from carried wheels where the GPU machine's Python lacks them), and the device's description.

The lent GPU machines have no registry: their ``python3`` holds a CUDA build of torch and most of
``remd_core``'s dependencies, and ``make gpu-wheels`` (run here, where PyPI is reached) downloads the rest
as wheels into ``outputs/gpu-wheels`` (``benchmarks/gpucheck/wheels.txt``; ``$REMD_GPU_WHEELS`` names another
folder), which the device call carries."""

from __future__ import annotations

import importlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
WHEELS = Path(os.environ.get("REMD_GPU_WHEELS") or REPO_ROOT / "outputs" / "gpu-wheels")
SITE = Path(tempfile.gettempdir()) / "remd-gpu-check-site"
NEEDED = ("remd_core.training", "remd_core.experiments.recipes", "remd_core.data.manifest", "ot", "dask",
          "distributed", "nbformat", "pytest")
"""What the parts import that a GPU machine's Python may lack: the trainer and the recipes (POT through the
RIMA model), the Dask executor and nbformat that the CUDA-marked executor test imports, pytest."""


def cuda_problem(device: str = "cuda") -> str | None:
    """Why ``device`` cannot run here, in one line; None when it can (and for ``cpu``)."""
    if not device.startswith("cuda"):
        return None
    try:
        import torch
    except ImportError as err:
        return f"{Path(sys.executable).name} cannot import torch ({err}); on a GPU machine use the python3 that holds it"
    smi = shutil.which("nvidia-smi")
    driver = "" if smi else " and nvidia-smi is not on the PATH (no NVIDIA driver)"
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is a CPU-only build (torch.version.cuda is None){driver}"
    if not torch.cuda.is_available():
        hidden = os.environ.get("CUDA_VISIBLE_DEVICES")
        where = f"; CUDA_VISIBLE_DEVICES={hidden!r}" if hidden is not None else ""
        return (f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no GPU: torch.cuda.is_available() is "
                f"False{driver}{where}")
    index = torch.device(device).index or 0
    if index >= torch.cuda.device_count():
        return f"{device} does not exist: torch sees {torch.cuda.device_count()} GPU(s)"
    return None


def missing_modules(modules=NEEDED) -> list[str]:
    """The modules of ``modules`` that do not import here, each with the error's first line."""
    out = []
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as err:  # noqa: BLE001 - any failure to import is what we report
            out.append(f"{name} ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})")
    return out


def install_wheels(wheels: Path = WHEELS, site: Path = SITE, timeout: float = 60) -> dict:
    """Install every wheel in ``wheels`` into ``site`` (no index, no dependencies: the list is complete)
    and put ``site`` first on this process's path and on ``PYTHONPATH`` for the parts."""
    files = sorted(str(p) for p in Path(wheels).glob("*.whl"))
    if not files:
        return {"installed": 0, "from": str(wheels), "note": "no wheels there"}
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                    "--no-cache-dir", "--upgrade", "--disable-pip-version-check", "--target", str(site), *files],
                   check=True, timeout=timeout, capture_output=True, text=True)
    use_site(site)
    return {"installed": len(files), "from": str(wheels), "into": str(site), "seconds": time.perf_counter() - start}


def use_site(site: Path = SITE) -> None:
    if str(site) not in sys.path:
        sys.path.insert(0, str(site))
    importlib.invalidate_caches()
    os.environ["PYTHONPATH"] = os.pathsep.join([str(site), *filter(None, [os.environ.get("PYTHONPATH")])])


def part_environment() -> dict:
    """The environment of a part's process: the repository importable without an install (the GPU
    machine has no venv), carried wheels' folder first when it was used, output unbuffered."""
    env = dict(os.environ)
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if str(REPO_ROOT) not in paths:
        paths.append(str(REPO_ROOT))
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def device_info(device: str) -> dict:
    """The device's name, torch, CUDA, cuDNN and driver versions, the host."""
    import torch

    info = {"device": device, "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
            "cpus": os.cpu_count(), "host_cpu": platform.processor() or platform.machine()}
    if device.startswith("cuda"):
        dev = torch.device(device)
        props = torch.cuda.get_device_properties(dev)
        info.update(device_name=torch.cuda.get_device_name(dev), memory_gib=round(props.total_memory / 2**30, 1),
                    multiprocessors=props.multi_processor_count, capability=f"{props.major}.{props.minor}",
                    cudnn=torch.backends.cudnn.version(), driver=_driver_version())
    else:
        info["device_name"] = _cpu_name()
    return info


def _driver_version() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.TimeoutExpired):
        return None


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor() or platform.machine()
    return f"{model}, {os.cpu_count()} cores"
