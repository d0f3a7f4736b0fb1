"""Plain joint training: back-propagate ``L = L_m + alpha * sum_k L_u^k`` (Eq. 1 of the Re-M3Dr
paper, section 3.1, with one alpha for every modality) and take the optimizer step.

``unimodal_weight = 0`` is naive fusion (only the fused head's loss, the "Baseline" fusion row of
Table 1); a single-modality model with ``unimodal_weight = 0`` is the unimodal baseline.
"""

from __future__ import annotations

from dataclasses import dataclass

from .strategy import Strategy


@dataclass
class JointConfig:
    unimodal_weight: float = 1.0

    def __post_init__(self):
        if self.unimodal_weight < 0:
            raise ValueError(f"unimodal_weight must be >= 0, got {self.unimodal_weight}")


class Joint(Strategy):
    name = "joint"
    Config = JointConfig
    modulates_encoders = False

    def backward(self, compute, step, epoch):
        losses = compute()
        losses.total(self.config.unimodal_weight).backward()
        return losses.logs()
