"""How a prediction is scored: regression metrics, the STAGE challenge score, interval coverage, and
reports per MD region and per missing-modality pattern (``metrics``); results by patient group and
equity-scaled summaries (``groups``)."""

from . import groups, metrics

__all__ = ["groups", "metrics"]
