"""Deep imbalanced regression: contrastive objectives, regularisers and re-weighting, one cited module each.

- ``ntxent``: SimCLR's NT-Xent over two augmented views (``nt_xent_loss``).
- ``conr``: ConR, the contrastive regulariser added to the regression loss (``conr_loss``, ``CONR_BETA``).
- ``rnc``: Rank-N-Contrast (``rnc_loss``).
- ``lds``: label distribution smoothing weights (``lds_weights``, ``weighted_mse``, ``kernel_window``).
- ``fds``: feature distribution smoothing (``FDS``).

Each module's docstring cites its paper and official code and says where it differs from that code.
All losses take torch tensors of any floating dtype, validate their hyperparameters with ``ValueError``
and read nothing back to the host.
"""

from .conr import CONR_BETA, CONR_TEMPERATURE, conr_loss, conr_masks
from .fds import FDS
from .lds import LabelBins, LDSWeights, kernel_window, lds_weights, weighted_mse
from .ntxent import SIMCLR_TEMPERATURE, nt_xent_loss
from .rnc import RNC_TEMPERATURE, rnc_loss

__all__ = [
    "CONR_BETA", "CONR_TEMPERATURE", "FDS", "LDSWeights", "LabelBins", "RNC_TEMPERATURE", "SIMCLR_TEMPERATURE",
    "conr_loss", "conr_masks", "kernel_window", "lds_weights", "nt_xent_loss", "rnc_loss", "weighted_mse",
]
