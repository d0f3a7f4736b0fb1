"""What one check runs: its sizes (``Plan``), its parts in order and each part's time budget."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

PARTS = ("tests", "data", "bench", "stages")
"""In the order they run: (a) the CUDA tests first (a broken CUDA stack shows there in seconds), then the
synthetic eyes that (b) the step benchmark and (c) both stages of Re-M3Dr train on."""

BUDGETS = {"setup": 20, "tests": 60, "data": 40, "bench": 100, "stages": 110}
"""Seconds each part may run before it is stopped (``setup``: installing carried wheels). Together 330 s: with
a lent machine's start (one to two minutes) the check stays within 8 minutes of device time. What each part
should take on an H100, estimated from this machine's measurements and the bench's counts of forward and
backward passes (docs/install.md): tests 30-40 s, data 15-25 s, bench 40-60 s, stages 45-70 s. A part stopped
at its budget still reports what it measured (the stages part: every fit seen, on the host clock)."""


@dataclass(frozen=True)
class Plan:
    """The scale of a check. The defaults are the paper's (section 5.2: ResNet34, 224 px, 32 B-scans,
    batch 8), on ``n_eyes`` synthetic eyes (``n_val`` and ``n_test`` of them held out, the rest trained
    on: 20 steps an epoch at batch 8), ``epochs`` per stage-1 modality and for stage 2.
    ``gen_processes``: processes generating the eyes (0: the cores less two, at most 12);
    ``loader_workers``: the streamed loader's worker processes in part (c). ``bench_*``: the step
    benchmark's sweeps (``bench_steps.py``'s ``--warmup``, ``--steps``, ``--repeats``, ``--pool``,
    ``--loader-batches``, ``--epoch-steps``) at batch ``batch_size`` only, over ``bench_strategies`` (None:
    every strategy; the plain step is always timed, as the reference of the ratios)."""

    device: str = "cuda"
    image_size: int = 224
    n_bscans: int = 32
    arch: str = "resnet34"
    width: float = 1.0
    batch_size: int = 8
    n_eyes: int = 192
    n_val: int = 16
    n_test: int = 16
    epochs: int = 3
    gen_processes: int = 0
    loader_workers: int = 4
    bench_warmup: int = 2
    bench_steps: int = 4
    bench_repeats: int = 2
    bench_pool: int = 4
    bench_loader_batches: int = 8
    bench_epoch_steps: int = 4
    bench_strategies: tuple[str, ...] | None = None
    budgets: dict = field(default_factory=lambda: dict(BUDGETS))
    dry_run: bool = False

    def __post_init__(self):
        if self.bench_strategies is not None:
            object.__setattr__(self, "bench_strategies", tuple(self.bench_strategies))
        if self.n_eyes - self.n_val - self.n_test < 2 * self.batch_size:
            raise ValueError(f"need at least two training batches: {self.n_eyes} eyes less {self.n_val} validation "
                             f"and {self.n_test} test eyes at batch {self.batch_size}")
        unknown = set(self.budgets) - set(BUDGETS)
        if unknown:
            raise ValueError(f"unknown parts {sorted(unknown)} in the budgets; known: {list(BUDGETS)}")
        if any(not (isinstance(v, (int, float)) and v > 0) for v in self.budgets.values()):
            raise ValueError(f"budgets must be positive seconds; got {self.budgets}")

    @property
    def n_train(self) -> int:
        return self.n_eyes - self.n_val - self.n_test

    @property
    def steps_per_epoch(self) -> int:
        return self.n_train // self.batch_size

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=1))

    @classmethod
    def load(cls, path: Path) -> "Plan":
        return cls(**json.loads(Path(path).read_text()))


DRY_RUN = Plan(device="cpu", image_size=16, n_bscans=2, arch="resnet18", width=0.125, batch_size=4, n_eyes=20,
               n_val=4, n_test=4, epochs=1, gen_processes=2, loader_workers=1, bench_warmup=0, bench_steps=1,
               bench_repeats=1, bench_pool=2, bench_loader_batches=2, bench_epoch_steps=1, dry_run=True)
"""Every part at a tiny scale (16 px, 2 B-scans, ResNet18 x0.125, 20 eyes, one epoch, one sweep): checks the
script end to end in a minute on a CPU (``--dry-run``)."""


def dry_run(device: str) -> Plan:
    return replace(DRY_RUN, device=device)
