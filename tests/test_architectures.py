"""Residual and other non-VGG CNNs: ResNet, ResNeXt, Wide-ResNet, AlexNet and plain Sequentials.

The signed presets are checked against zennit's composites (``ResNetCanonizer`` for
ResNets, the merge-batch-norm canonizer otherwise) with random weights and random batch
norm statistics; fp16 against fp32 on a ResNet-50; the zplus preset by its invariants.
"""
from __future__ import annotations

import copy
import functools

import pytest
import torch
import torchvision
from references import relative_error, signed_composite, zennit_map
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from realtime_lrp import LRP
from realtime_lrp.lrp.engine import _merge
from realtime_lrp.lrp.graph import canonize
from realtime_lrp.lrp.rules import pow2
from realtime_lrp.models.architectures import ENGINE_ARCHS, build_model
from realtime_lrp.models.errors import WeightsError


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One torch thread for these full-size models: on a small shared CPU, two OpenMP
    threads stall at barriers and make each ResNet-50 call many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def randomised(model: nn.Module, seed: int) -> nn.Module:
    """``model`` in eval mode with random batch-norm statistics, scales and shifts."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            c = module.num_features
            module.running_mean.copy_(torch.randn(c, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(c, generator=generator) * 1.5 + 0.5)
            module.weight.data.copy_(torch.rand(c, generator=generator) + 0.5)
            module.bias.data.copy_(torch.randn(c, generator=generator) * 0.1)
    return model.eval()


ARCHS = {
    "resnet18": lambda: torchvision.models.resnet18(num_classes=10),
    "resnet34": lambda: torchvision.models.resnet34(num_classes=10),
    "resnet50": lambda: torchvision.models.resnet50(num_classes=10),
    "resnext_32x4d_small": lambda: ResNet(Bottleneck, [2, 1, 1, 1], num_classes=10, groups=32, width_per_group=4),
    "wide_resnet_small": lambda: ResNet(Bottleneck, [2, 1, 1, 1], num_classes=10, width_per_group=128),
    "resnet_basic_small": lambda: ResNet(BasicBlock, [1, 2, 1, 1], num_classes=10),
    "alexnet": lambda: torchvision.models.alexnet(num_classes=10),
    "sequential_bn": lambda: nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(3, 2, 1),
        nn.Conv2d(8, 8, 3, stride=2, dilation=2, padding=2, groups=2), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AvgPool2d(2), nn.AdaptiveAvgPool2d((3, 2)), nn.Flatten(), nn.Dropout(), nn.Linear(48, 10)),
}


@functools.lru_cache(maxsize=None)
def model(arch: str) -> nn.Module:
    torch.manual_seed(len(arch))
    return randomised(ARCHS[arch](), seed=len(arch))


def canonizer(net: nn.Module) -> object:
    """zennit's canonizer for ``net``: ``ResNetCanonizer`` for ResNets, the merge-batch-norm one otherwise."""
    canonizers = pytest.importorskip("zennit.torchvision")
    return canonizers.ResNetCanonizer() if isinstance(net, ResNet) else canonizers.VGGCanonizer()


CASES = [
    ("resnet18", (3, 64, 64), False),
    ("resnet18", (2, 48, 80), True),
    ("resnet34", (2, 40, 56), True),
    ("resnet50", (2, 64, 48), False),
    ("resnet50", (2, 33, 47), True),
    ("resnext_32x4d_small", (2, 56, 40), True),
    ("wide_resnet_small", (2, 48, 48), False),
    ("resnet_basic_small", (2, 37, 61), True),
    ("alexnet", (2, 64, 64), False),
    ("alexnet", (3, 70, 90), True),
    ("sequential_bn", (2, 29, 35), True),
]


@pytest.mark.parametrize("preset", ["epsilon-plus-flat", "epsilon-gamma-box"])
@pytest.mark.parametrize("arch, shape, explicit", CASES)
def test_equals_zennit(arch: str, shape: tuple[int, int, int], explicit: bool, preset: str) -> None:
    net = model(arch)
    n, h, w = shape
    x = torch.randn(n, 3, h, w, generator=torch.Generator().manual_seed(h * w))
    with torch.no_grad():
        top1 = net(x).argmax(1)
    target = (top1 + 1 + torch.arange(n)) % 10 if explicit else top1
    result = LRP(net, preset=preset)(x, target=target if explicit else None)
    assert torch.equal(result.target, target)
    assert result.relevance.shape == (n, h, w) and result.relevance.dtype == torch.float32
    ref = zennit_map(net, x, signed_composite(preset, [canonizer(net)]), target, folded=True)
    assert (ref.flatten(1).abs().amax(1) > 0).all()
    assert (relative_error(result.relevance, ref) <= 1e-4).all()


def test_resnet_graph_is_canonical() -> None:
    """Every batch norm is folded (downsample branches too); sums are add nodes; zennit's
    first layer (the stem conv) is the only one flagged first."""
    graph = canonize(torchvision.models.resnet50(num_classes=10).eval())
    kinds = [node.kind for node in graph.nodes]
    assert kinds.count("add") == 16 and kinds.count("conv") == 53 and kinds.count("linear") == 1
    assert [node.name for node in graph.nodes if node.first] == ["conv1"]
    downsample = [node for node in graph.nodes if node.name == "layer1.0.downsample.0"]
    assert len(downsample) == 1 and downsample[0].bias is not None and downsample[0].nonneg_input
    for node in graph.nodes:
        if node.kind == "add":
            assert len(node.inputs) == 2 and all(i < graph.nodes.index(node) for i in node.inputs)


