"""The LRP core: torch only, usable on its own.

``graph`` reads a model with torch.fx and canonises it, ``rules`` send relevance back
through one node, ``presets`` bind rules to a graph's nodes, ``filter`` keeps the top-k of
relevance, and ``engine`` walks the graph forward and back.
"""
from realtime_lrp.lrp.engine import LRP, LRPResult
from realtime_lrp.lrp.graph import UnsupportedModelError

__all__ = ["LRP", "LRPResult", "UnsupportedModelError"]
