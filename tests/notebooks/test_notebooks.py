import json

import nbformat
import pytest

from remd_core.config import ConfigError
from remd_core.workbench.refresh import committed_notebooks
from remd_core.workbench.runner import NOTEBOOK_DIR, PROFILES, notebook_parameters, ordered_notebooks, resolve_parameters, run_notebooks


def test_every_notebook_follows_the_template():
    notebooks = ordered_notebooks()
    assert notebooks and notebooks[0].name == "00_data.ipynb"
    for path in notebooks:
        nb = nbformat.read(path, as_version=4)
        assert nb.metadata["kernelspec"]["name"] == "python3"
        params = notebook_parameters(path)
        assert all(k.isupper() for k in params) and {"PROFILE", "RUN_DIR"} <= set(params)
        assert "record_results(" in nb.cells[-2].source, f"{path.name}: the results cell must come before references"
        assert any("NBVAL_CHECK_OUTPUT" in c.source for c in nb.cells if c.cell_type == "code")


def test_unknown_parameter_is_an_error_not_a_warning(tmp_path):
    with pytest.raises(ConfigError, match="N_EYE"):
        resolve_parameters(NOTEBOOK_DIR / "00_data.ipynb", "smoke", {"N_EYE": 10}, tmp_path)
    with pytest.raises(ConfigError, match="profile"):
        resolve_parameters(NOTEBOOK_DIR / "00_data.ipynb", "laptop", {}, tmp_path)


def test_profile_values_reach_the_declared_parameters(tmp_path):
    params = resolve_parameters(NOTEBOOK_DIR / "00_data.ipynb", "smoke", {"SEED": 3}, tmp_path)
    assert params["N_EYES"] == PROFILES["smoke"]["N_EYES"] and params["SEED"] == 3
    assert params["PROFILE"] == "smoke" and params["RUN_DIR"] == str(tmp_path)
    assert "EPOCHS" not in params  # 00_data does not declare it


@pytest.mark.slow
def test_data_notebook_executes_headlessly_and_records_results(tmp_path, monkeypatch):
    monkeypatch.setenv("REMD_OUTPUTS", str(tmp_path))
    folder = run_notebooks("smoke", run="nb", names=["00"])
    executed = nbformat.read(folder / "00_data.ipynb", as_version=4)
    assert executed.metadata["papermill"]["parameters"]["N_EYES"] == PROFILES["smoke"]["N_EYES"]
    results = json.loads((folder / "results" / "00_data.json").read_text())
    assert results["n_train"] + results["n_val"] + results["n_test"] == PROFILES["smoke"]["N_EYES"]
    assert (folder / "figures" / "00_md_distribution.html").stat().st_size > 100_000  # plotly.js embedded
    assert (folder / "figures" / "00_example_eyes.png").exists()
    assert (folder / "provenance.json").exists()


def test_run_command_rejects_unknown_notebooks_and_parameters(tmp_path):
    import subprocess
    import sys

    env = {"REMD_OUTPUTS": str(tmp_path), "PATH": ""}
    out = subprocess.run([sys.executable, "-m", "remd_core", "run", "--notebooks", "07", "--profile", "smoke"],
                         capture_output=True, text=True, env=env)
    assert out.returncode != 0 and "no notebook named ['07']" in out.stderr
    out = subprocess.run([sys.executable, "-m", "remd_core", "run", "--notebooks", "00", "--set", "EPOCH=3"],
                         capture_output=True, text=True, env=env)
    assert out.returncode != 0 and "EPOCH" in out.stderr


def test_setup_fills_none_parameters_from_the_profile_named_or_in_the_environment(tmp_path, monkeypatch):
    from remd_core.optim.sgm import SGMConfig
    from remd_core.training import TrainConfig
    from remd_core.workbench.setup import setup

    monkeypatch.setenv("REMD_OUTPUTS", str(tmp_path))
    monkeypatch.setenv("REMD_PROFILE", "smoke")
    namespace = {"PROFILE": "", "EPOCHS": None, "N_EYES": None, "SEED": 3, "RUN_DIR": ""}
    shown = setup(namespace)
    assert namespace["PROFILE"] == "smoke" and namespace["EPOCHS"] == PROFILES["smoke"]["EPOCHS"]
    assert namespace["SEED"] == 3 and namespace["RUN_DIR"] == str(tmp_path / "interactive")
    assert shown["RUN_DIR"] == "outputs/interactive"  # no machine path in a notebook's output
    namespace = {"PROFILE": "gpu", "ARCH": None, "RUN_DIR": str(tmp_path)}
    setup(namespace)
    assert namespace["ARCH"] == "resnet34"  # a named profile wins over the environment
    namespace = {"PROFILE": "cpu", "LR": None, "GAMMA_BASE": None, "MARGIN_WARMUP": None}
    setup(namespace)  # library settings come from their config dataclass
    assert (namespace["LR"], namespace["GAMMA_BASE"], namespace["MARGIN_WARMUP"]) == (
        TrainConfig().lr, SGMConfig().gamma_base, TrainConfig().margin_warmup)
    with pytest.raises(ConfigError, match="TEMPERATURE is None and neither profile 'cpu' nor the library sets it"):
        setup({"PROFILE": "cpu", "TEMPERATURE": None})
    with pytest.raises(ConfigError, match="laptop"):
        setup({"PROFILE": "laptop"})


@pytest.mark.parametrize("path", committed_notebooks(), ids=lambda p: p.name)
def test_committed_notebook_outputs_are_fresh_and_clean(path):
    from remd_core.workbench.refresh import problems

    assert problems(path) == [], f"{path.name}: run `make notebooks` and commit the result"


def test_refresh_checks_catch_stale_outputs_counts_addresses_and_paths(tmp_path):
    from nbformat.v4 import new_code_cell, new_notebook, new_output

    from remd_core.workbench.refresh import STAMP, clean, problems, source_hash

    nb = new_notebook(cells=[new_code_cell("x = 1\nx", execution_count=3, outputs=[
        new_output("execute_result", {"text/plain": "<object at 0x7f3a2b>"}, execution_count=3),
        new_output("display_data", {"application/vnd.jupyter.widget-view+json": {"model_id": "a"}, "text/plain": "w"}),
        new_output("display_data", {"application/vnd.jupyter.widget-view+json": {"model_id": "b"}, "image/png": "iVBO",
                                    "text/plain": "LiveFigure"}),
        new_output("stream", text="saved to /tmp/abc/figure.png\n")])])
    nb.metadata[STAMP] = {"source_hash": source_hash(nb)}
    path = tmp_path / "check.ipynb"
    nbformat.write(nb, path)
    found = problems(path)
    assert any("execution count" in p for p in found) and any("memory address" in p for p in found)
    assert any("/tmp/abc" in p for p in found) and not any("stale" in p for p in found)
    clean(nb)
    assert nb.cells[0].execution_count == 1 and len(nb.cells[0].outputs) == 3  # a bare widget view dropped
    assert set(nb.cells[0].outputs[1]["data"]) == {"image/png", "text/plain"}  # the figure a widget carries stays
    assert "0x7f3a2b" not in nb.cells[0].outputs[0]["data"]["text/plain"]
    nb.cells[0].source = "x = 2\nx"
    nbformat.write(nb, path)
    assert any("stale" in p for p in problems(path))
