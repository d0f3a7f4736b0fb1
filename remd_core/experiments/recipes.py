"""Named experiment recipes matching the Re-M3Dr paper's tables.

Table 1 (comparison): ``unimodal-<modality>`` (e.g. ``unimodal-fundus``, ``unimodal-oct``),
``naive-fusion``, ``ogm-ge``, ``mmpareto``, ``eyemost``, ``eyemost-plus``, ``sam``, ``imbsam``,
``sse-sam``, ``egvfi`` and ``sf3d`` (3-D OCT models, on the OCT volume alone), ``simclr``,
``conr`` (and ``conr-oct``, ``conr-fundus``), ``echomen`` (and ``echomen-oct``, ``echomen-fundus``),
``re-m3dr`` (AM stage 1, then SGM). Not in Table 1: ``rnc`` (Rank-N-Contrast pretraining, then naive
fusion). Newer rivals, rows of our Table 1 grid but not of the paper (``NEWER_RIVALS``): ``bsam``
(Balanced SAM, ICCV 2025, on naive fusion's loss) and ``igm`` (IGM, IJCAI 2025: alternating unimodal
training with flat gradient modification).
Table 2 (ablations): ``wo-am`` (fixed-margin stage 1, then SGM), ``am-only`` (AM stage 1, each
unimodal model on its own), ``am-naive-fusion`` (AM stage 1, then naive fusion), ``am-mmpareto``
(AM stage 1, then MMPareto).
Control (not in the paper): ``pretrained-naive-fusion``, stage 1 with the same epochs but no
contrastive term, then naive fusion. Two-stage recipes train for twice the epochs of one-stage
ones; this control separates the effect of the contrastive objective from that of pretraining.
A unimodal recipe (``unimodal-oct``) trains exactly that plain stage 1 for its modality (the same
configuration, so the same weights), so it is served from the same cache: a testbed setting trains
each plain unimodal model once for ``unimodal-<m>`` and ``pretrained-naive-fusion`` together.

A recipe is at most two stages. Stage-1 encoders are trained once per (data set, seed, margin
kind, training settings, modality) and reused by every recipe that starts from them (kept under the run
folder's ``stage1/``); a file lock makes the cache safe to share between parallel workers (``remd
sweep``). ``run_recipe`` returns one result row per evaluated model, with test metrics overall and
per region (many / medium / few MD bins of ``metrics.region_labels``), and for a fused model each
modality's Shapley value on the test split and its share (``shapley_<m>``, ``share_<m>``,
``shapley_empty``: ``diagnosis.contribution``).

Every fit a recipe runs writes TensorBoard scalars (``training.board``): stage 2 (or a one-stage
recipe) to ``<workdir>/tensorboard/<recipe>-seed<k>-<hash>`` (``board_folder``: the hash of the data
and training settings keeps apart runs of one recipe and seed in one work folder, such as the
missing-modality study's training rates) unless told another folder (``log_dir``; the sweep's cells
pass their own folder's ``tensorboard/``), a stage-1 encoder beside itself in the cache
(``stage1/<key>/tensorboard/<modality>``); ``remd board RUN`` shows a run folder's.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import shutil
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from ..data.format import MultimodalDataset
from ..files import atomic_path, load_torch, read_json, write_json
from ..optim import build_strategy
from ..timing import phase, timed
from ..training import HEADS, FitResult, TrainConfig, fit, save_encoders


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    stage1: str | None = None          # None, "adaptive" or "fixed" margin, "plain" (no contrastive term), or a
                                       # comparator's contrastive loss: "simclr", "rnc", "echomen"
    strategy: str | None = "joint"     # stage-2 strategy; None: report the stage-1 models
    options: tuple = ()                # stage-2 strategy options as (key, value) pairs
    modality: str | None = None        # a single-modality recipe
    head: str | None = None            # the model's head (TrainConfig.head); None: the base config's
    encoder: tuple = ()                # EncoderConfig overrides as (key, value) pairs (a 3-D OCT model)
    regulariser: str | None = None     # a contrastive loss added in the (last) stage: "conr"
    settings: tuple = ()               # other TrainConfig settings of the (last) stage, as (key, value) pairs


FUSION_RECIPES = {
    "naive-fusion": Recipe("naive-fusion", "concatenation fusion trained on the fused loss only (Table 1 Baseline fusion)",
                           options=(("unimodal_weight", 0.0),)),
    "ogm-ge": Recipe("ogm-ge", "OGM-GE adapted to regression (Table 1)", strategy="ogm_ge"),
    "mmpareto": Recipe("mmpareto", "MMPareto, official-code semantics (Table 1)", strategy="mmpareto"),
    # the sharpness-aware controls optimise naive fusion's loss (the fused loss only), so that their rows
    # differ from naive-fusion by the optimiser alone (the paper does not say which loss they used)
    "sam": Recipe("sam", "SAM (Foret et al. 2021) on naive fusion's loss (Table 1)", strategy="sam",
                  options=(("unimodal_weight", 0.0),)),
    "imbsam": Recipe("imbsam", "ImbSAM (Zhou et al. 2023): SAM on the tail (medium + few MD regions) only, naive "
                     "fusion's loss (Table 1)", strategy="imbsam", options=(("unimodal_weight", 0.0),)),
    "sse-sam": Recipe("sse-sam", "SSE-SAM (Lyu et al. 2025): head and tail radii, the head's 0 after half the run, "
                      "naive fusion's loss (Table 1)", strategy="sse-sam", options=(("unimodal_weight", 0.0),)),
    # newer rivals (not in the paper): BSAM is sharpness-aware like the three above, on the same loss; IGM trains
    # one modality at a time on its own unimodal loss by definition, so it takes no unimodal_weight
    "bsam": Recipe("bsam", "BSAM (Liu et al. 2025): SAM on the loss re-weighted by 1/sqrt(training count) of each "
                   "eye's MD bin, naive fusion's loss (newer rival)", strategy="bsam",
                   options=(("unimodal_weight", 0.0),)),
    "igm": Recipe("igm", "IGM (Jiang et al. 2025): alternating unimodal stages, gradients of the linear layers "
                  "projected by the previous modality's input statistics, a fusion head fitted on the features "
                  "(newer rival)", strategy="igm"),
    # the evidential fusions train their own loss with joint training; unimodal_weight 1 makes the sum the
    # official EyeMoSt loss (per-modality NIG terms plus the fused Student-t term)
    "eyemost": Recipe("eyemost", "EyeMoSt (Zou et al. 2023): NIG per modality, Student-t fusion (Table 1)",
                      options=(("unimodal_weight", 1.0),), head="eyemost"),
    "eyemost-plus": Recipe("eyemost-plus", "EyeMoSt+ (Zou et al. 2024): EyeMoSt with the confidence-consistency "
                           "loss (Table 1)", options=(("unimodal_weight", 1.0),), head="eyemost-plus"),
    # the 3-D OCT models of Table 1 predict MD from the OCT volume alone, with naive training (fused loss only)
    "egvfi": Recipe("egvfi", "EGVFI (Yu et al. 2021): 3-D CNN on the OCT volume (Table 1)", modality="oct",
                    options=(("unimodal_weight", 0.0),), encoder=(("oct_encoder", "egvfi"),)),
    "sf3d": Recipe("sf3d", "SF3D (Koyama et al. 2025) stand-in: 3-D ResNet-18 on the OCT volume, its published "
                   "layout unknown here (Table 1)", modality="oct", options=(("unimodal_weight", 0.0),),
                   encoder=(("oct_encoder", "sf3d"),)),
    # the contrastive comparators: SimCLR and Rank-N-Contrast pretrain the encoders (stage 1), then naive
    # fusion; EchoMEN pretrains with its label-distance SupCon, then trains its multi-expert head on the
    # frozen encoders; ConR is a regulariser of naive fusion's (or one modality's) training
    "simclr": Recipe("simclr", "SimCLR (Chen et al. 2020) pretraining per modality, then naive fusion (Table 1)",
                     "simclr", options=(("unimodal_weight", 0.0),)),
    "conr": Recipe("conr", "ConR (Keramati et al. 2024) regularising naive fusion (Table 1)",
                   options=(("unimodal_weight", 0.0),), regulariser="conr"),
    "conr-oct": Recipe("conr-oct", "ConR on OCT alone (Table 1)", options=(("unimodal_weight", 0.0),),
                       modality="oct", regulariser="conr"),
    "conr-fundus": Recipe("conr-fundus", "ConR on the fundus photograph alone (Table 1)",
                          options=(("unimodal_weight", 0.0),), modality="fundus", regulariser="conr"),
    "echomen": Recipe("echomen", "EchoMEN (Lai et al. 2024): label-distance SupCon per modality, then a "
                      "multi-expert head on the frozen fused encoders (Table 1)", "echomen",
                      options=(("unimodal_weight", 0.0),), head="echomen"),
    "echomen-oct": Recipe("echomen-oct", "EchoMEN on OCT alone (Table 1)", "echomen",
                          options=(("unimodal_weight", 0.0),), modality="oct", head="echomen"),
    "echomen-fundus": Recipe("echomen-fundus", "EchoMEN on the fundus photograph alone (Table 1)", "echomen",
                             options=(("unimodal_weight", 0.0),), modality="fundus", head="echomen"),
    "rnc": Recipe("rnc", "Rank-N-Contrast (Zha et al. 2023) pretraining per modality, then naive fusion "
                  "(not in Table 1: a standard imbalanced-regression baseline)", "rnc",
                  options=(("unimodal_weight", 0.0),)),
    "re-m3dr": Recipe("re-m3dr", "AM supervised contrastive stage 1, then SGM fusion (the method)", "adaptive", "sgm"),
    "wo-am": Recipe("wo-am", "fixed-margin stage 1, then SGM (Table 2 w/o AM)", "fixed", "sgm"),
    "am-only": Recipe("am-only", "AM stage 1 only: each unimodal model (Table 2 w/o SGM, OCT and FP rows)", "adaptive", None),
    "am-naive-fusion": Recipe("am-naive-fusion", "AM stage 1, then naive fusion (Table 2 w/o SGM, fusion row)", "adaptive",
                              options=(("unimodal_weight", 0.0),)),
    "am-mmpareto": Recipe("am-mmpareto", "AM stage 1, then MMPareto (Table 2 AM w/ MP)", "adaptive", "mmpareto"),
    # missing modalities (notebook 05): a training-time baseline and the two systems of the source papers
    "naive-fusion-dropout": Recipe("naive-fusion-dropout", "naive fusion with modality dropout 0.3 in training "
                                   "(a missing-modality baseline)", options=(("unimodal_weight", 0.0),),
                                   settings=(("modality_dropout", 0.3),)),
    "simmlm": Recipe("simmlm", "SimMLM (Li et al. 2025): dynamic mixture of modality experts with the MoFe "
                     "ranking loss", options=(("unimodal_weight", 0.0),), head="simmlm"),
    "rima": Recipe("rima", "RIMA: labelled optimal-transport alignment of fundus and OCT, asymmetric fusion, an "
                   "absent modality predicted from the present one", options=(("unimodal_weight", 0.0),), head="rima"),
    "pretrained-naive-fusion": Recipe("pretrained-naive-fusion", "control, not in the paper: stage 1 without the "
                                      "contrastive term (plain unimodal pretraining), then naive fusion", "plain",
                                      options=(("unimodal_weight", 0.0),)),
}
COMPARATOR_STAGE1 = ("simclr", "rnc", "echomen")
CONTROL_RECIPES = ("pretrained-naive-fusion",)
MISSING_RECIPES = ("naive-fusion-dropout", "simmlm", "rima")
NEWER_RIVALS = ("bsam", "igm")
NOT_IN_PAPER = (*CONTROL_RECIPES, "rnc", *MISSING_RECIPES, *NEWER_RIVALS)
PAPER_RECIPES = ("unimodal-fundus", "unimodal-oct", *(r for r in FUSION_RECIPES if r not in NOT_IN_PAPER))


@dataclass(frozen=True)
class StageRecord:
    """The training curves of a model a recipe reports from a shared stage 1 (``unimodal-<m>``): what
    a cell records of it (``history.csv``, ``epochs.csv``), where a trained recipe has a ``FitResult``."""
    history: pd.DataFrame
    epochs: pd.DataFrame
    best_epoch: int


def recipe(name: str) -> Recipe:
    if name.startswith("unimodal-"):
        modality = name.removeprefix("unimodal-")
        # the plain stage 1 of one modality (see the module docstring); run_recipe trains it directly when
        # the base configuration's head is not stage 1's linear one
        return Recipe(name, f"{modality} alone (Table 1 unimodal baseline)", "plain", None, modality=modality,
                      options=(("unimodal_weight", 0.0),))
    if name not in FUSION_RECIPES:
        raise ValueError(f"unknown recipe {name!r}; known: unimodal-<modality>, {', '.join(FUSION_RECIPES)}")
    return FUSION_RECIPES[name]


def recipes_for(dataset: MultimodalDataset, names: list[str] | None = None) -> list[str]:
    """Recipe names for a data set: ``None`` gives every recipe, with one unimodal recipe per modality
    (recipes of one modality the data set lacks, such as the OCT models on ``randhie``, left out)."""
    if names:
        return list(names)
    modalities = dataset.spec.modality_names
    return [f"unimodal-{m}" for m in modalities] + [
        name for name, r in FUSION_RECIPES.items() if r.modality is None or r.modality in modalities]


def _stage1_key(dataset: MultimodalDataset, config: TrainConfig, kind: str) -> str:
    settings = json.dumps({"data": asdict(dataset.config), "train": asdict(config), "kind": kind}, sort_keys=True,
                          default=str)
    return f"{kind}-seed{config.seed}-{hashlib.sha1(settings.encode()).hexdigest()[:10]}"


@contextmanager
def _locked(folder: Path, name: str):
    """Hold an exclusive lock on ``folder/.lock-<name>`` (created if missing) for the ``with`` block,
    so two processes sharing a stage-1 cache neither train the same encoder twice nor read a
    half-written one: the second waits, then finds it finished. One lock per modality, so two
    workers train a setting's two encoders at once (``unimodal-oct`` and ``unimodal-fundus``). The
    lock is released when the process exits, even on a crash, so a stale lock file never blocks a rerun."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f".lock-{name}", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def stage1_config(base: TrainConfig, kind: str) -> TrainConfig:
    """The training configuration of stage 1 of kind ``kind`` (every modality; ``stage1`` trains one at a time)."""
    return replace(base, strategy="joint", strategy_options={"unimodal_weight": 0.0}, contrastive=kind != "plain",
                   adaptive_margin=kind == "adaptive", init_encoders={}, head="linear",
                   contrastive_loss=kind if kind in COMPARATOR_STAGE1 else "am-supcon")


