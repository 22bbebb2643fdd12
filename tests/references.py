"""zennit as the reference for the signed presets: its composites, its maps, and the error measure."""
from __future__ import annotations

import copy
from typing import Any, Callable

import pytest
import torch
from torch import nn

from realtime_lrp.lrp.engine import IMAGENET_MEAN, IMAGENET_STD, pixel_bounds


def relative_error(ours: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """max |ours - ref| / max |ref| per sample."""
    return (ours - ref).flatten(1).abs().amax(1) / ref.flatten(1).abs().amax(1)


def signed_composite(preset: str, canonizers: list | None = None, layer_map: list | None = None,
                     bounds: tuple[torch.Tensor, torch.Tensor] | None = None) -> Any:
    """zennit's composite for a signed preset: ``EpsilonPlusFlat``, or ``EpsilonGammaBox`` boxed by
    ``bounds`` (per channel; by default the pixel bounds under ImageNet normalisation)."""
    composites = pytest.importorskip("zennit.composites")
    extra = {"canonizers": canonizers or [], "layer_map": layer_map or []}
    if preset == "epsilon-plus-flat":
        return composites.EpsilonPlusFlat(**extra)
    low, high = bounds if bounds is not None else pixel_bounds(IMAGENET_MEAN, IMAGENET_STD)
    return composites.EpsilonGammaBox(low=low.view(1, -1, 1, 1), high=high.view(1, -1, 1, 1), **extra)


def one_hot_logit(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``out * one_hot(target)``: the target's logit as the output relevance."""
    index = target.view(-1, 1)
    return torch.zeros_like(out).scatter_(1, index, out.gather(1, index))


def zennit_relevance(model: nn.Module, x: torch.Tensor, composite: Any,
                     output_relevance: Callable[[torch.Tensor], torch.Tensor], folded: bool = False) -> torch.Tensor:
    """zennit's map (N, H, W) under ``composite`` of the relevance ``output_relevance(logits)``.

    ``folded``: zennit's merge-batch-norm canonizer resets a merged batch norm's statistics but keeps
    its eps, so the "identity" it leaves computes ``x / sqrt(1 + eps)``, a factor of 1 - 5e-6 per
    batch norm that, over the ~50 of a ResNet-50, moves maps by ~1e-4; this sets those eps to 0
    after the merge, i.e. the model with batch norm folded.
    """
    model = copy.deepcopy(model)
    x = x.clone().requires_grad_()
    with composite.context(model) as modified:
        if folded:
            for module in modified.modules():
                if isinstance(module, nn.BatchNorm2d):
                    module.eps = 0.0
        out = modified(x)
        (attribution,) = torch.autograd.grad(out, x, output_relevance(out.detach()))
    return attribution.sum(1)


def zennit_map(model: nn.Module, x: torch.Tensor, composite: Any, target: torch.Tensor | None = None,
               folded: bool = False) -> torch.Tensor:
    """zennit's map of ``logit * one_hot(target)`` (the top-1 class where ``target`` is None)."""
    return zennit_relevance(model, x, composite,
                            lambda out: one_hot_logit(out, out.argmax(1) if target is None else target), folded)
