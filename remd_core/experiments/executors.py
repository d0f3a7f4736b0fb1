"""Where the cells of a grid run: in this process (``InlineExecutor``: ``remd compare``, whose cells
share one data set in memory) or on Dask distributed (``DaskExecutor``: ``remd sweep``), which is the
engine from a laptop to a cluster, so that the workbench has no scheduler of its own:

- embedded (default): a ``LocalCluster`` of worker processes sized to the machine, one cell a worker
  at a time, each cell's kernel limited to its share of the cores (oversubscribed torch threads were
  measured 10x slower on our 2-core machines). Its scheduler and dashboard listen on loopback only:
  a Dask scheduler runs whatever its clients send it.
- ``scheduler="tls://host:8786"`` (or ``$REMD_SCHEDULER``): submit to an existing cluster. With
  certificates (``tls``, or ``$REMD_TLS_CA``, ``$REMD_TLS_CERT``, ``$REMD_TLS_KEY``) the connection is
  TLS (``distributed.security.Security``); a plain ``tcp://`` address off this machine is warned about.
- ``slurm="gpu"`` (a profile ``clusters/<name>.yaml`` or a path): a ``dask_jobqueue.SLURMCluster``
  whose jobs each run one worker of one cell at a time; scheduler and workers talk over TLS with
  temporary certificates, written for the workers to a folder on the shared file system. The cluster
  keeps ``jobs`` jobs (``adapt`` with that minimum and maximum): a job that ends (``scancel``, its
  walltime, a node lost) is submitted again once the scheduler has missed its worker for
  ``distributed.deploy.lost-worker-timeout`` (15 s), and its cell resumes on the new worker.

Cells that need a GPU (``gpu=True``) ask for the resource ``GPU=1``; workers that have one advertise
it (the embedded cluster: one worker per visible GPU, each pinned to its own device; Slurm: every job
gets ``--gres=gpu:<n>`` and advertises ``GPU=<n>``). A worker process that dies while running a cell
(killed, out of memory) is replaced and the cell runs again, resuming from its checkpoint, at most
``WORKER_RETRIES`` more times (the scheduler's ``allowed-failures``; on a cluster of someone else's,
its own setting holds).
"""

from __future__ import annotations

import logging
import os
import warnings
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..config import ConfigError, from_dict
from ..paths import REPO_ROOT

WORKER_RETRIES = 2
CLUSTER_DIR = REPO_ROOT / "clusters"
LOOPBACK = "127.0.0.1"
# A cell's worker only waits on its kernel; on a machine whose cores the kernels use, Dask's own
# periodic work takes time from them: every server's event-loop tick check (every 20 ms), the
# workers' sampling profiler (every 10 ms) and memory polls. Measured on 2 cores: an idle embedded
# cluster of 2 workers used 0.10 CPU s a second with Dask's defaults, 0.02 with these.
QUIET_CLUSTER = {"distributed.admin.tick.interval": "1s", "distributed.worker.profile.enabled": False,
                 "distributed.worker.memory.monitor-interval": "1s", "distributed.admin.system-monitor.interval": "2s"}
SCHEDULER_ENV, TLS_ENV = "REMD_SCHEDULER", ("REMD_TLS_CA", "REMD_TLS_CERT", "REMD_TLS_KEY")


class InlineExecutor:
    """Runs each task in this process, in order, when its result is asked for."""

    slots = 1
    description = "in this process"

    def run(self, tasks):
        for task, fn, args in tasks:
            future = Future()
            try:
                future.set_result(fn(*args))
            except Exception as err:  # the cell's failure; KeyboardInterrupt stops the grid
                future.set_exception(err)
            yield task, future

    def close(self):
        pass


@dataclass
class SlurmProfile:
    """A Slurm cluster for the sweep's cells (``clusters/*.yaml``). ``jobs`` workers, each a Slurm
    job of ``cores`` CPUs, ``gpus`` GPUs and ``memory``, for ``walltime``; ``shared_dir`` is a folder
    that the submitting machine and the compute nodes both see (the workers' TLS certificates go
    there); ``python`` the interpreter on the nodes (``None``: the one that runs ``remd``, for nodes
    that share this machine's file system); ``interface`` the network interface the scheduler and
    workers listen on (the nodes must reach it)."""

    partition: str
    jobs: int = 1
    gpus: int = 0
    cores: int = 4
    memory: str = "16GB"
    walltime: str = "04:00:00"
    account: str | None = None
    shared_dir: str = "~/.remd/dask"
    python: str | None = "python"
    interface: str | None = None
    job_extra: list[str] = field(default_factory=list)

    def __post_init__(self):
        if self.jobs < 1 or self.cores < 1 or self.gpus < 0:
            raise ConfigError(f"a Slurm profile needs jobs >= 1, cores >= 1, gpus >= 0; got {self.jobs}, {self.cores}, "
                              f"{self.gpus}")