def stage_record(encoder: str | Path, row: dict) -> StageRecord | None:
    """The training curves kept beside a stage-1 encoder file, with its result ``row``'s best epoch
    (None for a cache written before the curves were kept)."""
    encoder = Path(encoder)
    history, epochs = encoder.with_suffix(".history.csv"), encoder.with_suffix(".epochs.csv")
    if not (history.exists() and epochs.exists()):
        return None
    return StageRecord(pd.read_csv(history), pd.read_csv(epochs), int(row["best_epoch"]))


@timed("stage1")
def stage1(dataset: MultimodalDataset, base: TrainConfig, kind: str, folder: Path,
           progress: bool = True, checkpoint_every: int = 0, modalities: tuple[str, ...] | None = None,
           board: bool = True) -> tuple[dict[str, str], list[dict]]:
    """Train (or reuse) one encoder per modality (``modalities``; None: every modality of the data
    set), contrastive unless ``kind == "plain"``; returns encoder paths and result rows. Each model's
    training curves are kept beside it (``<modality>.history.csv``, ``.epochs.csv``; ``stage_record``).
    Training checkpoints go to ``<key>/checkpoints/<modality>``, so an interrupted stage 1 continues
    where it stopped; they are removed once the encoder is saved. A corrupt encoder or result file is
    reported and that encoder is trained again. ``board``: each training writes TensorBoard scalars to
    ``<key>/tensorboard/<modality>``."""
    config = stage1_config(base, kind)
    out = Path(folder) / _stage1_key(dataset, config, kind)
    paths, rows = {}, []
    for modality in modalities or dataset.spec.modality_names:
        with _locked(out, modality):
            marker, encoder = out / f"{modality}.json", out / f"{modality}.pt"
            row = read_json(marker, required=("model", "test_r2")) if load_torch(encoder) is not None else None
            if row is None:
                marker.unlink(missing_ok=True)
                checkpoints = out / "checkpoints" / modality
                result = fit(dataset, replace(config, modalities=(modality,)), progress=progress,
                             checkpoint_dir=checkpoints, resume=True, checkpoint_every=checkpoint_every,
                             log_dir=out / "tensorboard" / modality if board else None)
                save_encoders(result.model, out)
                with atomic_path(out / f"{modality}.history.csv") as tmp:
                    result.history.to_csv(tmp, index=False)
                with atomic_path(out / f"{modality}.epochs.csv") as tmp:
                    result.epochs.to_csv(tmp, index=False)
                row = result_row(result, model=modality)
                write_json(marker, row)  # the encoders (written atomically) come before this marker
                shutil.rmtree(checkpoints, ignore_errors=True)
            paths[modality] = str(encoder)
            rows.append(row)
    return paths, rows


