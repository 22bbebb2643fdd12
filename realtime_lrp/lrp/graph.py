"""A model as a graph of canonical nodes, the form the LRP engine walks.

:func:`canonize` reads a model with torch.fx symbolic tracing and rewrites it once, before
rules are bound (zennit's canonizer idea). Each traced call is looked up in the op
registry (:mod:`realtime_lrp.lrp.ops`), whose entry reads it into a node; the rewrites
themselves live here, in one place:

- batch norm is folded into the convolution before it, also in a ResNet's downsample
  branch (zennit's merge-batch-norm canonizer);
- identity-like modules (dropout, identity) are dropped: a node is its input;
- every node records whether its input can be negative (from the ops' signs), so rules
  can drop terms that are identically zero for non-negative inputs, and whether it is the
  first Conv/Linear or the first Conv in ``named_modules()`` order (the layers zennit's
  composites treat specially).

The caller's model is never changed: parameters are copied in fp32 as they are read.
Anything the registry does not know raises :class:`UnsupportedModelError` naming the node
and its type.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Union

import torch
import torch.fx
from torch import Tensor, nn

from realtime_lrp.lrp import ops
from realtime_lrp.lrp.nodes import Graph, Node, UnsupportedModelError

__all__ = ["Graph", "Node", "UnsupportedModelError", "canonize"]


class _Tracer(torch.fx.Tracer):
    """fx's tracer, with every module the registry knows kept as one call: a user's subclass of
    ``nn.Conv2d`` is a conv, not the functional calls of its forward."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return ops.op_for_module(m) is not None or super().is_leaf_module(m, module_qualified_name)


_HINTS = (  # (text of the refusal, what to do instead)
    ("'len' is not supported", "x.view(len(x), -1): use torch.flatten(x, 1)"),
    ("int() argument must be", "x.view(int(x.size(0)), -1): use torch.flatten(x, 1) or x.size(0) itself"),
    ("(Tensor.numel)", "x.view(x.numel() // n, -1): use torch.flatten(x, 1)"),
    ("cannot be used as inputs to control flow", "the forward branches on tensor values: make the branch a "
                                                  "Python setting fixed before the model is explained"),
    ("(get_attr ", "a parameter read in a forward, outside a module call: the op that uses it has no rule"),
    ("computed from a tensor's values", "give sizes as ints or read them with x.size()/x.shape"),
)


def _hinted(message: str) -> str:
    """``message`` with what to do, where one applies."""
    hints = [hint for text, hint in _HINTS if text in message]
    return f"{message}; hint: {hints[0]}" if hints else message


def _trace(model: nn.Module) -> torch.fx.GraphModule:
    try:
        tracer = _Tracer()
        graph = tracer.trace(model)
        return torch.fx.GraphModule(tracer.root, graph)
    except Exception as exc:  # fx raises many types for code it cannot follow
        first_line = (str(exc).splitlines() or [""])[0][:200]
        raise UnsupportedModelError(_hinted(
            f"{type(model).__name__} cannot be read as a graph by torch.fx ({type(exc).__name__}: {first_line})"
        )) from None


def _function_name(target: object) -> str:
    module = getattr(target, "__module__", None) or ""
    name = getattr(target, "__name__", str(target))
    if module in ("_operator", "operator"):
        return f"operator.{name}"
    return f"{'torch' if module.startswith('torch') else module}.{name}"


def _fold(weight: Tensor, bias: Union[Tensor, None], bn: nn.Module) -> tuple[Tensor, Tensor]:
    """A conv's weight and bias with the batch norm after it folded in (affine or not)."""
    mean, var = bn.running_mean.float(), bn.running_var.float()
    gamma = bn.weight.detach().float() if bn.weight is not None else torch.ones_like(mean)
    beta = bn.bias.detach().float() if bn.bias is not None else torch.zeros_like(mean)
    scale = gamma / torch.sqrt(var + bn.eps)
    folded = weight * scale.view(-1, 1, 1, 1)
    base = bias if bias is not None else torch.zeros_like(scale)
    return folded, (base - mean) * scale + beta


