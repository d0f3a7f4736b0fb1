"""Step cost of the missing-modality methods against a plain fusion step, and RIMA's optimal transport
timed on its own (issue 13, item 7).

In one process, on the same batches, this times one training step of fusion models built exactly as
training builds them (``remd_core.training.build_model`` and ``build_objective`` from a
``TrainConfig(head=...)``, ``objective.prepare(batch, generator)``,
``objective.closure(model, inputs, target, margin=0.4)``, the strategy
``build_strategy("joint", {"unimodal_weight": 0.0}).bind(model)`` and ``strategy.step``):

=========  ===============================================================  =================
row        what a step does                                                 floor
=========  ===============================================================  =================
linear     naive fusion: one forward, the regression loss, one backward     F + B + O
simmlm     SimMLM: the forward, then MoFe's second forward of the same      2F + 2B + O
           inputs with the fewer-modality masks; the fewer copy's loss and
           the ranking term depend on it, so both graphs are back-propagated
rima       RIMA: the forward and regression loss, plus the class-wise       F + B + O + OT
           alignment: a labelled Gromov-Wasserstein coupling of the
           both-present eyes' detached features, solved on the CPU
           (``rima_ot.labelled_gw_coupling``), partner draws, the two
           cross-modal MLPs' cosine loss, and the feature-coupling
           refresh of the projection (``refresh_feature_projection``)
eyemost    EyeMoSt's evidential heads and loss (another single pass)        F + B + O
=========  ===============================================================  =================

Each head is timed on two variants of the same batches (the same eyes in the same order):
``both`` (the data as generated: both modalities present for every eye) and ``missing`` (the same
data through ``remd_core.data.missing.with_missing(ds, MissingConfig(train={"fundus": 0.3,
"oct": 0.3}, seed=0))``: SimMLM's pairs exist only for both-present eyes and RIMA aligns only the
both-present eyes, so both depend on the pattern). ``linear`` and ``rima`` are also timed at batch 8
(the first 8 eyes of each batch of 16; both modalities present), the paper's and the gpu profile's
batch size, for the OT's share there. Scale: the cpu profile's (``synthetic-stage2``: 700 eyes,
64 px, 8 B-scans; ``EncoderConfig(arch="resnet18", width=0.25)``, 128 features per modality),
float32, one torch thread (``--threads``; NumPy's BLAS is capped to the same through the
``OMP/OPENBLAS/MKL_NUM_THREADS`` defaults set before NumPy loads).

Floors. ``F`` (one forward pass with its graph and the head's own loss without extras), ``B`` (its
backward) and ``O`` (one AdamW step) are timed in the same rounds on a copy of each head's model, on
the ``both`` batches of 16: for ``linear`` and ``eyemost`` the step's own loss
(``closure().total(0.0)``), for ``simmlm`` and ``rima`` the regression loss of ``out["fused"]`` alone
(no MoFe, no alignment). SimMLM's floor ``2F + 2B + O`` counts its second forward and its backward
as one more ``F`` and ``B`` of the same model: the second pass runs the encoders on the whole batch
(absent modalities zero-filled, a sample without a pair keeps its own mask) and its outputs reach
the loss, so the backward runs through both graphs; the router and expert heads are a few
``[16, 256]`` products, inside ``F``. RIMA's floor adds ``OT``, its OT timed on its own right after
each timed step on the features that step solved (below). The ``missing`` rows use the same
``F``, ``B``, ``O`` as the ``both`` rows (the encoders run on the whole batch whatever the pattern;
RIMA's missing eyes add two small MLP passes) and, for RIMA, their own ``OT``. No floors at batch 8.

RIMA's OT, two ways:

- in the step: ``labelled_gw_coupling`` (as ``rima_alignment_loss`` calls it) and the model's
  ``refresh_feature_projection`` are wrapped with a timer (two ``perf_counter`` calls each); their
  time inside each timed step, over that step's time, is the in-step share (median over rounds).
- on its own, right after each timed RIMA step: the same call on the features that step passed
  to it (its both-present eyes' detached fundus and OCT features and their glaucoma stages,
  ``remd_core.data.format.stage_from_md`` of MD), with ``log=True`` for the iteration counts, then
  ``refresh_feature_projection`` of a copy of the model with the transposed coupling (what the
  step does; the feature Sinkhorn's iteration count read through ``feature_coupling(log=True)``).
  ``OT x step``: median over rounds of that time over the same round's RIMA step.

How it is measured (the house rules of ``make bench``): every row (its own model and AdamW, the
same initial weights per head) and every component timer is visited once per round, the order
rotating from round to round, after ``--warmup`` untimed rounds; one step per visit. Times are the
median and interquartile range over ``--rounds`` rounds; ``x linear`` is PAIRED: the median over
rounds of the row's time over the ``linear`` row's of the same variant and batch size in that
round; ``x floor``: the median over rounds of the row's time over its floor from the same round's
components. Host reads: one more step per row with ``Tensor.item``, ``tolist``, ``__bool__``,
``numpy``, ... counted (``stepbench.measure``), with a stub optimizer; the strategies run with
``check_finite=False`` as in ``make bench``. The raw batches (``--pool`` of them, cycled) are drawn
once; every row prepares them with its own objective from the same seed.

Writes ``outputs/bench/missing-<device>.json`` and ``.md`` and prints the tables. The timing parts
come from ``benchmarks/stepbench`` (``ConfigWorkload``, ``Runner``, ``StrategySpec``, ``host_reads_per_step``,
``summarise``).

    .venv/bin/python benchmarks/bench_missing.py                 # defaults (30 rounds), about 3 min here
    .venv/bin/python benchmarks/bench_missing.py --rounds 5 --warmup 1   # quick look
"""

