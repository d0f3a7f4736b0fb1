import numpy as np
import pytest

from remd_core.data import load, loader_config
from remd_core.data.format import stage_from_md
from remd_core.data.synthetic import Config, generate, load_or_generate
from remd_core.data.synthetic.fundus import FundusKnobs, cup_to_disc_ratio
from remd_core.data.synthetic.md_distribution import UW_ARCHIVE_QUANTILES, preset
from remd_core.data.synthetic.oct import rnfl_thickness

SMALL = dict(n_eyes=60, image_size=32, oct_size=32, n_bscans=4, test=15, val=10, cache=False)


def test_uw_archive_distribution_matches_published_quantiles_within_half_a_db():
    md = preset("uw-archive").sample(np.random.default_rng(0), 200_000)
    for q, target in UW_ARCHIVE_QUANTILES.items():
        assert abs(np.quantile(md, q) - target) < 0.5, (q, np.quantile(md, q), target)
    assert md.max() <= 3.0
    assert md.min() >= -31.0
    assert (md < -25).mean() > 0.005, "the tail must reach the mid -20s and beyond"
    assert 0.10 < (md > -2.0).mean() < 0.30, "a share of normal eyes"


def test_quantile_check_would_fail_for_a_shifted_distribution():
    shifted = preset("uw-archive").sample(np.random.default_rng(0), 200_000) - 1.0
    assert abs(np.quantile(shifted, 0.5) - UW_ARCHIVE_QUANTILES[0.5]) > 0.5


def test_inhouse_is_wider_than_uw_archive():
    rng = np.random.default_rng(1)
    uw, inhouse = preset("uw-archive").sample(rng, 50_000), preset("inhouse").sample(rng, 50_000)
    assert inhouse.std() > uw.std() + 1.0
    iqr = lambda x: np.subtract(*np.quantile(x, [0.75, 0.25]))
    assert iqr(inhouse) > iqr(uw)


def test_hood_model_by_hand():
    # T = s0 * 10^(MD/10) + b: MD 0 gives s0 + b; MD -10 gives s0/10 + b; the severe tail sits on b
    assert rnfl_thickness(np.array(0.0), 55.0, 45.0) == pytest.approx(100.0)
    assert rnfl_thickness(np.array(-10.0), 55.0, 45.0) == pytest.approx(50.5)
    assert rnfl_thickness(np.array(-30.0), 55.0, 45.0) == pytest.approx(45.055)


def test_cup_to_disc_ratio_grows_monotonically_with_damage_and_stays_clinical():
    md = np.linspace(3, -31, 100)
    cdr = cup_to_disc_ratio(md, 0.3, FundusKnobs(0.0, 0.0, 0.0))
    assert np.all(np.diff(cdr) >= 0)
    assert cdr[0] == pytest.approx(0.3) and cdr[-1] < 0.92


@pytest.fixture(scope="module")
def small_arrays():
    return generate(Config(**SMALL), progress=False)


def test_generation_is_deterministic(small_arrays):
    again = generate(Config(**SMALL), progress=False)
    for key in ("md", "fundus", "oct", "age"):
        assert np.array_equal(small_arrays[key], again[key])
    other = generate(Config(**{**SMALL, "data_seed": 7}), progress=False)
    assert not np.array_equal(small_arrays["md"], other["md"])


def test_oct_saturates_in_the_severe_tail():
    arrays = generate(Config(**{**SMALL, "n_eyes": 400, "oct_discordance_db": 0.0}), progress=False)
    md, rnfl, floor = arrays["md"], arrays["rnfl_mean_um"], arrays["rnfl_floor_um"]
    severe, early = md < -15, (md > -4) & (md < -1)
    assert severe.any() and early.any()
    # severe eyes: thickness within a few um of their own floor; early eyes: far above it
    assert np.median(rnfl[severe] - floor[severe]) < 3.0
    assert np.median(rnfl[early] - floor[early]) > 20.0


def test_rnfl_band_is_visible_and_thinner_in_damaged_eyes():
    """The rendered image carries the RNFL: bright rows between the surface and the GCL are fewer
    in damaged eyes (measured on noise-free renders)."""
    arrays = generate(Config(**{**SMALL, "n_eyes": 200, "oct_speckle": 1e-3, "oct_noise": 0.0,
                                "oct_discordance_db": 0.0}), progress=False)
    bright_rows = (arrays["oct"] > 0.75 * 255).sum(axis=2).mean(axis=(1, 2))
    md = arrays["md"]
    assert bright_rows[md > -3].mean() > bright_rows[md < -12].mean() + 1.0


