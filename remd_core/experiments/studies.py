"""The experiments behind notebooks 01 to 03, as library functions the notebooks call once each.

- ``subset_runs`` / ``stacked_histories``: each modality alone and MMPareto fusion on all,
  head-only and tail-only training data (the Re-M3Dr paper's Fig. 2a-c: the unimodal heads of the
  fused model oscillate on all data, less on head-only or tail-only data, and not when trained alone).
- ``landscape_table``: 1-D filter-normalised loss slices and top Hessian eigenvalues of trained
  models on one fixed training batch (the analogue of Fig. 2e).
- ``encode`` / ``embedding_frame`` / ``label_order_score``: what stage 1 learns (section 4.1): the
  encoder features of a split, a 2-D projection, and how well embedding distances follow MD
  distances.
- ``probe_scores``: the two sharpness scores and gamma at every SGM probe (section 4.2, Fig. 5).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import torch
from scipy import stats
from tqdm.auto import tqdm

from ..data.format import MultimodalDataset, MultimodalSplit
from ..diagnosis import (fixed_batch_loss, random_direction, sgm_probes, sharpness_from_slice, slice_1d,
                         top_hessian_eigenvalue)
from ..data.transforms import prepare_inputs
from ..models import MultimodalRegressor
from ..training import FitResult, TrainConfig, fit, load_encoders


def subset_runs(dataset: MultimodalDataset, base: TrainConfig, subsets=("all", "head", "tail"),
                progress: bool = False) -> dict[tuple[str, str], FitResult]:
    """The runs of the paper's Fig. 2a-c, keyed ``(model, subset)``: each modality alone (its fused
    loss only) and MMPareto fusion, each trained with ``base``'s settings on all training data, on
    the head only ("many" MD bins) and on the tail only (every other sample; see ``TrainConfig``)."""
    plans = {m: dict(modalities=(m,), strategy="joint", strategy_options={"unimodal_weight": 0.0})
             for m in dataset.spec.modality_names}
    plans["mmpareto"] = dict(modalities=None, strategy="mmpareto", strategy_options={})
    runs = {}
    jobs = [(model, subset) for model in plans for subset in subsets]
    for model, subset in tqdm(jobs, desc="subset runs", disable=not progress):
        config = replace(base, subset=subset, contrastive=False, init_encoders={}, **plans[model])
        runs[model, subset] = fit(dataset, config, progress=False)
    return runs


def stacked_histories(runs: dict[tuple[str, str], FitResult]) -> pd.DataFrame:
    """The per-step loss of every unimodal prediction head of every run in one long frame: ``model,
    subset, head, step, epoch, progress, loss`` (standardised-label units; ``progress`` = step /
    steps of that run, so that runs with different numbers of steps per epoch share one x axis).
    A unimodal model has one head (its own modality); a fusion run has one per modality."""
    frames = []
    for (model, subset), result in runs.items():
        h = result.history
        for column in [c for c in h if c.startswith("loss_") and c != "loss_fused"]:
            frames.append(pd.DataFrame({"model": model, "subset": subset, "head": column.removeprefix("loss_"),
                                        "step": h["step"], "epoch": h["epoch"],
                                        "progress": (h["step"] - h["step"].min() + 1) / len(h), "loss": h[column]}))
    return pd.concat(frames, ignore_index=True)


def landscape_table(models: dict[str, torch.nn.Module], split: MultimodalSplit, label_mean: float, label_std: float,
                    alphas=np.linspace(-1, 1, 21), hessian_iters: int = 20, batch: int = 64, seed: int = 0,
                    progress: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """For each model: the fused-head MSE on one fixed batch of ``split`` along one filter-normalised
    random direction (Li et al. 2018; the same seed for every model), and the top Hessian
    eigenvalue of that loss (power iteration). Returns ``(slices, summary)``: the long slice frame
    ``model, alpha, loss`` and per model ``loss_at_minimum``, ``slice_sharpness`` (mean rise over
    the slice), ``relative_sharpness`` (that rise over the loss at the centre) and
    ``top_hessian_eigenvalue``. Parameters and BatchNorm statistics are restored afterwards."""
    slices, rows = [], []
    for name, model in tqdm(models.items(), desc="landscapes", disable=not progress):
        model.eval()
        loss_fn = fixed_batch_loss(model, split, label_mean, label_std, size=batch, seed=seed)
        params = [p for p in model.parameters() if p.requires_grad]
        direction = random_direction(params, torch.Generator().manual_seed(seed))
        frame = slice_1d(model, loss_fn, params, direction, alphas).assign(model=name)
        eigenvalue, _, _ = top_hessian_eigenvalue(model, loss_fn, params, iters=hessian_iters,
                                                  generator=torch.Generator().manual_seed(seed))
        slices.append(frame)
        rows.append({"model": name, "loss_at_minimum": float(frame.loc[frame.alpha == 0, "loss"].iloc[0]),
                     "slice_sharpness": sharpness_from_slice(frame),
                     "relative_sharpness": sharpness_from_slice(frame, relative=True),
                     "top_hessian_eigenvalue": eigenvalue})
    return pd.concat(slices, ignore_index=True)[["model", "alpha", "loss"]], pd.DataFrame(rows).set_index("model")


@torch.no_grad()
def encode(model: MultimodalRegressor, split: MultimodalSplit, batch_size: int = 64) -> dict[str, np.ndarray]:
    """Encoder features (what stage 2 starts from) of every sample of ``split``, per modality."""
    kinds = split.spec.kinds
    device = next(model.parameters()).device
    model.eval()
    out = {m: [] for m in model.modalities}
    for batch in split.batches(batch_size):
        features = model(prepare_inputs(batch, model.modalities, kinds, augment=False, device=device))["features"]
        for m in model.modalities:
            out[m].append(features[m].double().cpu())
    return {m: torch.cat(v).numpy() for m, v in out.items()}


def stage1_encoder(dataset: MultimodalDataset, modality: str, path: str, config: TrainConfig) -> MultimodalRegressor:
    """A one-modality model carrying the stage-1 encoder saved at ``path`` (its head is untrained:
    use it for features only)."""
    model = MultimodalRegressor(dataset.spec, (modality,), config.encoder).to(config.parameter_dtype())
    load_encoders(model, {modality: path})
    return model.eval()


def embedding_frame(features: np.ndarray, y: np.ndarray) -> pd.DataFrame:
    """A 2-D PCA projection of standardised features with the label, for plotting ``pc1, pc2, y``
    and the share of variance the two components explain (``explained`` column)."""
    x = np.asarray(features, dtype=np.float64)
    x = (x - x.mean(0)) / (x.std(0) + 1e-8)
    _, s, vt = np.linalg.svd(x, full_matrices=False)
    pcs = x @ vt[:2].T
    explained = float((s[:2] ** 2).sum() / (s ** 2).sum())
    return pd.DataFrame({"pc1": pcs[:, 0], "pc2": pcs[:, 1], "y": np.asarray(y, dtype=np.float64),
                         "explained": explained})


def label_order_score(features: np.ndarray, y: np.ndarray) -> float:
    """Spearman correlation between pairwise cosine distances of the features and pairwise label
    distances ``|y_i - y_j|`` over all pairs: 1 means the embedding orders samples exactly as MD
    does, which is what a label-distance contrastive loss asks for (section 4.1)."""
    z = np.asarray(features, dtype=np.float64)
    z = z / (np.linalg.norm(z, axis=1, keepdims=True) + 1e-12)
    y = np.asarray(y, dtype=np.float64)
    i, j = np.triu_indices(len(y), k=1)
    distance = 1.0 - np.einsum("pd,pd->p", z[i], z[j])
    return float(stats.spearmanr(distance, np.abs(y[i] - y[j]))[0])


def probe_scores(history: pd.DataFrame) -> tuple[pd.DataFrame, pd.Series]:
    """The SGM probes of a run (``diagnosis.sgm_probes``: one row per probe of ``step,
    sharpness_paper, sharpness_curvature, gamma``, and ``cos``, ``norm_base`` where logged), and
    Spearman correlations between the two scores and of each with gamma. The paper's score ``L(+) - L(-)`` follows the gradient norm to first order; the curvature score does not."""
    probes = sgm_probes(history, ("sharpness_paper", "sharpness_curvature", "gamma"), optional=("cos", "norm_base"))

    def rho(a, b):
        return float(stats.spearmanr(probes[a], probes[b])[0]) if len(probes) > 2 else float("nan")

    summary = pd.Series({"n_probes": len(probes), "paper_vs_curvature": rho("sharpness_paper", "sharpness_curvature"),
                         "paper_vs_gamma": rho("sharpness_paper", "gamma"),
                         "curvature_vs_gamma": rho("sharpness_curvature", "gamma")}, name="spearman")
    if "norm_base" in probes:
        summary["paper_vs_gradient_norm"] = rho("sharpness_paper", "norm_base")
    return probes, summary


