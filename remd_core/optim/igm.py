"""IGM: interactive multimodal learning via flat gradient modification (Jiang, Chi, Yang,
"Interactive Multimodal Learning via Flat Gradient Modification", IJCAI 2025), as a newer rival in
our Table 1 grid (it is not in the Re-M3Dr paper).

Sources, and what was read: the official code, njustkmg/IJCAI25-IGM at commit 19aa8e5 (2025-05-07):
``train_CREMA.py`` (``compute_P_matrix``, ``train_withoutP``, ``train_withP``, the stage loop under
``__main__``), ``models/AudioVideo.py`` (``AVClassifier.compute_cov``, ``get_P_matrix``,
``update_cov``), ``configs/*.json``, and the other ``train_*.py`` scripts, which repeat the same
steps for their modalities. The paper's text could not be read here (only its abstract: alternating
unimodal learning, a "flat" projection-based gradient modification independent of the original
space, and a SAM-based optimisation); no section or equation number is cited: everything below
follows the official code.

What the official code does (classification, one encoder and one classifier MLP per modality):

- Alternating stages (``epoch_list``, e.g. ``[25, 50, 25, 50]`` epochs on Kinetics-Sounds): each stage
  trains ONE modality's encoder and classifier on that modality's loss alone (the other modality's
  parameters get no gradient, so SGD skips them); the modalities take turns, audio first on CREMA-D
  and Kinetics-Sounds (the first entry of the model's input list), text first on Sarcasm and
  Twitter, depth first on NVGesture. Every stage starts from the best checkpoint so far (selected on
  the test set) with a new optimizer and learning-rate schedule.
- Flat term: per step, ``g = grad L_k`` on the encoder and on the classifier; each parameter tensor
  is moved by ``rho * g / ||g||`` (per-tensor norms; ``noise_ratio`` for the encoder and
  ``noise_ratio_cls`` for the classifier, 1e-10 on CREMA-D and Kinetics-Sounds, 1e-15 elsewhere);
  the classifier is re-applied to the features of the unperturbed forward, and the loss is
  ``(1 - flat_ratio) L_k(theta) + flat_ratio L_k(perturbed classifier)``, ``flat_ratio = 0.3``.
- Gradient modification (from the second stage on): after the stage of modality j, one pass over the
  training set (eval mode) accumulates, for every layer of j's encoder and classifier, the sum over
  batches of ``mu mu^T``, ``mu`` the batch mean of the layer's input; ``P = V diag(exp(-T (s - s_min)
  / (s_max - s_min))) V^T`` from its SVD (``temperature1`` T = 0.4). While modality k trains, the
  weight gradient of each of k's ``nn.Linear`` layers is replaced by ``grad @ P`` for every layer of j
  with a weight of the same shape. Only linear layers are modified; convolutions are not.
- Prediction: the mean of the unimodal classifiers' softmax outputs; there is no fusion head.

Ours, per step (``stage`` from the steps taken, ``k`` its modality, j the previous stage's):

1. one forward (the closure); forward pre-hooks keep the batch mean of every ``nn.Linear`` input;
2. ``g_h = grad L_k`` on the head parameters (the non-encoder parameters ``L_k`` reaches: k's
   unimodal head), and ``e = rho * g_h / (||g_h|| + eps)`` per tensor;
3. the gradient of ``(1 - flat_ratio) L_k + Losses.extra``; with ``rho > 0`` and ``flat_ratio > 0``
   a second forward with k's head at ``theta_h + e`` (encoders unperturbed, BatchNorm statistics
   frozen) adds the gradient of ``flat_ratio L_k`` there;
4. from the second stage on, ``grad W <- grad W @ P_n`` for each ``nn.Linear`` W of k's encoder and
   head and every linear layer n of j's with a weight of W's shape (in module order, as the official
   loop; for the fundus/OCT model these are the two unimodal heads, whose encoders are convolutional);
5. the fusion head is fitted to the fused loss on the encoders' features (the gradient of
   ``Losses.fused`` on the head parameters only; the encoders get none of it);
6. ``mu mu^T`` of each of k's linear layers is added to the stage's sums; at the stage's end they
   become the P of the next stage.

Where we differ from the official code, and why:

- A fusion head (step 5) is our addition. The workbench evaluates every fusion recipe through the
  model's ``fused`` output and has no head that averages the unimodal predictions, so without it the
  fused prediction would be an untrained layer. It is fitted on the features without moving the
  encoders, so the encoders train exactly as IGM trains them. The unimodal heads are the
  ``MultimodalRegressor``'s linear heads, not a three-layer MLP.
- Stages: lengths are relative (``stages``, default the Kinetics-Sounds ``[25, 50, 25, 50]``; CREMA-D
  repeats that pair six times), spread over the run's steps (``total_steps``, from ``prepare_run``;
  0, unknown: the lengths are read as steps). One optimizer and schedule run through the whole run,
  and no stage reloads a best checkpoint (the trainer selects the best epoch on validation at the
  end). ``first`` (default: the model's first modality, ``fundus`` on the catalog data) trains
  first; the official code fixes the first modality per data set and states no rule for choosing it.
- P comes from the batch means seen while the previous stage trained (training mode, changing
  weights), summed over that stage, not from a separate pass over the training set with the final
  weights in eval mode: no extra pass and no data access for the strategy. Inputs with more than two
  dimensions are flattened to ``[-1, in_features]`` after the batch mean (the official ``torch.mm``
  would fail on them). ``torch.linalg.eigh`` of the symmetric sums replaces the SVD (the same
  eigenvalues and the same P; negative rounding clipped to 0); equal eigenvalues (``s_max = s_min``,
  a 0/0 there) give P = I.
- Flat term: the official code moves the encoder too, but its perturbed loss reads the features of
  the unperturbed forward, so the encoder's move changes no loss; we perturb only k's head. The
  official code never undoes either move (the weights drift by ``rho`` along the ascent direction at
  every step); we restore them. ``eps`` (1e-12) guards a zero gradient tensor (the official
  ``g / ||g||`` is NaN there). With the official radius 1e-10 a head weight of magnitude above about
  1e-2 does not change at all in float32, so at the default the flat term equals ``L_k``; we keep the
  official default and its cost (a second forward and backward), and ``rho = 0`` skips the pass.
- The idle encoders run in the forward pass (the fusion head reads their features) with their
  BatchNorm running statistics frozen, so that they stay as the official code, which does not run
  them, leaves them.
- Loss: the closure's regression loss (the official code: cross-entropy on mixup of the trained
  modality's input, alpha 1, with the flat term on the unmixed labels); the workbench has no mixup.
- The optimiser is the trainer's (the official code: SGD lr 1e-2, momentum 0.9, weight decay 1e-4,
  step decay every 40 epochs, or Adam on the text-image sets).

Cost: 2 forward passes and 2 backward passes through the current modality's encoder (1 + 1 with
``rho = 0``), two backward passes through the heads alone, and an eigendecomposition per linear layer
at each stage switch (on CUDA its result check waits for the device, at those steps only).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .sam import perturbed, trainable
from .strategy import Strategy, assign_grads, frozen_batchnorm_stats, run_length


@dataclass
class IGMConfig:
    flat_ratio: float = 0.3
    rho: float = 1e-10
    temperature: float = 0.4
    stages: tuple = (25.0, 50.0, 25.0, 50.0)
    first: str = ""
    total_steps: int = 0
    eps: float = 1e-12

    def __post_init__(self):
        if not 0.0 <= self.flat_ratio <= 1.0:
            raise ValueError(f"flat_ratio is a weight in [0, 1], got {self.flat_ratio}")
        if not (self.rho >= 0 and self.temperature >= 0 and self.eps >= 0):
            raise ValueError(f"need rho >= 0, temperature >= 0 and eps >= 0; got {self.rho}, {self.temperature}, "
                             f"{self.eps}")
        if isinstance(self.stages, (str, bytes)) or not hasattr(self.stages, "__len__") or len(self.stages) == 0:
            raise ValueError(f"stages must be a non-empty list of stage lengths, got {self.stages!r}")
        self.stages = tuple(float(s) for s in self.stages)
        if not all(s > 0 for s in self.stages):
            raise ValueError(f"every stage length must be > 0, got {list(self.stages)}")
        if isinstance(self.total_steps, bool) or int(self.total_steps) != self.total_steps or self.total_steps < 0:
            raise ValueError(f"total_steps must be an integer >= 0 (0: unknown), got {self.total_steps}")
        self.total_steps = int(self.total_steps)


def stage_ends(stages, total_steps: int) -> list[int]:
    """The step at which each stage ends (exclusive): the cumulative lengths, spread over
    ``total_steps`` when it is known (each end rounded; a stage shorter than half a step is skipped),
    read as steps when it is 0."""
    if not total_steps:
        out, acc = [], 0.0
        for s in stages:
            acc += s
            out.append(int(math.floor(acc + 0.5)))
        return out
    total, acc, out = float(sum(stages)), 0.0, []
    for s in stages:
        acc += s
        out.append(int(math.floor(acc / total * total_steps + 0.5)))  # half up: a first half step is a step
    return out


def stage_at(steps_done: int, ends: list[int]) -> int:
    """The stage of the next step: the first whose end is beyond ``steps_done`` (the last stage after all end)."""
    for i, end in enumerate(ends):
        if steps_done < end:
            return i
    return len(ends) - 1


def flat_projection(cov: Tensor, temperature: float) -> Tensor:
    """``P = V diag(exp(-T (s - s_min) / (s_max - s_min))) V^T`` from the eigendecomposition of the
    symmetric ``cov`` (float64). Directions the previous modality's inputs varied
    along most are damped by ``exp(-T)``, the least by 1; ``s_max = s_min`` gives the identity."""
    c = cov.to(torch.float64)
    s, v = torch.linalg.eigh(0.5 * (c + c.T))
    s = s.clamp_min(0)
    span = s.max() - s.min()
    scaled = torch.where(span > 0, (s - s.min()) / span.clamp_min(torch.finfo(s.dtype).tiny), torch.zeros_like(s))
    return (v * torch.exp(-temperature * scaled)) @ v.T


def per_tensor_perturbation(grads: list[Tensor | None], rho: float, eps: float) -> list[Tensor | None]:
    """``rho * g / (||g|| + eps)`` for each tensor on its own (the official flat term's radius is per tensor)."""
    return [None if g is None else g * (rho / (torch.linalg.vector_norm(g) + eps)) for g in grads]


class IGM(Strategy):
    name = "igm"
    Config = IGMConfig
    modulates_encoders = False

    def __init__(self, config=None, check_finite: bool = True, generator: torch.Generator | None = None):
        super().__init__(config, check_finite, generator)
        self.steps = 0
        self.stage = 0
        self.cov: dict[str, Tensor] = {}         # this stage's sums of mu mu^T, by module name
        self.projections: dict[str, Tensor] = {}  # the previous stage's P, by module name
        self._means: dict[str, Tensor] = {}
        self._owners: dict[str, list[str]] | None = None  # modality -> names of its nn.Linear modules

    # ---------------------------------------------------------------- binding and the run's length
    def check_bindable(self, model) -> None:
        super().check_bindable(model)
        if len(model.modalities) < 2:
            raise ValueError(f"{self.name}: alternates between modalities; the model has only {list(model.modalities)}")
        if self.config.first and self.config.first not in model.modalities:
            raise ValueError(f"{self.name}: first={self.config.first!r} is not a modality of the model "
                             f"{list(model.modalities)}")

    def bind(self, model):
        super().bind(model)
        self._owners = None
        return self

    def set_total_steps(self, total_steps: int) -> "IGM":
        """The run's length in steps (``fit`` knows it); an explicit ``total_steps`` option wins."""
        self.config = run_length(self.config, total_steps)
        return self

    def prepare_run(self, run) -> None:
        self.set_total_steps(run.total_steps)

    def order(self) -> list[str]:
        mods = list(self.model.modalities)
        start = mods.index(self.config.first) if self.config.first else 0
        return mods[start:] + mods[:start]

    def modality(self, stage: int) -> str:
        order = self.order()
        return order[stage % len(order)]

    # ---------------------------------------------------------------- which linear layers are whose
    def _linear_modules(self) -> dict[str, nn.Linear]:
        return {n: m for n, m in self.model.named_modules() if isinstance(m, nn.Linear)}

    def _find_owners(self, losses) -> dict[str, list[str]]:
        """Modality m owns the linear layers of its encoder and the head linear layers its unimodal
        loss reaches (one backward through the heads alone per modality, at the first step)."""
        linears = self._linear_modules()
        in_encoder = {n for m, enc in self.model.encoders.items()
                      for n, mod in linears.items() if any(mod is x for x in enc.modules())}
        outside = [n for n in linears if n not in in_encoder and linears[n].weight.requires_grad]
        owners = {}
        for m in self.model.modalities:
            enc = self.model.encoders[m]
            mine = [n for n, mod in linears.items() if n in in_encoder and any(mod is x for x in enc.modules())]
            if outside and m in losses.unimodal and losses.unimodal[m].requires_grad:
                reached = torch.autograd.grad(losses.unimodal[m], [linears[n].weight for n in outside],
                                              retain_graph=True, allow_unused=True)
                mine += [n for n, g in zip(outside, reached) if g is not None]
            owners[m] = [n for n in linears if n in mine]  # module order
        return owners

    @contextlib.contextmanager
    def _recording(self):
        """Forward pre-hooks keeping the batch mean of every linear layer's input."""
        self._means = {}
        handles = []

        def keep(name):
            def hook(module, args):
                x = args[0].detach()
                self._means[name] = x.mean(0, keepdim=True).reshape(-1, x.shape[-1])
            return hook

        for name, mod in self._linear_modules().items():
            handles.append(mod.register_forward_pre_hook(keep(name)))
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    # ---------------------------------------------------------------- the step
    def _switch_to(self, stage: int) -> None:
        """A stage ends: its sums become the next stage's P (one per linear layer of its modality)."""
        self.projections = {n: flat_projection(c, self.config.temperature) for n, c in self.cov.items()}
        self.cov = {}
        self.stage = stage

    def backward(self, compute, step, epoch):
        cfg = self.config
        stage = stage_at(self.steps, stage_ends(cfg.stages, cfg.total_steps))
        if stage != self.stage:
            self._switch_to(stage)
        k = self.modality(stage)
        params = trainable(self.model)
        heads = [p for p in self.model.head_parameters() if p.requires_grad]
        with self._recording(), contextlib.ExitStack() as idle:
            for m in self.model.modalities:  # the official code never runs the idle encoders while a stage trains
                if m != k:
                    idle.enter_context(frozen_batchnorm_stats(self.model.encoders[m]))
            losses = compute()
        if k not in losses.unimodal:
            raise ValueError(f"{self.name}: the closure's Losses has no unimodal loss for {k!r}; IGM trains one "
                             f"modality at a time on its own loss")
        if self._owners is None:
            self._owners = self._find_owners(losses)
        loss_k = losses.unimodal[k]
        flat = cfg.rho > 0 and cfg.flat_ratio > 0
        offsets = None
        if flat:
            g_heads = torch.autograd.grad(loss_k, heads, retain_graph=True, allow_unused=True)
            offsets = per_tensor_perturbation(list(g_heads), cfg.rho, cfg.eps)
        fused = torch.autograd.grad(losses.fused, heads, retain_graph=True, allow_unused=True)
        main = (1 - cfg.flat_ratio) * loss_k if flat else loss_k  # rho = 0: the flat term is L_k itself
        if losses.extra is not None:
            main = main + losses.extra
        grads = list(torch.autograd.grad(main, params, allow_unused=True))
        logs = {**losses.logs(), "igm_stage": torch.full((), float(stage), device=loss_k.device)}
        if flat:
            with perturbed(heads, offsets), frozen_batchnorm_stats(self.model):
                at_e = compute().unimodal[k]
                extra = torch.autograd.grad(cfg.flat_ratio * at_e, params, allow_unused=True)
            grads = [a if b is None else b if a is None else a + b for a, b in zip(grads, extra)]
            logs["loss_flat"] = at_e.detach()
        self._modify(grads, params, k)
        assign_grads(params, grads)
        assign_grads(heads, list(fused))
        self._accumulate(k)
        self.steps += 1
        return logs

    def _modify(self, grads, params, k: str) -> None:
        """``grad W <- grad W @ P_n`` for k's linear weights and every P of the same shape (module order)."""
        if not self.projections:
            return
        linears = self._linear_modules()
        index = {id(p): i for i, p in enumerate(params)}
        for name in self._owners[k]:
            weight = linears[name].weight
            i = index.get(id(weight))
            if i is None or grads[i] is None:
                continue
            for other, proj in self.projections.items():
                if other in linears and linears[other].weight.shape == weight.shape and other not in self._owners[k]:
                    grads[i] = grads[i] @ proj.to(grads[i].device, grads[i].dtype)

    def _accumulate(self, k: str) -> None:
        for name in self._owners[k]:
            mu = self._means.get(name)
            if mu is None:
                continue
            outer = (mu.T @ mu).to(torch.float64)
            self.cov[name] = outer if name not in self.cov else self.cov[name].to(outer.device) + outer
        self._means = {}

    # ---------------------------------------------------------------- state
    def state_dict(self):
        return {**super().state_dict(), "steps": self.steps, "stage": self.stage,
                "cov": {n: c.cpu() for n, c in self.cov.items()},
                "projections": {n: p.cpu() for n, p in self.projections.items()}}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.steps, self.stage = int(state["steps"]), int(state["stage"])
        device = next(self.model.parameters()).device if self.model is not None else None
        self.cov = {n: c.to(device) for n, c in state["cov"].items()}
        self.projections = {n: p.to(device) for n, p in state["projections"].items()}
