import json
import os

import pandas as pd
import pytest

from remd_core.config import ConfigError
from remd_core.paths import REPO_ROOT
from remd_core.experiments.grid import cell_key, expand, schedule
from remd_core.workbench.sweep import STAGE2_ONLY, SweepError, collect, group_summaries, load_grid, run_sweep, summarize

PAPER = REPO_ROOT / "sweeps" / "paper.yaml"
MINI = """
name: mini
datasets: [synthetic-stage2]
seeds: [0]
grids:
  main:
    recipes: [unimodal-fundus, naive-fusion]
  broken:                      # fails inside the notebook: no such backbone
    recipes: [unimodal-oct]
    params: {ARCH: [resnet7]}
"""
GOOD = ["synthetic-stage2__unimodal-fundus__seed0", "synthetic-stage2__naive-fusion__seed0"]
BROKEN = "synthetic-stage2__unimodal-oct__seed0__ARCH=resnet7"


def test_cell_notebook_follows_the_template_and_the_agreed_parameters():
    import nbformat

    from remd_core.workbench.runner import NOTEBOOK_DIR, notebook_parameters

    path = NOTEBOOK_DIR / "cells" / "train_recipe.ipynb"
    nb = nbformat.read(path, as_version=4)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    assert list(notebook_parameters(path)) == [
        "PROFILE", "DATASET", "RECIPE", "SEED", "N_EYES", "IMAGE_SIZE", "N_BSCANS", "EPOCHS", "ARCH", "WIDTH",
        "PRECISION", "TRAINING", "BATCH_SIZE", "LR", "MARGIN_M0", "MARGIN_BETA", "MARGIN_WARMUP", "REFERENCE_RUN_STEPS",
        "PROBE_EVERY", "GAMMA_BASE", "GAMMA_MIN", "GAMMA_MAX", "WINDOW", "TAIL", "OCT_DISCORDANCE_DB",
        "FUNDUS_DISCORDANCE_DB", "REDUNDANCY", "OCT_FLOOR_UM", "LABEL_NOISE", "SHORTCUT", "NULL_MODALITY", "CHECKPOINT_EVERY",
        "RUN_DIR",
        "WORK_DIR"]
    assert "cell_record(P" in nb.cells[-2].source and nb.cells[-1].cell_type == "markdown"
    checked = [c for c in nb.cells if c.cell_type == "code" and c.source.startswith("# NBVAL_CHECK_OUTPUT")]
    assert checked and all(c.outputs for c in checked)  # the smoke profile's reference output, for nbval


