"""Loss-landscape slices along filter-normalised random directions (for Fig. 2e of the paper).

Reference: Li, Xu, Taylor, Studer, Goldstein, "Visualizing the Loss Landscape of Neural Nets",
NeurIPS 2018, section 4 ("Proposed visualization: filter-wise normalization"), and their code
(tomgoldstein/loss-landscape, ``net_plotter.py``). A slice evaluates ``L(theta + alpha d)`` (1-D)
or ``L(theta + alpha d1 + beta d2)`` (2-D). Each direction is a Gaussian draw rescaled filter by
filter: ``d_{i,j} <- d_{i,j} / ||d_{i,j}|| * ||theta_{i,j}||`` for filter j of layer i (the slice
along dim 0: an output channel of a conv, a row/neuron of a linear layer). This makes slices of
networks with different weight scales comparable, which matters for scale-invariant (BatchNorm)
networks.

Differences from the official code:

- 1-D tensors (biases, BatchNorm weight and bias) get a zero direction with ``ignore_1d=True``, as
  in their default ``ignore='biasbn'``. With ``ignore_1d=False`` the official code copies the
  weights themselves into the direction (``d.copy_(w)``). Here, as the whole-tensor analogue of
  the filter rule, such a tensor gets a Gaussian draw rescaled to the tensor's norm.
- A Gaussian value is drawn for every tensor, including ignored ones, so the directions of the
  dim > 1 tensors do not depend on ``ignore_1d`` for a given generator state.

Conventions shared with ``hessian.py`` and the trainer: ``loss_fn(model)`` returns a 0-dim loss on
a fixed evaluation batch. ``params`` defaults to the parameters with ``requires_grad``. Evaluation
runs in eval mode (BatchNorm uses its running statistics and does not update them). Afterwards the
parameters, the buffers and each module's train/eval flag are restored bit-exactly
(``perturbation_guard``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

LossFn = Callable[[nn.Module], torch.Tensor]

FILTER_EPS = 1e-10
"""Added to the direction's filter norm before dividing, as in the official ``normalize_direction``."""


def resolve_params(model: nn.Module, params: Iterable[torch.Tensor] | None) -> list[torch.Tensor]:
    """``params`` as a list, or every parameter of ``model`` with ``requires_grad`` when None."""
    out = [p for p in model.parameters() if p.requires_grad] if params is None else list(params)
    if not out:
        raise ValueError("no parameters to perturb (params is empty, or nothing requires grad)")
    return out


@contextlib.contextmanager
def perturbation_guard(model: nn.Module, params: Sequence[torch.Tensor] = ()):
    """Put ``model`` in eval mode. On exit, even after an exception, copy back ``params`` and every
    buffer (e.g. BatchNorm running statistics) bit-exactly and restore each module's own
    ``training`` flag. Each flag is restored per module because some modules may have been in
    eval mode individually, such as a frozen BatchNorm."""
    modes = [(m, m.training) for m in model.modules()]
    saved_params = [p.detach().clone() for p in params]
    buffers = list(model.buffers())
    saved_buffers = [b.detach().clone() for b in buffers]
    model.eval()
    try:
        yield
    finally:
        with torch.no_grad():
            for p, s in zip(params, saved_params):
                p.copy_(s)
            for b, s in zip(buffers, saved_buffers):
                b.copy_(s)
        for m, flag in modes:
            m.training = flag


def _check_direction(params: Sequence[torch.Tensor], direction: Sequence[torch.Tensor], name: str) -> None:
    if len(direction) != len(params):
        raise ValueError(f"{name} has {len(direction)} tensors but params has {len(params)}")
    for i, (p, d) in enumerate(zip(params, direction)):
        if d.shape != p.shape:
            raise ValueError(f"{name}[{i}] has shape {tuple(d.shape)} but params[{i}] has {tuple(p.shape)}")


def _scalar(loss: torch.Tensor) -> float:
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise ValueError("loss_fn(model) must return a tensor with one element")
    return float(loss.detach())


@torch.no_grad()
def random_direction(params: Iterable[torch.Tensor], generator: torch.Generator | None = None,
                     ignore_1d: bool = True) -> list[torch.Tensor]:
    """A Gaussian direction, filter-normalised to ``params`` (Li et al. 2018, section 4).

    For a tensor with dim > 1, each filter (slice along dim 0) of the draw is rescaled to the norm
    of the same filter of the weights. For a tensor with dim <= 1 the direction is zero when
    ``ignore_1d``, else the whole draw is rescaled to the tensor's norm. The draw uses ``generator``
    (a CPU ``torch.Generator``; the global RNG if None) and is then moved to each parameter's
    device and dtype, so a seed gives the same direction on every device.
    """
    out = []
    for p in params:
        w = p.detach()
        d = torch.randn(w.shape, generator=generator, dtype=torch.float64 if w.dtype == torch.float64
                        else torch.float32).to(device=w.device, dtype=w.dtype)
        if w.dim() <= 1:
            if ignore_1d:
                d.zero_()
            else:
                d.mul_(w.norm() / (d.norm() + FILTER_EPS))
        else:
            w_norm = w.reshape(w.shape[0], -1).norm(dim=1)
            d_norm = d.reshape(d.shape[0], -1).norm(dim=1)
            d.mul_((w_norm / (d_norm + FILTER_EPS)).reshape(-1, *([1] * (d.dim() - 1))))
        out.append(d)
    return out


