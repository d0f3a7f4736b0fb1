"""Results by patient group (remd_core.evaluation.groups, experiments.patient_groups): the equations
against hand computations, and a FairVision-layout fixture whose Black eyes carry labels shifted by a
known amount, so a known predictor has a computable error per group."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from remd_core.data import load
from remd_core.evaluation.groups import (attributes_of, deviation, equity_scaled, equity_scaled_error, group_report,
                                         group_tables, per_group_report)
from remd_core.experiments.patient_groups import EQUITY_FILE, GROUP_FILE, results_by_group

SHIFT = 2.0  # dB added to the labels of the Black eyes; the known predictor does not know it
SPLITS = {"train": [f"data_{k:06d}" for k in range(1, 7)], "val": [f"data_{k:06d}" for k in range(7, 9)],
          "test": [f"data_{k:06d}" for k in range(9, 18)]}
TEST = SPLITS["test"]
RACE = dict(zip(TEST, ["Asian", "Black", "White"] * 3))
GENDER = dict(zip(TEST, ["Female", "Female", "Male", "Male", "Male", "Female", "Male", "Female", "Male"]))
ETHNICITY = dict(zip(TEST, ["Non-Hispanic"] * 4 + ["Hispanic"] * 4 + [""]))  # the last eye: unknown
BASE = dict(zip(TEST, [-1.0, -3.0, -6.0, -2.0, -9.0, -4.0, -12.0, -5.0, -0.5]))  # what the predictor predicts


def label(eye: str) -> float:
    return BASE[eye] + (SHIFT if RACE[eye] == "Black" else 0.0) if eye in TEST else -3.0 - int(eye[-2:]) % 5


@pytest.fixture(autouse=True)
def own_outputs(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("REMD_OUTPUTS", str(tmp_path_factory.mktemp("outputs")))


@pytest.fixture
def fairvision(tmp_path) -> Path:
    """Tiny eyes in FairVision's layout (``Glaucoma/{train,val,test}/*.npz``) and its metadata table
    ``data_summary_glaucoma.csv`` (filename, age, gender, race, ethnicity, use, md)."""
    use = {"train": "training", "val": "validation", "test": "test"}
    rows = []
    for split, ids in SPLITS.items():
        folder = tmp_path / "Glaucoma" / split
        folder.mkdir(parents=True)
        for k, eye in enumerate(ids):
            np.savez(folder / f"{eye}.npz", oct_bscans=np.full((4, 12, 12), 10 * k, np.uint8),
                     slo_fundus=np.full((12, 12), 20 * k, np.uint8), md=np.array(label(eye)), glaucoma=np.array(1))
            rows.append({"filename": f"{eye}.npz", "age": 60 + k, "gender": GENDER.get(eye, "Female"),
                         "race": RACE.get(eye, "White"), "ethnicity": ETHNICITY.get(eye, "Non-Hispanic"),
                         "use": use[split], "md": label(eye)})
    pd.DataFrame(rows).to_csv(tmp_path / "Glaucoma" / "data_summary_glaucoma.csv", index=False)
    return tmp_path


def load_fixture(root: Path):
    return load("fairvision-glaucoma", root=str(root), image_size=8, n_bscans=2)


# ------------------------------------------------------------------------------------------------
# The equations


def test_equations_against_hand_computations():
    # Eq. (1)-(2) as the official equity_scaled_AUC computes them: AUC 0.8, groups 0.7, 0.9, 0.85
    assert deviation(0.8, [0.7, 0.9, 0.85]) == pytest.approx(0.25)
    assert equity_scaled(0.8, [0.7, 0.9, 0.85]) == pytest.approx(0.8 / 1.25)
    assert equity_scaled(0.8, [0.8, 0.8]) == pytest.approx(0.8)            # no disparity: the metric itself
    assert np.isnan(equity_scaled(-0.2, [0.1, -0.5]))                       # undefined for R^2 <= 0
    assert deviation(0.5, [0.4, np.nan]) == pytest.approx(0.1)              # an undefined group is left out
    # Eq. (3), ours: E + sum |E_g - E|, at least E
    assert equity_scaled_error(2.0, [1.0, 4.0]) == pytest.approx(2.0 + 1.0 + 2.0)
    assert equity_scaled_error(2.0, [2.0, 2.0]) == pytest.approx(2.0)


def test_per_group_report_counts_and_missing_values():
    report = per_group_report([1.0, 2.0, 3.0, 4.0, 5.0], [1.0, 2.0, 3.0, 5.0, 5.0], ["a", "a", "b", "b", None])
    assert list(report.index) == ["a", "b", "all"]
    assert report["n"].tolist() == [2, 2, 5]
    assert report.loc["a", "mse"] == 0.0 and report.loc["b", "mse"] == pytest.approx(0.5)
    assert report.loc["all", "mse"] == pytest.approx(1 / 5)  # the eye without a value counts overall only
    table, summary = group_tables([1.0, 2.0], [1.0, 2.0], pd.DataFrame({"site": ["x", "y"]}))
    assert summary.loc[0, "r2_groups_undefined"] == 2  # one eye per group: no R^2
    with pytest.raises(ValueError, match=r"no attribute column\(s\) \['race'\]"):
        group_tables([1.0], [1.0], pd.DataFrame({"site": ["x"]}), columns=["race"])


# ------------------------------------------------------------------------------------------------
# The FairVision fixture: known group effects


def hand_metrics(ys, errors):
    ys, errors = np.asarray(ys), np.asarray(errors)
    mse_, mae_ = float(np.mean(errors ** 2)), float(np.mean(np.abs(errors)))
    ss_tot = float(np.sum((ys - ys.mean()) ** 2))
    return {"n": len(ys), "mse": mse_, "mae": mae_, "r2": 1 - float(np.sum(errors ** 2)) / ss_tot}


def test_fairvision_fixture_per_group_errors_and_equity_scaled_summary(fairvision):
    dataset = load_fixture(fairvision)
    assert list(dataset.test.ids) == TEST
    attributes = attributes_of(dataset)
    assert list(attributes.columns) == ["race", "gender", "ethnicity"]  # gender from the tabular male column
    assert attributes.loc["data_000010", "race"] == "Black" and attributes.loc["data_000010", "gender"] == "female"
    predictions = np.array([BASE[e] for e in TEST])  # the known predictor: right but for the shift
    table, summary = group_report(dataset, predictions)

    race = table[table.attribute == "race"].set_index("group")
    assert list(race.index) == ["Asian", "Black", "White", "all"]
    assert race.loc["Black", "mse"] == pytest.approx(SHIFT ** 2) and race.loc["Black", "mae"] == pytest.approx(SHIFT)
    assert race.loc["Asian", "mse"] == 0.0 and race.loc["White", "mae"] == 0.0
    assert race.loc["Asian", "r2"] == pytest.approx(1.0)
    black = [e for e in TEST if RACE[e] == "Black"]
    assert race.loc["Black", "r2"] == pytest.approx(hand_metrics([label(e) for e in black], [SHIFT] * 3)["r2"])
    every = hand_metrics([label(e) for e in TEST], [SHIFT if RACE[e] == "Black" else 0.0 for e in TEST])
    assert race.loc["all", "mse"] == pytest.approx(4 / 3) and race.loc["all", "r2"] == pytest.approx(every["r2"])

    es = summary.set_index("attribute")
    # race: MSE 4/3 overall; groups 0, 4, 0 -> Delta = 4/3 + 8/3 + 4/3 = 16/3, ES-MSE = 4/3 + 16/3 = 20/3
    assert es.loc["race", "delta_mse"] == pytest.approx(16 / 3) and es.loc["race", "es_mse"] == pytest.approx(20 / 3)
    # MAE 2/3 overall; groups 0, 2, 0 -> Delta = 8/3, ES-MAE = 10/3
    assert es.loc["race", "es_mae"] == pytest.approx(10 / 3)
    r2_delta = abs(1 - every["r2"]) * 2 + abs(race.loc["Black", "r2"] - every["r2"])
    assert es.loc["race", "es_r2"] == pytest.approx(every["r2"] / (1 + r2_delta))
    assert es.loc["race", "n_groups"] == 3 and es.loc["race", "n_missing"] == 0

    # gender: the Black eyes are female, male, female -> female 2 of 4 shifted, male 1 of 5
    gender = table[table.attribute == "gender"].set_index("group")
    assert gender.loc["female", "n"] == 4 and gender.loc["female", "mse"] == pytest.approx(2 * SHIFT ** 2 / 4)
    assert gender.loc["male", "mse"] == pytest.approx(SHIFT ** 2 / 5)
    assert es.loc["gender", "es_mse"] == pytest.approx(4 / 3 + abs(2 - 4 / 3) + abs(0.8 - 4 / 3))

    # ethnicity: one eye without a value is in the overall row, in no group
    assert es.loc["ethnicity", "n_missing"] == 1 and es.loc["ethnicity", "n_groups"] == 2
    ethnicity = table[table.attribute == "ethnicity"].set_index("group")
    assert ethnicity.loc["Hispanic", "n"] + ethnicity.loc["Non-Hispanic", "n"] == 8 and ethnicity.loc["all", "n"] == 9

    # any attribute by name; an unknown one is an error naming the choices
    _, by_use = group_report(dataset, predictions, columns=["use"])
    assert by_use["n_groups"].tolist() == [1]
    with pytest.raises(ValueError, match=r"no attribute\(s\) \['site'\]; it has \["):
        group_report(dataset, predictions, columns="site")


def test_a_data_set_without_attributes_has_no_group_report(fairvision):
    (fairvision / "Glaucoma" / "data_summary_glaucoma.csv").unlink()
    dataset = load_fixture(fairvision)  # no metadata table, and the npz files hold no male
    table, summary = group_report(dataset, dataset.test.y.numpy())
    assert table.empty and summary.empty


@pytest.mark.slow
def test_compare_writes_the_group_tables_beside_results(fairvision, tmp_path):
    from remd_core.experiments.compare import compare
    from remd_core.models import EncoderConfig
    from remd_core.training import TrainConfig

    dataset = load_fixture(fairvision)
    config = TrainConfig(epochs=1, batch_size=4, encoder=EncoderConfig(width=0.125, stem="small"), precision="float64")
    folder = tmp_path / "run"
    results = compare(dataset, ["naive-fusion"], [0], config, folder, progress=False, log=lambda *_: None)
    groups, equity = pd.read_csv(folder / GROUP_FILE), pd.read_csv(folder / EQUITY_FILE)
    assert (folder / "results.csv").is_file()
    assert set(groups.attribute) == {"race", "gender", "ethnicity"} and set(equity.attribute) == set(groups.attribute)
    # the written table is the one computed from the cell's recorded predictions
    predictions = np.asarray(results["test_predictions"].iloc[0])
    table, summary = group_report(dataset, predictions)
    np.testing.assert_allclose(groups["mse"].to_numpy(), table["mse"].to_numpy(), rtol=1e-3)
    np.testing.assert_allclose(equity["es_mse"].to_numpy(), summary["es_mse"].to_numpy(), rtol=1e-3)
    assert equity[["recipe", "seed", "model"]].drop_duplicates().values.tolist() == [["naive-fusion", 0, "fusion"]]
    # the same from the folder, for another column
    by_use, _ = results_by_group(folder, dataset, columns=["use"], write=False)
    assert by_use["group"].tolist() == ["test", "all"]
