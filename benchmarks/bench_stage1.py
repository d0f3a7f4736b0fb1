"""Step cost of the stage-1 objectives and of the 3-D OCT encoders, side by side (issue 12, item 5).

In one process, on the same batches and device, this times one training step of single-modality
models built exactly as training builds them (``remd_core.training.build_model`` and
``build_objective`` from a ``TrainConfig``, ``objective.prepare``, ``objective.closure(model, inputs,
target, margin=0.4)``, the strategy ``build_strategy("joint", {"unimodal_weight": 0.0})`` and
``strategy.step``):

=============  ===============================================================  ==============
row            ``TrainConfig``                                                  floor
=============  ===============================================================  ==============
plain          ``contrastive=False``                                            F + B + O
am-supcon      ``contrastive=True`` (AM-SupCon, stage 1 of Re-M3Dr)            F + B + O
simclr         ``contrastive=True, contrastive_loss="simclr"``                  2F + 2B + O
rnc            ``contrastive_loss="rnc"`` (Rank-N-Contrast)                     2F + 2B + O
echomen        ``contrastive_loss="echomen"``                                   2F + 2B + O
conr           ``contrastive_loss="conr"``                                      2F + 2B + O
lds            ``lds=True`` (LDS-weighted MSE)                                  F + B + O
fds            ``fds=True`` (features calibrated before the head)               F + B + O
enc-3d         OCT, plain objective, ``EncoderConfig(oct_encoder="3d")``        F' + B' + O'
enc-egvfi      OCT, plain objective, ``oct_encoder="egvfi"``                    F' + B' + O'
enc-sf3d       OCT, plain objective, ``oct_encoder="sf3d"``                     F' + B' + O'
=============  ===============================================================  ==============

rows ``plain`` to ``fds`` once on an OCT model (the default ``shared2d`` encoder: one 2-D ResNet
per B-scan) and once on a fundus model; the ``enc-*`` rows on OCT only, against OCT's ``plain``
(which is ``shared2d``). All at the cpu profile's scale: ``synthetic-stage2`` (700 eyes, 64 px,
8 B-scans), batch 16, ResNet18 x0.25 (the 3-D encoders at the same ``width``), float32, one torch
thread (``--threads``).

Floors. ``F`` (one forward pass with its graph and the plain loss), ``B`` (its backward) and ``O``
(one AdamW step) are timed on their own in the same rounds on a copy of each model with the plain
objective, with ``stepbench``'s component timer (``F``, ``B``, ``O`` only). The four two-view
objectives run the model on two augmented views of the batch and their contrastive term depends on
both views' outputs, so the backward pass runs through both graphs: floor ``2F + 2B + O``, by
construction about twice a plain step. AM-SupCon, LDS and FDS add a loss term or a per-sample
weighting or calibration on ``[16, d]`` tensors to the same single pass: floor ``F + B + O``. The
``enc-*`` rows have their own encoder's components (``F'``, ``B'``, ``O'``, timed the same way).

FDS also encodes the whole training split once more at every epoch end
(``remd_core.training.update_fds``, no graph, evaluation mode). That pass is timed on its own
(``--fds-updates`` times per modality, spread over the run; one untimed update first, so the timed
steps are calibrated, as in every epoch after the first) and reported per training step: its time
over the steps of an epoch (``len(train) // batch``, 26 at the cpu profile).

How it is measured (the house rules of ``make bench``, ``benchmarks/bench_steps.py``):

- Every row (its own model and AdamW, the same initial weights per modality and encoder) and every
  component timer is visited once per round, the order rotating from round to round, after
  ``--warmup`` untimed rounds; a visit runs ``--steps`` consecutive steps, each timed on its own,
  and the round's sample is their mean. ``--rounds`` timed rounds.
- Times are the median and interquartile range over rounds. ``x plain`` is PAIRED: the median over
  rounds of the row's time over the same modality's ``plain`` time in that round. ``x floor``: the
  median over rounds of the row's time over its floor from the same round's components.
  ``floor x plain``: the row's floor over plain's, from the median components.
- Host reads: one more step per row with ``Tensor.item``, ``tolist``, ``__bool__``, ``__float__``,
  ``__int__``, ``numpy`` and ``cpu`` (of a device tensor) counted (``stepbench.measure``), with a stub
  optimizer. As in ``make bench`` the strategies run with ``check_finite=False`` (the trainer keeps
  its one host synchronisation per step, the same in every row).
- The raw batches (``--pool`` of them, cycled) are drawn once; every row prepares them with its own
  objective (augmentation, standardised targets, the second view, FDS's labels) from the same seed,
  so the first view is the same augmented batch in every row.

Writes ``outputs/bench/stage1-<device>.json`` and ``.md`` and prints the table. The timing parts come
from ``benchmarks/stepbench`` (``ConfigWorkload``, ``Runner``, ``StrategySpec``, ``ComponentTimer``,
``host_reads_per_step``, ``count_host_reads``, ``summarise``).

    .venv/bin/python benchmarks/bench_stage1.py                  # defaults, about 3-4 min here
    .venv/bin/python benchmarks/bench_stage1.py --rounds 10 --warmup 1 --fds-updates 1   # quick look
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the stepbench package next to this script

from remd_core.data import load  # noqa: E402
from remd_core.experiments.provenance import git_revision  # noqa: E402
from remd_core.models import EncoderConfig  # noqa: E402
from remd_core.training import TrainConfig, resolve_device, update_fds  # noqa: E402
from stepbench.inputs import ConfigWorkload  # noqa: E402
from stepbench.measure import count_host_reads, host_reads_per_step  # noqa: E402
from stepbench.report import device_name, log, run_and_write, summarise  # noqa: E402
from stepbench.strategies import ComponentTimer, Runner, StrategySpec  # noqa: E402

MARGIN = 0.4
TARGET = 1.3  # issue 12: each stage-1 objective within 1.3x of a plain stage-1 step
STRATEGY, STRATEGY_OPTIONS = "joint", {"unimodal_weight": 0.0}

# name, TrainConfig overrides, forward and backward passes of the floor
OBJECTIVES = (
    ("plain", {}, 1),
    ("am-supcon", {"contrastive": True}, 1),
    ("simclr", {"contrastive": True, "contrastive_loss": "simclr"}, 2),
    ("rnc", {"contrastive": True, "contrastive_loss": "rnc"}, 2),
    ("echomen", {"contrastive": True, "contrastive_loss": "echomen"}, 2),
    ("conr", {"contrastive": True, "contrastive_loss": "conr"}, 2),
    ("lds", {"lds": True}, 1),
    ("fds", {"fds": True}, 1),
)
OCT_ENCODERS = ("3d", "egvfi", "sf3d")  # beside the default shared2d (OCT's plain row)


class FBOTimer(ComponentTimer):
    """``stepbench``'s component timer with F, B and O only (G and E are not in these floors)."""

    def once(self) -> None:
        compute = self.work.closure(self.model, self.t)
        self.optimizer.zero_grad(set_to_none=True)
        dt, total = self._time(lambda: compute().total(1.0))
        self.samples["forward"].append(dt)
        self.samples["backward"].append(self._time(total.backward)[0])
        self.samples["optimizer"].append(self._time(self.optimizer.step)[0])
        self.samples["nograd"].append(0.0)
        self.samples["noise"].append(0.0)
        self.t += 1


