"""What a person sees in JupyterLab: a real Lab server, notebook 02 opened in headless Chromium
(Debian's ``chromium`` driven by Playwright; browsers are never downloaded), every cell run at the
smoke profile, then a slider moved with the keyboard. Checks that the widget cell shows one figure,
that the sliders start at the configured values under readable labels, and that moving one redraws
that figure in place.

Run alone: ``.venv/bin/python -m pytest -p no:xdist -q tests/notebooks/test_browser.py``.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

from remd_core.training import TrainConfig

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
NOTEBOOK = "02_stage1_adaptive_margin.ipynb"
NOTEBOOK_DIR = Path(__file__).resolve().parents[2] / "notebooks"

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium executable on PATH (Debian: apt-get install chromium; .ci/run installs it); "
                             "Playwright's own browsers cannot be downloaded here")]

# The open notebook panel, through the application object that --LabApp.expose_app_in_browser sets.
PANEL = "window.jupyterapp.shell.currentWidget"
# Code cells still to run or running, and the first error output, of the open notebook.
PROGRESS = f"""() => {{
    const cells = {PANEL}.content.widgets.filter(c => c.model.type === 'code');
    const pending = cells.filter(c => c.model.executionCount === null || c.promptNode.textContent.includes('*'));
    const errors = cells.flatMap(c => c.model.outputs.toJSON()).filter(o => o.output_type === 'error');
    return {{pending: pending.length, error: errors.length ? errors[0].ename + ': ' + errors[0].evalue : null,
             idle: {PANEL}.sessionContext.kernelDisplayStatus === 'idle'}};
}}"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def api(base: str, token: str, path: str, method: str = "GET"):
    request = urllib.request.Request(f"{base}{path}", method=method, headers={"Authorization": f"token {token}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        body = response.read()
    return json.loads(body) if body else None


@contextmanager
def jupyterlab(root: Path, home: Path):
    """A JupyterLab server on loopback serving ``root``, its kernels at the smoke profile, with its
    own Jupyter folders under ``home`` (no user settings, kernels or workspaces leak in). On exit
    the server is shut down through its API, which stops its kernels; a server that does not exit
    is killed."""
    port, token = free_port(), secrets.token_hex(16)
    jupyter = {name: home / name for name in ("config", "data", "runtime", "settings", "workspaces")}
    env = {**os.environ, "REMD_PROFILE": "smoke", "REMD_OUTPUTS": str(home / "outputs"), "OMP_NUM_THREADS": "1",
           "JUPYTER_CONFIG_DIR": str(jupyter["config"]), "JUPYTER_DATA_DIR": str(jupyter["data"]),
           "JUPYTER_RUNTIME_DIR": str(jupyter["runtime"]), "JUPYTERLAB_SETTINGS_DIR": str(jupyter["settings"]),
           "JUPYTERLAB_WORKSPACES_DIR": str(jupyter["workspaces"])}
    command = [sys.executable, "-m", "jupyter", "lab", "--no-browser", f"--port={port}", "--ServerApp.port_retries=0",
               f"--ServerApp.token={token}", "--ServerApp.ip=127.0.0.1", f"--ServerApp.root_dir={root}",
               "--LabApp.expose_app_in_browser=True"] + (["--allow-root"] if os.geteuid() == 0 else [])
    log = (home / "jupyterlab.log").open("wb")
    server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                api(base, token, "/api/status")
                break
            except (urllib.error.URLError, ConnectionError):
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"JupyterLab did not start: {(home / 'jupyterlab.log').read_text()[-3000:]}")
                time.sleep(0.3)
        yield base, token
    finally:
        try:
            if server.poll() is None:
                api(base, token, "/api/shutdown", method="POST")  # stops every kernel, then the server
            server.wait(timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            server.kill()
            server.wait()
        log.close()
    leftover = sorted(p.name for p in jupyter["runtime"].glob("kernel-*.json"))
    assert not leftover, f"kernels left running after the server stopped: {leftover}"


def slider(page, name: str):
    """The slider labelled ``name`` in the open notebook (ipywidgets' DOM: a label, then the track)."""
    return page.locator(".widget-slider").filter(has=page.locator(f"label.widget-label:text-is('{name}')"))


def test_notebook_02_in_chromium_one_figure_redrawn_by_a_slider(tmp_path):
    from playwright.sync_api import expect, sync_playwright

    root = tmp_path / "notebooks"
    root.mkdir()
    shutil.copy(NOTEBOOK_DIR / NOTEBOOK, root / NOTEBOOK)  # Lab saves what it runs: never the committed file
    train = TrainConfig()
    with jupyterlab(root, tmp_path) as (base, token), sync_playwright() as playwright:
        args = ["--no-sandbox"] if os.geteuid() == 0 else []  # Chromium's sandbox refuses to run as root
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 1000})
            page.goto(f"{base}/lab/tree/{NOTEBOOK}?token={token}")
            page.wait_for_function(f"() => window.jupyterapp && {PANEL} && {PANEL}.content && "
                                   f"{PANEL}.sessionContext.kernelDisplayStatus === 'idle'", timeout=60_000)
            page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")
            deadline = time.monotonic() + 120
            while True:
                state = page.evaluate(PROGRESS)
                assert state["error"] is None, f"a cell failed in JupyterLab: {state['error']}"
                if state["pending"] == 0 and state["idle"]:
                    break
                assert time.monotonic() < deadline, f"cells still running after 120 s: {state}"
                time.sleep(0.5)

            widget = page.locator(".jp-Cell").filter(has=page.locator(".widget-slider"))
            assert widget.count() == 1, "exactly one cell of notebook 02 holds sliders"
            figures = widget.locator(".jp-Cell-outputWrapper img")
            widget.scroll_into_view_if_needed()  # Lab renders cells lazily: laid out only once in view
            figures.first.wait_for(timeout=30_000)
            assert figures.count() == 1, "the widget cell shows one figure, not a static one beside the live one"
            readouts = {name: slider(page, name).locator(".widget-readout").text_content()
                        for name in ("m0", "beta", "t_n", "step")}
            assert readouts == {"m0": f"{train.margin_m0:g}", "beta": f"{train.margin_beta:g}",
                                "t_n": str(train.margin_warmup), "step": "0"}  # the configured values, unsnapped
            for name in readouts:
                label = slider(page, name).locator("label.widget-label")
                assert label.evaluate("l => l.scrollWidth <= l.clientWidth"), f"label {name!r} is cut"

            before = figures.first.get_attribute("src")
            slider(page, "m0").locator(".noUi-handle").press("ArrowRight")
            assert slider(page, "m0").locator(".widget-readout").text_content() == "0.45"
            # the redraw replaces the output's <img> element: wait on the cell, not on the old element
            expect(figures).to_have_count(1, timeout=30_000)
            expect(figures.first).not_to_have_attribute("src", before, timeout=30_000)
            assert figures.count() == 1, "the figure is redrawn in place, not added"
            assert figures.first.get_attribute("src").startswith("data:image/png")
        finally:
            browser.close()
