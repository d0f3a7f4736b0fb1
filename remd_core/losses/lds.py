"""LDS, label distribution smoothing: loss weights from a kernel-smoothed label density.

Source
------
Yang, Zha, Chen, Wang, Katabi, "Delving into Deep Imbalanced Regression", ICML 2021 (its LDS method:
the "effective" label density is the empirical one convolved with a symmetric kernel, and the loss is
re-weighted by its inverse), and the official code (YyzHarry/imbalanced-regression:
``agedb-dir/datasets.py`` ``_prepare_weights``, ``agedb-dir/utils.py`` ``get_lds_kernel_window``,
``imdb-wiki-dir/loss.py`` ``weighted_mse_loss``). (Equation numbers of the paper were not checked in our copy; the
steps below are the official code's.)

What the official code does, and ``lds_weights`` does
------------------------------------------------------
1. Histogram of the training labels in bins of width 1 (integer ages ``0 .. max_target - 1``; labels
   above the top bin fall into it).
2. Re-weighting of the counts: ``sqrt_inv`` takes ``sqrt(count)``; ``inverse`` clips the counts to
   ``[5, 1000]`` (empty bins become 5).
3. LDS: the re-weighted counts are convolved with a kernel window (``scipy.ndimage.convolve1d``, zero
   padding beyond the histogram, ``mode='constant'``).
4. Each training sample's weight is ``1 / smoothed[bin]``, then all are scaled by
   ``N / sum(weights)``, so the weights of the N training samples average exactly 1.

Defaults: gaussian kernel, ``ks = 5``, ``sigma = 2``, ``sqrt_inv`` (the defaults of ``_prepare_weights``
and of the ``FDS`` class; the AgeDB/IMDB-WIKI ``train.py`` command lines default to ``ks = 9``,
``sigma = 1``). The windows are built exactly as the official code does (``kernel_window``): the
"gaussian" window is ``scipy.ndimage.gaussian_filter1d`` of a unit impulse of length ``ks`` (its default
``truncate = 4`` and ``mode = 'reflect'`` fold the tails back, so for ``ks = 5, sigma = 2`` the window is
nearly flat, 0.186 / 0.205 / 0.217 / 0.205 / 0.186 after normalising, not a sampled Gaussian); "triang"
is ``scipy.signal.windows.triang(ks)``; "laplace" samples ``exp(-|x| / sigma)`` at ``x = -h .. h``.

Where we differ from the official code
--------------------------------------
- Bins: any width (``bin_width``, in label units) and origin (default: the smallest training label)
  instead of integer ages from 0. The official histogram spans the whole label range, so the bins just
  outside the training labels exist there, empty: with ``sqrt_inv`` they hold ``sqrt(0) = 0``, the same
  as our zero padding; with ``inverse`` they are clipped to 5 like every empty bin and add to the
  smoothed density near the ends of the training range. We pad with that clipped 5 under ``inverse``
  (``convolve1d``'s ``cval``), which is the official result whenever the label range reaches at least
  ``ks // 2`` bins beyond the training labels (MD always does). A label outside the training range
  (a query, never a training sample) takes the weight of the nearest edge bin.
- The windows are normalised to sum 1 (the official LDS window is normalised to peak 1, its FDS window to
  sum 1). A constant factor on the window cancels in step 4, so the weights are the same.
- A bin whose smoothed density is 0 (an empty bin farther than ``ks // 2`` bins from any label; never a
  training sample's bin) has no weight in the official code; here it gets the largest training-sample
  weight, so a query label there is not infinite.
- ``clip_max`` (our addition; default None = no clip, as the official ``sqrt_inv``) caps the final
  weights after step 4, so the training weights then average at most 1.
- The result is a table over bins (``LDSWeights``) that weighs any batch of labels on its device, not a
  list stored in the dataset.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.ndimage import convolve1d

from ..data.labels import LabelBins, _finite_labels, kernel_window
from .regression import _pair

REWEIGHTS = ("sqrt_inv", "inverse")
INVERSE_COUNT_CLIP = (5.0, 1000.0)
"""The official clip of the bin counts for ``reweight='inverse'``."""


class LDSWeights:
    """Per-bin loss weights from ``lds_weights``; call it on a batch of labels to get their weights.

    Attributes: ``bins`` (``LabelBins``), ``table`` (``[n_bins]`` float64 tensor of weights),
    ``density`` (``[n_bins]`` the smoothed, re-weighted counts, float64 numpy).
    """

    def __init__(self, bins: LabelBins, table: torch.Tensor, density: np.ndarray):
        self.bins = bins
        self.table = table
        self.density = density

    def to(self, device) -> LDSWeights:
        """The same weights with the table on ``device`` (so that calls there copy nothing)."""
        return LDSWeights(self.bins, self.table.to(device), self.density)

    def __call__(self, y: torch.Tensor) -> torch.Tensor:
        """Weights of labels ``y`` (``[B]`` or ``[B, 1]``) as a ``[B]`` tensor on ``y``'s device, in
        ``y``'s floating dtype (the default dtype for integer labels)."""
        y = torch.as_tensor(y)
        dtype = y.dtype if torch.is_floating_point(y) else torch.get_default_dtype()
        return self.table.to(y.device)[self.bins.index(y)].to(dtype)


