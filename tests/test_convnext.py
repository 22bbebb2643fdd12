"""ConvNeXt: LayerNorm2d and LayerNorm with the std held constant, layer scale, GELU, eval stochastic depth.

The reference is Gradient x Input under LXT 2.1's patches: zennit's rules turned into the
Gradient x Input convention (``monkey_patch_zennit``), LXT's ``layer_norm_forward`` on every
LayerNorm (``LayerNorm2d`` through its permutes), and LXT's identity rule on GELU. There a
product with a constant needs no rule (its gradient gives the identity); each block's
residual sum becomes zennit's ``Sum`` with ``Norm``, as zennit's ResNet canonizer does, so
it has the engine's stabiliser (its bare gradient would be Norm without one). The composite is zennit's EpsilonPlusFlat / EpsilonGammaBox
without their ``Pass`` on activations (which in that convention would pass the plain gradient).
Random weights, random LayerNorm affines and layer scales, non-square inputs, batch 2,
explicit targets; bound max|ours - LXT| / max|LXT| <= 1e-4 per sample.
"""
from __future__ import annotations

import copy

import pytest
import torch
import torchvision
from references import relative_error
from torch import nn
from torchvision.models.convnext import CNBlock, CNBlockConfig, ConvNeXt, LayerNorm2d

from realtime_lrp import LRP
from realtime_lrp.lrp.engine import IMAGENET_MEAN, IMAGENET_STD, pixel_bounds
from tests.lxt_reference import efficient, restored, zennit_in_gradient_x_input


