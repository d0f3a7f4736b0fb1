"""Pure math of Sharpness-aware Gradient Modulation (SGM), Re-M3Dr stage 2.

Everything here is a stateless function over tensors or lists of per-parameter tensors, so the
tests can check it against the paper's equations directly; the strategy classes that hold the
sliding window and call these functions live elsewhere in ``remd_core.optim``.

No function here synchronises with the device: no ``.item()``, no ``float(tensor)``, no Python
``if`` on a device value (branches are ``torch.where``). Results are 0-dim tensors on the device of
the inputs. Only ``modulation_gamma`` returns a Python float, and only when it is given one.

Source: Re-M3Dr paper (seed 001), section 4.2 "Sharpness-aware Gradient Modulation". The paper
does not number the SGM equations; they are named here by what they define:

- (P) perturbation  ``Delta_t = eps * g / (||g|| + varepsilon)``, g = grad of the total loss of
  Eq. (1), ONE global norm over all parameters (as in SAM): ``sharpness_score``.
- (S) sharpness score  ``s_t = L(theta_t + Delta_t) - L(theta_t - Delta_t)``: ``sharpness_score``
  with ``mode="paper"`` (the default).
- (G) modulation factor  ``gamma_t = clip(gamma_base * s_t / median(W), gamma_min, gamma_max)``,
  W a sliding window of recent scores: ``modulation_gamma``.
- (C) conflict test  ``cos beta = <g_mm, g_uni> / (||g_mm|| ||g_uni||)``, ``g_uni = sum_k g^(k)``;
  MinNorm weights if ``cos beta < 0``, else (0.5, 0.5): ``combine_gradients`` with ``min_norm_2``.
- (I) Pareto-integrated gradient  ``g_i = 2 a_mm g_i^mm + 2 a_uni g_i^uni`` per shared tensor i.
- (R) rescale  ``grad_i <- gamma_t * ||g_i^base|| / (||g_i|| + epsilon) * g_i``: ``combine_gradients``.

Where we differ from the paper, or from the official MMPareto code (GeWu-Lab/MMPareto_ICML2024,
``code/MMPareto.py`` and ``code/min_norm_solvers.py``), and why
------------------------------------------------------------------------------------------------
- Score (S) follows the gradient norm, not curvature. By Taylor expansion around theta with
  ``d = Delta``: ``L(theta+d) - L(theta-d) = 2 d.g + O(eps^3) = 2 eps ||g|| + O(eps^3)`` (the
  second-order terms cancel). We implement (S) as the default and offer
  ``mode="curvature"``: ``L(theta+d) + L(theta-d) - 2 L(theta) = d^T H d + O(eps^4)
  = eps^2 d^T H d / ||d||^2``, a directional curvature along g, so the workbench can show the
  difference. The paper says "a few steps" of ascent/descent but defines one; we take one.
- MinNorm (C): MMPareto's solver clips the weight of g1 to [0.001, 0.999] (its degenerate branches
  return 0.999 / 0.001); the paper only says "a standard MinNorm problem". Our default clip is the
  exact simplex [0, 1]; ``clip=(0.001, 0.999)`` reproduces MMPareto. For ``g1 == g2`` (every weight
  is optimal) MMPareto returns 0.999; we return the symmetric 0.5.
- Problem structure: MMPareto solves one two-objective problem PER ENCODER (multimodal loss vs that
  modality's unimodal loss). The paper (and this code) solves ONE problem over all shared
  parameters with ``g_uni = sum_k g^(k)``; the caller chooses the parameter list, so a per-encoder
  variant is a loop over calls.
- Rescale (R): MMPareto scales a tensor UP to the baseline norm only when ``||base|| / ||new|| > 1``
  (never down) and then multiplies by a FIXED gamma = 1.5; a zero ``new`` gives inf * 0 = NaN
  there. The paper, and this code, rescale EVERY tensor to exactly the baseline norm times gamma_t,
  with the stabiliser added to the denominator ``||g_i|| + epsilon`` (not inside a max); a zero
  combined tensor therefore stays zero instead of becoming NaN. With ``epsilon = 1e-8`` the output
  norm is ``gamma ||base|| * ||g_i|| / (||g_i|| + 1e-8)``, i.e. exact unless ``||g_i||`` is itself
  near 1e-8.
- Norms and dot products are accumulated in at least float32 (bf16/fp16 gradients are upcast for
  the reductions only); the outputs keep the gradients' dtype.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

SCORE_MODES = ("paper", "curvature")

_TINY = 1e-12
"""Default ``varepsilon`` in (P) and the floor of the cosine denominator in (C). Only guards 0/0:
the paper calls it a small constant and gives no value."""


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------


def _acc_dtype(tensors: Sequence[Tensor]) -> torch.dtype:
    """Accumulation dtype for reductions: the widest floating dtype present, at least float32."""
    dtype = torch.float32
    for t in tensors:
        if t.is_floating_point():
            dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def _global_norm(norms: Sequence[Tensor]) -> Tensor:
    """``sqrt(sum n_i^2)`` of per-tensor norms (0-dim tensors), on the first tensor's device."""
    dev = norms[0].device
    return torch.linalg.vector_norm(torch.stack([n.to(dev) for n in norms]))


