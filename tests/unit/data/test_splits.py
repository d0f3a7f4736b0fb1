import numpy as np
import pytest

from remd_core.data.checks import DataError
from remd_core.data.splits import label_bins, split_sizes, stratified_split
from remd_core.data.synthetic.md_distribution import preset


@pytest.fixture(scope="module")
def md():
    return preset("uw-archive").sample(np.random.default_rng(3), 700)


def test_sizes_are_exact_and_parts_partition_the_samples(md):
    sizes = split_sizes(700, 200, 0.15)
    assert sizes == {"train": 425, "val": 75, "test": 200}
    parts = stratified_split(md, sizes, seed=0)
    assert {k: len(v) for k, v in parts.items()} == sizes
    together = np.concatenate(list(parts.values()))
    assert np.array_equal(np.sort(together), np.arange(700))


def test_deterministic_by_seed(md):
    sizes = split_sizes(700, 200, 0.15)
    a, b, c = (stratified_split(md, sizes, seed=s) for s in (1, 1, 2))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["test"], c["test"])


def test_every_split_holds_the_tail_in_proportion(md):
    parts = stratified_split(md, split_sizes(700, 200, 0.15), seed=0)
    bins = label_bins(md, 10)
    for name, index in parts.items():
        share = len(index) / 700
        assert (md[index] < -12).any(), f"no advanced eye in {name}"
        for b in np.unique(bins):
            expected = share * (bins == b).sum()
            assert abs((bins[index] == b).sum() - expected) <= 1.5, (name, b)


def test_impossible_sizes_are_errors():
    with pytest.raises(DataError, match="empty"):
        split_sizes(10, 5, 5)
    with pytest.raises(DataError, match="add up"):
        stratified_split(np.zeros(10), {"train": 5, "test": 4}, seed=0)