def test_laterality_mirrors_the_fundus(small_arrays):
    """The optic disc (brightest region) lies right of centre for OD and left for OS."""
    brightness = small_arrays["fundus"].astype(float).mean(axis=1)
    xs = np.arange(brightness.shape[-1])
    for image, left in zip(brightness, small_arrays["eye"].astype(bool)):
        weights = np.clip(image - np.quantile(image, 0.97), 0, None)
        centre = (weights.sum(axis=0) * xs).sum() / weights.sum()
        assert (centre < len(xs) / 2) == left


def test_age_is_weakly_related_to_damage():
    arrays = generate(Config(**{**SMALL, "n_eyes": 3000, "image_size": 8, "oct_size": 8, "n_bscans": 1}),
                      progress=False)
    r = np.corrcoef(arrays["md"], arrays["age"])[0, 1]
    assert -0.4 < r < -0.05


def test_load_returns_the_common_format_with_stages_from_md():
    dataset = load("synthetic-stage2", **SMALL)
    assert {k: len(v) for k, v in dataset.splits.items()} == {"train": 35, "val": 10, "test": 15}
    sample = dataset.train[0]
    assert isinstance(sample["id"], str)
    assert sample["fundus"].shape == (3, 32, 32) and sample["oct"].shape == (4, 32, 32)
    assert 0.0 <= float(sample["fundus"].min()) and float(sample["fundus"].max()) <= 1.0
    assert sample["present"].tolist() == [True, True]
    for split in dataset.splits.values():
        assert np.array_equal(split.stage.numpy(), stage_from_md(split.y.numpy()))
    ids = [i for s in dataset.splits.values() for i in s.ids]
    assert len(ids) == len(set(ids)) == 60


def test_cache_is_keyed_by_generation_parameters_only(tmp_path, monkeypatch):
    monkeypatch.setenv("REMD_OUTPUTS", str(tmp_path))
    config = Config(**{**SMALL, "cache": True})
    first = load_or_generate(config, progress=False)
    files = list((tmp_path / "cache").glob("*.npz"))
    assert len(files) == 1
    resplit = Config(**{**SMALL, "cache": True, "seed": 5, "test": 20})
    assert resplit.generation_key() == config.generation_key()
    assert Config(**{**SMALL, "oct_noise": 0.2}).generation_key() != config.generation_key()
    second = load_or_generate(resplit, progress=False)
    assert np.array_equal(first["oct"], second["oct"])


def test_catalog_defaults_are_the_documented_ones():
    config = loader_config("synthetic-stage2")
    assert (config.n_eyes, config.image_size, config.n_bscans, config.oct_size) == (700, 64, 8, 64)
    assert (config.test, config.val) == (200, 0.15)


# ---- mechanism knobs (issue 14): each defaults to today's generator --------------------------------

import hashlib  # noqa: E402

from scipy import integrate, stats  # noqa: E402

from remd_core.data.synthetic import MECHANISM_DEFAULTS  # noqa: E402
from remd_core.data.synthetic import mechanisms as mech  # noqa: E402
from remd_core.data.synthetic.md_distribution import (imbalance, tail_imbalance, temper, tempered_cdf,  # noqa: E402
                                                      tempered_pdf, tempered_quantile)
from remd_core.data.synthetic.oct import saturation_md  # noqa: E402

TINY = dict(n_eyes=3000, image_size=8, oct_size=8, n_bscans=1, cache=False)
"""Many eyes, tiny images: enough eyes for the statistical checks, fast enough for a unit test."""


def _digest(arrays):
    """sha256 over every array, keys sorted, floats rounded to 6 decimals, strings joined (the
    script that recorded the digests below before the knobs existed)."""
    h = hashlib.sha256()
    for k in sorted(arrays):
        v = arrays[k]
        if v.dtype.kind == "f":
            v = np.round(v, 6)
        h.update(k.encode())
        h.update(np.ascontiguousarray(v).tobytes() if v.dtype.kind != "U" else "".join(v).encode())
    return h.hexdigest()[:16]


