"""zennit's Norm rule, the z-rule of parameter-free nodes (average pools and residual sums), and z+ on sums.

Residual sums (``add`` nodes) take ``R_i = x_i R / stabilise(sum_j x_j)`` (:class:`Norm`),
or, in the ``zplus`` preset, its z+ form on the positive parts (:class:`SumZPlus`). They run
in fp32 and return no scale factor.
"""
from __future__ import annotations

from typing import Union

import torch
from torch import Tensor

from realtime_lrp.lrp.nodes import Node
from realtime_lrp.lrp.rules.base import Propagator, Rule, RuleContext, divide
from realtime_lrp.lrp.rules.pools import pool_window


class Norm(Rule):
    """zennit's Norm rule, the z-rule of parameter-free nodes, in fp32.

    Average pools: ``R_in = a * pool^T (R / stabilise(pool(a)))``. Residual sums:
    ``R_i = x_i R / stabilise(sum_j x_j)``, each summand in proportion to its value.
    """

    kinds = ("avgpool", "adaptive_avgpool", "add")

    def __init__(self, stabilizer: float = 1e-6, signed_stabilizer: bool = True):
        self.stabilizer = stabilizer
        self.signed_stabilizer = signed_stabilizer

    def bind(self, node: Node, dtype: torch.dtype, context: RuleContext) -> Propagator:
        self._check(node)
        if node.kind == "add":
            return _sum_propagator(self.stabilizer, self.signed_stabilizer, positive=False)
        eps, signed = self.stabilizer, self.signed_stabilizer and not node.nonneg_input

        def propagate(a: Tensor, out: Tensor, aux: Union[Tensor, None], R: Tensor) -> tuple[Tensor, None]:
            a32 = a.float()
            s = divide(R, out.float(), eps, signed)
            if node.kind == "adaptive_avgpool":
                return a32 * torch.ops.aten._adaptive_avg_pool2d_backward(s, a32), None
            m = node.module
            back = torch.ops.aten.avg_pool2d_backward(s, a32, *pool_window(node), m.ceil_mode, m.count_include_pad,
                                                      m.divisor_override)
            return a32 * back, None

        return propagate


class SumZPlus(Rule):
    """z+ on a residual sum: ``R_i = x_i+ R / (sum_j x_j+ + eps)``, only positive summands get relevance.

    The sum is a layer with unit weights, so this is the z+ rule (alpha=1, beta=0) of the
    ``zplus`` preset; it keeps that preset's maps non-negative on a ResNet.
    """

    kinds = ("add",)

    def __init__(self, stabilizer: float = 1e-5):
        self.stabilizer = stabilizer

    def bind(self, node: Node, dtype: torch.dtype, context: RuleContext) -> Propagator:
        self._check(node)
        return _sum_propagator(self.stabilizer, False, positive=True)


def _sum_propagator(eps: float, signed: bool, positive: bool) -> Propagator:
    def propagate(a: tuple[Tensor, ...], out: Tensor, aux: None, R: Tensor) -> tuple[tuple[Tensor, ...], None]:
        parts = tuple(x.float().clamp(min=0) if positive else x.float() for x in a)
        z = out if out.dtype == torch.float32 and not positive else sum(parts[1:], parts[0])  # sum in fp32
        s = divide(R, z, eps, signed)
        return tuple(p * s for p in parts), None

    return propagate