def stage2_options(r: Recipe, overrides: dict[str, dict] | None = None) -> dict:
    """The stage-2 strategy options of recipe ``r``: its own, with ``overrides[r.strategy]`` merged
    over them. Overrides for other strategies are ignored, so one set of options (say SGM's gamma)
    can be given to every recipe of a sweep and reaches only the recipes that use that strategy.
    Strategy names are checked (a typo is an error, not a silent no-op); option names are checked
    by the strategy's config when it is built."""
    from ..optim import STRATEGIES

    overrides = overrides or {}
    unknown = sorted(set(overrides) - set(STRATEGIES))
    if unknown:
        raise ValueError(f"strategy_options names unknown strategies {unknown}; known: {sorted(STRATEGIES)}")
    return {**dict(r.options), **overrides.get(r.strategy, {})} if r.strategy else {}


BOARD = "auto"
"""``run_recipe``'s default ``log_dir``: ``board_folder``."""


def board_folder(workdir: str | Path, name: str, dataset: MultimodalDataset, config: TrainConfig) -> Path:
    """``<workdir>/tensorboard/<recipe>-seed<k>-<hash>``: the TensorBoard folder of recipe ``name``'s
    last stage trained with ``config`` on ``dataset``; the hash (of the data's settings, its drawn
    missing modalities' settings and the training settings) keeps different settings apart."""
    settings = json.dumps({"data": asdict(dataset.config), "missing": dataset.notes.get("missing", {}).get("config"),
                           "train": asdict(config)}, sort_keys=True, default=str)
    return Path(workdir) / "tensorboard" / f"{name}-seed{config.seed}-{hashlib.sha1(settings.encode()).hexdigest()[:8]}"


