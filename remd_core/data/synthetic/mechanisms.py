"""Mechanism knobs of the synthetic generator (``synthetic.Config``): one small function per
equation. Every knob defaults to "off", and off draws nothing, so the default data set is unchanged.

Each mechanism that needs randomness draws it from its own generator,
``np.random.default_rng([data_seed, STREAM])``: its entropy differs from ``data_seed``'s, so it is
independent of the main stream and of the per-chunk streams spawned from it, and turning a knob on
changes nothing else about the eyes (same labels, same nuisance draws).

* redundancy (``rho``): the two modalities' structure-function discordances share a per-eye
  component, ``disc_m = sd_m * (sqrt(1 - rho) * e_m + sqrt(rho) * s)``, ``e_m, s ~ N(0, 1)``
  independent, so ``corr(disc_oct, disc_fundus) = rho`` and each ``disc_m`` keeps its SD ``sd_m``.
  ``rho = 0`` is today's independent draws; ``rho = 1`` one shared discordance. An ASSUMPTION about
  the form (a Gaussian shared factor); no published figure gives the correlation for real eyes.
* label noise: the recorded MD is one visual-field test, ``MD_rec = MD + k * sd_retest(MD) * z``
  with ``z ~ N(0, 1)``; ``sd_retest`` (below) is the published test-retest SD of MD, rising with
  damage; ``k = label_noise`` scales it (1 = one real test).
* shortcut: a grey patch in the fundus photo's top-left corner, outside the field stop (where a
  camera burns in text), of intensity ``0.5 + SHORTCUT_CONTRAST * shortcut * z``: ``z`` is the
  eye's standardised MD when ``MD >= head_db`` and an independent draw from the same head-eye z
  values otherwise, so the cue predicts MD among head eyes only. A pure ASSUMPTION (a controlled
  spurious cue), not a model of a known artefact.
"""

from __future__ import annotations

import numpy as np

REDUNDANCY_STREAM, LABEL_NOISE_STREAM, SHORTCUT_STREAM, NULL_MODALITY_STREAM = 1, 2, 3, 4

RETEST_SD_NORMAL_DB = 0.6
"""SD of MD between repeated tests with little damage: 0.61 +/- 0.34 dB, short-term (tests within
5 weeks) residual SD of SITA MD in 43 glaucoma eyes (Urata et al., Am J Ophthalmol 2020,
PMC7224685); the lower end of "1.5 to 4 dB = 2 SD" (0.75 dB) of the ARVO abstract below."""

RETEST_SD_ADVANCED_DB = 2.0
"""SD of MD between repeated tests at ``RETEST_PLATEAU_DB``: the upper end of "a change of 1.5 to
4 dB is needed to be 2 SDs, varying with ... the amount of visual field damage" (Iowa group of
M. Wall, ARVO abstract, IOVS, iovs.arvojournals.org articleid 2361579: 46 glaucoma patients tested
5 times in 5 weeks, SITA 24-2 size III, MD -10.19 +/- 6.9 dB)."""

RETEST_PLATEAU_DB = -20.0
"""MD (dB) beyond which ``sd_retest`` stays constant: about the damaged end of that cohort (mean
-10.2, SD 6.9 dB). ASSUMPTION: no verified figure beyond it (near the perimetric floor, variability
is reported to fall again, so extrapolating the rise would overstate it)."""

SHORTCUT_CONTRAST = 0.15
"""Patch intensity per unit of standardised MD at ``shortcut = 1`` (head z spans about -2 to +3,
so the patch stays inside [0, 1] without clipping at shortcut <= 1)."""


def mechanism_rng(data_seed: int, stream: int) -> np.random.Generator:
    """The separate generator of one mechanism (module docstring)."""
    return np.random.default_rng([data_seed, stream])


def mix_discordance(own: np.ndarray, shared: np.ndarray | None, sd: float, rho: float) -> np.ndarray:
    """``sd * (sqrt(1 - rho) * e + sqrt(rho) * s)`` given ``own = sd * e`` (the modality's own
    draw, in dB) and ``shared = s`` (standard normal, one per eye). ``rho = 0`` returns ``own``."""
    if rho == 0.0:
        return own
    return np.sqrt(1.0 - rho) * own + sd * np.sqrt(rho) * shared


