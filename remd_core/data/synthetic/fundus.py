"""Synthetic colour fundus photographs centred on the optic disc.

What follows damage, and the assumption behind it
--------------------------------------------------
The vertical cup-to-disc ratio (CDR) grows with glaucomatous damage. No verified quantitative
CDR-versus-MD law exists (see the data card), so the mapping here is an ASSUMPTION chosen to be
monotone, to keep growing in the severe tail (cupping continues where the RNFL has reached its
floor) and to stay within the clinical range:

    CDR = physiologic_cdr + (0.92 - physiologic_cdr) * (1 - exp(MD_fundus / 12 dB))

``physiologic_cdr`` is the eye's healthy cup (normal eyes vary widely, about 0.3 +/- 0.08, and
larger discs have larger cups). ``MD_fundus`` is the label plus structure-function discordance
noise. The cup is vertically elongated and shifted towards the more damaged pole, which thins the
neuroretinal rim there (the eye's hemifield ``asymmetry`` is shared with the OCT simulation).

Everything else is nuisance: disc size and position, a vessel tree leaving the disc, fundus
pigmentation, camera white balance and gamma, an illumination gradient with vignetting inside a
circular field stop, blur and sensor noise. Right eyes (OD) have the disc on the right of the
image; left eyes (OS) are mirrored.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage, special

from .mechanisms import mix_discordance

BACKGROUND = np.array([0.78, 0.36, 0.16])
RIM = np.array([0.98, 0.62, 0.45])
CUP = np.array([1.0, 0.93, 0.78])
VESSEL = np.array([0.42, 0.08, 0.05])


@dataclass(frozen=True)
class FundusKnobs:
    """Difficulty knobs of the fundus modality (see ``synthetic.Config`` for their meaning)."""

    discordance_db: float
    noise: float
    blur: float
    physiologic_cdr_sd: float = 0.08
    cdr_max: float = 0.92
    cdr_scale_db: float = 12.0
    redundancy: float = 0.0


def cup_to_disc_ratio(md_fundus_db: np.ndarray, physiologic_cdr: np.ndarray, knobs: FundusKnobs) -> np.ndarray:
    """The assumed CDR-MD mapping (module docstring); arrays broadcast."""
    damage = 1.0 - np.exp(np.minimum(md_fundus_db, 0.0) / knobs.cdr_scale_db)
    return physiologic_cdr + (knobs.cdr_max - physiologic_cdr) * damage


def simulate_fundus(rng: np.random.Generator, md: np.ndarray, asymmetry: np.ndarray, left_eye: np.ndarray,
                    size: int, knobs: FundusKnobs, shared: np.ndarray | None = None) -> tuple[np.ndarray, dict]:
    """Render ``[N, 3, size, size]`` uint8 fundus photographs; returns latents too. ``shared``: the
    per-eye discordance shared with the OCT when ``knobs.redundancy > 0``."""
    n = len(md)
    coords = np.linspace(-1.0, 1.0, size)
    yy, xx = np.meshgrid(coords, coords, indexing="ij")               # y down (inferior), x right
    yy, xx = yy[None], xx[None]

    disc_r = np.clip(rng.normal(0.2, 0.022, n), 0.14, 0.27)
    disc_x = rng.normal(0.25, 0.04, n)
    disc_y = rng.normal(0.0, 0.05, n)
    physiologic = np.clip(rng.normal(0.3, knobs.physiologic_cdr_sd, n) + 1.5 * (disc_r - 0.2), 0.05, 0.7)
    md_fundus = md + mix_discordance(rng.normal(0.0, knobs.discordance_db, n), shared, knobs.discordance_db,
                                     knobs.redundancy)
    cdr = cup_to_disc_ratio(md_fundus, physiologic, knobs)
    cup_ry = cdr * disc_r
    cup_rx = cup_ry * 0.85
    # positive asymmetry = superior hemifield more damaged = cup shifted up (negative y)
    cup_y = disc_y - asymmetry * 0.35 * (disc_r - cup_ry)

    dx, dy = xx - disc_x[:, None, None], yy - disc_y[:, None, None]
    disc_d = np.sqrt((dx / 1.0) ** 2 + (dy / 1.08) ** 2) / disc_r[:, None, None]
    cup_d = np.sqrt((dx / cup_rx[:, None, None]) ** 2 + ((yy - cup_y[:, None, None]) / cup_ry[:, None, None]) ** 2)
    disc_mask = _soft_step(1.0 - disc_d, 0.08)
    cup_mask = _soft_step(1.0 - cup_d, 0.12) * disc_mask

    pigment = rng.normal(1.0, 0.1, (n, 3)) * np.array([1.0, 1.0, 0.9])
    image = (BACKGROUND[None, :, None, None] * pigment[:, :, None, None]
             * (1.0 + 0.05 * rng.normal(size=(n, 1, 1, 1)) * xx[:, None]))
    image = image * (1 - disc_mask[:, None]) + RIM[None, :, None, None] * disc_mask[:, None]
    image = image * (1 - cup_mask[:, None]) + CUP[None, :, None, None] * cup_mask[:, None]
    vessels = _vessel_tree(rng, dx, dy, disc_r, size)
    image = image * (1 - vessels[:, None]) + VESSEL[None, :, None, None] * vessels[:, None]

    # camera: illumination gradient, vignetting, field stop, white balance, gamma, blur, noise
    angle = rng.uniform(0, 2 * np.pi, n)[:, None, None]
    ramp = 1.0 + rng.uniform(0.0, 0.35, n)[:, None, None] * (np.cos(angle) * xx + np.sin(angle) * yy) / 2
    radius = np.sqrt(xx ** 2 + yy ** 2)
    vignette = 1.0 - 0.35 * radius ** 2
    field_stop = _soft_step(0.97 - radius, 0.02)
    image = image * (ramp * vignette * field_stop)[:, None]
    image = image * rng.normal(1.0, 0.08, (n, 3))[:, :, None, None] * rng.normal(1.0, 0.1, n)[:, None, None, None]
    image = np.clip(image, 0.0, 1.0) ** rng.uniform(0.8, 1.25, n)[:, None, None, None]
    sigma = size / 64.0
    blurred = ndimage.gaussian_filter(image, sigma=(0, 0, sigma, sigma))
    mix = rng.uniform(0.0, knobs.blur, n)[:, None, None, None]
    image = (1 - mix) * image + mix * blurred
    image = image + rng.normal(0.0, knobs.noise, image.shape) * field_stop[:, None]

    image[left_eye] = image[left_eye][..., ::-1]
    photo = (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    latents = {"md_fundus": md_fundus, "cup_to_disc": cdr, "physiologic_cdr": physiologic, "disc_radius": disc_r}
    return photo, latents


def _soft_step(signed_distance, width):
    return special.expit(signed_distance / width)


def _vessel_tree(rng, dx, dy, disc_r, size, n_vessels: int = 8):
    """Opacity of vessels leaving the disc: wavy curves in polar coordinates around the disc
    centre, main arcades towards the superior and inferior poles, thinning with distance."""
    n = dx.shape[0]
    r = np.sqrt(dx ** 2 + dy ** 2) + 1e-6
    phi = np.arctan2(dy, dx)
    base = np.array([-1.9, -1.35, -0.6, 0.1, 0.6, 1.35, 1.9, 3.1])[:n_vessels]
    theta = base[None] + rng.normal(0.0, 0.15, (n, n_vessels))
    bend = rng.normal(0.0, 0.5, (n, n_vessels))
    opacity = np.zeros_like(r)
    px = 2.0 / size
    for k in range(n_vessels):
        path = theta[:, k, None, None] + bend[:, k, None, None] * np.sin(2.5 * r)
        gap = np.angle(np.exp(1j * (phi - path))) * r                  # arc distance to the vessel
        width = np.maximum(1.4 * px * np.exp(-r / 1.5), 0.6 * px)
        # thin over the disc so the cup and rim stay visible at 64 px
        over_disc = 0.25 + 0.75 * _soft_step(r - disc_r[:, None, None], 0.03)
        inside = np.exp(-0.5 * (gap / width) ** 2) * over_disc
        opacity = np.maximum(opacity, 0.85 * inside)
    return opacity
