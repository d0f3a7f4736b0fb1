"""The coupled-imbalance testbed: its grid file and the outcome tables of notebook 06."""

import numpy as np
import pandas as pd
import pytest

from remd_core.evaluation import metrics
from remd_core.experiments.grid import expand
from remd_core.experiments.testbed import (OUTCOMES, best_unimodal, mechanism_knobs, oscillation, outcomes, phase_grid,
                                           settings_per_group, verdict)
from remd_core.workbench.sweep import load_grid

RECIPES = ["unimodal-oct", "unimodal-fundus", "naive-fusion", "mmpareto", "re-m3dr", "pretrained-naive-fusion"]


def test_the_grid_has_one_default_setting_shared_by_every_mechanism():
    grid = load_grid("fusion_fails")
    cells = expand(grid)
    assert len(cells) == len({c.key for c in cells}) == 16 * 6 * 3
    default = [c for c in cells if set(c.params) == {"DATASET", "RECIPE", "SEED", "PROBE_EVERY"}]
    # every sub-grid but the training-set size and the control (whose size is not the profile's N_EYES) holds the
    # default setting; the control's reference is the training-set size's cell
    assert len(default) == 6 * 3 and all(set(c.groups) == set(grid.groups) - {"train_size", "control"}
                                         for c in default)
    small = [c for c in cells if c.params.get("N_EYES") == 300 and "NULL_MODALITY" not in c.params]
    assert len(small) == 6 * 3 and all(set(c.groups) == {"train_size", "control"} for c in small)
    assert mechanism_knobs(grid, "control") == ["NULL_MODALITY", "N_EYES"]
    assert mechanism_knobs(grid, "null_modality") == ["NULL_MODALITY"]
    phase = expand(grid, seeds=[0], groups=["phase"])
    assert len(phase) == 9 * 6
    # the tail and gap sub-grids are the diagram's row and column through the default: no cell of their own
    assert {c.key for c in expand(grid, seeds=[0], groups=["tail", "gap"])} <= {c.key for c in phase}
    assert mechanism_knobs(grid, "phase") == ["TAIL", "FUNDUS_DISCORDANCE_DB"]  # not the grid-wide PROBE_EVERY


def _setting(rng, tail, n_eyes=40, seeds=(0, 1, 2), fusion_noise=1.0):
    """Per-eye predictions of every recipe at one setting: prediction = y + noise of a known SD."""
    y = rng.normal(-5, 5, n_eyes)
    noise = {"unimodal-oct": 3.0, "unimodal-fundus": 2.0, "naive-fusion": fusion_noise, "mmpareto": fusion_noise,
             "re-m3dr": 0.5, "pretrained-naive-fusion": 0.5}
    rows, table = [], []
    for recipe in RECIPES:
        for seed in seeds:
            cell = f"t{tail}__{recipe}__seed{seed}"
            prediction = y + rng.normal(0, noise[recipe], n_eyes)
            rows.append(pd.DataFrame({"cell": cell, "recipe": recipe, "seed": seed, "model": "fusion", "eye": range(n_eyes),
                                      "y": y, "prediction": prediction}))
            # validation R2 prefers the OCT model although its test predictions are worse
            val = {"unimodal-oct": 0.9, "unimodal-fundus": 0.5}.get(recipe, 0.7)
            table.append({"recipe": recipe, "seed": seed, "cell": cell, "TAIL": tail, "groups": "tail",
                          "val_r2": val, "test_r2": metrics.r2(y, prediction)})
    return pd.concat(rows, ignore_index=True), pd.DataFrame(table)


def test_outcomes_are_paired_differences_with_the_unimodal_model_chosen_on_validation():
    rng = np.random.default_rng(0)
    good, good_table = _setting(rng, 1.0)
    bad, bad_table = _setting(rng, 2.0, fusion_noise=6.0)
    predictions, table = pd.concat([good, bad]), pd.concat([good_table, bad_table])
    assert best_unimodal(good_table) == "unimodal-oct"
    result = outcomes(table, predictions, group="tail", swept=["TAIL"], metrics=("r2",), n_boot=300, n_perm=300)
    assert set(result["setting"]) == {"TAIL=1", "TAIL=2"} and set(result["mechanism"]) == {"tail"}
    assert list(result["outcome"].unique()) == [name for name, _, _ in OUTCOMES]
    assert (result.loc[result["outcome"] == "fusion - best unimodal", "b"] == "unimodal-oct").all()
    # by hand: mean over seeds of R2(naive fusion) - R2(OCT), at tail 2
    at = predictions[predictions["cell"].str.startswith("t2.0")]
    by_hand = np.mean([metrics.r2(g["y"], g["prediction"]) for _, g in at[at["recipe"] == "naive-fusion"].groupby("seed")]) \
        - np.mean([metrics.r2(g["y"], g["prediction"]) for _, g in at[at["recipe"] == "unimodal-oct"].groupby("seed")])
    row = result[(result["TAIL"] == 2.0) & (result["outcome"] == "fusion - best unimodal")].iloc[0]
    assert row["diff"] == pytest.approx(by_hand, rel=1e-12) and row["ci_high"] < 0
    grid = phase_grid(result.assign(FUNDUS_DISCORDANCE_DB=0.75), "fusion - best unimodal")
    assert grid.loc[2.0, 0.75] == pytest.approx(by_hand, rel=1e-12)
    text = verdict(result, "TAIL")
    # fusion's noise is 6 dB against the OCT model's 3; Re-M3Dr's 0.5, as its control's; MMPareto's as fusion's
    assert text.splitlines()[0] == ("TAIL over 1, 2: fusion falls below the best modality at 2. "
                                    "There: 2: re-m3dr - fusion above 0.")


