"""The canonical graph the engine walks: nodes in execution order, each an instance of one op.

A :class:`Node` is what :mod:`realtime_lrp.lrp.graph` makes of one traced operation: its op
(from the registry, :mod:`realtime_lrp.lrp.ops`), the indices of its producers, its folded
parameters in fp32, and what the presets need to know about it (whether its input can be
negative, whether it is the model's first layer).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Union

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from realtime_lrp.lrp.ops import Op

Activation = Union[Tensor, tuple[Tensor, ...]]


class UnsupportedModelError(ValueError):
    """The model cannot be traced, or one of its nodes has no LRP rule."""


@dataclass(eq=False)
class Node:
    """One operation of the canonical graph: its op, producers, folded parameters and forward.

    ``inputs`` are indices of earlier nodes (node 0 is the model input); an ``add`` node
    has two. ``weight``/``bias`` are fp32 copies (batch norm folded in), so callers can
    derive rule weights from them and cast to any dtype. ``attrs`` holds what the op's
    forward needs besides them (a conv's stride and padding, a flatten's dims, ...).
    ``input_signs``: where the graph can tell, the sign of each input channel (a Linear's
    input feature) over every input: +1 never negative, -1 never positive, 0 either.
    """

    name: str
    op: Op
    inputs: tuple[int, ...]
    module: Union[nn.Module, None] = None
    nonneg_input: bool = False
    first: bool = False
    first_conv: bool = False
    weight: Union[Tensor, None] = None
    bias: Union[Tensor, None] = None
    attrs: dict[str, Any] = field(default_factory=dict)
    input_signs: Union[Tensor, None] = None
    _casts: dict = field(default_factory=dict, repr=False)

    @property
    def kind(self) -> str:
        """The op's kind (``conv``, ``linear``, ``relu``, ``add``, ...), the key presets bind rules to."""
        return self.op.kind

    @property
    def conv_args(self) -> dict[str, Any]:
        """A conv's ``stride``, ``padding``, ``dilation`` and ``groups`` (empty for other ops)."""
        return self.attrs.get("conv", {})

    def weight_in(self, dtype: torch.dtype) -> Union[Tensor, None]:
        """The weight in ``dtype``, cast once: the forward pass and rules that use the
        unmodified weight (epsilon, z^B) share one copy instead of two."""
        if self.weight is None:
            return None
        if dtype not in self._casts:
            self._casts[dtype] = self.weight.to(dtype)
        return self._casts[dtype]

    def forward(self, a: Activation, weight: Union[Tensor, None] = None,
                bias: Union[Tensor, None] = None) -> tuple[Tensor, Union[Tensor, None]]:
        """Output of the node for input ``a`` (a tuple for several inputs) and the op's auxiliary
        output (a max-pool's argmax indices, else None)."""
        return self.op.forward(self, a, weight, bias)


@dataclass
class Graph:
    """Canonical nodes in execution order: node 0 is the input, ``output`` the logits' node."""

    nodes: list[Node]
    output: int
