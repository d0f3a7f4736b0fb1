"""The scales of runs (``workbench.profiles``): the profiles, and the ``Scale`` a notebook hands on."""

from dataclasses import FrozenInstanceError

import pytest

from remd_core.config import ConfigError
from remd_core.workbench import profiles, runner
from remd_core.workbench.profiles import PROFILES, RUN_SETTINGS, Scale
from remd_core.workbench.setup import scale_label, setup


def test_the_profiles_have_one_home_and_keep_their_old_names():
    assert runner.PROFILES is profiles.PROFILES and runner.LIBRARY_SETTINGS is profiles.LIBRARY_SETTINGS
    assert runner.fill_defaults is profiles.fill_defaults and runner.library_default is profiles.library_default
    for name, values in PROFILES.items():  # every key of a profile is a scale's or a run setting
        scale = Scale.from_profile(name)
        assert {**scale.params(), **{k: values[k] for k in RUN_SETTINGS if k in values}} == {"PROFILE": name, **values}
    smoke = Scale.from_profile("smoke")
    assert smoke.overrides() == {"N_EYES": 80, "IMAGE_SIZE": 32, "N_BSCANS": 2, "EPOCHS": 1, "ARCH": "resnet18",
                                 "WIDTH": 0.125, "PRECISION": "float64", "TRAINING": "workbench"}
    assert smoke.seeds == (0,) and smoke.label() == "profile smoke, seeds [0], 1 epochs, resnet18 x0.125, 80 eyes"


def test_a_scale_rejects_unknown_names_and_bad_values():
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['n_eye'\]"):
        Scale.from_params({"N_EYE": 80})
    with pytest.raises(ConfigError, match="unknown profile 'laptop'"):
        Scale.from_profile("laptop")
    with pytest.raises(ConfigError, match="EPOCHS must be a positive int"):
        Scale(epochs=0)
    with pytest.raises(ConfigError, match="seeds"):
        Scale(seeds=[])
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['epoch'\]"):
        Scale.from_profile("smoke").replace(epoch=3)
    assert Scale.from_profile("smoke").replace(epochs=3).epochs == 3
    with pytest.raises(FrozenInstanceError):
        Scale.from_profile("smoke").epochs = 3


def test_a_notebook_scale_is_read_from_its_namespace_after_setup(tmp_path, monkeypatch):
    monkeypatch.setenv("REMD_OUTPUTS", str(tmp_path))
    # notebook 06's scale parameters: no N_EYES (the grid sweeps it) and a training preset
    namespace = {"PROFILE": "smoke", "GRID": "fusion_fails", "SEEDS": None, "IMAGE_SIZE": None, "N_BSCANS": None,
                 "EPOCHS": 3, "ARCH": None, "WIDTH": None, "PRECISION": None, "TRAINING": None, "WORKERS": None,
                 "RUN_DIR": ""}
    setup(namespace)
    scale = Scale.of(namespace)
    assert scale.n_eyes is None and scale.epochs == 3
    assert scale.overrides() == {"IMAGE_SIZE": 32, "N_BSCANS": 2, "EPOCHS": 3, "ARCH": "resnet18", "WIDTH": 0.125,
                                 "PRECISION": "float64", "TRAINING": "workbench"}
    assert scale.label() == scale_label(namespace)


def test_setup_hands_the_notebook_a_scale_that_builds_its_data_and_training(tmp_path, monkeypatch):
    from remd_core.workbench.setup import load_dataset, train_config

    monkeypatch.setenv("REMD_OUTPUTS", str(tmp_path))
    namespace = {"PROFILE": "smoke", "SEED": 2, "N_EYES": None, "IMAGE_SIZE": None, "N_BSCANS": None, "EPOCHS": None,
                 "ARCH": None, "WIDTH": None, "PRECISION": None, "TRAINING": None, "RUN_DIR": ""}
    setup(namespace)
    scale = namespace["scale"]
    assert scale == Scale.of(namespace)
    by_hand = train_config(namespace["EPOCHS"], namespace["ARCH"], namespace["WIDTH"], seed=2,
                           training=namespace["TRAINING"], precision=namespace["PRECISION"], batch_size=8)
    assert scale.train_config(seed=2, batch_size=8) == by_hand
    data = scale.dataset("synthetic-stage2")
    assert len(data.train) + len(data.val) + len(data.test) == namespace["N_EYES"]
    again = load_dataset("synthetic-stage2", namespace["N_EYES"], namespace["IMAGE_SIZE"], namespace["N_BSCANS"])
    assert data.train.ids == again.train.ids and data.test.ids == again.test.ids
