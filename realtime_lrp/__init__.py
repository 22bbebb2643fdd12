"""Real-time Layer-wise Relevance Propagation for CNN image classifiers (VGG, ResNet, ResNeXt, AlexNet).

The package is in wings, each importing only wings below it: ``lrp`` (the core), ``models``,
``pipeline``, ``media``, ``util``, ``apps`` and ``cli``.

The heavy names are imported lazily so that ``rtlrp --help`` does not pay for torch.
"""
from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["LRP", "LRPResult", "load_model", "overlay", "prepare", "__version__"]

_LAZY = {
    "LRP": "realtime_lrp.lrp.engine",
    "LRPResult": "realtime_lrp.lrp.engine",
    "load_model": "realtime_lrp.models.loading",
    "prepare": "realtime_lrp.pipeline.api",
    "overlay": "realtime_lrp.pipeline.api",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'realtime_lrp' has no attribute {name!r}")
