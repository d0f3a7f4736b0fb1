"""The one report of a check: ``gpu-check.json`` (everything) and ``gpu-check.md`` (what a person reads),
written together into one folder."""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

PART_TITLES = {"setup": "setup: packages", "tests": "(a) CUDA tests", "data": "synthetic eyes",
               "bench": "(b) step benchmark", "stages": "(c) Re-M3Dr, both stages"}


def build_report(parts: dict, plan, info: dict, git: str, wall_s: float, command: str) -> dict:
    """The report: ``meta`` (command, date, git, the device's description, the plan, the budgets, the wall
    time; the budget: the parts run), each part's result and ``passed`` (every part run passed)."""
    meta = {"command": command, "date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M"), "git": git,
            "dry_run": plan.dry_run, "device_info": info, "plan": asdict(plan),
            "scale": f"{plan.arch} x{plan.width:g}, {plan.image_size} px, {plan.n_bscans} B-scans, batch {plan.batch_size}, "
                     f"{plan.n_eyes} eyes, {plan.epochs} epoch(s) a stage",
            "total_budget_s": sum(plan.budgets.get(p, 0) for p in parts), "wall_s": round(wall_s, 1)}
    return {"meta": meta, "parts": parts, "passed": all(r.get("status") == "pass" for r in parts.values())}


def write_report(report: dict, folder: Path) -> tuple[Path, Path]:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    json_path, md_path = folder / "gpu-check.json", folder / "gpu-check.md"
    json_path.write_text(json.dumps(report, indent=1, default=str))
    md_path.write_text(markdown(report))
    return json_path, md_path


def headline(part: str, result: dict) -> str:
    """The numbers of one part in a line."""
    if result.get("status") in ("skipped",) or not result:
        return result.get("detail", "")
    if part == "setup":
        return (f"{result.get('installed', 0)} wheels installed" if result.get("installed") else "nothing to install")
    if part == "tests":
        c = result.get("counts") or {}
        return ", ".join(f"{v} {k}" for k, v in c.items() if v) or "no test ran"
    if part == "data":
        return (f"{result.get('eyes')} eyes ({result.get('mib')} MiB) generated in {result.get('generate_s')} s on "
                f"{result.get('processes')} processes, decoded in {result.get('decode_s')} s")
    if part == "bench":
        s = result.get("summary") or {}
        if not s:
            return ""
        worst = s.get("worst_ratio_to_ideal") or {}
        return (f"{s['strategies']} strategies, plain step {s['plain_step_ms']} ms, targets met {s['targets_met']}, "
                f"worst /ideal {worst.get('ratio')} ({worst.get('strategy')})")
    if part == "stages":
        out = []
        for f in result.get("fits") or []:
            step = f.get("gpu_step_ms") or f.get("host_step_ms") or {}
            busy = (f.get("gpu_busy") or {}).get("share")
            out.append(f"{f['fit']}: {step.get('median')} ms/step" + (f", busy {busy:.0%}" if busy is not None else ""))
        return "; ".join(out)
    return ""


def markdown(report: dict) -> str:
    meta = report["meta"]
    dev = meta["device_info"]
    lines = [f"# GPU check: {dev.get('device_name')} ({meta['date_utc']})", "",
             f"torch {dev.get('torch')}, CUDA {dev.get('cuda')}, cuDNN {dev.get('cudnn')}, driver {dev.get('driver')}, "
             f"Python {dev.get('python')}, {dev.get('cpus')} CPUs; git {meta.get('git')}; "
             f"{'dry run (tiny sizes)' if meta.get('dry_run') else 'the paper scale'}: {meta['scale']}.", "",
             f"Command: `{meta['command']}`. Verdict: **{'PASS' if report['passed'] else 'FAIL'}** in "
             f"{meta['wall_s']:.0f} s (budget {meta['total_budget_s']} s).", "",
             "| part | status | wall s | budget s | numbers |", "|---|---|---:|---:|---|"]
    for part, result in report["parts"].items():
        lines.append(f"| {PART_TITLES.get(part, part)} | {result.get('status')} | {result.get('wall_s', '')} | "
                     f"{result.get('budget_s', '')} | {headline(part, result)} |")
    lines.append("")
    for part, result in report["parts"].items():
        body = _section(part, result)
        if body or result.get("detail") or result.get("log_tail"):
            lines += [f"## {PART_TITLES.get(part, part)}", ""]
            if result.get("detail"):
                lines += [f"{result['status']}: {result['detail']}", ""]
            lines += body
            if result.get("log_tail"):
                lines += ["End of its log:", "", "```", result["log_tail"], "```", ""]
    return "\n".join(lines)


