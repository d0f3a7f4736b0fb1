"""Synthetic OCT B-scans whose retinal nerve fibre layer (RNFL) follows Hood's structure-function
model, so OCT saturates in the severe tail (the floor effect).

Per eye, per B-scan and per A-scan column, the local RNFL thickness (um) is

    T = s0 * profile(x) * 10^(MD_local / 10) + b                       (Hood et al., linear units)

with ``s0`` the healthy axonal part (about 55 um) and ``b`` the residual floor (glial tissue and
vessels; median 45.5 um, range 30 to 63 um; Hood & Kardon, Prog Retin Eye Res 2007).
``MD_local`` is the eye's structural MD (the label plus structure-function discordance noise,
``discordance_db``) modulated sectorally: one hemifield is more damaged than the other (the eye's
``asymmetry``), damage concentrates in the arcuate bundles above and below the horizontal
midline, and each B-scan gets its own small jitter. Below
MD of about -12 dB, ``10^(MD/10)`` is under 0.06 and T sits on the floor: OCT carries almost no
information there, as in real data.

B-scans are horizontal line scans at evenly spaced vertical positions (superior to inferior). The
layer stack below the inner limiting membrane (thicknesses in um, reflectivities in [0, 1]) is a
coarse average of published segmentations; only the RNFL depends on damage. The depth axis spans
``depth_um`` over ``H`` pixels. Rendering adds surface tilt, shift and curvature, multiplicative
speckle (gamma distributed, ``speckle`` is its coefficient of variation), additive noise and a
per-eye signal quality that lowers contrast and raises noise. Left eyes are mirrored.

The floor knob (``synthetic.Config.oct_floor_um``) moves the population's median floor ``b`` while
keeping the healthy total ``s0 + b`` at ``HEALTHY_RNFL_UM`` (100.5 um): ``s0_mean = 100.5 - b``.
A higher floor leaves less axonal signal, so the structural signal ``s0 * 10^(MD/10)`` drops under
the floor's own spread earlier in the tail (``saturation_md``). The per-eye floor and ``s0`` keep
their SDs and their clipping windows move with their means (30 to 63 um and 25 to 90 um at the
default), so the knob shifts the distributions without reshaping them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import special

from .mechanisms import mix_discordance

# (name, thickness um, reflectivity) below the RNFL; the choroid fills the rest of the scan.
LAYERS_BELOW_RNFL = (
    ("GCL+IPL", 70.0, 0.45),
    ("INL", 35.0, 0.22),
    ("OPL", 25.0, 0.5),
    ("ONL", 85.0, 0.18),
    ("IS/OS", 25.0, 0.8),
    ("RPE", 22.0, 0.95),
)
RNFL_REFLECTIVITY = 0.9
VITREOUS = 0.04
CHOROID = 0.4

HEALTHY_RNFL_UM = 100.5
"""Healthy total ``s0 + b`` (um) of the default knobs (55 + 45.5), kept fixed when the floor moves."""
FLOOR_CLIP_UM = (-15.5, 17.5)
"""Per-eye floor clipped to ``floor_mean`` plus these (30 to 63 um at the default median 45.5)."""
S0_CLIP_UM = (-30.0, 35.0)
"""Per-eye ``s0`` clipped to ``s0_mean`` plus these (25 to 90 um at the default 55)."""


@dataclass(frozen=True)
class OCTKnobs:
    """Difficulty knobs of the OCT modality (see ``synthetic.Config`` for their meaning)."""

    discordance_db: float
    speckle: float
    noise: float
    floor_mean: float = 45.5
    floor_sd: float = 6.0
    s0_mean: float = 55.0
    s0_sd: float = 9.0
    depth_um: float = 600.0
    redundancy: float = 0.0

    @classmethod
    def with_floor(cls, discordance_db: float, speckle: float, noise: float, floor_um: float,
                   redundancy: float = 0.0) -> "OCTKnobs":
        """Knobs with median floor ``floor_um`` and ``s0_mean = HEALTHY_RNFL_UM - floor_um``."""
        return cls(discordance_db, speckle, noise, floor_mean=floor_um, s0_mean=HEALTHY_RNFL_UM - floor_um,
                   redundancy=redundancy)


def rnfl_thickness(md_local_db: np.ndarray, s0: np.ndarray, floor: np.ndarray) -> np.ndarray:
    """Hood's linear-units model ``T = s0 * 10^(MD/10) + b`` (um); arrays broadcast."""
    return s0 * np.power(10.0, md_local_db / 10.0) + floor


def saturation_md(s0, floor_sd) -> np.ndarray:
    """The MD (dB) at which the structural signal ``s0 * 10^(MD/10)`` equals the spread of the
    floor across eyes: ``10 * log10(floor_sd / s0)``. Below it, an eye's RNFL says less about its
    MD than its unknown floor does (-9.6 dB at the default s0 55 um, floor SD 6 um)."""
    return 10.0 * np.log10(np.asarray(floor_sd, dtype=np.float64) / np.asarray(s0, dtype=np.float64))