TODAY = [  # recorded with the generator before the mechanism knobs, GENERATOR_VERSION 1
    (dict(n_eyes=40, image_size=32, oct_size=32, n_bscans=3, cache=False),
     "fe7118e2d5ca083c", "synthetic-uw-archive-4d53b0b39fde"),
    (dict(distribution="inhouse", n_eyes=30, image_size=16, oct_size=16, n_bscans=2, cache=False),
     "ad7fe97662c1978e", "synthetic-inhouse-35913f71de51"),
]
TODAY_KEYS = {"id", "md", "age", "male", "eye", "asymmetry", "fundus", "oct", "md_oct", "rnfl_floor_um",
              "rnfl_s0_um", "rnfl_mean_um", "oct_quality", "md_fundus", "cup_to_disc", "physiologic_cdr",
              "disc_radius"}


@pytest.mark.parametrize("params, digest, key", TODAY)
def test_default_knobs_reproduce_todays_generator_bit_for_bit(params, digest, key):
    """The digest covers every array generate returns (a new latent would change it), and the cache
    key is today's, so caches written before the knobs stay valid."""
    config = Config(**params)
    arrays = generate(config, progress=False)
    assert set(arrays) == TODAY_KEYS
    assert _digest(arrays) == digest
    assert config.generation_key() == key
    explicit = Config(**params, **MECHANISM_DEFAULTS)
    assert explicit.generation_key() == key and _digest(generate(explicit, progress=False)) == digest


def test_a_knob_that_is_on_changes_the_key_and_an_irrelevant_one_does_not():
    base = Config(**SMALL)
    for name, value in dict(tail=1.5, redundancy=0.5, oct_floor_um=50.0, label_noise=1.0, shortcut=0.5).items():
        assert Config(**SMALL, **{name: value}).generation_key() != base.generation_key(), name
    # the head threshold matters only when the shortcut is on
    assert Config(**SMALL, shortcut_head_db=-9.0).generation_key() == base.generation_key()
    assert (Config(**SMALL, shortcut=0.5, shortcut_head_db=-9.0).generation_key()
            != Config(**SMALL, shortcut=0.5).generation_key())


@pytest.mark.parametrize("name, value", [("tail", -0.1), ("tail", 3.5), ("redundancy", 1.2), ("redundancy", -0.1),
                                         ("oct_floor_um", 25.0), ("oct_floor_um", 70.0), ("label_noise", -1.0),
                                         ("label_noise", float("nan")), ("shortcut", 2.0), ("shortcut_head_db", -40.0),
                                         ("tail", "heavy")])
def test_knobs_outside_their_range_raise_naming_the_knob(name, value):
    with pytest.raises(ValueError, match=name):
        Config(**{name: value})
    with pytest.raises(ValueError, match=name):
        load("synthetic-stage2", **{name: value})


def test_the_catalog_loader_accepts_every_knob_as_an_override():
    dataset = load("synthetic-stage2", **{**SMALL, "image_size": 16, "oct_size": 16, "n_bscans": 1},
                   tail=1.5, redundancy=0.3, oct_floor_um=50.0, label_noise=1.0, shortcut=0.5, shortcut_head_db=-8.0)
    latents = dataset.notes["latents"]
    assert {"md_true", "shortcut_z"} <= set(latents)
    assert np.all(latents["rnfl_floor_um"] <= 50.0 + 17.5)


# tail heaviness

def test_mixture_pdf_and_cdf_are_exactly_the_samplers_distribution():
    for name in ("uw-archive", "inhouse"):
        d = preset(name)
        total, _ = integrate.quad(d.pdf, d.md_min, d.md_max, points=[d.onset], limit=200)
        assert total == pytest.approx(1.0, abs=1e-8)
        for x in (-25.0, -12.0, -4.5, d.onset + 0.3, 1.0):
            brute, _ = integrate.quad(d.pdf, d.md_min, x, points=[d.onset] if x > d.onset else None, limit=200)
            assert d.cdf(x) == pytest.approx(brute, abs=1e-8), (name, x)
        n = 100_000
        draws = d.sample(np.random.default_rng(3), n)
        assert stats.kstest(draws, d.cdf).statistic < 1.95 / np.sqrt(n)   # 0.1 % critical value
    shifted = preset("uw-archive").sample(np.random.default_rng(3), n) - 0.3
    assert stats.kstest(shifted, preset("uw-archive").cdf).statistic > 1.95 / np.sqrt(n)


@pytest.mark.parametrize("t", [0.0, 0.5, 1.0, 1.5, 2.0, 3.0])
def test_tempered_density_integrates_to_one_and_its_grid_cdf_is_its_integral(t):
    d = preset("uw-archive")
    pdf = lambda x: tempered_pdf(d, t, x)  # noqa: E731
    total, _ = integrate.quad(pdf, d.md_min, d.md_max, points=[d.onset], limit=200)
    assert total == pytest.approx(1.0, abs=1e-6)
    for x in (-28.0, -15.0, -6.0, -2.0, 0.5):
        brute, _ = integrate.quad(pdf, d.md_min, x, points=[d.onset] if x > d.onset else None, limit=200)
        assert tempered_cdf(d, t, x) == pytest.approx(brute, abs=1e-6), x


