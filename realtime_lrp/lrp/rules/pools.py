"""Rules for max-pools: winner-take-all (the gradient), or the z-rule of the average pool of the same windows."""
from __future__ import annotations

from typing import Union

import torch
import torch.nn.functional as F
from torch import Tensor

from realtime_lrp.lrp.nodes import Node, UnsupportedModelError
from realtime_lrp.lrp.rules.base import Propagator, Rule, RuleContext, stabilise


class WinnerTakeAll(Rule):
    """Max-pool by its gradient: each output's relevance goes to the input that won the max."""

    kinds = ("maxpool",)

    def bind(self, node: Node, dtype: torch.dtype, context: RuleContext) -> Propagator:
        self._check(node)

        def propagate(a: Tensor, out: Tensor, aux: Union[Tensor, None], R: Tensor) -> tuple[Tensor, None]:
            n, c = a.shape[:2]
            r_in = R.new_zeros(n, c, a.shape[2] * a.shape[3])
            r_in.scatter_add_(2, aux.flatten(2), R.flatten(2))
            return r_in.view(a.shape), None

        return propagate


def pool_window(node: Node) -> tuple[list[int], list[int], list[int]]:
    """Kernel, stride and padding of a pool module as lists of two ints."""
    m = node.module
    pair = torch.nn.modules.utils._pair
    return list(pair(m.kernel_size)), list(pair(m.stride or m.kernel_size)), list(pair(m.padding))


class AvgPoolZ(Rule):
    """A max-pool propagated by the z-rule as an average pool over the same windows.

    PyTorchRelevancePropagation replaces a VGG's 2x2 max-pools by ``AvgPool2d(2)``, the
    same windows; a ResNet's 3x3 stride-2 padded max-pool becomes the matching average
    pool (zero padding counted).
    """

    kinds = ("maxpool",)

    def __init__(self, stabilizer: float = 1e-5):
        self.stabilizer = stabilizer

    def bind(self, node: Node, dtype: torch.dtype, context: RuleContext) -> Propagator:
        self._check(node)
        if torch.nn.modules.utils._pair(node.module.dilation) != (1, 1):
            raise UnsupportedModelError(f"no LRP rule for node '{node.name}' (dilated MaxPool2d as an average pool)")
        kernel, stride, pad = pool_window(node)
        ceil, eps = node.module.ceil_mode, self.stabilizer

        def propagate(a: Tensor, out: Tensor, aux: Union[Tensor, None], R: Tensor) -> tuple[Tensor, None]:
            a32 = a.float()
            z = F.avg_pool2d(a32, kernel, stride, pad, ceil, True)
            s = R / stabilise(z, eps, False)
            return a32 * torch.ops.aten.avg_pool2d_backward(s, a32, kernel, stride, pad, ceil, True, None), None

        return propagate
