"""Every loss of the workbench, one cited file each.

- ``regression``: MSE, L1, SMAPE, 1 - R^2 and the paper's SMAPE + R^2 (section 5.2), by name
  (``regression_loss``).
- ``am_supcon``: Re-M3Dr's stage 1 (section 4.1): the adaptive margin ``m(t)`` (``margin_schedule``,
  ``reference_step``), AM-SupCon (``am_supcon_loss``) and the stage-1 total (``stage1_loss``).
- ``contrastive``: the registry of contrastive terms a stage-1 run adds to the regression loss, by
  name (``CONTRASTIVE``): AM-SupCon and the comparators of Table 1 below.
- ``ntxent`` (SimCLR), ``rnc`` (Rank-N-Contrast), ``conr`` (ConR), ``echomen`` (EchoMEN's
  label-distance SupCon, Eq. (4)'s expert weights and the multi-expert loss): the comparators'.
- ``lds``: label distribution smoothing weights and the weighted MSE (Yang et al., ICML 2021).

Label bins, regions and smoothing windows live in ``data.labels``; model parts (FDS, EchoMEN's
multi-expert head) in ``models``. Each module's docstring cites its paper and official code and says
where it differs from that code.
"""

from .am_supcon import (PAPER_RUN_STEPS, _l2_normalise, _labels, am_supcon_loss, margin_schedule,  # noqa: F401
                        positive_mask, reference_step, stage1_loss)
from .conr import CONR_BETA, CONR_TEMPERATURE, conr_loss, conr_masks
from .contrastive import CONTRASTIVE, Contrast, ContrastiveLoss, contrastive_term
from .lds import LDSWeights, lds_weights, weighted_mse
from .ntxent import SIMCLR_TEMPERATURE, nt_xent_loss
from .regression import (MIN_LABEL_VAR, REGRESSION_LOSSES, SMAPE_FLOOR_DB, RegressionLoss, _pair,  # noqa: F401
                         l1_loss, mse_loss, one_minus_r2, regression_loss, smape_loss, smape_r2_loss)
from .rnc import RNC_TEMPERATURE, rnc_loss

__all__ = [
    "CONR_BETA", "CONR_TEMPERATURE", "CONTRASTIVE", "MIN_LABEL_VAR", "PAPER_RUN_STEPS", "REGRESSION_LOSSES",
    "RNC_TEMPERATURE", "SIMCLR_TEMPERATURE", "SMAPE_FLOOR_DB", "Contrast", "ContrastiveLoss", "LDSWeights",
    "RegressionLoss", "am_supcon_loss", "conr_loss", "conr_masks", "contrastive_term", "l1_loss", "lds_weights",
    "margin_schedule", "mse_loss", "nt_xent_loss", "one_minus_r2", "positive_mask", "reference_step",
    "regression_loss", "rnc_loss", "smape_loss", "smape_r2_loss", "stage1_loss", "weighted_mse",
]