def lds_weights(y_train, bin_width: float, kernel: str | None = "gaussian", ks: int = 5, sigma: float = 2.0,
                reweight: str = "sqrt_inv", clip_max: float | None = None, origin: float | None = None) -> LDSWeights:
    """LDS weights fitted on the training labels (see the module docstring for each step).

    Args:
        y_train: all training labels (array-like or tensor), in the units the loss will see.
        bin_width: histogram bin width in those units (the official code: 1 year of age).
        kernel: ``"gaussian"``, ``"triang"``, ``"laplace"``, or None for plain re-weighting without
            smoothing (the official ``--reweight`` without ``--lds``).
        ks, sigma: kernel size (odd) and width (gaussian, laplace), in bins.
        reweight: ``"sqrt_inv"`` or ``"inverse"``.
        clip_max: optional cap (> 0) on the final weights.
        origin: left edge of the first bin (default: the smallest training label).
    """
    if reweight not in REWEIGHTS:
        raise ValueError(f"unknown reweight {reweight!r}; known: {REWEIGHTS} (no re-weighting: do not use LDS)")
    if clip_max is not None and not (float(clip_max) > 0 and math.isfinite(float(clip_max))):
        raise ValueError(f"clip_max must be a finite number > 0 or None, got {clip_max}")
    window = None if kernel is None else kernel_window(kernel, ks, sigma)
    y = _finite_labels(y_train)
    bins = LabelBins.covering(y, bin_width, origin)
    idx = bins.index_np(y)
    counts = np.bincount(idx, minlength=bins.n).astype(np.float64)
    if reweight == "sqrt_inv":
        value = np.sqrt(counts)
    else:
        value = np.clip(counts, *INVERSE_COUNT_CLIP)
    if window is not None:
        outside = INVERSE_COUNT_CLIP[0] if reweight == "inverse" else 0.0  # the official empty bins beyond ours
        value = convolve1d(value, weights=window, mode="constant", cval=outside)
    with np.errstate(divide="ignore"):
        inv = np.where(value > 0, 1.0 / np.where(value > 0, value, 1.0), np.inf)
    per_sample = inv[idx]  # finite: a training sample's own bin has a positive count
    table = inv * (y.size / per_sample.sum())
    table[~np.isfinite(table)] = table[idx].max()
    if clip_max is not None:
        table = np.minimum(table, float(clip_max))
    return LDSWeights(bins, torch.as_tensor(table, dtype=torch.float64), value)


def weighted_mse(pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """``mean(weights * (pred - target)^2)`` over the batch (the official ``weighted_mse_loss``: the
    mean over samples, not divided by the sum of the weights; LDS weights average 1 over the training
    set). ``weights`` is ``[B]`` or ``[B, 1]``; None gives the plain MSE."""
    pred, target = _pair(pred, target)
    sq = (pred - target) ** 2
    if weights is None:
        return sq.mean()
    if weights.numel() != pred.numel():
        raise ValueError(f"got {weights.numel()} weights for {pred.numel()} predictions")
    return (weights.reshape(-1).to(sq.dtype) * sq).mean()
