"""What every rule shares: the propagator's signature, the stabiliser, exact powers of two, and :class:`Rule`.

Every rule is a small class whose ``bind(node, dtype, context)`` precomputes what the rule
needs once (W+, W + gamma W+, ...) and returns a propagator, a callable
``(a, out, aux, R) -> (R_in, log_scale)``. Propagators use explicit convolution,
conv-transpose, matrix and pooling-backward calls, never autograd, so a whole pass can be
captured in a CUDA graph.

Mixed precision: the heavy products run in the model's dtype (fp16, bf16 or fp32), while
relevance, denominators and stabilisers stay in fp32, so a stabiliser of 1e-6 behaves the
same in every dtype. In fp16 and bf16, before the quotient ``s = R / z`` is cast to the
compute dtype it is multiplied, per sample, by a power of two that brings its largest
magnitude just below a target chosen from the node's weights: at most 2**14, and small
enough that the transposed product stays below 2**14. The propagator returns the exponent
it applied, negated (an integer as fp32: ``R_true = R_in * 2**log2_scale``), or None in
fp32, which needs no rescaling; the engine adds these up and restores them at the end.
Multiplying by a power of two is exact, so fp16 maps equal fp32 maps up to the rounding of
the products, and branches with different factors can be brought to one factor exactly
where they meet (:func:`pow2`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Union

import torch
from torch import Tensor

from realtime_lrp.lrp.nodes import Node

Propagator = Callable[[Any, Tensor, Union[Tensor, None], Tensor], tuple[Any, Union[Tensor, None]]]
"""``(a, out, aux, R) -> (R_in, log_scale)``; for an ``add`` node ``a`` and ``R_in`` are tuples."""


TINY = 1e-30


def stabilise(z: Tensor, eps: float, signed: bool) -> Tensor:
    """``z + eps * sign(z)`` with sign(0) = +1 (zennit's convention), or ``z + eps``, as a fresh tensor.

    Rules whose z cannot be negative pass ``signed=False``: the result is the same, in one
    pass over z instead of three.
    """
    if not signed:
        return z + eps
    # |z| + eps with the sign of z: the same value as z + eps * sign(z), without a boolean mask (a where
    # over a mask costs 10x an add on the CPU); -0.0 takes -eps, which changes nothing, since a z of
    # -0.0 is a sum of products that are all zero
    return z.abs().add_(eps).copysign_(z)


def quotient(R: Tensor, d: Tensor) -> Tensor:
    """``R / d`` for a fresh denominator ``d``, written into ``d``'s own memory where shapes and dtypes
    allow. Each fresh map costs its first-touch page faults, which dominate elementwise ops on large
    maps in some VMs (ViT-B/16's 3072-wide maps: ~6 ms per op inside a call, 0.06 ms in a warm loop,
    on this project's 2-core machine)."""
    if d.shape != R.shape or d.dtype != R.dtype or (torch.is_grad_enabled() and (R.requires_grad or d.requires_grad)):
        return R / d  # broadcast, promoted or differentiated: out= cannot take it
    return torch.div(R, d, out=d)


def times(x: Tensor, fresh: Tensor) -> Tensor:
    """``x * fresh`` written into ``fresh``'s memory where shapes and dtypes allow (:func:`quotient`)."""
    if fresh.shape != torch.broadcast_shapes(fresh.shape, x.shape) or fresh.dtype != torch.promote_types(
            fresh.dtype, x.dtype) or (torch.is_grad_enabled() and (x.requires_grad or fresh.requires_grad)):
        return x * fresh
    return fresh.mul_(x)


def divide(R: Tensor, z: Tensor, eps: float, signed: bool) -> Tensor:
    """``R / stabilise(z, eps, signed)`` with one fresh map instead of up to four (``z`` is left alone)."""
    return quotient(R, stabilise(z, eps, signed))


def pow2(exponent: Tensor) -> Tensor:
    """``2**exponent`` in fp32 for an integer-valued tensor, built from its bits, so exact
    (no exp2 rounding); 0 below 2**-126, 2**127 at most."""
    biased = (exponent.to(torch.int32) + 127).clamp(0, 254)
    return (biased << 23).view(torch.float32)


@dataclass(frozen=True)
class RuleContext:
    """What a rule may need besides its node: the normalised pixel bounds ``(low, high)`` of the
    model's input (per-channel fp32 tensors), for z^B."""

    bounds: tuple[Tensor, Tensor]


class Rule:
    """Base class: a rule binds to one canonical node and returns its propagator.

    ``kinds`` are the op kinds it applies to; None: any kind (the identity-like rules).
    """

    kinds: Union[tuple[str, ...], None] = ()

    def bind(self, node: Node, dtype: torch.dtype, context: RuleContext) -> Propagator:
        raise NotImplementedError

    def _check(self, node: Node) -> None:
        if self.kinds is not None and node.kind not in self.kinds:
            raise ValueError(f"rule {type(self).__name__} does not apply to node '{node.name}' ({node.kind})")
