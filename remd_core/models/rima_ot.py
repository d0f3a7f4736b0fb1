"""The optimal-transport pieces of RIMA (Yu et al., "Robust Incomplete-Modality Alignment for
Ophthalmic Disease Grading and Diagnosis via Labeled Optimal Transport", MICCAI 2025,
arXiv 2507.04999; seeds 002 and 003), as pure functions on detached features, built on POT.

- ``labelled_gw_coupling``: the class-wise alignment's coupling, an entropic Gromov-Wasserstein
  coupling between two batches whose mass never crosses labels.
- ``sample_partners``: one partner per row of a coupling, drawn with probability proportional to
  the row (the cross-modal MLPs are trained toward the drawn partners).
- ``feature_coupling`` and ``projection_from_coupling``: the feature-wise alignment, a coupling
  between the OCT features and the fundus features, used as a linear map of OCT features into the
  fundus feature space.

What the official code does (Qinkaiyu/RIMA, read at commit 6d9191e: ``baseline_models_fusion.py``,
``main.py``, the vendored ``perturbot/perturbot/match/ott_egwl.py`` and ``fot.py``, and its
modified ott-jax under ``ott/src/ott``):

- ``get_coupling_egw_labels_ott`` builds two point clouds (squared Euclidean intra-domain costs,
  each divided by its maximum: ``scale_cost="max_cost"``) and solves ott's entropic
  Gromov-Wasserstein (``epsilon=5e-3`` absolute on the linearised cost, at most 2000 outer and
  2000 Sinkhorn iterations, uniform marginals) on the WHOLE batch. The modification to ott adds,
  at every linearisation after the first, ``1 / block_diag_mat - 1`` to the linear cost: ``+inf``
  where the labels differ, so each Sinkhorn step puts exactly zero mass across labels. The first
  linearisation (around the product coupling ``a b^T``) is not masked. The quadratic term keeps
  every pair of samples, including pairs from different labels: the labels constrain the support
  of the coupling, they do not split the problem. (The modified "marginal dependent cost" sums
  ``C^2 p`` once per label over the full matrix, because ``PointCloud.apply_cost`` drops the
  ``sub_idx`` argument; it is a row-plus-column term, which does not change a balanced Sinkhorn
  solution.) Outer loop: stops when the regularised GW cost changes by less than 1e-3
  (relative); Sinkhorn: ott's default threshold 1e-3 on the marginal error.
- Partners: ``T[T.sum(-1) == 0] = 1e-8`` (an all-zero row becomes uniform), then
  ``torch.multinomial`` of one index per row.
- ``get_coupling_fot`` (called "FOT" there) takes the labelled sample coupling ``Ts`` as GIVEN and
  solves only the feature coupling ``Tv``: cost ``M[k, l] = sum_ij Ts_ij (X_ik - Y_jl)^2`` (through
  the COOT factorisation of Redko et al. 2020), divided by its maximum, one entropic Sinkhorn with
  ``epsilon=5e-3`` and uniform feature marginals. Its loop is COOT's block-coordinate descent with
  the sample step removed, so with ``Ts`` fixed the second pass recomputes the same ``Tv`` and it
  stops; there is no alternation. Its sample weights are swapped (``w1 = Ts.sum(axis=0)``, the
  column marginal, weights the rows of ``X``), harmless there because both marginals are uniform
  over equal batches. A ``FloatingPointError`` returns ``(-1, -1)``, which crashes the caller.
- In training the model recomputes both couplings on every batch, inside ``forward``; the feature
  coupling of a training batch is computed with the fundus->OCT sample coupling passed as if it were
  the OCT->fundus one (transposed). After every epoch ``main.py`` recomputes both couplings on the
  features of the whole training split, and evaluation uses that feature coupling.

Where this differs from the official solver, and why:

1. Solver: POT (``ot.gromov.init_matrix``, ``ot.gromov.tensor_product``,
   ``ot.bregman.sinkhorn_stabilized``) in NumPy float64 on the CPU instead of ott-jax. The outer
   loop is the same mirror-descent fixed point as ott's (Peyre, Cuturi and Solomon, ICML 2016,
   Prop. 2: a Sinkhorn solve of the cost ``L(C1, C2) x T`` at every step, ``epsilon`` absolute).
   POT's own ``ot.gromov.entropic_gromov_wasserstein`` is not used because it has no way to
   forbid entries and its projected-gradient step uses twice that cost (in effect ``epsilon / 2``
   relative to ott); the loop here is a dozen lines over POT's primitives.
2. The mask is exact: cross-label entries of the linear cost are ``+inf`` (as official), so the
   stabilised Sinkhorn's kernel is exactly 0 there and the coupling has exactly zero mass across
   labels. It is applied from the first step, which starts from the within-label product coupling
   (the feasible analogue of ott's ``a b^T``). Per-label independent solves would NOT be exact:
   the GW objective couples the labels through the cross-label distances (see above).
3. Stopping: the outer loop stops when no entry of the coupling moves by more than ``tol``
   (1e-6) and each Sinkhorn solve when the L2 error of its column marginal is at most
   ``sinkhorn_tol`` (1e-6) or after ``sinkhorn_max_iter`` (2000) iterations, warm-started from the
   previous step's potentials. Row marginals are then exact to rounding (Sinkhorn ends on the row
   update); column marginals are within 1e-5 (worst 4e-6 measured over 80 random batches of 8 and
   16 eyes with 128 features; the near-degenerate batches, where Sinkhorn stops at its cap, set
   that worst case). ott's defaults, which the official keeps, are 1e-3 (relative change of the GW
   cost) and 1e-3 (marginal error). Tightening both to 1e-7 costs 2-3x the time for changes of
   about 3e-6 in the coupling.
4. Labels whose shares differ between the two batches make uniform marginals infeasible: that is
   a ``ValueError`` here (in the official code it cannot happen, both batches being the same eyes).
5. Feature coupling: the same cost and scaling as the official, with the correct sample marginals;
   with ``sample_coupling=None`` it runs the real COOT block-coordinate descent (both couplings
   alternate, each by an entropic Sinkhorn on its max-scaled cost), which the official never runs.
   POT's ``ot.coot.co_optimal_transport`` is not used: it cannot hold the sample coupling fixed
   (the official mode) and applies ``epsilon`` to the unscaled costs.
6. The projection (``projection_from_coupling``) normalises the coupling's columns: each fundus
   feature is a convex combination of OCT features, so the projected token lives on the scale of
   the features. The official multiplies by the raw coupling (entries about ``1 / (D_oct D_fundus)``),
   which shrinks the projected OCT token by the factor ``D_fundus`` (2048 there). With uniform
   feature marginals the columns-to-one matrix is ``D_fundus`` times the coupling and its rows
   sum to ``D_fundus / D_oct`` (1 when the two encoders have the same width, as at the cpu
   profile, where it is also the row-normalised matrix).
7. ``FloatingPointError`` is never swallowed; the sample coupling keeps its orientation.
"""

