"""The embedded synthetic stand-in for STAGE2-like data (catalog entries ``synthetic-stage2`` and
``synthetic-inhouse``).

Each simulated eye has an MD label drawn from a long-tailed distribution (``md_distribution``),
an OCT volume whose RNFL follows Hood's structure-function model with a floor (``oct``), a colour
fundus photograph whose cup grows with damage (``fundus``), and tabular side information: age
(weakly related to damage), sex and laterality. The stage stratum is derived from MD.

Mechanism knobs (``tail``, ``redundancy``, ``oct_floor_um``, ``label_noise``, ``shortcut``,
``null_modality``; see ``Config``) each turn on one mechanism of the study of when fusion fails. At
their defaults the
generator is bit-identical to the one before they existed (tested against recorded digests), and
they are left out of the cache key, so existing caches stay valid.

Generation is vectorised with numpy, deterministic in ``data_seed`` and cached under
``outputs/cache/`` keyed by a hash of the generation parameters (split parameters are not part of
the key: re-splitting never regenerates).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import numbers
from dataclasses import asdict, dataclass

import numpy as np
from tqdm.auto import tqdm

from ...files import load_npz, save_npz
from ...paths import cache_dir
from ..base import SplitConfig, assemble
from ..checks import check_labels
from ..format import DatasetSpec, ModalitySpec, MultimodalDataset, stage_from_md, tabular_tensor
from .fundus import FundusKnobs, simulate_fundus
from .md_distribution import preset, temper
from .mechanisms import (LABEL_NOISE_STREAM, NULL_MODALITY_STREAM, REDUNDANCY_STREAM, SHORTCUT_STREAM,
                         add_shortcut_patch, mechanism_rng, noisy_label, shortcut_intensity, shortcut_z, unrelated_md)
from .oct import OCTKnobs, simulate_oct

GENERATOR_VERSION = 1
"""Bump when the generator's output changes for the same parameters (invalidates caches)."""

SPLIT_FIELDS = {"seed", "test", "val", "n_label_bins", "cache"}

MECHANISM_DEFAULTS = {"tail": 1.0, "redundancy": 0.0, "oct_floor_um": 45.5, "label_noise": 0.0, "shortcut": 0.0,
                      "shortcut_head_db": -6.0, "null_modality": "none"}
"""Mechanism knobs and their defaults (today's generator); a knob at its default is left out of
``generation_key`` so caches written before the knobs existed stay valid."""

MECHANISM_RANGES = {"tail": (0.0, 3.0), "redundancy": (0.0, 1.0), "oct_floor_um": (30.0, 63.0),
                    "label_noise": (0.0, 3.0), "shortcut": (0.0, 1.0)}
NULL_MODALITIES = ("none", "fundus", "oct")
"""Allowed values (inclusive); ``shortcut_head_db`` must lie inside the distribution's MD range."""


