"""How far one training run's result moves with the CPU's kernel paths and thread count, in float32
and in float64: the measurement behind the smoke profile's ``PRECISION = "float64"``.

Each setting runs in its own process (torch reads ``ATEN_CPU_CAPABILITY`` and oneDNN reads
``ONEDNN_MAX_CPU_ISA`` once, at start-up): the smoke profile's naive-fusion fit (80 eyes, 32 px,
ResNet18 x0.125, one epoch, seed 0), whose test MSE notebook 01 checks to three decimals. Prints
every setting's test MSE in full and, per precision, the largest difference from the first
setting, which is what a three-decimal check has to absorb.

    .venv/bin/python benchmarks/precision_spread.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

SETTINGS = {
    "this machine, 1 thread": {"OMP_NUM_THREADS": "1"},
    "2 threads": {"OMP_NUM_THREADS": "2"},
    "ATEN_CPU_CAPABILITY=default (no vector kernels)": {"OMP_NUM_THREADS": "1", "ATEN_CPU_CAPABILITY": "default"},
    "ATEN_CPU_CAPABILITY=avx2": {"OMP_NUM_THREADS": "1", "ATEN_CPU_CAPABILITY": "avx2"},
    "ONEDNN_MAX_CPU_ISA=SSE41": {"OMP_NUM_THREADS": "1", "ONEDNN_MAX_CPU_ISA": "SSE41"},
}
CHILD = """
import json, sys, torch
from remd_core.workbench.setup import load_dataset, train_config
from remd_core.training import fit
from dataclasses import replace
dataset = load_dataset("synthetic-stage2", 80, 32, 2)
config = replace(train_config(1, "resnet18", 0.125, seed=0, precision=sys.argv[1]),
                 strategy_options={"unimodal_weight": 0.0})
result = fit(dataset, config, progress=False)
print(json.dumps({"test_mse": result.metrics["test"]["mse"], "threads": torch.get_num_threads(),
                  "capability": torch.backends.cpu.get_cpu_capability()}))
"""


def main() -> int:
    rows = {}
    for precision in ("float32", "float64"):
        for name, env in SETTINGS.items():
            out = subprocess.run([sys.executable, "-c", CHILD, precision], env={**os.environ, **env}, text=True,
                                 capture_output=True, check=True).stdout
            rows[(precision, name)] = json.loads(out.strip().splitlines()[-1])
            got = rows[(precision, name)]
            print(f"{precision}  {name:48s} test MSE {got['test_mse']!r:22}  (torch: {got['threads']} thread(s), "
                  f"{got['capability']} kernels)", flush=True)
    for precision in ("float32", "float64"):
        values = [rows[(precision, name)]["test_mse"] for name in SETTINGS]
        spread = max(abs(v - values[0]) for v in values)
        print(f"{precision}: largest difference from the first setting {spread:.3g} dB^2 "
              f"({spread / abs(values[0]):.2g} relative)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
