"""An independent slow reference for the ``zplus`` preset and the top-k filter, in autograd.

PyTorchRelevancePropagation's rules, one autograd "gradient trick" per layer: z+ with zero
bias (all-ones input for the first layer), pools by the z-rule (max-pools as the average pool
of their windows), the top-k filter (topk values scattered into zeros) before each of them.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

PROPAGATED = (nn.Conv2d, nn.Linear, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d)


def topk_scatter(relevance: torch.Tensor, top_k: float) -> torch.Tensor:
    """The reference filter: topk values scattered into zeros."""
    flat = relevance.flatten(1)
    k = max(1, int(top_k * flat.shape[1]))
    top = flat.topk(k, dim=1)
    return torch.zeros_like(flat).scatter_(1, top.indices, top.values).view_as(relevance)


def slow_zplus(layers: list[nn.Module], x: torch.Tensor, top_k: float, target: str | None = None) -> torch.Tensor:
    """z+ maps of the chain ``layers`` for ``x``: the top-1 logit's, or the softmax's for ``"softmax"``."""
    inputs, a = [], x
    with torch.no_grad():
        for layer in layers:
            inputs.append(a)
            a = layer(a)
    relevance = torch.softmax(a, 1) if target == "softmax" else torch.zeros_like(a).scatter_(
        1, a.argmax(1, keepdim=True), a.max(1, keepdim=True).values)
    inputs[0] = torch.ones_like(inputs[0])
    for layer, a in zip(reversed(layers), reversed(inputs)):
        if isinstance(layer, nn.Flatten):
            relevance = relevance.view(a.shape)
            continue
        if not isinstance(layer, PROPAGATED):
            continue
        if 0 < top_k < 1:
            relevance = topk_scatter(relevance, top_k)
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            layer = copy.deepcopy(layer)
            layer.weight.data.clamp_(min=0)
            layer.bias.data.zero_()
        elif isinstance(layer, nn.MaxPool2d):
            layer = nn.AvgPool2d(layer.kernel_size, layer.stride, layer.padding, layer.ceil_mode)
        a = a.detach().requires_grad_()
        z = layer(a) + 1e-5
        (z * (relevance / z).detach()).sum().backward()
        relevance = (a * a.grad).detach()
    return relevance.sum(1)
