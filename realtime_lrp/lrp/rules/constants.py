"""Operations with a constant operand: the constant takes no relevance, or its share of it.

- A product with a constant (ConvNeXt's layer scale ``gamma * x``, a scalar): all relevance
  goes to ``x`` (the identity rule; the notes' "product with a constant"), :class:`Pass`.
- A sum with a constant (ViT's added position embedding, a bias): ``R_x = x R / stabilise(x + c)``,
  the constant absorbs its share, as a bias does in LRP-0 (LXT's ``add2`` with one input
  constant; Gradient x Input equals it), and Swin's relative position bias and shift mask added
  to the attention scores. The stabiliser only guards against 0 / 0.
"""
from __future__ import annotations

from typing import Any, Union

import torch
from torch import Tensor

from realtime_lrp.lrp.nodes import Node
from realtime_lrp.lrp.rules.base import Propagator, Rule, RuleContext, divide


class ShareWithConstant(Rule):
    """``x + c``: ``R_x = x R / stabilise(x + c)``, in fp32."""

    kinds = ("add_constant", "attention_bias")

    def __init__(self, epsilon: float = 1e-12):
        self.epsilon = epsilon

    def bind(self, node: Node, dtype: torch.dtype, context: RuleContext) -> Propagator:
        self._check(node)
        eps = self.epsilon

        def propagate(a: Any, out: Tensor, aux: Union[Tensor, None], R: Tensor) -> tuple[Any, None]:
            x = a[0] if isinstance(a, tuple) else a  # Swin's bias and mask: (scores, a shape reference)
            r = x.float() * divide(R.float(), out.float(), eps, True)
            return ((r,) if isinstance(a, tuple) else r), None

        return propagate
