"""The embedded synthetic stand-in for STAGE2-like data (catalog entries ``synthetic-stage2`` and
``synthetic-inhouse``).

Each simulated eye has an MD label drawn from a long-tailed distribution (``md_distribution``),
an OCT volume whose RNFL follows Hood's structure-function model with a floor (``oct``), a colour
fundus photograph whose cup grows with damage (``fundus``), and tabular side information: age
(weakly related to damage), sex and laterality. The stage stratum is derived from MD.

Generation is vectorised with numpy, deterministic in ``data_seed`` and cached under
``outputs/cache/`` keyed by a hash of the generation parameters (split parameters are not part of
the key: re-splitting never regenerates).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

import numpy as np
from tqdm.auto import tqdm

from ...files import load_npz, save_npz
from ...paths import cache_dir
from ..base import SplitConfig, assemble
from ..checks import check_labels
from ..format import DatasetSpec, ModalitySpec, MultimodalDataset, stage_from_md, tabular_tensor
from .fundus import FundusKnobs, simulate_fundus
from .md_distribution import preset
from .oct import OCTKnobs, simulate_oct

GENERATOR_VERSION = 1
"""Bump when the generator's output changes for the same parameters (invalidates caches)."""

SPLIT_FIELDS = {"seed", "test", "val", "n_label_bins", "cache"}


@dataclass
class Config(SplitConfig):
    """Generation and split parameters.

    Size knobs: ``n_eyes``, ``image_size`` (fundus side, px), ``oct_size`` (B-scan side, px),
    ``n_bscans``. Difficulty knobs, per modality: ``*_discordance_db`` is the SD of the
    structure-function discordance (dB of MD added before the structure is drawn; higher means the
    image carries less information about MD), ``oct_speckle`` the speckle coefficient of
    variation, ``oct_noise`` and ``fundus_noise`` additive noise SDs (intensity in [0, 1]),
    ``fundus_blur`` the largest blur mix. The defaults are the calibrated ones (see the card).
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

    def generation_key(self) -> str:
        params = {k: v for k, v in asdict(self).items() if k not in SPLIT_FIELDS | {"chunk_size"}}
        params["version"] = GENERATOR_VERSION
        digest = hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]
        return f"synthetic-{self.distribution}-{digest}"


def generate(config: Config, progress: bool = True) -> dict[str, np.ndarray]:
    """Simulate ``config.n_eyes`` eyes; returns arrays keyed by field (images as uint8).

    Eyes are simulated in chunks of ``chunk_size`` with one child random stream per chunk, so the
    result does not depend on memory limits other than through ``chunk_size`` itself.
    """
    if config.n_eyes < 1 or config.image_size < 8 or config.oct_size < 8 or config.n_bscans < 1:
        raise ValueError(f"synthetic data needs n_eyes >= 1, sizes >= 8 and n_bscans >= 1; got {config}")
    rng = np.random.default_rng(config.data_seed)
    n = config.n_eyes
    md = preset(config.distribution).sample(rng, n)
    left_eye = rng.random(n) < 0.5
    male = (rng.random(n) < 0.48).astype(float)
    # age weakly related to damage: about +0.3 years per dB of loss, as in glaucoma cohorts
    age = np.clip(rng.normal(60.0, 11.0, n) - 0.3 * md, 20.0, 95.0).round()
    asymmetry = rng.uniform(-0.6, 0.6, n)

    oct_knobs = OCTKnobs(config.oct_discordance_db, config.oct_speckle, config.oct_noise)
    fundus_knobs = FundusKnobs(config.fundus_discordance_db, config.fundus_noise, config.fundus_blur)
    oct_parts, fundus_parts, latent_parts = [], [], []
    starts = range(0, n, config.chunk_size)
    streams = rng.spawn(len(starts))
    for start, stream in tqdm(list(zip(starts, streams)), desc=f"simulating {n} eyes", disable=not progress,
                              unit="chunk"):
        rows = slice(start, start + config.chunk_size)
        volume, oct_latents = simulate_oct(stream, md[rows], asymmetry[rows], left_eye[rows],
                                           config.n_bscans, config.oct_size, oct_knobs)
        photo, fundus_latents = simulate_fundus(stream, md[rows], asymmetry[rows], left_eye[rows],
                                                config.image_size, fundus_knobs)
        oct_parts.append(volume)
        fundus_parts.append(photo)
        latent_parts.append({**oct_latents, **fundus_latents})
    latents = {k: np.concatenate([p[k] for p in latent_parts]) for k in latent_parts[0]}
    return {
        "id": np.array([f"syn{i:05d}" for i in range(n)]),
        "md": md, "age": age, "male": male, "eye": left_eye.astype(float), "asymmetry": asymmetry,
        "fundus": np.concatenate(fundus_parts), "oct": np.concatenate(oct_parts),
        **latents,
    }


def load_or_generate(config: Config, progress: bool = True) -> dict[str, np.ndarray]:
    """``generate`` with a cache under ``outputs/cache`` keyed by the generation parameters.
    Written atomically; a cache file that fails its CRC check is reported, moved aside and
    generated again (``files.load_npz``)."""
    if not config.cache:
        return generate(config, progress)
    path = cache_dir() / f"{config.generation_key()}.npz"
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
