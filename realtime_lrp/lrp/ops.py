"""The op registry: every kind of operation the engine explains, declared once.

An :class:`Op` says
- **match**: the module types (subclasses included), module class names (for types of
  libraries the core does not import), functions and tensor methods that are this op;
- **read**: how a traced call becomes a canonical node (its inputs and parameters), or an
  alias of its input (identity-like ops), or a rewrite (batch norm folded into its conv);
- **forward**: what the engine runs in its own forward pass;
- **sign**: ``"nonneg"`` if the output is never negative, ``"keep"`` if it is non-negative
  whenever every input is, ``"any"`` otherwise, so rules can drop terms that are zero;
- **relevance**: :data:`PRESET` if a preset binds its rule (a preset without an entry for
  the kind is an error naming the node), or the rule the op fixes by definition (identity
  for activations, index maps for reshapes);
- **filtered**: whether the top-k relevance filter runs before its rule.

Adding an operation is one entry here (and its test); the engine, the capture loop and the
CLI do not change. :func:`op_for_module`, :func:`op_for_function` and :func:`op_for_method`
are how :mod:`realtime_lrp.lrp.graph` finds an entry.

Readers take ``(reader, op, fx_node, module)``: ``reader`` is the graph builder of
:mod:`realtime_lrp.lrp.graph` (``producer``, ``source``, ``add``, ``alias``,
``fold_batchnorm``, ``unsupported``); ``module`` is None for functions and methods.
"""
from __future__ import annotations

import copy
import inspect
import math
import operator
import re
from dataclasses import dataclass
from typing import Any, Callable, Union

import torch
import torch.fx
import torch.nn.functional as F
from torch import Tensor, nn

from realtime_lrp.lrp.nodes import Activation, Node, UnsupportedModelError
from realtime_lrp.lrp.presets import RuleSpec, rule
from realtime_lrp.lrp.rules.attention import (
    merge_heads,
    patch_phases,
    split_heads,
    window_mask,
    window_partition,
    window_reverse,
)

PRESET = "preset"
"""``Op.relevance`` of ops whose rule the preset chooses."""

Forward = Callable[[Node, Activation, Union[Tensor, None], Union[Tensor, None]], tuple[Tensor, Union[Tensor, None]]]
Reader = Callable[[Any, "Op", Any, Union[nn.Module, None]], None]


@dataclass(frozen=True, eq=False)
class Op:
    """One kind of operation: how it is recognised, read, run and explained (module docstring)."""

    kind: str
    read: Reader
    forward: Union[Forward, None] = None
    modules: tuple[type, ...] = ()
    module_names: tuple[str, ...] = ()
    function_names: tuple[str, ...] = ()
    functions: tuple[object, ...] = ()
    methods: tuple[str, ...] = ()
    sign: str = "any"
    relevance: Union[str, RuleSpec] = PRESET
    filtered: bool = False
    params: bool = False

    def __post_init__(self) -> None:
        if self.sign not in ("nonneg", "keep", "any"):
            raise ValueError(f"op {self.kind}: sign must be 'nonneg', 'keep' or 'any', got {self.sign!r}")


# -- readers ---------------------------------------------------------------------------------

def _one_input(reader: Any, fx_node: Any, module: Union[nn.Module, None]) -> int:
    """The producer of a call's only tensor input; a module called with more is refused."""
    if module is not None and (len(fx_node.args) != 1 or fx_node.kwargs):
        raise reader.unsupported(fx_node, f"{type(module).__name__} called with {len(fx_node.args)} arguments")
    return reader.producer(fx_node, fx_node.args[0])


def _read_plain(reader: Any, op: Op, fx_node: Any, module: Union[nn.Module, None]) -> None:
    """An op of one input and no parameters of its own (activations, pools)."""
    reader.add(fx_node, op, (_one_input(reader, fx_node, module),), module)


def _read_identity(reader: Any, op: Op, fx_node: Any, module: Union[nn.Module, None]) -> None:
    """Dropout and identity: the identity in eval mode, so the node is its input."""
    reader.alias(fx_node, _one_input(reader, fx_node, module))


def _read_params(reader: Any, op: Op, fx_node: Any, module: nn.Module) -> None:
    """Conv2d and Linear: fp32 copies of the weight and bias, and a conv's geometry."""
    source = _one_input(reader, fx_node, module)
    attrs: dict[str, Any] = {}
    if isinstance(module, nn.Conv2d):
        if module.padding_mode != "zeros":
            raise reader.unsupported(fx_node, f"Conv2d with padding_mode={module.padding_mode!r}")
        attrs["conv"] = dict(stride=module.stride, padding=module.padding, dilation=module.dilation,
                             groups=module.groups)
    node = reader.add(fx_node, op, (source,), module, attrs)
    node.weight = module.weight.detach().float()
    node.bias = module.bias.detach().float() if module.bias is not None else None


def _read_batchnorm(reader: Any, op: Op, fx_node: Any, module: nn.Module) -> None:
    reader.fold_batchnorm(fx_node, module, _one_input(reader, fx_node, module))


def _read_add(reader: Any, op: Op, fx_node: Any, module: None) -> None:
    operands = _tensor_and_constant(reader, fx_node)
    if operands is not None:  # x + c: the constant absorbs its share (ops' transformer section)
        node = reader.add(fx_node, ADD_CONSTANT, (operands[0],))
        node.weight = operands[1]
        return
    if len(fx_node.args) != 2 or fx_node.kwargs:
        raise reader.unsupported(fx_node, reader.what(fx_node))
    inputs = tuple(reader.producer(fx_node, arg) for arg in fx_node.args)
    reader.add(fx_node, op, inputs)


def _read_flatten(reader: Any, op: Op, fx_node: Any, module: Union[nn.Module, None]) -> None:
    """``flatten(x, start, end)``, ``x.flatten(...)`` and ``nn.Flatten``: any dims (the relevance is reshaped back)."""
    if module is not None:
        start, end = module.start_dim, module.end_dim
    else:
        args = list(fx_node.args[1:])
        start = fx_node.kwargs.get("start_dim", args[0] if args else 0)
        end = fx_node.kwargs.get("end_dim", args[1] if len(args) > 1 else -1)
    if not isinstance(start, int) or not isinstance(end, int):
        raise reader.unsupported(fx_node, f"{reader.what(fx_node)} with dims known only at run time")
    source = _one_input(reader, fx_node, module)
    reader.add(fx_node, op, (source,), module, {"dims": (start, end)})


# -- forwards --------------------------------------------------------------------------------

def _conv(node: Node, a: Tensor, weight: Tensor, bias: Union[Tensor, None]) -> tuple[Tensor, None]:
    return F.conv2d(a, weight, bias, **node.conv_args), None


def _linear(node: Node, a: Tensor, weight: Tensor, bias: Union[Tensor, None]) -> tuple[Tensor, None]:
    return F.linear(a, weight, bias), None


def _relu(node: Node, a: Tensor, weight: None, bias: None) -> tuple[Tensor, None]:
    return F.relu(a), None


def _add(node: Node, a: tuple[Tensor, Tensor], weight: None, bias: None) -> tuple[Tensor, None]:
    return a[0] + a[1], None


def _maxpool(node: Node, a: Tensor, weight: None, bias: None) -> tuple[Tensor, Tensor]:
    m = node.module
    return F.max_pool2d(a, m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode, return_indices=True)


def _avgpool(node: Node, a: Tensor, weight: None, bias: None) -> tuple[Tensor, None]:
    m = node.module
    return F.avg_pool2d(a, m.kernel_size, m.stride, m.padding, m.ceil_mode, m.count_include_pad,
                        m.divisor_override), None