def _section(part: str, result: dict) -> list[str]:
    if part == "tests" and result.get("tests"):
        out = ["| test | outcome | s | message |", "|---|---|---:|---|"]
        out += [f"| {t['test']} | {t['outcome']} | {t['seconds']:.1f} | {t['message']} |" for t in result["tests"]]
        return out + [""]
    if part == "bench" and result.get("result"):
        from stepbench.report import markdown as bench_markdown

        text = bench_markdown(result["result"]).replace("\n## ", "\n### ")
        path = result.get("path") or {}
        return [f"Convolution {path.get('conv')}: output {path.get('conv_output_dtype')}, weight channels-last "
                f"{path.get('conv_weight_channels_last')}.", "", *text.splitlines()[2:], ""]
    if part == "stages" and result.get("fits"):
        s = result.get("setting", {})
        out = [f"{s.get('recipe')} with the {s.get('preset')} preset: {s.get('model')}, batch {s.get('batch_size')}, "
               f"{s.get('image_size')} px, {s.get('n_bscans')} B-scans, {s.get('epochs_per_stage')} epochs a stage of "
               f"{s.get('steps_per_epoch')} steps ({s.get('train_eyes')} training eyes), {s.get('optimizer')}, "
               f"{s.get('regression_loss')}, precision {s.get('precision')}; loader: {s.get('loader')}. Step time: the "
               "interval between consecutive optimizer steps of an epoch (CUDA events on the GPU's timeline; host "
               "clock beside it), the first step of each epoch left out. GPU busy: the mean of NVML utilization.gpu "
               f"sampled every 100 ms while the epochs' steps ran ({result.get('busy_source')}).", "",
               "| fit | steps | step ms (GPU, median) | p10-p90 | host ms (median) | eyes/s | GPU busy | samples | "
               "peak GiB | training s |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for f in result["fits"]:
            g, h, b = f.get("gpu_step_ms") or {}, f.get("host_step_ms") or {}, f.get("gpu_busy") or {}
            busy = "" if b.get("share") is None else f"{b['share']:.0%}"
            out.append(f"| {f['fit']} | {f['steps']} | {g.get('median', '')} | "
                       f"{g.get('p10', '')}-{g.get('p90', '')} | {h.get('median', '')} | {f.get('eyes_per_s') or ''} | "
                       f"{busy} | {b.get('samples', '')} | {f.get('peak_gib') or ''} | {f.get('train_s')} |")
        seconds = result.get("stage_seconds") or {}
        out += ["", f"Stage 1 took {seconds.get('stage1', '?')} s and stage 2 {seconds.get('stage2', '?')} s in all "
                    f"(validation, checkpoints and the final report included); stage 2's test R^2 "
                    f"{_num(result.get('stage2_test_r2'))} after {s.get('epochs_per_stage')} epochs (not a result: "
                    "a check that it trains).", ""]
        if result.get("busy_problem"):
            out += [f"GPU busy share: {result['busy_problem']}.", ""]
        return out
    if part == "data" and result.get("splits"):
        return [f"Splits {result['splits']}; {result.get('mib_per_eye')} MiB an eye in the store; decoded "
                f"{result.get('decoded_eyes')} eyes with {result.get('decode_workers')} process(es).", ""]
    return []


def _num(value) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) else str(value)
