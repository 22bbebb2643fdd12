"""Every CNN classifier of torchvision on this CPU: built with random weights, explained at a small size.

Each model of ``torchvision.models.list_models(module=torchvision.models)`` is built (its constructor's
random initialisation skipped, then given cheap random weights), explained with
``epsilon-plus-flat``, and checked: the map is finite and not all zero, and, biases and batch-norm
shifts being zero, relevance is conserved (the map sums to the explained logit).

Left out, and why:
- models above 300 M parameters (``regnet_y_128gf``; ``vit_h_14``, ``vit_l_*`` are transformers anyway);
- transformers (``vit_*``, ``swin_*``, ``maxvit_*``): another part of the project explains them;
- conservation where the preset does not conserve (``NOT_CONSERVED``, with the reason).
Families the engine does not explain yet are expected to be refused in one line naming the node
(``EXPECTED_REFUSALS``); they xfail with that line, and any other refusal fails.
"""
from __future__ import annotations

import contextlib
import math
import re
from typing import Iterator

import pytest
import torch
import torchvision
from torch import nn

from realtime_lrp import LRP
from realtime_lrp.lrp.nodes import UnsupportedModelError

MAX_PARAMS = 300e6
TRANSFORMERS = ("vit_", "swin_", "maxvit_")

EXPECTED_REFUSALS = {  # family prefix: the node the engine refuses, as its message names it
    "convnext_": r"no LRP rule for node 'features_0_1_weight' \(get_attr features\.0\.1\.weight\) in 'features\.0\.1' "
                 r"\(LayerNorm2d\); hint: .*",
    "efficientnet_": r"no LRP rule for node 'mul' \(operator\.mul\) in '[\w.-]+' \(SqueezeExcitation\)",
    "mobilenet_v3_": r"no LRP rule for node 'mul' \(operator\.mul\) in '[\w.-]+' \(SqueezeExcitation\)",
    "regnet_y_": r"no LRP rule for node 'mul' \(operator\.mul\) in '[\w.-]+' \(SqueezeExcitation\)",
}

NOT_CONSERVED = {  # family prefix: why epsilon-plus-flat loses relevance there even without biases
    "shufflenet_": "z+ gives nothing to a depthwise conv output that has no positive contribution (those outputs "
                   "are not ReLU'd, so they carry relevance); with the depthwise weights made positive it conserves",
}


def _params(name: str) -> int:
    return torchvision.models.get_model_weights(name).DEFAULT.meta["num_params"]


ALL = torchvision.models.list_models(module=torchvision.models)
CNNS = [n for n in ALL if not n.startswith(TRANSFORMERS) and _params(n) <= MAX_PARAMS]
LEFT_OUT = sorted(set(ALL) - set(CNNS))


def _tiles(n: int, base: torch.Tensor) -> torch.Tensor:
    return base.repeat(n // base.numel() + 1)[:n]


@contextlib.contextmanager
def _no_init() -> Iterator[None]:
    """Constructors allocate but draw nothing: every ``torch.nn.init`` function is a no-op while a model is
    built (``build`` fills the weights afterwards, cheaply)."""
    names = [n for n in dir(torch.nn.init) if n.endswith("_") and not n.startswith("_")]
    saved = {n: getattr(torch.nn.init, n) for n in names}
    for n in names:
        setattr(torch.nn.init, n, lambda tensor, *args, **kwargs: tensor)
    try:
        yield
    finally:
        for n, fn in saved.items():
            setattr(torch.nn.init, n, fn)


def build(name: str) -> nn.Module:
    """``name`` (10 classes) with random weights: sqrt(2/fan-in) scaled, periodic (a tiled random
    vector: filling 100 M parameters costs a copy, not a random draw), random BN scales and
    variances; biases, BN shifts and means zero, so that the rules without a bias term conserve."""
    kwargs = {"init_weights": False} if name in ("googlenet", "inception_v3") else {}
    with _no_init():
        model = torchvision.models.get_model(name, weights=None, num_classes=10, **kwargs)
    base = torch.randn(1 << 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for module in model.modules():
            for key, p in module.named_parameters(recurse=False):
                values = _tiles(p.numel(), base).view_as(p)
                if p.dim() > 1:
                    p.copy_(values * math.sqrt(2 / p[0].numel()))  # He: signals keep their scale through ReLUs
                elif key == "weight":  # norm scales
                    p.copy_(1 + 0.1 * values)
                else:
                    p.zero_()
            for key, b in module.named_buffers(recurse=False):
                values = _tiles(b.numel(), base.flip(0)).view_as(b) if b.is_floating_point() else None
                if key == "running_mean":
                    b.zero_()
                elif key == "running_var":
                    b.copy_(1 + 0.5 * values.abs())
                elif values is None:
                    b.zero_()
                else:
                    b.copy_(values)
    return model.eval()


def explain_or_xfail(name: str, model: nn.Module, preset: str) -> LRP:
    try:
        return LRP(model, preset=preset)
    except UnsupportedModelError as error:
        for prefix, message in EXPECTED_REFUSALS.items():
            if name.startswith(prefix) and re.fullmatch(message, str(error)):  # any other refusal fails
                pytest.xfail(f"{prefix}* not explained yet: {error}")
        raise


SIZES = {"inception_v3": (80, 96), "alexnet": (64, 72), "squeezenet1_0": (64, 72), "squeezenet1_1": (64, 72)}


def inputs(name: str) -> torch.Tensor:
    """Two images of a small non-square size the model takes (Inception needs 75 px, AlexNet and SqueezeNet 63)."""
    return torch.randn(2, 3, *SIZES.get(name, (40, 48)), generator=torch.Generator().manual_seed(1))


def test_what_is_left_out_is_large_or_a_transformer() -> None:
    assert len(CNNS) >= 60 and "regnet_y_128gf" in LEFT_OUT
    assert all(n.startswith(TRANSFORMERS) or _params(n) > MAX_PARAMS for n in LEFT_OUT)


@pytest.mark.slow
@pytest.mark.parametrize("name", CNNS)
def test_every_cnn_gives_a_finite_map_and_conserves(name: str) -> None:
    """epsilon-plus-flat (each preset equals its reference per family in test_cnn_index and test_engine):
    with no bias anywhere its rules (flat, z+, epsilon, pools, sums, index ops) conserve relevance."""
    x = inputs(name)
    result = explain_or_xfail(name, build(name), "epsilon-plus-flat")(x)  # the top-1: other logits may be 0
    assert result.relevance.shape == (2, *x.shape[2:])
    assert torch.isfinite(result.relevance).all() and (result.relevance.flatten(1).abs().amax(1) > 0).all()
    if not name.startswith(tuple(NOT_CONSERVED)):
        explained = result.logits.gather(1, result.target.view(-1, 1)).squeeze(1)
        torch.testing.assert_close(result.relevance.sum((1, 2)), explained, rtol=1e-3,
                                   atol=1e-3 * float(explained.abs().max()))
