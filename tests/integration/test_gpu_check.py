"""``make gpu-check`` (``benchmarks/gpu_check.py``) up to where CUDA is needed: it refuses a machine without a
GPU in one line with status 2, finds the CUDA tests in the test files, stops a part that overruns its budget
(its workers with it) and keeps what it measured, and runs each part at a tiny scale on the CPU (the device
injected through the plan), with the report's structure checked. On a GPU machine the check itself is
the test of the CUDA paths; here nothing is timed."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from remd_core.paths import REPO_ROOT

BENCHMARKS = REPO_ROOT / "benchmarks"
if str(BENCHMARKS) not in sys.path:
    sys.path.insert(0, str(BENCHMARKS))

from gpucheck.budget import run_part  # noqa: E402
from gpucheck.cuda_tests import parse_junit, select_cuda_tests  # noqa: E402
from gpucheck.environment import cuda_problem  # noqa: E402
from gpucheck.plan import DRY_RUN  # noqa: E402
from gpucheck.report import build_report, write_report  # noqa: E402

CUDA_TESTS = {
    "tests/integration/test_executors.py::test_a_gpu_cell_runs_on_a_worker_that_advertises_a_gpu",
    "tests/unit/losses/test_imbalance_losses.py::test_no_device_sync_on_cuda",
    "tests/unit/optim/test_optim_functions.py::test_no_device_sync_on_cuda",
    "tests/unit/training/test_device_paths.py::test_cuda_path_trains_with_bf16_channels_last_and_pinned_copies_and_resumes",
}


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_make_gpu_check_refuses_a_machine_without_a_gpu_in_one_line(tmp_path):
    env = {**os.environ, "REMD_OUTPUTS": str(tmp_path / "outputs"), "OUT": str(tmp_path / "out")}
    proc = subprocess.run(["make", "-s", "gpu-check", f"GPU_PYTHON={sys.executable}"], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    ours = [line for line in proc.stderr.splitlines() if line.startswith("gpu-check:")]
    assert len(ours) == 1 and proc.stdout == "", proc.stderr  # make adds its own "Error 2" line
    assert ours[0].startswith("gpu-check: no CUDA GPU here: torch ")
    assert ("is a CPU-only build" in ours[0]) == (torch.version.cuda is None)
    assert not (tmp_path / "out").exists() and not (tmp_path / "outputs").exists()  # nothing written


def test_the_refusal_names_a_cuda_build_that_sees_no_device(monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    problem = cuda_problem("cuda")
    assert "(CUDA 13.0) sees no GPU: torch.cuda.is_available() is False" in problem
    assert "CUDA_VISIBLE_DEVICES=''" in problem
    assert cuda_problem("cpu") is None


def test_the_cuda_tests_are_found_in_the_test_files(tmp_path):
    assert CUDA_TESTS <= set(select_cuda_tests(REPO_ROOT))
    tests = tmp_path / "tests"
    tests.mkdir()
    (tests / "test_a.py").write_text(
        "import pytest\n\n@pytest.mark.gpu\ndef test_marked():\n    pass\n\n"
        "def test_skips():\n    pytest.skip('needs CUDA')\n\ndef test_plain():\n    pass\n\n"
        "class TestGroup:\n    @pytest.mark.gpu\n    def test_method(self):\n        pass\n")
    (tests / "test_b.py").write_text("import pytest\n\npytestmark = pytest.mark.gpu\n\ndef test_one():\n    pass\n")
    (tests / "test_c.py").write_text("def test_cpu():\n    pass\n\n"
                                     "def test_writes_the_words():\n    text = 'pytest.mark.gpu, needs CUDA'\n")
    assert select_cuda_tests(tmp_path) == ["tests/test_a.py::test_marked", "tests/test_a.py::test_skips",
                                           "tests/test_a.py::TestGroup::test_method", "tests/test_b.py::test_one"]


def test_junit_outcomes_are_counted(tmp_path):
    xml = tmp_path / "t.xml"
    xml.write_text('<testsuites><testsuite><testcase classname="a" name="ok" time="1.5"/>'
                   '<testcase classname="a" name="bad" time="0.1"><failure message="assert 1 == 2">trace</failure></testcase>'
                   '<testcase classname="a" name="skip"><skipped message="needs CUDA"/></testcase>'
                   '<testcase classname="a" name="err"><error message="fixture broke"/></testcase></testsuite></testsuites>')
    out = parse_junit(xml)
    assert out["counts"] == {"passed": 1, "failed": 1, "error": 1, "skipped": 1}
    assert [(t["outcome"], t["message"]) for t in out["tests"]] == [
        ("passed", ""), ("failed", "assert 1 == 2"), ("skipped", "needs CUDA"), ("error", "fixture broke")]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def test_a_part_over_its_budget_is_stopped_with_its_children_and_keeps_what_it_measured(tmp_path):
    script = tmp_path / "slow.py"
    script.write_text(
        "import subprocess, sys, time\n"
        f"sys.path.insert(0, {str(BENCHMARKS)!r})\n"
        "from gpucheck.budget import on_termination, write_result\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        f"open({str(tmp_path / 'child')!r}, 'w').write(str(child.pid))\n"
        f"on_termination(lambda: write_result({str(tmp_path)!r}, 'slow', {{'partial': True, 'steps': 3}}))\n"
        "print('working', flush=True)\n"
        "time.sleep(60)\n")
    lines = []
    result = run_part("slow", [sys.executable, str(script)], 5, tmp_path, echo=lines.append)
    assert result["status"] == "timeout" and result["partial"] and result["steps"] == 3
    assert "measured before it was stopped" in result["detail"] and 5 <= result["wall_s"] < 17
    assert "[slow] working" in lines and "working" in result["log_tail"]
    child = int((tmp_path / "child").read_text())
    deadline = time.time() + 5
    while _alive(child) and time.time() < deadline:
        time.sleep(0.1)
    assert not _alive(child)
    # a part that ends without a result is an error; one that writes its result keeps its status
    quiet = run_part("quiet", [sys.executable, "-c", "raise SystemExit(3)"], 30, tmp_path, echo=lines.append)
    assert quiet["status"] == "error" and quiet["returncode"] == 3
    done = run_part("done", [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(BENCHMARKS)!r}); from "
                             f"gpucheck.budget import write_result; write_result({str(tmp_path)!r}, 'done', "
                             "{'status': 'pass', 'n': 1})"], 30, tmp_path, echo=lines.append)
    assert done["status"] == "pass" and done["n"] == 1 and "log_tail" not in done


# the parts at a tiny scale on the CPU: the plan carries the device, as it does to the parts' processes

PLAN = dataclasses.replace(DRY_RUN, bench_strategies=("sgm_k1", "sgm_reference"))


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("gpu-check")


@pytest.fixture(scope="module")
def data_result(work):
    from gpucheck.data import prepare_data

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return prepare_data(PLAN, work)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def bench_result(work, data_result):
    from gpucheck.bench import run_bench
    from gpucheck.data import load_eyes

    return run_bench(PLAN, load_eyes(PLAN, work / "eyes" / "eyes.csv", work / "store", lazy=False),
                     torch.device("cpu"), git="test")


@pytest.fixture(scope="module")
def stages_run(work, data_result):
    from gpucheck.stages import StagesRun

    run = StagesRun(PLAN, work / "eyes" / "eyes.csv", work / "store", work, torch.device("cpu"))
    return run, run.run()


def test_the_data_part_writes_a_manifest_and_decodes_it(work, data_result):
    assert data_result["status"] == "pass" and data_result["splits"] == {"train": 12, "val": 4, "test": 4}
    assert data_result["decoded_eyes"] == 20 and data_result["processes"] == 2
    lines = (work / "eyes" / "eyes.csv").read_text().splitlines()
    assert lines[0] == "id,md,split,age,sex,eye,fundus,oct" and len(lines) == 21
    assert len({line.split(",")[0] for line in lines[1:]}) == 20  # every eye its own id across the blocks


def test_the_bench_part_times_the_strategies_against_their_floors(bench_result):
    assert bench_result["status"] in ("pass", "fail")  # on a CPU the targets are not the point
    block = bench_result["result"]["batches"][str(PLAN.batch_size)]
    assert [r["strategy"] for r in block["rows"]] == ["joint", "sgm_k1", "sgm_reference"]
    assert all(r["median_s"] > 0 and r["ideal_ratio"] > 0 for r in block["rows"])
    assert {"forward", "backward", "nograd", "optimizer", "noise"} <= set(block["components_ms"])
    assert block["targets"] and "loader" in block and set(block["epoch"]) == {"joint", "sgm_k1", "sgm_reference"}
    path = bench_result["path"]  # the CPU path: float32, the default layout
    assert path["conv_output_dtype"] == "float32" and not path["conv_weight_channels_last"] and "encoders" in path["conv"]
    assert bench_result["summary"]["strategies"] == 3


def test_the_path_check_sees_bf16_and_channels_last(work, data_result):
    """What the bench's path check reports on CUDA, forced on the CPU: bf16 autocast and channels-last weights."""
    from gpucheck.bench import check_path
    from gpucheck.data import load_eyes
    from remd_core.models import EncoderConfig
    from stepbench.inputs import Workload

    dataset = load_eyes(PLAN, work / "eyes" / "eyes.csv", work / "store", lazy=False)
    bench = Workload(dataset, EncoderConfig(arch=PLAN.arch, width=PLAN.width), PLAN.batch_size, torch.device("cpu"), 1)
    bench.objective.config = dataclasses.replace(bench.objective.config, precision="bf16")
    bench.model = bench.model.to(memory_format=torch.channels_last)
    path = check_path(bench)
    assert path["conv_output_dtype"] == "bfloat16" and path["conv_weight_channels_last"]


