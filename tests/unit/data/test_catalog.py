import re

import pytest

from remd_core.config import ConfigError
from remd_core.data import CatalogError, DataError, default_name, load, read_catalog
from remd_core.paths import catalog_dir

CARD_SECTIONS = ("source", "licence", "size", "fields", "split", "known biases", "synthetic")


def test_every_entry_has_a_card_with_the_required_sections():
    for name, entry in read_catalog().items():
        card = (catalog_dir() / entry.card).read_text().lower()
        # a section is a markdown heading or a paragraph opening in bold
        headings = " ".join(h or b for h, b in re.findall(r"^(?:#+\s*(.+)|\*\*(.+?)\*\*)", card, flags=re.M))
        missing = [s for s in CARD_SECTIONS if s not in headings]
        assert not missing, f"card of {name} lacks sections {missing}"


def test_default_is_the_synthetic_stage2_set():
    assert default_name() == "synthetic-stage2"


def test_unknown_catalog_name_is_an_error_listing_the_known_ones():
    with pytest.raises(CatalogError, match="unknown data set 'stage3'.*synthetic-stage2"):
        load("stage3")


def test_unknown_override_key_is_an_error_naming_it():
    with pytest.raises(ConfigError, match=r"\['n_eye'\].*n_eyes"):
        load("synthetic-stage2", n_eye=10)


@pytest.mark.parametrize("name,variable", [("stage2", "REMD_STAGE2_ROOT"), ("fairvision-glaucoma", "REMD_FAIRVISION_ROOT"),
                                           ("harvard-gf", "REMD_HARVARD_GF_ROOT")])
def test_real_data_without_a_folder_says_how_to_point_to_it(name, variable, monkeypatch, tmp_path):
    monkeypatch.delenv(variable, raising=False)
    with pytest.raises(DataError, match=variable):
        load(name)
    with pytest.raises(DataError, match="does not exist"):
        load(name, root=str(tmp_path / "absent"))


def test_loaded_card_travels_with_the_data():
    dataset = load("synthetic-stage2", n_eyes=40, image_size=16, oct_size=16, n_bscans=1, test=10, val=5, cache=False)
    assert "Hood" in dataset.card
