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
"probability-like" closeness in (0, 1] per sample (``regression_scores``). With K > 2 modalities,
modality k's ratio is its score over the mean score of the others (the official code has two
modalities, where this is their ``rho``; ``modulation_coefficients``). Noise is added to the
modulated parameters of every modality, as in the official GE branch, with the standard deviation
of each gradient before it is scaled (``parms.grad.std()`` on the right-hand side there; the
official code adds 1e-8 to it, which we do not need: a zero gradient gets zero noise).

What is modulated (``modulate``). The paper modulates "the gradients of the encoders"; the
official code scales only the gradients with 4 dimensions of each encoder, the kernels of its 2-D
convolutions. Both are the same on the paper's audio-visual CNNs, but an encoder without
convolutions (the MLPs of vector modalities: the ``randhie`` tables) would never be modulated, and
the recipe would equal naive fusion in every digit. So:

- ``"auto"`` (default): an encoder's convolution kernels (every ``Conv*d`` weight: 2-D and 3-D) if
  it has any trainable one, else the weight matrices of its ``nn.Linear`` layers (biases are not modulated, as
  the official code leaves the 1-D tensors of a CNN alone). On the image encoders this is the
  official choice; on MLP encoders it is where we differ, so that the method acts at all.
- ``"conv"``: convolution kernels only (the official code); ``"linear"``: ``nn.Linear`` weights
  only; ``"all"``: every parameter with more than one dimension.

An encoder where the chosen rule finds nothing raises a ``ValueError`` naming it when the
strategy is bound (``Strategy.bind``), and so does a model with a single modality (there is
nothing to balance): OGM-GE never silently does nothing. Kernels are found by type, not by the
official name-splitting, which silently matches nothing without a DataParallel prefix.

The noise is drawn on the gradients' device, so a step copies nothing from the host. On CPU it
comes from ``generator`` (``Strategy``'s; ``build_strategy(..., seed=s)`` makes one). On another
device a generator there is seeded once from ``generator`` at first use (one host read, never
again) and saved with the state; without a ``generator``, the device's default stream of random
numbers is used.
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
    modulate: str = "auto"

    def __post_init__(self):
        if self.alpha < 0 or self.tau <= 0:
            raise ValueError(f"need alpha >= 0 and tau > 0; got {self.alpha}, {self.tau}")
        if self.start_epoch > self.end_epoch:
            raise ValueError(f"start_epoch {self.start_epoch} is after end_epoch {self.end_epoch}")
        if self.modulate not in MODULATE:
            raise ValueError(f"modulate must be one of {MODULATE}, got {self.modulate!r}")


MODULATE = ("auto", "conv", "linear", "all")


def regression_scores(shares: dict[str, torch.Tensor], target: torch.Tensor, tau: float) -> torch.Tensor:
    """``score_k = sum_batch exp(-|yhat_k - y| / tau)`` per modality (in the order of ``shares``):
    our regression stand-in for the official score, the summed softmax probability of the true class
    (Peng et al., the section "On-the-fly gradient modulation": their per-modality score ``s^u``)."""
    return torch.stack([torch.exp(-(share - target).abs() / tau).sum() for share in shares.values()])


def modulation_coefficients(scores: torch.Tensor, alpha: float) -> torch.Tensor:
    """``k_m = 1 - tanh(alpha * rho_m)`` where ``rho_m = score_m / mean(other scores) > 1``, else 1
    (Peng et al., the section "On-the-fly gradient modulation": the discrepancy ratio and the
    coefficient; with two modalities ``rho`` is theirs, for K > 2 the mean of the others is ours)."""
    k = scores.numel()
    others = (scores.sum() - scores) / max(k - 1, 1)
    rho = scores / others.clamp_min(1e-12)
    return torch.where(rho > 1, 1 - torch.tanh(alpha * rho), torch.ones_like(rho))


class OGMGE(Strategy):
    name = "ogm_ge"
    Config = OGMGEConfig

    def __init__(self, config=None, check_finite: bool = True, generator: torch.Generator | None = None):
        super().__init__(config, check_finite, generator)
        self.device_generator: torch.Generator | None = None

    def check_bindable(self, model):
        if len(model.encoders) < 2:
            raise ValueError(f"{self.name} balances two or more modalities; the model has {list(model.encoders)}")
        super().check_bindable(model)

    def modulated_parameters(self, encoder: nn.Module) -> list[nn.Parameter]:
        """The trainable weights ``modulate`` chooses in ``encoder`` (see the module docstring)."""
        mode = self.config.modulate
        if mode == "all":
            chosen = [p for p in encoder.parameters() if p.dim() > 1]
        else:
            chosen = [m.weight for m in encoder.modules() if isinstance(m, nn.modules.conv._ConvNd)]
            if mode == "linear" or (mode == "auto" and not any(p.requires_grad for p in chosen)):
                chosen = [m.weight for m in encoder.modules() if isinstance(m, nn.Linear)]
        return [p for p in chosen if p.requires_grad]

    def _nothing_hint(self) -> str:
        return (f": modulate={self.config.modulate!r} finds no "
                f"{'convolution kernel' if self.config.modulate == 'conv' else 'weight matrix'} there "
                f"(choose 'auto', 'linear' or 'all')")

    def backward(self, compute, step, epoch):
        cfg = self.config
        losses = compute()
        if losses.features is None or losses.target is None:
            raise ValueError("ogm_ge scores each modality by its share of the fused prediction: the closure's Losses "
                             "must carry features (the encoders' outputs) and target")
        multimodal = losses.fused if losses.extra is None else losses.fused + losses.extra
        multimodal.backward()
        logs = losses.logs()
        with torch.no_grad():
            shares = self.model.fusion_contributions({m: losses.features[m].detach() for m in self.model.modalities})
            scores = regression_scores(shares, losses.target, cfg.tau)
            coeffs = modulation_coefficients(scores, cfg.alpha)
            active = cfg.start_epoch <= epoch < cfg.end_epoch
            for m, score, k in zip(shares, scores.unbind(), coeffs.unbind()):
                logs[f"score_{m}"], logs[f"coeff_{m}"] = score, k
                if active:
                    self._modulate([p.grad for p in self.modulated_parameters(self.model.encoders[m])
                                    if p.grad is not None], k)
        return logs

    def _modulate(self, grads: list[torch.Tensor], k: torch.Tensor) -> None:
        """``g <- k g + N(0, std(g))`` per tensor (Peng et al., the section "Generalization
        enhancement"; ``std`` of ``g`` before scaling, as the official code computes it), the noise drawn in
        the order of the tensors; without ``noise``, ``g <- k g`` (OGM alone)."""
        if not grads:
            return
        stds = [g.std() for g in grads] if self.config.noise else None
        torch._foreach_mul_(grads, k)
        if stds is not None:
            generator = self._generator_on(grads[0].device)
            for g, std in zip(grads, stds):
                g.add_(torch.randn(g.shape, generator=generator, device=g.device, dtype=g.dtype).mul_(std))

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
        if self.device_generator is not None:
            state["device_generator"] = (str(self.device_generator.device), self.device_generator.get_state())
        return state

    def load_state_dict(self, state):
        super().load_state_dict(state)
        if "device_generator" in state:
            device, rng_state = state["device_generator"]
            self.device_generator = torch.Generator(device)
            self.device_generator.set_state(rng_state)
