"""Statistics, targets, the markdown table and the output files of the step-cost benchmark."""

from __future__ import annotations

import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from remd_core.files import write_json

from .strategies import PLAIN, OURS, Runner, StrategySpec

TARGETS = {"ratio_to_ideal_max": 1.10, "sgm_k1_max": 2.5, "sgm_k4_max": 2.05, "mmpareto_max": 1.9,
           "mmpareto_vs_official_max": 0.7}


def log(msg: str) -> None:
    print(msg, flush=True)


def summarise(samples: list[float]) -> dict:
    q = np.percentile(samples, [25, 50, 75])
    return {"n": len(samples), "median_s": float(q[1]), "p25_s": float(q[0]), "p75_s": float(q[2]),
            "min_s": float(min(samples)), "max_s": float(max(samples))}


def paired_ratios(samples: dict[str, list[float]], components: dict[str, list[float]], spec: StrategySpec,
                  plain: StrategySpec, peer: str | None) -> dict[str, list[float]]:
    """Per sweep j (every entry timed once, next to each other): ``T_s / T_plain``, the ideal
    ratio from that sweep's components, their quotient, and ``T_s / T_peer``."""
    out = {"ratio_to_plain": [], "ratio_to_ideal": [], "ratio_to_peer": []}
    for j, t in enumerate(samples[spec.name]):
        c = {k: v[j] for k, v in components.items()}
        ratio = t / samples[plain.name][j]
        out["ratio_to_plain"].append(ratio)
        out["ratio_to_ideal"].append(ratio / (spec.ideal(c) / plain.ideal(c)))
        if peer:
            out["ratio_to_peer"].append(t / samples[peer][j])
    return out


def build_rows(runners: dict[str, Runner], components: dict[str, list[float]], batch_size: int) -> list[dict]:
    """One row per strategy. Time: median and quartiles of its samples. Ratios: medians over
    sweeps of the paired ratios (``paired_ratios``), which cancels drift slower than one sweep.
    ``ideal_ratio`` is shown from the median components."""
    plain = runners[PLAIN].spec
    samples = {name: r.samples for name, r in runners.items()}
    med = {k: statistics.median(v) for k, v in components.items()}
    rows = []
    for name, r in runners.items():
        peer = r.spec.peer if r.spec.peer in runners else None
        paired = paired_ratios(samples, components, r.spec, plain, peer)
        stats = summarise(r.samples)
        row = {"batch_size": batch_size, "strategy": name, **stats,
               "ratio_to_plain": statistics.median(paired["ratio_to_plain"]),
               "ideal_ratio": r.spec.ideal(med) / plain.ideal(med),
               "ratio_to_ideal": statistics.median(paired["ratio_to_ideal"]),
               "ideal_s": r.spec.ideal(med), "consumption_samples_per_s": batch_size / stats["median_s"],
               "samples_ms": [1e3 * x for x in r.samples]}
        if peer:
            row["peer"] = peer
            row["ratio_to_peer"] = statistics.median(paired["ratio_to_peer"])
        rows.append(row)
    return rows


def check_targets(rows: list[dict], loader: dict) -> list[dict]:
    """Each target with the measured value and whether it is met."""
    by = {r["strategy"]: r for r in rows}
    out = []

    def add(what, value, limit, ok):
        out.append({"target": what, "value": value, "limit": limit, "met": bool(ok)})

    for name in OURS:
        if name in by:
            add(f"{name} within {TARGETS['ratio_to_ideal_max']}x of its ideal", by[name]["ratio_to_ideal"],
                TARGETS["ratio_to_ideal_max"], by[name]["ratio_to_ideal"] <= TARGETS["ratio_to_ideal_max"])
    for name, key in (("sgm_k1", "sgm_k1_max"), ("sgm_k4", "sgm_k4_max"), ("mmpareto", "mmpareto_max")):
        if name in by:
            add(f"{name} at most {TARGETS[key]}x plain", by[name]["ratio_to_plain"], TARGETS[key],
                by[name]["ratio_to_plain"] <= TARGETS[key])
    if "mmpareto" in by and "ratio_to_peer" in by["mmpareto"]:
        v = by["mmpareto"]["ratio_to_peer"]
        add(f"mmpareto at most {TARGETS['mmpareto_vs_official_max']}x the official-structured step", v,
            TARGETS["mmpareto_vs_official_max"], v <= TARGETS["mmpareto_vs_official_max"])
    for name in OURS:
        if name in by and by[name].get("host_reads_per_step") is not None:
            add(f"{name}: no host reads in the step", by[name]["host_reads_per_step"], 0,
                by[name]["host_reads_per_step"] == 0)
        if name in by and by[name].get("cuda_syncs_per_step") is not None:
            add(f"{name}: no device synchronisation in the step", by[name]["cuda_syncs_per_step"], 0,
                by[name]["cuda_syncs_per_step"] == 0)
    fastest = max((r["consumption_samples_per_s"] for r in rows), default=0.0)
    if loader and fastest:
        add("loader samples/s at least the fastest strategy's consumption", loader["samples_per_s"] / fastest, 1.0,
            loader["samples_per_s"] >= fastest)
    return out


