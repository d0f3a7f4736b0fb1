import json
import subprocess
import sys

import pandas as pd
import pytest

ARGS = ["baselines", "--data", "n_eyes=60", "image_size=32", "oct_size=32", "n_bscans=2", "test=15", "val=10",
        "--encoder", "width=0.125", "--epochs", "1", "--batch-size", "8", "--run", "smoke", "--quiet"]


@pytest.mark.slow
def test_baselines_command_writes_results_and_resumes(tmp_path):
    env = {"REMD_OUTPUTS": str(tmp_path), "PATH": ""}
    first = subprocess.run([sys.executable, "-m", "remd_core", *ARGS], capture_output=True, text=True, env=env)
    assert first.returncode == 0, first.stderr
    run = tmp_path / "smoke"
    metrics = pd.read_csv(run / "metrics.csv")
    assert list(metrics["model"]) == ["fundus", "oct", "fundus+oct"]
    assert metrics["test_n"].eq(15).all()
    predictions = pd.read_csv(run / "predictions.csv")
    assert len(predictions) == 45
    assert (run / "baselines.png").stat().st_size > 10_000
    provenance = json.loads((run / "provenance.json").read_text())
    assert provenance["packages"]["torch"] and provenance["dataset"] == "synthetic-stage2"
    assert str(run) in first.stdout

    again = subprocess.run([sys.executable, "-m", "remd_core", *ARGS], capture_output=True, text=True, env=env)
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("already done") == 3
    pd.testing.assert_frame_equal(pd.read_csv(run / "metrics.csv"), metrics)


def test_unknown_data_override_fails_with_the_key_named(tmp_path):
    out = subprocess.run([sys.executable, "-m", "remd_core", "baselines", "--data", "n_eys=10"],
                         capture_output=True, text=True, env={"REMD_OUTPUTS": str(tmp_path), "PATH": ""})
    assert out.returncode != 0
    assert "n_eys" in out.stderr and "n_eyes" in out.stderr


def test_list_shows_every_catalog_entry():
    out = subprocess.run([sys.executable, "-m", "remd_core", "list"], capture_output=True, text=True, check=True)
    for name in ("synthetic-stage2", "synthetic-inhouse", "stage2", "fairvision-glaucoma", "harvard-gf", "randhie"):
        assert name in out.stdout
