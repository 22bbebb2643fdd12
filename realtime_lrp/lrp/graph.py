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


def _trace(model: nn.Module) -> torch.fx.GraphModule:
    try:
        tracer = _Tracer()
        graph = tracer.trace(model)
        return torch.fx.GraphModule(tracer.root, graph)
    except Exception as exc:  # fx raises many types for code it cannot follow
        first_line = (str(exc).splitlines() or [""])[0][:200]
        raise UnsupportedModelError(
            f"{type(model).__name__} cannot be read as a graph by torch.fx ({type(exc).__name__}: {first_line})"
        ) from None


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
        self.constants: dict[torch.fx.Node, Tensor] = {}
        self.skipped: set[torch.fx.Node] = set()
        self.symbols: dict[torch.fx.Node, _Sym] = {}
        self.tuples: dict[torch.fx.Node, tuple[int, Callable[[int], Any]]] = {}

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
        """Fold ``bn`` into the conv that produced its input; that conv must feed nothing else."""
        conv = self.nodes[source]
        conv_fx = fx_node.args[0]
        if conv.kind != "conv" or conv_fx.op != "call_module" or conv.name != str(conv_fx.target) \
                or len(conv_fx.users) != 1:
            raise UnsupportedModelError(
                f"batch norm '{fx_node.target}' does not follow a Conv2d, so it cannot be folded")
        if bn.running_mean is None or bn.running_var is None:
            raise UnsupportedModelError(f"batch norm '{fx_node.target}' keeps no running statistics to fold")
        conv.weight, conv.bias = _fold(conv.weight, conv.bias, bn)
        self.alias(fx_node, source)

    def constant(self, arg: object) -> Union[Tensor, None]:
        """The fp32 copy of a parameter or buffer ``arg`` reads (an fx ``get_attr``), else None."""
        return self.constants.get(arg) if isinstance(arg, torch.fx.Node) else None

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

    def unsupported(self, fx_node: torch.fx.Node, what: str) -> UnsupportedModelError:
        """The error for a node without a rule, named by its module path (or fx name for functions)."""
        name = fx_node.target if fx_node.op == "call_module" else fx_node.name
        return UnsupportedModelError(f"no LRP rule for node '{name}' ({what})")

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
        if fx_node.op == "get_attr":
            value = self.traced
            for name in fx_node.target.split("."):
                value = getattr(value, name)
            if not isinstance(value, Tensor):
                raise self.unsupported(fx_node, f"attribute {fx_node.target} of type {type(value).__name__}")
            self.constants[fx_node] = value.detach().float()
            return
        if fx_node.op == "placeholder":
            if self.nodes:
                raise UnsupportedModelError(f"{type(self.model).__name__} takes more than one input ('{fx_node.name}')")
            self.add(fx_node, INPUT, ())
            return
        if fx_node.op == "output":
            self.output = self.producer(fx_node, fx_node.args[0])
            return
        if self._symbolic(fx_node):
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


def canonize(model: nn.Module) -> Graph:
    """Trace ``model`` and rewrite it into canonical nodes (batch norm folded, identities dropped)."""
    traced = _trace(model)
    reader = _Reader(model, traced)
    for fx_node in traced.graph.nodes:
        reader.visit(fx_node)
    nodes = reader.nodes
    if reader.output is None or not nodes:
        raise UnsupportedModelError(f"{type(model).__name__} has no input or no output to explain")
    modules = {id(n): traced.get_submodule(n.name) for n in nodes if n.op.params}
    if not modules:
        raise UnsupportedModelError(f"{type(model).__name__} has no Conv2d or Linear layer to explain")
    _mark_signs(nodes)
    _mark_first(model, nodes, modules)
    return Graph(nodes, reader.output)
