"""Rules of attention: the softmax, products of two activations, and the heads' index maps.

Attention is ``softmax(Q K^T / sqrt(d)) V``. Two ways to explain it:

- **CP-LRP** (Ali et al., ICML 2022; LXT 2.1's torchvision ViT recipe): the attention
  probabilities are held constant. ``P V`` is then linear in ``V`` and the epsilon rule
  sends all relevance to the values (:class:`AttentionValues`); the softmax, and so the
  queries and keys, get none (:class:`HeldConstant`).
- **AttnLRP** (Achtibat et al., ICML 2024): the softmax by Prop. 3.1,
  ``R_in = x (R - s sum(R))`` with -inf inputs (masks) read as 0 (:class:`SoftmaxTaylor`,
  LXT's ``softmax_fn``); a product ``Z = A B`` of two activations by the uniform epsilon
  rule of Prop. 3.3, each operand half: ``R_A = A ((R / stabilise(2Z)) B^T)``,
  ``R_B = B (A^T (R / stabilise(2Z)))`` (:class:`UniformProduct`, LXT's ``matmul_fn``).

Heads are split and merged by reshapes and transposes; relevance follows the indices back
(:class:`Heads`, fixed by the op). All of these run in fp32 and return no scale factor.
"""
from __future__ import annotations

from typing import Union

import torch
from torch import Tensor

from realtime_lrp.lrp.nodes import Node
from realtime_lrp.lrp.rules.base import Propagator, Rule, RuleContext, stabilise


def split_heads(x: Tensor, heads: int, batch_first: bool, keys: bool) -> Tensor:
    """(N, T, E) tokens, or (T, N, E) unless ``batch_first``, as (N, heads, T, E / heads);
    keys transposed to (N, heads, E / heads, T)."""
    if not batch_first:
        x = x.transpose(0, 1)
    n, t, e = x.shape
    x = x.reshape(n, t, heads, e // heads).transpose(1, 2)
    return x.transpose(-1, -2) if keys else x


def merge_heads(x: Tensor, batch_first: bool, keys: bool) -> Tensor:
    """The inverse of :func:`split_heads`: (N, heads, T, d) back to (N, T, heads * d) (or (T, N, ...))."""
    if keys:
        x = x.transpose(-1, -2)
    n, h, t, d = x.shape
    x = x.transpose(1, 2).reshape(n, t, h * d)
    return x if batch_first else x.transpose(0, 1)


class Heads(Rule):
    """Relevance back through a split (or merge) of attention heads: the inverse index map."""

    kinds = ("heads",)

    def bind(self, node: Node, dtype: torch.dtype, context: RuleContext) -> Propagator:
        self._check(node)
        heads, batch_first, keys, merge = (node.attrs[k] for k in ("heads", "batch_first", "keys", "merge"))

        def propagate(a: Tensor, out: Tensor, aux: Union[Tensor, None], R: Tensor) -> tuple[Tensor, None]:
            if merge:
                return split_heads(R, heads, batch_first, False), None
            return merge_heads(R, batch_first, keys), None

        return propagate


class HeldConstant(Rule):
    """CP-LRP's softmax: the attention probabilities are constants, so no relevance passes; also
    a constant of the graph (an expanded class token), which keeps the relevance it gets."""

    kinds = ("softmax", "expand", "assert")

    def bind(self, node: Node, dtype: torch.dtype, context: RuleContext) -> Propagator:
        self._check(node)

        def propagate(a: Tensor, out: Tensor, aux: Union[Tensor, None], R: Tensor) -> tuple[None, None]:
            return None, None

        return propagate


class SoftmaxTaylor(Rule):
    """AttnLRP Prop. 3.1: ``R_in = x (R - s sum_j R_j)`` along the softmax's dim, -inf inputs as 0."""

    kinds = ("softmax",)

    def bind(self, node: Node, dtype: torch.dtype, context: RuleContext) -> Propagator:
        self._check(node)
        dim = node.attrs["dim"]

        def propagate(a: Tensor, out: Tensor, aux: Union[Tensor, None], R: Tensor) -> tuple[Tensor, None]:
            x = a.float()
            x = torch.where(torch.isneginf(x), torch.zeros_like(x), x)
            R = R.float()
            return x * (R - out.float() * R.sum(dim, keepdim=True)), None

        return propagate


class AttentionValues(Rule):
    """CP-LRP's ``P V``: the first operand (the attention probabilities) held constant, the
    epsilon rule on the second: ``R_V = V (P^T (R / stabilise(P V)))``, ``R_P`` none."""

    kinds = ("matmul",)

    def __init__(self, epsilon: float = 1e-6):
        self.epsilon = epsilon

    def bind(self, node: Node, dtype: torch.dtype, context: RuleContext) -> Propagator:
        self._check(node)
        eps = self.epsilon

        def propagate(a: tuple[Tensor, Tensor], out: Tensor, aux: Union[Tensor, None],
                      R: Tensor) -> tuple[tuple[None, Tensor], None]:
            p, v = a[0].float(), a[1].float()
            s = R.float() / stabilise(out.float(), eps, True)
            return (None, v * (p.transpose(-1, -2) @ s)), None

        return propagate


class UniformProduct(Rule):
    """AttnLRP Prop. 3.3: ``Z = A B``, each operand half by the epsilon rule (module docstring)."""

    kinds = ("matmul",)

    def __init__(self, epsilon: float = 1e-6):
        self.epsilon = epsilon

    def bind(self, node: Node, dtype: torch.dtype, context: RuleContext) -> Propagator:
        self._check(node)
        eps = self.epsilon

        def propagate(a: tuple[Tensor, Tensor], out: Tensor, aux: Union[Tensor, None],
                      R: Tensor) -> tuple[tuple[Tensor, Tensor], None]:
            x, y = a[0].float(), a[1].float()
            s = R.float() / stabilise(2 * out.float(), eps, True)
            return (x * (s @ y.transpose(-1, -2)), y * (x.transpose(-1, -2) @ s)), None

        return propagate
