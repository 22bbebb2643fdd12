"""Rules for Conv2d and Linear nodes: epsilon, z+, gamma, flat and z^B.

They follow one pattern: groups of terms ``(input, weight, bias)``; each group has the
denominator ``z = sum(input @ weight + bias)`` and contributes
``input * weight^T (R / stabilise(z))`` to the input relevance.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Union

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.modules.utils import _pair

from realtime_lrp.lrp.nodes import Node
from realtime_lrp.lrp.rules.base import TINY, Propagator, Rule, RuleContext, divide, pow2, quotient, stabilise, times


@dataclass
class _Term:
    """``(input, weight, bias)``; ``channels``: the input channels the term reads (all if None)."""

    source: Union[str, Tensor]
    weight: Tensor
    bias: Union[Tensor, None]
    channels: Union[Tensor, None] = None

    @property
    def key(self) -> Union[str, int, tuple]:
        """Identifies the term's input, so terms on the same input share it."""
        key = self.source if isinstance(self.source, str) else id(self.source)
        return key if self.channels is None else (key, id(self.channels))


@dataclass
class _Group:
    """Terms sharing one denominator, the bias of that denominator and an output mask."""

    terms: list[_Term]
    mask: Union[str, None]
    conv_bias: Union[Tensor, None] = None
    bias: Union[Tensor, None] = None


class _ZPropagator:
    """Generic z-rule for conv and linear layers, built from groups of terms.

    In fp32 nothing is rescaled (there is no underflow to avoid), and a group's bias, plus
    eps when z cannot be negative, is added inside the first convolution; in fp16/bf16 both
    are added in fp32 after it, so a stabiliser of 1e-6 keeps its value. ``z_is_output``: z is the
    node's own output (epsilon), taken as the forward computed it rather than recomputed: in fp32 it
    is the same tensor, one product fewer; in fp16/bf16 relevance from above carries that rounded
    output as a factor, and dividing by a recomputed z instead amplifies the rounding wherever z
    cancels to near zero (measured on a random ViT in bf16: 60 % off fp32 recomputed, 2 % with the output).
    """

    def __init__(self, node: Node, groups: list[tuple[list[_Term], Union[str, None]]], eps: float, signed: bool,
                 dtype: torch.dtype, z_is_output: bool = False, split_sign: bool = False):
        self.node = node
        self.z_is_output = z_is_output
        self.eps = eps
        self.signed = signed
        self.dtype = dtype
        self.scaled = dtype != torch.float32
        self.groups = []
        for terms, mask in groups:
            cast = [_Term(t.source if isinstance(t.source, str) else t.source.to(dtype), self._cast(t.weight), None,
                          t.channels) for t in terms]
            biases = [t.bias for t in terms if t.bias is not None]
            bias = sum(biases[1:], biases[0]) if biases else None
            if self.scaled:
                self.groups.append(_Group(cast, mask, bias=bias))
            else:
                if not signed:
                    bias = node.weight.new_full(node.weight.shape[:1], eps) if bias is None else bias + eps
                self.groups.append(_Group(cast, mask, conv_bias=bias))
        if self.scaled:
            bound = torch.stack([_column_bound(t.weight) for terms, _ in groups for t in terms]).amax()
            self.log_target = torch.floor(torch.log2(2.0**14 / bound.clamp_min(TINY))).clamp(max=14).to(torch.int32)
        self.bias_shape = (1, -1, 1, 1) if node.kind == "conv" else (1, -1)
        self.transpose = _transposer(node)
        self.abs_forward = None
        if split_sign and not self.scaled:  # z from the output: one product instead of two (_split_denominator)
            kept = groups[0][0][0].bias  # the bias z keeps (b+, or none), the output has all of b
            bias = node.weight.new_full(node.weight.shape[:1], 2 * eps)
            bias = bias if kept is None else bias + 2 * kept
            self.abs_forward = (node.weight.abs(), bias if node.bias is None else bias - node.bias)

    def _cast(self, weight: Tensor) -> Tensor:
        return self.node.weight_in(self.dtype) if weight is self.node.weight else weight.to(self.dtype)

    def _input(self, source: Union[str, Tensor], a: Tensor, channels: Union[Tensor, None]) -> Tensor:
        if channels is not None:
            a = a.index_select(1, channels)
        if isinstance(source, Tensor):
            return source.expand_as(a)
        if source == "id":
            return a
        if source == "pos":
            return a.clamp(min=0)
        if source == "neg":
            return a.clamp(max=0)
        if source == "ones":
            return torch.ones_like(a)
        raise ValueError(f"unknown term input {source!r}")

    def _split_denominator(self, inputs: dict, a: Tensor, out: Tensor) -> Tensor:
        """z+ on a signed input, ``a+ W+ + a- W- + c + eps`` (c: b+ or 0), from the output ``a W + b`` and one
        product: ``(a W + |a| |W|) / 2 = a+ W+ + a- W-`` (the cross terms cancel), so z is
        ``(out + |a| |W| + 2c - b + 2 eps) / 2``, ``2c - b = |b|`` where c is b+. Clamped at eps, the exact
        sum's lower bound: the cancellation in ``out + |a| |W|`` can round it to 0 or below on deep models
        (NaN maps on random convnext_base and efficientnet_b6 without the clamp)."""
        inputs["pos"], inputs["neg"] = a.clamp(min=0), a.clamp(max=0)
        weight, bias = self.abs_forward
        return self.node.forward(a.abs(), weight, bias)[0].add_(out).mul_(0.5).clamp_min_(self.eps)

    def _denominator(self, group: _Group, inputs: dict, a: Tensor) -> Tensor:
        z = None
        for i, t in enumerate(group.terms):
            if t.key not in inputs:
                inputs[t.key] = self._input(t.source, a, t.channels)
            zt = self.node.forward(inputs[t.key], t.weight, group.conv_bias if i == 0 else None)[0].float()
            z = zt if z is None else z.add_(zt)
        if group.bias is not None:
            z = z + group.bias.view(self.bias_shape)
        z = z if group.conv_bias is not None and not self.signed else stabilise(z, self.eps, self.signed)
        if any(t.channels is not None for t in group.terms):  # terms of both signs: the sum's bound, as in split
            z = z.clamp_min_(self.eps)
        return z

    def __call__(self, a: Tensor, out: Tensor, aux: Union[Tensor, None], R: Tensor) -> tuple[Tensor, Union[Tensor, None]]:
        inputs: dict = {}
        quotients = []
        for group in self.groups:
            if self.z_is_output:
                inputs["id"] = a
                s = divide(R, out.float(), self.eps, self.signed)
            elif self.abs_forward is not None:
                s = quotient(R, self._split_denominator(inputs, a, out))
            else:
                s = quotient(R, self._denominator(group, inputs, a))
            if group.mask == "pos":
                s = s * (out > 0)
            elif group.mask == "neg":
                s = s * (out < 0)
            quotients.append(s)
        log_scale = None
        if self.scaled:
            peak = torch.stack([s.flatten(1).abs().amax(1) for s in quotients]).amax(0).clamp_min(TINY)
            shift = self.log_target - torch.frexp(peak).exponent  # peak * 2**shift lies in [target / 2, target)
            factor = pow2(shift).view((-1,) + (1,) * (R.dim() - 1))
            quotients = [(s * factor).to(self.dtype) for s in quotients]
            log_scale = -shift.float()
        r_in = None
        for group, s in zip(self.groups, quotients):
            for t in group.terms:
                x = inputs[t.key]
                back = self.transpose(s, t.weight, x.shape).float()
                x = x.float()
                if t.channels is not None:
                    r_in.index_add_(1, t.channels, x * back)
                else:
                    r_in = times(x, back) if r_in is None else r_in.addcmul_(x, back)
        return r_in, log_scale