from __future__ import annotations

import os
import sys


def _early_threads(argv: list[str]) -> str:
    for i, a in enumerate(argv):
        if a == "--threads" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--threads="):
            return a.split("=", 1)[1]
    return "1"


for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):  # NumPy's BLAS, before it loads
    os.environ.setdefault(_name, _early_threads(sys.argv[1:]))

import argparse  # noqa: E402
import copy  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from datetime import datetime, timezone  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the stepbench package next to this script

import remd_core.models.rima as rima_module  # noqa: E402
from remd_core.data import load  # noqa: E402
from remd_core.data.missing import MissingConfig, with_missing  # noqa: E402
from remd_core.experiments.provenance import git_revision  # noqa: E402
from remd_core.models import EncoderConfig  # noqa: E402
from remd_core.models import rima_ot  # noqa: E402
from remd_core.training import TrainConfig, resolve_device  # noqa: E402
from stepbench.inputs import ConfigWorkload  # noqa: E402
from stepbench.measure import host_reads_per_step  # noqa: E402
from stepbench.report import device_name, log, run_and_write, summarise  # noqa: E402
from stepbench.strategies import ComponentTimer, Runner, StrategySpec  # noqa: E402

MARGIN = 0.4
STRATEGY, STRATEGY_OPTIONS = "joint", {"unimodal_weight": 0.0}
MISSING = MissingConfig(train={"fundus": 0.3, "oct": 0.3}, seed=0)
HEADS = ("linear", "simmlm", "rima", "eyemost")
FLOORS = {"linear": "F+B+O", "simmlm": "2F+2B+O", "rima": "F+B+O+OT", "eyemost": "F+B+O"}
SMALL_BATCH_HEADS = ("linear", "rima")


# --- RIMA's OT inside the step: a timer around the two calls rima_alignment_loss makes ---------------

class OTClock:
    """Seconds spent in ``labelled_gw_coupling`` and ``refresh_feature_projection`` since ``reset``,
    and the arguments of the last GW call (the batch's detached features and stages)."""

    def __init__(self):
        self.gw = self.refresh = 0.0
        self.last_gw_call = None

    def reset(self):
        self.gw = self.refresh = 0.0


CLOCK = OTClock()
_ORIGINAL_GW = rima_module.labelled_gw_coupling
_ORIGINAL_FEATURE_COUPLING = rima_module.feature_coupling


def _timed_gw(*args, **kwargs):
    start = time.perf_counter()
    out = _ORIGINAL_GW(*args, **kwargs)
    CLOCK.gw += time.perf_counter() - start
    CLOCK.last_gw_call = (args, kwargs)
    return out


def _timed_refresh(bound):
    def refresh(*args, **kwargs):
        start = time.perf_counter()
        out = bound(*args, **kwargs)
        CLOCK.refresh += time.perf_counter() - start
        return out
    return refresh