@dataclass(frozen=True)
class _Sym:
    """An int (or a shape) known only when the engine runs: ``value`` maps node indices to their
    tensors' shapes; ``refs`` are the nodes whose shapes it reads (``x.size(0)``, ``x.shape[2] // 2``)."""

    refs: frozenset
    value: Callable[[Mapping[int, torch.Size]], Any]


_SHAPE_ARITHMETIC = {operator.floordiv, operator.mul, operator.add, operator.sub, operator.mod, operator.neg,
                     operator.eq, operator.ne}  # comparisons: the shape checks of torch._assert


def _resolve(value: Any, shapes: Mapping[int, torch.Size]) -> Any:
    return value.value(shapes) if isinstance(value, _Sym) else value


def _channel_term(term: torch.fx.Node) -> Union[tuple[torch.fx.Node, int, float, float, list], None]:
    """``unsqueeze(x[:, i], 1) * a + b`` (or ``x[:, i:i+1]``, either factor optional): ``(x, i, a, b, nodes)``."""
    scale, shift, nodes = 1.0, 0.0, []
    node = term
    if node.op == "call_function" and node.target is operator.add and isinstance(node.args[1], float):
        shift, nodes, node = node.args[1], nodes + [node], node.args[0]
    if isinstance(node, torch.fx.Node) and node.op == "call_function" and node.target is operator.mul \
            and isinstance(node.args[1], float):
        scale, nodes, node = node.args[1], nodes + [node], node.args[0]
    if not isinstance(node, torch.fx.Node) or not nodes:
        return None
    if node.op == "call_function" and node.target is torch.unsqueeze and node.args[1:] == (1,):
        nodes, node = nodes + [node], node.args[0]
        want = lambda key: isinstance(key[1], int)  # noqa: E731
    else:
        want = lambda key: isinstance(key[1], slice) and key[1].step is None and key[1].stop == key[1].start + 1  # noqa: E731
    if node.op != "call_function" or node.target is not operator.getitem:
        return None
    source, key = node.args
    if not (isinstance(key, tuple) and len(key) == 2 and key[0] == slice(None) and want(key)):
        return None
    nodes.append(node)
    if any(len(n.users) != 1 for n in nodes):
        return None
    index = key[1] if isinstance(key[1], int) else key[1].start
    return source, index, scale, shift, nodes


def _channel_affines(graph: torch.fx.Graph) -> dict[torch.fx.Node, tuple[torch.fx.Node, list, list, list]]:
    """Per-channel affine maps written channel by channel and joined by ``torch.cat(..., 1)``
    (torchvision's GoogLeNet and Inception-v3 ``transform_input``): cat -> (x, scales, shifts, nodes)."""
    found = {}
    for node in graph.nodes:
        if node.op != "call_function" or node.target is not torch.cat or node.kwargs or node.args[1:] != (1,):
            continue
        terms = [_channel_term(t) if isinstance(t, torch.fx.Node) else None for t in node.args[0]]
        if not terms or any(t is None for t in terms) or len({t[0] for t in terms}) != 1 \
                or [t[1] for t in terms] != list(range(len(terms))):
            continue
        found[node] = (terms[0][0], [t[2] for t in terms], [t[3] for t in terms], [n for t in terms for n in t[4]])
    return found


def _affine(bn: nn.Module) -> tuple[Tensor, Tensor]:
    """A batch norm as ``x * scale + shift`` per channel, in fp32."""
    mean, var = bn.running_mean.float(), bn.running_var.float()
    gamma = bn.weight.detach().float() if bn.weight is not None else torch.ones_like(mean)
    beta = bn.bias.detach().float() if bn.bias is not None else torch.zeros_like(mean)
    scale = gamma / torch.sqrt(var + bn.eps)
    return scale, beta - mean * scale


