"""Part (a): every test that needs CUDA, found in the test files rather than listed by hand: a test marked
``gpu`` (``@pytest.mark.gpu``, or a file's ``pytestmark``) or one that skips with "needs CUDA". They run by
node id (so collecting them imports four files, not the whole suite) with a JUnit report to count them, and
without third-party pytest plugins (``PYTEST_DISABLE_PLUGIN_AUTOLOAD``)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

MARKERS = ("mark.gpu", "needs CUDA")


def select_cuda_tests(root: Path, tests: str = "tests") -> list[str]:
    """Node ids (``tests/.../test_x.py::test_y``, ``::Class::test_y``) of the tests under ``root/tests``
    marked ``gpu`` (by decorator or by the file's ``pytestmark``) or calling a skip (``pytest.skip``,
    ``pytest.mark.skipif``) whose reason says "needs CUDA", in file order. Read from the syntax tree: the
    words in a string elsewhere (a test that writes test files) select nothing."""
    root = Path(root)
    ids = []
    for path in sorted((root / tests).rglob("test_*.py")):
        text = path.read_text(errors="replace")
        if not any(m in text for m in MARKERS):
            continue
        tree = ast.parse(text)
        whole_file = any(isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "pytestmark" for t in node.targets)
                         and _marks_gpu(node.value) for node in tree.body)
        relative = path.relative_to(root).as_posix()
        for prefix, node in _tests(tree.body):
            if whole_file or any(_marks_gpu(d) for d in node.decorator_list) or _skips_without_cuda(node):
                ids.append(f"{relative}::{prefix}{node.name}")
    return ids


def _marks_gpu(tree: ast.AST) -> bool:
    """``pytest.mark.gpu`` (or ``mark.gpu``) anywhere in ``tree``."""
    return any(isinstance(n, ast.Attribute) and n.attr == "gpu" and isinstance(n.value, ast.Attribute)
               and n.value.attr == "mark" for n in ast.walk(tree))


def _skips_without_cuda(function: ast.AST) -> bool:
    """A call of ``skip`` or ``skipif`` in the test or its decorators with "needs CUDA" in a string argument."""
    for node in ast.walk(function):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in ("skip", "skipif"):
            values = [*node.args, *(k.value for k in node.keywords)]
            if any(isinstance(v, ast.Constant) and isinstance(v.value, str) and "needs CUDA" in v.value for v in values):
                return True
    return False


def _tests(body, prefix=""):
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test"):
            yield prefix, node
        elif isinstance(node, ast.ClassDef) and node.name.startswith("Test"):
            yield from _tests(node.body, f"{prefix}{node.name}::")


def run_cuda_tests(root: Path, work: Path, on_cuda: bool) -> dict:
    """Run the selected tests with pytest; ``pass`` when none failed or errored and, on a CUDA device,
    none was skipped (a CUDA test skipped on a GPU machine means something it needs is missing)."""
    ids = select_cuda_tests(root)
    junit = Path(work) / "tests.xml"
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rA", f"--junitxml={junit}", *ids]
    print("running", len(ids), "tests:", " ".join(ids), flush=True)
    # no third-party plugin: these tests need none, and a machine's own (a broken one, or nbval wanting a
    # Jupyter client the GPU machine lacks) must not stop them from being collected
    proc = subprocess.run(command, cwd=root, env={**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"})
    outcome = parse_junit(junit) if junit.exists() else {"counts": {}, "tests": []}
    counts = outcome["counts"]
    bad = counts.get("failed", 0) + counts.get("error", 0)
    skipped_on_gpu = on_cuda and counts.get("skipped", 0) > 0
    ok = proc.returncode == 0 and bad == 0 and not skipped_on_gpu and counts.get("passed", 0) + counts.get("skipped", 0) == len(ids)
    detail = ("" if ok else f"pytest exited {proc.returncode}; " + ", ".join(f"{v} {k}" for k, v in counts.items())
              + ("; a CUDA test was skipped on a CUDA device" if skipped_on_gpu else ""))
    return {"status": "pass" if ok else "fail", "selected": ids, "pytest_returncode": proc.returncode, **outcome,
            "detail": detail}


def parse_junit(path: Path) -> dict:
    """Counts by outcome and each test's outcome (with the skip reason or the failure's first line)."""
    root = ET.parse(path).getroot()
    tests, counts = [], {"passed": 0, "failed": 0, "error": 0, "skipped": 0}
    for case in root.iter("testcase"):
        outcome, message = "passed", ""
        for kind, name in (("failure", "failed"), ("error", "error"), ("skipped", "skipped")):
            found = case.find(kind)
            if found is not None:
                outcome, message = name, (found.get("message") or found.text or "").strip().splitlines()[0:1]
                message = message[0] if message else ""
                break
        counts[outcome] += 1
        tests.append({"test": f"{case.get('classname', '')}::{case.get('name', '')}", "outcome": outcome,
                      "seconds": float(case.get("time") or 0.0), "message": message})
    return {"counts": counts, "tests": tests}
