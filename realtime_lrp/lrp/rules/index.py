"""Rules of index ops: relevance follows the indices of the forward exactly.

Concatenation, slicing (``getitem``, ``chunk``, ``split``), transposes and permutations
move values without changing them, so each input position gets the relevance of the
output position its value went to: the backward of the index map applied to relevance
(the gradient of the op, which for a map that only moves values is this placement).
Nothing is created or lost, so relevance is conserved exactly; no scale factor.
"""
from __future__ import annotations

from typing import Union

import torch
from torch import Tensor

from realtime_lrp.lrp.nodes import Node
from realtime_lrp.lrp.rules.base import Propagator, Rule, RuleContext


class Concat(Rule):
    """``torch.cat``: each input gets its own slice of the output's relevance."""

    kinds = ("cat",)

    def bind(self, node: Node, dtype: torch.dtype, context: RuleContext) -> Propagator:
        self._check(node)
        dim = node.attrs["dim"]

        def propagate(a: tuple[Tensor, ...], out: Tensor, aux: None, R: Tensor) -> tuple[tuple[Tensor, ...], None]:
            return R.split([x.shape[dim] for x in a], dim), None

        return propagate


class Select(Rule):
    """A slice of the input (``x[:, 2:5]``, a ``chunk``/``split`` part): its relevance put back
    at the positions it was read from, zero elsewhere."""

    kinds = ("select",)

    def bind(self, node: Node, dtype: torch.dtype, context: RuleContext) -> Propagator:
        self._check(node)
        index = node.attrs["index"]

        def propagate(a: Union[Tensor, tuple], out: Tensor, aux: None, R: Tensor) -> tuple[Union[Tensor, tuple], None]:
            x = a[0] if isinstance(a, tuple) else a
            r_in = R.new_zeros(x.shape)
            r_in[index(x.shape)] = R
            return ((r_in,) if isinstance(a, tuple) else r_in), None

        return propagate


class Permute(Rule):
    """``transpose``/``permute``: the output's relevance permuted back by the inverse permutation."""

    kinds = ("permute",)

    def bind(self, node: Node, dtype: torch.dtype, context: RuleContext) -> Propagator:
        self._check(node)
        order = node.attrs["order"]

        def propagate(a: Tensor, out: Tensor, aux: None, R: Tensor) -> tuple[Tensor, None]:
            dims = order(a.dim())
            inverse = [0] * len(dims)
            for i, d in enumerate(dims):
                inverse[d] = i
            return R.permute(inverse), None

        return propagate


class View(Rule):
    """``view``/``reshape``/``unsqueeze``/``squeeze``: the output's relevance in the input's shape
    (shape inputs after the data input get none)."""

    kinds = ("view", "unsqueeze")

    def bind(self, node: Node, dtype: torch.dtype, context: RuleContext) -> Propagator:
        self._check(node)

        def propagate(a: Union[Tensor, tuple], out: Tensor, aux: None, R: Tensor) -> tuple[Union[Tensor, tuple], None]:
            if isinstance(a, tuple):
                return (R.reshape(a[0].shape),), None
            return R.reshape(a.shape), None

        return propagate


class Crop(Rule):
    """An explicit border padding: the relevance of the input's own positions (the border's is dropped)."""

    kinds = ("border_pad",)

    def bind(self, node: Node, dtype: torch.dtype, context: RuleContext) -> Propagator:
        self._check(node)
        ph, pw = node.attrs["pad"]

        def propagate(a: Tensor, out: Tensor, aux: None, R: Tensor) -> tuple[Tensor, None]:
            return R[:, :, ph:ph + a.shape[2], pw:pw + a.shape[3]], None

        return propagate
