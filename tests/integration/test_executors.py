"""The executors against real Dask clusters (``distributed.LocalCluster``), real papermill kernels
and a real (generated, not submitted) Slurm job script."""

import re
import socket
import warnings
from urllib.parse import urlparse

import nbformat
import pytest

from remd_core.config import ConfigError
from remd_core.experiments.executors import (CLUSTER_DIR, InlineExecutor, SlurmProfile, kernel_threads, open_dask,
                                             slurm_cluster, slurm_profile, tls_security, warn_if_open)
from remd_core.workbench.runner import execute_notebook


def host_of(address: str) -> str:
    return urlparse(address).hostname


def test_the_embedded_cluster_listens_on_loopback_only():
    executor = open_dask(workers=1, log=lambda _line: None)
    try:
        info = executor.client.scheduler_info()
        assert host_of(executor.client.scheduler.address) == "127.0.0.1"
        assert host_of(executor.client.dashboard_link) == "127.0.0.1"
        assert [host_of(address) for address in info["workers"]] == ["127.0.0.1"]
        assert executor.slots == 1
        # nothing answers on this machine's other addresses at the scheduler's port
        port = urlparse(executor.client.scheduler.address).port
        outside = socket.gethostbyname(socket.gethostname())
        if outside != "127.0.0.1" and not outside.startswith("127."):
            with pytest.raises(OSError):
                socket.create_connection((outside, port), timeout=2).close()
    finally:
        executor.close()


def test_workers_share_the_cores_without_oversubscribing(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("remd_core.experiments.executors.cores", lambda: 16)
    assert [kernel_threads(n) for n in (1, 2, 3, 16, 32)] == [16, 8, 5, 1, 1]
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    assert kernel_threads(1) == 4


def test_gpu_cells_refuse_a_machine_without_a_gpu():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ConfigError, match="need a GPU.*has none"):
        open_dask(gpu=True, log=lambda _line: None)


@pytest.mark.gpu
def test_a_gpu_cell_runs_on_a_worker_that_advertises_a_gpu():
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    executor = open_dask(gpu=True, log=lambda _line: None)
    try:
        workers = executor.client.scheduler_info()["workers"].values()
        assert all(w["resources"] == {"GPU": 1} for w in workers) and executor.slots == torch.cuda.device_count()
        future = executor.client.submit(lambda: torch.cuda.is_available(), resources={"GPU": 1}, pure=False)
        assert future.result() is True
    finally:
        executor.close()


def test_the_inline_executor_runs_in_order_and_keeps_a_failure_to_its_task():
    def task(x):
        if x == 2:
            raise ValueError("two")
        return x * 10

    out = [(t, f.exception() or f.result()) for t, f in InlineExecutor().run((x, task, (x,)) for x in (1, 2, 3))]
    assert out[0] == (1, 10) and out[2] == (3, 30)
    assert isinstance(out[1][1], ValueError) and str(out[1][1]) == "two"


def write_token_notebook(path):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    parameters = nbformat.v4.new_code_cell("TOKEN = ''")
    parameters.metadata["tags"] = ["parameters"]
    nb.cells = [parameters, nbformat.v4.new_code_cell("import time, os\ntime.sleep(1.0)\nprint('token', TOKEN, os.getpid())")]
    nbformat.write(nb, path)


@pytest.mark.slow
def test_four_kernels_started_at_once_each_talk_to_their_own_notebook(tmp_path):
    """nteract/papermill#511: kernels started at once on one machine can pick the same TCP ports.
    The sweep's kernels use private Unix sockets; four started together on four workers each
    report their own token into their own notebook."""
    source = tmp_path / "token.ipynb"
    write_token_notebook(source)
    executor = open_dask(workers=4, cells=4, log=lambda _line: None)
    try:
        tokens = [f"cell{i}" for i in range(4)]
        futures = [executor.client.submit(execute_notebook, source, tmp_path / f"{t}.ipynb", {"TOKEN": t},
                                          tmp_path / f"{t}.log", pure=False) for t in tokens]
        executor.client.gather(futures)
    finally:
        executor.close()
    pids = set()
    for token in tokens:
        executed = nbformat.read(tmp_path / f"{token}.ipynb", as_version=4)
        text = "".join(o.get("text", "") for o in executed.cells[-1].outputs)
        found = re.fullmatch(r"token (\S+) (\d+)\n", text)
        assert found and found.group(1) == token, text
        pids.add(found.group(2))
        metadata = executed.metadata["papermill"]
        assert metadata["exception"] is None and metadata["parameters"] == {"TOKEN": token}
    assert len(pids) == 4  # four kernels, not one answering for several notebooks