def markdown(result: dict) -> str:
    meta = result["meta"]
    lines = [f"# Step cost per strategy: {meta['device_name']} ({meta['profile']} profile)", "",
             f"{meta['date']}, torch {meta['torch']}, {meta['threads']} threads, git {meta['git']}; "
             f"{meta['steps']} sweeps x {meta['repeats']} rounds (warmup {meta['warmup']}); model {meta['model']}; "
             f"data {meta['data']}.", ""]
    for bs, block in result["batches"].items():
        if "error" in block:
            lines += [f"## Batch {bs}", "", f"Not measured: {block['error']} ({block.get('detail', '')}).", ""]
            continue
        c = block["components_ms"]
        lines += [f"## Batch {bs}", "",
                  f"Components (median ms): F {c['forward']:.1f}, B {c['backward']:.1f}, G (graph-free F) "
                  f"{c['nograd']:.1f}, O (optimizer) {c['optimizer']:.1f}, E (OGM noise) {c['noise']:.2f}.", "",
                  "| strategy | median ms | IQR ms | x plain | ideal x | /ideal | vs peer | peak MiB | +step MiB "
                  "| host reads | samples/s |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in block["rows"]:
            peer = f"{r['ratio_to_peer']:.2f}" if "ratio_to_peer" in r else ""
            mem = r.get("memory") or {}
            reads = r.get("host_reads_per_step")
            syncs = r.get("cuda_syncs_per_step")
            reads_txt = "" if reads is None else str(reads) + ("" if syncs is None else f" ({syncs} syncs)")
            lines.append(
                f"| {r['strategy']} | {1e3 * r['median_s']:.1f} | {1e3 * (r['p75_s'] - r['p25_s']):.1f} | "
                f"{r['ratio_to_plain']:.2f} | {r['ideal_ratio']:.2f} | {r['ratio_to_ideal']:.2f} | {peer} | "
                f"{mem.get('peak_mib', float('nan')):.0f} | {mem.get('step_mib', float('nan')):.0f} | {reads_txt} | "
                f"{r['consumption_samples_per_s']:.1f} |")
        loader = block.get("loader")
        if loader:
            fastest = max(r["consumption_samples_per_s"] for r in block["rows"])
            lines += ["", f"Loader: {loader['samples_per_s']:.1f} samples/s over {loader['batches']} batches; the "
                          f"fastest strategy consumes {fastest:.1f} samples/s (headroom "
                          f"{loader['samples_per_s'] / fastest:.1f}x)."]
        epochs = block.get("epoch")
        if epochs:
            lines += ["", "| strategy (epoch pass, loader included) | samples/s | GPU busy |", "|---|---:|---:|"]
            for name, e in epochs.items():
                busy = "" if e["gpu_busy_fraction"] is None else f"{e['gpu_busy_fraction']:.0%}"
                lines.append(f"| {name} | {e['samples_per_s']:.1f} | {busy} |")
        lines += ["", "| target | value | limit | met |", "|---|---:|---:|---|"]
        for t in block["targets"]:
            lines.append(f"| {t['target']} | {t['value']:.2f} | {t['limit']} | {'yes' if t['met'] else 'NO'} |")
        lines.append("")
    return "\n".join(lines)


def device_tag(device: torch.device) -> str:
    if device.type != "cuda":
        return device.type
    name = torch.cuda.get_device_name(device).lower()
    return "cuda-" + "".join(ch if ch.isalnum() else "-" for ch in name).strip("-")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{model}, {os.cpu_count()} cores"


def run_and_write(args, run, markdown_of, name: str) -> dict:
    """A benchmark script's ``main``: ``run(args)`` on ``args.threads`` torch threads, timed, then its table
    (``markdown_of(result)``) printed and written with the result to ``<out>/<name>-<device>.json`` and
    ``.md`` (``args.out``, default ``outputs/bench``)."""
    from remd_core.paths import outputs_dir
    from remd_core.training import resolve_device

    torch.set_num_threads(args.threads)
    wall = time.perf_counter()
    result = run(args)
    result["meta"]["wall_s"] = time.perf_counter() - wall
    out = Path(args.out) if args.out else outputs_dir() / "bench"
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{name}-{device_tag(resolve_device(args.device))}"
    text = markdown_of(result)
    write_json(out / f"{stem}.json", result, indent=1)
    (out / f"{stem}.md").write_text(text)
    print()
    print(text)
    print(f"wrote {out / stem}.json and .md ({result['meta']['wall_s']:.0f} s)")
    return result


def write_outputs(result: dict, out: Path, stem: str) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / f"{stem}.json", out / f"{stem}.md"
    write_json(json_path, result, indent=1)
    md_path.write_text(markdown(result) if "batches" in result else end_to_end_markdown(result))
    return json_path, md_path



def end_to_end_markdown(result: dict) -> str:
    meta = result["meta"]
    lines = [f"# End to end: {meta['device_name']}", "", f"{meta['date']}, torch {meta['torch']}, "
             f"{meta['threads']} threads, git {meta['git']}.", "", "| run | seconds | notes |", "|---|---:|---|"]
    for name, r in result["runs"].items():
        notes = ", ".join(f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}" for k, v in r.items() if k != "seconds")
        lines.append(f"| {name} | {r['seconds']:.1f} | {notes} |")
    return "\n".join(lines) + "\n"

