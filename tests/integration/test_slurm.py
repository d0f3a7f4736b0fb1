"""`remd sweep --slurm` on a real Slurm cluster: one node, this machine. The fixture starts munged,
slurmctld and slurmd from a slurm.conf in a temporary folder (partition ``local``, as
``clusters/local-slurm.yaml`` asks for); the sweep runs as a real subprocess, its Dask workers are
Slurm jobs that talk TLS to the scheduler, and the test cancels the job of the worker that is
training a cell: the sweep submits another job and the cell resumes from its checkpoint.

Needs root and the Debian packages ``slurm-wlm`` and ``munge``. When they are missing the fixture
installs them if ``CI`` or ``REMD_INSTALL_SLURM=1`` is set; otherwise, or when a daemon does not
start, the test is skipped with the reason (and the daemon's log), never passed without a cluster.
Every daemon, job and worker started here is stopped at teardown, and checked to be gone.
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

from remd_core.experiments.executors import slurm_profile
from remd_core.files import read_json

# The smoke grid of tests/integration/test_interrupts.py, its cells long enough to be caught mid-training
GRID = """
name: mini
datasets: [synthetic-stage2]
seeds: [0]
recipes: [naive-fusion, mmpareto]
"""
FIRST, SECOND = "synthetic-stage2__naive-fusion__seed0", "synthetic-stage2__mmpareto__seed0"
EPOCHS = 12
SLOW = ["--set", f"EPOCHS={EPOCHS}", "CHECKPOINT_EVERY=1"]
WINDOW = EPOCHS - 2
PROFILE = "local-slurm"  # clusters/local-slurm.yaml
DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sinfo", "squeue", "scancel", "scontrol", "sbatch")
SBIN = os.pathsep.join((os.environ.get("PATH", ""), "/usr/sbin", "/sbin"))
INSTALL_ENV = "REMD_INSTALL_SLURM"


def tail(path: Path, lines: int = 25) -> str:
    text = path.read_text(errors="replace") if path.exists() else ""
    return f"--- {path.name} ---\n" + "\n".join(text.splitlines()[-lines:])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def installed() -> bool:
    return all(shutil.which(name, path=SBIN) for name in DAEMONS + CLIENTS)


def install_or_skip() -> None:
    """The packages, installed here only where CI (or the opt-in variable) allows it."""
    if installed():
        return
    if not (os.environ.get("CI") or os.environ.get(INSTALL_ENV) == "1"):
        pytest.skip(f"Slurm is not installed (apt-get install slurm-wlm munge); set {INSTALL_ENV}=1 or CI to let "
                    "this test install it")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "slurm-wlm", "munge"]):
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            pytest.skip(f"{' '.join(command)} failed (rc {done.returncode}):\n{(done.stdout + done.stderr)[-2000:]}")
    if not installed():
        pytest.skip(f"after installing slurm-wlm and munge, still missing: "
                    f"{[n for n in DAEMONS + CLIENTS if not shutil.which(n, path=SBIN)]}")


def node_line(folder: Path, env: dict) -> str:
    """This machine as the node ``localhost``: its CPUs, and a little less memory than ``slurmd -C``
    reports (a node that reports less than slurm.conf says is drained)."""
    found = subprocess.run([shutil.which("slurmd", path=SBIN), "-C"], env=env, capture_output=True, text=True,
                           timeout=60)
    words = dict(word.split("=", 1) for word in found.stdout.split() if "=" in word)
    cpus = int(words.get("CPUs", os.cpu_count() or 1))
    memory = int(int(words.get("RealMemory", 2048)) * 0.9)
    return f"NodeName=localhost NodeHostname=localhost NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory} State=UNKNOWN"


def write_conf(folder: Path, partition: str, env: dict) -> Path:
    (folder / "state").mkdir()
    (folder / "spool").mkdir()
    conf = folder / "slurm.conf"
    conf.write_text(f"""\
