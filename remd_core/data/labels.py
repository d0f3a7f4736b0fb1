"""Label bins, MD regions and smoothing windows: the one home of how the workbench bins a label.

- ``LabelBins``: equal-width bins and the one binning rule, ``floor((y - origin) / width)`` in float64
  (``index`` on the device in torch, ``index_np`` in numpy). LDS (``losses.lds``), FDS
  (``models.fds``), EchoMEN's expert weights (``losses.echomen``) and the regions below all bin with it.
- ``Regions`` and ``region_labels``: the many / medium / few regions of the training labels (Yang et
  al., ICML 2021, ``shot_metrics``), which the per-region reports (``evaluation.metrics``), ImbSAM's
  tail (``optim.imbsam``), the probe's strata (``diagnosis.probe``) and the head/tail subsets of the
  diagnosis (``head_tail_split``) share.
- ``kernel_window``: the LDS/FDS smoothing window (Yang et al.'s official ``get_lds_kernel_window``).

Before this module the three bin codes differed at an edge: the regions searched sorted edges
``lo + width * k`` while LDS and EchoMEN divided and floored; a label within rounding of an edge could
land in different bins. Now every caller floors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from scipy.ndimage import gaussian_filter1d
from scipy.signal.windows import triang

REGIONS = ("many", "medium", "few")
KERNELS = ("gaussian", "triang", "laplace")

def kernel_window(kernel: str = "gaussian", ks: int = 5, sigma: float = 2.0) -> np.ndarray:
    """The official LDS/FDS kernel window of odd length ``ks``, normalised to sum 1 (float64).

    ``gaussian``: ``gaussian_filter1d`` of a centred unit impulse (scipy defaults, as the official
    code); ``triang``: ``scipy.signal.windows.triang(ks)``; ``laplace``: ``exp(-|x| / sigma)`` at
    ``x = -(ks // 2) .. ks // 2``. ``sigma`` is unused by ``triang``.
    """
    if kernel not in KERNELS:
        raise ValueError(f"unknown kernel {kernel!r}; known: {KERNELS}")
    if isinstance(ks, bool) or int(ks) != ks or ks < 1 or ks % 2 == 0:
        raise ValueError(f"ks must be an odd integer >= 1, got {ks}")
    sigma = float(sigma)
    if not (sigma > 0 and math.isfinite(sigma)):
        raise ValueError(f"sigma must be a finite number > 0, got {sigma}")
    ks = int(ks)
    half = ks // 2
    if kernel == "gaussian":
        impulse = np.zeros(ks)
        impulse[half] = 1.0
        window = gaussian_filter1d(impulse, sigma=sigma)
    elif kernel == "triang":
        window = triang(ks)
    else:
        window = np.exp(-np.abs(np.arange(-half, half + 1)) / sigma)
    return np.asarray(window, dtype=np.float64) / np.sum(window)


@dataclass(frozen=True)
class LabelBins:
    """Equal-width label bins ``[origin + b * width, origin + (b + 1) * width)``, ``b = 0 .. n - 1``;
    labels below or above fall into the first or last bin (``index``). A label's bin is
    ``floor((y - origin) / width)`` in float64, in numpy and in torch alike: the one rule of the
    workbench, so metrics' regions, LDS, FDS and EchoMEN's weights agree at every bin edge."""

    origin: float
    width: float
    n: int

    def __post_init__(self):
        if not (self.width > 0 and math.isfinite(self.width)):
            raise ValueError(f"bin width must be a finite number > 0, got {self.width}")
        if not math.isfinite(self.origin):
            raise ValueError(f"bin origin must be finite, got {self.origin}")
        if isinstance(self.n, bool) or int(self.n) != self.n or self.n < 1:
            raise ValueError(f"number of bins must be an integer >= 1, got {self.n}")

    @classmethod
    def covering(cls, labels, width: float, origin: float | None = None) -> LabelBins:
        """The bins of ``width`` from ``origin`` (default: the smallest label) to the largest label."""
        y = _finite_labels(labels)
        lo = float(y.min()) if origin is None else float(origin)
        if lo > float(y.min()):
            raise ValueError(f"origin {lo} is above the smallest label {float(y.min())}")
        width = float(width)
        if not (width > 0 and math.isfinite(width)):
            raise ValueError(f"bin width must be a finite number > 0, got {width}")
        return cls(lo, width, int(np.floor((float(y.max()) - lo) / width)) + 1)

    def index_np(self, y, clip: bool = True) -> np.ndarray:
        """Bin index of each label (numpy, int64); ``clip=False`` gives -1 below the first bin and ``n``
        at or above the end of the last, for a caller that treats those labels apart."""
        b = np.floor((np.asarray(y, dtype=np.float64).reshape(-1) - self.origin) / self.width)
        return (np.clip(b, 0, self.n - 1) if clip else np.clip(b, -1, self.n)).astype(np.int64)

    def index(self, y: torch.Tensor) -> torch.Tensor:
        """Bin index of each label (torch, int64, on ``y``'s device; no host read)."""
        y = torch.as_tensor(y).detach().reshape(-1).to(torch.float64)  # float64, as ``index_np``
        b = torch.floor((y - self.origin) / self.width)
        return b.clamp(0, self.n - 1).to(torch.int64)


def _finite_labels(labels) -> np.ndarray:
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    y = np.asarray(labels, dtype=np.float64).reshape(-1)
    if y.size == 0:
        raise ValueError("need at least one training label")
    if not np.all(np.isfinite(y)):
        raise ValueError("training labels must be finite")
    return y


def _np(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64).reshape(-1)


@dataclass(frozen=True)
class Regions:
    """Fixed-width label bins and each bin's region, learned from the TRAINING labels.

    Bin ``k`` is ``[edges[k], edges[k+1])``; ``counts[k]`` is its training count and ``regions[k]``
    its region. ``many_min`` and ``few_below`` are the absolute thresholds that were applied:
    many if count >= many_min, few if count < few_below, medium otherwise.
    """

    edges: np.ndarray
    counts: np.ndarray
    regions: tuple[str, ...]
    many_min: float
    few_below: float

    @property
    def bins(self) -> LabelBins:
        return LabelBins(float(self.edges[0]), float(self.edges[1] - self.edges[0]), len(self.counts))

    def bin_index(self, y) -> np.ndarray:
        """Bin of each label; -1 below the first edge, ``n_bins`` at or above the last."""
        return self.bins.index_np(_np(y), clip=False)

    def assign(self, y) -> np.ndarray:
        """Region ("many" / "medium" / "few") of each label. Labels outside the training bins had
        no training sample at all, so they are "few"."""
        idx = self.bin_index(y)
        inside = (idx >= 0) & (idx < len(self.regions))
        out = np.full(idx.shape, "few", dtype="<U6")
        table = np.asarray(self.regions, dtype="<U6")
        out[inside] = table[idx[inside]]
        return out

    def table(self) -> pd.DataFrame:
        """One row per bin: its edges, training count and region."""
        return pd.DataFrame({"lo": self.edges[:-1], "hi": self.edges[1:], "train_count": self.counts,
                             "region": list(self.regions)})


def _threshold(value: float, n: int, name: str) -> float:
    if value < 0:
        raise ValueError(f"{name} must be non-negative, got {value}")
    return value * n if isinstance(value, float) and value < 1 else float(value)


def region_labels(y_train, bin_width: float = 2.0, many: float = 0.08, few: float = 0.02,
                  lo: float | None = None, hi: float | None = None) -> Regions:
    """Bin the training labels into fixed-width bins and label each bin many / medium / few.

    Bins: width ``bin_width`` (default 2 dB for MD), edges on multiples of ``bin_width`` from
    ``lo`` (default: the largest multiple at or below min(y_train)) up past ``hi`` (default
    max(y_train)), so the observed range is covered and edges are round numbers (-4, -2, 0, ...).

    Thresholds: a bin is "many" if its training count is >= ``many``, "few" if < ``few``, else
    "medium". A value below 1 is a FRACTION of the training set size, a value of 1 or more an
    absolute count. Defaults: many = 8 %, few = 2 % of the training set (40 and 10 of 500 eyes).

    Why these: the reference (YyzHarry/imbalanced-regression) uses many > 100, few < 20 for 1-year
    bins on AgeDB-DIR (about 12,200 training samples, about 120 per bin on average), i.e. about 0.8
    and 0.16 of the mean bin count. Transferred literally to 500 eyes they would call every bin few;
    transferred as fractions of the mean bin count (~17 MD bins of 2 dB -> ~30 eyes per bin) they
    give "few" below 5 eyes, too few to estimate a bin's error at all. We keep the spirit (many =
    well-populated head, few = bins with too little training data to learn from) with round numbers
    for the Re-M3Dr setting of 500 training eyes: many >= 40 eyes (~8 %), few < 10 eyes (~2 %).
    On 500 draws from a log-normal fitted to the UW archive's MD (median -4.5 dB, IQR -8 to
    -2.7 dB) this makes the 2 dB bins from -8 to 0 dB many, -14 to -8 dB medium, and the severe
    tail below -14 dB (and the rare MD > 0 dB) few. As fractions, the same defaults carry over to other sizes (randhie: 1-visit bins).
    """
    y_train = _np(y_train)
    if y_train.size == 0:
        raise ValueError("region_labels needs at least one training label")
    if not np.all(np.isfinite(y_train)):
        raise ValueError("training labels must be finite")
    if bin_width <= 0:
        raise ValueError(f"bin_width must be positive, got {bin_width}")
    n = y_train.size
    many_min, few_below = _threshold(many, n, "many"), _threshold(few, n, "few")
    if few_below > many_min:
        raise ValueError(f"few threshold ({few_below:g}) exceeds many threshold ({many_min:g})")
    lo = np.floor(y_train.min() / bin_width) * bin_width if lo is None else float(lo)
    hi = y_train.max() if hi is None else float(hi)
    if hi < lo:
        raise ValueError(f"hi ({hi:g}) is below lo ({lo:g})")
    n_bins = int(np.floor((hi - lo) / bin_width)) + 1  # the last bin contains hi
    edges = lo + bin_width * np.arange(n_bins + 1)
    idx = LabelBins(lo, bin_width, n_bins).index_np(y_train, clip=False)
    inside = (idx >= 0) & (idx < n_bins)
    counts = np.bincount(idx[inside], minlength=n_bins)
    regions = tuple("many" if c >= many_min else "few" if c < few_below else "medium" for c in counts)
    return Regions(edges=edges, counts=counts, regions=regions, many_min=many_min, few_below=few_below)


def head_tail_split(y_train, regions: Regions | None = None, medium_as_tail: bool = False,
                    **region_kwargs) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks ``head`` and ``tail`` over the training samples, for the coupled-imbalance
    diagnosis of the Re-M3Dr paper (Fig. 2 trains on head-only and on tail-only data).

    head = samples in "many" bins; tail = samples in "few" bins, plus "medium" ones when
    ``medium_as_tail``. The masks are disjoint; they cover every sample exactly when
    ``medium_as_tail`` is True (otherwise medium samples are in neither). The paper does not
    define head and tail numerically; we reuse the shot regions so the diagnosis and the per-region
    report speak of the same samples. ``regions`` defaults to ``region_labels(y_train,
    **region_kwargs)``.
    """
    if regions is None:
        regions = region_labels(y_train, **region_kwargs)
    elif region_kwargs:
        raise ValueError(f"pass either regions or region settings, not both: {sorted(region_kwargs)}")
    names = regions.assign(y_train)
    head = names == "many"
    tail = (names == "few") | ((names == "medium") if medium_as_tail else False)
    return head, tail