def test_tempering_at_one_is_the_mixture_and_at_zero_is_uniform():
    d = preset("uw-archive")
    x = np.linspace(-30.9, 2.9, 997)
    np.testing.assert_allclose(tempered_pdf(d, 1.0, x), d.pdf(x), rtol=1e-6)
    np.testing.assert_allclose(tempered_pdf(d, 0.0, x), 1.0 / 34.0, rtol=1e-12)
    draws = d.sample(np.random.default_rng(4), 50_000)
    assert np.abs(tempered_quantile(d, 1.0, d.cdf(draws)) - draws).max() < 1e-4   # grid error, dB


@pytest.mark.parametrize("t", [0.0, 0.5, 2.0])
def test_tempered_samples_follow_the_grid_cdf(t):
    d, n = preset("uw-archive"), 50_000
    moved = temper(d, t, d.sample(np.random.default_rng(5), n))
    critical = 1.95 / np.sqrt(n)                               # Kolmogorov-Smirnov, 0.1 % level
    assert stats.kstest(moved, lambda x: tempered_cdf(d, t, x)).statistic < critical
    assert stats.kstest(moved, d.cdf).statistic > 5 * critical   # and it is not the preset


def test_tail_imbalance_table_is_monotone_and_anchored():
    rows = {t: tail_imbalance("uw-archive", t) for t in (0.0, 0.5, 1.0, 1.5, 2.0)}
    assert rows[0.0]["bin_ratio"] == pytest.approx(1.0, abs=1e-6)
    assert rows[0.0]["share_below_-12"] == pytest.approx(19 / 34, abs=1e-6)   # uniform over [-31, 3]
    assert rows[1.0]["share_below_-12"] == pytest.approx(0.127, abs=0.001)      # the documented fit
    assert rows[1.0]["share_below_-20"] == pytest.approx(0.037, abs=0.001)
    assert rows[1.0]["median"] == pytest.approx(-4.51, abs=0.01)
    ts = sorted(rows)
    for key in ("share_below_-12", "share_below_-20"):
        assert all(rows[a][key] > rows[b][key] for a, b in zip(ts, ts[1:])), key
    assert all(rows[a]["bin_ratio"] < rows[b]["bin_ratio"] for a, b in zip(ts, ts[1:]))
    empirical = imbalance(preset("uw-archive").sample(np.random.default_rng(6), 200_000))
    assert empirical["share_below_-12"] == pytest.approx(rows[1.0]["share_below_-12"], abs=0.003)


def test_tail_knob_moves_only_md_and_keeps_each_eyes_rank():
    today = generate(Config(**TINY), progress=False)
    heavy = generate(Config(**TINY, tail=2.0), progress=False)
    for key in ("eye", "male", "asymmetry", "rnfl_floor_um", "rnfl_s0_um", "oct_quality", "disc_radius"):
        assert np.array_equal(today[key], heavy[key]), key
    assert np.array_equal(np.argsort(today["md"]), np.argsort(heavy["md"]))
    n = len(heavy["md"])
    d = preset("uw-archive")
    assert stats.kstest(heavy["md"], lambda x: tempered_cdf(d, 2.0, x)).statistic < 1.95 / np.sqrt(n)
    assert (heavy["md"] < -12).mean() < (today["md"] < -12).mean() / 3


# redundancy

def test_mix_discordance_by_hand():
    own, shared = np.array([1.0, -2.0]), np.array([0.5, 0.5])
    assert mech.mix_discordance(own, shared, 2.0, 0.0) is own
    np.testing.assert_allclose(mech.mix_discordance(own, shared, 2.0, 0.25),
                               np.sqrt(0.75) * own + 2.0 * 0.5 * shared)
    np.testing.assert_allclose(mech.mix_discordance(own, shared, 2.0, 1.0), [1.0, 1.0])