def test_a_slurm_profile_is_strict_and_the_repository_profile_loads(tmp_path):
    profile = slurm_profile("gpu")
    assert profile == slurm_profile(CLUSTER_DIR / "gpu.yaml") and profile.gpus == 1
    bad = tmp_path / "bad.yaml"
    bad.write_text("partition: gpu\ngpu: 1\n")
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['gpu'\].*allowed keys are: partition, jobs, gpus"):
        slurm_profile(bad)
    with pytest.raises(ConfigError, match="no Slurm profile 'nope'.*'gpu'"):
        slurm_profile("nope")


def test_the_slurm_job_script_asks_for_what_the_profile_says(tmp_path):
    profile = SlurmProfile(partition="gpu-long", jobs=3, gpus=2, cores=12, memory="48GB", walltime="10:00:00",
                           account="eyes", shared_dir=str(tmp_path / "shared"), python="/opt/env/bin/python",
                           job_extra=["--constraint=h100"])
    cluster = slurm_cluster(profile)
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    directives = [line for line in script.splitlines() if line.startswith("#SBATCH")]
    for expected in ("#SBATCH -p gpu-long", "#SBATCH -A eyes", "#SBATCH --cpus-per-task=12", "#SBATCH -t 10:00:00",
                     "#SBATCH --gres=gpu:2", "#SBATCH --constraint=h100"):
        assert expected in directives, script
    assert any(line.startswith("#SBATCH --mem=") for line in directives)
    assert "export OMP_NUM_THREADS=12 MKL_NUM_THREADS=12" in script
    command = script.splitlines()[-1]
    assert command.startswith("/opt/env/bin/python -m distributed.cli.dask_worker tls://")  # TLS, not tcp
    assert "--nthreads 1" in command and "--resources GPU=2" in command  # one cell at a time, its GPUs advertised
    assert all(f"{tmp_path / 'shared'}/" in part for part in re.findall(r"--tls-(?:ca-file|cert|key) (\S+)", command))


def test_tls_needs_the_three_files():
    with pytest.raises(ConfigError, match=r"missing: \['cert', 'key'\]"):
        tls_security({"ca": "ca.pem"})
    with pytest.raises(ConfigError, match="not found"):
        tls_security({"ca": "ca.pem", "cert": "c.pem", "key": "k.pem"})


def test_a_remote_scheduler_is_reached_over_tls_with_the_users_certificates(tmp_path):
    from distributed import LocalCluster
    from distributed.security import Security

    certificates = Security.temporary()  # PEM text: written to files, as a user's certificates are
    files = {}
    for name, text in (("ca", certificates.tls_ca_file), ("cert", certificates.tls_client_cert),
                       ("key", certificates.tls_client_key)):
        files[name] = tmp_path / f"{name}.pem"
        files[name].write_text(text)
    with LocalCluster(n_workers=1, threads_per_worker=1, protocol="tls://", host="127.0.0.1", security=certificates,
                      dashboard_address=None) as cluster:
        assert cluster.scheduler_address.startswith("tls://127.0.0.1:")
        with pytest.raises(OSError):  # without certificates the scheduler does not answer
            from distributed import Client

            Client(cluster.scheduler_address.replace("tls://", "tcp://"), timeout="2s")
        executor = open_dask(scheduler=cluster.scheduler_address, tls=files, log=lambda _line: None)
        try:
            assert executor.client.submit(sum, [1, 2, 3]).result() == 6
        finally:
            executor.client.close()


def test_a_plain_address_off_this_machine_is_warned_about():
    with pytest.warns(UserWarning, match="without TLS: anyone who can reach that scheduler can run code"):
        warn_if_open("tcp://10.1.2.3:8786", None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_if_open("tcp://127.0.0.1:8786", None)
        warn_if_open("tls://10.1.2.3:8786", object())
    with pytest.raises(ConfigError, match="not both"):
        open_dask(scheduler="tcp://10.1.2.3:8786", slurm="gpu")