def _adaptive_avgpool(node: Node, a: Tensor, weight: None, bias: None) -> tuple[Tensor, None]:
    return F.adaptive_avg_pool2d(a, node.module.output_size), None


def _flatten(node: Node, a: Tensor, weight: None, bias: None) -> tuple[Tensor, None]:
    return a.flatten(*node.attrs.get("dims", (1, -1))), None


# -- index ops and concatenation ---------------------------------------------------------------
# Ops that only move values: their rule is the backward of their index map (rules/index.py),
# fixed, so presets need no entry. Shapes given as ``x.size()``/``x.shape`` arithmetic are
# read by the graph as run-time values (``reader.ints``); the tensors whose shapes they read
# become extra inputs after the data input, which get no relevance.

def _dim_arg(reader: Any, fx_node: Any, position: int, name: str, default: Any) -> Any:
    """A call's argument by position or keyword; an int it must be (not a run-time value)."""
    args = fx_node.args
    value = fx_node.kwargs.get(name, args[position] if len(args) > position else default)
    if isinstance(value, (list, tuple)) and all(isinstance(v, int) for v in value):
        return tuple(value)
    if not isinstance(value, int):
        raise reader.unsupported(fx_node, f"{reader.what(fx_node)} with {name} known only at run time")
    return value


def _read_cat(reader: Any, op: Op, fx_node: Any, module: None) -> None:
    """``torch.cat(tensors, dim)``; one tensor is the identity."""
    tensors = fx_node.kwargs.get("tensors", fx_node.args[0] if fx_node.args else None)
    if not isinstance(tensors, (list, tuple)) or not tensors:
        raise reader.unsupported(fx_node, f"{reader.what(fx_node)} of {tensors!r}")
    inputs = tuple(reader.producer(fx_node, t) for t in tensors)
    dim = _dim_arg(reader, fx_node, 1, "dim", 0)
    if len(inputs) == 1:
        reader.alias(fx_node, inputs[0])
    else:
        reader.add(fx_node, op, inputs, attrs={"dim": dim})


def _part(split: Callable[[int], list[int]], dim: int, k: int) -> Callable[[torch.Size], tuple]:
    """The index of part ``k`` of a tensor cut along ``dim`` into the sizes ``split(size)``."""
    def index(shape: torch.Size) -> tuple:
        d = dim % len(shape)
        sizes = split(shape[d])
        if k >= len(sizes):
            raise IndexError(f"part {k} of {len(sizes)}")
        start = sum(sizes[:k])
        return (slice(None),) * d + (slice(start, start + sizes[k]),)

    return index


