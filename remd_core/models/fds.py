"""FDS, feature distribution smoothing: calibrate features with statistics smoothed across label bins.

Source
------
Yang, Zha, Chen, Wang, Katabi, "Delving into Deep Imbalanced Regression", ICML 2021 (its FDS method),
and the official code (YyzHarry/imbalanced-regression: ``agedb-dir/fds.py`` class ``FDS``,
``agedb-dir/utils.py`` ``calibrate_mean_var``, the ``train`` loop of ``agedb-dir/train.py`` and the
model's ``forward`` in ``imdb-wiki-dir/resnet.py``). (Equation numbers of the paper were not checked
in our copy; the steps below are the official code's.)

What it does
------------
- Per label bin b, running statistics of the (un-calibrated) features: mean ``mu_b`` and per-dimension
  variance ``var_b`` (unbiased; 0 for a bin with one sample). At the end of each epoch from
  ``start_update`` on, the features of the whole training set update them by momentum,
  ``stat <- (1 - m) * stat_epoch + m * stat`` with ``m = 0.9``, except at ``start_update`` itself, where
  the epoch's statistics replace the initial ones (zeros and ones). Bins with no sample are left as they
  are (so an always-empty bin keeps mean 0 and variance 1, as in the official code).
- The statistics are smoothed across bins with the sum-normalised kernel window (``kernel_window``:
  gaussian, ``ks = 5``, ``sigma = 2`` by default) by a 1-D convolution with reflect padding.
- In training, from epoch ``start_smooth`` on, a feature ``z`` of a sample in bin b is calibrated per
  dimension, ``z' = (z - mu_b) * sqrt(clip(var~_b / var_b, 0.1, 10)) + mu~_b`` (``~`` smoothed). The
  official clip ``[0.1, 10]`` is kept; dimensions with ``var_b = 0`` are left unchanged, and so is a
  whole bin whose variances sum to less than 1e-10 (as ``calibrate_mean_var``). In eval mode the
  features pass unchanged.
- Defaults (the official ``FDS`` class): ``start_update = 0``, ``start_smooth = 1``, ``momentum = 0.9``,
  gaussian ``ks = 5``, ``sigma = 2`` (the AgeDB/IMDB-WIKI ``train.py`` command lines default to
  ``ks = 9``, ``sigma = 1``).

Use: ``z = fds(z, y, epoch)`` between the encoder and the regression head (identity in eval mode), and
at the end of each training epoch ``fds.update(features, labels, epoch)`` with the un-calibrated
features of the whole training set (computed without gradients).

Where we differ from the official code
--------------------------------------
- Which statistics calibrate an epoch: the official ``update_last_epoch_stats`` ASSIGNS the running
  tensors to the "last epoch" buffers (``self.running_mean_last_epoch = self.running_mean``: the same
  tensor) and smooths them, and only then ``update_running_stats`` changes them in place. So the
  un-smoothed ``mu_b, var_b`` used in the next epoch already include the epoch just finished while the
  smoothed ones lag one epoch behind; and the first snapshot is taken at the end of epoch
  ``start_update + 1``, so with the defaults nothing is calibrated before epoch 2 (the "last epoch"
  buffers are still zeros and ones, an identity). Here ``update`` updates the running statistics and
  then smooths them, so both come from the same (latest) statistics, and epoch ``start_smooth`` (1 by
  default) is already calibrated with the statistics of the epochs before it.
- Bins: any width and origin (``LabelBins``) instead of integer ages ``bucket_start .. bucket_num - 1``;
  labels below or above the range always join the first or last bin (the official code joins them only
  when the edge label itself is in the batch, and otherwise leaves them un-calibrated).
- Vectorised over bins (``index_add``, ``torch.where``): no Python loop over labels and no value read
  back to the host, in ``forward`` or in ``update``. ``momentum=None`` (the official cumulative-average
  option) is not offered.
- Updating twice for the same epoch (or an earlier one) is a ``ValueError`` (the official code ignores
  earlier epochs). The last updated epoch and the bins travel in the state dict (extra state) and are
  checked on load.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..data.labels import LabelBins, kernel_window

VAR_EPS = 1e-10
"""A bin whose running variances sum to less than this is not calibrated (official ``calibrate_mean_var``)."""


def _non_negative_int(name: str, value) -> int:
    if isinstance(value, bool) or int(value) != value or value < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {value}")
    return int(value)


class FDS(nn.Module):
    """Feature distribution smoothing over label bins (see the module docstring).

    Args:
        feature_dim: feature size D.
        bins: the label bins (``LabelBins``; or use ``FDS.from_labels``). Needs more than ``ks // 2`` bins.
        start_update, start_smooth: first epoch whose features update the statistics, and first epoch
            whose training features are calibrated.
        kernel, ks, sigma: smoothing window across bins (``kernel_window``).
        momentum: in ``[0, 1)``.
        clip_min, clip_max: clip of the variance ratio (official 0.1 and 10).
        device, dtype: of the statistics buffers.
    """

    def __init__(self, feature_dim: int, bins: LabelBins, start_update: int = 0, start_smooth: int = 1,
                 kernel: str = "gaussian", ks: int = 5, sigma: float = 2.0, momentum: float = 0.9,
                 clip_min: float = 0.1, clip_max: float = 10.0, *, device=None, dtype=None):
        super().__init__()
        if isinstance(feature_dim, bool) or int(feature_dim) != feature_dim or feature_dim < 1:
            raise ValueError(f"feature_dim must be an integer >= 1, got {feature_dim}")
        if not isinstance(bins, LabelBins):
            raise ValueError(f"bins must be a LabelBins, got {type(bins).__name__}")
        self.start_update = _non_negative_int("start_update", start_update)
        self.start_smooth = _non_negative_int("start_smooth", start_smooth)
        momentum = float(momentum)
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        clip_min, clip_max = float(clip_min), float(clip_max)
        if not (0 < clip_min <= clip_max and math.isfinite(clip_max)):
            raise ValueError(f"need 0 < clip_min <= clip_max < inf, got {clip_min} and {clip_max}")
        window = kernel_window(kernel, ks, sigma)
        if bins.n <= ks // 2:
            raise ValueError(f"reflect padding of a kernel of size {ks} needs more than {ks // 2} bins, got {bins.n}")
        self.feature_dim, self.bins, self.momentum = int(feature_dim), bins, momentum
        self.clip_min, self.clip_max = clip_min, clip_max
        self._last_update_epoch = -1

        kw = {"device": device, "dtype": dtype if dtype is not None else torch.get_default_dtype()}
        shape = (bins.n, self.feature_dim)
        self.register_buffer("running_mean", torch.zeros(shape, **kw))
        self.register_buffer("running_var", torch.ones(shape, **kw))
        self.register_buffer("smoothed_mean", torch.zeros(shape, **kw))
        self.register_buffer("smoothed_var", torch.ones(shape, **kw))
        self.register_buffer("num_samples_tracked", torch.zeros(bins.n, **kw))
        self.register_buffer("window", torch.as_tensor(window, **kw), persistent=False)

    @classmethod
    def from_labels(cls, feature_dim: int, y_train, bin_width: float, origin: float | None = None, **kwargs) -> FDS:
        """An FDS whose bins of ``bin_width`` cover the training labels ``y_train``."""
        return cls(feature_dim, LabelBins.covering(y_train, bin_width, origin), **kwargs)

    @property
    def last_update_epoch(self) -> int:
        """The epoch of the last ``update`` (-1 before any)."""
        return self._last_update_epoch

    # ----------------------------------------------------------------------------------------------
    def _smooth_bins(self, stats: torch.Tensor) -> torch.Tensor:
        """Convolve ``[n_bins, D]`` statistics with the window along the bins, reflect padding."""
        half = self.window.numel() // 2
        x = stats.T.unsqueeze(1)  # [D, 1, n_bins]
        x = F.pad(x, (half, half), mode="reflect") if half else x
        return F.conv1d(x, self.window.view(1, 1, -1)).squeeze(1).T

    @torch.no_grad()
    def update(self, features: torch.Tensor, labels: torch.Tensor, epoch: int) -> None:
        """End-of-epoch update with the un-calibrated ``[N, D]`` features of the training set and their
        labels: momentum update of the per-bin statistics, then their smoothing. A no-op before
        ``start_update``."""
        epoch = _non_negative_int("epoch", epoch)
        if epoch < self.start_update:
            return
        if epoch <= self._last_update_epoch:
            raise ValueError(f"FDS was already updated at epoch {self._last_update_epoch}; got epoch {epoch}")
        if features.ndim != 2 or features.shape[1] != self.feature_dim:
            raise ValueError(f"features must be [N, {self.feature_dim}], got {tuple(features.shape)}")
        if torch.as_tensor(labels).numel() != features.shape[0]:
            raise ValueError(f"got {torch.as_tensor(labels).numel()} labels for {features.shape[0]} features")
        f = features.detach().to(self.running_mean)
        idx = self.bins.index(labels).to(f.device)
        count = torch.zeros_like(self.num_samples_tracked).index_add_(0, idx, torch.ones_like(f[:, 0]))
        mean = torch.zeros_like(self.running_mean).index_add_(0, idx, f) / count.clamp(min=1)[:, None]
        sq_dev = torch.zeros_like(self.running_var).index_add_(0, idx, (f - mean[idx]) ** 2)
        var = sq_dev / (count - 1).clamp(min=1)[:, None]  # unbiased; 0 for a single sample
        keep_old = 0.0 if epoch == self.start_update else self.momentum
        present = (count > 0)[:, None]
        self.running_mean.copy_(torch.where(present, (1 - keep_old) * mean + keep_old * self.running_mean,
                                            self.running_mean))
        self.running_var.copy_(torch.where(present, (1 - keep_old) * var + keep_old * self.running_var,
                                           self.running_var))
        self.num_samples_tracked.add_(count)
        self.smoothed_mean.copy_(self._smooth_bins(self.running_mean))
        self.smoothed_var.copy_(self._smooth_bins(self.running_var))
        self._last_update_epoch = epoch

    def calibrate(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``(z - mu_b) * sqrt(clip(var~_b / var_b)) + mu~_b`` per dimension, whatever the mode and epoch."""
        if features.ndim != 2 or features.shape[1] != self.feature_dim:
            raise ValueError(f"features must be [B, {self.feature_dim}], got {tuple(features.shape)}")
        idx = self.bins.index(labels).to(features.device)
        mu, var = self.running_mean[idx].to(features.dtype), self.running_var[idx].to(features.dtype)
        mu_s, var_s = self.smoothed_mean[idx].to(features.dtype), self.smoothed_var[idx].to(features.dtype)
        positive = var > 0
        ratio = (var_s / torch.where(positive, var, torch.ones_like(var))).clamp(self.clip_min, self.clip_max)
        calibrated = (features - mu) * ratio.sqrt() + mu_s
        keep = positive & (var.sum(dim=1, keepdim=True) >= VAR_EPS)
        return torch.where(keep, calibrated, features)

    def forward(self, features: torch.Tensor, labels: torch.Tensor, epoch: int) -> torch.Tensor:
        """Calibrated features in training from ``start_smooth`` on; the features unchanged otherwise."""
        if not self.training or epoch < self.start_smooth:
            return features
        return self.calibrate(features, labels)

    # ----------------------------------------------------------------------------------------------
    def get_extra_state(self) -> dict:
        b = self.bins
        return {"last_update_epoch": self._last_update_epoch, "bins": (b.origin, b.width, b.n)}

    def set_extra_state(self, state: dict) -> None:
        b = self.bins
        if tuple(state["bins"]) != (b.origin, b.width, b.n):
            raise ValueError(f"FDS state was saved with bins {tuple(state['bins'])}, this FDS has "
                             f"{(b.origin, b.width, b.n)}")
        self._last_update_epoch = int(state["last_update_epoch"])

    def extra_repr(self) -> str:
        b = self.bins
        return (f"feature_dim={self.feature_dim}, bins=({b.origin}, {b.width}, {b.n}), "
                f"start_update={self.start_update}, start_smooth={self.start_smooth}, momentum={self.momentum}")
