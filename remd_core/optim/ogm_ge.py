"""OGM-GE (Peng et al., "Balanced Multimodal Learning via On-the-fly Gradient Modulation",
CVPR 2022), adapted to regression, as a baseline of the Re-M3Dr paper (Table 1).

As in the official code (GeWu-Lab/OGM-GE_CVPR2022, ``main.py``): only the multimodal loss is
back-propagated; each modality's prediction is its share of the linear fusion head (its slice of
the weight times its features plus an equal share of the bias); a score per modality gives the
ratio ``rho``; the dominant modality's encoder gradients are multiplied by
``1 - tanh(alpha * rho)`` (the others keep 1), only on convolution kernels, only within a window
of epochs; GE adds ``N(0, std(grad))`` noise to the modulated gradients.

Our regression score (the official one is the summed softmax probability of the true class, which
regression lacks): ``score_k = sum_batch exp(-|yhat_k - y| / tau)`` on standardised labels, a
"probability-like" closeness in (0, 1] per sample. With K > 2 modalities, modality k's ratio is its
score over the mean score of the others (the official code has two modalities, where this is
their ``rho``). Noise is added to the modulated kernels of every modality, as in the official GE
branch. Kernels are found by type (every ``Conv*d`` weight of an encoder), not by the official
name-splitting, which silently matches nothing without a DataParallel prefix. Vector encoders
(MLPs) have no convolutions: with ``modulate="conv"`` they are left alone; ``modulate="all"``
modulates every weight matrix (dim > 1) instead.

The noise is drawn on the gradients' device, so a step copies nothing from the host. On CPU it
comes from ``generator`` (as before). On another device a generator there is seeded once from
``generator`` at first use (one host read, never again) and saved with the state; without a
``generator``, the device's default stream of random numbers is used.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .strategy import Strategy


@dataclass
class OGMGEConfig:
    alpha: float = 0.5
    tau: float = 1.0
    start_epoch: int = 0
    end_epoch: int = 10**9
    noise: bool = True
    modulate: str = "conv"

    def __post_init__(self):
        if self.alpha < 0 or self.tau <= 0:
            raise ValueError(f"need alpha >= 0 and tau > 0; got {self.alpha}, {self.tau}")
        if self.start_epoch > self.end_epoch:
            raise ValueError(f"start_epoch {self.start_epoch} is after end_epoch {self.end_epoch}")
        if self.modulate not in ("conv", "all"):
            raise ValueError(f"modulate must be 'conv' or 'all', got {self.modulate!r}")


def modulation_coefficients(scores: torch.Tensor, alpha: float) -> torch.Tensor:
    """``k_m = 1 - tanh(alpha * rho_m)`` where ``rho_m = score_m / mean(other scores) > 1``, else 1."""
    k = scores.numel()
    others = (scores.sum() - scores) / max(k - 1, 1)
    rho = scores / others.clamp_min(1e-12)
    return torch.where(rho > 1, 1 - torch.tanh(alpha * rho), torch.ones_like(rho))


class OGMGE(Strategy):
    name = "ogm_ge"
    Config = OGMGEConfig

    def __init__(self, config=None, check_finite: bool = True, generator: torch.Generator | None = None):
        super().__init__(config, check_finite)
        self.generator = generator
        self.device_generator: torch.Generator | None = None

    def _modulated(self, encoder: nn.Module):
        if self.config.modulate == "all":
            return [p for p in encoder.parameters() if p.dim() > 1]
        return [m.weight for m in encoder.modules() if isinstance(m, nn.modules.conv._ConvNd)]

    def backward(self, compute, step, epoch):
        cfg = self.config
        losses = compute()
        multimodal = losses.fused if losses.extra is None else losses.fused + losses.extra
        multimodal.backward()
        logs = losses.logs()
        out = losses.outputs or {}
        if "features" not in out or "target" not in out:
            raise ValueError("OGM-GE needs Losses.outputs with the model's 'features' and the batch 'target'")
        target = out["target"]
        with torch.no_grad():
            shares = self.model.fusion_contributions({m: f.detach() for m, f in out["features"].items()})
            names = list(shares)
            scores = torch.stack([torch.exp(-(shares[m] - target).abs() / cfg.tau).sum() for m in names])
            coeffs = modulation_coefficients(scores, cfg.alpha)
            active = cfg.start_epoch <= epoch < cfg.end_epoch
            for m, k in zip(names, coeffs.unbind()):
                logs[f"score_{m}"], logs[f"coeff_{m}"] = scores[names.index(m)], k
                if not active:
                    continue
                grads = [p.grad for p in self._modulated(self.model.encoders[m]) if p.grad is not None]
                if not grads:
                    continue
                torch._foreach_mul_(grads, k)
                if cfg.noise:  # N(0, std(grad)) per tensor, drawn in the order of the tensors
                    generator = self._generator_on(grads[0].device)
                    for g in grads:
                        g.add_(torch.randn(g.shape, generator=generator, device=g.device, dtype=g.dtype).mul_(g.std()))
        return logs

    def _generator_on(self, device: torch.device) -> torch.Generator | None:
        """``generator`` on CPU; elsewhere a generator on that device, seeded once from it."""
        if device.type == "cpu" or self.generator is None:
            return self.generator
        if self.device_generator is None or self.device_generator.device != device:
            seed = int(torch.randint(0, 2**62, (), generator=self.generator))
            self.device_generator = torch.Generator(device).manual_seed(seed)
        return self.device_generator

    def state_dict(self):
        state = super().state_dict()
        if self.generator is not None:
            state["generator"] = self.generator.get_state()
        if self.device_generator is not None:
            state["device_generator"] = (str(self.device_generator.device), self.device_generator.get_state())
        return state

    def load_state_dict(self, state):
        super().load_state_dict(state)
        if "generator" in state:
            self.generator = self.generator or torch.Generator()
            self.generator.set_state(state["generator"])
        if "device_generator" in state:
            device, rng_state = state["device_generator"]
            self.device_generator = torch.Generator(device)
            self.device_generator.set_state(rng_state)