@dataclass
class Config(SplitConfig):
    """Generation and split parameters.

    Size knobs: ``n_eyes``, ``image_size`` (fundus side, px), ``oct_size`` (B-scan side, px),
    ``n_bscans``. Difficulty knobs, per modality: ``*_discordance_db`` is the SD of the
    structure-function discordance (dB of MD added before the structure is drawn; higher means the
    image carries less information about MD), ``oct_speckle`` the speckle coefficient of
    variation, ``oct_noise`` and ``fundus_noise`` additive noise SDs (intensity in [0, 1]),
    ``fundus_blur`` the largest blur mix. The defaults are the calibrated ones (see the card). The
    informativeness gap between the modalities is ``fundus_discordance_db - oct_discordance_db``
    (-2.25 dB by default: the fundus carries more information about MD than the OCT).

    Mechanism knobs (defaults = today's generator; sources in the card and in ``md_distribution``,
    ``oct`` and ``mechanisms``):

    * ``tail`` in [0, 3]: tail heaviness, the MD density tempered to ``p^t`` over the preset's range
      (0 uniform, 1 the preset, above 1 a rarer tail); each eye's MD is moved by the monotone map
      ``Q_t(F(MD))``, so eyes keep their ranks and every other draw is unchanged. ASSUMPTION (the
      form); ``md_distribution.tail_imbalance`` states what each value means.
    * ``redundancy`` in [0, 1]: correlation of the two modalities' structure-function discordance
      (0 independent, 1 shared). ASSUMPTION (no published value).
    * ``oct_floor_um`` in [30, 63]: median RNFL floor ``b`` of Hood's model (Hood & Kardon 2007:
      median 45.5 um, range 30 to 63 um), with the healthy total ``s0 + b`` fixed at 100.5 um.
    * ``label_noise`` in [0, 3]: multiple of the published visual-field test-retest SD of MD,
      ``mechanisms.sd_retest`` (0.6 dB near normal to 2.0 dB at -20 dB); 1 = one real test. The
      images follow the true MD (latent ``md_true``); ``md`` holds the noisy label.
    * ``shortcut`` in [0, 1] with ``shortcut_head_db`` (default -6 dB, the Hodapp-Parrish-Anderson
      early-loss boundary): a corner patch in the fundus photo whose grey level tracks the true MD
      among eyes with ``MD >= shortcut_head_db`` and is noise elsewhere (latent ``shortcut_z``).
      ASSUMPTION (a controlled spurious cue).
    * ``null_modality`` (``none``, ``fundus`` or ``oct``): that modality's images are drawn from
      another eye's MD (``mechanisms.unrelated_md``), so it carries no information about MD while
      looking like real data; the other modality is unchanged. Not a model of real data: the
      testbed's positive control, where fusion must fall below the informative modality.
    """

    distribution: str = "uw-archive"
    n_eyes: int = 700
    image_size: int = 64
    oct_size: int = 64
    n_bscans: int = 8
    data_seed: int = 2024
    oct_discordance_db: float = 3.0
    oct_speckle: float = 0.45
    oct_noise: float = 0.05
    fundus_discordance_db: float = 0.75
    fundus_noise: float = 0.02
    fundus_blur: float = 0.6
    chunk_size: int = 100
    cache: bool = True
    tail: float = 1.0
    redundancy: float = 0.0
    oct_floor_um: float = 45.5
    label_noise: float = 0.0
    shortcut: float = 0.0
    shortcut_head_db: float = -6.0
    null_modality: str = "none"

    def __post_init__(self):
        if self.null_modality not in NULL_MODALITIES:
            raise ValueError(f"synthetic data: null_modality must be one of {NULL_MODALITIES}; got {self.null_modality!r}")
        for name, (lo, hi) in MECHANISM_RANGES.items():
            value = getattr(self, name)
            if not (_is_number(value) and lo <= value <= hi):
                raise ValueError(f"synthetic data: {name} must be a number in [{lo:g}, {hi:g}]; got {value!r}")
        distribution = preset(self.distribution)
        head = self.shortcut_head_db
        if not (_is_number(head) and distribution.md_min <= head <= distribution.md_max):
            raise ValueError(f"synthetic data: shortcut_head_db must be a number in [{distribution.md_min:g}, "
                             f"{distribution.md_max:g}] dB (the MD range of {self.distribution!r}); got {head!r}")

    def generation_key(self) -> str:
        params = {k: v for k, v in asdict(self).items() if k not in SPLIT_FIELDS | {"chunk_size"}}
        for name, default in MECHANISM_DEFAULTS.items():
            if params[name] == default or (name == "shortcut_head_db" and self.shortcut == 0):
                del params[name]                     # off: the data are today's, and so is the key
        params["version"] = GENERATOR_VERSION
        digest = hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]
        return f"synthetic-{self.distribution}-{digest}"


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and np.isfinite(value)