def _transposer(node: Node) -> Callable[[Tensor, Tensor, torch.Size], Tensor]:
    """``(s, W, input shape) -> W^T s``, the transposed product of a conv or linear node; on the CPU by the
    cheapest call: a matrix product for a 1x1 conv; for a patch conv (stride = kernel, no padding: the
    stems and downsamplers of ViT, Swin and ConvNeXt) a matrix product whose columns are laid back as
    patches (``conv_transpose2d`` took 34-68 ms of ViT-B/16's call, the product 3); a depthwise conv's
    as a forward depthwise conv of the flipped kernel over ``s`` spread by the stride (torch's
    transposed depthwise conv is up to 10x slower on the CPU at stride 2); any other conv's by
    ``conv_transpose2d``."""
    if node.kind != "conv":
        return lambda s, weight, shape: s @ weight
    args = node.conv_args
    if isinstance(args.get("padding", 0), str) or node.weight.device.type != "cpu":  # cuDNN's own is fast
        return lambda s, weight, shape: torch.nn.grad.conv2d_input(shape, weight, s, **args)
    groups = args.get("groups", 1)
    stride, padding, dilation = (_pair(args.get(k, d)) for k, d in (("stride", 1), ("padding", 0), ("dilation", 1)))
    out_channels, width, *kernel = node.weight.shape
    if tuple(kernel) == (1, 1) and stride == (1, 1) and padding == (0, 0) and groups == 1:
        return lambda s, weight, shape: torch.matmul(weight.reshape(out_channels, -1).t(), s.flatten(2)).view(shape)
    if tuple(kernel) == stride and padding == (0, 0) and dilation == (1, 1) and groups == 1:
        kh, kw = kernel

        def patches(s: Tensor, weight: Tensor, shape: torch.Size) -> Tensor:
            n, _, oh, ow = s.shape
            cols = torch.matmul(weight.reshape(out_channels, -1).t(), s.flatten(2))  # (N, C_in*kh*kw, oh*ow)
            back = cols.view(n, shape[1], kh, kw, oh, ow).permute(0, 1, 4, 2, 5, 3)
            back = back.reshape(n, shape[1], oh * kh, ow * kw)
            return F.pad(back, (0, shape[3] - ow * kw, 0, shape[2] - oh * kh))  # rows and columns no patch covers

        return patches
    reach = tuple(d * (k - 1) - p for d, k, p in zip(dilation, kernel, padding))  # the flipped conv's padding
    if groups == out_channels and width == 1 and min(reach) >= 0:
        def depthwise(s: Tensor, weight: Tensor, shape: torch.Size) -> Tensor:
            if stride != (1, 1):  # s at every stride-th position of a zero map, the input's size less the reach
                spread = s.new_zeros(s.shape[:2] + tuple(i + 2 * p - d * (k - 1) for i, p, d, k in
                                                         zip(shape[2:], padding, dilation, kernel)))
                (oh, ow), (sh, sw) = s.shape[2:], stride
                spread[:, :, :(oh - 1) * sh + 1:sh, :(ow - 1) * sw + 1:sw] = s
                s = spread
            return F.conv2d(s, weight.flip(2, 3), None, 1, reach, dilation, groups)

        return depthwise

    def transpose(s: Tensor, weight: Tensor, shape: torch.Size) -> Tensor:
        extra = tuple(i - ((o - 1) * st - 2 * p + d * (k - 1) + 1)
                      for i, o, st, p, d, k in zip(shape[2:], s.shape[2:], stride, padding, dilation, kernel))
        return F.conv_transpose2d(s, weight, None, stride, padding, extra, groups, dilation)

    return transpose