def slurm_profile(name: str | Path) -> SlurmProfile:
    """The profile ``name``: a YAML file, or ``clusters/<name>.yaml``; strict (unknown keys named)."""
    path = Path(name)
    if not path.is_file():
        path = CLUSTER_DIR / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in CLUSTER_DIR.glob("*.yaml"))
        raise ConfigError(f"no Slurm profile {name!r}: neither a file nor one of clusters/ {known}")
    return from_dict(SlurmProfile, yaml.safe_load(path.read_text()) or {}, context=str(path))


def slurm_cluster(profile: SlurmProfile):
    """A ``dask_jobqueue.SLURMCluster`` for ``profile`` (no job is submitted until it is scaled)."""
    from dask_jobqueue import SLURMCluster
    from distributed.security import Security

    shared = Path(profile.shared_dir).expanduser()
    shared.mkdir(parents=True, exist_ok=True)
    return SLURMCluster(
        queue=profile.partition, account=profile.account, cores=1, processes=1, job_cpu=profile.cores,
        memory=profile.memory, walltime=profile.walltime, python=profile.python, interface=profile.interface,
        job_extra_directives=[*([f"--gres=gpu:{profile.gpus}"] if profile.gpus else []), *profile.job_extra],
        worker_extra_args=["--resources", f"GPU={profile.gpus}"] if profile.gpus else [],
        job_script_prologue=[f"export OMP_NUM_THREADS={profile.cores} MKL_NUM_THREADS={profile.cores}"],
        security=Security.temporary(), shared_temp_directory=str(shared),
        scheduler_options={"dashboard_address": "127.0.0.1:0"})  # the dashboard for this machine only (tunnel to see it)


def tls_security(tls: dict | None = None):
    """``Security`` from ``tls`` (``ca``, ``cert``, ``key`` file paths) or the ``$REMD_TLS_*``
    variables; ``None`` when neither names any certificate."""
    from distributed.security import Security

    tls = tls or {k: os.environ[v] for k, v in zip(("ca", "cert", "key"), TLS_ENV) if os.environ.get(v)}
    if not tls:
        return None
    missing = [k for k in ("ca", "cert", "key") if not tls.get(k)]
    if missing:
        raise ConfigError(f"TLS needs a CA file, a certificate and a key; missing: {missing}")
    absent = [str(tls[k]) for k in ("ca", "cert", "key") if not Path(tls[k]).is_file()]
    if absent:
        raise ConfigError(f"TLS certificate file(s) not found: {absent}")
    return Security(tls_ca_file=str(tls["ca"]), tls_client_cert=str(tls["cert"]), tls_client_key=str(tls["key"]),
                    require_encryption=True)


