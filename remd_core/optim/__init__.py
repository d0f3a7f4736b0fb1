"""Optimisation: the pure functions of SGM (section 4.2 of the Re-M3Dr paper) and every training
strategy behind one interface (``Strategy.step(compute, optimizer, step, epoch)``)."""

import torch

from .bsam import BSAM, BSAMConfig
from .functions import combine_gradients, dot_and_norms, min_norm_2, modulation_gamma, per_tensor_norms, sharpness_score
from .igm import IGM, IGMConfig
from .imbsam import ImbSAM, ImbSAMConfig
from .joint import Joint, JointConfig
from .mmpareto import MMPareto, MMParetoConfig
from .ogm_ge import OGMGE, OGMGEConfig
from .sam import SAM, SAMConfig
from .sgm import SGM, SGMConfig
from .sse_sam import SSESAM, SSESAMConfig
from .strategy import Losses, NonFiniteError, RunInfo, Strategy

STRATEGIES = {cls.name: cls for cls in (Joint, SGM, MMPareto, OGMGE, SAM, ImbSAM, SSESAM, BSAM, IGM)}


def build_strategy(name: str, options: dict | None = None, *, seed: int | None = None, **kwargs) -> Strategy:
    """A strategy by name with validated options (unknown keys are an error). ``seed``: the random
    numbers it may draw (OGM-GE's noise) come from a generator seeded with it (``Strategy.generator``;
    none: torch's global stream); ``kwargs`` go to the constructor (``check_finite``). Besides
    ``STRATEGIES`` it builds the straightforward reference implementations of
    ``remd_core.optim.reference`` (``mmpareto_reference``, ``sgm_reference``), which are kept out of
    the user-facing list."""
    from ..config import from_dict
    from .reference import REFERENCE_STRATEGIES

    if name not in STRATEGIES and name not in REFERENCE_STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; known: {sorted(STRATEGIES)}")
    cls = STRATEGIES.get(name) or REFERENCE_STRATEGIES[name]
    if seed is not None:
        kwargs["generator"] = torch.Generator().manual_seed(seed)
    return cls(from_dict(cls.Config, options or {}, context=f"strategy {name!r}"), **kwargs)


__all__ = [
    "BSAM", "BSAMConfig", "IGM", "IGMConfig", "ImbSAM", "ImbSAMConfig", "Joint", "JointConfig", "Losses", "MMPareto",
    "MMParetoConfig", "NonFiniteError",
    "OGMGE", "OGMGEConfig", "RunInfo", "SAM", "SAMConfig", "SGM", "SGMConfig", "SSESAM", "SSESAMConfig", "STRATEGIES",
    "Strategy", "build_strategy", "combine_gradients", "dot_and_norms", "min_norm_2", "modulation_gamma",
    "per_tensor_norms", "sharpness_score",
]