ClusterName=remdtest
SlurmctldHost=localhost
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={folder}/munge.socket
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd.pid
SlurmctldLogFile={folder}/slurmctld.log
SlurmdLogFile={folder}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
KillWait=5
{node_line(folder, env)}
PartitionName={partition} Nodes=localhost Default=YES MaxTime=INFINITE State=UP
""")
    return conf


@dataclass
class Slurm:
    """A running one-node cluster: ``env`` is what its clients (and ``remd sweep``) need."""

    folder: Path
    conf: Path
    env: dict
    partition: str
    daemons: dict = field(default_factory=dict)

    def run(self, *command: str, check: bool = True) -> str:
        done = subprocess.run([shutil.which(command[0], path=SBIN), *command[1:]], env=self.env, capture_output=True,
                              text=True, timeout=60)
        if check and done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)}: rc {done.returncode}: {done.stderr}")
        return done.stdout

    def jobs(self) -> list[str]:
        return self.run("squeue", "-h", "-o", "%i").split()

    def logs(self) -> str:
        return "\n".join(tail(self.folder / name) for name in (*(f"{d}.out" for d in DAEMONS), "slurmctld.log",
                                                              "slurmd.log"))

    def start(self) -> None:
        folder, env = self.folder, self.env
        key = folder / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        commands = {
            "munged": ["-F", "--force", f"--key-file={key}", f"--socket={folder}/munge.socket",
                       f"--pid-file={folder}/munged.pid", f"--seed-file={folder}/munged.seed",
                       f"--log-file={folder}/munged.log"],
            "slurmctld": ["-D", "-i", "-f", str(self.conf)],
            "slurmd": ["-D", "-N", "localhost", "-f", str(self.conf)],
        }
        for name, args in commands.items():
            with open(folder / f"{name}.out", "w") as out:
                self.daemons[name] = subprocess.Popen([shutil.which(name, path=SBIN), *args], env=env, stdout=out,
                                                      stderr=subprocess.STDOUT, start_new_session=True)
            if name == "munged":
                self.wait(lambda: (folder / "munge.socket").exists(), "munged's socket", 20)

    def wait(self, condition, what: str, timeout: float) -> None:
        """Wait for ``condition``; skip (with the daemons' logs) when a daemon ends or time runs out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ended = {n: p.returncode for n, p in self.daemons.items() if p.poll() is not None}
            if ended:
                pytest.skip(f"Slurm did not start: {ended} exited while waiting for {what}\n{self.logs()}")
            try:
                if condition():
                    return
            except (RuntimeError, subprocess.TimeoutExpired):
                pass
            time.sleep(0.5)
        pytest.skip(f"Slurm did not start: no {what} after {timeout:.0f} s\n{self.logs()}")

    def ours(self) -> list[psutil.Process]:
        """Every live process of this cluster: the daemons, slurmstepd, the jobs (all carry its SLURM_CONF)."""
        found = []
        for process in psutil.process_iter():
            try:
                if process.pid != os.getpid() and process.environ().get("SLURM_CONF") == str(self.conf) \
                        and process.status() != psutil.STATUS_ZOMBIE:
                    found.append(process)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        return found

    def stop(self) -> list[str]:
        """Cancel every job, stop the daemons, and return what was still running (killed) after."""
        problems = []
        if self.daemons.get("slurmctld") and self.daemons["slurmctld"].poll() is None:
            try:
                left = self.jobs()
                if left:
                    problems.append(f"jobs still queued at teardown, cancelled: {left}")
                    self.run("scancel", *left, check=False)
                    deadline = time.monotonic() + 30
                    while self.jobs() and time.monotonic() < deadline:
                        time.sleep(0.5)
            except (RuntimeError, subprocess.TimeoutExpired) as err:
                problems.append(f"could not cancel the jobs: {err}")
        for name in reversed(DAEMONS):  # slurmd, slurmctld, then munged
            process = self.daemons.get(name)
            if process is None or process.poll() is not None:
                continue
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                problems.append(f"{name} ignored SIGTERM for 20 s: killed")
                process.kill()
                process.wait()
        deadline = time.monotonic() + 20
        while (left := self.ours()) and time.monotonic() < deadline:
            time.sleep(0.5)
        for process in left:
            try:
                problems.append(f"left running after the daemons stopped, killed: {process.pid} {process.cmdline()}")
                process.kill()
            except psutil.NoSuchProcess:
                pass
        return problems


@pytest.fixture
def slurm(tmp_path_factory):
    """A one-node Slurm cluster on this machine for the partition of ``clusters/local-slurm.yaml``;
    skipped (with the reason) where it cannot start."""
    if os.geteuid() != 0:
        pytest.skip("a one-node Slurm cluster needs root (slurmd starts jobs as their users)")
    install_or_skip()
    folder = tmp_path_factory.mktemp("slurm")
    folder.chmod(0o700)  # munged wants its key and socket folder private
    env = {**os.environ, "PATH": SBIN}
    partition = slurm_profile(PROFILE).partition
    conf = write_conf(folder, partition, env)
    cluster = Slurm(folder, conf, {**env, "SLURM_CONF": str(conf)}, partition)
    try:
        cluster.start()
        cluster.wait(lambda: cluster.run("sinfo", "-h", "-N", "-o", "%t").split() == ["idle"], "idle node in sinfo",
                     60)
        yield cluster
    finally:
        problems = cluster.stop()
    assert not problems, problems


def mid_run(checkpoint: Path, before_epoch: int) -> bool:
    """True once ``checkpoint`` records a step inside its run (past step 1, before ``before_epoch``)."""
    if not checkpoint.with_name(checkpoint.name + ".sha256").exists():
        return False
    import torch

    try:
        saved = torch.load(checkpoint, weights_only=True)
    except Exception:  # replaced while being read: look again
        return False
    return saved["step"] >= 2 and saved["epoch"] < before_epoch


def poll(condition, what: str, sweep: subprocess.Popen, cluster: Slurm, errors: Path, timeout: float = 180):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if sweep.poll() is not None:
            pytest.fail(f"the sweep ended (rc {sweep.returncode}) before {what}:\n{tail(errors, 60)}")
        time.sleep(0.1)
    sweep.kill()
    pytest.fail(f"no {what} after {timeout} s; squeue:\n{cluster.run('squeue', '-o', '%i %T %r', check=False)}\n"
                f"{tail(errors, 60)}\n{cluster.logs()}")


def test_the_local_profile_asks_for_one_core_of_this_python_on_loopback_over_tls(tmp_path):
    """What ``clusters/local-slurm.yaml`` submits, without a cluster: the job script."""
    from remd_core.experiments.executors import slurm_cluster

    profile = slurm_profile(PROFILE)
    profile.shared_dir = str(tmp_path)
    cluster = slurm_cluster(profile)
    try:
        script = cluster.job_script()
        assert cluster.scheduler_address.startswith("tls://127.0.0.1:")
    finally:
        cluster.close()
    assert f"#SBATCH -p {profile.partition}" in script and "#SBATCH --cpus-per-task=1" in script, script
    worker = script.strip().splitlines()[-1]
    assert worker.startswith(f"{sys.executable} -m distributed.cli.dask_worker tls://127.0.0.1:"), worker
    assert "--interface lo" in worker and "--resources" not in worker, worker


@pytest.mark.slow
def test_a_sweep_on_slurm_replaces_a_cancelled_job_and_its_cell_resumes(slurm, tmp_path):
    grid, outputs = tmp_path / "mini.yaml", tmp_path / "outputs"
    grid.write_text(GRID)
    folder = outputs / "sweep-mini"
    env = {**slurm.env, "REMD_OUTPUTS": str(outputs), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    output, errors = tmp_path / "sweep.out", tmp_path / "sweep.err"
    started = time.monotonic()
    with open(output, "w") as out, open(errors, "w") as err:
        # cwd: Slurm writes each job's log, slurm-<id>.out, into the folder sbatch was called from
        sweep = subprocess.Popen([sys.executable, "-m", "remd_core", "sweep", str(grid), "--profile", "smoke",
                                  "--slurm", PROFILE, *SLOW], cwd=tmp_path, env=env, stdout=out, stderr=err,
                                 start_new_session=True)
    seen = []

    def watch_jobs():
        seen.extend(j for j in slurm.jobs() if j not in seen)
        return seen

    try:
        checkpoint = folder / "cells" / FIRST / "checkpoints" / "last.pt"
        poll(lambda: watch_jobs() and mid_run(checkpoint, WINDOW), "first cell mid-training", sweep, slurm, errors)
        running = slurm.jobs()
        assert len(running) == 1, running  # the profile's one job: one worker, one cell at a time
        job = running[0]
        script = slurm.run("scontrol", "write", "batch_script", job, "-")
        worker = script.strip().splitlines()[-1]
        assert f"#SBATCH -p {slurm.partition}" in script and "#SBATCH --cpus-per-task=1" in script, script
        assert " -m distributed.cli.dask_worker tls://127.0.0.1:" in worker and "--tls-ca-file" in worker, worker
        assert "Start worker at:      tls://127.0.0.1:" in (tmp_path / f"slurm-{job}.out").read_text()
        print(f"\nslurm: worker job {job} runs: {worker}")
        slurm.run("scancel", job)
        print(f"slurm: cancelled job {job} while {FIRST} trained (checkpoint mid-run)")
        replacement = poll(lambda: [j for j in watch_jobs() if j != job], "replacement job", sweep, slurm, errors)[0]
        print(f"slurm: replacement job {replacement} submitted {time.monotonic() - started:.0f} s into the sweep")
        rc = sweep.wait(timeout=240)
    finally:
        if sweep.poll() is None:
            os.killpg(sweep.pid, signal.SIGKILL)
            sweep.wait()
    stdout, stderr = output.read_text(), errors.read_text()
    assert rc == 0, stderr[-4000:]
    resumed = [line for line in (tmp_path / f"slurm-{replacement}.out").read_text().splitlines()
               if "resuming from" in line]
    assert resumed and FIRST in resumed[0], (tmp_path / f"slurm-{replacement}.out").read_text()[-4000:]
    lines = [line for line in stdout.splitlines() if line.startswith(("Dask:", f"{FIRST}:", f"{SECOND}:", "wall time"))]
    assert any(line.startswith(f"{FIRST}: test R2") and "(started 2 times: its worker process died" in line
               for line in lines), stdout
    assert all(read_json(folder / "cells" / key / "results" / "train_recipe.json") for key in (FIRST, SECOND))
    deadline = time.monotonic() + 30  # the sweep cancels its last job as it closes
    while slurm.jobs() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert slurm.jobs() == []
    print(f"slurm: jobs seen in squeue: {seen}")
    print(f"slurm: job {replacement}'s log: {resumed[0].strip()}")
    print("slurm: sweep printed:\n  " + "\n  ".join(lines))
