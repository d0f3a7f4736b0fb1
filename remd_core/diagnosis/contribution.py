"""Each modality's contribution to a fused model's prediction: its Shapley value over the subsets of
modalities (issue 25, item 3).

The Shapley value (Shapley 1953, "A value for n-person games"; in the form Lundberg & Lee, NeurIPS
2017, use for feature attributions) of player ``m`` in a game ``v`` over ``K`` players is

    phi_m = sum over S not containing m of  |S|! (K - |S| - 1)! / K!  (v(S u {m}) - v(S))

(``shapley_weight``, ``shapley_values``), and the values add up to the whole game's gain,
``sum_m phi_m = v(all) - v(empty)`` (efficiency). BalanceMM (GeWu-Lab/BalanceBenchmark,
``balancemm/evaluation/modalitys.py``, ``Calculate_Shapley``) uses this for modality imbalance: the
players are the modalities, ``v(S)`` the fused output's accuracy on a split with only the modalities
of ``S`` (the others passed as zero tensors: ``limit_modalitys``, ``padding`` in its
``BaseClassifierModel``), and the weights above (earlier versions summed the marginal contributions
without them).

Here, for regression:

- ``v(S)`` (``coalition_value``) is the R^2 of the fused prediction on the split, in label units,
  with only the modalities of ``S`` present: every other modality of the model is made absent exactly
  as the missing-modality protocol makes one absent (``data.missing``): its tensor zero-filled and its
  column of the ``present`` mask set False, after which ``data.transforms.prepare_inputs`` zero-fills
  it after normalisation too (``subset_batch``). R^2 rather than the negative MSE: on one split
  ``R^2 = 1 - MSE / Var(y)`` is an affine function of it, so the two give the same shares and values
  differing by the factor ``1 / Var(y)``, and in R^2 the values read as parts of the fused model's
  R^2 (they add up to it up to ``v(empty)``, which is close to 0).
- ``v(empty)``, and the prediction for any eye left with no modality (an eye whose own data lacks
  the modalities of ``S``), is the constant predictor at the training-label mean (the standardised
  target 0): the prediction of a regressor that sees nothing. Not the model's own output with every
  input zero-filled, because several models refuse an eye with no modality (SimMLM, RIMA and the
  evidential heads raise: ``models.regressor.ModalityEncoders.present_mask``), and the
  missing-modality protocol never makes one (its at-least-one rule), so that output is outside
  anything the models are trained or tested on. BalanceMM's per-sample version
  (``Calculate_Shapley_Sample``) likewise counts the empty coalition as knowing nothing (no sample
  correct). So ``v(empty) = R^2`` of the training mean on the split: ``-(mean_train - mean_split)^2 /
  Var(y_split)``, 0 or slightly below.
- ``share_m = phi_m / sum_k |phi_k|`` (``shares``): the part of the fused model's gain over the mean
  predictor each modality accounts for. When every ``phi_k >= 0`` this is ``phi_m / sum_k phi_k`` and
  the shares add up to 1; a modality that lowers R^2 gets a negative share. The absolute values in
  the denominator follow MM-SHAP (Parcalabescu & Frank, ACL 2023; Heidelberg-NLP/MM-SHAP
  ``mmshap/core.py``: a modality's share is the sum of the absolute Shapley values of its features over
  that of all features; here the numerator keeps its sign) and keep the shares within [-1, 1]: the plain
  ``phi_m / sum_k phi_k`` grows without bound when the modalities' values nearly cancel (early in
  training, ``phi = (0.118, -0.108)`` gives 11.3 and -10.3; here 0.52 and -0.48). NaN when every
  ``phi_k`` is 0.

Cost. Taken literally, ``2^K - 2`` forward passes over the split beyond the full one (``v(all)`` is the
split's usual prediction, ``v(empty)`` needs none): 2 for fundus + OCT, each as dear as the split's
prediction. But an absent modality is a zero-filled input, and a model's forward reads its modality
inputs only through its encoders: the subsets' predictions reuse the encoders' features of the full
pass (``recorded_features``, ``predict_subset_from_features``; the encoder of a zero-filled input runs
once, on one eye), so they cost the heads' passes only. ``fit`` records the features of its
validation prediction every epoch and logs the validation values (``training.loop``), and measures the
test values once at the end; ``benchmarks/bench_board.py`` measures the cost.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from math import factorial

import numpy as np
import torch

from ..data.transforms import PRESENT, prepare_inputs
from ..evaluation import metrics


def coalitions(modalities: Sequence[str]) -> list[frozenset[str]]:
    """Every subset of ``modalities``, the empty one first, by size and then in the given order."""
    names = tuple(modalities)
    return [frozenset(c) for r in range(len(names) + 1) for c in itertools.combinations(names, r)]


def shapley_weight(size: int, k: int) -> float:
    """The Shapley weight ``|S|! (K - |S| - 1)! / K!`` of a coalition of ``size`` players that does not
    hold the player being valued, in a game of ``k`` players (``0 <= size < k``)."""
    if not 0 <= size < k:
        raise ValueError(f"a coalition without the valued player has 0 to {k - 1} of {k} players, got {size}")
    return factorial(size) * factorial(k - size - 1) / factorial(k)


def shapley_values(values: Mapping[frozenset, float], modalities: Sequence[str]) -> dict[str, float]:
    """``phi_m = sum_{S not containing m} w(|S|, K) (v(S u {m}) - v(S))`` for every modality ``m``;
    ``values`` maps every subset of ``modalities`` (``coalitions``) to ``v``."""
    names, k = tuple(modalities), len(modalities)
    missing = [set(s) for s in coalitions(names) if s not in values]
    if missing:
        raise ValueError(f"the game needs v of every subset of {names}; missing: {missing}")
    return {m: sum(shapley_weight(len(s), k) * (values[s | {m}] - values[s])
                   for s in coalitions([n for n in names if n != m])) for m in names}


def shares(phi: Mapping[str, float]) -> dict[str, float]:
    """``phi_m / sum_k |phi_k|``: each modality's part of the gain, signed (see the module docstring);
    NaN for all when every value is 0."""
    total = float(sum(abs(v) for v in phi.values()))
    return {m: (v / total if total > 0 else float("nan")) for m, v in phi.items()}


def coalition_value(y, prediction) -> float:
    """``v(S)``: the R^2 of ``prediction`` (label units) against the labels ``y`` (``metrics.r2``)."""
    return metrics.r2(y, prediction)


def subset_batch(batch: dict, names: Sequence[str], keep: frozenset) -> dict:
    """A sample-format batch with only the modalities of ``keep`` present: each other modality of
    ``names`` (the data set's, in the order of the ``present`` mask) zero-filled and marked absent in
    ``present``, as ``data.missing`` does. A modality the batch lacks stays absent."""
    names = list(names)
    present = torch.as_tensor(batch.get(PRESENT, torch.ones(len(batch["y"]), len(names), dtype=torch.bool))).bool()
    kept = present & torch.tensor([n in keep for n in names], dtype=torch.bool)
    out = {**batch, PRESENT: kept}
    for j, m in enumerate(names):
        if m in batch and not bool(kept[:, j].all()):
            x = batch[m].clone()
            x[~kept[:, j]] = 0
            out[m] = x
    return out


def _rows(batch: dict, rows: torch.Tensor) -> dict:
    """The eyes ``rows`` (a bool mask) of a sample-format batch."""
    index = rows.nonzero().flatten()
    return {k: (v[rows] if torch.is_tensor(v) else [v[i] for i in index.tolist()]) for k, v in batch.items()}


def _subset_inputs(model, batch: dict, kinds: dict[str, str], keep: frozenset, device):
    """The model inputs of ``batch`` with only ``keep`` present, for the eyes left with at least one of
    the model's modalities (``seen``, a bool mask), and the batch after ``subset_batch``."""
    names = list(kinds)
    batch = subset_batch(batch, names, keep)
    seen = batch[PRESENT][:, [names.index(m) for m in model.modalities]].any(dim=1)
    part = batch if seen.all() else _rows(batch, seen)
    inputs = prepare_inputs(part, model.modalities, kinds, augment=False, device=device, dtype=model.dtype) \
        if seen.any() else None
    return inputs, seen, batch


@torch.no_grad()
def predict_subset(model, split, kinds: dict[str, str], label_mean: float, label_std: float, keep: frozenset,
                   batch_size: int = 64, device="cpu") -> np.ndarray:
    """The fused prediction (label units) on ``split`` with only the modalities of ``keep`` present
    (``subset_batch``), by a forward pass of the model, in evaluation mode; an eye left with none of
    the model's modalities gets the training mean (``label_mean``: see the module docstring)."""
    model.eval()
    out = []
    for batch in split.batches(batch_size):
        inputs, seen, _ = _subset_inputs(model, batch, kinds, keep, device)
        pred = torch.zeros(len(seen), dtype=torch.float64)
        if inputs is not None:
            pred[seen] = model(inputs)["fused"].double().cpu()
        out.append(pred)
    return (torch.cat(out) * label_std + label_mean).numpy()


@contextmanager
def recorded_features(model):
    """Inside the block, every ``model.encode`` call (each forward pass's encoders) appends its
    features, detached, to the list this yields; the model's outputs are unchanged."""
    if "encode" in vars(model):
        raise RuntimeError(f"{type(model).__name__}.encode is already overridden on this model")
    calls, encode = [], model.encode

    def recording(inputs):
        features = encode(inputs)
        calls.append({m: f.detach() for m, f in features.items()})
        return features

    object.__setattr__(model, "encode", recording)
    try:
        yield calls
    finally:
        del model.encode


@torch.no_grad()
def predict_subset_from_features(model, split, kinds: dict[str, str], label_mean: float, label_std: float,
                                 keep: frozenset, features: list[dict], batch_size: int = 64,
                                 device="cpu") -> np.ndarray:
    """``predict_subset`` without running the encoders again: ``features`` are the encoders' outputs of
    a pass over ``split.batches(batch_size)`` with every modality as the data has it
    (``recorded_features``). Every model's forward reads its modality inputs only through
    ``encode`` (``models.regressor.ModalityEncoders``; the other inputs it reads, such as ``present``,
    are the subset's), so the forward runs as in ``predict_subset`` with ``encode`` answering from
    ``features``: an eye's modality of ``keep`` keeps its recorded features, a modality the subset
    removes from an eye gets the encoder's output for a zero-filled input (computed once, on one
    eye: in evaluation mode each eye's output depends on its own input only). Equal to
    ``predict_subset`` up to floating-point rounding (tested on every head); the cost is the heads' and
    the input preparation's, not the encoders'."""
    model.eval()
    names = list(kinds)
    own = [names.index(m) for m in model.modalities]
    zero, out = {}, []
    for i, batch in enumerate(split.batches(batch_size)):
        recorded = features[i]
        inputs, seen, sub = _subset_inputs(model, batch, kinds, keep, device)
        present = torch.as_tensor(batch[PRESENT]).bool()
        # the recorded pass saw every eye (``predict``) or the eyes with a modality (``predict_subset``)
        rows = seen if len(next(iter(recorded.values()))) == len(seen) else seen[present[:, own].any(dim=1)]
        pred = torch.zeros(len(seen), dtype=torch.float64)
        if inputs is not None:
            given = {}
            for m, j in zip(model.modalities, own):
                removed = (present[:, j] & ~sub[PRESENT][:, j])[seen]
                f = recorded[m][rows.to(recorded[m].device)]
                if removed.any():
                    if m not in zero:
                        blank = torch.zeros_like(inputs[m][:1])
                        zero[m] = model.encoders[m](blank).detach()
                    f = torch.where(removed.to(f.device).unsqueeze(-1), zero[m].to(f.dtype), f)
                given[m] = f
            object.__setattr__(model, "encode", lambda _inputs, given=given: given)
            try:
                pred[seen] = model(inputs)["fused"].double().cpu()
            finally:
                del model.encode
        out.append(pred)
    return (torch.cat(out) * label_std + label_mean).numpy()


@torch.no_grad()
def modality_contributions(model, split, kinds: dict[str, str], label_mean: float, label_std: float,
                           batch_size: int = 64, device="cpu", full: np.ndarray | None = None,
                           features: list[dict] | None = None, exact: bool = False) -> dict[str, float]:
    """Each modality's Shapley value on ``split`` and its share (see the module docstring):
    ``{"shapley_<m>": phi_m, "share_<m>": share_m, "shapley_empty": v(empty)}`` for every modality of
    ``model``.

    ``full`` and ``features``: the model's usual prediction on ``split`` (label units) and its encoders'
    features of that pass (``recorded_features`` around ``predict`` with the same ``batch_size``), when
    the caller has them: then no encoder runs again. Without them one pass over ``split`` records both.
    The subsets' predictions come from those features (``predict_subset_from_features``); ``exact``
    runs a whole forward pass per subset instead (``predict_subset``, ``2^K - 2`` passes): the
    reference the fast path is tested against, and the path of a model without ``encode``. The global
    random states are left as they were (``torch.random.fork_rng``), so a training run that calls this
    draws what it would have drawn without it."""
    names, y = tuple(model.modalities), split.y.numpy()
    exact = exact or not hasattr(model, "encode")  # a model outside the contract: whole passes
    devices = [torch.device(device)] if torch.device(device).type == "cuda" else []
    values = {frozenset(): coalition_value(y, np.full(len(y), float(label_mean)))}
    with torch.random.fork_rng(devices=devices):
        if not exact and (full is None or features is None):
            with recorded_features(model) as features:
                full = predict_subset(model, split, kinds, label_mean, label_std, frozenset(names), batch_size, device)
        for s in coalitions(names)[1:]:
            if len(s) == len(names) and full is not None:
                pred = full
            elif exact:
                pred = predict_subset(model, split, kinds, label_mean, label_std, s, batch_size, device)
            else:
                pred = predict_subset_from_features(model, split, kinds, label_mean, label_std, s, features,
                                                    batch_size, device)
            values[s] = coalition_value(y, pred)
    phi = shapley_values(values, names)
    return {**{f"shapley_{m}": v for m, v in phi.items()}, **{f"share_{m}": v for m, v in shares(phi).items()},
            "shapley_empty": values[frozenset()]}


def contribution_curves(runs: Mapping[str, object]) -> "pd.DataFrame":
    """The validation contributions over training of fused runs (``{name: FitResult}``), one row per
    (run, epoch, modality): ``run, epoch, modality, shapley, share``, from the ``shapley_<m>`` and
    ``share_<m>`` columns ``fit`` adds to ``FitResult.epochs``. A run without them is an error naming it."""
    import pandas as pd

    frames = []
    for name, result in runs.items():
        epochs = result.epochs
        modalities = [c.removeprefix("shapley_") for c in epochs if c.startswith("shapley_") and c != "shapley_empty"]
        if not modalities:
            raise ValueError(f"run {name!r} has no modality contributions per epoch (a single-modality model, or "
                             "fit(contributions=False))")
        for m in modalities:
            frames.append(pd.DataFrame({"run": name, "epoch": epochs["epoch"], "modality": m,
                                        "shapley": epochs[f"shapley_{m}"], "share": epochs[f"share_{m}"]}))
    return pd.concat(frames, ignore_index=True)


def contribution_table(runs: Mapping[str, object], split: str = "test") -> "pd.DataFrame":
    """Each fused run's contributions on ``split`` at its selected epoch (``FitResult.contributions``),
    one row per (run, modality): ``shapley``, ``share``, and beside them the run's R^2 on the split and
    ``v(empty)`` (the training mean's R^2), whose difference the values add up to."""
    import pandas as pd

    rows = []
    for name, result in runs.items():
        values = result.contributions.get(split)
        if not values:
            raise ValueError(f"run {name!r} has no modality contributions on the {split} split")
        for key in values:
            if key.startswith("shapley_") and key != "shapley_empty":
                m = key.removeprefix("shapley_")
                rows.append({"run": name, "modality": m, "shapley": values[key], "share": values[f"share_{m}"],
                             f"{split}_r2": result.metrics[split]["r2"], "r2_of_mean": values["shapley_empty"]})
    return pd.DataFrame(rows).set_index(["run", "modality"])
