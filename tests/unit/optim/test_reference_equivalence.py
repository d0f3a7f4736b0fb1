"""The fast strategies against the straightforward reference implementations, and the step-cost
benchmark's smoke run.

SGM (two backward passes over one forward, fused multi-tensor math, no host reads) must train a
model exactly as the straightforward SGM does (one backward per objective and one for the baseline,
per-tensor loops, a probe by explicit parameter copies); MMPareto must train it as the
official-structured MMPareto does. Same seed, CPU, float64, several steps: parameters, BatchNorm
statistics and logged values agree to floating-point tolerance."""

import copy
import importlib.util
import json
import math
import statistics
import sys

import pytest
import torch

from remd_core.data.format import DatasetSpec, ModalitySpec
from remd_core.models import EncoderConfig, MultimodalRegressor
from remd_core.optim import (MMPareto, MMParetoConfig, OGMGE, OGMGEConfig, SGM, SGMConfig, STRATEGIES, Joint,
                             JointConfig, build_strategy, min_norm_2)
from remd_core.optim.reference import (REFERENCE_STRATEGIES, MMParetoReference, SGMReference, official_min_norm_2)
from remd_core.paths import REPO_ROOT
from strategy_helpers import closure, make_conflict

SPEC = DatasetSpec("img", (ModalitySpec("fundus", "image", (3, 16, 16)), ModalitySpec("oct", "volume", (2, 16, 16))))
TOL = dict(rtol=1e-9, atol=1e-12)


def make_problem(seed=0, n=8, dtype=torch.float64):
    """A two-encoder CNN regressor with BatchNorm (so the probe's frozen statistics matter)."""
    torch.manual_seed(seed)
    model = MultimodalRegressor(SPEC, encoder=EncoderConfig(width=0.125, stem="small"), projection_dim=8).to(dtype)
    g = torch.Generator().manual_seed(seed + 1)
    inputs = {"fundus": torch.randn(n, 3, 16, 16, generator=g, dtype=dtype),
              "oct": torch.randn(n, 2, 16, 16, generator=g, dtype=dtype)}
    y = torch.randn(n, generator=g, dtype=dtype)
    return model, inputs, y