def per_tensor_norms(tensors: Sequence[Tensor | None]) -> list[Tensor | None]:
    """L2 norm of each tensor with one fused ``torch._foreach_norm`` call.

    Returns a list of 0-dim tensors (on each tensor's device, in float32 or wider); a ``None``
    entry gives ``None`` at the same position.
    """
    present = [i for i, t in enumerate(tensors) if t is not None]
    out: list[Tensor | None] = [None] * len(tensors)
    if not present:
        return out
    ts = [tensors[i] for i in present]
    norms = torch._foreach_norm(ts, 2, dtype=_acc_dtype(ts))
    for i, n in zip(present, norms):
        out[i] = n
    return out


def dot_and_norms(a_list: Sequence[Tensor], b_list: Sequence[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """Global ``(<a, b>, ||a||, ||b||)`` of two lists of same-shape tensors, as if each list were
    flattened and concatenated, without concatenating (no copy of the gradients).

    Norms use ``torch._foreach_norm``; the dot product is one ``torch.dot`` per tensor pair (no
    fused foreach dot exists), stacked and summed on the device. Reductions run in float32 or
    wider. Returns 0-dim tensors on the device of the first tensor.
    """
    if len(a_list) != len(b_list):
        raise ValueError(f"lists differ in length: {len(a_list)} vs {len(b_list)}")
    if not a_list:
        raise ValueError("empty lists")
    dtype = _acc_dtype(list(a_list) + list(b_list))
    dev = a_list[0].device
    dots = []
    for a, b in zip(a_list, b_list):
        if a.shape != b.shape:
            raise ValueError(f"shape mismatch: {tuple(a.shape)} vs {tuple(b.shape)}")
        dots.append(torch.dot(a.reshape(-1).to(dtype), b.reshape(-1).to(dtype)).to(dev))
    dot = torch.stack(dots).sum()
    norm_a = _global_norm(torch._foreach_norm(list(a_list), 2, dtype=dtype))
    norm_b = _global_norm(torch._foreach_norm(list(b_list), 2, dtype=dtype))
    return dot, norm_a, norm_b


def _check_clip(clip: tuple[float, float]) -> tuple[float, float]:
    lo, hi = float(clip[0]), float(clip[1])
    if not (0.0 <= lo <= hi <= 1.0):
        raise ValueError(f"clip must satisfy 0 <= lo <= hi <= 1, got {clip}")
    return lo, hi


def min_norm_weight(numer: Tensor, denom: Tensor, clip: tuple[float, float]) -> Tensor:
    """Weight of g1: ``numer / denom`` clipped; 0.5 (clipped) where ``denom <= 0`` (g1 == g2)."""
    lo, hi = clip
    ok = denom > 0
    a = torch.where(ok, numer / torch.where(ok, denom, torch.ones_like(denom)), torch.full_like(denom, 0.5))
    return a.clamp(lo, hi)


# --------------------------------------------------------------------------------------------------
# MinNorm
# --------------------------------------------------------------------------------------------------


def min_norm_2(g1: Tensor, g2: Tensor, clip: tuple[float, float] = (0.0, 1.0)) -> tuple[Tensor, Tensor]:
    """Two-objective MinNorm weights (Sener & Koltun 2018, closed form for two vectors).

    Minimises ``||a g1 + (1 - a) g2||`` over ``a`` in ``clip`` (the unit simplex by default):
    ``a = <g2, g2 - g1> / ||g1 - g2||^2``, clipped. Returns ``(a1, a2)`` with ``a2 = 1 - a1``, as
    0-dim tensors (float32 or wider) on the device of ``g1``; nothing is synchronised to the host.

    ``g1`` and ``g2`` are flattened; they must have the same number of elements. ``clip`` applies to
    ``a1``; ``a2 = 1 - a1``. Identical vectors (zero denominator: every ``a`` gives the same norm)
    give ``(0.5, 0.5)`` (clipped into ``clip``). MMPareto's official solver clips to
    ``[0.001, 0.999]``; ``clip=(0.001, 0.999)`` reproduces it (except for identical vectors, where
    it returns 0.999).
    """
    lo, hi = _check_clip(clip)
    if g1.numel() != g2.numel():
        raise ValueError(f"g1 has {g1.numel()} elements but g2 has {g2.numel()}")
    dtype = _acc_dtype([g1, g2])
    v1 = g1.reshape(-1).to(dtype)
    v2 = g2.reshape(-1).to(dtype)
    diff = v2 - v1
    numer = torch.dot(v2, diff)
    denom = torch.dot(diff, diff)  # ||g1 - g2||^2 computed directly: no cancellation when g1 ~ g2
    a1 = min_norm_weight(numer, denom, (lo, hi))
    return a1, 1.0 - a1


# --------------------------------------------------------------------------------------------------
# Sharpness probe
# --------------------------------------------------------------------------------------------------


def _as_scalar(value) -> Tensor:
    t = value if isinstance(value, Tensor) else torch.as_tensor(value)
    return t.detach().reshape(())  # raises unless exactly one element


def sharpness_score(
    loss_at: Callable[[], Tensor | float],
    params: Sequence[Tensor],
    grads: Sequence[Tensor | None],
    eps: float,
    mode: str = "paper",
    loss_now: Tensor | float | None = None,
    tiny: float = _TINY,
    both: bool = False,
) -> Tensor | dict[str, Tensor]:
    """Sharpness score of section 4.2 (eqs. P and S of the module docstring).

    ``Delta = eps * g / (||g|| + tiny)`` with ONE global norm over all tensors of ``grads``
    (``grads[j]`` belongs to ``params[j]``; a ``None`` gradient leaves that parameter unperturbed).

    - ``mode="paper"``: ``s = L(theta + Delta) - L(theta - Delta)``. By Taylor expansion
      ``s = 2 Delta.g + O(eps^3) ~ 2 eps ||g||``: the curvature terms cancel, so this score follows
      the gradient norm, not the sharpness. It can be negative when ``g`` is not the gradient of
      the probed loss at theta (a stale gradient, another batch, or a nonconvex third-order term).
    - ``mode="curvature"``: ``s = L(theta + Delta) + L(theta - Delta) - 2 L(theta)
      ~ Delta^T H Delta = eps^2 d^T H d / ||d||^2`` (directional curvature along g). ``L(theta)``
      is ``loss_now`` if given (it is usually known already), otherwise one more evaluation.

    ``loss_at()`` must evaluate the training loss (same batch, same mode) at the CURRENT values of
    ``params``; it is called under ``torch.no_grad()``, so no graph is built. Its result must have
    one element (tensor or float). Mind BatchNorm: in train mode every call updates the running
    statistics; evaluate in eval mode or freeze them (as SAM implementations do).

    Parameters are restored bit-identically afterwards (copies are saved and copied back, never
    add-then-subtract), also when ``loss_at`` raises. The perturbation uses ``torch._foreach_*``
    ops. Returns a detached 0-dim tensor; no host synchronisation. ``tiny`` is the paper's
    ``varepsilon``: with a zero gradient ``Delta = 0`` and both scores are exactly 0.

    ``both=True`` returns ``{"paper": ..., "curvature": ...}`` from the same two evaluations (the
    curvature score only when ``loss_now`` is given or ``mode="curvature"``), so one run can log
    the score it does not use at no extra cost.
    """
    if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps > 0):
        raise ValueError(f"eps must be a finite number > 0, got {eps!r}")
    if mode not in SCORE_MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {SCORE_MODES}")
    if not (tiny >= 0):
        raise ValueError(f"tiny must be >= 0, got {tiny!r}")
    params = list(params)
    grads = list(grads)
    if len(params) != len(grads):
        raise ValueError(f"{len(params)} params but {len(grads)} grads")
    pairs = [(p, g) for p, g in zip(params, grads) if g is not None]
    for p, g in pairs:
        if p.shape != g.shape:
            raise ValueError(f"grad shape {tuple(g.shape)} does not match param shape {tuple(p.shape)}")

    with torch.no_grad():
        if not pairs:  # nothing to perturb: Delta = 0, both scores are exactly 0
            zero = torch.zeros((), device=params[0].device if params else None)
            return {m: zero for m in SCORE_MODES} if both else zero
        ps = [p for p, _ in pairs]
        gs = [g for _, g in pairs]
        total = _global_norm(torch._foreach_norm(gs, 2, dtype=_acc_dtype(gs)))
        scale = eps / (total + tiny)
        deltas = [d.to(p.dtype) for d, p in zip(torch._foreach_mul(gs, scale), ps)]
        saved = [p.detach().clone() for p in ps]

        l_now = None
        if loss_now is not None:
            l_now = _as_scalar(loss_now)
        elif mode == "curvature":
            l_now = _as_scalar(loss_at())
        try:
            torch._foreach_add_(ps, deltas)
            l_plus = _as_scalar(loss_at())
            torch._foreach_copy_(ps, saved)
            torch._foreach_sub_(ps, deltas)
            l_minus = _as_scalar(loss_at())
        finally:
            torch._foreach_copy_(ps, saved)

        scores = {"paper": l_plus - l_minus}
        if l_now is not None:
            scores["curvature"] = l_plus + l_minus - 2.0 * l_now.to(l_plus.device)
        return scores if both else scores[mode]


# --------------------------------------------------------------------------------------------------
# Modulation factor
# --------------------------------------------------------------------------------------------------


def _check_gamma_hparams(gamma_base, gamma_min, gamma_max) -> None:
    if not (isinstance(gamma_base, (int, float)) and math.isfinite(gamma_base) and gamma_base > 0):
        raise ValueError(f"gamma_base must be a finite number > 0, got {gamma_base!r}")
    if not (gamma_min >= 0):
        raise ValueError(f"gamma_min must be >= 0, got {gamma_min!r}")
    if not (gamma_min <= gamma_max):
        raise ValueError(f"gamma_min must be <= gamma_max, got {gamma_min!r} > {gamma_max!r}")


def modulation_gamma(s_t, window, gamma_base: float, gamma_min: float, gamma_max: float):
    """``gamma_t = clip(gamma_base * s_t / median(window), gamma_min, gamma_max)`` (eq. G).

    ``window``: the recent scores, a sequence of floats or 0-dim tensors, or a 1-D tensor.
    Recommended convention: the window holds the PREVIOUS scores only (append ``s_t`` after this
    call), so that ``s_t`` is compared with the history it is meant to be "sharper than". The
    median of an even-length window is the mean of the two middle values (``statistics.median``;
    ``torch.quantile(w, 0.5)`` on the tensor path).

    Fallback to ``clip(gamma_base, gamma_min, gamma_max)`` when
    - the window is empty (first step);
    - the median is zero, negative or non-finite (a NaN anywhere in the window makes the median
      NaN): the ratio then has no meaning as "sharper than usual" (a negative median would also
      flip the sign of the ratio);
    - ``s_t`` is non-finite (a diverged probe carries no information about sharpness).

    A negative ``s_t`` with a positive median (the paper score goes negative when
    ``L(theta + Delta) < L(theta - Delta)``, e.g. with a stale gradient) gives a negative ratio and
    hence ``gamma_min`` through the clip; this is the formula's own behaviour and is kept.

    Kind in = kind out: a tensor ``s_t`` gives a 0-dim tensor on its device, computed with
    ``torch.where`` (no host synchronisation); a Python number gives a Python float.

    Raises ``ValueError`` when ``gamma_base <= 0`` (or non-finite), ``gamma_min < 0`` or
    ``gamma_min > gamma_max``. ``gamma_max = inf`` is allowed (no upper clip).
    """
    _check_gamma_hparams(gamma_base, gamma_min, gamma_max)
    fallback = min(max(float(gamma_base), float(gamma_min)), float(gamma_max))

    if isinstance(s_t, Tensor):
        s = s_t.detach().reshape(())
        dtype = s.dtype if s.is_floating_point() else torch.get_default_dtype()
        s = s.to(dtype)
        if isinstance(window, Tensor):
            w = window.detach().reshape(-1).to(device=s.device, dtype=dtype)
        elif len(window) and any(isinstance(v, Tensor) for v in window):
            w = torch.stack([torch.as_tensor(v, device=s.device).detach().reshape(()).to(dtype) for v in window])
        else:
            w = torch.as_tensor([float(v) for v in window], device=s.device, dtype=dtype)
        if w.numel() == 0:
            return torch.full((), fallback, dtype=dtype, device=s.device)
        med = torch.quantile(w, 0.5)
        ok = (med > 0) & torch.isfinite(med) & torch.isfinite(s)
        ratio = s / torch.where(ok, med, torch.ones_like(med))
        gamma = torch.where(ok, gamma_base * ratio, torch.full_like(s, fallback))
        return gamma.clamp(gamma_min, gamma_max)

    # Python-number path
    s = float(s_t)
    vals = [float(v) for v in (window.reshape(-1).tolist() if isinstance(window, Tensor) else window)]
    if not vals:
        return fallback
    if any(math.isnan(v) for v in vals):
        return fallback  # NaN median, as torch.quantile gives on the tensor path
    vals.sort()
    n = len(vals)
    med = vals[n // 2] if n % 2 else 0.5 * (vals[n // 2 - 1] + vals[n // 2])
    if not (math.isfinite(med) and med > 0 and math.isfinite(s)):
        return fallback
    return min(max(gamma_base * s / med, float(gamma_min)), float(gamma_max))


# --------------------------------------------------------------------------------------------------
# Gradient combination
# --------------------------------------------------------------------------------------------------


def combine_gradients(
    g_mm: Sequence[Tensor | None],
    g_uni: Sequence[Tensor | None],
    g_base: Sequence[Tensor | None],
    gamma,
    eps: float = 1e-8,
    clip: tuple[float, float] = (0.0, 1.0),
) -> tuple[list[Tensor | None], dict[str, Tensor]]:
    """Pareto-integrate and rescale per-tensor gradients of the shared parameters (eqs. C, I, R).

    Inputs are three lists over the same shared parameters: the multimodal-loss gradient, the summed
    unimodal gradient ``g_uni = sum_k g^(k)``, and the baseline gradient of the total loss of
    Eq. (1) (``g_mm + sum_k alpha_k g^(k)``: no extra backward pass is needed for it). Entries of
    one position have the same shape; all tensors are on one device. ``gamma`` is gamma_t (float or
    0-dim tensor).

    1. ``cos = <g_mm, g_uni> / (||g_mm|| ||g_uni||)`` over the whole list (as if concatenated);
       0 when either is zero.
    2. ``(a_mm, a_uni) = min_norm_2(g_mm, g_uni, clip)`` if ``cos < 0`` else ``(0.5, 0.5)``, chosen
       with ``torch.where`` (no host synchronisation).
    3. ``g_i = 2 a_mm g_i^mm + 2 a_uni g_i^uni``.
    4. ``out_i = gamma * ||g_i^base|| / (||g_i|| + eps) * g_i`` (per tensor; a zero ``g_i`` stays
       zero, never NaN).

    ``None`` entries (a tensor no loss touched): a ``None`` in ``g_mm`` or ``g_uni`` counts as zeros
    when the other is present; a ``None`` ``g_base`` counts as norm 0 (output zeros); a position
    where both ``g_mm`` and ``g_uni`` are ``None`` is skipped and gives ``None`` (leave ``.grad``
    unset so the optimizer skips the parameter).

    Returns ``(grads, info)``: ``grads`` a new list (inputs are not modified) in the gradients'
    dtype; ``info`` a dict of detached 0-dim float tensors: ``cos``, ``a_mm``, ``a_uni``,
    ``norm_mm``, ``norm_uni``, ``norm_base`` (global norms of the inputs), ``norm_combined`` (global
    norm of the Pareto-integrated g before the rescale) and ``norm_out`` (after it).
    """
    if not (len(g_mm) == len(g_uni) == len(g_base)):
        raise ValueError(f"list lengths differ: {len(g_mm)}, {len(g_uni)}, {len(g_base)}")
    if not (isinstance(eps, (int, float)) and eps > 0):
        raise ValueError(f"eps must be > 0, got {eps!r}")
    if isinstance(gamma, (int, float)) and not (gamma >= 0):
        raise ValueError(f"gamma must be >= 0, got {gamma!r}")
    clip = _check_clip(clip)

    idx = [i for i in range(len(g_mm)) if g_mm[i] is not None or g_uni[i] is not None]
    out: list[Tensor | None] = [None] * len(g_mm)
    if not idx:
        z = torch.zeros(())
        keys = ("cos", "a_uni", "norm_mm", "norm_uni", "norm_base", "norm_combined", "norm_out")
        info = {k: z.clone() for k in keys}
        info["a_mm"], info["a_uni"] = torch.full((), 0.5), torch.full((), 0.5)
        return out, info

    mm, uni, base = [], [], []
    for i in idx:
        ref = g_mm[i] if g_mm[i] is not None else g_uni[i]
        a = g_mm[i] if g_mm[i] is not None else torch.zeros_like(ref)
        b = g_uni[i] if g_uni[i] is not None else torch.zeros_like(ref)
        c = g_base[i] if g_base[i] is not None else torch.zeros_like(ref)
        if not (a.shape == b.shape == c.shape):
            raise ValueError(
                f"shape mismatch at position {i}: {tuple(a.shape)}, {tuple(b.shape)}, {tuple(c.shape)}"
            )
        mm.append(a.detach())
        uni.append(b.detach())
        base.append(c.detach())

    with torch.no_grad():
        dtype = _acc_dtype(mm + uni + base)
        dev = mm[0].device
        # (C) global dot and norms, and the cosine
        dot, norm_mm, norm_uni = dot_and_norms(mm, uni)
        cos = dot / (norm_mm * norm_uni).clamp_min(_TINY)
        # MinNorm from the three dot products: ||mm - uni||^2 = v11 + v22 - 2 v12. In the branch
        # where it is used (cos < 0, so v12 < 0) there is no cancellation.
        v11, v22 = norm_mm.square(), norm_uni.square()
        a_min = min_norm_weight(v22 - dot, v11 + v22 - 2.0 * dot, clip)
        a_mm = torch.where(cos < 0, a_min, torch.full_like(a_min, 0.5))
        a_uni = 1.0 - a_mm

        # (I) g_i = 2 a_mm g_mm_i + 2 a_uni g_uni_i (fused multi-tensor ops)
        comb = torch._foreach_mul(mm, 2.0 * a_mm)
        torch._foreach_add_(comb, torch._foreach_mul(uni, 2.0 * a_uni))

        # (R) per-tensor rescale to gamma * ||g_base_i||
        n_comb = torch.stack([n.to(dev) for n in torch._foreach_norm(comb, 2, dtype=dtype)])
        n_base = torch.stack([n.to(dev) for n in torch._foreach_norm(base, 2, dtype=dtype)])
        gamma_t = gamma.detach().to(device=dev, dtype=dtype) if isinstance(gamma, Tensor) else gamma
        scales = gamma_t * n_base / (n_comb + eps)
        norm_combined = torch.linalg.vector_norm(n_comb)
        torch._foreach_mul_(comb, [s.to(t.device) for s, t in zip(scales.unbind(), comb)])
        norm_out = torch.linalg.vector_norm(scales * n_comb)

    for i, g in zip(idx, comb):
        out[i] = g
    info = {
        "cos": cos,
        "a_mm": a_mm,
        "a_uni": a_uni,
        "norm_mm": norm_mm,
        "norm_uni": norm_uni,
        "norm_base": torch.linalg.vector_norm(n_base),
        "norm_combined": norm_combined,
        "norm_out": norm_out,
    }
    return out, info