def run_recipe(name: str, dataset: MultimodalDataset, base: TrainConfig, workdir: Path,
               progress: bool = True, strategy_options: dict[str, dict] | None = None,
               checkpoint_dir: str | Path | None = None, checkpoint_every: int = 0,
               log_dir: str | Path | None = BOARD) -> tuple[list[dict], FitResult | StageRecord | None]:
    """Run recipe ``name`` with the training settings of ``base`` (epochs, seed, encoder, ...).
    ``strategy_options`` maps a strategy name to option overrides (``{"sgm": {"gamma_base": 3}}``),
    applied only when the recipe's stage 2 uses that strategy (``stage2_options``).
    ``checkpoint_dir``: stage 2 checkpoints there (at epoch ends, and every ``checkpoint_every``
    steps when > 0) and resumes from a checkpoint it finds (stage 1 always checkpoints inside its
    cache); the caller removes it once the result is recorded.
    ``log_dir``: the folder of the last stage's TensorBoard scalars (``BOARD``: ``board_folder``; None:
    no scalars, stage 1's included).
    Returns the result rows and the last stage's ``FitResult``; for a model reported from stage 1, its
    ``StageRecord`` (``unimodal-<m>``) or ``None`` (``am-only``, which reports every modality)."""
    r = recipe(name)
    if r.stage1 == "plain" and r.strategy is None and base.head != "linear":
        r = replace(r, stage1=None, strategy="joint")  # a unimodal model with another head than stage 1's
    options = stage2_options(r, strategy_options)
    if r.strategy:  # a mistyped option fails here, not after stage 1 has trained
        build_strategy(r.strategy, options)
    init = {}
    if r.stage1:
        init, stage1_rows = stage1(dataset, base, r.stage1, Path(workdir) / "stage1", progress, checkpoint_every,
                                   modalities=(r.modality,) if r.modality else None, board=log_dir is not None)
        if r.strategy is None:
            record = stage_record(init[r.modality], stage1_rows[0]) if r.modality else None  # one modality, one row
            return [{**row, "recipe": name} for row in stage1_rows], record
    modalities = (r.modality,) if r.modality else None
    head = r.head or base.head
    own_loss = {"regression_loss": "mse"} if HEADS[head].own_loss else {}  # unused: the head trains on its own loss
    config = replace(base, modalities=modalities, strategy=r.strategy, strategy_options=options,
                     init_encoders=init, head=head, contrastive=r.regulariser is not None,
                     contrastive_loss=r.regulariser or base.contrastive_loss, **own_loss, **dict(r.settings),
                     encoder=replace(base.encoder, **dict(r.encoder)))
    with phase("stage2"):
        if log_dir == BOARD:
            log_dir = board_folder(workdir, name, dataset, config)
        result = fit(dataset, config, progress=progress, checkpoint_dir=checkpoint_dir,
                     resume=checkpoint_dir is not None, checkpoint_every=checkpoint_every, log_dir=log_dir)
    model = r.modality or "fusion"
    return [{**result_row(result, model=model), "recipe": name}], result


def result_row(result: FitResult, model: str) -> dict:
    """Test metrics overall and per region, each modality's Shapley value on the test split and its
    share (a fused model's: ``shapley_<m>``, ``share_<m>``, ``shapley_empty``), plus what produced them."""
    row = {"model": model, "seed": result.config.seed, "epochs": result.config.epochs, "best_epoch": result.best_epoch,
           "seconds": round(result.seconds, 1)}
    row.update({f"test_{k}": v for k, v in result.metrics["test"].items()})
    row.update({f"val_{k}": v for k, v in result.metrics["val"].items() if k in ("r2", "mse", "mae")})
    for region, values in result.regions.drop(index="all").iterrows():
        for metric in ("n", "mse", "mae"):
            row[f"{region}_{metric}"] = values[metric]
    row.update(result.contributions.get("test", {}))
    row["test_predictions"] = np.asarray(result.predictions["test"]).round(4).tolist()
    if "test" in result.intervals:
        row["test_intervals"] = np.asarray(result.intervals["test"]).round(4).tolist()
    return row