@pytest.mark.parametrize("rho", [0.0, 0.3, 0.8])
def test_redundancy_is_the_correlation_of_the_two_discordances(rho):
    arrays = generate(Config(**TINY, redundancy=rho), progress=False)
    disc_oct, disc_fundus = arrays["md_oct"] - arrays["md"], arrays["md_fundus"] - arrays["md"]
    n = len(disc_oct)
    r = np.corrcoef(disc_oct, disc_fundus)[0, 1]
    assert abs(np.arctanh(r) - np.arctanh(rho)) < 4 / np.sqrt(n - 3)           # Fisher z, 4 SE
    # each modality keeps its own discordance SD (3.0 and 0.75 dB)
    assert disc_oct.std() == pytest.approx(3.0, rel=4 / np.sqrt(2 * (n - 1)))
    assert disc_fundus.std() == pytest.approx(0.75, rel=4 / np.sqrt(2 * (n - 1)))


def test_full_redundancy_shares_the_discordance_and_the_labels_stay():
    today = generate(Config(**TINY), progress=False)
    shared = generate(Config(**TINY, redundancy=1.0), progress=False)
    np.testing.assert_allclose((shared["md_oct"] - shared["md"]) / 3.0, (shared["md_fundus"] - shared["md"]) / 0.75,
                               atol=1e-9)
    for key in ("md", "age", "eye", "asymmetry", "rnfl_floor_um"):
        assert np.array_equal(today[key], shared[key]), key


# OCT floor

def test_saturation_md_by_hand_and_its_direction():
    assert saturation_md(55.0, 6.0) == pytest.approx(10 * np.log10(6 / 55))      # -9.62 dB
    low, high = saturation_md(100.5 - 30.0, 6.0), saturation_md(100.5 - 63.0, 6.0)
    assert low == pytest.approx(-10.70, abs=0.01) and high == pytest.approx(-7.96, abs=0.01)


def test_oct_floor_moves_hoods_floor_and_the_saturation_point():
    config = dict(TINY, n_eyes=4000, n_bscans=4, oct_discordance_db=0.0)
    runs = {b: generate(Config(**config, oct_floor_um=b), progress=False) for b in (30.0, 45.5, 63.0)}
    crossing = {}
    for b, a in runs.items():
        md, rnfl, floor, s0 = a["md"], a["rnfl_mean_um"], a["rnfl_floor_um"], a["rnfl_s0_um"]
        n = len(md)
        assert floor.mean() == pytest.approx(b, abs=4 * 6.0 / np.sqrt(n))
        assert s0.mean() == pytest.approx(100.5 - b, abs=4 * 9.0 / np.sqrt(n))
        severe = md < -20
        assert severe.sum() > 50 and abs(rnfl[severe].mean() - b) < 1.5      # sits on the floor
        # the MD where the median structural signal falls under the floor SD (6 um)
        above = rnfl - floor
        centres = np.arange(-19.5, 0.0, 1.0)
        medians = np.array([np.median(above[np.abs(md - c) < 0.5]) for c in centres])
        i = int(np.argmax(medians >= 6.0))
        crossing[b] = np.interp(6.0, medians[i - 1:i + 1], centres[i - 1:i + 1])
        assert crossing[b] == pytest.approx(float(saturation_md(100.5 - b, 6.0)), abs=1.0)
    assert crossing[30.0] < crossing[45.5] < crossing[63.0]
    assert crossing[63.0] - crossing[30.0] == pytest.approx(10 * np.log10(70.5 / 37.5), abs=0.75)
    # only s0 and b moved: the structural part per unit of s0 is the same eye by eye
    ratio = {b: (a["rnfl_mean_um"] - a["rnfl_floor_um"]) / a["rnfl_s0_um"] for b, a in runs.items()}
    np.testing.assert_allclose(ratio[30.0], ratio[63.0], rtol=1e-9)
    np.testing.assert_array_equal(runs[30.0]["md"], runs[63.0]["md"])


# label noise

def test_sd_retest_by_hand():
    np.testing.assert_allclose(mech.sd_retest([2.0, 0.0, -10.0, -20.0, -30.0]), [0.6, 0.6, 1.3, 2.0, 2.0])


@pytest.mark.parametrize("k", [0.5, 1.0, 2.0])
def test_label_noise_residual_sd_per_band_is_k_times_sd_retest(k):
    d = preset("uw-archive")
    md = d.sample(np.random.default_rng(7), 400_000)
    label = mech.noisy_label(md, k, np.random.default_rng(8), d.md_min, d.md_max)
    for lo, hi in ((-2.0, 0.0), (-8.0, -4.0), (-16.0, -12.0), (-24.0, -20.0)):
        band = (md >= lo) & (md < hi)
        expected = k * np.sqrt(np.mean(mech.sd_retest(md[band]) ** 2))
        observed = (label - md)[band].std()
        assert observed == pytest.approx(expected, rel=4 / np.sqrt(2 * (band.sum() - 1))), (lo, hi)
    assert label.min() >= d.md_min and label.max() <= d.md_max