def randomised(model: nn.Module, seed: int) -> nn.Module:
    """Random biases, LayerNorm affines and layer scales (torchvision starts them at 0, 1 and 1e-6)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.normal_(module.weight, std=(2 / module.weight[0].numel()) ** 0.5)
                if module.bias is not None:
                    nn.init.normal_(module.bias, std=0.1)
            elif isinstance(module, nn.LayerNorm):
                module.weight.normal_(1.0, 0.2)
                module.bias.normal_(0.0, 0.1)
            if hasattr(module, "layer_scale"):
                module.layer_scale.uniform_(0.3, 1.0)
    return model.eval()


def small_convnext(seed: int = 0) -> nn.Module:
    settings = [CNBlockConfig(8, 16, 2), CNBlockConfig(16, 24, 1), CNBlockConfig(24, None, 1)]
    return randomised(ConvNeXt(settings, stochastic_depth_prob=0.1, num_classes=7), seed)


def composite(preset: str):
    composites = pytest.importorskip("zennit.composites")
    zrules = pytest.importorskip("zennit.rules")
    ztypes = pytest.importorskip("zennit.types")
    zlayer = pytest.importorskip("zennit.layer")
    norms = [(ztypes.AvgPool, zrules.Norm()), (zlayer.Sum, zrules.Norm())]
    if preset == "epsilon-plus-flat":
        layer_map = [(ztypes.Convolution, zrules.ZPlus()), (nn.Linear, zrules.Epsilon()), *norms]
        return composites.SpecialFirstLayerMapComposite(layer_map, [(ztypes.Linear, zrules.Flat())])
    low, high = pixel_bounds(IMAGENET_MEAN, IMAGENET_STD)
    layer_map = [(ztypes.Convolution, zrules.Gamma(gamma=0.25)), (nn.Linear, zrules.Epsilon()), *norms]
    first = [(ztypes.Convolution, zrules.ZBox(low=low.view(1, 3, 1, 1), high=high.view(1, 3, 1, 1)))]
    return composites.SpecialFirstLayerMapComposite(layer_map, first)


def lxt_map(model: nn.Module, x: torch.Tensor, preset: str, target: torch.Tensor) -> torch.Tensor:
    """Gradient x Input of ``logit * one_hot(target)`` under LXT's patches (module docstring)."""
    patches = efficient()

    def layer_norm_2d(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return patches.layer_norm_forward(self, x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    def block_with_sum(self: CNBlock, input: torch.Tensor) -> torch.Tensor:
        result = self.stochastic_depth(self.layer_scale * self.block(input))
        return self.residual(torch.stack([result, input], dim=-1))

    model = copy.deepcopy(model)
    for module in model.modules():
        if isinstance(module, CNBlock):  # the residual sum as zennit's Sum, as its ResNet canonizer does
            module.residual = pytest.importorskip("zennit.layer").Sum()
    x = x.clone().requires_grad_()
    with restored(nn.LayerNorm, "forward"), restored(LayerNorm2d, "forward"), restored(CNBlock, "forward"), \
            restored(nn.GELU, "forward", "original_forward"), zennit_in_gradient_x_input():
        nn.LayerNorm.forward = patches.layer_norm_forward
        LayerNorm2d.forward = layer_norm_2d
        CNBlock.forward = block_with_sum
        patches.patch_method(patches.non_linear_forward, nn.GELU, keep_original=True)
        with composite(preset).context(model) as modified:
            out = modified(x)  # the gradient of the target logit: relevance there is the logit itself
            (grad,) = torch.autograd.grad(out.gather(1, target.view(-1, 1)).sum(), x)
    return (x * grad).detach().sum(1)


@pytest.mark.parametrize("preset", ["epsilon-plus-flat", "epsilon-gamma-box"])
@pytest.mark.parametrize("size", [(32, 32), (40, 56)])
def test_small_convnext_equals_lxt_gradient_x_input(preset: str, size: tuple[int, int]) -> None:
    model = small_convnext()
    torch.manual_seed(1)
    x, target = torch.randn(2, 3, *size), torch.tensor([3, 5])
    ours = LRP(model, preset=preset)(x, target=target).relevance
    ref = lxt_map(model, x, preset, target)
    assert ref.abs().amax() > 0
    assert (relative_error(ours, ref) <= 1e-4).all(), relative_error(ours, ref)


@pytest.mark.slow
def test_convnext_tiny_equals_lxt_gradient_x_input() -> None:
    """torchvision's initialisation (small weights), random biases, LayerNorm affines and layer scales.

    18 blocks deep, fp32 is itself only good to a few 1e-4 here, by an amount that depends on the CPU's
    kernels (against LXT in fp64: LXT in fp32 1.2e-4 / 2.4e-4, the engine in fp32 4.7e-4 / 3.0e-4 with
    ATEN_CPU_CAPABILITY default / avx512, 2026-12-04). So the rules are compared in fp64, both sides
    (the engine 9e-6 off), within 1e-4, and the fp32 map is bounded by fp32's reach, 2e-3."""
    torch.manual_seed(2)
    model = torchvision.models.convnext_tiny(num_classes=10)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.LayerNorm):
                module.weight.normal_(1.0, 0.2)
                module.bias.normal_(0.0, 0.1)
            elif isinstance(module, (nn.Conv2d, nn.Linear)) and module.bias is not None:
                module.bias.normal_(0.0, 0.02)
            if hasattr(module, "layer_scale"):
                module.layer_scale.uniform_(0.3, 1.0)
    model.eval()
    torch.manual_seed(3)
    x, target = torch.randn(2, 3, 64, 48), torch.tensor([1, 8])
    double = copy.deepcopy(model).double()
    exact = lxt_map(double, x.double(), "epsilon-plus-flat", target)
    ours = LRP(double, preset="epsilon-plus-flat", dtype=torch.float64)(x.double(), target=target).relevance
    assert (relative_error(ours, exact) <= 1e-4).all(), relative_error(ours, exact)
    ours32 = LRP(model, preset="epsilon-plus-flat")(x, target=target).relevance
    assert (relative_error(ours32.double(), exact) <= 2e-3).all(), relative_error(ours32.double(), exact)


def test_layer_scale_and_stochastic_depth_are_the_identity() -> None:
    """A product with a constant gives its input all relevance; eval-mode stochastic depth is no node."""
    from realtime_lrp.lrp.graph import canonize

    graph = canonize(small_convnext())
    kinds = [n.kind for n in graph.nodes]
    assert kinds.count("scale") == 4 and "stochastic_depth" not in kinds
    assert kinds.count("layernorm") == 4 + 1 + 2 + 1  # one per block, the stem, two downsamplings, the classifier
