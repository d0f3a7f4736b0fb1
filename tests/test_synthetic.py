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