def test_a_range_without_the_puzzle_says_so():
    rng = np.random.default_rng(1)
    predictions, table = _setting(rng, 1.0)
    result = outcomes(table, predictions, metrics=("r2",), n_boot=200, n_perm=200)
    assert "no setting in this range reproduces the puzzle" in verdict(result, "TAIL")


def test_a_setting_without_unimodal_rows_cannot_choose_a_modality():
    rng = np.random.default_rng(2)
    _, table = _setting(rng, 1.0)
    with pytest.raises(ValueError, match="no unimodal rows"):
        best_unimodal(table[~table["recipe"].str.startswith("unimodal")])


def test_sub_grids_are_shown_when_they_hold_two_settings():
    rng = np.random.default_rng(3)
    tables = [_setting(rng, t)[1] for t in (1.0, 2.0)]
    default, tail2 = tables[0].assign(groups="tail;gap"), tables[1].assign(groups="tail")  # the default: most sub-grids
    grid = load_grid("fusion_fails")
    assert settings_per_group(pd.concat([default, tail2]), grid) == ["tail"]
    assert settings_per_group(default, grid) == []


def test_oscillation_sets_the_probe_beside_the_batch_loss_per_setting(tmp_path):
    steps = np.arange(60)
    batch = 1.0 + 0.3 * (steps % 2)  # a zig-zag: the batches alternate between head-heavy and tail-heavy
    probe = np.where(steps % 3 == 0, 0.8, np.nan)  # a model that does not move: a constant probe loss
    table = []
    for seed in (0, 1):
        cell = f"default__naive-fusion__seed{seed}"
        (tmp_path / "cells" / cell).mkdir(parents=True)
        pd.DataFrame({"step": steps, "loss_fused": batch, "probe_loss_fused": probe}).to_csv(
            tmp_path / "cells" / cell / "history.csv", index=False)
        table.append({"recipe": "naive-fusion", "seed": seed, "cell": cell, "groups": "tail", "TAIL": 1.0})
    table.append({"recipe": "naive-fusion", "seed": 2, "cell": "no-history", "groups": "tail", "TAIL": 1.0})
    result = oscillation(tmp_path, pd.DataFrame(table), group="tail", swept=["TAIL"])
    row = result.iloc[0]
    assert (row["setting"], row["head"], row["seeds"], row["probe_every"]) == ("TAIL=1", "fused", 2, 3)
    # by hand: every 10-step window moves 10 x 0.3 and nets 0 (an even number of steps), over a mean level of 1.15
    assert row["batch_oscillation"] == pytest.approx(10 * 0.3 / 10 / 1.15, rel=1e-12)
    assert row["probe_oscillation"] == 0.0


def test_the_scale_scan_picks_the_cheapest_candidate_where_both_modalities_learn():
    from remd_core.experiments.testbed import scale_scan

    def rows(group, oct_r2, fundus_r2, seconds):
        return [{"groups": group, "recipe": f"unimodal-{m}", "seed": s, "test_r2": r2[s], "seconds": seconds,
                 "N_EYES": 700} for m, r2 in (("oct", oct_r2), ("fundus", fundus_r2)) for s in range(3)]

    table = pd.DataFrame(rows("small", [0.5, 0.4, 0.45], [0.0, 0.1, 0.05], 5.0)      # the fundus does not learn
                         + rows("large", [0.6, 0.6, 0.6], [0.5, 0.4, 0.3], 30.0)
                         + rows("medium", [0.5, 0.4, 0.3], [0.35, 0.3, 0.31], 12.0))  # means 0.4 and 0.32
    scan, chosen = scale_scan(table)
    assert chosen == "medium" and list(scan["candidate"]) == ["small", "medium", "large"]
    medium = scan.set_index("candidate").loc["medium"]
    assert medium["fundus_r2_mean"] == pytest.approx(0.32) and medium["seconds_per_seed"] == pytest.approx(24.0)
    assert medium["oct_r2_sd"] == pytest.approx(0.1) and medium["oct_seeds"] == 3
    assert list(scan["both_learn"]) == [False, True, True]
    assert scale_scan(table, threshold=0.7)[1] is None


def test_the_positive_control_is_read_from_its_interval():
    from remd_core.experiments.testbed import control_check

    rng = np.random.default_rng(4)
    frames = [_setting(rng, 1.0), _setting(rng, 1.0, fusion_noise=6.0)]
    for (predictions, table), null in zip(frames, ("none", "fundus")):
        table["NULL_MODALITY"], table["groups"] = null, "control" if null != "none" else "tail;control"
        predictions["cell"] = predictions["cell"] + f"__{null}"
        table["cell"] = table["cell"] + f"__{null}"
    predictions = pd.concat([p for p, _ in frames])
    table = pd.concat([t for _, t in frames]).drop(columns="TAIL")
    result = outcomes(table, predictions, group="control", swept=["NULL_MODALITY"], metrics=("r2",), n_boot=200,
                      n_perm=200)
    assert set(result["setting"]) == {"NULL_MODALITY=none", "NULL_MODALITY=fundus"}
    seen, sentence = control_check(result)
    assert seen is True and sentence.startswith("Positive control (NULL_MODALITY=fundus, 3 seeds): fusion - best "
                                                "unimodal -") and "below 0" in sentence
    # the same comparison where fusion does not lose: the testbed cannot be trusted
    seen, sentence = control_check(result.assign(ci_high=result["ci_high"].abs() + 0.1))
    assert seen is False and "NOT below 0" in sentence
    assert control_check(result[result["NULL_MODALITY"] == "none"])[0] is None
