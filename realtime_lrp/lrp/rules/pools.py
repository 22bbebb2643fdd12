"""Rules for max-pools: winner-take-all (the gradient), near-maxima shared, or the z-rule of the average pool of
the same windows."""
from __future__ import annotations

from typing import Union

import torch
import torch.nn.functional as F
from torch import Tensor

from realtime_lrp.lrp.nodes import Node, UnsupportedModelError
from realtime_lrp.lrp.rules.base import Propagator, Rule, RuleContext, divide


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
            s = divide(R, z, eps, False)
            return a32 * torch.ops.aten.avg_pool2d_backward(s, a32, kernel, stride, pad, ceil, True, None), None

        return propagate


class NearMaxShare(Rule):
    """Max-pool with near-ties shared: each output's relevance is split equally among the inputs
    of its window within ``tolerance`` (relative) of the window's maximum.

    Winner-take-all gives everything to one input even where several are equal up to rounding
    (flat backgrounds), so a 1-ulp change of the input, or another batch size's kernel, can move
    relevance to another pixel. Sharing among near-maxima makes the map continuous there; with
    ``tolerance`` 0 only exact ties are shared. Padding never receives relevance.
    """

    kinds = ("maxpool",)

    def __init__(self, tolerance: float = 1e-2):
        if not 0 <= tolerance < 1:
            raise ValueError(f"max-pool tolerance {tolerance:g} is outside [0, 1)")
        self.tolerance = tolerance

    def bind(self, node: Node, dtype: torch.dtype, context: RuleContext) -> Propagator:
        self._check(node)
        kernel, stride, pad = pool_window(node)
        dilation = list(torch.nn.modules.utils._pair(node.module.dilation))
        tol = self.tolerance

        def propagate(a: Tensor, out: Tensor, aux: Union[Tensor, None], R: Tensor) -> tuple[Tensor, None]:
            n, c, h, w = a.shape
            oh, ow = R.shape[2:]
            extra = [max(0, (o - 1) * s + d * (k - 1) + 1 - (size + 2 * p))  # ceil_mode's last windows
                     for o, s, d, k, size, p in zip((oh, ow), stride, dilation, kernel, (h, w), pad)]
            padded = F.pad(a.float(), (pad[1], pad[1] + extra[1], pad[0], pad[0] + extra[0]), value=-torch.inf)
            cols = F.unfold(padded, kernel, dilation, 0, stride).view(n, c, kernel[0] * kernel[1], oh * ow)
            peak = cols.amax(2, keepdim=True)
            near = (cols >= peak - tol * peak.abs()).to(R.dtype)
            share = near / near.sum(2, keepdim=True)
            spread = (share * R.flatten(2)[:, :, None, :]).view(n, c * kernel[0] * kernel[1], oh * ow)
            full = F.fold(spread, padded.shape[2:], kernel, dilation, 0, stride)
            return full[:, :, pad[0]:pad[0] + h, pad[1]:pad[1] + w], None

        return propagate