class Row:
    def __init__(self, name: str, modality: str, model_key: str, work: ConfigWorkload, n_views: int, steps: int):
        self.name, self.modality, self.model_key, self.work = name, modality, model_key, work
        self.spec = StrategySpec(name, STRATEGY, STRATEGY_OPTIONS, n_forward=n_views, n_backward=n_views, cycle=steps)
        self.runner = Runner(self.spec, work)

    @property
    def label(self) -> str:
        return f"{self.modality} {self.name}"

    def visit(self, timed: bool = True) -> None:
        self.runner.visit(timed)

    @property
    def samples(self) -> list[float]:
        return self.runner.samples


def raw_pool(dataset, batch_size: int, pool: int, seed: int) -> list[dict]:
    generator = torch.Generator().manual_seed(seed)
    train, out = dataset.train, []
    while len(out) < pool:
        for batch in train.batches(batch_size, shuffle=True, generator=generator, drop_last=len(train) > batch_size):
            out.append(batch)
            if len(out) == pool:
                break
    return out


def config_for(modality: str, encoder: EncoderConfig, batch_size: int, device: torch.device,
               **overrides) -> TrainConfig:
    return TrainConfig(modalities=(modality,), encoder=encoder, batch_size=batch_size, device=str(device),
                       precision="float32", strategy=STRATEGY, strategy_options=dict(STRATEGY_OPTIONS), **overrides)


