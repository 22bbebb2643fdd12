"""A model as a graph of canonical nodes, the form the LRP engine walks.

:func:`canonize` reads a model with torch.fx symbolic tracing and rewrites it once, before
rules are bound (zennit's canonizer idea):

- batch norm is folded into the convolution before it, also in a ResNet's downsample
  branch (zennit's merge-batch-norm canonizer);
- a residual ``a + b`` becomes an ``add`` node, the place of zennit's ``Sum`` module;
- dropout and identity modules are dropped (they are the identity in eval mode), and
  ReLUs run out-of-place so stored activations stay intact;
- every node records whether its input can be negative, so rules can drop terms that are
  identically zero for non-negative inputs, and whether it is the first Conv/Linear or the
  first Conv in ``named_modules()`` order (the layers zennit's composites treat specially).

A VGG is just a chain; a ResNet, ResNeXt or Wide-ResNet adds ``add`` nodes whose inputs
have several consumers. Anything else (attention, SiLU, LayerNorm, concatenation, ...)
raises :class:`UnsupportedModelError` naming the node and its type.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Union

import torch
import torch.fx
import torch.nn.functional as F
from torch import Tensor, nn


class UnsupportedModelError(ValueError):
    """The model cannot be traced, or one of its nodes has no LRP rule."""


PARAM_KINDS = ("conv", "linear")
POOL_KINDS = ("maxpool", "avgpool", "adaptive_avgpool")
FILTERED_KINDS = PARAM_KINDS + POOL_KINDS
RULE_KINDS = FILTERED_KINDS + ("add",)

_MODULE_KINDS: dict[type, str] = {
    nn.Conv2d: "conv",
    nn.Linear: "linear",
    nn.ReLU: "relu",
    nn.MaxPool2d: "maxpool",
    nn.AvgPool2d: "avgpool",
    nn.AdaptiveAvgPool2d: "adaptive_avgpool",
    nn.Flatten: "flatten",
    nn.Dropout: "identity",
    nn.Identity: "identity",
}
_FUNCTION_KINDS: dict[object, str] = {
    operator.add: "add",
    operator.iadd: "add",
    torch.flatten: "flatten",
    torch.relu: "relu",
    F.relu: "relu",
}
_KEEPS_SIGN = ("maxpool", "avgpool", "adaptive_avgpool", "flatten")

Activation = Union[Tensor, tuple[Tensor, ...]]


@dataclass(eq=False)
class Node:
    """One operation of the canonical graph: its kind, producers, folded parameters and forward.

    ``inputs`` are indices of earlier nodes (node 0 is the model input); an ``add`` node
    has two. ``weight``/``bias`` are fp32 copies (batch norm folded in), so callers can
    derive rule weights from them and cast to any dtype.
    """

    name: str
    kind: str
    inputs: tuple[int, ...]
    module: Union[nn.Module, None] = None
    nonneg_input: bool = False
    first: bool = False
    first_conv: bool = False
    weight: Union[Tensor, None] = None
    bias: Union[Tensor, None] = None
    conv_args: dict = field(default_factory=dict)
    _casts: dict = field(default_factory=dict, repr=False)

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
        """Output of the node for input ``a`` (a tuple for ``add``) and, for max-pools, the argmax indices."""
        if self.kind == "conv":
            return F.conv2d(a, weight, bias, **self.conv_args), None
        if self.kind == "linear":
            return F.linear(a, weight, bias), None
        if self.kind == "relu":
            return F.relu(a), None
        if self.kind == "add":
            return a[0] + a[1], None
        if self.kind == "maxpool":
            m = self.module
            return F.max_pool2d(a, m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode, return_indices=True)
        if self.kind == "avgpool":
            m = self.module
            return F.avg_pool2d(a, m.kernel_size, m.stride, m.padding, m.ceil_mode, m.count_include_pad,
                                m.divisor_override), None
        if self.kind == "adaptive_avgpool":
            return F.adaptive_avg_pool2d(a, self.module.output_size), None
        if self.kind == "flatten":
            return a.flatten(1), None
        return a, None


@dataclass
class Graph:
    """Canonical nodes in execution order: node 0 is the input, ``output`` the logits' node."""

    nodes: list[Node]
    output: int