def test_the_stages_part_runs_both_stages_through_the_streamed_loader(stages_run):
    run, result = stages_run
    assert result["status"] == "pass", result["detail"]
    assert result["setting"]["loader"] == "streamed, 1 DataLoader worker(s)"
    assert result["setting"]["preset"] == "paper" and result["setting"]["regression_loss"] == "smape_r2"
    assert [f["fit"] for f in result["fits"]] == ["stage 1 fundus", "stage 1 oct", "stage 2 SGM"]
    for fit in result["fits"]:
        assert fit["steps"] == PLAN.epochs * PLAN.steps_per_epoch == 3
        assert fit["host_step_ms"]["n"] == 2 and fit["host_step_ms"]["median"] > 0  # the first step left out
        assert fit["gpu_step_ms"] is None and fit["gpu_busy"] is None  # no CUDA events, no NVML on a CPU
    assert set(result["stage_seconds"]) == {"stage1", "stage2"}
    partial = run.partial()  # what a part stopped at its budget writes
    assert partial["partial"] and partial["status"] == "timeout" and len(partial["fits"]) == 3


def test_one_report_in_json_and_markdown(tmp_path, data_result, bench_result, stages_run):
    parts = {"setup": {"status": "pass", "installed": 0, "wall_s": 0.1, "budget_s": 20},
             "tests": {"status": "pass", "counts": {"passed": 4, "failed": 0, "error": 0, "skipped": 0},
                       "tests": [{"test": "a::b", "outcome": "passed", "seconds": 1.0, "message": ""}]},
             "data": data_result, "bench": {**bench_result, "status": "pass"}, "stages": stages_run[1]}
    info = {"device": "cpu", "device_name": "test CPU", "torch": torch.__version__, "cuda": None, "python": "3"}
    report = build_report(parts, PLAN, info, "abc123", 12.3, "benchmarks/gpu_check.py --device cpu --dry-run")
    json_path, md_path = write_report(report, tmp_path)
    saved = json.loads(json_path.read_text())
    assert saved["passed"] and set(saved["parts"]) == {"setup", "tests", "data", "bench", "stages"}
    assert saved["meta"]["device_info"]["device_name"] == "test CPU" and saved["meta"]["git"] == "abc123"
    assert saved["meta"]["total_budget_s"] == sum(PLAN.budgets.values()) and saved["meta"]["dry_run"]
    text = md_path.read_text()
    assert text.startswith("# GPU check: test CPU (")
    for title in ("(a) CUDA tests", "(b) step benchmark", "(c) Re-M3Dr, both stages", "synthetic eyes"):
        assert f"| {title} | pass |" in text
    assert "| sgm_k1 |" in text and "| stage 2 SGM | 3 |" in text and "Verdict: **PASS**" in text


def test_the_check_runs_its_parts_in_processes_and_writes_the_report(tmp_path):
    """The orchestrator end to end, with one cheap part (the data) in its own process."""
    import gpu_check

    out, work = tmp_path / "out", tmp_path / "work"
    rc = gpu_check.main(["--device", "cpu", "--dry-run", "--parts", "data", "--out", str(out), "--work", str(work),
                         "--revision", "r1"])
    assert rc == 0
    assert sorted(p.name for p in out.iterdir()) == ["gpu-check.json", "gpu-check.log", "gpu-check.md"]
    report = json.loads((out / "gpu-check.json").read_text())
    assert [p for p in report["parts"]] == ["setup", "data"] and report["passed"] and report["meta"]["git"] == "r1"
    assert report["parts"]["data"]["budget_s"] == DRY_RUN.budgets["data"] and report["parts"]["data"]["wall_s"] > 0
    assert "==== data" in (out / "gpu-check.log").read_text() and not work.exists()  # the work folder removed
    shutil.rmtree(out)