def generate(config: Config, progress: bool = True) -> dict[str, np.ndarray]:
    """Simulate ``config.n_eyes`` eyes; returns arrays keyed by field (images as uint8).

    Eyes are simulated in chunks of ``chunk_size`` with one child random stream per chunk, so the
    result does not depend on memory limits other than through ``chunk_size`` itself.
    """
    if config.n_eyes < 1 or config.image_size < 8 or config.oct_size < 8 or config.n_bscans < 1:
        raise ValueError(f"synthetic data needs n_eyes >= 1, sizes >= 8 and n_bscans >= 1; got {config}")
    rng = np.random.default_rng(config.data_seed)
    n = config.n_eyes
    distribution = preset(config.distribution)
    md = distribution.sample(rng, n)                          # the true MD; images follow it
    if config.tail != 1.0:
        md = temper(distribution, config.tail, md)
    left_eye = rng.random(n) < 0.5
    male = (rng.random(n) < 0.48).astype(float)
    # age weakly related to damage: about +0.3 years per dB of loss, as in glaucoma cohorts
    age = np.clip(rng.normal(60.0, 11.0, n) - 0.3 * md, 20.0, 95.0).round()
    asymmetry = rng.uniform(-0.6, 0.6, n)

    oct_knobs = OCTKnobs.with_floor(config.oct_discordance_db, config.oct_speckle, config.oct_noise,
                                    config.oct_floor_um, config.redundancy)
    fundus_knobs = FundusKnobs(config.fundus_discordance_db, config.fundus_noise, config.fundus_blur,
                               redundancy=config.redundancy)
    shared = (mechanism_rng(config.data_seed, REDUNDANCY_STREAM).standard_normal(n)
              if config.redundancy > 0 else None)
    # the positive control: one modality's images follow another eye's MD (its own stream; none by default)
    source = {"fundus": md, "oct": md}
    if config.null_modality != "none":
        source[config.null_modality] = unrelated_md(md, mechanism_rng(config.data_seed, NULL_MODALITY_STREAM))
    oct_parts, fundus_parts, latent_parts = [], [], []
    starts = range(0, n, config.chunk_size)
    streams = rng.spawn(len(starts))
    for start, stream in tqdm(list(zip(starts, streams)), desc=f"simulating {n} eyes", disable=not progress,
                              unit="chunk"):
        rows = slice(start, start + config.chunk_size)
        shared_rows = None if shared is None else shared[rows]
        volume, oct_latents = simulate_oct(stream, source["oct"][rows], asymmetry[rows], left_eye[rows],
                                           config.n_bscans, config.oct_size, oct_knobs, shared_rows)
        photo, fundus_latents = simulate_fundus(stream, source["fundus"][rows], asymmetry[rows], left_eye[rows],
                                                config.image_size, fundus_knobs, shared_rows)
        oct_parts.append(volume)
        fundus_parts.append(photo)
        latent_parts.append({**oct_latents, **fundus_latents})
    latents = {k: np.concatenate([p[k] for p in latent_parts]) for k in latent_parts[0]}
    fundus = np.concatenate(fundus_parts)
    # new latents only when their knob is on, so the default arrays are exactly today's
    if config.shortcut > 0:
        z = shortcut_z(md, config.shortcut_head_db, mechanism_rng(config.data_seed, SHORTCUT_STREAM))
        fundus = add_shortcut_patch(fundus, shortcut_intensity(z, config.shortcut))
        latents["shortcut_z"] = z
    label = md
    if config.label_noise > 0:
        label = noisy_label(md, config.label_noise, mechanism_rng(config.data_seed, LABEL_NOISE_STREAM),
                            distribution.md_min, distribution.md_max)
        latents["md_true"] = md
    if config.null_modality != "none":
        latents[f"{config.null_modality}_source_md"] = source[config.null_modality]
    return {
        "id": np.array([f"syn{i:05d}" for i in range(n)]),
        "md": label, "age": age, "male": male, "eye": left_eye.astype(float), "asymmetry": asymmetry,
        "fundus": fundus, "oct": np.concatenate(oct_parts),
        **latents,
    }


def load_or_generate(config: Config, progress: bool = True) -> dict[str, np.ndarray]:
    """``generate`` with a cache under ``outputs/cache`` keyed by the generation parameters.
    Written atomically; a cache file that fails its CRC check is reported, moved aside and
    generated again (``files.load_npz``). Processes that need the same data at once (a sweep's
    workers starting a setting's cells) generate it once: the others wait on a lock per key, then
    read the file."""
    if not config.cache:
        return generate(config, progress)
    path = cache_dir() / f"{config.generation_key()}.npz"
    cached = load_npz(path)
    if cached is not None:
        return cached
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released on exit, even on a crash
        cached = load_npz(path)
        if cached is not None:
            return cached
        arrays = generate(config, progress)
        save_npz(path, arrays)
    return arrays


def spec_for(name: str, config: Config) -> DatasetSpec:
    return DatasetSpec(
        name=name,
        modalities=(
            ModalitySpec("fundus", "image", (3, config.image_size, config.image_size)),
            ModalitySpec("oct", "volume", (config.n_bscans, config.oct_size, config.oct_size)),
        ),
    )


def build(config: Config, name: str) -> MultimodalDataset:
    arrays = load_or_generate(config)
    ids = [str(i) for i in arrays["id"]]
    md = check_labels(ids, arrays["md"], source=f"synthetic data set {name!r}")
    n = len(ids)
    dataset = assemble(
        spec_for(name, config), config, ids,
        modalities={"fundus": arrays["fundus"], "oct": arrays["oct"]},
        present=np.ones((n, 2), dtype=bool),
        tabular=tabular_tensor(arrays["age"], arrays["male"], arrays["eye"]),
        y=md, stage=stage_from_md(md), source=f"synthetic data set {name!r}",
    )
    dataset.notes["latents"] = {k: v for k, v in arrays.items() if k not in ("fundus", "oct", "id")}
    dataset.notes["latent_ids"] = ids
    return dataset
