"""The missing-modality study behind notebook ``05_missing_modalities`` (issue 13).

Each method (a recipe) is trained on the data as it is and on the data with modalities missing in
training (``data.missing.with_missing``, seeded), then evaluated on test sets with one modality
missing at each rate of ``TEST_RATES``, on every missing pattern, and on the "more is never worse"
principle that SimMLM's MoFe loss enforces: the share of test eyes whose error grows when a modality
is added (with both modalities against each one alone). Every trained cell's numbers are written to
``<folder>/<key>.json`` as soon as it finishes, and a rerun skips finished cells, so an interrupted
study loses no finished work (a finished cell of other settings is refused, not reused).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..data.format import MultimodalDataset, MultimodalSplit
from ..data.missing import PATTERNS, MissingConfig, missing_pattern, with_missing
from ..evaluation import metrics
from ..files import read_json, write_json
from ..paths import display_path
from ..training import TrainConfig, predict
from .recipes import run_recipe

TEST_RATES = (0.0, 0.3, 0.5, 0.7)
METHODS = ("naive-fusion", "naive-fusion-dropout", "re-m3dr", "eyemost", "simmlm", "rima")
"""Zero-filling baselines (naive fusion, the same with modality dropout, Re-M3Dr), EyeMoSt (fuses the
modalities an eye has by construction) and the two missing-modality systems of the source papers."""


def with_only(split: MultimodalSplit, keep: tuple[str, ...]) -> MultimodalSplit:
    """``split`` with every modality outside ``keep`` made absent (``present`` False, zeros)."""
    names = split.spec.modality_names
    unknown = sorted(set(keep) - set(names))
    if unknown or not keep:
        raise ValueError(f"keep must name at least one of {names}; got {keep}")
    present = split.present.clone()
    modalities = dict(split.modalities)
    for j, m in enumerate(names):
        if m not in keep:
            present[:, j] = False
            modalities[m] = torch.zeros_like(split.modalities[m])
    return dataclasses.replace(split, present=present, modalities=modalities)


def _errors(model, split, dataset, result) -> np.ndarray:
    pred = predict(model, split, dataset.spec.kinds, result.label_mean, result.label_std, device=_device(model))
    return pred - split.y.numpy()


def _device(model) -> torch.device:
    return next(model.parameters()).device


def rate_curves(result, dataset: MultimodalDataset, rates=TEST_RATES, seed: int = 0) -> list[dict]:
    """Test R^2 and MSE with each modality missing at each rate (the other one present where the
    data has it), and the realised rate."""
    rows = []
    for modality in dataset.spec.modality_names:
        for rate in rates:
            test = with_missing(dataset, MissingConfig(test={modality: rate}, seed=seed, val="none"))
            err = _errors(result.model, test.test, dataset, result)
            y = test.test.y.numpy()
            realised = test.notes["missing"]["splits"]["test"]["modalities"][modality]["realised"] if rate else 0.0
            rows.append({"missing": modality, "rate": rate, "realised": realised,
                         "r2": metrics.r2(y, y + err), "mse": float(np.mean(err ** 2))})
    return rows


def more_is_never_worse(result, dataset: MultimodalDataset) -> dict:
    """Per test eye that has every modality: the absolute error with all of them against with each one
    alone. Returns the share of (eye, single modality) pairs where adding the others made the error
    grow, the share of eyes where it grew for at least one, and the eyes counted."""
    test = dataset.test
    full = test.present.all(dim=1).numpy()
    err_all = np.abs(_errors(result.model, test, dataset, result))[full]
    worse = []
    for m in dataset.spec.modality_names:
        err_one = np.abs(_errors(result.model, with_only(test, (m,)), dataset, result))[full]
        worse.append(err_all > err_one)
    worse = np.stack(worse, axis=1)
    return {"violation_pairs": float(worse.mean()), "violation_eyes": float(worse.any(axis=1).mean()),
            "eyes": int(full.sum())}


def pattern_table(result, dataset: MultimodalDataset) -> list[dict]:
    """Test metrics per missing pattern of ``dataset``'s own test split (``metrics.per_pattern_report``)."""
    test = dataset.test
    err = _errors(result.model, test, dataset, result)
    y = test.y.numpy()
    table = metrics.per_pattern_report(y, y + err, missing_pattern(test.present, dataset.spec.modality_names))
    return table.reset_index().to_dict("records")


def router_weights(result, dataset: MultimodalDataset) -> pd.DataFrame | None:
    """SimMLM's mean router weight of each modality per MD region of the test eyes (None for a model
    without a router)."""
    from ..data.transforms import prepare_inputs

    model = result.model
    if not hasattr(model, "router"):
        return None
    test = dataset.test
    model.eval()
    with torch.no_grad():
        inputs = prepare_inputs(test.batch(torch.arange(len(test))), model.modalities, dataset.spec.kinds,
                                augment=False, device=_device(model), dtype=model.dtype)
        weights = model(inputs)["router"].double().cpu().numpy()
    regions = metrics.region_labels(dataset.train.y.numpy())
    frame = pd.DataFrame(weights, columns=list(model.modalities))
    frame["region"] = regions.assign(test.y.numpy())
    return frame.groupby("region", sort=False).mean()