def test_label_noise_changes_only_the_label_and_keeps_the_true_md():
    today = generate(Config(**TINY), progress=False)
    noisy = generate(Config(**TINY, label_noise=1.5), progress=False)
    assert set(noisy) - set(today) == {"md_true"}
    for key in today:
        if key != "md":
            assert np.array_equal(today[key], noisy[key]), key   # images follow the true MD
    assert np.array_equal(noisy["md_true"], today["md"])
    residual, true = noisy["md"] - noisy["md_true"], noisy["md_true"]
    for band in (true > -6, (true < -12) & (true > -26)):
        expected = 1.5 * np.sqrt(np.mean(mech.sd_retest(true[band]) ** 2))
        assert residual[band].std() == pytest.approx(expected, rel=4 / np.sqrt(2 * (band.sum() - 1)))


# shortcut

def test_shortcut_patch_tracks_md_among_head_eyes_only():
    today = generate(Config(**{**TINY, "image_size": 16}), progress=False)
    cued = generate(Config(**{**TINY, "image_size": 16}, shortcut=1.0), progress=False)
    k = mech.shortcut_patch_size(16)
    patch = cued["fundus"][:, :, :k, :k].astype(float).mean(axis=(1, 2, 3))
    md = cued["md"]
    head = md >= -6.0
    assert np.corrcoef(patch[head], md[head])[0, 1] > 0.9
    assert abs(np.corrcoef(patch[~head], md[~head])[0, 1]) < 4 / np.sqrt((~head).sum())
    # the same grey levels in head and tail eyes: the patch alone does not tell them apart
    assert stats.ks_2samp(patch[head], patch[~head]).pvalue > 0.001
    # nothing else in the photo changed, nor anything else generated
    outside = np.ones(today["fundus"].shape[1:], dtype=bool)
    outside[:, :k, :k] = False
    assert np.array_equal(today["fundus"][:, outside], cued["fundus"][:, outside])
    assert set(cued) - set(today) == {"shortcut_z"}
    for key in today:
        if key != "fundus":
            assert np.array_equal(today[key], cued[key]), key


def test_shortcut_head_threshold_and_intensity_by_hand():
    md = np.array([-1.0, -3.0, -5.0, -10.0, -20.0])
    z = mech.shortcut_z(md, -6.0, np.random.default_rng(0))
    head_z = (md[:3] - md[:3].mean()) / md[:3].std()
    np.testing.assert_allclose(z[:3], head_z)
    assert set(np.round(z[3:], 12)) <= set(np.round(head_z, 12))
    np.testing.assert_allclose(mech.shortcut_intensity(np.array([-1.0, 0.0, 2.0]), 1.0), [0.35, 0.5, 0.8])
    assert np.all(mech.shortcut_z(np.array([-10.0, -20.0]), -6.0, np.random.default_rng(0)) == 0)


# null modality (the testbed's positive control)

def test_a_null_modality_carries_no_md_and_leaves_everything_else_as_it_was():
    today = generate(Config(**TINY), progress=False)
    null = generate(Config(**TINY, null_modality="fundus"), progress=False)
    md, source = null["md"], null["fundus_source_md"]
    assert np.array_equal(np.sort(source), np.sort(md))  # another eye's MD: the same marginal distribution
    # the photo's structure follows the unrelated MD, and so carries nothing about the eye's own
    assert np.corrcoef(today["cup_to_disc"], md)[0, 1] < -0.5
    assert abs(np.corrcoef(null["cup_to_disc"], md)[0, 1]) < 4 / np.sqrt(len(md))
    assert np.corrcoef(null["cup_to_disc"], source)[0, 1] < -0.5
    # the OCT, the labels and every other draw are today's, bit for bit
    assert set(null) - set(today) == {"fundus_source_md"}
    for key in today:
        if key not in ("fundus", "md_fundus", "cup_to_disc"):
            assert np.array_equal(today[key], null[key]), key
    assert Config(**TINY, null_modality="oct").generation_key() != Config(**TINY).generation_key()
    assert Config(**TINY, null_modality="none").generation_key() == Config(**TINY).generation_key()
    with pytest.raises(ValueError, match="null_modality must be one of"):
        Config(**TINY, null_modality="photo")