def _chunk_sizes(chunks: int) -> Callable[[int], list[int]]:
    def sizes(n: int) -> list[int]:
        step = -(-n // chunks)
        return [min(step, n - s) for s in range(0, n, step)] if n else [0]

    return sizes


def _split_sizes(size: Union[int, tuple[int, ...]]) -> Callable[[int], list[int]]:
    def sizes(n: int) -> list[int]:
        if isinstance(size, tuple):
            if sum(size) != n:
                raise ValueError(f"split sizes {size} do not add up to {n}")
            return list(size)
        return [min(size, n - s) for s in range(0, n, size)] if n else [0]

    return sizes


def _read_parts(reader: Any, op: Op, fx_node: Any, module: None) -> None:
    """``chunk``/``split`` (function or method): a tuple of parts, each read by a ``getitem`` as a slice."""
    source = reader.producer(fx_node, fx_node.args[0])
    name = fx_node.target if isinstance(fx_node.target, str) else fx_node.target.__name__
    if name == "chunk":
        sizes = _chunk_sizes(_dim_arg(reader, fx_node, 1, "chunks", None))
    else:
        sizes = _split_sizes(_dim_arg(reader, fx_node, 1, "split_size_or_sections",
                                      fx_node.kwargs.get("split_size", None)))
    dim = _dim_arg(reader, fx_node, 2, "dim", 0)
    reader.parts(fx_node, source, lambda k: _part(sizes, dim, k))


def _basic_index(reader: Any, fx_node: Any, index: Any) -> tuple:
    """A tensor's ``[...]`` of ints, slices of ints, None and Ellipsis (what moves values without repeats)."""
    items = index if isinstance(index, tuple) else (index,)
    for item in items:
        fields = (item.start, item.stop, item.step) if isinstance(item, slice) else (item,)
        if not all(f is None or f is Ellipsis or (isinstance(f, int) and not isinstance(f, bool)) for f in fields):
            raise reader.unsupported(fx_node, f"indexing a tensor with {item!r} (only ints, slices, None, ...)")
        if isinstance(item, slice) and item.step is not None and item.step <= 0:
            raise reader.unsupported(fx_node, f"indexing a tensor with {item!r}")
    return items


def _exact(reader: Any, arg: Any) -> Any:
    """A copy of a constant argument as the model holds it (a buffer keeps its dtype: an index stays an
    integer; a copy: an in-place call, Swin V2's ``ReLU(inplace=True)``, changes no other constant)."""
    if isinstance(arg, torch.fx.Node) and arg.op == "get_attr":
        value = reader.traced
        for part in arg.target.split("."):
            value = getattr(value, part)
        return value.detach().clone()
    return reader.constants[arg].clone()


def folded(reader: Any, fx_node: Any) -> bool:
    """A call whose tensor inputs are all constants, computed once when read: a constant of the graph, not a
    node (MaxViT's relative position bias gathered from its table, Swin V2's from its MLP). True if it was."""
    tensors: list[Any] = []
    torch.fx.node.map_arg((fx_node.args, fx_node.kwargs), tensors.append)
    if fx_node.op not in ("call_function", "call_method", "call_module") or not tensors \
            or any(t not in reader.constants for t in tensors):
        return False
    args, kwargs = torch.fx.node.map_arg((fx_node.args, fx_node.kwargs), lambda t: _exact(reader, t))
    with torch.no_grad():
        if fx_node.op == "call_method":
            value = getattr(args[0], fx_node.target)(*args[1:], **kwargs)
        elif fx_node.op == "call_module":
            value = reader.traced.get_submodule(fx_node.target)(*args, **kwargs)
        else:
            value = fx_node.target(*args, **kwargs)
    if not isinstance(value, Tensor):
        return False
    reader.constants[fx_node] = value.float() if value.is_floating_point() else value
    return True


def _read_getitem(reader: Any, op: Op, fx_node: Any, module: None) -> None:
    """``parts[k]`` of a chunk/split, or ``x[...]`` of a tensor: a slice of the input."""
    container, key = fx_node.args
    part = reader.part_of(container)
    if part is not None:
        source, index_of = part
        if not isinstance(key, int):
            raise reader.unsupported(fx_node, f"part {key!r} of a chunk or split")
        reader.add(fx_node, op, (source,), attrs={"index": index_of(key)})
        return
    source = reader.producer(fx_node, container)
    items = _basic_index(reader, fx_node, key)
    reader.add(fx_node, op, (source,), attrs={"index": lambda shape: items})


def _read_view(reader: Any, op: Op, fx_node: Any, module: None) -> None:
    """``x.view(...)``, ``x.reshape(...)``, ``torch.reshape(x, shape)``: sizes may be read from shapes at run time."""
    source = reader.producer(fx_node, fx_node.args[0])
    sizes = fx_node.args[1:] or (fx_node.kwargs.get("shape", ()),)
    if len(sizes) == 1 and isinstance(sizes[0], (list, tuple)):
        sizes = tuple(sizes[0])
    shape, refs = reader.ints(fx_node, sizes, source)
    reader.add(fx_node, op, (source, *refs), attrs={"shape": shape, "data_inputs": 1})


def _read_unsqueeze(reader: Any, op: Op, fx_node: Any, module: None) -> None:
    """``unsqueeze(x, d)``/``squeeze(x[, d])``: a reshape with dims fixed when read."""
    source = reader.producer(fx_node, fx_node.args[0])
    name = fx_node.target if isinstance(fx_node.target, str) else fx_node.target.__name__
    dim = _dim_arg(reader, fx_node, 1, "dim", None if name == "squeeze" else 0)
    reader.add(fx_node, op, (source,), attrs={"squeeze": name == "squeeze", "dim": dim})


def _read_permute(reader: Any, op: Op, fx_node: Any, module: None) -> None:
    """``transpose(x, d0, d1)`` (``swapaxes``, ``swapdims``) and ``permute(x, dims)`` (methods or functions)."""
    source = reader.producer(fx_node, fx_node.args[0])
    name = fx_node.target if isinstance(fx_node.target, str) else fx_node.target.__name__
    if name in ("transpose", "swapaxes", "swapdims"):
        first, second = ("axis0", "axis1") if name == "swapaxes" else ("dim0", "dim1")
        d0, d1 = _dim_arg(reader, fx_node, 1, first, None), _dim_arg(reader, fx_node, 2, second, None)

        def order(ndim: int) -> list[int]:
            dims = list(range(ndim))
            dims[d0 % ndim], dims[d1 % ndim] = dims[d1 % ndim], dims[d0 % ndim]
            return dims
    else:
        rest = fx_node.args[1:] or (fx_node.kwargs.get("dims"),)
        dims = tuple(rest[0]) if len(rest) == 1 and isinstance(rest[0], (list, tuple)) else tuple(rest)
        if not all(isinstance(d, int) for d in dims):
            raise reader.unsupported(fx_node, f"{reader.what(fx_node)} with dims known only at run time")

        def order(ndim: int) -> list[int]:
            return [d % ndim for d in dims]
    reader.add(fx_node, op, (source,), attrs={"order": order})


def _read_contiguous(reader: Any, op: Op, fx_node: Any, module: None) -> None:
    """``x.contiguous()``/``x.clone()``: the same values, so the node is its input."""
    reader.alias(fx_node, reader.producer(fx_node, fx_node.args[0]))


def _data(node: Node, a: Activation) -> tuple[Tensor, dict[int, torch.Size]]:
    """The data input of a node with shape inputs after it, and every input's shape by node index."""
    tensors = a if isinstance(a, tuple) else (a,)
    return tensors[0], {i: t.shape for i, t in zip(node.inputs, tensors)}


def _cat(node: Node, a: tuple[Tensor, ...], weight: None, bias: None) -> tuple[Tensor, None]:
    return torch.cat(a, node.attrs["dim"]), None


def _select(node: Node, a: Tensor, weight: None, bias: None) -> tuple[Tensor, None]:
    return a[node.attrs["index"](a.shape)], None


def _view(node: Node, a: Activation, weight: None, bias: None) -> tuple[Tensor, None]:
    x, shapes = _data(node, a)
    return x.reshape(node.attrs["shape"](shapes)), None


def _unsqueeze(node: Node, a: Tensor, weight: None, bias: None) -> tuple[Tensor, None]:
    dim = node.attrs["dim"]
    if node.attrs["squeeze"]:
        return (a.squeeze() if dim is None else a.squeeze(dim)), None
    return a.unsqueeze(dim), None


def _permute(node: Node, a: Tensor, weight: None, bias: None) -> tuple[Tensor, None]:
    return a.permute(node.attrs["order"](a.dim())), None


def _channel_affine(node: Node, a: Tensor, weight: Tensor, bias: Tensor) -> tuple[Tensor, None]:
    return a * weight.view(1, -1, 1, 1) + bias.view(1, -1, 1, 1), None


CHANNEL_AFFINE = Op("channel_affine", lambda *args: None, _channel_affine, relevance=rule("Pass"))
"""A per-channel ``x * a + b`` written channel by channel (torchvision's ``transform_input``), read by the
graph from its pattern: relevance passes per pixel and channel (the identity rule on a constant affine map),
and the first conv's z^B bounds are mapped through it."""
def _shifted_relu(node: Node, a: Tensor, weight: Tensor, bias: Tensor) -> tuple[Tensor, None]:
    sign, floor = weight.view(1, -1, 1, 1), bias.view(1, -1, 1, 1)
    return torch.where((a - floor) * sign > 0, a, floor), None


def _border_pad(node: Node, a: Tensor, weight: Tensor, bias: None) -> tuple[Tensor, None]:
    (ph, pw), (n, c, h, w) = node.attrs["pad"], a.shape
    out = weight.view(1, -1, 1, 1).expand(n, c, h + 2 * ph, w + 2 * pw).clone()
    out[:, :, ph:ph + h, pw:pw + w] = a
    return out, None


BATCHNORM_RIGHT = Op("batchnorm_right", lambda *args: None)
"""A batch norm after no conv: the graph merges it into the Conv2d/Linear after it (``graph._merge_right``)."""
SHIFTED_RELU = Op("shifted_relu", lambda *args: None, _shifted_relu, relevance=rule("Pass"))
"""The ReLU between a batch norm and the layer it is merged into: ``x`` where the batch norm's output is
positive, else the input whose batch norm output is 0 (Pahde's thresholded ReLU); the identity rule, as the ReLU's."""
BORDER_PAD = Op("border_pad", lambda *args: None, _border_pad, relevance=rule("Crop"))
"""Explicit padding of a conv a batch norm is merged into, with the per-channel value whose batch norm output is 0."""
CAT = Op("cat", _read_cat, _cat, functions=(torch.cat, torch.concat, torch.concatenate), sign="keep",
         relevance=rule("Concat"))
PARTS = Op("parts", _read_parts, functions=(torch.chunk, torch.split), methods=("chunk", "split"))
SELECT = Op("select", _read_getitem, _select, functions=(operator.getitem,), sign="keep", relevance=rule("Select"))
VIEW = Op("view", _read_view, _view, functions=(torch.reshape,), methods=("view", "reshape"), sign="keep",
          relevance=rule("View"))
UNSQUEEZE = Op("unsqueeze", _read_unsqueeze, _unsqueeze, functions=(torch.unsqueeze, torch.squeeze),
               methods=("unsqueeze", "squeeze"), sign="keep", relevance=rule("View"))
PERMUTE = Op("permute", _read_permute, _permute, functions=(torch.transpose, torch.permute, torch.swapaxes,
                                                           torch.swapdims),
             methods=("transpose", "permute", "swapaxes", "swapdims"), sign="keep", relevance=rule("Permute"))
CONTIGUOUS = Op("contiguous", _read_contiguous, methods=("contiguous", "clone"))

_INDEX_OPS: tuple[Op, ...] = (CAT, PARTS, SELECT, VIEW, UNSQUEEZE, PERMUTE, CONTIGUOUS, CHANNEL_AFFINE,
                              BATCHNORM_RIGHT, SHIFTED_RELU, BORDER_PAD)


# -- normalisation, attention and transformers ---------------------------------------------
# LayerNorm (std held constant), sums with a constant (position embedding: a get_attr
# parameter or a number; products with one are the activation section's scale), nn.MultiheadAttention read as its parts
# (q/k/v projections, heads, Q K^T, softmax, P V, merge, output projection), and the
# softmax and matmul of two activations that Swin's and MaxViT's attention call directly.

def _read_layernorm(reader: Any, op: Op, fx_node: Any, module: nn.Module) -> None:
    """``nn.LayerNorm`` over the last dim, or torchvision's ``LayerNorm2d`` over the channels of (N, C, H, W)."""
    source = _one_input(reader, fx_node, module)
    if len(module.normalized_shape) != 1:
        raise reader.unsupported(fx_node, f"LayerNorm over {len(module.normalized_shape)} dims (only the last one)")
    if type(module).forward is nn.LayerNorm.forward:
        dim = -1
    elif type(module).__name__ == "LayerNorm2d":  # ConvNeXt: permute, layer_norm over C, permute back
        dim = 1
    else:
        raise reader.unsupported(fx_node, f"{type(module).__name__}, a LayerNorm with a forward of its own")
    node = reader.add(fx_node, op, (source,), module, {"dim": dim, "eps": module.eps})
    node.weight = None if module.weight is None else module.weight.detach().float()
    node.bias = None if module.bias is None else module.bias.detach().float()


def _layernorm(node: Node, a: Tensor, weight: Union[Tensor, None], bias: Union[Tensor, None]) -> tuple[Tensor, None]:
    eps = node.attrs["eps"]
    if node.attrs["dim"] == 1:
        return F.layer_norm(a.permute(0, 2, 3, 1), a.shape[1:2], weight, bias, eps).permute(0, 3, 1, 2), None
    return F.layer_norm(a, a.shape[-1:], weight, bias, eps), None


def _tensor_and_constant(reader: Any, fx_node: Any) -> Union[tuple[int, Tensor], None]:
    """A binary call's graph input and its constant operand (a parameter, buffer or number), or None."""
    if len(fx_node.args) != 2 or fx_node.kwargs:
        return None
    for x, c in (fx_node.args, fx_node.args[::-1]):
        constant = reader.constant(c)
        if isinstance(x, torch.fx.Node) and x in reader.env and constant is not None:
            return reader.env[x], constant
    return None


def _add_constant(node: Node, a: Tensor, weight: Tensor, bias: None) -> tuple[Tensor, None]:
    return a + weight, None


def _read_attention(reader: Any, op: Op, fx_node: Any, module: nn.MultiheadAttention) -> None:
    """Self-attention as torchvision's ViT calls it, ``attn(x, x, x, need_weights=False)[0]``, read as its parts."""
    query, key, value = (list(fx_node.args) + [fx_node.kwargs.get(k) for k in ("query", "key", "value")])[:3]
    extra = set(fx_node.kwargs) - {"need_weights", "average_attn_weights"}
    if len(fx_node.args) > 3 or extra or not (query is key is value):
        raise reader.unsupported(fx_node, "MultiheadAttention other than self-attention attn(x, x, x) without masks")
    if not module._qkv_same_embed_dim or module.bias_k is not None or module.add_zero_attn:
        raise reader.unsupported(fx_node, "MultiheadAttention with separate q/k/v weights, bias_k/bias_v or "
                                 "add_zero_attn")
    outputs = list(fx_node.users)
    if not all(u.op == "call_function" and u.target is operator.getitem and u.args[1] in (0, 1) for u in outputs) \
            or any(u.args[1] == 1 and u.users for u in outputs):
        raise reader.unsupported(fx_node, "MultiheadAttention whose attention weights are used")
    x = reader.producer(fx_node, query)
    e, heads, first = module.embed_dim, module.num_heads, module.batch_first
    scale = (e // heads) ** -0.5  # folded into the query projection: the rules are invariant to it
    w, b = module.in_proj_weight.detach().float(), module.in_proj_bias
    b = torch.zeros(3 * e) if b is None else b.detach().float()
    projections = []
    for part, factor in zip(range(3), (scale, 1.0, 1.0)):
        node = reader.add(fx_node, PROJECTION, (x,), module)
        node.weight, node.bias = w[part * e:(part + 1) * e] * factor, b[part * e:(part + 1) * e] * factor
        projections.append(len(reader.nodes) - 1)
    split = [reader.add(fx_node, HEADS, (p,), attrs={"heads": heads, "batch_first": first, "keys": keys,
                                                    "merge": False})
             for p, keys in zip(projections, (False, True, False))]
    q, k, v = (reader.nodes.index(n) for n in split)
    reader.add(fx_node, MATMUL, (q, k))
    reader.add(fx_node, SOFTMAX, (len(reader.nodes) - 1,), attrs={"dim": -1})
    reader.add(fx_node, MATMUL, (len(reader.nodes) - 1, v))
    reader.add(fx_node, HEADS, (len(reader.nodes) - 1,), attrs={"heads": heads, "batch_first": first,
                                                                  "keys": False, "merge": True})
    out = reader.add(fx_node, PROJECTION, (len(reader.nodes) - 1,), module.out_proj)
    out.name = f"{fx_node.target}.out_proj"
    out.weight = module.out_proj.weight.detach().float()
    out.bias = None if module.out_proj.bias is None else module.out_proj.bias.detach().float()
    for user in outputs:
        if user.args[1] == 0:
            reader.alias(user, len(reader.nodes) - 1)
        else:
            reader.skip(user)


def _heads(node: Node, a: Tensor, weight: None, bias: None) -> tuple[Tensor, None]:
    attrs = node.attrs
    if attrs["merge"]:
        return merge_heads(a, attrs["batch_first"], False), None
    return split_heads(a, attrs["heads"], attrs["batch_first"], attrs["keys"]), None


def _read_matmul(reader: Any, op: Op, fx_node: Any, module: None) -> None:
    """``a @ b`` of two activations (``torch.matmul``, ``x.matmul``)."""
    if len(fx_node.args) != 2 or fx_node.kwargs:
        raise reader.unsupported(fx_node, reader.what(fx_node))
    reader.add(fx_node, op, tuple(reader.producer(fx_node, arg) for arg in fx_node.args))


EINSUM_FORM = "a batched matrix product of two activations ('bij,bjk->bik', any index order, one batch index or more)"


def _einsum_terms(equation: str) -> Union[tuple[str, str, str], None]:
    """``(a, b, out)`` of a two-operand einsum equation, spaces removed; None without ``->`` or with ``...``."""
    equation = equation.replace(" ", "")
    if "->" not in equation or "." in equation:
        return None
    inputs, out = equation.split("->")
    terms = inputs.split(",")
    return (terms[0], terms[1], out) if len(terms) == 2 else None


def _read_einsum(reader: Any, op: Op, fx_node: Any, module: None) -> None:
    """``torch.einsum(eq, a, b)`` of two activations that is a batched matrix product (MaxViT's
    ``Q K^T`` and ``P V``): read as permutes of the operands to (batch, i, j) and (batch, j, k), a
    matmul, and a permute to the output's order, so the matmul's rules apply unchanged."""
    equation, *operands = fx_node.args
    if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
        operands = list(operands[0])
    terms = _einsum_terms(equation) if isinstance(equation, str) and len(operands) == 2 else None
    if terms is None or fx_node.kwargs:
        raise reader.unsupported(fx_node, f"{reader.what(fx_node)} {equation!r}: only {EINSUM_FORM}")
    a, b, out = terms
    batch = [c for c in out if c in a and c in b]
    contracted = [c for c in a if c in b and c not in out]
    free_a, free_b = [c for c in a if c not in b], [c for c in b if c not in a]
    if any(len(set(t)) != len(t) for t in terms) or len(contracted) != 1 or len(free_a) != 1 \
            or len(free_b) != 1 or not batch or sorted(out) != sorted(batch + free_a + free_b) \
            or set(a) | set(b) != set(out) | set(contracted):
        raise reader.unsupported(fx_node, f"{reader.what(fx_node)} {equation!r}: only {EINSUM_FORM}")
    left = _permuted(reader, fx_node, reader.producer(fx_node, operands[0]), a, batch + free_a + contracted)
    right = _permuted(reader, fx_node, reader.producer(fx_node, operands[1]), b, batch + contracted + free_b)
    reader.add(fx_node, MATMUL, (left, right))
    _permuted(reader, fx_node, len(reader.nodes) - 1, "".join(batch + free_a + free_b), list(out))


def _permuted(reader: Any, fx_node: Any, source: int, have: str, want: list[str]) -> int:
    """Node ``source`` with indices ``have`` permuted to ``want``: a permute node, or ``source`` if the order is the same."""
    order = tuple(have.index(c) for c in want)
    if order == tuple(range(len(order))):
        return source
    reader.add(fx_node, PERMUTE, (source,), attrs={"order": lambda ndim: list(order)})
    return len(reader.nodes) - 1


def _matmul(node: Node, a: tuple[Tensor, Tensor], weight: None, bias: None) -> tuple[Tensor, None]:
    return torch.matmul(*a), None


def _read_softmax(reader: Any, op: Op, fx_node: Any, module: Union[nn.Module, None]) -> None:
    """``softmax(x, dim)`` as a module, function or method (no dtype argument; fx gives ``F.softmax`` its defaults)."""
    if module is not None:
        dim = module.dim
        source = _one_input(reader, fx_node, module)
    else:
        dim = fx_node.kwargs.get("dim", fx_node.args[1] if len(fx_node.args) > 1 else None)
        kwargs = {k: v for k, v in fx_node.kwargs.items() if not (k == "_stacklevel" or k == "dtype" and v is None)}
        if not isinstance(dim, int) or set(kwargs) - {"dim"} or len(fx_node.args) > 2:
            raise reader.unsupported(fx_node, f"{reader.what(fx_node)} without an int dim, or with a dtype")
        source = reader.producer(fx_node, fx_node.args[0])
    reader.add(fx_node, op, (source,), module, {"dim": dim})


def _softmax(node: Node, a: Tensor, weight: None, bias: None) -> tuple[Tensor, None]:
    return torch.softmax(a, node.attrs["dim"]), None


def _read_expand(reader: Any, op: Op, fx_node: Any, module: None) -> None:
    """``token.expand(n, -1, -1)`` of a constant (ViT's class token), ``n`` read from a shape at run time:
    a constant input of the graph, which keeps the relevance it gets."""
    constant = reader.constant(fx_node.args[0])
    sizes = fx_node.args[1:]
    if len(sizes) == 1 and isinstance(sizes[0], (list, tuple)):
        sizes = tuple(sizes[0])
    if constant is None or fx_node.kwargs:
        raise reader.unsupported(fx_node, f"{reader.what(fx_node)} of an activation (only of a parameter)")
    shape, refs = reader.ints(fx_node, sizes, -1)
    node = reader.add(fx_node, op, refs, attrs={"shape": shape})
    node.weight = constant


def _expand(node: Node, a: Activation, weight: Tensor, bias: None) -> tuple[Tensor, None]:
    tensors = a if isinstance(a, tuple) else (a,)
    return weight.expand(node.attrs["shape"]({i: t.shape for i, t in zip(node.inputs, tensors)})), None


def _read_assert(reader: Any, op: Op, fx_node: Any, module: None) -> None:
    """``torch._assert(cond, message)`` on shapes (a ViT's image size): checked on every call, where a
    failure is one line, the model's message with the values it names (``Proxy(h)``) filled in."""
    cond, message = (list(fx_node.args) + [""])[:2]
    if not isinstance(cond, torch.fx.Node):
        if not cond:
            raise reader.unsupported(fx_node, f"torch._assert that always fails: {message}")
        reader.skip(fx_node)
        return
    check, refs = reader.ints(fx_node, (cond,), -1)
    named = {n.name: n for n in reader.traced.graph.nodes}
    fills = {}
    for name in re.findall(r"Proxy\((\w+)\)", str(message)):
        if name in named and name not in fills:
            fills[name], more = reader.ints(fx_node, (named[name],), -1)
            refs = tuple(sorted(set(refs) | set(more)))
    reader.add(fx_node, op, refs, attrs={"check": check, "message": str(message), "fills": fills})


def _assert(node: Node, a: Activation, weight: None, bias: None) -> tuple[Tensor, None]:
    tensors = a if isinstance(a, tuple) else (a,)
    shapes = {i: t.shape for i, t in zip(node.inputs, tensors)}
    if not all(node.attrs["check"](shapes)):
        message = node.attrs["message"]
        for name, value in node.attrs["fills"].items():
            got = value(shapes)
            message = message.replace(f"Proxy({name})", str(got[0] if len(got) == 1 else tuple(got)))
        raise ValueError(message.splitlines()[0] if message else f"the model's check '{node.name}' failed")
    return tensors[0], None


def _read_relative_bias(reader: Any, op: Op, fx_node: Any, module: None) -> None:
    """Swin's ``_get_relative_position_bias(table, index, window)``: computed once, a constant."""
    table, index = (reader.constant(arg) for arg in fx_node.args[:2])
    window = fx_node.args[2]
    if table is None or index is None or not isinstance(window, (list, tuple)):
        raise reader.unsupported(fx_node, f"{reader.what(fx_node)} of run-time values")
    tokens = window[0] * window[1]
    bias = table[index.long().view(-1)].view(tokens, tokens, -1).permute(2, 0, 1).contiguous().unsqueeze(0)
    reader.constants[fx_node] = bias


def _read_window_attention(reader: Any, op: Op, fx_node: Any, module: None) -> None:
    """Swin's ``shifted_window_attention``, read as windows, q/k/v projections, heads, Q K^T plus the
    relative position bias and shift mask, softmax, P V, merge, output projection, windows reversed.
    Swin V2's cosine attention (``logit_scale`` given): q and k L2-normalised (:data:`NORMALIZE`), the
    key bias zeroed as torchvision zeroes it, and Q K^T times ``exp(min(logit_scale, log 100))``, a
    product with a constant (:data:`SCALE`); its relative position bias, from an MLP of constants, is a constant."""
    names = ("input", "qkv_weight", "proj_weight", "relative_position_bias", "window_size", "num_heads",
             "shift_size", "attention_dropout", "dropout", "qkv_bias", "proj_bias", "logit_scale", "training")
    args = dict(zip(names, fx_node.args), **fx_node.kwargs)
    if args.get("training", True):
        raise reader.unsupported(fx_node, "shifted_window_attention in training (explain the model in eval mode)")
    x = reader.producer(fx_node, args["input"])
    w, pw, bias = (reader.constant(args.get(k)) for k in ("qkv_weight", "proj_weight", "relative_position_bias"))
    logit_scale = reader.constant(args.get("logit_scale"))
    if w is None or pw is None or bias is None or (logit_scale is None) != (args.get("logit_scale") is None):
        raise reader.unsupported(fx_node, "shifted_window_attention with weights computed at run time")
    b = reader.constant(args.get("qkv_bias"))
    pb = reader.constant(args.get("proj_bias"))
    window, heads = tuple(args["window_size"]), args["num_heads"]
    shift = tuple(args.get("shift_size", (0, 0)))
    e = w.shape[1]
    b = torch.zeros(3 * e) if b is None else b.clone()
    cosine = logit_scale is not None
    if cosine:
        b[e:2 * e] = 0.0
    geometry = {"window": window, "shift": shift}
    windows = reader.add(fx_node, WINDOWS, (x,), attrs={**geometry, "reverse": False})
    source = reader.nodes.index(windows)
    split = []
    for part, factor in zip(range(3), ((1.0 if cosine else (e // heads) ** -0.5), 1.0, 1.0)):
        node = reader.add(fx_node, PROJECTION, (source,))
        node.name = args["qkv_weight"].target.rsplit(".", 1)[0]  # the Linear module whose weight it is
        node.weight, node.bias = w[part * e:(part + 1) * e] * factor, b[part * e:(part + 1) * e] * factor
        split.append(reader.add(fx_node, HEADS, (len(reader.nodes) - 1,),
                                attrs={"heads": heads, "batch_first": True, "keys": part == 1, "merge": False}))
        if cosine and part < 2:  # keys are (N, heads, d, T): normalised over d
            split[-1] = reader.add(fx_node, NORMALIZE, (len(reader.nodes) - 1,), attrs={"dim": -1 if part == 0 else -2})
    q, k, v = (reader.nodes.index(n) for n in split)
    reader.add(fx_node, MATMUL, (q, k))
    if cosine:
        scale = reader.add(fx_node, SCALE, (len(reader.nodes) - 1,))
        scale.weight = logit_scale.clamp(max=math.log(100.0)).exp()
    scores = reader.add(fx_node, ATTENTION_BIAS, (len(reader.nodes) - 1, x), attrs=geometry)
    scores.weight = bias
    reader.add(fx_node, SOFTMAX, (len(reader.nodes) - 1,), attrs={"dim": -1})
    reader.add(fx_node, MATMUL, (len(reader.nodes) - 1, v))
    reader.add(fx_node, HEADS, (len(reader.nodes) - 1,), attrs={"heads": heads, "batch_first": True,
                                                                  "keys": False, "merge": True})
    out = reader.add(fx_node, PROJECTION, (len(reader.nodes) - 1,))
    out.name = args["proj_weight"].target.rsplit(".", 1)[0]
    out.weight, out.bias = pw, pb
    reader.add(fx_node, WINDOWS, (len(reader.nodes) - 1, x), attrs={**geometry, "reverse": True})


def _windows(node: Node, a: Activation, weight: None, bias: None) -> tuple[Tensor, None]:
    window, shift = node.attrs["window"], node.attrs["shift"]
    if node.attrs["reverse"]:
        return window_reverse(a[0], a[1].shape, window, shift), None
    return window_partition(a, window, shift), None


def _attention_bias(node: Node, a: tuple[Tensor, Tensor], weight: Tensor, bias: None) -> tuple[Tensor, None]:
    scores, x = a
    out = scores + weight
    if any(node.attrs["shift"]):
        mask = window_mask(x.shape, node.attrs["window"], node.attrs["shift"], scores)
        n, h, t, _ = out.shape
        out = (out.view(n // mask.shape[0], mask.shape[0], h, t, t) + mask.unsqueeze(0)).view(n, h, t, t)
    return out, None


def _normalize(node: Node, a: Tensor, weight: None, bias: None) -> tuple[Tensor, None]:
    return F.normalize(a, dim=node.attrs["dim"]), None


def _read_patch_merging_pad(reader: Any, op: Op, fx_node: Any, module: None) -> None:
    """Swin's ``_patch_merging_pad``: padded to even sizes, the four 2x2 phases concatenated on channels."""
    reader.add(fx_node, op, (reader.producer(fx_node, fx_node.args[0]),))


def _patch_merging_pad(node: Node, a: Tensor, weight: None, bias: None) -> tuple[Tensor, None]:
    return patch_phases(a), None


def _internal(reader: Any, op: Op, fx_node: Any, module: None) -> None:
    raise reader.unsupported(fx_node, f"{op.kind}, an op the graph makes only itself")


LAYERNORM = Op("layernorm", _read_layernorm, _layernorm, modules=(nn.LayerNorm,))
ADD_CONSTANT = Op("add_constant", _internal, _add_constant, relevance=rule("ShareWithConstant"))
"""``x + c`` with a constant ``c``, made by the ``add`` reader (ViT's position embedding)."""
ATTENTION = Op("attention", _read_attention, modules=(nn.MultiheadAttention,))
PROJECTION = Op("projection", _internal, _linear, filtered=True, params=True)
"""The q/k/v and output projections inside ``nn.MultiheadAttention``: Linear maps its forward calls
as functions (``F.multi_head_attention_forward``), not as modules, so LXT's recipe leaves them to
Gradient x Input while zennit's rules go to the Linear modules; presets bind them apart."""
HEADS = Op("heads", _internal, _heads, sign="keep", relevance=rule("Heads"))
MATMUL = Op("matmul", _read_matmul, _matmul, functions=(operator.matmul, torch.matmul), methods=("matmul",))
EINSUM = Op("einsum", _read_einsum, functions=(torch.einsum,))
"""Read as permutes and a ``matmul`` node (:func:`_read_einsum`)."""
SOFTMAX = Op("softmax", _read_softmax, _softmax, modules=(nn.Softmax,), functions=(torch.softmax, F.softmax),
             methods=("softmax",), sign="nonneg")

EXPAND = Op("expand", _read_expand, _expand, methods=("expand",), relevance=rule("HeldConstant"))
ASSERT = Op("assert", _read_assert, _assert, functions=(torch._assert,), relevance=rule("HeldConstant"))
"""A shape check: no consumer, so no relevance ever reaches it."""

RELATIVE_BIAS = Op("relative_bias", _read_relative_bias,
                   function_names=("torchvision.models.swin_transformer._get_relative_position_bias",))
WINDOW_ATTENTION = Op("window_attention", _read_window_attention,
                      function_names=("torchvision.models.swin_transformer.shifted_window_attention",))
WINDOWS = Op("windows", _internal, _windows, sign="keep", relevance=rule("Windows"))
ATTENTION_BIAS = Op("attention_bias", _internal, _attention_bias, relevance=rule("ShareWithConstant"))
ATTENTION_FORMS = ("nn.MultiheadAttention called as attn(x, x, x), torchvision's shifted_window_attention, or "
                   "softmax(q @ k.transpose(-2, -1) * scale + bias) @ v written out (matmul or einsum, softmax)")
"""The forms of attention the registry reads, named where a fused one is refused."""


def _read_fused_attention(reader: Any, op: Op, fx_node: Any, module: None) -> None:
    raise reader.unsupported(fx_node, f"{reader.what(fx_node)}, attention fused into one call; the nearest "
                                      f"supported forms: {ATTENTION_FORMS}")


FUSED_ATTENTION = Op("fused_attention", _read_fused_attention,
                     functions=(F.scaled_dot_product_attention, F.multi_head_attention_forward))
"""Attention as one call (timm's and Hugging Face's models call ``F.scaled_dot_product_attention``): refused."""
NORMALIZE = Op("normalize", _internal, _normalize, relevance=rule("Pass"))
"""``x / ||x||`` (Swin V2's cosine attention): the norm held constant, as LayerNorm's standard deviation,
so a product with a constant: the identity rule."""
PATCH_MERGING = Op("patch_merging", _read_patch_merging_pad, _patch_merging_pad, sign="keep",
                   relevance=rule("PatchPhases"),
                   function_names=("torchvision.models.swin_transformer._patch_merging_pad",))

_TRANSFORMER_OPS: tuple[Op, ...] = (RELATIVE_BIAS, WINDOW_ATTENTION, WINDOWS, NORMALIZE, FUSED_ATTENTION, ATTENTION_BIAS, PATCH_MERGING, LAYERNORM, ADD_CONSTANT, ATTENTION, PROJECTION, HEADS, MATMUL, EINSUM, SOFTMAX, EXPAND, ASSERT)


# -- activations, gates and functional forms -------------------------------------------------

def _no_inplace(module: nn.Module) -> nn.Module:
    """The module, or a shallow copy computing out of place: the engine keeps every node's
    output, so an activation must not overwrite its input."""
    if not getattr(module, "inplace", False):
        return module
    copy_ = copy.copy(module)
    copy_.inplace = False
    return copy_


def _bound_call(reader: Any, fx_node: Any, fn: Callable[..., Tensor]) -> Callable[[Tensor], Tensor]:
    """``fn`` with the traced call's arguments after the input (constants only), out of place."""
    extra, kwargs = fx_node.args[1:], dict(fx_node.kwargs)
    if any(isinstance(v, torch.fx.Node) for v in (*extra, *kwargs.values())):
        raise reader.unsupported(fx_node, f"{reader.what(fx_node)} with a tensor argument besides its input")
    try:
        bound = inspect.signature(fn).bind(None, *extra, **kwargs)
        bound.arguments.pop("inplace", None)
        extra, kwargs = bound.args[1:], bound.kwargs
    except (TypeError, ValueError):  # builtins (torch.sigmoid, F.gelu) have no signature: take the call as it is
        pass

    def call(a: Tensor) -> Tensor:
        return fn(a, *extra, **kwargs)

    return call


def _read_activation(reader: Any, op: Op, fx_node: Any, module: Union[nn.Module, None]) -> None:
    """An element-wise activation: a module (copied out of place), a function or a tensor method;
    what it computes is kept as ``attrs["fn"]``."""
    source = _one_input(reader, fx_node, module)
    if module is not None:
        fn = _no_inplace(module)
    elif fx_node.op == "call_method":
        fn = _bound_call(reader, fx_node, getattr(Tensor, fx_node.target))
    else:
        fn = _bound_call(reader, fx_node, fx_node.target)
    reader.add(fx_node, op, (source,), module, {"fn": fn})


def _activation(node: Node, a: Tensor, weight: None, bias: None) -> tuple[Tensor, None]:
    return node.attrs["fn"](a), None


def _activation_op(kind: str, modules: tuple[type, ...], functions: tuple[object, ...] = (),
                   methods: tuple[str, ...] = (), sign: str = "any") -> Op:
    """An element-wise activation with the identity rule (zennit's ``Pass``, AttnLRP Eq. 9)."""
    return Op(kind, _read_activation, _activation, modules=modules, functions=functions, methods=methods, sign=sign,
              relevance=rule("Pass"))


RELU6 = _activation_op("relu6", (nn.ReLU6,), (F.relu6,), sign="nonneg")
HARDTANH = _activation_op("hardtanh", (nn.Hardtanh,), (F.hardtanh,))
SILU = _activation_op("silu", (nn.SiLU,), (F.silu,))
HARDSWISH = _activation_op("hardswish", (nn.Hardswish,), (F.hardswish,))
GELU = _activation_op("gelu", (nn.GELU,), (F.gelu,))
LEAKY_RELU = _activation_op("leaky_relu", (nn.LeakyReLU,), (F.leaky_relu,))
ELU = _activation_op("elu", (nn.ELU,), (F.elu,))
MISH = _activation_op("mish", (nn.Mish,), (F.mish,))
SIGMOID = _activation_op("sigmoid", (nn.Sigmoid,), (torch.sigmoid, F.sigmoid), ("sigmoid",), sign="nonneg")
HARDSIGMOID = _activation_op("hardsigmoid", (nn.Hardsigmoid,), (F.hardsigmoid,), sign="nonneg")
TANH = _activation_op("tanh", (nn.Tanh,), (torch.tanh, F.tanh), ("tanh",))
def _call_args(reader: Any, fx_node: Any, names: tuple[str, ...]) -> dict[str, Any]:
    """The constant arguments after the input of a traced call, by name (``names`` in their
    positional order); a tensor argument or an unknown name is refused."""
    extra = fx_node.args[1:]
    if len(extra) > len(names) or set(fx_node.kwargs) - set(names):
        raise reader.unsupported(fx_node, f"{reader.what(fx_node)} with arguments {fx_node.args[1:]}, {fx_node.kwargs}")
    given = {**dict(zip(names, extra)), **fx_node.kwargs}
    if any(isinstance(v, torch.fx.Node) for v in given.values()):
        raise reader.unsupported(fx_node, f"{reader.what(fx_node)} with a tensor argument besides its input")
    return given


def _read_max_pool_function(reader: Any, op: Op, fx_node: Any, module: None) -> None:
    """``F.max_pool2d(x, ...)``: a max-pool node, as ``nn.MaxPool2d`` with the same arguments."""
    args = _call_args(reader, fx_node, ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices"))
    args.pop("return_indices", None)  # False here: fx resolves True to max_pool2d_with_indices, which is refused
    reader.add(fx_node, MAXPOOL, (reader.producer(fx_node, fx_node.args[0]),), nn.MaxPool2d(**args))


def _read_avg_pool_function(reader: Any, op: Op, fx_node: Any, module: None) -> None:
    """``F.avg_pool2d(x, ...)``: an average-pool node, as ``nn.AvgPool2d`` with the same arguments."""
    args = _call_args(reader, fx_node, ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad",
                                        "divisor_override"))
    reader.add(fx_node, AVGPOOL, (reader.producer(fx_node, fx_node.args[0]),), nn.AvgPool2d(**args))


def _read_adaptive_avg_pool_function(reader: Any, op: Op, fx_node: Any, module: None) -> None:
    """``F.adaptive_avg_pool2d(x, size)``: an adaptive average-pool node, as the module."""
    args = _call_args(reader, fx_node, ("output_size",))
    reader.add(fx_node, ADAPTIVE_AVGPOOL, (reader.producer(fx_node, fx_node.args[0]),),
               nn.AdaptiveAvgPool2d(**args))


def _read_mean(reader: Any, op: Op, fx_node: Any, module: None) -> None:
    """``x.mean((2, 3))`` of an (N, C, H, W) map: a global average pool (``keepdim=True``), then a
    flatten to (N, C) without keepdim; any other reduction is refused."""
    args = _call_args(reader, fx_node, ("dim", "keepdim", "dtype"))
    dims = args.get("dim")
    dims = tuple(dims) if isinstance(dims, (tuple, list)) else (dims,)
    if sorted(dims) not in ([2, 3], [-2, -1]) or args.get("dtype") is not None:
        raise reader.unsupported(fx_node, f"{reader.what(fx_node)} over dims {args.get('dim')} (only the spatial "
                                          "mean over (2, 3) of an (N, C, H, W) map)")
    source = reader.producer(fx_node, fx_node.args[0])
    reader.add(fx_node, ADAPTIVE_AVGPOOL, (source,), nn.AdaptiveAvgPool2d(1))
    if not args.get("keepdim", False):
        reader.add(fx_node, FLATTEN, (len(reader.nodes) - 1,), None, {"dims": (1, -1)})


MAX_POOL_FUNCTION = Op("max_pool_function", _read_max_pool_function, functions=(F.max_pool2d,))
AVG_POOL_FUNCTION = Op("avg_pool_function", _read_avg_pool_function, functions=(F.avg_pool2d,))
ADAPTIVE_AVG_POOL_FUNCTION = Op("adaptive_avg_pool_function", _read_adaptive_avg_pool_function,
                                functions=(F.adaptive_avg_pool2d,))
MEAN = Op("mean", _read_mean, functions=(torch.mean,), methods=("mean",))
"""Functional forms, read as the nodes of their module forms (so presets bind the same rules)."""

_GATES = ("sigmoid", "hardsigmoid")
"""Kinds whose output, computed from the signal it multiplies, makes a product a gate."""


def _depends_on(nodes: list[Node], index: int, ancestor: int) -> bool:
    """Whether node ``index`` is computed from node ``ancestor``."""
    seen, todo = set(), [index]
    while todo:
        i = todo.pop()
        if i == ancestor:
            return True
        if i not in seen and i > ancestor:
            seen.add(i)
            todo.extend(nodes[i].inputs)
    return False


def _read_mul(reader: Any, op: Op, fx_node: Any, module: None) -> None:
    """``x * c`` with a constant or a parameter ``c`` (layer scale): a ``scale`` node, the identity
    rule; ``s * g`` where ``g`` is a sigmoid (hard or not) computed from ``s`` (squeeze-excitation):
    a ``gate`` node with inputs (signal, gate). Any other product of two tensors is refused."""
    if len(fx_node.args) != 2 or fx_node.kwargs:
        raise reader.unsupported(fx_node, reader.what(fx_node))
    constants = [reader.constant(arg) for arg in fx_node.args]
    if constants[0] is not None and constants[1] is not None:
        raise reader.unsupported(fx_node, f"{reader.what(fx_node)} of two constants")
    if constants[0] is not None or constants[1] is not None:
        factor, tensor = (constants[0], fx_node.args[1]) if constants[0] is not None else (constants[1], fx_node.args[0])
        node = reader.add(fx_node, SCALE, (reader.producer(fx_node, tensor),))
        node.weight = factor
        return
    a, b = (reader.producer(fx_node, arg) for arg in fx_node.args)
    for signal, gate in ((a, b), (b, a)):
        if reader.nodes[gate].kind in _GATES and _depends_on(reader.nodes, gate, signal):
            reader.add(fx_node, GATE, (signal, gate))
            return
    raise reader.unsupported(fx_node, f"{reader.what(fx_node)} of two tensors, neither a sigmoid gate computed "
                                      "from the other (s * sigmoid(f(s)))")


def _same_shape(node: Node, out: Tensor, kept: Tensor) -> Tensor:
    """``out``, if it has the shape of the tensor that takes all relevance; a product that
    broadcasts that tensor to a larger shape has no rule (checked on shapes only: no sync)."""
    if out.shape != kept.shape:
        raise UnsupportedModelError(f"no LRP rule for node '{node.name}' (a product that broadcasts its "
                                    f"{tuple(kept.shape)} input to {tuple(out.shape)})")
    return out


def _scale(node: Node, a: Tensor, weight: Tensor, bias: None) -> tuple[Tensor, None]:
    return _same_shape(node, a * weight, a), None


def _gate(node: Node, a: tuple[Tensor, Tensor], weight: None, bias: None) -> tuple[Tensor, None]:
    return _same_shape(node, a[0] * a[1], a[0]), None


MUL = Op("mul", _read_mul, functions=(operator.mul, operator.imul, torch.mul), methods=("mul",))
"""Products, read into one of the two ops below."""
SCALE = Op("scale", _read_mul, _scale, sign="any", relevance=rule("Pass"))
"""A product with a constant: all relevance goes to the tensor (layer scale, eval-mode stochastic depth)."""
GATE = Op("gate", _read_mul, _gate, sign="keep", relevance=rule("SignalTakeAll"))
"""A multiplicative gate (signal, gate): the signal takes all relevance, the gate none (Pahde et al. 2023)."""

FROZEN_BATCHNORM = Op("frozen_batchnorm", _read_batchnorm, module_names=("FrozenBatchNorm2d",))
"""torchvision's ``FrozenBatchNorm2d`` (statistics and affine parameters as buffers): folded as batch norm."""

STOCHASTIC_DEPTH = Op("stochastic_depth", _read_identity, module_names=("StochasticDepth",))
"""torchvision's ``StochasticDepth``: the identity in eval mode, like dropout."""

_ACTIVATION_OPS: tuple[Op, ...] = (RELU6, HARDTANH, SILU, HARDSWISH, GELU, LEAKY_RELU, ELU, MISH, SIGMOID,
                                   HARDSIGMOID, TANH, STOCHASTIC_DEPTH, MAX_POOL_FUNCTION, AVG_POOL_FUNCTION,
                                   ADAPTIVE_AVG_POOL_FUNCTION, MEAN, MUL, SCALE, GATE, FROZEN_BATCHNORM)


# -- the registry ----------------------------------------------------------------------------

CONV = Op("conv", _read_params, _conv, modules=(nn.Conv2d,), filtered=True, params=True)
LINEAR = Op("linear", _read_params, _linear, modules=(nn.Linear,), filtered=True, params=True)
RELU = Op("relu", _read_plain, _relu, modules=(nn.ReLU,), functions=(torch.relu, F.relu), methods=("relu",),
          sign="nonneg", relevance=rule("Pass"))
MAXPOOL = Op("maxpool", _read_plain, _maxpool, modules=(nn.MaxPool2d,), sign="keep", filtered=True)
AVGPOOL = Op("avgpool", _read_plain, _avgpool, modules=(nn.AvgPool2d,), sign="keep", filtered=True)
ADAPTIVE_AVGPOOL = Op("adaptive_avgpool", _read_plain, _adaptive_avgpool, modules=(nn.AdaptiveAvgPool2d,),
                      sign="keep", filtered=True)
FLATTEN = Op("flatten", _read_flatten, _flatten, modules=(nn.Flatten,), functions=(torch.flatten,),
             methods=("flatten",), sign="keep", relevance=rule("Reshape"))
ADD = Op("add", _read_add, _add, functions=(operator.add, operator.iadd), sign="keep")
IDENTITY = Op("identity", _read_identity, modules=(nn.Identity, nn.modules.dropout._DropoutNd))
BATCHNORM = Op("batchnorm", _read_batchnorm, modules=(nn.BatchNorm2d,))

OPS: tuple[Op, ...] = (CONV, LINEAR, RELU, MAXPOOL, AVGPOOL, ADAPTIVE_AVGPOOL, FLATTEN, ADD, IDENTITY, BATCHNORM,
                       *_ACTIVATION_OPS, *_INDEX_OPS, *_TRANSFORMER_OPS)
OPS_BY_KIND: dict[str, Op] = {op.kind: op for op in OPS}

_BY_MODULE: dict[type, Op] = {t: op for op in OPS for t in op.modules}
_BY_MODULE_NAME: dict[str, Op] = {name: op for op in OPS for name in op.module_names}
_BY_FUNCTION: dict[object, Op] = {f: op for op in OPS for f in op.functions}
_BY_FUNCTION_NAME: dict[tuple[str, str], Op] = {tuple(f.rsplit(".", 1)): op for op in OPS for f in op.function_names}
_BY_METHOD: dict[str, Op] = {m: op for op in OPS for m in op.methods}


def op_for_module(module: nn.Module) -> Union[Op, None]:
    """The op of a module: its own type or the nearest base class registered, or its class name."""
    for cls in type(module).__mro__:
        if cls in _BY_MODULE:
            return _BY_MODULE[cls]
    return _BY_MODULE_NAME.get(type(module).__name__)


def op_for_function(target: object) -> Union[Op, None]:
    """The op of a ``call_function`` target (``torch.flatten``, ``operator.add``, ...)."""
    try:
        found = _BY_FUNCTION.get(target)
    except TypeError:  # an unhashable target matches nothing
        return None
    key = (getattr(target, "__module__", None) or "", getattr(target, "__name__", ""))
    return found if found is not None else _BY_FUNCTION_NAME.get(key)


def op_for_method(name: str) -> Union[Op, None]:
    """The op of a ``call_method`` name (``x.relu()``, ...)."""
    return _BY_METHOD.get(name)


def preset_kinds() -> tuple[str, ...]:
    """The kinds whose rule a preset must name."""
    return tuple(op.kind for op in OPS if op.relevance == PRESET and op.forward is not None)
