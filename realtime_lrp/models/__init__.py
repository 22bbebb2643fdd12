"""Models: architectures, model cards, safe weight files, ImageNet downloads, size checks, data sets.

The names most callers need are here; the rest is in the module of its concept.
"""
from realtime_lrp.models.architectures import build_model
from realtime_lrp.models.errors import WeightsError
from realtime_lrp.models.loading import load_model

__all__ = ["WeightsError", "build_model", "load_model"]
