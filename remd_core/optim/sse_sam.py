"""SSE-SAM (Lyu et al., "SSE-SAM: Balancing Head and Tail Classes Gradually through Stage-Wise
SAM", AAAI 2025, section "Method": stage-wise SAM), adapted to regression, as a comparator of the
Re-M3Dr paper (Table 1).

Head and tail samples are split as in ``imbsam`` (the "many" MD region of the training labels vs
"medium" + "few"), and each group's loss is SAM-perturbed with its own radius:

    g = grad L_head(w + e_head) + grad L_tail(w + e_tail),   e_k = rho_k * g_k / (||g_k|| + eps)

In the first stage (the first ``head_until`` fraction of training) both radii act, so the model
seeks flat minima for head and tail alike (SAM's behaviour on the whole batch, but with the tail not
drowned by the head's gradient); afterwards ``rho_head = 0`` and the step is ImbSAM's (head plain,
tail perturbed), which lets the tail catch up.

How the strategy knows how far training is: ``total_steps`` (config, or ``set_total_steps(n)``,
which sets it unless the option was given: the trainer or your loop knows ``epochs * batches per
epoch``), and its own step counter (``steps``, saved in its state, so a resumed run switches at the
same step). The switch is at step ``floor(head_until *
total_steps)``. ``total_steps = 0`` (unknown) keeps both radii for the whole run (SAM-like), and the
logs' ``rho_head`` shows it. We count steps ourselves rather than read ``step=``, so a loop that does
not pass ``step`` still switches.

Where we differ from the official code: the official SSE-SAM switches by epoch, on classes, and
evaluates head and tail losses on sample subsets; we switch by step (the same point for one
learning-rate schedule, and exact on resumption mid-epoch), split by MD region and use masked
cotangents over one forward (``imbsam.split_gradients``). Defaults ``rho_head = rho_tail = 0.05``
(SAM's) and ``head_until = 0.5`` are our choices for this setting. BatchNorm running statistics are
updated once per step (both perturbed forwards freeze them).
Cost: 3 forward + 4 backward in the first stage, 2 forward + 3 backward after it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .imbsam import HeadTailConfig, HeadTailSAM
from .strategy import run_length


@dataclass
class SSESAMConfig(HeadTailConfig):
    rho_head: float = 0.05
    rho_tail: float = 0.05
    head_until: float = 0.5
    total_steps: int = 0

    def __post_init__(self):
        super().__post_init__()
        if self.rho_head < 0 or self.rho_tail < 0:
            raise ValueError(f"need rho_head >= 0 and rho_tail >= 0, got {self.rho_head}, {self.rho_tail}")
        if not 0.0 <= self.head_until <= 1.0:
            raise ValueError(f"head_until is a fraction of training in [0, 1], got {self.head_until}")
        if self.total_steps < 0:
            raise ValueError(f"total_steps must be >= 0 (0: unknown), got {self.total_steps}")


def stage_radii(steps_done: int, rho_head: float, rho_tail: float, head_until: float, total_steps: int):
    """``(rho_head, rho_tail)`` at a step: ``rho_head`` until ``floor(head_until * total_steps)`` steps
    are done, 0 after (always ``rho_head`` when ``total_steps`` is 0, unknown)."""
    if total_steps and steps_done >= math.floor(head_until * total_steps):
        return 0.0, rho_tail
    return rho_head, rho_tail


class SSESAM(HeadTailSAM):
    name = "sse-sam"
    Config = SSESAMConfig

    def __init__(self, config=None, check_finite: bool = True, generator: torch.Generator | None = None):
        super().__init__(config, check_finite, generator)
        self.steps = 0

    def set_total_steps(self, total_steps: int) -> "SSESAM":
        """The run's length in steps, for a caller that knows it (``fit``: epochs times batches per
        epoch); an explicit ``total_steps`` option wins. Saved with the config in the state."""
        self.config = run_length(self.config, total_steps)
        return self

    def prepare_run(self, run) -> None:
        super().prepare_run(run)
        self.set_total_steps(run.total_steps)

    def radii(self, step):
        cfg = self.config
        return stage_radii(self.steps, cfg.rho_head, cfg.rho_tail, cfg.head_until, cfg.total_steps)

    def backward(self, compute, step, epoch):
        logs = super().backward(compute, step, epoch)
        self.steps += 1
        return logs

    def state_dict(self):
        return {**super().state_dict(), "steps": self.steps}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.steps = int(state["steps"])
