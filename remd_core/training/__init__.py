"""One trainer for both stages of Re-M3Dr and every baseline.

Where things are: ``config`` (``TrainConfig``, ``TRAINING_PRESETS``), ``heads`` (the registry: a head's
model builder and objective), ``objectives`` (one ``Objective`` per model family), ``loop`` (``fit``),
``checkpoint`` (``LoopState``, what a checkpoint holds), ``evaluate`` (predictions, intervals,
``FitResult``), ``runtime`` (device, dtype, autocast, optimiser, schedule).


- Stage 1 (section 4.1): ``contrastive=True`` on a single-modality model adds
  ``lambda * L_SupCon`` with the adaptive margin ``m(t)`` (``adaptive_margin=False`` keeps ``m0``:
  the "w/o AM" ablation) to the regression loss. Labels are standardised with the training
  split's mean and SD before the loss and before the margin test, so ``margin_m0 = 0.4`` means
  0.4 SD of training MD (the paper does not say which units it uses). ``m0 = 0.4`` and
  ``beta = 0.0005`` per iteration are the paper's; ``t_n`` (``margin_warmup``, 100 iterations, about
  4 epochs of 425 eyes at batch 16) and ``lambda`` (``supcon_weight``, 1.0) are not reported and
  are our choices. ``save_encoders`` keeps the encoders for stage 2.
- Stage 2 (section 4.2): any strategy of ``remd_core.optim`` (``joint`` for naive fusion and
  plain joint training, ``sgm``, ``mmpareto``, ``ogm_ge``), from scratch or from stage-1 encoders
  (``init_encoders``).

Table 1's comparators use the same trainer: the model's head (``TrainConfig.head``, ``heads.HEADS``: the linear
heads above, EyeMoSt's evidential heads, EchoMEN's multi-expert head on frozen encoders), a
comparator's contrastive term in place of AM-SupCon (``contrastive_loss``: SimCLR, Rank-N-Contrast,
EchoMEN, ConR; ``losses.contrastive``) and the imbalanced-regression options LDS and FDS
(``lds``, ``fds``). Each reaches the strategies as a ``Losses``, so no strategy knows about them.

The regression loss is MSE by default; the paper's SMAPE + R^2 combination is
``regression_loss="smape_r2"`` (SMAPE is unstable for MD near 0 dB, which is why it is not the
default here). The paper uses Adam, batch 8 and ResNet34; the CPU defaults are AdamW (weight decay
1e-4), batch 16, cosine learning-rate decay and a ResNet18 of width 0.25.

Precision (``precision``): "auto" runs bf16 autocast on CUDA and float32 on CPU; "bf16" asks for
bf16 autocast on any device (CPU included, which is how the GPU path is tested without a GPU);
"float64" keeps weights and arithmetic in float64, on CPU only. float64 is what the smoke profile
(nbval's regression checks) uses: float32 results of a trained model differ in the third decimal
between processors and thread counts (different vector kernels and reduction orders), float64
results near 1e-12, so checked outputs hold on every machine. Channels-last memory format
(``channels_last``; None: on CUDA only) and pinned, non-blocking copies are used on CUDA.
``compile=True`` wraps each encoder with ``torch.compile`` (``nn.Module.compile``, so parameter
names and saved encoders are unchanged); it is off by default: compilation takes minutes, and on
this workbench's small CPU models it has not been shown to pay (``benchmarks/bench_steps.py
--compile`` measures it).

Checkpoints (``fit(checkpoint_dir=..., resume=True)``, ``training.checkpoint``) are written at
every epoch end and, optionally, every N steps; a run killed at any point resumes from the last
one, bit-identical to an uninterrupted run on CPU.

``build_model`` and ``build_objective`` are the model and the per-batch objective (inputs, targets,
the loss closure a strategy calls) that ``fit`` uses, public so that benchmarks and notebooks run
exactly what training runs.
"""

from .checkpoint import LoopState, load_encoders, save_encoders
from .config import LR_SCHEDULES, OPTIMIZERS, PRECISIONS, SUBSETS, TRAINING_PRESETS, TrainConfig, preset_config
from .evaluate import FitResult, predict, predict_intervals
from .heads import HEADS, Head, build_model, build_objective
from .loop import TrainingError, fit, training_split, update_fds
from .objectives import Objective
from .runtime import autocast_context, build_optimizer, build_scheduler, default_dtype, resolve_device

__all__ = ["HEADS", "LR_SCHEDULES", "OPTIMIZERS", "PRECISIONS", "SUBSETS", "TRAINING_PRESETS", "FitResult", "Head",
           "LoopState", "Objective", "TrainConfig", "TrainingError", "autocast_context", "build_model",
           "build_objective", "build_optimizer", "build_scheduler", "default_dtype", "fit", "load_encoders",
           "predict", "predict_intervals", "preset_config", "resolve_device", "save_encoders", "training_split",
           "update_fds"]
