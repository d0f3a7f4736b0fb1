from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from remd_core.experiments import studies
from remd_core.data import load
from remd_core.diagnosis import fixed_batch_loss
from remd_core.models import EncoderConfig, MultimodalRegressor


def _history(n, columns):
    return pd.DataFrame({"step": np.arange(10, 10 + n), "epoch": np.arange(n) // 4, "loss_fused": np.ones(n),
                         **{c: np.linspace(1, 0, n) for c in columns}})


def test_stacked_histories_has_one_curve_per_unimodal_head_and_a_shared_progress_axis():
    runs = {("fundus", "all"): SimpleNamespace(history=_history(8, ["loss_fundus"])),
            ("mmpareto", "tail"): SimpleNamespace(history=_history(4, ["loss_fundus", "loss_oct"]))}
    frame = studies.stacked_histories(runs)
    sizes = frame.groupby(["model", "subset", "head"]).size()
    assert sizes.to_dict() == {("fundus", "all", "fundus"): 8, ("mmpareto", "tail", "fundus"): 4,
                               ("mmpareto", "tail", "oct"): 4}
    for _, part in frame.groupby(["model", "head"]):
        assert part["progress"].iloc[-1] == 1.0 and part["progress"].iloc[0] == 1 / len(part)
    assert "fused" not in set(frame["head"])


def test_label_order_score_is_one_for_an_embedding_that_orders_by_label_and_near_zero_for_noise():
    y = np.random.default_rng(0).uniform(-30, 2, 80)
    angle = (y - y.min()) / (y.max() - y.min()) * np.pi / 2   # cosine distance grows with |dy|
    ordered = np.stack([np.cos(angle), np.sin(angle)], axis=1)
    assert studies.label_order_score(ordered, y) == pytest.approx(1.0)
    noise = np.random.default_rng(1).normal(size=(80, 16))
    assert abs(studies.label_order_score(noise, y)) < 0.1


def test_embedding_frame_recovers_a_rank_two_structure():
    rng = np.random.default_rng(0)
    latent = rng.normal(size=(50, 2)) * [3.0, 1.0]
    features = latent @ rng.normal(size=(2, 6))
    frame = studies.embedding_frame(features, np.arange(50))
    assert frame["explained"].iloc[0] == pytest.approx(1.0)
    assert abs(np.corrcoef(frame["pc1"], frame["pc2"])[0, 1]) < 1e-8
    assert list(frame["y"]) == list(range(50))


def test_probe_scores_keeps_one_row_per_probe_and_matches_scipy():
    paper = [0.5, 0.5, 0.9, 0.9, 0.2, 0.2, 0.7, 0.7]   # probe every 2 steps: each value repeats
    curvature = [0.1, 0.1, 0.3, 0.3, 0.05, 0.05, 0.6, 0.6]
    gamma = [1.0, 1.0, 2.0, 2.0, 0.5, 0.5, 1.5, 1.5]
    history = pd.DataFrame({"step": range(8), "sharpness_paper": paper, "sharpness_curvature": curvature,
                            "gamma": gamma, "norm_base": [1, 1, 2, 2, 0.3, 0.3, 1.2, 1.2]})
    probes, summary = studies.probe_scores(history)
    assert list(probes["step"]) == [0, 2, 4, 6]
    assert summary["n_probes"] == 4
    expected = stats.spearmanr(paper[::2], curvature[::2])[0]
    assert summary["paper_vs_curvature"] == pytest.approx(expected)
    assert summary["paper_vs_gamma"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="SGM"):
        studies.probe_scores(history.drop(columns="sharpness_curvature"))


def test_describe_diagnosis_states_what_the_numbers_say():
    puzzle = pd.DataFrame({"test_r2": [0.6, 0.4, 0.5, 0.7]},
                          index=["unimodal-fundus", "unimodal-oct", "naive-fusion", "mmpareto"])
    oscillation = pd.DataFrame({"model": ["mmpareto"] * 3 + ["fundus"], "subset": ["all", "head", "tail", "all"],
                                "oscillation": [0.9, 0.2, 0.3, 0.1]})
    sharpness = pd.DataFrame({"top_hessian_eigenvalue": [1.0, 5.0, 9.0]}, index=["fundus", "naive-fusion", "mmpareto"])
    text = studies.describe_diagnosis(puzzle, oscillation, sharpness)
    assert "naive-fusion: test R² 0.500, below the best single modality (unimodal-fundus, 0.600)" in text
    assert "mmpareto: test R² 0.700, above" in text
    assert "as the paper (Fig. 2b-c), all data oscillates most" in text
    assert "are sharper than the unimodal ones" in text
    oscillation.loc[1, "oscillation"] = 2.0
    assert "unlike the paper" in studies.describe_diagnosis(puzzle, oscillation, sharpness)


@pytest.mark.slow
def test_landscape_table_centre_is_the_trained_loss_and_parameters_are_restored():
    dataset = load("synthetic-stage2", n_eyes=60, image_size=16, oct_size=16, n_bscans=2, test=0.2, val=0.2, cache=False)
    torch.manual_seed(0)
    model = MultimodalRegressor(dataset.spec, encoder=EncoderConfig(width=0.125))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    mean, std = float(dataset.train.y.mean()), float(dataset.train.y.std())
    slices, summary = studies.landscape_table({"m": model}, dataset.train, mean, std, alphas=[-0.5, 0.0, 0.5],
                                              hessian_iters=3, batch=16)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    direct = float(fixed_batch_loss(model.eval(), dataset.train, mean, std, size=16)(model).detach())
    assert summary.loc["m", "loss_at_minimum"] == pytest.approx(direct, rel=1e-6)
    assert list(slices["alpha"]) == [-0.5, 0.0, 0.5]
    assert summary.loc["m", "slice_sharpness"] == pytest.approx(slices["loss"].mean() - direct, rel=1e-6)