def _slice(model: nn.Module, loss_fn: LossFn, params, directions: list, grid: list[tuple[float, ...]],
           names: tuple[str, ...]) -> pd.DataFrame:
    params = resolve_params(model, params)
    for i, d in enumerate(directions):
        _check_direction(params, d, f"direction {i + 1}")
    rows = []
    with perturbation_guard(model, params), torch.no_grad():
        origin = [p.detach().clone() for p in params]
        for coords in grid:
            for k, (p, p0) in enumerate(zip(params, origin)):
                new = p0.clone()
                for c, d in zip(coords, directions):
                    if c != 0:
                        new.add_(d[k].to(device=p.device, dtype=p.dtype), alpha=c)
                p.copy_(new)
            rows.append((*coords, _scalar(loss_fn(model))))
    return pd.DataFrame(rows, columns=[*names, "loss"])


def slice_1d(model: nn.Module, loss_fn: LossFn, params: Iterable[torch.Tensor] | None,
             direction: Sequence[torch.Tensor], alphas) -> pd.DataFrame:
    """``L(theta + alpha d)`` for each alpha, as a DataFrame with columns ``alpha, loss``.

    Evaluates under ``torch.no_grad`` in eval mode and restores parameters, buffers and modes
    afterwards. Each point is set from the saved origin (``theta + alpha d``, not accumulated
    steps), so alpha = 0 evaluates the unperturbed weights exactly.
    """
    grid = [(float(a),) for a in np.asarray(alphas, dtype=np.float64).reshape(-1)]
    return _slice(model, loss_fn, params, [list(direction)], grid, ("alpha",))


def slice_2d(model: nn.Module, loss_fn: LossFn, params: Iterable[torch.Tensor] | None,
             d1: Sequence[torch.Tensor], d2: Sequence[torch.Tensor], alphas, betas) -> pd.DataFrame:
    """``L(theta + alpha d1 + beta d2)`` on the alpha x beta grid, as a long DataFrame with columns
    ``alpha, beta, loss`` (alpha-major order). Pivot with ``df.pivot(index="beta", columns="alpha",
    values="loss")`` for a contour plot. Same guarantees as ``slice_1d``."""
    a = np.asarray(alphas, dtype=np.float64).reshape(-1)
    b = np.asarray(betas, dtype=np.float64).reshape(-1)
    grid = [(float(x), float(y)) for x in a for y in b]
    return _slice(model, loss_fn, params, [list(d1), list(d2)], grid, ("alpha", "beta"))


def sharpness_from_slice(df: pd.DataFrame, relative: bool = False) -> float:
    """Mean loss increase over a slice relative to its centre: ``mean_i L_i - L(0)``.

    The centre is the row with ``alpha == 0`` (and ``beta == 0`` for a 2-D slice) and must be
    present. The mean includes the centre row, which adds 0. A flat basin scores near 0 and a sharp
    one high. A negative value means the centre is not a minimum along the slice. The score depends
    on the slice range, so compare slices taken over the same alphas with the same kind of
    direction (filter-normalised, as in Li et al.). With ``relative=True`` the increase is divided
    by ``|L(0)|``, so it does not depend on the loss scale. This is only a simple summary. For
    local curvature use ``hessian.top_hessian_eigenvalue``. The paper's SGM score
    ``L(theta + Delta) - L(theta - Delta)`` is a different quantity and lives in the optimiser.
    """
    coords = [c for c in ("alpha", "beta") if c in df.columns]
    if "alpha" not in coords or "loss" not in df.columns:
        raise KeyError("df needs columns 'alpha' and 'loss' (and 'beta' for a 2-D slice)")
    at_centre = np.ones(len(df), dtype=bool)
    for c in coords:
        at_centre &= np.isclose(df[c].to_numpy(dtype=np.float64), 0.0, rtol=0.0, atol=1e-12)
    if not at_centre.any():
        raise ValueError("the slice has no centre point (alpha = 0, and beta = 0 for 2-D)")
    loss = df["loss"].to_numpy(dtype=np.float64)
    centre = float(loss[at_centre][0])
    rise = float(np.mean(loss - centre))
    if relative:
        return rise / abs(centre) if centre != 0 else float("nan")
    return rise
