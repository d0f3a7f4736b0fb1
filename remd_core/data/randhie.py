"""Catalog entry ``randhie``: the RAND Health Insurance Experiment data shipped with statsmodels, as
a real long-tailed two-"modality" regression in the common sample format.

Target ``mdvis`` (outpatient visits to a physician; 20,190 person-years, skew about 4.8, 31 % zeros).
The nine regressors split into two vector modalities:

- ``plan``   = lncoins, idp, lpi, fmde       (the insurance plan the person was randomised to)
- ``health`` = physlm, disea, hlthg, hlthf, hlthp  (health status)

Choices (the source says nothing about them):

- Each feature is standardised with the TRAINING split's mean and population std (ddof = 0); val
  and test use the same train statistics, so nothing leaks from them. A feature constant on the
  training split (possible in small subsamples) keeps std 1. The statistics are kept in
  ``dataset.notes["feature_mean"]`` and ``["feature_std"]``.
- ``n_rows`` draws a deterministic subsample before splitting, stratified over label quantile bins
  (the same ``stratified_split`` as the train/val/test split, seeded with ``seed``), so the tail
  keeps its share. Ids keep the original row number.
- ``log_target`` regresses ``log1p(mdvis)`` instead of the raw count; strata are always from raw
  counts. Metrics are then in log units: apply ``expm1`` to predictions to report visits.
- Strata (never inputs): 0, 1-2, 3-5, 6-10, >10 visits. Age, sex and eye do not apply: NaN.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .base import SplitConfig, assemble
from .checks import DataError, brief_list, check_labels
from .format import DatasetSpec, ModalitySpec, tabular_tensor
from .splits import split_sizes, stratified_split

FEATURE_GROUPS = {
    "plan": ("lncoins", "idp", "lpi", "fmde"),
    "health": ("physlm", "disea", "hlthg", "hlthf", "hlthp"),
}
TARGET = "mdvis"
STRATA_NAMES = ("0", "1-2", "3-5", "6-10", ">10")
STRATA_UPPER = (0, 2, 5, 10)  # inclusive upper bounds of all strata but the last


@dataclass
class Config(SplitConfig):
    """``test`` is a fraction of all rows, ``val`` of the rest (as in ``SplitConfig``).
    ``n_rows``: optional stratified, seeded subsample size for quick runs (None: all 20,190 rows).
    ``log_target``: regress log1p(mdvis) instead of mdvis."""

    seed: int = 0
    test: float = 0.2
    val: float = 0.15
    n_rows: int | None = None
    log_target: bool = False


def strata(visits: np.ndarray) -> np.ndarray:
    """Stratum index (order of ``STRATA_NAMES``) of each visit count."""
    return np.searchsorted(np.asarray(STRATA_UPPER), np.asarray(visits, dtype=np.float64), side="left")


def load_frame():
    """The statsmodels copy of the data (ships with the package; no network)."""
    from statsmodels.datasets import randhie

    return randhie.load_pandas().data


def build(config: Config, name: str = "randhie", frame=None):
    """Build the data set from ``frame`` (default: the statsmodels copy) with ``config``."""
    frame = load_frame() if frame is None else frame
    source = f"{name} (statsmodels randhie)"
    columns = [TARGET, *(c for cols in FEATURE_GROUPS.values() for c in cols)]
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(f"{source}: missing column(s) {missing}")
    frame = frame.reset_index(drop=True)
    ids = np.array([f"randhie-{i:05d}" for i in range(len(frame))])
    visits = check_labels(ids, frame[TARGET].to_numpy(dtype=np.float64), source, valid_range=None, label=TARGET)
    negative = ids[visits < 0]
    if negative.size:
        raise DataError(f"{source}: negative {TARGET} for sample(s) {brief_list(negative)}")
    features = {g: frame[list(cols)].to_numpy(dtype=np.float64) for g, cols in FEATURE_GROUPS.items()}
    for g, x in features.items():
        bad = ids[~np.isfinite(x).all(axis=1)]
        if bad.size:
            raise DataError(f"{source}: missing or non-finite {g} feature(s) for sample(s) {brief_list(bad)}")

    if config.n_rows is not None:
        if not 0 < config.n_rows <= len(frame):
            raise DataError(f"{source}: n_rows={config.n_rows} must be in 1..{len(frame)}")
        if config.n_rows < len(frame):
            sizes = {"keep": config.n_rows, "drop": len(frame) - config.n_rows}
            keep = stratified_split(visits, sizes, config.seed, config.n_label_bins)["keep"]
            ids, visits = ids[keep], visits[keep]
            features = {g: x[keep] for g, x in features.items()}

    y = np.log1p(visits) if config.log_target else visits
    parts = stratified_split(y, split_sizes(len(ids), config.test, config.val), config.seed, config.n_label_bins)
    notes = {"source": "statsmodels.datasets.randhie", "feature_mean": {}, "feature_std": {}}
    for g, x in features.items():
        mean = x[parts["train"]].mean(axis=0)
        std = x[parts["train"]].std(axis=0)
        std = np.where(std > 0, std, 1.0)
        features[g] = ((x - mean) / std).astype(np.float32)
        notes["feature_mean"][g] = dict(zip(FEATURE_GROUPS[g], mean.tolist()))
        notes["feature_std"][g] = dict(zip(FEATURE_GROUPS[g], std.tolist()))

    spec = DatasetSpec(
        name=name,
        modalities=tuple(ModalitySpec(g, "vector", (len(cols),), feature_names=cols)
                         for g, cols in FEATURE_GROUPS.items()),
        label_name="log1p_mdvis" if config.log_target else TARGET,
        label_unit="log(1 + visits)" if config.log_target else "visits",
        strata_names=STRATA_NAMES,
    )
    n = len(ids)
    unknown = np.full(n, np.nan)
    dataset = assemble(spec, config, ids, features, present=np.ones((n, len(FEATURE_GROUPS)), bool),
                       tabular=tabular_tensor(unknown, unknown, unknown), y=y, stage=strata(visits),
                       predefined=parts, source=source)
    dataset.notes.update(notes)
    return dataset
