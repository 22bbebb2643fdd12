"""A VGG as a flat list of canonical layers, the form the LRP engine walks.

Batch norm is folded into the preceding convolution (as zennit's merge-batch-norm
canonizer does), ReLUs are made out-of-place so stored activations stay intact, and every
layer records whether its input can be negative, which lets rules drop terms that are
identically zero for non-negative inputs.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class UnsupportedModelError(ValueError):
    """The model is not VGG-shaped, or one of its layers has no LRP rule."""


PARAM_KINDS = ("conv", "linear")
POOL_KINDS = ("maxpool", "avgpool", "adaptive_avgpool")


@dataclass
class Layer:
    """One step of the network: its kind, folded parameters and forward function."""

    name: str
    kind: str
    module: nn.Module
    nonneg_input: bool
    weight: Tensor | None = None
    bias: Tensor | None = None
    conv_args: dict = field(default_factory=dict)
    _casts: dict = field(default_factory=dict, repr=False)

    def weight_in(self, dtype: torch.dtype) -> Tensor | None:
        """The weight in ``dtype``, cast once: the forward pass and rules that use the
        unmodified weight (epsilon, z^B) share one copy instead of two."""
        if self.weight is None:
            return None
        if dtype not in self._casts:
            self._casts[dtype] = self.weight.to(dtype)
        return self._casts[dtype]

    def forward(self, a: Tensor, weight: Tensor | None = None, bias: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """Output of the layer for input ``a`` and, for max-pools, the argmax indices."""
        if self.kind == "conv":
            return F.conv2d(a, weight, bias, **self.conv_args), None
        if self.kind == "linear":
            return F.linear(a, weight, bias), None
        if self.kind == "relu":
            return F.relu(a), None
        if self.kind == "maxpool":
            m = self.module
            return F.max_pool2d(a, m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode, return_indices=True)
        if self.kind == "avgpool":
            m = self.module
            return F.avg_pool2d(a, m.kernel_size, m.stride, m.padding, m.ceil_mode, m.count_include_pad, m.divisor_override), None
        if self.kind == "adaptive_avgpool":
            return F.adaptive_avg_pool2d(a, self.module.output_size), None
        if self.kind == "flatten":
            return a.flatten(1), None
        return a, None


_KINDS: tuple[tuple[type, str], ...] = (
    (nn.Conv2d, "conv"),
    (nn.Linear, "linear"),
    (nn.ReLU, "relu"),
    (nn.MaxPool2d, "maxpool"),
    (nn.AvgPool2d, "avgpool"),
    (nn.AdaptiveAvgPool2d, "adaptive_avgpool"),
    (nn.Flatten, "flatten"),
    (nn.Dropout, "identity"),
    (nn.Identity, "identity"),
)


def _kind_of(name: str, module: nn.Module) -> str:
    for cls, kind in _KINDS:
        if type(module) is cls:
            return kind
    raise UnsupportedModelError(f"no LRP rule for layer '{name}' ({type(module).__name__})")


def _leaves(prefix: str, module: nn.Module) -> list[tuple[str, nn.Module]]:
    if isinstance(module, nn.Sequential):
        out: list[tuple[str, nn.Module]] = []
        for child_name, child in module.named_children():
            out.extend(_leaves(f"{prefix}.{child_name}" if prefix else child_name, child))
        return out
    return [(prefix or type(module).__name__, module)]


def _vgg_leaves(model: nn.Module) -> list[tuple[str, nn.Module]]:
    if isinstance(model, nn.Sequential):
        return _leaves("", model)
    children = dict(model.named_children())
    if "features" not in children or "classifier" not in children:
        raise UnsupportedModelError(
            f"{type(model).__name__} is not VGG-shaped: expected 'features' and 'classifier' "
            f"(and optionally 'avgpool'), found {sorted(children)}"
        )
    extra = sorted(set(children) - {"features", "avgpool", "classifier"})
    if extra:
        raise UnsupportedModelError(f"{type(model).__name__} is not VGG-shaped: unexpected layer '{extra[0]}'")
    leaves = _leaves("features", children["features"])
    if "avgpool" in children:
        leaves += _leaves("avgpool", children["avgpool"])
    leaves.append(("flatten", nn.Flatten()))
    return leaves + _leaves("classifier", children["classifier"])


def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    scale = bn.weight.detach().float() / torch.sqrt(bn.running_var.float() + bn.eps)
    weight = conv.weight.detach().float() * scale.view(-1, 1, 1, 1)
    bias = conv.bias.detach().float() if conv.bias is not None else torch.zeros_like(scale)
    return weight, (bias - bn.running_mean.float()) * scale + bn.bias.detach().float()


def canonical_layers(model: nn.Module) -> list[Layer]:
    """Flatten a VGG (or a plain ``nn.Sequential`` of VGG layers) into canonical layers.

    Parameters are fp32 copies: batch norm folded into the conv before it, so the
    caller can derive rule weights and cast them to any dtype.
    """
    leaves = _vgg_leaves(model)
    layers: list[Layer] = []
    nonneg = False
    i = 0
    while i < len(leaves):
        name, module = leaves[i]
        if isinstance(module, nn.BatchNorm2d):
            raise UnsupportedModelError(f"batch norm '{name}' does not follow a Conv2d, so it cannot be folded")
        kind = _kind_of(name, module)
        layer = Layer(name, kind, module, nonneg)
        if kind == "conv":
            if module.padding_mode != "zeros":
                raise UnsupportedModelError(f"no LRP rule for layer '{name}' (padding_mode={module.padding_mode!r})")
            following = leaves[i + 1][1] if i + 1 < len(leaves) else None
            if isinstance(following, nn.BatchNorm2d):
                layer.weight, layer.bias = _fold(module, following)
                i += 1
            else:
                layer.weight = module.weight.detach().float()
                layer.bias = module.bias.detach().float() if module.bias is not None else None
            layer.conv_args = dict(
                stride=module.stride, padding=module.padding, dilation=module.dilation, groups=module.groups
            )
        elif kind == "linear":
            layer.weight = module.weight.detach().float()
            layer.bias = module.bias.detach().float() if module.bias is not None else None
        layers.append(layer)
        if kind == "relu":
            nonneg = True
        elif kind in PARAM_KINDS:
            nonneg = False
        i += 1
    if not any(layer.kind in PARAM_KINDS for layer in layers):
        raise UnsupportedModelError(f"{type(model).__name__} has no Conv2d or Linear layer to explain")
    return layers