def _column_bound(weight: Tensor) -> Tensor:
    """Largest sum of |weights| that feeds one input unit in the transposed product, in fp64.

    A device tensor, not a Python float: building the engine needs no host synchronisation.
    """
    dims = (0,) + tuple(range(2, weight.dim()))
    return weight.double().abs().sum(dim=dims).amax()


def _split(weight: Tensor) -> tuple[Tensor, Tensor]:
    return weight.clamp(min=0), weight.clamp(max=0)


class Epsilon(Rule):
    """LRP-epsilon: ``R_in = a * W^T (R / (z + eps sign z))`` with the bias kept in z."""

    kinds = ("conv", "linear", "projection")

    def __init__(self, epsilon: float = 1e-6):
        self.epsilon = epsilon

    def bind(self, node: Node, dtype: torch.dtype, context: RuleContext) -> Propagator:
        self._check(node)
        return _ZPropagator(node, [([_Term("id", node.weight, node.bias)], None)], self.epsilon, True, dtype,
                            z_is_output=True)


class ZPlus(Rule):
    """z+ (alpha=1, beta=0): positive weights for positive inputs, negative for negative.

    The positive part of the bias stays in the denominator unless ``zero_bias``.
    ``ones_input`` propagates on an all-ones input (the first layer of
    PyTorchRelevancePropagation). Every term of z is non-negative, so the stabiliser is
    ``z + eps`` (``eps * sign(z)`` with sign(0) = +1 is the same there).
    """

    kinds = ("conv", "linear")

    def __init__(self, stabilizer: float = 1e-6, zero_bias: bool = False, ones_input: bool = False):
        self.stabilizer = stabilizer
        self.zero_bias = zero_bias
        self.ones_input = ones_input

    def bind(self, node: Node, dtype: torch.dtype, context: RuleContext) -> Propagator:
        self._check(node)
        w_pos, w_neg = _split(node.weight)
        bias = None if self.zero_bias or node.bias is None else node.bias.clamp(min=0)
        if self.ones_input:
            terms = [_Term("ones", w_pos, bias)]
        elif node.nonneg_input:
            terms = [_Term("id", w_pos, bias)]
        else:
            terms = _known_sign_terms(node, w_pos, w_neg, bias) or [_Term("pos", w_pos, bias), _Term("neg", w_neg, None)]
        return _ZPropagator(node, [(terms, None)], self.stabilizer, False, dtype,
                            split_sign=terms[0].source == "pos")


