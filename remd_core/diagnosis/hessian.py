"""Top Hessian eigenvalue by power iteration on Hessian-vector products.

Sharp minima have large curvature, which the paper invokes in section 1 (Fig. 2e) and Keskar et al.
(ICLR 2017) measure. The largest eigenvalue of the Hessian of the loss is the standard scalar for it.
The Hessian is never formed. Each iteration computes ``Hv = d/dtheta (g . v)`` with
``g = dL/dtheta`` built with ``create_graph=True`` (Pearlmutter 1994), the double-backward trick used
by PyHessian (Yao et al., 2020, ``hessian.eigenvalues``).

Power iteration converges to the eigenvalue of largest MAGNITUDE. Away from a minimum, a large
negative eigenvalue (a saddle direction) can outweigh the largest positive one, and then the result
is negative. The sign is kept and not folded into ``abs``. Convergence is linear with rate
``|lambda_2 / lambda_1|``. The Rayleigh quotient's error shrinks like its square. Iteration stops
when the relative change of the estimate falls below ``tol`` or after ``iters`` iterations.

Conventions as in ``landscape.py``: ``loss_fn(model)`` is a 0-dim loss on a fixed batch. The
computation runs in eval mode. Parameters, buffers and train/eval flags are restored afterwards,
and ``.grad`` fields are not touched (``torch.autograd.grad`` only).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from .landscape import LossFn, perturbation_guard, resolve_params


def _dot(xs, ys) -> torch.Tensor:
    return sum((x * y).sum() for x, y in zip(xs, ys))


def top_hessian_eigenvalue(model: nn.Module, loss_fn: LossFn, params: Iterable[torch.Tensor] | None = None,
                           iters: int = 20, tol: float = 1e-4, generator: torch.Generator | None = None
                           ) -> tuple[float, list[torch.Tensor], int]:
    """Eigenvalue of largest magnitude of the Hessian of ``loss_fn(model)`` w.r.t. ``params``.

    Starts from a unit Gaussian vector (from ``generator``, a CPU ``torch.Generator``, or the
    global RNG). Returns ``(eigenvalue, eigenvector, n_iters)``. The eigenvalue is the last
    Rayleigh quotient ``v . Hv`` with ``||v|| = 1``. The eigenvector is the normalised last ``Hv``,
    a list shaped like ``params`` with unit norm over all of them (its sign is arbitrary).
    ``n_iters`` is the number of Hessian-vector products computed. Parameters that the loss does
    not depend on, or depends on only linearly, get zero Hessian rows. If the whole Hessian is zero
    the result is ``(0.0, v, n)``.
    """
    if iters < 1:
        raise ValueError(f"iters must be >= 1, got {iters}")
    if tol < 0:
        raise ValueError(f"tol must be >= 0, got {tol}")
    params = resolve_params(model, params)
    with perturbation_guard(model, params), torch.enable_grad():
        loss = loss_fn(model)
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            raise ValueError("loss_fn(model) must return a tensor with one element")
        grads = torch.autograd.grad(loss.reshape(()), params, create_graph=True, allow_unused=True)
        live = [i for i, g in enumerate(grads) if g is not None and g.requires_grad]

        v = [torch.randn(p.shape, generator=generator, dtype=torch.float64 if p.dtype == torch.float64
                         else torch.float32).to(device=p.device, dtype=p.dtype) for p in params]
        norm = torch.sqrt(_dot(v, v))
        v = [x / norm for x in v]
        if not live:  # the loss is at most linear in params: H = 0
            return 0.0, [x.detach() for x in v], 0

        eigenvalue, n = None, 0
        for n in range(1, iters + 1):
            gv = _dot([grads[i] for i in live], [v[i] for i in live])
            hv_live = torch.autograd.grad(gv, [params[i] for i in live], retain_graph=True, allow_unused=True)
            hv = [torch.zeros_like(p) for p in params]
            for i, h in zip(live, hv_live):
                if h is not None:
                    hv[i] = h.detach()
            new = float(_dot(hv, v))
            hv_norm = float(torch.sqrt(_dot(hv, hv)))
            if hv_norm == 0.0:
                return 0.0, [x.detach() for x in v], n
            v = [h / hv_norm for h in hv]
            converged = eigenvalue is not None and abs(new - eigenvalue) <= tol * (abs(eigenvalue) + 1e-12)
            eigenvalue = new
            if converged:
                break
        return eigenvalue, [x.detach() for x in v], n
