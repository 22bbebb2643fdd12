"""The LayerNorm rule of AttnLRP (Achtibat et al. 2024, Prop. 3.4) and CP-LRP (Ali et al. 2022).

``y = (x - mean(x)) / std(x) * gamma + beta``. The standard deviation is held constant
(the identity rule on ``1 / std``), so ``y`` is linear in ``x``: the centring ``x - mean``
by the epsilon rule, the affine part times a constant, and ``beta`` absorbs its share:
``R_x = x * C(gamma * R / stabilise(y)) / std`` with ``C(v) = v - mean(v)`` over the
normalised dim (``C`` is symmetric). This is LXT's ``layer_norm_grad_fn`` (explicit) and
its efficient ``layer_norm_forward`` (std detached, Gradient x Input). It runs in fp32 and
returns no scale factor.
"""
from __future__ import annotations

from typing import Union

import torch
from torch import Tensor

from realtime_lrp.lrp.nodes import Node
from realtime_lrp.lrp.rules.base import Propagator, Rule, RuleContext, divide, times


class LayerNormCentred(Rule):
    """The standard deviation held constant, the centring by the epsilon rule (module docstring)."""

    kinds = ("layernorm",)

    def __init__(self, epsilon: float = 1e-6):
        self.epsilon = epsilon

    def bind(self, node: Node, dtype: torch.dtype, context: RuleContext) -> Propagator:
        self._check(node)
        dim, ln_eps, eps = node.attrs["dim"], node.attrs["eps"], self.epsilon
        shape = (-1,) + (1,) * (-1 - dim) if dim < 0 else (-1, 1, 1)
        gamma = None if node.weight is None else node.weight.view(shape)

        def propagate(a: Tensor, out: Tensor, aux: Union[Tensor, None], R: Tensor) -> tuple[Tensor, None]:
            x = a.float()
            s = divide(R.float(), out.float(), eps, True)  # fresh: the steps below write into it
            if gamma is not None:
                s = times(gamma, s)
            std = (x.var(dim, unbiased=False, keepdim=True) + ln_eps).sqrt()
            centred = s.sub_(s.mean(dim, keepdim=True))
            return times(x, centred).div_(std), None

        return propagate