class _Reader:
    """Turns fx nodes into canonical nodes; ``env`` maps each fx node to the index of its value.

    The registry's readers call :meth:`producer`, :meth:`add`, :meth:`alias`,
    :meth:`fold_batchnorm`, :meth:`unsupported` and :meth:`what`.
    """

    def __init__(self, model: nn.Module, traced: torch.fx.GraphModule):
        self.model = model
        self.traced = traced
        self.nodes: list[Node] = []
        self.env: dict[torch.fx.Node, int] = {}
        self.output: Union[int, None] = None
        self.skipped: set[torch.fx.Node] = set()
        self.symbols: dict[torch.fx.Node, _Sym] = {}
        self.tuples: dict[torch.fx.Node, tuple[int, Callable[[int], Any]]] = {}
        self.constants: dict[torch.fx.Node, Tensor] = {}
        self.affines = _channel_affines(traced.graph)
        self.absorbed = {n for _, _, _, nodes in self.affines.values() for n in nodes}

    # -- what the registry's readers use ---------------------------------------------------
    def producer(self, fx_node: torch.fx.Node, arg: object) -> int:
        """The index of the node whose value ``arg`` is; anything else is refused."""
        if not isinstance(arg, torch.fx.Node) or arg not in self.env:
            raise self.unsupported(fx_node, f"input {arg!r} is not a tensor of the graph")
        return self.env[arg]

    def add(self, fx_node: torch.fx.Node, op: ops.Op, inputs: tuple[int, ...],
            module: Union[nn.Module, None] = None, attrs: Union[dict, None] = None) -> Node:
        """A new node for ``fx_node``; named by its module path, or its fx name for functions."""
        name = str(fx_node.target) if fx_node.op == "call_module" else fx_node.name
        node = Node(name, op, inputs, module, attrs=attrs or {})
        self.env[fx_node] = len(self.nodes)
        self.nodes.append(node)
        return node

    def alias(self, fx_node: torch.fx.Node, index: int) -> None:
        """``fx_node``'s value is that of node ``index`` (an identity)."""
        self.env[fx_node] = index

    def fold_batchnorm(self, fx_node: torch.fx.Node, bn: nn.Module, source: int) -> None:
        """Fold ``bn`` into the conv that produced its input if that conv feeds nothing else; any
        other batch norm becomes a node that :func:`_merge_right` merges into the layer after it."""
        if bn.running_mean is None or bn.running_var is None:
            raise UnsupportedModelError(f"batch norm '{fx_node.target}' keeps no running statistics to fold")
        conv = self.nodes[source]
        conv_fx = fx_node.args[0]
        if conv.kind == "conv" and conv_fx.op == "call_module" and conv.name == str(conv_fx.target) \
                and len(conv_fx.users) == 1:
            conv.weight, conv.bias = _fold(conv.weight, conv.bias, bn)
            self.alias(fx_node, source)
            return
        node = self.add(fx_node, ops.BATCHNORM_RIGHT, (source,), bn)
        node.weight, node.bias = _affine(bn)

    def skip(self, fx_node: torch.fx.Node) -> None:
        """``fx_node`` has been read with an earlier call (an unused output of it): visiting it does nothing."""
        self.skipped.add(fx_node)

    def parts(self, fx_node: torch.fx.Node, source: int, part: Callable[[int], Any]) -> None:
        """``fx_node`` is a tuple of parts of node ``source`` (chunk, split): ``part(k)`` is how
        its ``getitem`` k reads them."""
        self.tuples[fx_node] = (source, part)

    def part_of(self, arg: object) -> Union[tuple[int, Callable[[int], Any]], None]:
        """``(source, part)`` if ``arg`` is a tuple of parts, else None."""
        return self.tuples.get(arg) if isinstance(arg, torch.fx.Node) else None

    def ints(self, fx_node: torch.fx.Node, sizes: tuple, source: int
             ) -> tuple[Callable[[Mapping[int, torch.Size]], tuple[int, ...]], tuple[int, ...]]:
        """Sizes given as ints or run-time values (a shape, or ints read from shapes): a function
        of the inputs' shapes that gives them, and the nodes besides ``source`` whose shapes it reads."""
        values = []
        for size in sizes:
            if isinstance(size, torch.fx.Node):
                if size not in self.symbols:
                    raise self.unsupported(fx_node, f"{self.what(fx_node)} with a size computed from a tensor's values")
                values.append(self.symbols[size])
            elif isinstance(size, int) and not isinstance(size, bool):
                values.append(size)
            else:
                raise self.unsupported(fx_node, f"{self.what(fx_node)} with size {size!r}")
        refs = set().union(*(v.refs for v in values if isinstance(v, _Sym))) - {source}

        def shape(shapes: Mapping[int, torch.Size]) -> tuple[int, ...]:
            out: list[int] = []
            for v in values:
                r = _resolve(v, shapes)
                out.extend(r if isinstance(r, (tuple, list)) else (r,))
            return tuple(out)

        return shape, tuple(sorted(refs))

    def constant(self, arg: object) -> Union[Tensor, None]:
        """``arg`` as an fp32 tensor if it is a constant (a number, a parameter or buffer), else None."""
        if isinstance(arg, (int, float)) and not isinstance(arg, bool):
            return torch.tensor(float(arg))
        return self.constants.get(arg) if isinstance(arg, torch.fx.Node) else None

    def unsupported(self, fx_node: torch.fx.Node, what: str) -> UnsupportedModelError:
        """The error for a node without a rule, in one line: named by its module path (or its fx name,
        and the module whose forward calls it, for functions and methods), its type, and a hint."""
        if fx_node.op == "call_module":
            return UnsupportedModelError(_hinted(f"no LRP rule for node '{fx_node.target}' ({what})"))
        where = ""
        stack = fx_node.meta.get("nn_module_stack")
        if stack:
            path, cls = list(stack.values())[-1]
            where = f" in '{path}' ({getattr(cls, '__name__', cls)})"
        return UnsupportedModelError(_hinted(f"no LRP rule for node '{fx_node.name}' ({what}){where}"))

    def what(self, fx_node: torch.fx.Node) -> str:
        """What a call is, for messages: a module's type, ``torch.flatten``, ``x.view``, ..."""
        if fx_node.op == "call_module":
            return type(self.traced.get_submodule(fx_node.target)).__name__
        if fx_node.op == "call_method":
            return f"Tensor.{fx_node.target}"
        return _function_name(fx_node.target)

    # -- the walk ----------------------------------------------------------------------------
    def _symbolic(self, fx_node: torch.fx.Node) -> bool:
        """Read shape arithmetic (``x.size()``, ``x.shape[1]``, ``c // g``) as a run-time value; True if it was."""
        args, target = fx_node.args, fx_node.target
        if fx_node.op == "call_method" and target in ("size", "dim") and args and args[0] in self.env:
            index = self.env[args[0]]
            dim = fx_node.kwargs.get("dim", args[1] if len(args) > 1 else None)
            if not (dim is None or isinstance(dim, int)) or target == "dim" and len(args) > 1:
                return False
            if target == "dim":
                self.symbols[fx_node] = _Sym(frozenset({index}), lambda shapes: len(shapes[index]))
            else:
                self.symbols[fx_node] = _Sym(frozenset({index}), lambda shapes: (
                    tuple(shapes[index]) if dim is None else shapes[index][dim]))
            return True
        if fx_node.op != "call_function":
            return False
        if target is getattr and len(args) == 2 and args[1] == "shape" and args[0] in self.env:
            index = self.env[args[0]]
            self.symbols[fx_node] = _Sym(frozenset({index}), lambda shapes: tuple(shapes[index]))
            return True
        syms = [a for a in args if isinstance(a, torch.fx.Node)]
        if not syms or not all(a in self.symbols for a in syms) or fx_node.kwargs:
            return False
        if target is operator.getitem or target in _SHAPE_ARITHMETIC:
            if not all(isinstance(a, (torch.fx.Node, int, slice)) for a in args):
                return False
            values = [self.symbols.get(a, a) if isinstance(a, torch.fx.Node) else a for a in args]
            refs = frozenset().union(*(self.symbols[a].refs for a in syms))
            self.symbols[fx_node] = _Sym(refs, lambda shapes: target(*(_resolve(v, shapes) for v in values)))
            return True
        return False

    def visit(self, fx_node: torch.fx.Node) -> None:
        if fx_node in self.env or fx_node in self.skipped:  # read with the call that made it
            return
        if fx_node.op == "placeholder":
            if self.nodes:
                raise UnsupportedModelError(f"{type(self.model).__name__} takes more than one input ('{fx_node.name}')")
            self.add(fx_node, INPUT, ())
            return
        if fx_node.op == "get_attr":  # a parameter or buffer used as a value: a constant, for the ops that take one
            value = self.traced
            for part in fx_node.target.split("."):
                value = getattr(value, part)
            if isinstance(value, Tensor):
                self.constants[fx_node] = value.detach().float()
                return
            raise self.unsupported(fx_node, f"attribute {fx_node.target} of type {type(value).__name__}")
        if fx_node.op == "output":
            self.output = self.producer(fx_node, fx_node.args[0])
            return
        if self._symbolic(fx_node) or fx_node in self.absorbed or ops.folded(self, fx_node):
            return
        if fx_node in self.affines:
            source, scale, shift, _ = self.affines[fx_node]
            node = self.add(fx_node, ops.CHANNEL_AFFINE, (self.producer(fx_node, source),))
            node.weight, node.bias = torch.tensor(scale), torch.tensor(shift)
            return
        module = self.traced.get_submodule(fx_node.target) if fx_node.op == "call_module" else None
        if fx_node.op == "call_module":
            op = ops.op_for_module(module)
        elif fx_node.op == "call_function":
            op = ops.op_for_function(fx_node.target)
        elif fx_node.op == "call_method":
            op = ops.op_for_method(fx_node.target)
        else:
            raise self.unsupported(fx_node, f"{fx_node.op} {fx_node.target}")
        if op is None:
            raise self.unsupported(fx_node, self.what(fx_node))
        op.read(self, op, fx_node, module)