def test_zplus_on_a_resnet_is_positive_and_conserves() -> None:
    """zplus zeroes biases and lets only positive summands of a sum take relevance, so a
    positive logit spreads into a non-negative map of the same total (odd sizes included)."""
    net = model("resnet50")
    x = torch.randn(2, 3, 57, 43, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        logits = net(x)
    target = logits.argmax(1)
    result = LRP(net, preset="zplus")(x)
    logit = logits.gather(1, target[:, None]).squeeze(1)
    assert (logit > 0).all()
    assert (result.relevance >= 0).all() and (result.relevance > 0).any()
    torch.testing.assert_close(result.relevance.sum((1, 2)), logit, rtol=1e-3, atol=0)


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.corrcoef(torch.stack([a.flatten().double(), b.flatten().double()]))[0, 1])


@pytest.mark.parametrize("preset", ["epsilon-plus-flat", "epsilon-gamma-box", "zplus"])
@pytest.mark.parametrize("top_k", [0.0, 0.02])
@pytest.mark.parametrize("dtype, bounds", [(torch.float16, (0.999, 0.995)), (torch.bfloat16, (0.9, 0.9))])
def test_low_precision_resnet50_is_finite_and_close(preset: str, top_k: float, dtype: torch.dtype, bounds: tuple) -> None:
    """test_engine's low-precision check on a ResNet-50: where branches with different scale
    factors meet, they are brought to one factor, so fp16 stays as close to fp32 as on VGG."""
    net = model("resnet50")
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(11))
    ref = LRP(net, preset=preset, top_k=top_k)(x).relevance
    low = LRP(copy.deepcopy(net).to(dtype), preset=preset, top_k=top_k)(x.to(dtype)).relevance
    assert low.dtype == torch.float32 and torch.isfinite(low).all()
    bound = bounds[0] if top_k == 0 else bounds[1]
    for i in range(2):
        assert pearson(low[i], ref[i]) >= bound


def test_pow2_is_exact_and_merge_adds_true_values() -> None:
    exponents = torch.arange(-126, 128, dtype=torch.float32)
    assert torch.equal(pow2(exponents).double(), torch.tensor([2.0**int(k) for k in exponents], dtype=torch.float64))
    assert torch.equal(pow2(torch.tensor([-127.0, -300.0])), torch.zeros(2))
    g = torch.Generator().manual_seed(0)
    ra, rb = torch.randn(3, 4, 5, generator=g), torch.randn(3, 4, 5, generator=g)
    la, lb = torch.tensor([0.0, -40.0, 7.0]), torch.tensor([3.0, -41.0, -90.0])
    merged, common = _merge((ra, la), (rb, lb))
    assert torch.equal(common, torch.maximum(la, lb))
    shape = (-1, 1, 1)
    expected = ra.double() * torch.exp2(la.double()).view(shape) + rb.double() * torch.exp2(lb.double()).view(shape)
    actual = merged.double() * torch.exp2(common.double()).view(shape)
    torch.testing.assert_close(actual, expected, rtol=1e-6, atol=0)


@pytest.mark.parametrize("arch", ENGINE_ARCHS)
def test_build_model_has_torchvision_layout_and_is_explained(arch: str) -> None:
    """Every architecture ``rtlrp bench --arch`` offers builds with torchvision's state-dict
    layout (on the meta device: no memory, no time) and reads as an LRP graph."""
    with torch.device("meta"):
        ours = build_model(arch, num_classes=10)
        theirs = getattr(torchvision.models, arch)(num_classes=10)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs.state_dict().items()}
    graph = canonize(ours.eval())
    assert sum(node.first for node in graph.nodes) == 1


@pytest.mark.parametrize("arch, kwargs", [
    ("resnet18", {"in_channels": 1, "small_input": True}),
    ("resnet50", {"in_channels": 1}),
    ("alexnet", {"in_channels": 1}),
])
def test_build_model_for_other_inputs(arch: str, kwargs: dict) -> None:
    torch.manual_seed(0)
    net = build_model(arch, num_classes=4, **kwargs).eval()
    size = 32 if kwargs.get("small_input") else 64
    x = torch.randn(2, 1, size, size)
    result = LRP(net, mean=[0.5], std=[0.5])(x)
    assert result.relevance.shape == (2, size, size) and torch.isfinite(result.relevance).all()
    if kwargs.get("small_input"):
        assert net.conv1.kernel_size == (3, 3) and isinstance(net.maxpool, nn.Identity)
    with pytest.raises(WeightsError, match="unknown architecture"):
        build_model("resnet9")


def test_filter_runs_before_every_conv_linear_and_pool_of_a_resnet() -> None:
    """On a ResNet-18 the filter sees the relevance at the output of each of its 20 convs
    (downsample convs included), the fc and both pools, in reverse order, and not at sums."""
    net = model("resnet18")
    lrp = LRP(net, top_k=0.05)
    real = lrp.filter
    seen: list[tuple[int, ...]] = []

    def spy(relevance: torch.Tensor) -> torch.Tensor:
        seen.append(tuple(relevance.shape))
        return real(relevance)

    lrp.filter = type("Spy", (), {"active": True, "__call__": staticmethod(spy)})()
    result = lrp(torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(4)))
    assert len(seen) == 20 + 1 + 2
    assert seen[0] == (2, 10) and seen[1] == (2, 512, 1, 1)  # fc, then the average pool
    assert seen[-2:] == [(2, 64, 16, 24), (2, 64, 32, 48)]  # the max-pool, then the stem conv
    assert seen.count((2, 512, 2, 3)) == 5  # layer4: four 3x3 convs and the downsample conv
    assert (result.relevance != 0).any()
