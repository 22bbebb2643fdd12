"""LRP rules: how relevance at a node's output is sent back to its inputs, one file per family.

- :mod:`~realtime_lrp.lrp.rules.base`: the propagator, stabiliser, exact powers of two, and
  how fp16 and bf16 stay exact (per-sample power-of-two scaling);
- :mod:`~realtime_lrp.lrp.rules.linear`: Conv2d and Linear (epsilon, z+, gamma, flat, z^B);
- :mod:`~realtime_lrp.lrp.rules.pools`: max-pools (winner-take-all, near-maxima shared, average-pool z-rule);
- :mod:`~realtime_lrp.lrp.rules.norm`: parameter-free z-rules (average pools, residual sums);
- :mod:`~realtime_lrp.lrp.rules.identity`: what ops fix by definition (identity, reshapes);
- :mod:`~realtime_lrp.lrp.rules.layernorm`: LayerNorm with its standard deviation held constant;
- :mod:`~realtime_lrp.lrp.rules.attention`: softmax, products of two activations, attention heads;
- :mod:`~realtime_lrp.lrp.rules.constants`: sums with a constant (position embeddings);
- :mod:`~realtime_lrp.lrp.rules.index`: index ops (concatenation, slices, views, permutations);
- :mod:`~realtime_lrp.lrp.rules.gate`: multiplicative gates (signal-take-all).

Presets name rules by their class name here (:class:`realtime_lrp.lrp.presets.RuleSpec`).
"""
from realtime_lrp.lrp.rules.attention import (
                                              AttentionValues,
                                              Heads,
                                              HeldConstant,
                                              PatchPhases,
                                              SoftmaxTaylor,
                                              UniformProduct,
                                              Windows,
)
from realtime_lrp.lrp.rules.base import Propagator, Rule, RuleContext, pow2, stabilise
from realtime_lrp.lrp.rules.constants import ShareWithConstant
from realtime_lrp.lrp.rules.gate import SignalTakeAll
from realtime_lrp.lrp.rules.identity import Pass, Reshape
from realtime_lrp.lrp.rules.index import Concat, Crop, Permute, Select, View
from realtime_lrp.lrp.rules.layernorm import LayerNormCentred
from realtime_lrp.lrp.rules.linear import Epsilon, Flat, Gamma, ZBox, ZPlus
from realtime_lrp.lrp.rules.norm import Norm, SumZPlus
from realtime_lrp.lrp.rules.pools import AvgPoolZ, NearMaxShare, WinnerTakeAll

__all__ = ["AttentionValues", "AvgPoolZ", "Concat", "Crop", "Epsilon", "Flat", "Gamma", "Heads", "HeldConstant",
           "LayerNormCentred", "NearMaxShare", "Norm", "Pass", "PatchPhases", "Permute", "Propagator", "Reshape", "Rule", "RuleContext", "Select",
           "ShareWithConstant", "SignalTakeAll", "SoftmaxTaylor", "SumZPlus", "UniformProduct", "View", "WinnerTakeAll", "Windows",
           "ZBox", "ZPlus", "pow2", "stabilise"]