INPUT = ops.Op("input", lambda *args: None)
"""The model input: node 0 of every graph."""


def _keeps_constants(node: Node) -> bool:
    """Whether a node maps a per-channel constant image to the same constants (so a batch norm's
    shift passes it unchanged): flatten, adaptive average pools, average pools without padding."""
    if node.kind in ("flatten", "adaptive_avgpool"):
        return True
    if node.kind != "avgpool" or node.module is None:
        return False
    m = node.module
    padded = torch.nn.modules.utils._pair(m.padding) != (0, 0)
    return m.divisor_override is None and (not padded or not m.count_include_pad)


def _merge_right(nodes: list[Node], output: int) -> tuple[list[Node], int]:
    """Merge each batch norm that follows no conv into the Conv2d or Linear after it (Pahde et al.
    2023, ``SequentialMergeBatchNormtoRight``), as in DenseNet's BN -> ReLU -> conv.

    With ``bn(x) = s x + t`` per channel: the layer's weight takes ``s`` per input channel and its
    bias ``sum W t``; a ReLU between them becomes the thresholded ReLU ``x where s x + t > 0, else
    -t/s``, whose image under ``s x + t`` is the ReLU's output (Pahde's ``ThreshReLUMergeBatchNorm``);
    a channel of zero scale is the constant the batch norm (and ReLU) gives it, merged with scale 1;
    average pools and flatten in between keep constants, so the shift passes them. A padded conv
    sees zeros at its border, where ``s x + t`` would give ``t``: the border is padded explicitly with
    ``-t/s``, whose image is 0, and the conv runs unpadded, so the output is exact at every position
    (the padding's relevance is the border's share of the bias, and is dropped, as a bias's is).
    """
    users: dict[int, list[int]] = {i: [] for i in range(len(nodes))}
    for j, node in enumerate(nodes):
        for i in node.inputs[:node.attrs.get("data_inputs")]:
            users[i].append(j)
    alias: dict[int, int] = {}
    pads: dict[int, Node] = {}
    for b, bn in enumerate(nodes):
        if bn.kind != ops.BATCHNORM_RIGHT.kind:
            continue
        refused = UnsupportedModelError(
            f"batch norm '{bn.name}' follows no Conv2d and leads to no Conv2d or Linear (through a ReLU, "
            "average pools and flatten), so it cannot be merged")
        zero = bn.weight == 0  # a channel the batch norm sets to its shift: kept as that constant, unscaled
        scale, shift = torch.where(zero, 1.0, bn.weight), torch.where(zero, 0.0, bn.bias)
        chain, j = [], b
        while True:
            if j == output or len(users[j]) != 1 or any(users[j][0] == k for k in chain):
                raise refused
            j = users[j][0]
            node = nodes[j]
            if node.kind in ("conv", "linear"):
                break
            if not (node.kind == "relu" and not chain or _keeps_constants(node)):
                raise refused
            chain.append(j)
        layer, channels = nodes[j], scale.numel()
        if layer.kind == "conv":
            groups, out = layer.conv_args.get("groups", 1), layer.weight.shape[0]
            padding = layer.conv_args.get("padding", 0)
            if isinstance(padding, str) or layer.weight.shape[1] * groups != channels:
                raise refused
            per = (scale.view(groups, -1), shift.view(groups, -1))
            s, t = (v.repeat_interleave(out // groups, 0).view(out, -1, 1, 1) for v in per)
            if torch.nn.modules.utils._pair(padding) != (0, 0):
                pads[j] = Node(f"{bn.name}.border", ops.BORDER_PAD, (j,), attrs={"pad": _pair2(padding)})
                pads[j].weight = -shift / scale
                layer.attrs = {**layer.attrs, "conv": {**layer.conv_args, "padding": (0, 0)}}
            bias = (layer.weight * t).sum((1, 2, 3))
        else:
            if layer.weight.shape[1] % channels:
                raise refused
            per = layer.weight.shape[1] // channels
            s, t = scale.repeat_interleave(per).view(1, -1), shift.repeat_interleave(per).view(1, -1)
            bias = (layer.weight * t).sum(1)
        layer.bias = bias if layer.bias is None else layer.bias + bias
        layer.weight = layer.weight * s
        if chain and nodes[chain[0]].kind == "relu":
            relu = nodes[chain[0]]
            floor = torch.where(zero, bn.bias.clamp(min=0), -shift / scale)
            sign = torch.where(zero, 0.0, torch.sign(scale))
            nodes[chain[0]] = Node(relu.name, ops.SHIFTED_RELU, relu.inputs, relu.module, weight=sign, bias=floor)
            alias[b] = bn.inputs[0]
            grouped = layer.kind == "conv" and layer.conv_args.get("groups", 1) != 1
            if floor.device.type == "cpu" and not grouped:  # no host sync; a model on a GPU keeps the general z+
                layer.input_signs = _threshold_signs(sign, floor).repeat_interleave(layer.weight.shape[1] // channels)
        else:  # the identity, but a zero-scale channel is its constant
            nodes[b] = Node(bn.name, ops.CHANNEL_AFFINE, bn.inputs, bn.module, weight=(~zero).float(),
                            bias=torch.where(zero, bn.bias, 0.0))
    if not alias and not pads:
        return nodes, output
    index: dict[int, int] = {}
    merged: list[Node] = []
    for i, node in enumerate(nodes):
        if i in alias:
            index[i] = index[alias[i]]
            continue
        inputs = tuple(index[k] for k in node.inputs)
        if i in pads:
            pads[i].inputs = inputs[:1]
            merged.append(pads[i])
            inputs = (len(merged) - 1,) + inputs[1:]
        node.inputs = inputs
        index[i] = len(merged)
        merged.append(node)
    return merged, index[output]


def _threshold_signs(sign: Tensor, floor: Tensor) -> Tensor:
    """The sign of each channel of a thresholded ReLU ``x where sign (x - floor) > 0, else floor`` (with
    ``sign`` 0: the constant ``floor``): its output lies on the floor's side that ``sign`` points to, so it
    is never negative where ``sign >= 0`` and ``floor >= 0``, never positive where ``sign < 0`` and
    ``floor <= 0`` (+1 and -1), and of either sign elsewhere (0). The border a padded conv is given is the
    floor, on the same side."""
    up, down = (sign >= 0) & (floor >= 0), (sign < 0) & (floor <= 0)
    return up.to(torch.int8) - down.to(torch.int8)


def _pair2(padding: Any) -> tuple[int, int]:
    return tuple(torch.nn.modules.utils._pair(padding))


def _mark_signs(nodes: list[Node]) -> None:
    """Set ``nonneg_input`` from the ops' signs: e.g. ReLU outputs are non-negative, pools keep their input's sign."""
    nonneg: list[bool] = []
    for node in nodes:
        ins = [nonneg[i] for i in node.inputs[:node.attrs.get("data_inputs")]]  # not the shape inputs
        node.nonneg_input = bool(ins) and all(ins)
        sign = node.op.sign
        nonneg.append(sign == "nonneg" or (sign == "keep" and node.nonneg_input))


def _mark_first(model: nn.Module, nodes: list[Node], modules: dict[int, nn.Module]) -> None:
    """Flag the nodes of the first Conv/Linear and of the first Conv in ``named_modules()`` order:
    the "first layer" of zennit's EpsilonPlusFlat and of its EpsilonGammaBox."""
    order = {id(m): i for i, (_, m) in enumerate(model.named_modules())}
    params = [n for n in nodes if n.op.params]
    convs = [n for n in params if n.kind == "conv"]
    first = min(params, key=lambda n: order.get(id(modules[id(n)]), len(order)))
    first_conv = min(convs, key=lambda n: order.get(id(modules[id(n)]), len(order))) if convs else None
    for node in params:
        node.first = modules[id(node)] is modules[id(first)]
        node.first_conv = first_conv is not None and modules[id(node)] is modules[id(first_conv)]
        before = nodes[node.inputs[0]]
        if before.kind == "channel_affine" and before.inputs == (0,):  # z^B's pixel bounds, mapped through it
            node.attrs["input_affine"] = (before.weight, before.bias)


def canonize(model: nn.Module) -> Graph:
    """Trace ``model`` and rewrite it into canonical nodes (batch norm folded, identities dropped)."""
    traced = _trace(model)
    reader = _Reader(model, traced)
    for fx_node in traced.graph.nodes:
        reader.visit(fx_node)
    nodes = reader.nodes
    if reader.output is None or not nodes:
        raise UnsupportedModelError(f"{type(model).__name__} has no input or no output to explain")
    nodes, output = _merge_right(nodes, reader.output)
    modules = {id(n): traced.get_submodule(n.name) for n in nodes if n.op.params}
    if not modules:
        raise UnsupportedModelError(f"{type(model).__name__} has no Conv2d or Linear layer to explain")
    _mark_signs(nodes)
    _mark_first(model, nodes, modules)
    return Graph(nodes, output)