def _soft_band(z, top, bottom, edge):
    """1 inside ``[top, bottom]`` along depth ``z``, with logistic edges of width ``edge`` px."""
    return special.expit((z - top) / edge) - special.expit((z - bottom) / edge)


def simulate_oct(rng: np.random.Generator, md: np.ndarray, asymmetry: np.ndarray, left_eye: np.ndarray,
                 n_bscans: int, size: int, knobs: OCTKnobs,
                 shared: np.ndarray | None = None) -> tuple[np.ndarray, dict]:
    """Render ``[N, n_bscans, size, size]`` uint8 B-scans for eyes with labels ``md`` (dB).

    ``shared`` is the per-eye standard-normal discordance shared with the fundus when
    ``knobs.redundancy > 0`` (``mechanisms.mix_discordance``). Returns the volume and per-eye latent
    variables (structural MD, floor, mean RNFL, quality) for reports and tests.
    """
    n = len(md)
    md_struct = md + mix_discordance(rng.normal(0.0, knobs.discordance_db, n), shared, knobs.discordance_db,
                                     knobs.redundancy)
    s0 = np.clip(rng.normal(knobs.s0_mean, knobs.s0_sd, n), knobs.s0_mean + S0_CLIP_UM[0],
                 knobs.s0_mean + S0_CLIP_UM[1])
    floor = np.clip(rng.normal(knobs.floor_mean, knobs.floor_sd, n), knobs.floor_mean + FLOOR_CLIP_UM[0],
                    knobs.floor_mean + FLOOR_CLIP_UM[1])
    quality = rng.beta(6.0, 2.0, n) * 0.5 + 0.5

    v = np.linspace(0.8, -0.8, n_bscans)                      # superior (+) to inferior (-)
    x = np.linspace(-1.0, 1.0, size)                          # temporal (-) to nasal (+) for OD
    arcuate = 0.6 + 0.8 * np.abs(v)
    sector = (1.0 + asymmetry[:, None] * v[None, :]) * arcuate[None, :]
    sector = sector / sector.mean(axis=1, keepdims=True)      # keeps the eye's mean damage = MD
    md_local = md_struct[:, None] * sector + rng.normal(0.0, 0.75, (n, n_bscans))
    # healthy thickness is larger towards the disc (nasal) and in the arcuate bundles
    profile = (0.75 + 0.5 * np.exp(-((x - 0.55) / 0.45) ** 2))[None, None, :] * (0.85 + 0.3 * np.abs(v))[None, :, None]
    thickness = rnfl_thickness(md_local[:, :, None], s0[:, None, None] * profile, floor[:, None, None])

    um_per_px = knobs.depth_um / size
    z = np.arange(size, dtype=np.float64)[None, None, None, :]          # depth, last axis
    shift = rng.normal(0.18, 0.04, n)[:, None, None] * size
    tilt = rng.normal(0.0, 0.05, n)[:, None, None] * size * x[None, None, :]
    curve = rng.normal(0.06, 0.03, (n, n_bscans))[:, :, None] * size * x[None, None, :] ** 2
    surface = shift + tilt + curve                                      # [N, S, W] in px

    edge = 0.6
    image = np.full((n, n_bscans, size, size), VITREOUS)                # [N, S, W(x), H(z)]
    top = surface[..., None]
    bottom = top + (thickness / um_per_px)[..., None]
    image += (RNFL_REFLECTIVITY - VITREOUS) * _soft_band(z, top, bottom, edge)
    for _, microns, reflectivity in LAYERS_BELOW_RNFL:
        top, bottom = bottom, bottom + microns / um_per_px
        image += (reflectivity - VITREOUS) * _soft_band(z, top, bottom, edge)
    choroid = (CHOROID - VITREOUS) * np.exp(-np.maximum(z - bottom, 0.0) / (0.15 * size))
    image += choroid * (z >= bottom)

    looks = 1.0 / max(knobs.speckle, 1e-6) ** 2
    image *= rng.gamma(looks, 1.0 / looks, image.shape)
    q = quality[:, None, None, None]
    image = q * image + (1.0 - q) * 0.15
    image += rng.normal(0.0, 1.0, image.shape) * (knobs.noise / q)

    image = np.swapaxes(image, 2, 3)                                    # -> [N, S, H(z), W(x)]
    image[left_eye] = image[left_eye][..., ::-1]
    volume = (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    latents = {"md_oct": md_struct, "rnfl_floor_um": floor, "rnfl_s0_um": s0,
               "rnfl_mean_um": thickness.mean(axis=(1, 2)), "oct_quality": quality}
    return volume, latents
