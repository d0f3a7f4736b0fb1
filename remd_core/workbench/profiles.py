"""The scale of a run, and the defaults of every notebook parameter, in one place.

A notebook's ``parameters`` cell holds ``None`` for two kinds of values:

- its **scale** (how many eyes, how large the images, how many B-scans, epochs, seeds, which backbone at
  which width, the numeric precision and the training preset): a profile sets them (``PROFILES``:
  ``smoke`` for CI, ``cpu`` for this machine, ``gpu`` for the paper's scale, ...), and a ``Scale``
  holds them together, so a notebook hands one object on (to ``sweep.full_sweep_or_run``, to
  ``run_sweep`` as ``scale.overrides()``) instead of ten loose parameters;
- **library settings** (batch size, margin, gamma, the synthetic generator's knobs, ...): their home
  is their config dataclass (``LIBRARY_SETTINGS`` maps each to its field), read by
  ``library_default``.

``fill_defaults`` replaces a notebook's ``None`` parameters by the profile's value, else the library
default; ``setup.setup`` calls it in every notebook's first code cell. The parameter names
(``N_EYES``, ``EPOCHS``, ...) stay the notebooks' flat UPPER_CASE literals, because papermill and
the grid files set them by name; ``Scale.of(globals())`` reads them back into one object.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Mapping

from ..config import ConfigError, from_dict

# The scale of a run. ``smoke``: seconds per notebook, for nbval in CI. ``cpu``: this 2-core
# machine, the whole pipeline within 15 minutes (fewer epochs and one seed; full-scale tables come
# from `remd sweep`). ``gpu``: the paper's scale (ResNet34, 224 px, 32 B-scans, 3 seeds).
# ``PRECISION`` (``TrainConfig.precision``): the smoke profile trains in float64, so that the outputs
# nbval checks to three decimals come out the same on every processor and thread count (float32
# differs in the third decimal between an Intel and an AMD CPU); the others train as the trainer
# decides ("auto": float32 on CPU, bf16 autocast on CUDA). ``TRAINING`` names the training preset
# (``training.TRAINING_PRESETS``): the gpu profile trains with every setting the paper states
# (batch 8, Adam, SMAPE + R^2), the others with the workbench's (batch 16, AdamW, cosine, MSE).
# ``testbed``: the scale at which this machine runs notebook 06's testbed (``sweeps/fusion_fails.yaml``, 288
# cells, 3 seeds): the smallest at which both modalities learn on the default data (each unimodal model's mean
# test R^2 >= 0.3 over 3 seeds), chosen by the measured scan ``sweeps/testbed_scale.yaml`` (docs/testbed.md).
# ``cpu`` is what ``make run`` runs within 15 minutes here (docs/performance.md): 4 B-scans (the scan measured
# the same R^2 as 8 at 60 % of the cost), Table 2 alone in notebook 04 (Table 1's 20 recipes: ``remd sweep``),
# the baseline and the two missing-modality systems in notebook 05 (``METHODS``), the testbed's control in 06.
# ``reduced``: the testbed's earlier scale, where the fundus model learns nothing (test R^2 0.04); kept for
# ``benchmarks/bench_cell.py``'s comparisons. ``TESTBED_GROUPS`` are the testbed's sub-grids notebook 06 runs
# itself when no full sweep is there (None: all): at the cpu and smoke profiles, the positive control and its
# reference, which is what ``make run`` can afford.
PROFILES = {
    "smoke": {"N_EYES": 80, "IMAGE_SIZE": 32, "N_BSCANS": 2, "EPOCHS": 1, "SEEDS": [0], "WIDTH": 0.125,
              "ARCH": "resnet18", "SWEEP_GROUPS": ["table1", "table2", "sensitivity"], "USE_FULL_SWEEPS": False,
              "WORKERS": 2, "PRECISION": "float64", "TRAINING": "workbench", "TESTBED_GROUPS": ["control"]},
    "cpu": {"N_EYES": 700, "IMAGE_SIZE": 64, "N_BSCANS": 4, "EPOCHS": 8, "SEEDS": [0], "WIDTH": 0.25,
            "ARCH": "resnet18", "SWEEP_GROUPS": ["table2"], "USE_FULL_SWEEPS": True, "WORKERS": 2,
            "PRECISION": "auto", "TRAINING": "workbench", "TESTBED_GROUPS": ["control"],
            "METHODS": ["naive-fusion", "simmlm", "rima"]},
    "reduced": {"N_EYES": 400, "IMAGE_SIZE": 32, "N_BSCANS": 2, "EPOCHS": 12, "SEEDS": [0, 1, 2], "WIDTH": 0.125,
                "ARCH": "resnet18", "SWEEP_GROUPS": ["table1", "table2"], "USE_FULL_SWEEPS": True, "WORKERS": 2,
                "PRECISION": "auto", "TRAINING": "workbench", "TESTBED_GROUPS": None},
    "testbed": {"N_EYES": 500, "IMAGE_SIZE": 64, "N_BSCANS": 4, "EPOCHS": 12, "SEEDS": [0, 1, 2], "WIDTH": 0.25,
                "ARCH": "resnet18", "SWEEP_GROUPS": ["table1", "table2"], "USE_FULL_SWEEPS": True, "WORKERS": 2,
                "PRECISION": "auto", "TRAINING": "workbench", "TESTBED_GROUPS": None},
    "gpu": {"N_EYES": 700, "IMAGE_SIZE": 224, "N_BSCANS": 32, "EPOCHS": 100, "SEEDS": [0, 1, 2], "WIDTH": 1.0,
            "ARCH": "resnet34", "SWEEP_GROUPS": ["table1", "table2", "sensitivity"], "USE_FULL_SWEEPS": True,
            "WORKERS": 1, "PRECISION": "auto", "TRAINING": "paper", "TESTBED_GROUPS": None},
}
RUN_SETTINGS = ("SWEEP_GROUPS", "USE_FULL_SWEEPS", "WORKERS", "TESTBED_GROUPS", "METHODS")
"""What a profile sets besides the scale: which sub-grids and methods a notebook runs itself, and on how
many worker processes."""


# Notebook parameters that are library settings. Their home is the config dataclass; a parameter cell
# holds ``None`` for them, and ``setup`` (in a kernel) or ``notebook_defaults`` (for a grid) read the
# dataclass field, so a default is changed in one place. Values a profile sets (``EPOCHS``, ``ARCH``,
# ...) come from the profile first.
LIBRARY_SETTINGS = {
    "BATCH_SIZE": ("train", "batch_size"), "LR": ("train", "lr"), "MARGIN_M0": ("train", "margin_m0"),
    "MARGIN_BETA": ("train", "margin_beta"), "MARGIN_WARMUP": ("train", "margin_warmup"),
    "REFERENCE_RUN_STEPS": ("train", "reference_run_steps"), "PROBE_EVERY": ("train", "probe_every"),
    "GAMMA_BASE": ("sgm", "gamma_base"), "GAMMA_MIN": ("sgm", "gamma_min"), "GAMMA_MAX": ("sgm", "gamma_max"),
    "WINDOW": ("sgm", "window"), "SHARPNESS": ("sgm", "sharpness"),
    # the synthetic generator's mechanism knobs (issue 14's testbed; remd_core.data.synthetic.Config)
    "TAIL": ("data", "tail"), "OCT_DISCORDANCE_DB": ("data", "oct_discordance_db"),
    "FUNDUS_DISCORDANCE_DB": ("data", "fundus_discordance_db"), "REDUNDANCY": ("data", "redundancy"),
    "OCT_FLOOR_UM": ("data", "oct_floor_um"), "LABEL_NOISE": ("data", "label_noise"), "SHORTCUT": ("data", "shortcut"),
    "NULL_MODALITY": ("data", "null_modality"),
}
DATA_KNOBS = {name: field for name, (config, field) in LIBRARY_SETTINGS.items() if config == "data"}


def profile_values(profile: str) -> dict:
    """The parameters profile ``profile`` sets (``PROFILES``); an unknown name is an error listing the known ones."""
    if profile not in PROFILES:
        raise ConfigError(f"unknown profile {profile!r}; known: {sorted(PROFILES)}")
    return PROFILES[profile]


@dataclass(frozen=True)
class Scale:
    """The scale of a run: ``profile`` (the profile it starts from: the cells of a sweep take from it
    whatever the scale leaves unset), the data (``n_eyes``, ``image_size`` in px, ``n_bscans`` per OCT
    volume), the training (``epochs``, ``seeds``, backbone ``arch`` at ``width``, ``precision``, the
    ``training`` preset). Each field is a notebook parameter of the same name in upper case
    (``N_EYES``, ...); ``None`` means "not set here" (a notebook that does not declare the parameter:
    notebook 06 takes its number of eyes from the grid)."""

    profile: str | None = None
    n_eyes: int | None = None
    image_size: int | None = None
    n_bscans: int | None = None
    epochs: int | None = None
    seeds: tuple[int, ...] | None = None
    arch: str | None = None
    width: float | None = None
    precision: str | None = None
    training: str | None = None

    def __post_init__(self):
        if self.seeds is not None:
            object.__setattr__(self, "seeds", tuple(self.seeds))
            if not self.seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in self.seeds):
                raise ConfigError(f"a scale's seeds must be a non-empty list of ints; got {list(self.seeds)}")
        for name in ("n_eyes", "image_size", "n_bscans", "epochs"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ConfigError(f"a scale's {name.upper()} must be a positive int; got {value!r}")
        if self.width is not None and not self.width > 0:
            raise ConfigError(f"a scale's WIDTH must be > 0; got {self.width!r}")
        if self.profile is not None:
            profile_values(self.profile)

    @classmethod
    def names(cls) -> list[str]:
        """The notebook parameters a scale holds: ``PROFILE``, ``N_EYES``, ..., ``TRAINING``."""
        return [f.name.upper() for f in dataclasses.fields(cls)]

    @classmethod
    def from_params(cls, params: Mapping, context: str = "") -> "Scale":
        """A scale from notebook parameters by name (``{"N_EYES": 80, "EPOCHS": 1}``); a name that is
        not a scale's is an error naming it (``config.from_dict``)."""
        return from_dict(cls, {str(k).lower(): v for k, v in params.items()}, context or "a scale")

    @classmethod
    def of(cls, namespace: Mapping) -> "Scale":
        """The scale of a notebook, read from its namespace after ``setup`` (``Scale.of(globals())``):
        the scale parameters it declares; the namespace's other names are not the scale's business."""
        return cls.from_params({k: namespace[k] for k in cls.names() if namespace.get(k) is not None})

    @classmethod
    def from_profile(cls, profile: str) -> "Scale":
        """Profile ``profile``'s scale (``PROFILES``). A key of the profile that is neither a scale's
        nor one of ``RUN_SETTINGS`` is an error, so a typo in ``PROFILES`` cannot pass unnoticed."""
        values = {k: v for k, v in profile_values(profile).items() if k not in RUN_SETTINGS}
        return cls.from_params({"PROFILE": profile, **values}, f"profile {profile!r}")

    def params(self) -> dict:
        """The parameters this scale sets, by name (``{"PROFILE": "smoke", "N_EYES": 80, ...}``)."""
        return {f.name.upper(): list(v) if f.name == "seeds" else v
                for f in dataclasses.fields(self) if (v := getattr(self, f.name)) is not None}

    def overrides(self) -> dict:
        """What a sweep takes as ``overrides`` (``run_sweep``): every parameter this scale sets but
        the profile (``run_sweep``'s ``profile``) and the seeds (its ``seeds``)."""
        return {k: v for k, v in self.params().items() if k not in ("PROFILE", "SEEDS")}

    def label(self) -> str:
        """``"profile cpu, seeds [0], 8 epochs, resnet18 x0.25, 700 eyes"`` (``setup.scale_label``)."""
        from .setup import scale_label

        return scale_label(self.params())

    def dataset(self, name: str, seed: int = 0, **knobs):
        """Catalog entry ``name`` at this scale (``setup.load_dataset``: its eyes, image size and B-scans;
        ``knobs``: the synthetic generator's mechanism settings)."""
        from .setup import load_dataset

        return load_dataset(name, self.n_eyes, self.image_size, self.n_bscans, seed=seed, **knobs)

    def train_config(self, seed: int = 0, **settings):
        """The training settings at this scale (``setup.train_config``: its epochs, backbone, training
        preset and precision), with the notebook's own ``settings`` (``batch_size=...``)."""
        from .setup import train_config

        return train_config(self.epochs, self.arch, self.width, seed=seed, training=self.training or "workbench",
                            precision=self.precision or "auto", **settings)

    def replace(self, **changes) -> "Scale":
        """A copy with ``changes`` (``epochs=30``); an unknown name is an error."""
        from ..config import replace

        return replace(self, changes, "a scale")


def library_default(name: str, training: str = "workbench"):
    """The default of notebook parameter ``name`` (``LIBRARY_SETTINGS``): its config dataclass's,
    with training preset ``training`` applied to ``TrainConfig``."""
    from ..data.synthetic import Config as SyntheticConfig
    from ..optim.sgm import SGMConfig
    from ..training import preset_config

    config, field = LIBRARY_SETTINGS[name]
    defaults = {"train": lambda: preset_config(training), "sgm": SGMConfig, "data": SyntheticConfig}[config]()
    return getattr(defaults, field)


def fill_defaults(params: dict, profile: str) -> dict:
    """``params`` with each ``None`` replaced by the profile's value, else the library default;
    a ``None`` that neither sets is an error naming the parameter."""
    values = PROFILES[profile]
    out = dict(params)
    for name, value in params.items():
        if value is None:
            if name in values:
                out[name] = values[name]
            elif name in LIBRARY_SETTINGS:
                out[name] = library_default(name, params.get("TRAINING") or values["TRAINING"])
            else:
                raise ConfigError(f"parameter {name} is None and neither profile {profile!r} nor the library sets "
                                  f"it; the profile sets {sorted(values)}, the library {sorted(LIBRARY_SETTINGS)}")
    return out