def describe_diagnosis(puzzle: pd.DataFrame, oscillation: pd.DataFrame, sharpness: pd.DataFrame) -> str:
    """Plain sentences, with the numbers, on whether this run reproduces the paper's three
    observations: fusion below the best single modality (Table 1, STAGE2), unimodal heads of the
    fused model oscillating more on all data than on head-only or tail-only data while unimodal
    models stay stable (Fig. 2a-c), and fused solutions in sharper minima (Fig. 2e).

    ``puzzle``: index recipe, column ``test_r2``; ``oscillation``: columns model, subset and
    ``oscillation`` (mean over heads); ``sharpness``: index model, column ``top_hessian_eigenvalue``."""
    unimodal = puzzle.loc[[r for r in puzzle.index if r.startswith("unimodal-")], "test_r2"]
    best, best_r2 = unimodal.idxmax(), unimodal.max()
    lines = []
    for fused in ("naive-fusion", "mmpareto"):
        if fused in puzzle.index:
            r2 = puzzle.loc[fused, "test_r2"]
            verdict = "below" if r2 < best_r2 else "above"
            lines.append(f"- {fused}: test R² {r2:.3f}, {verdict} the best single modality ({best}, {best_r2:.3f}); "
                         f"the paper finds fusion below it on STAGE2 (naive 0.371, MMPareto 0.532 against fundus 0.605).")
    osc = oscillation.groupby(["model", "subset"])["oscillation"].mean().unstack()
    if "mmpareto" in osc.index and {"all", "head", "tail"} <= set(osc.columns):
        o = osc.loc["mmpareto"]
        agrees = o["all"] > max(o["head"], o["tail"])
        lines.append(f"- Oscillation of MMPareto's unimodal heads: all data {o['all']:.3f}, head only {o['head']:.3f}, "
                     f"tail only {o['tail']:.3f}; {'as' if agrees else 'unlike'} the paper (Fig. 2b-c), all data "
                     f"{'oscillates most' if agrees else 'does not oscillate most'}.")
        alone = osc.drop(index="mmpareto")["all"]
        lines.append(f"- Unimodal models alone on all data: oscillation {', '.join(f'{m} {v:.3f}' for m, v in alone.items())} "
                     f"(Fig. 2a expects them below MMPareto's {o['all']:.3f}: "
                     f"{'yes' if (alone < o['all']).all() else 'no'}).")
    eig = sharpness["top_hessian_eigenvalue"]
    fused = [m for m in eig.index if m in ("naive-fusion", "mmpareto")]
    alone = [m for m in eig.index if m not in fused]
    if fused and alone:
        sharper = min(eig[fused]) > max(eig[alone])
        lines.append(f"- Top Hessian eigenvalue: {', '.join(f'{m} {eig[m]:.3g}' for m in eig.index)}; the fused solutions "
                     f"are {'sharper than' if sharper else 'not all sharper than'} the unimodal ones "
                     f"(the paper's Fig. 2e shows sharp minima for fusion).")
    return "\n".join(lines)