def _known_sign_terms(node: Node, w_pos: Tensor, w_neg: Tensor, bias: Union[Tensor, None]) -> Union[list[_Term], None]:
    """z+ on a signed input whose channels' signs the graph knows (``node.input_signs``: DenseNet's
    thresholded ReLUs), in fewer products than the split of every channel: a channel never negative
    takes ``W+``, one never positive ``W-``, so ``a+ W+ + a- W-`` is one product ``a W'`` over them;
    a channel of either sign takes ``W+`` there and the term ``a- (-|W|)`` on its own
    (``a W+ - a- |W| = a+ W+ + a- W-``). That is ``C + C_mixed`` input channels for z and as many for
    the transposed product, against ``C`` and ``2 C`` split (z from the output): None, the split,
    where at least half the channels are mixed."""
    signs = node.input_signs
    if signs is None:
        return None
    mixed = torch.nonzero(signs == 0).flatten()
    if 2 * mixed.numel() >= signs.numel():
        return None
    view = (1, -1) + (1,) * (node.weight.dim() - 2)
    terms = [_Term("id", torch.where(signs.to(node.weight.device).view(view) < 0, w_neg, w_pos), bias)]
    if mixed.numel():
        mixed = mixed.to(node.weight.device)
        terms.append(_Term("neg", -node.weight.abs().index_select(1, mixed), None, mixed))
    return terms


class Gamma(Rule):
    """Generalised LRP-gamma: ``W + gamma W+`` where z > 0 and ``W + gamma W-`` where z < 0."""

    kinds = ("conv", "linear")

    def __init__(self, gamma: float = 0.25, stabilizer: float = 1e-6):
        self.gamma = gamma
        self.stabilizer = stabilizer

    def bind(self, node: Node, dtype: torch.dtype, context: RuleContext) -> Propagator:
        self._check(node)
        w, b, g = node.weight, node.bias, self.gamma
        w_up = w + g * w.clamp(min=0)
        w_down = w + g * w.clamp(max=0)
        b_up = None if b is None else b + g * b.clamp(min=0)
        b_down = None if b is None else b + g * b.clamp(max=0)
        if node.nonneg_input:
            groups = [([_Term("id", w_up, b_up)], "pos"), ([_Term("id", w_down, b_down)], "neg")]
        else:
            groups = [
                ([_Term("pos", w_up, b_up), _Term("neg", w_down, None)], "pos"),
                ([_Term("pos", w_down, b_down), _Term("neg", w_up, None)], "neg"),
            ]
        return _ZPropagator(node, groups, self.stabilizer, True, dtype)


class Flat(Rule):
    """Flat: relevance spread uniformly over each receptive field (weights and input set to one)."""

    kinds = ("conv", "linear")

    def __init__(self, stabilizer: float = 1e-6):
        self.stabilizer = stabilizer

    def bind(self, node: Node, dtype: torch.dtype, context: RuleContext) -> Propagator:
        self._check(node)
        ones = _Term("ones", torch.ones_like(node.weight), None)
        return _ZPropagator(node, [([ones], None)], self.stabilizer, False, dtype)  # z counts inputs: >= 0


class ZBox(Rule):
    """z^B for pixel layers bounded by ``low`` and ``high`` (per-channel tensors or floats).

    Without bounds, those of the engine's context are used: the model's pixel range after
    its normalisation.
    """

    kinds = ("conv", "linear")

    def __init__(self, low: Union[Tensor, float, None] = None, high: Union[Tensor, float, None] = None,
                 stabilizer: float = 1e-6):
        self.low = low
        self.high = high
        self.stabilizer = stabilizer

    def _bound(self, value: Union[Tensor, float], node: Node) -> Tensor:
        channels = node.weight.shape[1] * (node.conv_args.get("groups", 1))
        value = torch.as_tensor(value, dtype=torch.float32).flatten()
        if value.numel() not in (1, channels):
            raise ValueError(f"ZBox bounds have {value.numel()} values, node '{node.name}' has {channels} input channels")
        shape = (1, -1, 1, 1) if node.kind == "conv" else (1, -1)
        return value.expand(channels).reshape(shape).to(node.weight.device)

    def bind(self, node: Node, dtype: torch.dtype, context: RuleContext) -> Propagator:
        self._check(node)
        w_pos, w_neg = _split(node.weight)
        low, high = context.bounds if self.low is None or self.high is None else (self.low, self.high)
        if "input_affine" in node.attrs:  # pixels mapped per channel before this conv (transform_input)
            scale, shift = (t.to(node.weight.device) for t in node.attrs["input_affine"])
            low, high = (torch.as_tensor(b, dtype=torch.float32, device=scale.device) * scale + shift
                         for b in (low, high))
            low, high = torch.minimum(low, high), torch.maximum(low, high)
        terms = [
            _Term("id", node.weight, None),
            _Term(self._bound(low, node), -w_pos, None),
            _Term(self._bound(high, node), -w_neg, None),
        ]
        return _ZPropagator(node, [(terms, None)], self.stabilizer, True, dtype)