rima_module.labelled_gw_coupling = _timed_gw   # the name rima_alignment_loss looks up


# --- the workloads ----------------------------------------------------------------------------------

class HeadWork(ConfigWorkload):
    """One fusion model with ``TrainConfig(head=...)`` and its objective as ``fit`` builds them (the same
    initial weights for every row of a head), and the plain loss its F and B are timed on."""

    def plain_loss(self, model, i: int) -> torch.Tensor:
        """One forward with its graph and the head's loss without extras (for F and B)."""
        inputs, target = self.batches[i % len(self.batches)]
        if self.config.head in ("simmlm", "rima"):   # no MoFe, no alignment: the regression loss alone
            return self.objective.loss_fn(model(inputs)["fused"].to(self.objective.dtype), target)
        return self.objective.closure(model, inputs, target, margin=MARGIN)().total(STRATEGY_OPTIONS["unimodal_weight"])


class FBOTimer(ComponentTimer):
    """F, B and O of one head's model (``stepbench``'s timer: its own copy and AdamW), timed on the head's
    plain loss, one sample per timed visit."""

    def visit(self, timed: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        f, loss = self._time(lambda: self.work.plain_loss(self.model, self.t))
        b, _ = self._time(loss.backward)
        o, _ = self._time(self.optimizer.step)
        self.t += 1
        if timed:  # G and E are in no floor here
            for k, v in zip(self.KEYS, (f, b, 0.0, o, 0.0)):
                self.samples[k].append(v)


class Row:
    """One head on one variant and batch size: a ``stepbench`` runner, and for RIMA the in-step OT
    time and the OT re-solved on its own after each timed step."""

    def __init__(self, head: str, variant: str, batch_size: int, work: HeadWork):
        self.head, self.variant, self.batch_size, self.work = head, variant, batch_size, work
        n = 2 if head == "simmlm" else 1
        self.spec = StrategySpec(head, STRATEGY, STRATEGY_OPTIONS, n_forward=n, n_backward=n)
        self.runner = Runner(self.spec, work)
        self.rima = head == "rima"
        self.ot = {"in_step_s": [], "gw_s": [], "refresh_s": [], "eyes": [], "stages": [], "gw_outer": [],
                   "gw_converged": [], "sinkhorn_iters": [], "sinkhorn_solves": [], "sinkhorn_at_cap": [],
                   "feature_sinkhorn_iters": []}
        if self.rima:
            model = self.runner.model
            model.refresh_feature_projection = _timed_refresh(model.refresh_feature_projection)
            self.ot_model = copy.deepcopy(work.model)   # the standalone refresh writes this copy's buffer

    @property
    def key(self) -> str:
        return f"{self.variant} b{self.batch_size} {self.head}"

    @property
    def samples(self) -> list[float]:
        return self.runner.samples

    def visit(self, timed: bool = True) -> None:
        CLOCK.reset()
        CLOCK.last_gw_call = None
        self.runner.visit(timed)
        if self.rima and timed:
            self.ot["in_step_s"].append(CLOCK.gw + CLOCK.refresh)
            self.standalone_ot()

    def standalone_ot(self) -> None:
        """The step's OT again, on the features it solved: GW (with its log), then the refresh."""
        if CLOCK.last_gw_call is None:   # no eye with both modalities in this batch: no OT in the step
            for k in ("gw_s", "refresh_s"):
                self.ot[k].append(0.0)
            self.ot["eyes"].append(0)
            return
        (f, o, stages, _), kwargs = CLOCK.last_gw_call
        start = time.perf_counter()
        coupling, info = _ORIGINAL_GW(f, o, stages, stages, **{**kwargs, "log": True})
        gw = time.perf_counter() - start
        feature_log = {}

        def logged_feature_coupling(*args, **kw):
            out, lg = _ORIGINAL_FEATURE_COUPLING(*args, **{**kw, "log": True})
            feature_log.update(lg)
            return out

        rima_module.feature_coupling = logged_feature_coupling
        try:
            start = time.perf_counter()
            self.ot_model.refresh_feature_projection(o, f, sample_coupling=coupling.T)
            refresh = time.perf_counter() - start
        finally:
            rima_module.feature_coupling = _ORIGINAL_FEATURE_COUPLING
        cap = int(kwargs.get("sinkhorn_max_iter", rima_ot.MAX_ITER))
        self.ot["gw_s"].append(gw)
        self.ot["refresh_s"].append(refresh)
        self.ot["eyes"].append(int(len(f)))
        self.ot["stages"].append(np.bincount(np.asarray(stages), minlength=4).tolist())
        self.ot["gw_outer"].append(int(info["n_iter"]))
        self.ot["gw_converged"].append(bool(info["converged"]))
        self.ot["sinkhorn_iters"].append(int(sum(info["sinkhorn_iters"])))
        self.ot["sinkhorn_solves"].append(len(info["sinkhorn_iters"]))
        self.ot["sinkhorn_at_cap"].append(sum(int(n >= cap) for n in info["sinkhorn_iters"]))
        self.ot["feature_sinkhorn_iters"].append(int(sum(feature_log.get("sinkhorn_iters", [0]))))


def pool_indices(n: int, batch_size: int, pool: int, seed: int) -> list[torch.Tensor]:
    """Positions in the training split of ``pool`` shuffled batches (as ``train.batches`` draws them)."""
    generator = torch.Generator().manual_seed(seed)
    out = []
    while len(out) < pool:
        order = torch.randperm(n, generator=generator)
        for start in range(0, n - n % batch_size if n > batch_size else n, batch_size):
            out.append(order[start:start + batch_size])
            if len(out) == pool:
                break
    return out


def config_for(head: str, encoder: EncoderConfig, batch_size: int, device: torch.device) -> TrainConfig:
    return TrainConfig(head=head, encoder=encoder, batch_size=batch_size, device=str(device), precision="float32",
                       strategy=STRATEGY, strategy_options=dict(STRATEGY_OPTIONS))


def _q(values: list[float]) -> tuple[float, float, float]:
    q = np.percentile(values, [25, 50, 75])
    return float(q[0]), float(q[1]), float(q[2])


def run(args) -> dict:
    device = resolve_device(args.device)
    start = time.perf_counter()
    dataset = load("synthetic-stage2")
    missing = with_missing(dataset, MISSING)
    log(f"data: synthetic-stage2, {len(dataset.train)} training eyes ({time.perf_counter() - start:.1f} s to load "
        f"or generate); missing: {MISSING}")
    index = pool_indices(len(dataset.train), args.batch_size, args.pool, args.seed)
    raw = {"both": [dataset.train.batch(i) for i in index], "missing": [missing.train.batch(i) for i in index]}
    raw_small = [dataset.train.batch(i[:args.small_batch]) for i in index]
    patterns = [[int(x) for x in (b["present"].all(1).sum(), (b["present"][:, 0] & ~b["present"][:, 1]).sum(),
                                  (~b["present"][:, 0] & b["present"][:, 1]).sum())] for b in raw["missing"]]
    log(f"missing batches (both, {dataset.spec.modality_names[0]} only, {dataset.spec.modality_names[1]} only): "
        f"{patterns}")
    encoder = EncoderConfig(arch=args.arch, width=args.width)

    rows: list[Row] = []
    timers: dict[str, FBOTimer] = {}
    for variant in ("both", "missing"):
        for head in HEADS:
            work = HeadWork(dataset, config_for(head, encoder, args.batch_size, device), raw[variant], device,
                            args.seed, margin=MARGIN)
            rows.append(Row(head, variant, args.batch_size, work))
            if variant == "both":
                timers[head] = FBOTimer(work)
    if args.small_batch:
        for head in SMALL_BATCH_HEADS:
            work = HeadWork(dataset, config_for(head, encoder, args.small_batch, device), raw_small, device, args.seed,
                            margin=MARGIN)
            rows.append(Row(head, "both", args.small_batch, work))
    log(f"built {len(rows)} rows and {len(timers)} component timers on {device}; parameters: "
        + ", ".join(f"{h} {sum(p.numel() for p in timers[h].model.parameters())}" for h in HEADS))

    entries = rows + list(timers.values())
    log(f"warmup: {args.warmup} rounds")
    for _ in range(args.warmup):
        for e in entries:
            e.visit(timed=False)
    t0 = time.perf_counter()
    for j in range(args.rounds):
        k = j % len(entries)
        for e in entries[k:] + entries[:k]:
            e.visit()
        if (j + 1) % max(1, args.rounds // 5) == 0 or j + 1 == args.rounds:
            log(f"  round {j + 1}/{args.rounds} ({time.perf_counter() - t0:.0f} s)")
    timed_s = time.perf_counter() - t0

    log("host reads per step")
    components = {h: t.samples for h, t in timers.items()}
    med = {h: {k: statistics.median(v) for k, v in c.items()} for h, c in components.items()}
    linear = {(r.variant, r.batch_size): r for r in rows if r.head == "linear"}

    def floor(r: Row, j: int | None) -> float | None:
        if r.batch_size != args.batch_size:
            return None
        c = components[r.head]
        comp = med[r.head] if j is None else {k: v[j] for k, v in c.items()}
        extra = 0.0
        if r.rima:
            ot = [g + f for g, f in zip(r.ot["gw_s"], r.ot["refresh_s"])]
            extra = statistics.median(ot) if j is None else ot[j]
        return r.spec.ideal({**comp, "nograd": 0.0, "noise": 0.0}) + extra

    out_rows = []
    for r in rows:
        lin = linear[(r.variant, r.batch_size)]
        stats = summarise(r.samples)
        row = {"head": r.head, "variant": r.variant, "batch_size": r.batch_size, **stats,
               "ratio_to_linear": statistics.median(t / tl for t, tl in zip(r.samples, lin.samples)),
               "host_reads_per_step": host_reads_per_step(r.runner), "samples_ms": [1e3 * x for x in r.samples]}
        if r.batch_size == args.batch_size:
            lin_floor = floor(lin, None)
            row.update(floor=FLOORS[r.head], floor_s=floor(r, None), floor_ratio_to_linear=floor(r, None) / lin_floor,
                       ratio_to_floor=statistics.median(t / floor(r, j) for j, t in enumerate(r.samples)))
        if r.rima:
            ot = [g + f for g, f in zip(r.ot["gw_s"], r.ot["refresh_s"])]
            row["ot"] = {
                **{k: v for k, v in r.ot.items()},
                "in_step_share": statistics.median(o / t for o, t in zip(r.ot["in_step_s"], r.samples)),
                "in_step_ms": 1e3 * statistics.median(r.ot["in_step_s"]),
                "standalone_ms": 1e3 * statistics.median(ot),
                "standalone_iqr_ms": 1e3 * (_q(ot)[2] - _q(ot)[0]),
                "gw_ms": 1e3 * statistics.median(r.ot["gw_s"]),
                "refresh_ms": 1e3 * statistics.median(r.ot["refresh_s"]),
                "standalone_share": statistics.median(o / t for o, t in zip(ot, r.samples)),
                "step_minus_in_step_ratio_to_linear": statistics.median(
                    (t - o) / tl for t, o, tl in zip(r.samples, r.ot["in_step_s"], lin.samples)),
                "us_per_sinkhorn_iter": statistics.median(
                    1e6 * g / n for g, n in zip(r.ot["gw_s"], r.ot["sinkhorn_iters"]) if n)}
        out_rows.append(row)
    meta = {"device": str(device), "device_name": device_name(device), "torch": torch.__version__,
            "numpy": np.__version__, "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
            "threads": torch.get_num_threads(), "blas_threads": os.environ.get("OPENBLAS_NUM_THREADS"),
            "git": git_revision(), "rounds": args.rounds, "warmup": args.warmup, "pool": args.pool,
            "batch_size": args.batch_size, "small_batch": args.small_batch, "model": f"{args.arch} x{args.width:g}",
            "data": "synthetic-stage2 defaults", "missing": {"train": MISSING.train, "seed": MISSING.seed},
            "missing_patterns_per_batch": patterns, "precision": "float32", "margin": MARGIN,
            "ot_solver": {"epsilon": rima_ot.EPSILON, "max_iter": rima_ot.MAX_ITER},
            "strategy": f"{STRATEGY} {STRATEGY_OPTIONS}, check_finite=False", "timed_s": timed_s,
            "command": " ".join(["benchmarks/bench_missing.py", *sys.argv[1:]])}
    return {"meta": meta,
            "components_ms": {h: {k: 1e3 * v for k, v in m.items()} for h, m in med.items()},
            "rows": out_rows}


def markdown(result: dict) -> str:
    meta = result["meta"]
    lines = [f"# Missing-modality methods: step cost ({meta['device_name']})", "",
             f"{meta['date']}, torch {meta['torch']}, {meta['threads']} thread(s), git {meta['git']}; "
             f"{meta['rounds']} rounds (warmup {meta['warmup']}), batch {meta['batch_size']} (and "
             f"{meta['small_batch']} for linear and rima), {meta['model']}, {meta['precision']}; {meta['data']}; "
             f"missing: train rates {meta['missing']['train']}, seed {meta['missing']['seed']}, per batch "
             f"(both, fundus only, oct only) {meta['missing_patterns_per_batch']}. "
             f"Command: `{meta['command']}` ({meta['timed_s']:.0f} s timed).", "",
             "Components (median ms, batch " + str(meta["batch_size"]) + ", both present): " + "; ".join(
                 f"{h} F {c['forward']:.1f}, B {c['backward']:.1f}, O {c['optimizer']:.1f}"
                 for h, c in result["components_ms"].items()) + ".", "",
             "| variant | batch | head | median ms | IQR ms | x linear | floor | floor x linear | x floor | "
             "OT in step ms | OT share | host reads |",
             "|---|---:|---|---:|---:|---:|---|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        ot = r.get("ot")
        fl = (r["floor"], f"{r['floor_ratio_to_linear']:.2f}", f"{r['ratio_to_floor']:.2f}") if "floor" in r \
            else ("", "", "")
        in_step, share = (f"{ot['in_step_ms']:.1f}", f"{ot['in_step_share']:.2f}") if ot else ("", "")
        lines.append(f"| {r['variant']} | {r['batch_size']} | {r['head']} | {1e3 * r['median_s']:.1f} | "
                     f"{1e3 * (r['p75_s'] - r['p25_s']):.1f} | {r['ratio_to_linear']:.2f} | {fl[0]} | {fl[1]} | "
                     f"{fl[2]} | {in_step} | {share} | {r['host_reads_per_step']} |")
    lines += ["", "RIMA's OT on its own (right after each timed step, on that step's features):", "",
              "| variant | batch | eyes aligned | GW ms | refresh ms | OT ms | OT IQR ms | OT x step | "
              "step without OT x linear | GW outer iters | Sinkhorn iters per GW | solves at the 2000 cap | "
              "us per Sinkhorn iter | feature Sinkhorn iters |",
              "|---|---:|---|---:|---:|---:|---:|---:|---:|---|---|---|---:|---|"]
    for r in result["rows"]:
        ot = r.get("ot")
        if not ot:
            continue

        def rng(v):
            return f"{int(np.median(v))} ({min(v)}-{max(v)})" if v else ""
        lines.append(f"| {r['variant']} | {r['batch_size']} | {rng(ot['eyes'])} | {ot['gw_ms']:.1f} | "
                     f"{ot['refresh_ms']:.1f} | {ot['standalone_ms']:.1f} | {ot['standalone_iqr_ms']:.1f} | "
                     f"{ot['standalone_share']:.2f} | {ot['step_minus_in_step_ratio_to_linear']:.2f} | "
                     f"{rng(ot['gw_outer'])} | {rng(ot['sinkhorn_iters'])} | "
                     f"{sum(ot['sinkhorn_at_cap'])} of {sum(ot['sinkhorn_solves'])} | "
                     f"{ot['us_per_sinkhorn_iter']:.1f} | {rng(ot['feature_sinkhorn_iters'])} |")
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=30, help="timed rounds (every row visited once per round)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
    ap.add_argument("--threads", type=int, default=1, help="torch threads, and NumPy's BLAS threads (default 1)")
    ap.add_argument("--device", default="cpu", help="cpu (the cpu profile), cuda, auto")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--small-batch", type=int, default=8,
                    help="batch size of the extra linear and rima rows (the first eyes of each batch; 0: none)")
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--width", type=float, default=0.25)
    ap.add_argument("--pool", type=int, default=4, help="distinct batches, cycled")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="output folder (default outputs/bench)")
    args = ap.parse_args(argv)
    if args.rounds < 1 or args.warmup < 0 or args.pool < 1 or not 0 <= args.small_batch <= args.batch_size:
        ap.error("need --rounds >= 1, --warmup >= 0, --pool >= 1 and 0 <= --small-batch <= --batch-size")
    return args


def main(argv=None) -> dict:
    return run_and_write(parse_args(argv), run, markdown, "missing")


if __name__ == "__main__":
    main()
