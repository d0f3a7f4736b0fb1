"""The randhie catalog entry: sizes, determinism, labels, train-only standardisation, tail coverage."""

import numpy as np
import pytest
import torch

from remd_core.config import ConfigError
from remd_core.data import DataError, load
from remd_core.data.randhie import FEATURE_GROUPS, Config, build, load_frame

N_ROWS = 20190


@pytest.fixture(scope="module")
def frame():
    return load_frame()


@pytest.fixture(scope="module")
def full():
    return load("randhie")


@pytest.fixture(scope="module")
def small():
    return load("randhie", n_rows=2000)


def _all_ids(ds):
    return [i for s in ds.splits.values() for i in s.ids]


def test_sizes_add_up_and_splits_disjoint(full, small):
    for ds, n in [(full, N_ROWS), (small, 2000)]:
        ids = _all_ids(ds)
        assert len(ids) == n and len(set(ids)) == n
        assert len(ds.test) == round(0.2 * n)
        assert len(ds.val) == round(0.15 * (n - len(ds.test)))
    assert set(_all_ids(small)) <= set(_all_ids(full))


def test_spec_and_sample_format(full):
    spec = full.spec
    assert spec.modality_names == ("plan", "health")
    assert spec.modality("health").feature_names == FEATURE_GROUPS["health"]
    assert (spec.label_name, spec.label_unit) == ("mdvis", "visits")
    sample = full.train[0]
    assert sample["id"].startswith("randhie-") and len(sample["id"]) == len("randhie-00000")
    assert sample["plan"].shape == (4,) and sample["health"].shape == (5,)
    assert full.train.present.all()
    assert torch.isnan(full.train.tabular).all()
    assert "Source" in full.card and "public domain" in full.card


def test_deterministic_by_seed():
    a, b = load("randhie", n_rows=2000, seed=3), load("randhie", n_rows=2000, seed=3)
    c = load("randhie", n_rows=2000, seed=4)
    for split in ("train", "val", "test"):
        assert a[split].ids == b[split].ids
        assert torch.equal(a[split].modalities["plan"], b[split].modalities["plan"])
    assert a.test.ids != c.test.ids


def test_labels_match_statsmodels_by_id(full, small, frame):
    for ds in (full, small):
        for s in ds.splits.values():
            rows = [int(i.split("-")[1]) for i in s.ids]
            np.testing.assert_array_equal(s.y.numpy(), frame["mdvis"].to_numpy()[rows])


def test_strata_are_visit_bins(full, frame):
    f = full.train.to_frame()
    visits = frame["mdvis"].to_numpy()[[int(i.split("-")[1]) for i in f["id"]]]
    expected = np.select([visits == 0, visits <= 2, visits <= 5, visits <= 10], [0, 1, 2, 3], 4)
    np.testing.assert_array_equal(f["stage"].to_numpy(), expected)


@pytest.mark.parametrize("which", ["full", "small"])
def test_train_only_standardisation(which, request, frame):
    ds = request.getfixturevalue(which)
    for group, cols in FEATURE_GROUPS.items():
        raw = {name: frame.loc[[int(i.split("-")[1]) for i in ds[name].ids], list(cols)].to_numpy(float)
               for name in ("train", "val", "test")}
        mean, std = raw["train"].mean(0), raw["train"].std(0)
        train = ds.train.modalities[group].double().numpy()
        np.testing.assert_allclose(train.mean(0), 0, atol=1e-5)
        np.testing.assert_allclose(train.std(0), 1, atol=1e-5)
        for name in ("val", "test"):
            np.testing.assert_allclose(ds[name].modalities[group].numpy(), (raw[name] - mean) / std, atol=1e-5)
        # the test set is NOT standardised with its own statistics
        assert not np.allclose((raw["test"] - raw["test"].mean(0)) / raw["test"].std(0),
                               ds.test.modalities[group].numpy(), atol=1e-5)
        assert ds.notes["feature_mean"][group] == pytest.approx(dict(zip(cols, mean)))


def test_tail_in_every_split(full, small):
    for ds in (full, small):
        for s in ds.splits.values():
            assert (s.y > 10).sum() >= 5, (ds.config, s.name)


def test_log_target(frame):
    ds = load("randhie", n_rows=1000, log_target=True)
    rows = [int(i.split("-")[1]) for i in ds.test.ids]
    np.testing.assert_allclose(ds.test.y.numpy(), np.log1p(frame["mdvis"].to_numpy()[rows]), rtol=1e-6)
    assert ds.spec.label_name == "log1p_mdvis"
    assert int(ds.test.stage.max()) == 4  # strata still from raw visits


def test_unknown_override_raises_config_error_naming_key():
    with pytest.raises(ConfigError, match="n_eyes"):
        load("randhie", n_eyes=10)


def test_bad_rows_raise_data_error_naming_them(frame):
    bad = frame.head(50).copy()
    bad.loc[7, "mdvis"] = np.nan
    with pytest.raises(DataError, match="randhie-00007"):
        build(Config(), frame=bad)
    bad = frame.head(50).copy()
    bad.loc[3, "disea"] = np.inf
    with pytest.raises(DataError, match="randhie-00003"):
        build(Config(), frame=bad)
    with pytest.raises(DataError, match="n_rows"):
        build(Config(n_rows=0), frame=frame.head(50))
