"""How a prediction is scored: regression metrics, the STAGE challenge score, interval coverage, and
reports per MD region and per missing-modality pattern (``metrics``)."""

from . import metrics

__all__ = ["metrics"]
