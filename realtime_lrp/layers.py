"""The former home of the VGG layer list, kept so ``realtime_lrp.layers.UnsupportedModelError``
still imports; models are now read as graphs by :mod:`realtime_lrp.graph`."""
from realtime_lrp.graph import UnsupportedModelError

__all__ = ["UnsupportedModelError"]
