"""Diagnostics of the coupled-imbalance failure (Re-M3Dr paper, section 1 and Fig. 2; section 5.5).

- ``oscillation``: how much unimodal loss curves oscillate per subset/run (Fig. 2a-c), and how often
  the multimodal and unimodal gradients conflict (cos < 0).
- ``landscape``: filter-normalised 1-D/2-D loss slices (Li et al., NeurIPS 2018) and a sharpness
  summary, for pictures of sharp minima such as Fig. 2e.
- ``hessian``: the top Hessian eigenvalue by power iteration, a curvature scalar to set beside SGM's
  sharpness score and gamma (Fig. 5).
- ``sgm_trace``: one row per SGM probe of a run (``sgm_probes``), the gamma and sharpness trace and
  their correlation (Fig. 5).
- ``probe``: a fixed probe set of training eyes (stratified over the MD regions), evaluated every
  k steps during ``fit`` (``TrainConfig.probe_every``), so that a loss curve moves only with the
  weights; ``oscillation.probe_oscillation_table`` sets its oscillation beside the batch loss's.
- ``closures``: the loss on a fixed evaluation batch that the slices and the Hessian evaluate.
"""

from .closures import fixed_batch_loss
from .hessian import top_hessian_eigenvalue
from .landscape import (perturbation_guard, random_direction, resolve_params, sharpness_from_slice, slice_1d,
                        slice_2d)
from .oscillation import (DEFAULT_WINDOW, describe_probe_oscillation, gradient_conflict, oscillation_index,
                          oscillation_table, probe_heads, probe_oscillation_table)
from .probe import Probe, ProbeSet, build_probe, probe_allocation, select_probe_set
from .sgm_trace import gamma_sharpness_trace, sgm_probes

__all__ = [
    "DEFAULT_WINDOW",
    "describe_probe_oscillation",
    "fixed_batch_loss",
    "gamma_sharpness_trace",
    "gradient_conflict",
    "oscillation_index",
    "oscillation_table",
    "perturbation_guard",
    "Probe",
    "ProbeSet",
    "build_probe",
    "probe_allocation",
    "probe_heads",
    "probe_oscillation_table",
    "select_probe_set",
    "random_direction",
    "resolve_params",
    "sgm_probes",
    "sharpness_from_slice",
    "slice_1d",
    "slice_2d",
    "top_hessian_eigenvalue",
]
