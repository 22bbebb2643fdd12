"""Rules that an op fixes by definition: relevance passes unchanged, or follows the indices.

The identity rule (zennit's ``Pass``, AttnLRP's identity rule, Eq. 9) gives an element-wise
activation's input the relevance of its output. Reshapes move values without changing
them, so relevance moves with them: ``Reshape`` puts it back in the input's shape.
Both conserve relevance exactly and run in the relevance's dtype, with no scale factor.
"""
from __future__ import annotations

from typing import Union

import torch
from torch import Tensor

from realtime_lrp.lrp.nodes import Node
from realtime_lrp.lrp.rules.base import Propagator, Rule, RuleContext


class Pass(Rule):
    """``R_in = R_out``: element-wise activations on the main path."""

    kinds = None

    def bind(self, node: Node, dtype: torch.dtype, context: RuleContext) -> Propagator:
        def propagate(a: Tensor, out: Tensor, aux: Union[Tensor, None], R: Tensor) -> tuple[Tensor, None]:
            return R, None

        return propagate


class Reshape(Rule):
    """``R_in = R_out`` in the input's shape: flatten, view, reshape."""

    kinds = None

    def bind(self, node: Node, dtype: torch.dtype, context: RuleContext) -> Propagator:
        def propagate(a: Tensor, out: Tensor, aux: Union[Tensor, None], R: Tensor) -> tuple[Tensor, None]:
            return R.reshape(a.shape), None

        return propagate