from __future__ import annotations

import numpy as np
import ot
import torch

EPSILON = 5e-3
"""Entropic regularisation of every coupling (official ``eps=5e-3``, absolute on max-scaled costs)."""
MAX_ITER = 2000
"""Outer iterations of the GW loop and iterations of each Sinkhorn solve (official 2000 and 2000)."""
ZERO_ROW_FLOOR = 1e-8
"""An all-zero coupling row is set to this value everywhere before sampling (official)."""


def as_numpy(x) -> np.ndarray:
    """float64 NumPy copy of a tensor (detached, on the CPU) or an array."""
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float64).numpy()
    return np.array(x, dtype=np.float64)


def intra_domain_cost(x: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances between the rows of ``x [N, D]``, divided by their maximum
    (ott's ``PointCloud(x, x, scale_cost="max_cost")``, the official geometry); all zeros when every
    row is the same point."""
    c = ot.dist(x, x, metric="sqeuclidean")
    c = np.maximum((c + c.T) / 2, 0.0)
    np.fill_diagonal(c, 0.0)
    top = c.max()
    return c / top if top > 0 else c


def _sinkhorn(p, q, cost, epsilon, max_iter, tol, warmstart=None):
    """Entropic OT plan, its dual potentials (for a warm start) and the iterations used.
    POT's stabilised Sinkhorn keeps ``+inf`` entries of ``cost`` at exactly zero mass."""
    plan, log = ot.bregman.sinkhorn_stabilized(p, q, cost, epsilon, numItermax=max_iter, stopThr=tol,
                                               warmstart=warmstart, log=True, warn=False, print_period=10)
    if not np.isfinite(plan).all():
        raise FloatingPointError("Sinkhorn produced a non-finite coupling")
    return plan, log["warmstart"], int(log["n_iter"]) + 1


def _labels(labels, n: int, name: str) -> np.ndarray:
    out = as_numpy(labels) if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if out.shape != (n,):
        raise ValueError(f"{name} must hold one label per row ({n}), got shape {out.shape}")
    return out


def labelled_gw_coupling(x_a, x_b, labels_a, labels_b, epsilon: float = EPSILON, max_iter: int = MAX_ITER,
                         tol: float = 1e-6, sinkhorn_max_iter: int = MAX_ITER, sinkhorn_tol: float = 1e-6,
                         log: bool = False):
    """Entropic Gromov-Wasserstein coupling ``[B_a, B_b]`` between the rows of ``x_a [B_a, D_a]`` and
    ``x_b [B_b, D_b]`` (features of two modalities: only distances WITHIN each batch are compared, so
    ``D_a`` and ``D_b`` may differ), with uniform marginals and no mass between rows of different
    labels (official ``get_coupling_egw_labels_ott``; see the module docstring for the solver and
    where it differs). Inputs are detached (tensors or arrays); returns a float64 NumPy array, with
    ``log=True`` also a dict (``n_iter``, ``converged``, ``sinkhorn_iters``, ``gw_cost``).

    Every label must have the same share of rows in both batches (uniform marginals are otherwise
    infeasible); ``ValueError`` names the labels that do not."""
    if not epsilon > 0:
        raise ValueError(f"epsilon must be positive, got {epsilon!r}")
    if int(max_iter) < 1 or int(sinkhorn_max_iter) < 1:
        raise ValueError("max_iter and sinkhorn_max_iter must be at least 1")
    xa, xb = as_numpy(x_a), as_numpy(x_b)
    if xa.ndim != 2 or xb.ndim != 2 or not len(xa) or not len(xb):
        raise ValueError(f"x_a and x_b must be non-empty [B, D] batches, got {xa.shape} and {xb.shape}")
    if not (np.isfinite(xa).all() and np.isfinite(xb).all()):
        raise ValueError("labelled_gw_coupling: the features hold non-finite values")
    la, lb = _labels(labels_a, len(xa), "labels_a"), _labels(labels_b, len(xb), "labels_b")
    na, nb = len(xa), len(xb)
    classes = np.union1d(la, lb)
    count_a = np.array([(la == c).sum() for c in classes])
    count_b = np.array([(lb == c).sum() for c in classes])
    bad = classes[count_a * nb != count_b * na]
    if len(bad):
        raise ValueError(f"labelled_gw_coupling: labels {bad.tolist()} have different shares in the two batches "
                         f"({dict(zip(classes.tolist(), count_a.tolist()))} of {na} vs "
                         f"{dict(zip(classes.tolist(), count_b.tolist()))} of {nb}): no coupling with uniform "
                         f"marginals keeps mass within labels")
    p, q = np.full(na, 1.0 / na), np.full(nb, 1.0 / nb)
    same = la[:, None] == lb[None, :]
    forbidden = np.where(same, 0.0, np.inf)
    share = {c: k / na for c, k in zip(classes.tolist(), count_a.tolist())}
    coupling = np.where(same, np.outer(p, q), 0.0) / np.array([share[c] for c in la.tolist()])[:, None]
    c1, c2 = intra_domain_cost(xa), intra_domain_cost(xb)
    const_c, h_c1, h_c2 = ot.gromov.init_matrix(c1, c2, p, q, loss_fun="square_loss")
    warm, inner, converged, it = None, [], False, 0
    for it in range(1, int(max_iter) + 1):
        linear = ot.gromov.tensor_product(const_c, h_c1, h_c2, coupling)
        new, warm, n = _sinkhorn(p, q, linear + forbidden, epsilon, int(sinkhorn_max_iter), sinkhorn_tol, warm)
        inner.append(n)
        change = np.abs(new - coupling).max()
        coupling = new
        if change <= tol:
            converged = True
            break
    if not log:
        return coupling
    return coupling, {"n_iter": it, "converged": converged, "sinkhorn_iters": inner,
                      "gw_cost": float(ot.gromov.gwloss(const_c, h_c1, h_c2, coupling))}


def sample_partners(coupling, generator: torch.Generator | None = None) -> torch.Tensor:
    """One column index per row of ``coupling [B_a, B_b]`` (array or tensor, no gradient), drawn with
    probability proportional to the row (``torch.multinomial``, as official). An all-zero row is
    first set to ``ZERO_ROW_FLOOR`` everywhere (official), i.e. its partner is uniform over the
    columns; a zero entry of a non-zero row is never drawn. Returns int64 ``[B_a]`` on the CPU."""
    weights = torch.as_tensor(as_numpy(coupling))
    if weights.dim() != 2 or weights.shape[1] == 0:
        raise ValueError(f"coupling must be [B_a, B_b] with B_b > 0, got {tuple(weights.shape)}")
    if not torch.isfinite(weights).all() or (weights < 0).any():
        raise ValueError("coupling must be finite and non-negative")
    weights[weights.sum(dim=1) == 0] = ZERO_ROW_FLOOR
    return torch.multinomial(weights, 1, generator=generator).squeeze(1)


def _cross_cost(x: np.ndarray, y: np.ndarray, coupling: np.ndarray) -> np.ndarray:
    """``M[k, l] = sum_ij coupling_ij (x_ik - y_jl)^2`` for ``x [n, d]``, ``y [m, e]``, ``coupling [n, m]``
    (COOT's cost of one coupling given the other, with the coupling's own marginals)."""
    return ((coupling.sum(1) @ x ** 2)[:, None] + (coupling.sum(0) @ y ** 2)[None, :]
            - 2.0 * x.T @ coupling @ y)


def _max_scaled(cost: np.ndarray) -> np.ndarray:
    cost = np.maximum(cost, 0.0)        # exactly >= 0 in exact arithmetic; rounding may dip below
    top = cost.max()
    return cost / top if top > 0 else cost


def feature_coupling(x_oct, x_fundus, sample_coupling=None, epsilon: float = EPSILON,
                     sinkhorn_max_iter: int = MAX_ITER, sinkhorn_tol: float = 1e-6, bcd_max_iter: int = 100,
                     tol: float = 1e-7, log: bool = False):
    """The feature-wise coupling ``[D_oct, D_fundus]`` between the columns of ``x_oct [N, D_oct]`` and
    ``x_fundus [M, D_fundus]`` (uniform feature marginals, total mass 1; float64 NumPy).

    ``sample_coupling [N, M]`` given (the official mode, what the model uses): it is held fixed (the
    labelled GW coupling of the same eyes) and the feature coupling is one entropic Sinkhorn on the
    max-scaled cost ``sum_ij Ts_ij (x_oct_ik - x_fundus_jl)^2`` (official ``get_coupling_fot``).
    ``sample_coupling=None``: COOT (Redko et al., NeurIPS 2020) by block-coordinate descent, the
    feature step and the sample step (uniform sample marginals) alternating from the product
    couplings until neither moves by more than ``tol`` (at most ``bcd_max_iter`` rounds). ``log=True``
    also returns a dict (``n_iter``, ``sample_coupling``, ``sinkhorn_iters``)."""
    if not epsilon > 0:
        raise ValueError(f"epsilon must be positive, got {epsilon!r}")
    xo, xf = as_numpy(x_oct), as_numpy(x_fundus)
    if xo.ndim != 2 or xf.ndim != 2 or not xo.size or not xf.size:
        raise ValueError(f"x_oct and x_fundus must be non-empty [N, D] batches, got {xo.shape} and {xf.shape}")
    v_oct, v_fundus = np.full(xo.shape[1], 1.0 / xo.shape[1]), np.full(xf.shape[1], 1.0 / xf.shape[1])
    if int(bcd_max_iter) < 1:
        raise ValueError("bcd_max_iter must be at least 1")
    if sample_coupling is not None:
        ts = as_numpy(sample_coupling)
        if ts.shape != (len(xo), len(xf)) or (ts < 0).any() or not ts.sum() > 0:
            raise ValueError(f"sample_coupling must be a non-negative [N, M] = {(len(xo), len(xf))} coupling, "
                             f"got shape {ts.shape}")
        ts = ts / ts.sum()
        tv, _, n = _sinkhorn(v_oct, v_fundus, _max_scaled(_cross_cost(xo, xf, ts)), epsilon,
                             int(sinkhorn_max_iter), sinkhorn_tol)
        inner, it = [n], 1
    else:
        w_oct, w_fundus = np.full(len(xo), 1.0 / len(xo)), np.full(len(xf), 1.0 / len(xf))
        ts = np.outer(w_oct, w_fundus)
        tv, warm_v, warm_s, inner = np.outer(v_oct, v_fundus), None, None, []
        for it in range(1, int(bcd_max_iter) + 1):
            new_v, warm_v, n = _sinkhorn(v_oct, v_fundus, _max_scaled(_cross_cost(xo, xf, ts)), epsilon,
                                         int(sinkhorn_max_iter), sinkhorn_tol, warm_v)
            new_s, warm_s, m = _sinkhorn(w_oct, w_fundus, _max_scaled(_cross_cost(xo.T, xf.T, new_v)), epsilon,
                                         int(sinkhorn_max_iter), sinkhorn_tol, warm_s)
            inner += [n, m]
            change = max(np.abs(new_v - tv).max(), np.abs(new_s - ts).max())
            tv, ts = new_v, new_s
            if change <= tol:
                break
    if not log:
        return tv
    return tv, {"n_iter": it, "sample_coupling": ts, "sinkhorn_iters": inner}


def projection_from_coupling(coupling) -> np.ndarray:
    """The linear map ``[D_oct, D_fundus]`` of OCT features into the fundus feature space
    (``x_oct @ P``): the feature coupling with each column divided by its sum, so each fundus feature
    is a convex combination of OCT features (module docstring, difference 6). A zero column maps to
    zero."""
    c = as_numpy(coupling)
    if c.ndim != 2 or (c < 0).any():
        raise ValueError(f"coupling must be a non-negative [D_oct, D_fundus] matrix, got shape {c.shape}")
    total = c.sum(axis=0, keepdims=True)
    return np.divide(c, total, out=np.zeros_like(c), where=total > 0)