def timed_fds_update(row: Row, epoch: int, count: bool = False) -> tuple[float, int | None]:
    """One end-of-epoch FDS update of ``row``'s model, as ``fit`` runs it; seconds (and host reads)."""
    work = row.work
    args = (row.runner.model, work.dataset.train, work.objective.kinds, work.config.eval_batch_size, work.device, epoch)
    work.sync()
    if count:
        with count_host_reads() as counter:
            start = time.perf_counter()
            update_fds(*args)
            work.sync()
            return time.perf_counter() - start, counter["n"]
    start = time.perf_counter()
    update_fds(*args)
    work.sync()
    return time.perf_counter() - start, None


def run(args) -> dict:
    device = resolve_device(args.device)
    start = time.perf_counter()
    dataset = load("synthetic-stage2")
    steps_per_epoch = max(1, len(dataset.train) // args.batch_size)
    log(f"data: synthetic-stage2, {len(dataset.train)} training eyes, {steps_per_epoch} steps an epoch at batch "
        f"{args.batch_size} ({time.perf_counter() - start:.1f} s to load or generate)")
    raw = raw_pool(dataset, args.batch_size, args.pool, args.seed)
    base = EncoderConfig(arch=args.arch, width=args.width)

    rows: list[Row] = []
    timers: dict[str, FBOTimer] = {}   # model key -> F, B, O on that model with the plain objective
    for modality in ("oct", "fundus"):
        for name, overrides, views in OBJECTIVES:
            work = ConfigWorkload(dataset, config_for(modality, base, args.batch_size, device, **overrides), raw, device,
                                  args.seed, margin=MARGIN)
            rows.append(Row(name, modality, modality, work, views, args.steps))
            if name == "plain":
                timers[modality] = FBOTimer(work)
    for enc in OCT_ENCODERS:
        encoder = EncoderConfig(arch=args.arch, width=args.width, oct_encoder=enc)
        work = ConfigWorkload(dataset, config_for("oct", encoder, args.batch_size, device), raw, device, args.seed,
                              margin=MARGIN)
        rows.append(Row(f"enc-{enc}", "oct", f"oct-{enc}", work, 1, args.steps))
        timers[f"oct-{enc}"] = FBOTimer(work)
    log(f"built {len(rows)} rows and {len(timers)} component timers on {device} "
        f"({sum(p.numel() for p in rows[0].runner.model.parameters())} parameters in the OCT model)")

    fds_rows = [r for r in rows if r.name == "fds"]
    fds = {r.modality: {"samples_s": [], "epoch": 0} for r in fds_rows}
    for r in fds_rows:  # epoch 0's update: from here on each forward calibrates, as after every epoch
        _, reads = timed_fds_update(r, 0, count=True)
        fds[r.modality].update(host_reads_per_update=reads, epoch=1)

    entries = rows + list(timers.values())
    log(f"warmup: {args.warmup} rounds")
    for _ in range(args.warmup):
        for e in entries:
            e.visit(timed=False)
    update_rounds = {round(i * args.rounds / (args.fds_updates + 1)) for i in range(1, args.fds_updates + 1)} \
        if args.fds_updates > 0 else set()
    t0 = time.perf_counter()
    for j in range(args.rounds):
        k = j % len(entries)
        for e in entries[k:] + entries[:k]:
            e.visit()
        if j in update_rounds:
            for r in fds_rows:
                seconds, _ = timed_fds_update(r, fds[r.modality]["epoch"])
                fds[r.modality]["samples_s"].append(seconds)
                fds[r.modality]["epoch"] += 1
        if (j + 1) % max(1, args.rounds // 5) == 0 or j + 1 == args.rounds:
            log(f"  round {j + 1}/{args.rounds} ({time.perf_counter() - t0:.0f} s)")
    timed_s = time.perf_counter() - t0

    log("host reads per step")
    components = {key: t.samples for key, t in timers.items()}
    med = {key: {k: statistics.median(v) for k, v in c.items()} for key, c in components.items()}
    plain = {r.modality: r for r in rows if r.name == "plain"}
    out_rows = []
    for r in rows:
        p = plain[r.modality]
        c = components[r.model_key]
        floors = [r.spec.ideal({k: v[j] for k, v in c.items()}) for j in range(len(r.samples))]
        pc = components[p.model_key]
        plain_floor_med = p.spec.ideal(med[p.model_key])
        stats = summarise(r.samples)
        out_rows.append({
            "row": r.name, "modality": r.modality, "model": r.model_key, **stats,
            "ratio_to_plain": statistics.median(t / tp for t, tp in zip(r.samples, p.samples)),
            "floor_s": r.spec.ideal(med[r.model_key]), "floor_passes": r.spec.n_forward,
            "floor_ratio_to_plain": r.spec.ideal(med[r.model_key]) / plain_floor_med,
            "ratio_to_floor": statistics.median(t / f for t, f in zip(r.samples, floors)),
            "plain_floor_s": statistics.median(p.spec.ideal({k: v[j] for k, v in pc.items()})
                                               for j in range(len(p.samples))),
            "host_reads_per_step": host_reads_per_step(r.runner),
            "samples_ms": [1e3 * x for x in r.samples]})
    fds_out = {}
    for r in fds_rows:
        f = fds[r.modality]
        step = statistics.median(r.samples)
        plain_step = statistics.median(plain[r.modality].samples)
        if f["samples_s"]:
            upd = statistics.median(f["samples_s"])
            fds_out[r.modality] = {
                "update_s": upd, "update_samples_s": f["samples_s"], "steps_per_epoch": steps_per_epoch,
                "per_step_s": upd / steps_per_epoch, "host_reads_per_update": f["host_reads_per_update"],
                "step_plus_update_ratio_to_plain": (step + upd / steps_per_epoch) / plain_step}
        else:
            fds_out[r.modality] = {"host_reads_per_update": f["host_reads_per_update"],
                                   "steps_per_epoch": steps_per_epoch}
    meta = {"device": str(device), "device_name": device_name(device), "torch": torch.__version__,
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"), "threads": torch.get_num_threads(),
            "git": git_revision(), "rounds": args.rounds, "steps": args.steps, "warmup": args.warmup,
            "pool": args.pool, "batch_size": args.batch_size, "model": f"{args.arch} x{args.width:g}",
            "data": "synthetic-stage2 defaults", "precision": "float32", "margin": MARGIN,
            "strategy": f"{STRATEGY} {STRATEGY_OPTIONS}, check_finite=False", "timed_s": timed_s,
            "command": " ".join(sys.argv)}
    return {"meta": meta, "components_ms": {k: {n: 1e3 * v for n, v in m.items() if n in ("forward", "backward",
                                                                                          "optimizer")}
                                            for k, m in med.items()},
            "rows": out_rows, "fds_update": fds_out, "target": TARGET}


def markdown(result: dict) -> str:
    meta = result["meta"]
    lines = [f"# Stage-1 objectives and OCT encoders: step cost ({meta['device_name']})", "",
             f"{meta['date']}, torch {meta['torch']}, {meta['threads']} thread(s), git {meta['git']}; {meta['rounds']} "
             f"rounds x {meta['steps']} step(s) (warmup {meta['warmup']}), batch {meta['batch_size']}, "
             f"{meta['model']}, "
             f"{meta['precision']}; {meta['data']}. Command: `{meta['command']}`.", "",
             "Components (median ms, plain objective): " + "; ".join(
                 f"{k} F {c['forward']:.1f}, B {c['backward']:.1f}, O {c['optimizer']:.1f}"
                 for k, c in result["components_ms"].items()) + ".", "",
             "| modality | row | median ms | IQR ms | x plain | floor | floor x plain | x floor | host reads |",
             "|---|---|---:|---:|---:|---|---:|---:|---:|"]
    for r in result["rows"]:
        floor = "2F+2B+O" if r["floor_passes"] == 2 else ("F'+B'+O'" if r["row"].startswith("enc-") else "F+B+O")
        lines.append(f"| {r['modality']} | {r['row']} | {1e3 * r['median_s']:.1f} | "
                     f"{1e3 * (r['p75_s'] - r['p25_s']):.1f} | {r['ratio_to_plain']:.2f} | {floor} | "
                     f"{r['floor_ratio_to_plain']:.2f} | {r['ratio_to_floor']:.2f} | {r['host_reads_per_step']} |")
    lines.append("")
    for modality, f in result["fds_update"].items():
        if "update_s" in f:
            lines.append(f"FDS end-of-epoch update ({modality}): {1e3 * f['update_s']:.0f} ms (median of "
                         f"{len(f['update_samples_s'])}), {1e3 * f['per_step_s']:.1f} ms per step over "
                         f"{f['steps_per_epoch']} steps an epoch; fds step plus that share: "
                         f"{f['step_plus_update_ratio_to_plain']:.2f}x plain; {f['host_reads_per_update']} host "
                         f"reads per update.")
    objectives = [r for r in result["rows"] if not r["row"].startswith("enc-") and r["row"] != "plain"]
    over = [f"{r['modality']} {r['row']} {r['ratio_to_plain']:.2f}" for r in objectives
            if r["ratio_to_plain"] > result["target"]]
    lines += ["", f"Target: each stage-1 objective within {result['target']}x of plain: "
              + ("met by all." if not over else f"not met by {', '.join(over)}.")]
    plain_reads = {r["modality"]: r["host_reads_per_step"] for r in result["rows"] if r["row"] == "plain"}
    extra = [f"{r['modality']} {r['row']} ({r['host_reads_per_step']})" for r in result["rows"]
             if r["host_reads_per_step"] > plain_reads[r["modality"]]]
    lines.append("Host reads beyond the plain step: " + ("none." if not extra else ", ".join(extra) + "."))
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=25, help="timed rounds (every row visited once per round)")
    ap.add_argument("--steps", type=int, default=1,
                    help="consecutive steps per visit, each timed; the sample is their mean")
    ap.add_argument("--warmup", type=int, default=3, help="untimed rounds first")
    ap.add_argument("--fds-updates", type=int, default=3, help="timed FDS end-of-epoch updates per modality (0: skip)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--device", default="cpu", help="cpu (the cpu profile), cuda, auto")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--width", type=float, default=0.25)
    ap.add_argument("--pool", type=int, default=4, help="distinct batches, cycled")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="output folder (default outputs/bench)")
    args = ap.parse_args(argv)
    if args.rounds < 1 or args.steps < 1 or args.warmup < 0 or args.pool < 1 or args.fds_updates < 0:
        ap.error("need --rounds >= 1, --steps >= 1, --warmup >= 0, --pool >= 1 and --fds-updates >= 0")
    return args


def main(argv=None) -> dict:
    return run_and_write(parse_args(argv), run, markdown, "stage1")


if __name__ == "__main__":
    main()
