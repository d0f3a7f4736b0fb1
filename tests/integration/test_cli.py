import json
import subprocess
import sys

import pandas as pd
import pytest

ARGS = ["baselines", "--data", "n_eyes=60", "image_size=32", "oct_size=32", "n_bscans=2", "test=15", "val=10",
        "--encoder", "width=0.125", "--epochs", "1", "--batch-size", "8", "--run", "smoke", "--quiet"]


def run(args, tmp_path):
    return subprocess.run([sys.executable, "-m", "remd_core", *args], capture_output=True, text=True,
                          env={"REMD_OUTPUTS": str(tmp_path), "PATH": ""})


@pytest.mark.slow
def test_baselines_command_writes_results_and_resumes(tmp_path):
    first = run(ARGS, tmp_path)
    assert first.returncode == 0, first.stderr
    folder = tmp_path / "smoke"
    results = pd.read_csv(folder / "results.csv")
    assert list(results["recipe"]) == ["unimodal-fundus", "unimodal-oct", "naive-fusion"]
    assert list(results["model"]) == ["fundus", "oct", "fusion"]
    assert results["test_n"].eq(15).all()
    summary = pd.read_csv(folder / "summary.csv")
    assert summary["test_r2_mean"].tolist() == pytest.approx(results["test_r2"].tolist())
    cell = json.loads((folder / "cells" / "synthetic-stage2__naive-fusion__seed0" / "results" / "compare.json").read_text())
    assert len(cell["rows"][0]["test_predictions"]) == 15
    assert (folder / "test_r2.png").stat().st_size > 10_000
    provenance = json.loads((folder / "provenance.json").read_text())
    assert provenance["packages"]["torch"] and provenance["dataset"] == "synthetic-stage2"
    assert str(folder) in first.stdout

    again = run(ARGS, tmp_path)
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("done earlier, skipped") == 3
    pd.testing.assert_frame_equal(pd.read_csv(folder / "results.csv"), results)


def test_unknown_data_override_fails_with_the_key_named(tmp_path):
    out = run(["baselines", "--data", "n_eys=10"], tmp_path)
    assert out.returncode != 0
    assert "n_eys" in out.stderr and "n_eyes" in out.stderr


def test_unknown_recipe_fails_with_the_known_ones_listed(tmp_path):
    out = run([*ARGS[:-3], "--recipes", "re-m3dr,magic", "--quiet"], tmp_path)
    assert out.returncode != 0
    assert "magic" in out.stderr and "mmpareto" in out.stderr


def test_list_shows_every_catalog_entry():
    out = subprocess.run([sys.executable, "-m", "remd_core", "list"], capture_output=True, text=True, check=True)
    for name in ("synthetic-stage2", "synthetic-inhouse", "stage2", "fairvision-glaucoma", "harvard-gf", "randhie"):
        assert name in out.stdout