def rima_coupling(result, dataset: MultimodalDataset, eyes: int = 16) -> dict:
    """RIMA's labelled coupling between the fundus and OCT features of the first ``eyes`` test eyes of
    a trained model (the picture of notebook 05), eyes sorted by glaucoma stage: ``coupling``
    ``[n, n]`` (fundus rows, OCT columns) and each eye's ``stage``."""
    from ..models.rima import rima_alignment_loss
    from ..data.transforms import prepare_inputs

    model, test = result.model, dataset.test
    order = torch.argsort(test.stage[:eyes], stable=True)
    batch = test.batch(order)
    model.eval()
    with torch.no_grad():
        inputs = prepare_inputs(batch, model.modalities, dataset.spec.kinds, augment=False, device=_device(model),
                                dtype=model.dtype)
        _, info = rima_alignment_loss(model, model(inputs), batch["y"].double(), torch.Generator().manual_seed(0),
                                      refresh_projection=False, details=True)
    return {"coupling": np.asarray(info["coupling"]).round(6).tolist(), "stage": [int(s) for s in info["stages"]]}


def run_cell(method: str, dataset: MultimodalDataset, base: TrainConfig, train_missing: float, seed: int,
             folder: Path, progress: bool = False, rates=TEST_RATES) -> dict:
    """Train ``method`` with ``train_missing`` (each modality missing at that rate in training and
    validation) at ``seed`` and evaluate it; the result is read from ``folder`` when already there."""
    key = f"{method}__train{train_missing:g}__seed{seed}"
    path = Path(folder) / f"{key}.json"
    settings = json.loads(json.dumps({"data": dataclasses.asdict(dataset.config), "train": dataclasses.asdict(base),
                                      "rates": list(rates)}, default=str))
    done = read_json(path, required=("curves", "settings"))
    if done is not None:
        if done["settings"] != settings:
            raise ValueError(f"{display_path(path)} was computed with other settings (data, training or test "
                             f"rates); use another folder, or remove it to recompute")
        return done
    names = dataset.spec.modality_names
    train_data = with_missing(dataset, MissingConfig(train={m: train_missing for m in names}, seed=seed)) \
        if train_missing else dataset
    config = dataclasses.replace(base, seed=seed)
    _, result = run_recipe(method, train_data, config, Path(folder) / "work", progress=progress)
    mixed = with_missing(dataset, MissingConfig(test={m: 0.3 for m in names}, seed=seed, val="none"))
    cell = {"method": method, "train_missing": train_missing, "seed": seed, "settings": settings,
            "curves": rate_curves(result, dataset, rates, seed), "mofe": more_is_never_worse(result, dataset),
            "patterns": pattern_table(result, mixed)}
    weights = router_weights(result, mixed)
    if weights is not None:
        cell["router"] = weights.reset_index().to_dict("records")
    if method == "rima":
        cell["coupling"] = rima_coupling(result, dataset)
    write_json(path, cell)
    return cell


def curves_table(cells: list[dict]) -> pd.DataFrame:
    """One row per (method, training missing rate, missing modality, test rate): mean and SD over seeds."""
    rows = [{"method": c["method"], "train_missing": c["train_missing"], "seed": c["seed"], **r}
            for c in cells for r in c["curves"]]
    frame = pd.DataFrame(rows)
    return frame.groupby(["method", "train_missing", "missing", "rate"], sort=False).agg(
        seeds=("seed", "nunique"), r2_mean=("r2", "mean"), r2_std=("r2", "std"), mse_mean=("mse", "mean"),
        mse_std=("mse", "std"), realised=("realised", "mean"))


def mofe_table(cells: list[dict]) -> pd.DataFrame:
    """The more-is-never-worse violation shares per method and training condition, over seeds."""
    frame = pd.DataFrame([{"method": c["method"], "train_missing": c["train_missing"], **c["mofe"]} for c in cells])
    return frame.groupby(["method", "train_missing"], sort=False).agg(
        seeds=("eyes", "size"), violation_pairs_mean=("violation_pairs", "mean"),
        violation_pairs_std=("violation_pairs", "std"), violation_eyes_mean=("violation_eyes", "mean"))


__all__ = ["METHODS", "PATTERNS", "TEST_RATES", "curves_table", "more_is_never_worse", "mofe_table",
           "pattern_table", "rate_curves", "router_weights", "run_cell", "with_only"]
