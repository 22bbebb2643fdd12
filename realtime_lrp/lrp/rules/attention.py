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
(:class:`Heads`, fixed by the op); so are Swin's windows (:class:`Windows`). All of these run in fp32 and return no scale factor.
"""
from __future__ import annotations

from typing import Any, Union

import torch
from torch import Tensor

from realtime_lrp.lrp.nodes import Node
from realtime_lrp.lrp.rules.base import Propagator, Rule, RuleContext, divide


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


def _window_geometry(h: int, w: int, window: tuple[int, int], shift: tuple[int, int]
                     ) -> tuple[int, int, tuple[int, int]]:
    """Swin's padded height and width, and the shift (none along a side the window covers)."""
    ph, pw = h + (-h) % window[0], w + (-w) % window[1]
    return ph, pw, (shift[0] if window[0] < ph else 0, shift[1] if window[1] < pw else 0)


def window_partition(x: Tensor, window: tuple[int, int], shift: tuple[int, int]) -> Tensor:
    """(B, H, W, C) tokens padded to whole windows, cyclically shifted, as (B * windows, w0 * w1, C)."""
    b, h, w, c = x.shape
    ph, pw, (s0, s1) = _window_geometry(h, w, window, shift)
    x = torch.nn.functional.pad(x, (0, 0, 0, pw - w, 0, ph - h))
    if s0 or s1:
        x = torch.roll(x, shifts=(-s0, -s1), dims=(1, 2))
    x = x.view(b, ph // window[0], window[0], pw // window[1], window[1], c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window[0] * window[1], c)


def window_reverse(y: Tensor, shape: torch.Size, window: tuple[int, int], shift: tuple[int, int]) -> Tensor:
    """The inverse of :func:`window_partition` for an input of ``shape`` (padding cropped)."""
    b, h, w, _ = shape
    c = y.shape[-1]
    ph, pw, (s0, s1) = _window_geometry(h, w, window, shift)
    x = y.view(b, ph // window[0], pw // window[1], window[0], window[1], c).permute(0, 1, 3, 2, 4, 5)
    x = x.reshape(b, ph, pw, c)
    if s0 or s1:
        x = torch.roll(x, shifts=(s0, s1), dims=(1, 2))
    return x[:, :h, :w]


def window_mask(shape: torch.Size, window: tuple[int, int], shift: tuple[int, int], like: Tensor) -> Tensor:
    """Shifted windows' attention mask, (windows, 1, T, T): -100 between tokens of different regions."""
    _, h, w, _ = shape
    ph, pw, (s0, s1) = _window_geometry(h, w, window, shift)
    rows = torch.arange(ph, device=like.device)
    cols = torch.arange(pw, device=like.device)
    region_h = (rows >= ph - window[0]).long() + (rows >= ph - s0).long() if s0 else torch.zeros_like(rows)
    region_w = (cols >= pw - window[1]).long() + (cols >= pw - s1).long() if s1 else torch.zeros_like(cols)
    region = (region_h[:, None] * 3 + region_w[None, :]).to(like.dtype)
    ids = window_partition(region.view(1, ph, pw, 1), window, (0, 0)).squeeze(-1)  # (windows, T)
    return torch.where(ids[:, None, :] != ids[:, :, None], -100.0, 0.0).to(like.dtype).unsqueeze(1)


def patch_phases(x: Tensor) -> Tensor:
    """Swin's patch merging input: (B, H, W, C) padded to even H, W, its 2x2 phases concatenated, (B, H/2, W/2, 4C)."""
    h, w = x.shape[1:3]
    x = torch.nn.functional.pad(x, (0, 0, 0, w % 2, 0, h % 2))
    return torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)


class PatchPhases(Rule):
    """Relevance back through :func:`patch_phases`: each phase to its pixels, padding cropped."""

    kinds = ("patch_merging",)

    def bind(self, node: Node, dtype: torch.dtype, context: RuleContext) -> Propagator:
        self._check(node)

        def propagate(a: Tensor, out: Tensor, aux: Union[Tensor, None], R: Tensor) -> tuple[Tensor, None]:
            b, h, w, c = a.shape
            r = R.new_zeros(b, h + h % 2, w + w % 2, c)
            parts = R.chunk(4, -1)
            r[:, 0::2, 0::2], r[:, 1::2, 0::2], r[:, 0::2, 1::2], r[:, 1::2, 1::2] = parts
            return r[:, :h, :w], None

        return propagate


class Windows(Rule):
    """Relevance back through Swin's window partition (or its reverse): the inverse index map."""

    kinds = ("windows",)

    def bind(self, node: Node, dtype: torch.dtype, context: RuleContext) -> Propagator:
        self._check(node)
        window, shift, reverse = node.attrs["window"], node.attrs["shift"], node.attrs["reverse"]

        def propagate(a: Any, out: Tensor, aux: Union[Tensor, None], R: Tensor) -> tuple[Any, None]:
            if reverse:  # inputs (windows, the block's input for its shape)
                return (window_partition(R, window, shift),), None
            return window_reverse(R, a.shape, window, shift), None

        return propagate


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
            s = divide(R.float(), out.float(), eps, True)
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
            s = divide(R.float(), 2 * out.float(), eps, True)
            return (x * (s @ y.transpose(-1, -2)), y * (x.transpose(-1, -2) @ s)), None

        return propagate