def _trace(model: nn.Module) -> torch.fx.GraphModule:
    try:
        return torch.fx.symbolic_trace(model)
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


def _unsupported(node: torch.fx.Node, what: str) -> UnsupportedModelError:
    """The error for a node without a rule, named by its module path (or fx name for functions)."""
    name = node.target if node.op == "call_module" else node.name
    return UnsupportedModelError(f"no LRP rule for node '{name}' ({what})")


def _fold(weight: Tensor, bias: Union[Tensor, None], bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    scale = bn.weight.detach().float() / torch.sqrt(bn.running_var.float() + bn.eps)
    folded = weight * scale.view(-1, 1, 1, 1)
    base = bias if bias is not None else torch.zeros_like(scale)
    return folded, (base - bn.running_mean.float()) * scale + bn.bias.detach().float()


def _flatten_args(fx_node: torch.fx.Node) -> bool:
    """Whether a ``torch.flatten`` call keeps the batch axis and flattens the rest."""
    args = list(fx_node.args[1:])
    start = fx_node.kwargs.get("start_dim", args[0] if args else 0)
    end = fx_node.kwargs.get("end_dim", args[1] if len(args) > 1 else -1)
    return start == 1 and end == -1


class _Builder:
    """Turns fx nodes into canonical nodes; ``env`` maps each fx node to the index of its value."""

    def __init__(self, model: nn.Module, traced: torch.fx.GraphModule):
        self.model = model
        self.traced = traced
        self.nodes: list[Node] = []
        self.env: dict[torch.fx.Node, int] = {}
        self.output: Union[int, None] = None

    def producer(self, fx_node: torch.fx.Node, arg: object) -> int:
        if not isinstance(arg, torch.fx.Node) or arg not in self.env:
            raise _unsupported(fx_node, f"input {arg!r} is not a tensor of the graph")
        return self.env[arg]

    def add(self, fx_node: torch.fx.Node, node: Node) -> None:
        self.env[fx_node] = len(self.nodes)
        self.nodes.append(node)

    def visit(self, fx_node: torch.fx.Node) -> None:
        if fx_node.op == "placeholder":
            if self.nodes:
                raise UnsupportedModelError(f"{type(self.model).__name__} takes more than one input ('{fx_node.name}')")
            self.add(fx_node, Node(fx_node.name, "input", ()))
        elif fx_node.op == "call_module":
            self.visit_module(fx_node, self.traced.get_submodule(fx_node.target))
        elif fx_node.op == "call_function":
            self.visit_function(fx_node)
        elif fx_node.op == "output":
            self.output = self.producer(fx_node, fx_node.args[0])
        else:
            raise _unsupported(fx_node, f"{fx_node.op} {fx_node.target}")

    def visit_module(self, fx_node: torch.fx.Node, module: nn.Module) -> None:
        kind = _MODULE_KINDS.get(type(module), "batchnorm" if type(module) is nn.BatchNorm2d else None)
        if kind is None:
            raise _unsupported(fx_node, type(module).__name__)
        if len(fx_node.args) != 1 or fx_node.kwargs:
            raise _unsupported(fx_node, f"{type(module).__name__} called with {len(fx_node.args)} arguments")
        source = self.producer(fx_node, fx_node.args[0])
        if kind == "batchnorm":
            self.fold(fx_node, module, source)
            return
        if kind == "identity":
            self.env[fx_node] = source
            return
        node = Node(str(fx_node.target), kind, (source,), module)
        if kind == "conv":
            if module.padding_mode != "zeros":
                raise _unsupported(fx_node, f"Conv2d with padding_mode={module.padding_mode!r}")
            node.conv_args = dict(stride=module.stride, padding=module.padding, dilation=module.dilation,
                                  groups=module.groups)
        if kind in PARAM_KINDS:
            node.weight = module.weight.detach().float()
            node.bias = module.bias.detach().float() if module.bias is not None else None
        self.add(fx_node, node)

    def fold(self, fx_node: torch.fx.Node, bn: nn.BatchNorm2d, source: int) -> None:
        conv = self.nodes[source]
        conv_fx = fx_node.args[0]
        if conv.kind != "conv" or conv_fx.op != "call_module" or conv.name != str(conv_fx.target) \
                or len(conv_fx.users) != 1:
            raise UnsupportedModelError(
                f"batch norm '{fx_node.target}' does not follow a Conv2d, so it cannot be folded")
        if bn.running_mean is None or bn.running_var is None:
            raise UnsupportedModelError(f"batch norm '{fx_node.target}' keeps no running statistics to fold")
        conv.weight, conv.bias = _fold(conv.weight, conv.bias, bn)
        self.env[fx_node] = source

    def visit_function(self, fx_node: torch.fx.Node) -> None:
        kind = _FUNCTION_KINDS.get(fx_node.target)
        what = _function_name(fx_node.target)
        if kind == "add":
            if len(fx_node.args) != 2 or fx_node.kwargs:
                raise _unsupported(fx_node, what)
            inputs = tuple(self.producer(fx_node, arg) for arg in fx_node.args)
            self.add(fx_node, Node(fx_node.name, "add", inputs))
        elif kind == "flatten":
            if not _flatten_args(fx_node):
                raise _unsupported(fx_node, f"{what} other than flatten(x, 1)")
            self.add(fx_node, Node(fx_node.name, "flatten", (self.producer(fx_node, fx_node.args[0]),)))
        elif kind == "relu":
            self.add(fx_node, Node(fx_node.name, "relu", (self.producer(fx_node, fx_node.args[0]),)))
        else:
            raise _unsupported(fx_node, what)


def _mark_signs(nodes: list[Node]) -> None:
    """Set ``nonneg_input``: ReLU outputs are non-negative, pools and flatten keep their input's sign."""
    nonneg: list[bool] = []
    for node in nodes:
        ins = [nonneg[i] for i in node.inputs]
        node.nonneg_input = bool(ins) and all(ins)
        if node.kind == "relu":
            nonneg.append(True)
        elif node.kind in _KEEPS_SIGN or node.kind == "add":
            nonneg.append(node.nonneg_input)
        else:
            nonneg.append(False)


def _mark_first(model: nn.Module, nodes: list[Node], modules: dict[int, nn.Module]) -> None:
    """Flag the nodes of the first Conv/Linear and of the first Conv in ``named_modules()`` order:
    the "first layer" of zennit's EpsilonPlusFlat and of its EpsilonGammaBox."""
    order = {id(m): i for i, (_, m) in enumerate(model.named_modules())}
    params = [n for n in nodes if n.kind in PARAM_KINDS]
    convs = [n for n in params if n.kind == "conv"]
    first = min(params, key=lambda n: order.get(id(modules[id(n)]), len(order)))
    first_conv = min(convs, key=lambda n: order.get(id(modules[id(n)]), len(order))) if convs else None
    for node in params:
        node.first = modules[id(node)] is modules[id(first)]
        node.first_conv = first_conv is not None and modules[id(node)] is modules[id(first_conv)]


def canonize(model: nn.Module) -> Graph:
    """Trace ``model`` and rewrite it into canonical nodes (batch norm folded, sums as ``add``)."""
    traced = _trace(model)
    builder = _Builder(model, traced)
    for fx_node in traced.graph.nodes:
        builder.visit(fx_node)
    nodes = builder.nodes
    if builder.output is None or not nodes:
        raise UnsupportedModelError(f"{type(model).__name__} has no input or no output to explain")
    modules = {id(n): traced.get_submodule(n.name) for n in nodes if n.kind in PARAM_KINDS}
    if not modules:
        raise UnsupportedModelError(f"{type(model).__name__} has no Conv2d or Linear layer to explain")
    _mark_signs(nodes)
    _mark_first(model, nodes, modules)
    return Graph(nodes, builder.output)