def grid_file(tmp_path, text, name="grid.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_unknown_keys_are_errors_naming_the_file_and_key(tmp_path):
    with pytest.raises(ConfigError, match=r"typo\.yaml.*unknown key\(s\) \['recipe'\]"):
        load_grid(grid_file(tmp_path, "datasets: [synthetic-stage2]\nrecipe: [re-m3dr]\nseeds: [0]\n", "typo.yaml"))
    with pytest.raises(ConfigError, match=r"bad\.yaml: grids\.t1: unknown key\(s\) \['seed'\]"):
        load_grid(grid_file(tmp_path, "datasets: [synthetic-stage2]\nrecipes: [re-m3dr]\nseeds: [0]\n"
                                      "grids:\n  t1: {seed: [1]}\n", "bad.yaml"))


def test_parameters_must_be_declared_by_the_cell_notebook(tmp_path):
    base = "datasets: [synthetic-stage2]\nrecipes: [re-m3dr]\nseeds: [0]\n"
    with pytest.raises(ConfigError, match=r"p\.yaml: unknown parameter\(s\) \['GAMA_BASE'\]; train_recipe\.ipynb"):
        load_grid(grid_file(tmp_path, base + "params: {GAMA_BASE: [1.0]}\n", "p.yaml"))
    with pytest.raises(ConfigError, match="SEED.*use datasets/recipes/seeds"):
        load_grid(grid_file(tmp_path, base + "params: {SEED: [1]}\n"))
    with pytest.raises(ConfigError, match="GAMMA_BASE = 'high' is a str"):
        load_grid(grid_file(tmp_path, base + "params: {GAMMA_BASE: [high]}\n"))
    with pytest.raises(ConfigError, match="unknown recipe 're-m3d'"):
        load_grid(grid_file(tmp_path, "datasets: [synthetic-stage2]\nrecipes: [re-m3d]\nseeds: [0]\n"))
    grid = load_grid(grid_file(tmp_path, MINI))
    with pytest.raises(ConfigError, match="EPOCH"):  # overrides too, before anything runs
        run_sweep(grid, tmp_path / "run", profile="smoke", overrides={"EPOCH": 3}, progress=False)
    with pytest.raises(ConfigError, match="ARCH.*set by the grid"):
        run_sweep(grid, tmp_path / "run", profile="smoke", overrides={"ARCH": "resnet34"}, progress=False)
    # a value the library's config rejects fails before any cell runs, naming the cell
    bad_sgm = load_grid(grid_file(tmp_path, base + "params: {GAMMA_MIN: [9.0]}\n", "sgm.yaml"))
    with pytest.raises(ConfigError, match=r"cell synthetic-stage2__re-m3dr__seed0__GAMMA_MIN=9: need gamma_base > 0 "
                                          r"and 0 <= gamma_min <= gamma_max; got 1.5, 9.0, 5.0"):
        run_sweep(bad_sgm, tmp_path / "run", profile="smoke", progress=False)
    assert not (tmp_path / "run").exists()


def test_paper_grid_is_the_union_of_its_tables_without_duplicates():
    grid = load_grid(PAPER)
    assert list(grid.groups) == ["table1", "table2", "sensitivity_m0", "sensitivity_beta", "sensitivity_gamma"]
    cells = expand(grid)
    assert len(cells) == len({c.key for c in cells}) == 66 + 15 + 11  # table1: the paper's 20 rows, BSAM and IGM
    default = {c.key: c for c in cells}["synthetic-stage2__re-m3dr__seed0"]
    # one run serves both tables and the default point of the margin curves (the gamma curve runs at gamma_max 10)
    assert default.groups == ("table1", "table2", "sensitivity_m0", "sensitivity_beta")
    assert default.params == {"DATASET": "synthetic-stage2", "RECIPE": "re-m3dr", "SEED": 0}
    one_seed = expand(grid, seeds=[0])
    assert len(one_seed) == 22 + 5 + 11 and {c.params["SEED"] for c in one_seed} == {0}
    # a cell's groups name every sub-grid holding it, selected or not
    table2 = expand(grid, seeds=[0], groups=["table2"])
    assert [c.params["RECIPE"] for c in table2] == ["re-m3dr", "wo-am", "am-only", "am-naive-fusion", "am-mmpareto",
                                                   "pretrained-naive-fusion"]
    # stage-1 trainers first: one cell per encoder no earlier cell trains (a one-modality recipe trains its own
    # modality's only: both unimodal recipes lead), then cells without stage 1, then the cells that find theirs trained
    order = [c.params["RECIPE"] for c in schedule(expand(grid, seeds=[0], groups=["table1", "table2"]), STAGE2_ONLY)]
    assert order[:7] == ["unimodal-fundus", "unimodal-oct", "simclr", "echomen-oct", "echomen-fundus", "re-m3dr",
                         "wo-am"]
    assert order[-5:] == ["echomen", "am-only", "am-naive-fusion", "am-mmpareto", "pretrained-naive-fusion"]


def test_groups_select_by_name_or_prefix():
    grid = load_grid("paper")  # a bare name is looked up in sweeps/
    sensitivity = expand(grid, groups=["sensitivity"])
    assert len(sensitivity) == 1 + 3 + 2 + 6
    assert {g for c in sensitivity for g in c.groups} >= {"sensitivity_m0", "sensitivity_beta", "sensitivity_gamma"}
    gamma = expand(grid, groups=["sensitivity_gamma"])
    assert [c.params.get("GAMMA_BASE", 1.5) for c in gamma] == [0.5, 1.0, 1.5, 2.0, 5.0, 10.0]  # section 5.6's grid
    assert {c.params["GAMMA_MAX"] for c in gamma} == {10.0} and grid.sensitivity_groups()["sensitivity_gamma"] == "GAMMA_BASE"
    with pytest.raises(ConfigError, match="no sub-grid 'table'"):  # a prefix ends at '_': table selects no table1
        expand(grid, groups=["table"])


def test_keys_are_stable_readable_and_safe():
    params = {"DATASET": "synthetic-stage2", "RECIPE": "re-m3dr", "SEED": 0, "GAMMA_BASE": 3.0}
    assert cell_key(params) == "synthetic-stage2__re-m3dr__seed0__GAMMA_BASE=3"
    assert cell_key({**params, "GAMMA_BASE": 3}) == cell_key(params)
    assert cell_key({**params, "MARGIN_BETA": 0.0001, "ARCH": "resnet34"}) == cell_key(
        {"ARCH": "resnet34", **params, "MARGIN_BETA": 0.0001}) == (
        "synthetic-stage2__re-m3dr__seed0__ARCH=resnet34__GAMMA_BASE=3__MARGIN_BETA=0.0001")
    odd = cell_key({**params, "ARCH": "a/b c"})
    assert "/" not in odd and " " not in odd and odd != cell_key({**params, "ARCH": "a-b-c"})
    long = cell_key({**params, **{f"P{i}": 0.123456 for i in range(12)}})
    assert len(long) <= 100 and long == cell_key({**params, **{f"P{i}": 0.123456 for i in range(12)}})
    assert [c.key for c in expand(load_grid(PAPER))] == [c.key for c in expand(load_grid(PAPER))]


def test_summary_refuses_to_average_different_settings():
    table = pd.DataFrame({"dataset": "d", "recipe": "re-m3dr", "model": "fusion", "seed": [0, 1, 0],
                          "groups": ["t1;s", "t1", "s"], "GAMMA_BASE": [1.5, 1.5, 3.0], "profile": "smoke",
                          "epochs": 1, "test_r2": [0.2, 0.4, 0.5]})
    with pytest.raises(ValueError, match="GAMMA_BASE"):
        summarize(table)
    by_gamma = summarize(table, by=("recipe", "model", "GAMMA_BASE"))
    assert by_gamma["seeds"].tolist() == [2, 1] and by_gamma["test_r2_mean"].tolist() == pytest.approx([0.3, 0.5])
    parts = group_summaries(table)
    assert list(parts) == ["t1", "s"] and parts["t1"]["seeds"].tolist() == [2]
    assert parts["s"].index.names == ["recipe", "model", "GAMMA_BASE"]


@pytest.mark.slow
def test_sweep_runs_cells_in_parallel_resumes_and_reports_failures(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("REMD_OUTPUTS", str(tmp_path / "outputs"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    grid = grid_file(tmp_path, MINI)
    folder = tmp_path / "outputs" / "sweep-mini"
    with pytest.raises(SweepError, match=BROKEN) as failure:  # a papermill execution per cell
        run_sweep(grid, folder, profile="smoke", workers=2, progress=False, notebooks=True)
    assert list(failure.value.failed) == [BROKEN]
    error = (folder / "cells" / BROKEN / "error.txt").read_text()
    assert BROKEN in error and "resnet7" in error and not (folder / "cells" / BROKEN / "results").exists()

    # the finished cells survive the failure: the table holds exactly their recorded rows
    table = pd.read_csv(folder / "results.csv")
    assert table["cell"].tolist() == GOOD and table["model"].tolist() == ["fundus", "fusion"]
    assert (table["groups"] == "main").all() and (table["profile"] == "smoke").all() and (table["epochs"] == 1).all()
    assert (table["ARCH"] == "resnet18").all()  # swept somewhere in the grid: a column at each cell's effective value
    for key, row in zip(GOOD, table.itertuples()):
        recorded = json.loads((folder / "cells" / key / "results" / "train_recipe.json").read_text())
        assert recorded["parameters"]["PROFILE"] == "smoke" and len(recorded["rows"]) == 1
        for column in ("test_r2", "test_mse", "test_mae", "few_mse", "val_r2", "best_epoch"):
            assert getattr(row, column) == pytest.approx(recorded["rows"][0][column])
        assert {"train_recipe.ipynb", "figures", "history.csv", "provenance.json"} <= {
            p.name for p in (folder / "cells" / key).iterdir()}
    pd.testing.assert_frame_equal(pd.read_parquet(folder / "results.parquet"), failure.value.table)
    assert (folder / "grid.yaml").exists() and (folder / "provenance.json").exists()

    # a rerun executes nothing and rewrites no result
    results = {k: folder / "cells" / k / "results" / "train_recipe.json" for k in GOOD}
    stamps = {k: os.stat(p).st_mtime_ns for k, p in results.items()}
    again = run_sweep(grid, folder, profile="smoke", groups=["main"], progress=False)
    assert again.attrs["executed"] == [] and sorted(again.attrs["skipped"]) == sorted(GOOD)
    assert {k: os.stat(p).st_mtime_ns for k, p in results.items()} == stamps

    with pytest.warns(UserWarning, match=BROKEN):  # collect names the cells it has no results for
        pd.testing.assert_frame_equal(again, collect(folder))
    # finished cells are never mixed with cells of other settings
    with pytest.raises(ConfigError, match="EPOCHS 1 -> 2"):
        run_sweep(grid, folder, profile="smoke", groups=["main"], overrides={"EPOCHS": 2}, progress=False)

    # the command resumes the same folder and prints the summary
    from remd_core.cli import main

    capsys.readouterr()
    assert main(["sweep", str(grid), "--profile", "smoke", "--groups", "main", "--run", "sweep-mini"]) == 0
    out = capsys.readouterr().out
    assert "all 2 cells finished earlier" in out and "naive-fusion" in out and "results.csv" in out
    assert {k: os.stat(p).st_mtime_ns for k, p in results.items()} == stamps

    # the default: each cell's steps as a function in a warm worker, the same rows and the same failure,
    # with where its seconds went instead of an executed notebook
    functions = tmp_path / "outputs" / "functions"
    with pytest.raises(SweepError, match=BROKEN) as failure:
        run_sweep(grid, functions, profile="smoke", workers=2, progress=False)
    assert "resnet7" in (functions / "cells" / BROKEN / "error.txt").read_text()
    columns = ["cell", "model", "test_r2", "test_mse", "few_mse", "val_r2", "best_epoch"]
    pd.testing.assert_frame_equal(failure.value.table[columns], table[columns])
    for key in GOOD:
        cell = functions / "cells" / key
        assert {"history.csv", "epochs.csv", "provenance.json"} <= {p.name for p in cell.iterdir()}
        assert not (cell / "train_recipe.ipynb").exists()
        seconds = json.loads((cell / "results" / "train_recipe.json").read_text())["seconds"]
        assert set(seconds) <= {"data", "stage1", "stage2", "probes", "evaluation", "checkpoints", "writing"}
        assert seconds.get("stage1", 0) + seconds.get("stage2", 0) > 0  # the data may be the worker's from a cell before


def test_a_notebook_shows_the_full_sweep_when_present_else_runs_the_grid(tmp_path, monkeypatch):
    """``full_sweep_or_run`` (notebooks 04 and 06), with a one-cell grid at the smoke scale, in this process."""
    from remd_core.experiments.executors import InlineExecutor
    from remd_core.workbench.profiles import Scale
    from remd_core.workbench.sweep import full_sweep_or_run

    monkeypatch.setenv("REMD_OUTPUTS", str(tmp_path / "outputs"))
    grid = load_grid(grid_file(tmp_path, "datasets: [synthetic-stage2]\nrecipes: [unimodal-fundus]\nseeds: [0]\n",
                               "one.yaml"))
    scale = Scale.from_profile("smoke")
    run = tmp_path / "run" / "sweep-one"
    # absent: the grid runs at the scale into the folder
    table, folder, source = full_sweep_or_run(grid, scale, run, full_sweep="sweep-one", executor=InlineExecutor(),
                                              progress=False)
    assert folder == run and source == f"this run's sweep ({scale.label()})"
    assert table["cell"].tolist() == ["synthetic-stage2__unimodal-fundus__seed0"] and (table["epochs"] == 1).all()
    recorded = json.loads((run / "provenance.json").read_text())
    assert recorded["overrides"] == scale.overrides() and recorded["seeds"] == [0]

    # present: outputs/<full_sweep>/results.csv is read, nothing runs
    (tmp_path / "outputs" / "sweep-one").mkdir(parents=True)
    table.to_csv(tmp_path / "outputs" / "sweep-one" / "results.csv", index=False)
    elsewhere = tmp_path / "run" / "elsewhere"
    full, folder, source = full_sweep_or_run(grid, scale, elsewhere, full_sweep="sweep-one")
    assert folder == tmp_path / "outputs" / "sweep-one" and not elsewhere.exists()
    assert source == "full sweep outputs/sweep-one: profile smoke, 1 epochs, seeds 0"
    pd.testing.assert_frame_equal(full, pd.read_csv(run / "results.csv"))
    # not asked for (USE_FULL_SWEEPS False): the grid runs, here resumed from the earlier run's folder
    again, folder, _ = full_sweep_or_run(grid, scale, run, full_sweep=None, executor=InlineExecutor(), progress=False)
    assert folder == run and again.attrs["skipped"] == table["cell"].tolist()