def sd_retest(md_db) -> np.ndarray:
    """Test-retest SD (dB) of a visual field's MD as a function of the true MD (dB):

        sd_retest(MD) = 0.6 + 0.07 * min(max(-MD, 0), 20)

    0.6 dB at MD >= 0 (``RETEST_SD_NORMAL_DB``), rising linearly to 2.0 dB at -20 dB
    (``RETEST_SD_ADVANCED_DB``), constant below. The two anchors are published figures (see the
    constants); the straight line between them and the plateau are an ASSUMPTION anchored to
    them: the sources give ranges and a scatter plot (R^2 0.19), not a fitted curve, and MD
    variability also depends on the pattern of loss (three-fold differences at the same MD:
    PLoS ONE 2013, PMC3875443)."""
    loss = np.clip(-np.asarray(md_db, dtype=np.float64), 0.0, -RETEST_PLATEAU_DB)
    slope = (RETEST_SD_ADVANCED_DB - RETEST_SD_NORMAL_DB) / -RETEST_PLATEAU_DB
    return RETEST_SD_NORMAL_DB + slope * loss


def noisy_label(md_true: np.ndarray, label_noise: float, rng: np.random.Generator,
                md_min: float, md_max: float) -> np.ndarray:
    """The recorded MD: ``clip(MD + label_noise * sd_retest(MD) * z, md_min, md_max)``, ``z`` standard
    normal from ``rng``. Clipped to the generator's MD range, as a perimeter's MD is bounded: labels
    stay in the documented range; the clip touches only eyes within a few dB of the bounds."""
    z = rng.standard_normal(len(md_true))
    return np.clip(md_true + label_noise * sd_retest(md_true) * z, md_min, md_max)


def shortcut_z(md: np.ndarray, head_db: float, rng: np.random.Generator) -> np.ndarray:
    """The shortcut's latent: for head eyes (``md >= head_db``) their MD standardised by the head
    eyes' mean and SD; for tail eyes an independent draw (with replacement) from those head z
    values, so head and tail share one distribution but only head eyes' z tracks MD. With fewer
    than two head eyes (no SD to standardise by) every z is 0."""
    head = md >= head_db
    z = np.zeros(len(md))
    if head.sum() < 2 or md[head].std() == 0:
        return z
    z[head] = (md[head] - md[head].mean()) / md[head].std()
    z[~head] = rng.choice(z[head], size=int((~head).sum()), replace=True)
    return z


def shortcut_intensity(z: np.ndarray, shortcut: float) -> np.ndarray:
    """Patch intensity in [0, 1]: ``clip(0.5 + SHORTCUT_CONTRAST * shortcut * z, 0, 1)``."""
    return np.clip(0.5 + SHORTCUT_CONTRAST * shortcut * z, 0.0, 1.0)


def shortcut_patch_size(image_size: int) -> int:
    """Side (px) of the corner patch: 1/16 of the image, at least 1 px (4 px at 64 px). Its inner
    corner sits at radius > 1.2 in image coordinates [-1, 1], outside the field stop (0.97)."""
    return max(1, image_size // 16)


def add_shortcut_patch(photo: np.ndarray, intensity: np.ndarray) -> np.ndarray:
    """Write the grey patch (all three channels) into the top-left corner of uint8 photos
    ``[N, 3, H, W]``, after laterality mirroring, so it is at the same place in every photo."""
    k = shortcut_patch_size(photo.shape[-1])
    photo = photo.copy()
    photo[:, :, :k, :k] = (intensity * 255.0 + 0.5).astype(np.uint8)[:, None, None, None]
    return photo


def unrelated_md(md: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The MD a null modality's images are drawn from (``Config.null_modality``): another eye's MD,
    by a random permutation. Its images keep the marginal distribution of real ones (the same
    mixture of healthy and damaged eyes, so nothing tells them apart by eye), but carry no
    information about their own eye's MD: the positive control of the testbed (notebook 06). A
    permutation can leave an eye its own MD (about one eye in all, whatever n), which leaves the
    information negligible."""
    return md[rng.permutation(len(md))]