def warn_if_open(address: str, security) -> None:
    """Warn about a scheduler off this machine reached without TLS."""
    host = address.split("://")[-1].rsplit(":", 1)[0].strip("[]")
    if security is None and host not in (LOOPBACK, "localhost", "::1"):
        warnings.warn(f"connecting to {address} without TLS: anyone who can reach that scheduler can run code on its "
                      "workers; pass certificates (see the README)", stacklevel=3)


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def kernel_threads(workers: int) -> int:
    """Each cell's share of the cores (at least 1); an ``OMP_NUM_THREADS`` already set caps it."""
    share = max(1, cores() // workers)
    cap = os.environ.get("OMP_NUM_THREADS", "")
    return min(share, int(cap)) if cap.isdigit() and int(cap) > 0 else share


def pin_gpu() -> None:
    """On a worker of the embedded cluster with ``REMD_PIN_GPU`` set: show the cell's kernel only
    the GPU of this worker's index, so that workers never share a device."""
    if os.environ.get("REMD_PIN_GPU") != "1":
        return
    from distributed import get_worker

    os.environ["CUDA_VISIBLE_DEVICES"] = str(get_worker().name)


def _stop_descendants(grace: float = 2.0) -> None:
    """Stop this process's workers and their kernels at once: each kernel first gets SIGINT (the
    running cell raises KeyboardInterrupt, so a file being written is removed whole, never left
    half-written), then, after ``grace`` seconds, every descendant still alive is killed."""
    import signal

    import psutil

    descendants = psutil.Process().children(recursive=True)
    kernels = [p for p in descendants if _is_kernel(p)]
    for process in kernels:
        try:
            process.send_signal(signal.SIGINT)
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(kernels, timeout=grace)  # a kernel stays up after an interrupted cell: the wait ends at grace
    for process in descendants:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass


def _is_kernel(process) -> bool:
    import psutil

    try:
        return "ipykernel_launcher" in " ".join(process.cmdline())
    except psutil.Error:
        return False


class DaskExecutor:
    """Cells as Dask tasks: one per cell, never run twice at once (``pure=False``), a GPU cell
    asking for ``GPU=1``. Closing it closes the client and the cluster it started (if any)."""

    def __init__(self, client, cluster=None, gpu: bool = False, description: str = ""):
        self.client, self.cluster, self.gpu, self.description = client, cluster, gpu, description

    @property
    def slots(self) -> int:
        workers = self.client.scheduler_info(n_workers=-1).get("workers", {}) if self.client.status == "running" else {}
        if self.gpu:
            return max(1, int(sum(w.get("resources", {}).get("GPU", 0) for w in workers.values())))
        return max(1, sum(w.get("nthreads", 1) for w in workers.values()))

    def run(self, tasks):
        from distributed import as_completed

        futures = {}
        for task, fn, args in tasks:
            future = self.client.submit(fn, *args, key=f"cell-{task.key}", pure=False,
                                        resources={"GPU": 1} if self.gpu else None)
            futures[future] = task
        for future in as_completed(futures):
            yield futures[future], future

    def close(self, interrupted: bool = False):
        """Close the client and the cluster it started. ``interrupted`` (Ctrl-C): the embedded
        cluster's worker processes and their kernels are killed at once instead of finishing the
        cells they run, which resume from their checkpoints on a rerun."""
        from distributed import LocalCluster

        if interrupted and isinstance(self.cluster, LocalCluster):
            _stop_descendants()
        try:
            self.client.close(timeout=10 if interrupted else None) if interrupted else self.client.close()
            if self.cluster is not None:
                self.cluster.close(timeout=10) if interrupted else self.cluster.close()
        except Exception:
            if not interrupted:
                raise


def open_dask(workers: int | None = None, scheduler: str | None = None, slurm: str | Path | None = None,
              gpu: bool = False, tls: dict | None = None, cells: int = 1, log=print) -> DaskExecutor:
    """A Dask executor (see the module docstring): an existing cluster at ``scheduler`` (or
    ``$REMD_SCHEDULER``), a Slurm cluster of profile ``slurm``, else an embedded ``LocalCluster`` of
    ``workers`` processes (default: the cores, at most ``cells``; with ``gpu``: one per GPU)."""
    import dask
    from distributed import Client, LocalCluster

    scheduler = scheduler or os.environ.get(SCHEDULER_ENV) or None
    if scheduler and slurm:
        raise ConfigError("give a scheduler address or a Slurm profile, not both")
    if workers is not None and workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}")
    if scheduler:
        security = tls_security(tls)
        warn_if_open(scheduler, security)
        client = Client(scheduler, security=security)
        log(f"Dask: cells go to the cluster at {scheduler}; dashboard {client.dashboard_link}")
        return DaskExecutor(client, gpu=gpu, description=f"the Dask cluster at {scheduler}")
    with dask.config.set({"distributed.scheduler.allowed-failures": WORKER_RETRIES}):
        if slurm:
            profile = slurm_profile(slurm)
            if gpu and not profile.gpus:
                raise ConfigError(f"these cells need a GPU and the Slurm profile {slurm!r} asks for none (gpus: 0)")
            cluster = slurm_cluster(profile)
            # adapt, not scale: scale submits the jobs once, and a job that ends (scancel, walltime) is never
            # replaced; Adaptive notices the lost worker and submits a job in its place (see the docstring)
            cluster.adapt(minimum_jobs=profile.jobs, maximum_jobs=profile.jobs)
            log(f"Dask: Slurm cluster of {profile.jobs} job(s) on partition {profile.partition}, each replaced when it "
                f"ends ({profile.cores} cores, {profile.gpus} GPU(s), {profile.memory}, {profile.walltime}); "
                f"scheduler {cluster.scheduler_address}, dashboard {cluster.dashboard_link}")
            return DaskExecutor(Client(cluster, security=cluster.security), cluster, gpu,
                                f"Slurm partition {profile.partition}")
        gpus = _visible_gpus() if gpu else 0
        if gpu and not gpus:
            raise ConfigError("these cells need a GPU (profile gpu) and this machine has none; run them on a cluster "
                              "(--scheduler or --slurm) or at another profile")
        n = gpus or max(1, min(workers or cores(), cells))
        threads = kernel_threads(n)
        # What a worker process starts with, and so each cell's kernel: its share of the threads (this
        # replaces Dask's default, which also sets a malloc trim threshold meant for the worker's own
        # memory, not for the kernels it starts)
        spawn_env = {name: str(threads) for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
        with dask.config.set({"distributed.nanny.pre-spawn-environ": spawn_env, **QUIET_CLUSTER}):
            cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, host=LOOPBACK,
                                   dashboard_address=f"{LOOPBACK}:0", resources={"GPU": 1} if gpus else None,
                                   env={"REMD_PIN_GPU": "1"} if gpus else None, silence_logs=logging.ERROR)
        client = Client(cluster)
        from .worker_plugins import IgnoreInterrupts

        client.register_plugin(IgnoreInterrupts())
        log(f"Dask: local cluster of {n} worker process(es) x {threads} thread(s) a cell; dashboard "
            f"{cluster.dashboard_link}")
        return DaskExecutor(client, cluster, gpu, f"{n} local worker(s) x {threads} thread(s)")


def _visible_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def dead_worker(error: BaseException) -> bool:
    """Whether ``error`` says the cell's worker died more often than the scheduler allows."""
    return type(error).__name__ == "KilledWorker"