def train(strategy, model, inputs, y, steps=8):
    strategy.bind(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    return [strategy.step(closure(model, inputs, y), optimizer, step=t) for t in range(steps)]


def assert_same_model(a, b, **tol):
    for (key, x), z in zip(a.state_dict().items(), b.state_dict().values()):
        if x.is_floating_point():
            torch.testing.assert_close(x, z, **tol, msg=lambda m, key=key: f"{key}: {m}")
        else:
            assert torch.equal(x, z), key


def max_difference(a, b) -> float:
    return max((x - z).abs().max().item() for x, z in zip(a.state_dict().values(), b.state_dict().values())
               if x.is_floating_point())


SGM_CONFIGS = {
    "paper-k1-global": SGMConfig(),
    "curvature-k3-per-encoder": SGMConfig(probe_every=3, sharpness="curvature", cos_scope="per_encoder", window=4),
    "wide-gamma-alpha-half": SGMConfig(gamma_min=0.1, gamma_max=50.0, window=3, unimodal_weight=0.5, probe_eps=0.2),
}


@pytest.mark.parametrize("name", SGM_CONFIGS)
def test_sgm_trains_like_the_straightforward_sgm(name):
    config = SGM_CONFIGS[name]
    model, inputs, y = make_problem()
    fast, slow = copy.deepcopy(model), copy.deepcopy(model)
    logs_fast = train(SGM(config), fast, inputs, y)
    logs_slow = train(SGMReference(config), slow, inputs, y)
    assert_same_model(fast, slow, **TOL)
    cos_key = "cos" if config.cos_scope == "global" else "cos_fundus"
    for t, (a, b) in enumerate(zip(logs_fast, logs_slow)):
        for key in ("gamma", "sharpness", "sharpness_paper", "sharpness_curvature", cos_key, "loss_fused"):
            torch.testing.assert_close(a[key], b[key].to(a[key].dtype), **TOL, msg=lambda m, k=key, t=t: f"{k} @ {t}: {m}")
    # the comparison has power: gamma moved away from its first value, and SGM is not plain joint training
    gammas = [entry["gamma"].item() for entry in logs_fast]
    assert len({round(g, 9) for g in gammas}) > 2, gammas
    joint = copy.deepcopy(model)
    train(Joint(JointConfig(unimodal_weight=config.unimodal_weight)), joint, inputs, y)
    assert max_difference(fast, joint) > 1e-4


def test_sgm_equivalence_survives_a_conflict_where_min_norm_acts():
    model, inputs, y = make_problem(seed=3)
    make_conflict(model)
    fast, slow = copy.deepcopy(model), copy.deepcopy(model)
    logs_fast = train(SGM(SGMConfig()), fast, inputs, y + 20, steps=5)
    logs_slow = train(SGMReference(SGMConfig()), slow, inputs, y + 20, steps=5)
    assert logs_fast[0]["cos"] < 0 and 0.0 < logs_fast[0]["a_mm"] < 1.0 and logs_fast[0]["a_mm"] != 0.5
    assert_same_model(fast, slow, **TOL)
    for a, b in zip(logs_fast, logs_slow):
        torch.testing.assert_close(a["a_mm"], b["a_mm"].to(a["a_mm"].dtype), **TOL)


@pytest.mark.parametrize("conflict", [False, True])
def test_mmpareto_trains_like_the_official_structured_mmpareto(conflict):
    model, inputs, y = make_problem(seed=1)
    if conflict:
        make_conflict(model)
        y = y + 20
    fast, slow = copy.deepcopy(model), copy.deepcopy(model)
    logs_fast = train(MMPareto(MMParetoConfig()), fast, inputs, y, steps=6)
    logs_slow = train(MMParetoReference(MMParetoConfig()), slow, inputs, y, steps=6)
    assert_same_model(fast, slow, **TOL)
    for a, b in zip(logs_fast, logs_slow):
        for key in ("cos_fundus", "cos_oct", "a_mm_fundus", "a_mm_oct"):
            torch.testing.assert_close(a[key], b[key].to(a[key].dtype), **TOL)
    weights = [entry["a_mm_oct"].item() for entry in logs_fast] + [entry["a_mm_fundus"].item() for entry in logs_fast]
    if conflict:  # MinNorm in its interior, where both clip conventions agree
        assert any(0.001 < w < 0.999 and w != 0.5 for w in weights), weights
    joint = copy.deepcopy(model)
    train(Joint(JointConfig()), joint, inputs, y, steps=6)
    assert max_difference(fast, joint) > 1e-4


def test_official_min_norm_branches_and_where_they_differ_from_the_clipped_closed_form():
    g = torch.Generator().manual_seed(0)
    for _ in range(20):  # conflicting pairs of comparable length: the interior solution, same in both
        g1 = torch.randn(50, generator=g, dtype=torch.float64)
        g2 = -0.5 * g1 + torch.randn(50, generator=g, dtype=torch.float64)
        v11, v12, v22 = (g1 @ g1).item(), (g1 @ g2).item(), (g2 @ g2).item()
        a, _ = min_norm_2(g1, g2, clip=(0.001, 0.999))
        assert official_min_norm_2(v11, v12, v22) == pytest.approx(a.item(), rel=1e-12)
    # g2 much shorter than g1 and opposed: the official interior solution falls below 0.001
    g1 = torch.tensor([1.0, 0.0], dtype=torch.float64)
    g2 = torch.tensor([-1e-4, 1e-4], dtype=torch.float64)
    official = official_min_norm_2((g1 @ g1).item(), (g1 @ g2).item(), (g2 @ g2).item())
    clipped, _ = min_norm_2(g1, g2, clip=(0.001, 0.999))
    assert 0.0 < official < 0.001 and clipped.item() == pytest.approx(0.001)
    # the degenerate branches
    assert official_min_norm_2(1.0, 1.0, 4.0) == 0.999 and official_min_norm_2(4.0, 1.0, 1.0) == 0.001


def test_reference_strategies_are_built_by_name_but_not_listed():
    assert not set(REFERENCE_STRATEGIES) & set(STRATEGIES)
    assert isinstance(build_strategy("sgm_reference", {"probe_every": 2}), SGMReference)
    assert isinstance(build_strategy("mmpareto_reference", {"gamma": 1.0}), MMParetoReference)
    with pytest.raises(ValueError, match="gama"):
        build_strategy("sgm_reference", {"gama": 1.0})


def test_reference_state_round_trip_resumes_identically():
    model, inputs, y = make_problem()
    strategy = SGMReference(SGMConfig(window=3)).bind(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for t in range(4):
        strategy.step(closure(model, inputs, y), optimizer, step=t)
    saved = copy.deepcopy((model.state_dict(), optimizer.state_dict(), strategy.state_dict()))
    for t in range(4, 7):
        strategy.step(closure(model, inputs, y), optimizer, step=t)
    model2, _, _ = make_problem()
    model2.load_state_dict(saved[0])
    optimizer2 = torch.optim.Adam(model2.parameters(), lr=1e-2)
    optimizer2.load_state_dict(saved[1])
    strategy2 = SGMReference(SGMConfig(window=3)).bind(model2)
    strategy2.load_state_dict(saved[2])
    for t in range(4, 7):
        strategy2.step(closure(model2, inputs, y), optimizer2, step=t)
    assert_same_model(model, model2, rtol=0, atol=0)


# --------------------------------------------------------------------------------------------------
# host reads and the benchmark script
# --------------------------------------------------------------------------------------------------


def load_bench():
    """``benchmarks/bench_steps.py`` as a module (benchmarks are scripts, not a package); loading it
    puts its ``stepbench`` package on the path."""
    if "bench_steps" not in sys.modules:
        spec = importlib.util.spec_from_file_location("bench_steps", REPO_ROOT / "benchmarks" / "bench_steps.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["bench_steps"] = module  # dataclasses look their module up while it executes
        spec.loader.exec_module(module)
    return sys.modules["bench_steps"]


def bench_measure():
    """``benchmarks/stepbench/measure.py``: the host-read counter and the stub optimizer."""
    load_bench()
    import stepbench.measure

    return stepbench.measure


FAST = {
    "joint": lambda: Joint(JointConfig(), check_finite=False),
    "naive": lambda: Joint(JointConfig(unimodal_weight=0.0), check_finite=False),
    "ogm_ge": lambda: OGMGE(OGMGEConfig(), check_finite=False, generator=torch.Generator().manual_seed(0)),
    "mmpareto": lambda: MMPareto(MMParetoConfig(), check_finite=False),
    "sgm": lambda: SGM(SGMConfig(), check_finite=False),
    "sgm-k4-curvature-per-encoder": lambda: SGM(SGMConfig(probe_every=4, sharpness="curvature",
                                                          cos_scope="per_encoder"), check_finite=False),
}


@pytest.mark.parametrize("name", FAST)
def test_fast_strategies_read_nothing_back_from_the_device(name):
    bench = bench_measure()
    model, inputs, y = make_problem(dtype=torch.float32)
    strategy = FAST[name]().bind(model)
    optimizer = bench.StubOptimizer(model.parameters())
    strategy.step(closure(model, inputs, y), optimizer, step=1)  # a step without a probe first
    for t in (4, 5):
        with bench.count_host_reads() as counter:
            strategy.step(closure(model, inputs, y), optimizer, step=t)
        assert counter["n"] == 0, (name, t)


def test_the_host_read_counter_sees_the_reference_reads():
    bench = bench_measure()
    model, inputs, y = make_problem(dtype=torch.float32)
    strategy = SGMReference(SGMConfig(), check_finite=False).bind(model)
    with bench.count_host_reads() as counter:
        strategy.step(closure(model, inputs, y), bench.StubOptimizer(model.parameters()), step=0)
    assert counter["n"] > len(list(model.parameters()))


SMOKE = ["--steps", "2", "--warmup", "1", "--repeats", "1", "--n-eyes", "40", "--image-size", "16", "--n-bscans", "2",
         "--pool", "2", "--loader-batches", "2", "--epoch-steps", "1", "--device", "cpu"]


@pytest.mark.parametrize("profile,extra,stem,batches", [
    ("cpu", ["--batch-sizes", "4"], "steps-cpu", ["4"]),
    ("gpu", ["--batch-sizes", "2,4", "--width", "0.125"], "steps-cpu-gpu", ["2", "4"]),
])
def test_bench_steps_runs_and_writes_its_table(profile, extra, stem, batches, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("REMD_OUTPUTS", str(tmp_path / "outputs"))
    bench = load_bench()
    out = tmp_path / "bench"
    bench.main(["--profile", profile, "--out", str(out), *SMOKE, *extra])
    printed = capsys.readouterr().out
    assert "| strategy | median ms |" in printed and "| target | value |" in printed
    result = json.loads((out / f"{stem}.json").read_text())
    assert (out / f"{stem}.md").read_text().startswith("# Step cost per strategy")
    meta = result["meta"]
    assert meta["profile"] == profile and meta["model"].startswith("resnet34" if profile == "gpu" else "resnet18")
    assert sorted(result["batches"]) == sorted(batches)
    for bs, block in result["batches"].items():
        c = block["components_ms"]
        assert set(c) == {"forward", "backward", "nograd", "optimizer", "noise"} and all(v > 0 for v in c.values())
        rows = {r["strategy"]: r for r in block["rows"]}
        assert set(rows) == {s.name for s in bench.SPECS}
        assert rows["joint"]["ratio_to_plain"] == 1.0 and rows["joint"]["ideal_ratio"] == 1.0
        plain = c["forward"] + c["backward"] + c["optimizer"]
        expected = {"mmpareto": (c["forward"] + 2 * c["backward"] + c["optimizer"]) / plain,
                    "sgm_k1": (c["forward"] + 2 * c["backward"] + 2 * c["nograd"] + c["optimizer"]) / plain,
                    "sgm_k4": (c["forward"] + 2 * c["backward"] + 0.5 * c["nograd"] + c["optimizer"]) / plain,
                    "mmpareto_reference": (c["forward"] + 3 * c["backward"] + c["optimizer"]) / plain,
                    "ogm_ge": (c["forward"] + c["backward"] + c["noise"] + c["optimizer"]) / plain}
        for name, ratio in expected.items():
            assert rows[name]["ideal_ratio"] == pytest.approx(ratio, rel=1e-9), name
        # the ratios are medians over sweeps of paired ratios: recompute them from the raw samples
        comp = block["components_samples_ms"]
        n_sweeps = len(rows["joint"]["samples_ms"])
        assert all(len(r["samples_ms"]) == n_sweeps for r in rows.values())
        assert all(len(v) == n_sweeps for v in comp.values())
        spec = {s.name: s for s in bench.SPECS}
        for name in ("mmpareto", "sgm_k1", "sgm_k4", "ogm_ge"):
            paired, rel, peer = [], [], []
            for j in range(n_sweeps):
                c = {k: v[j] for k, v in comp.items()}
                ratio = rows[name]["samples_ms"][j] / rows["joint"]["samples_ms"][j]
                paired.append(ratio)
                rel.append(ratio / (spec[name].ideal(c) / spec["joint"].ideal(c)))
                if spec[name].peer:
                    peer.append(rows[name]["samples_ms"][j] / rows[spec[name].peer]["samples_ms"][j])
            assert rows[name]["ratio_to_plain"] == pytest.approx(statistics.median(paired), rel=1e-9)
            assert rows[name]["ratio_to_ideal"] == pytest.approx(statistics.median(rel), rel=1e-9)
            if peer:
                assert rows[name]["ratio_to_peer"] == pytest.approx(statistics.median(peer), rel=1e-9)
        from stepbench.strategies import OURS

        for name in OURS:
            assert rows[name]["host_reads_per_step"] == 0, name
        assert rows["mmpareto_reference"]["host_reads_per_step"] > 0
        assert rows["sgm_k4"]["n"] >= 1 and all(math.isfinite(r["median_s"]) and r["median_s"] > 0 for r in rows.values())
        assert all(r["memory"]["peak_mib"] > 0 for r in rows.values())
        assert block["loader"]["samples_per_s"] > 0 and set(block["epoch"]) == set(rows)
        assert {t["target"] for t in block["targets"]} >= {"mmpareto at most 1.9x plain", "sgm_k1 at most 2.5x plain"}


def test_bench_end_to_end_times_both_stages_of_re_m3dr(tmp_path, monkeypatch):
    from remd_core.workbench import runner as notebook_runner

    monkeypatch.setenv("REMD_OUTPUTS", str(tmp_path / "outputs"))
    tiny = {**notebook_runner.PROFILES["cpu"], "N_EYES": 40, "IMAGE_SIZE": 16, "N_BSCANS": 2, "EPOCHS": 1,
            "WIDTH": 0.125}
    monkeypatch.setitem(notebook_runner.PROFILES, "cpu", tiny)
    bench = load_bench()
    result = bench.main(["--end-to-end", "--device", "cpu", "--out", str(tmp_path / "bench")])
    run = result["runs"]["re-m3dr"]
    assert run["epochs_per_stage"] == 1 and 0 < run["stage2_seconds"] < run["seconds"]
    assert json.loads((tmp_path / "bench" / "end-to-end-cpu.json").read_text())["runs"]["re-m3dr"]["seconds"] > 0
