"""What every notebook's first code cell calls: ``setup(globals())``.

The notebook template's ``parameters`` cell holds flat UPPER_CASE literals. Parameters whose value
depends on the scale of the run (data size, image size, epochs, seeds, backbone) are ``None`` there
and come from a profile (``profiles.PROFILES``); library settings (batch size, margin, gamma, ...) are
``None`` there too and come from their config dataclass (``profiles.LIBRARY_SETTINGS``): ``PROFILE`` names it; an empty ``PROFILE``
reads ``$REMD_PROFILE`` (``make test`` sets ``smoke`` for nbval) and falls back to ``cpu``. So the
same committed notebook runs at CI scale under nbval, at this machine's scale in JupyterLab, and at
any scale under ``remd run --profile``, which passes the profile's values explicitly.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import replace

import pandas as pd

from .. import data
from ..config import ConfigError
from ..models import EncoderConfig
from .profiles import Scale, fill_defaults, profile_values
from ..paths import display_path
from .record import run_folder
from ..training import TrainConfig, preset_config

DEFAULT_PROFILE = "cpu"


def resolve_profile(name: str = "") -> str:
    profile = name or os.environ.get("REMD_PROFILE", "") or DEFAULT_PROFILE
    profile_values(profile)  # an unknown name is an error
    return profile


def setup(namespace: dict) -> pd.Series:
    """Fill the notebook's ``None`` parameters from its profile or the library defaults, in ``namespace`` (the notebook's
    ``globals()``); set ``PROFILE``, ``RUN_DIR`` (empty: ``outputs/interactive``) and ``scale`` (a
    ``profiles.Scale``: what the notebook hands on instead of its scale parameters); make plotly
    figures travel as JSON (no copy of plotly.js inside every notebook). Returns the effective
    parameters, which the notebook displays so every result states the scale that produced it."""
    profile = resolve_profile(namespace.get("PROFILE", ""))
    namespace["PROFILE"] = profile
    params = {k: v for k, v in namespace.items() if k.isupper() and not k.startswith("_")}
    namespace.update(fill_defaults(params, profile))
    namespace["RUN_DIR"] = str(run_folder(namespace.get("RUN_DIR", "")))
    namespace["scale"] = Scale.of(namespace)  # what the notebook hands on: scale.dataset(...), scale.train_config(...)

    with warnings.catch_warnings():  # kaleido 0.2.1 sets options plotly 6 deprecates (see pyproject.toml)
        warnings.simplefilter("ignore", DeprecationWarning)
        import plotly.io as pio

        pio.renderers.default = "plotly_mimetype"
    shown = {k: display_path(namespace[k]) if k.endswith("_DIR") else namespace[k] for k in params}
    return pd.Series(shown, name="parameters", dtype=object)


def scale_label(namespace: dict) -> str:
    """``"profile cpu, seeds [0], 8 epochs, resnet18 x0.25, 700 eyes"`` for titles and captions,
    from whichever of these parameters the notebook declares."""
    parts = [f"profile {namespace['PROFILE']}"]
    if "SEEDS" in namespace:
        parts.append(f"seeds {list(namespace['SEEDS'])}")
    elif "SEED" in namespace:
        parts.append(f"seed {namespace['SEED']}")
    if "EPOCHS" in namespace:
        parts.append(f"{namespace['EPOCHS']} epochs")
    if "ARCH" in namespace:
        parts.append(f"{namespace['ARCH']} x{namespace.get('WIDTH', 1.0):g}")
    if "N_EYES" in namespace:
        parts.append(f"{namespace['N_EYES']} eyes")
    return ", ".join(parts)


def load_dataset(name: str, n_eyes: int, image_size: int, n_bscans: int, seed: int = 0, **knobs):
    """A catalog entry at the notebook's scale: synthetic entries are generated at ``n_eyes``,
    ``image_size`` and ``n_bscans`` (small sets get larger validation and test fractions so that
    every split holds each MD stratum) with the generator's mechanism ``knobs`` (``tail=1.5``, ...;
    ``data.synthetic.Config``); real entries are read as they are, and refuse a knob away from its default."""
    if data.entry(name).loader != "synthetic":
        from ..data.synthetic import Config as SyntheticConfig

        moved = sorted(k for k, v in knobs.items() if v != getattr(SyntheticConfig(), k))
        if moved:
            raise ConfigError(f"{name} is read from files: the synthetic generator's knobs {moved} do not apply to it")
        return data.load(name, seed=seed)
    overrides = dict(n_eyes=n_eyes, image_size=image_size, oct_size=image_size, n_bscans=n_bscans, **knobs)
    if n_eyes < 200:
        overrides.update(test=0.2, val=0.15)
    return data.load(name, seed=seed, **overrides)


def train_config(epochs: int, arch: str, width: float, seed: int = 0, training: str = "workbench",
                 **settings) -> TrainConfig:
    """The notebooks' training settings: the training preset ``training`` (``training.TRAINING_PRESETS``;
    the profile's ``TRAINING``) with the notebook's settings and the profile's scale."""
    config = preset_config(training, settings, context="the notebook's training settings")
    return replace(config, epochs=epochs, seed=seed, encoder=EncoderConfig(arch=arch, width=width))
