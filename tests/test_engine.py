"""The LRP engine against zennit, against an independent slow z+ reference, and its invariants."""
from __future__ import annotations

import copy

import pytest
import torch
import torchvision
import vgg_reference
from references import relative_error, signed_composite, zennit_map
from torch import nn
from zplus_reference import slow_zplus, topk_scatter

from realtime_lrp import LRP
from realtime_lrp.lrp.engine import initial_relevance
from realtime_lrp.lrp.filter import RelevanceFilter
from realtime_lrp.lrp.graph import UnsupportedModelError


def vgg(bn: bool, classes: int = 5, seed: int = 0, cfg=(8, "M", 16, "M", 16, 16, "M"), hidden: int = 64) -> nn.Module:
    """A small torchvision VGG (same module layout) with random weights and BN statistics."""
    torch.manual_seed(seed)
    features = torchvision.models.vgg.make_layers(list(cfg), batch_norm=bn)
    model = torchvision.models.VGG(features, num_classes=classes)
    channels = [c for c in cfg if c != "M"][-1]
    model.classifier[0] = nn.Linear(channels * 49, hidden)
    model.classifier[3] = nn.Linear(hidden, hidden)
    model.classifier[6] = nn.Linear(hidden, classes)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.1)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.normal_(0, 0.1)
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            module.bias.data.normal_(0, 0.05)
    return model.eval()


def vgg_composite(preset: str):
    """zennit's composite for a signed preset with its VGG canonizer (the merge-batch-norm one)."""
    return signed_composite(preset, [pytest.importorskip("zennit.torchvision").VGGCanonizer()])


@pytest.mark.parametrize("preset", ["epsilon-plus-flat", "epsilon-gamma-box"])
@pytest.mark.parametrize("bn", [False, True])
@pytest.mark.parametrize("size", [(32, 32), (40, 72), (75, 50)])
def test_equals_zennit(preset: str, bn: bool, size: tuple[int, int]) -> None:
    model = vgg(bn)
    x = torch.randn(3, 3, *size)
    ref = zennit_map(model, x, vgg_composite(preset))
    result = LRP(model, preset=preset)(x)
    assert result.relevance.shape == (3, *size) and result.relevance.dtype == torch.float32
    assert torch.equal(result.target, model(x).argmax(1))
    assert (relative_error(result.relevance, ref) <= 1e-4).all()


def test_equals_zennit_on_torchvision_vgg11_bn() -> None:
    torch.manual_seed(1)
    model = torchvision.models.vgg11_bn(num_classes=7).eval()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 3, 48, 80)
    for preset in ("epsilon-plus-flat", "epsilon-gamma-box"):
        ref = zennit_map(model, x, vgg_composite(preset))
        assert (relative_error(LRP(model, preset=preset)(x).relevance, ref) <= 1e-4).all()


@pytest.mark.parametrize("top_k", [0.0, 0.05])
@pytest.mark.parametrize("target", [None, "softmax"])
def test_zplus_matches_slow_reference(top_k: float, target) -> None:
    model = vgg(False, seed=3)
    x = torch.randn(2, 3, 36, 52)
    layers = list(model.features) + [model.avgpool, nn.Flatten()] + list(model.classifier)
    ref = slow_zplus(layers, x, top_k, target)
    ours = LRP(model, preset="zplus", top_k=top_k)(x, target=target).relevance
    assert (relative_error(ours, ref) <= 1e-4).all()


def zero_biases(model: nn.Module) -> nn.Module:
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            module.bias.data.zero_()
    return model


@pytest.mark.parametrize("preset", ["epsilon-plus-flat", "epsilon-gamma-box", "zplus"])
def test_conservation_without_biases(preset: str) -> None:
    model = zero_biases(vgg(False, seed=5))
    x = torch.randn(4, 3, 32, 48)
    result = LRP(model, preset=preset)(x)
    logit = result.logits.gather(1, result.target[:, None]).squeeze(1)
    torch.testing.assert_close(result.relevance.sum((1, 2)), logit, rtol=1e-3, atol=0)


def test_conservation_fails_with_biases() -> None:
    """The check above can fail: with biases, relevance leaks to them."""
    model = vgg(False, seed=5)
    result = LRP(model)(torch.randn(4, 3, 32, 48))
    logit = result.logits.gather(1, result.target[:, None]).squeeze(1)
    assert not torch.allclose(result.relevance.sum((1, 2)), logit, rtol=1e-3, atol=0)


@pytest.mark.parametrize("preset", ["epsilon-plus-flat", "epsilon-gamma-box", "zplus"])
@pytest.mark.parametrize("top_k", [0.0, 0.02])
def test_batch_independence(preset: str, top_k: float) -> None:
    model = vgg(True, seed=7)
    x = torch.randn(3, 3, 40, 40)
    lrp = LRP(model, preset=preset, top_k=top_k)
    batch = lrp(x).relevance
    for i in range(3):
        alone = lrp(x[i : i + 1]).relevance
        torch.testing.assert_close(batch[i : i + 1], alone, rtol=1e-4, atol=1e-4 * float(alone.abs().max()))


def test_targets() -> None:
    model = vgg(False)
    x = torch.randn(2, 3, 32, 32)
    lrp = LRP(model)
    given = lrp(x, target=3)
    assert given.target.tolist() == [3, 3]
    per_sample = lrp(x, target=torch.tensor([1, 4]))
    assert per_sample.target.tolist() == [1, 4]
    assert not torch.allclose(given.relevance[1], per_sample.relevance[1])
    assert torch.allclose(given.relevance[0], lrp(x[:1], target=[3]).relevance[0])
    with pytest.raises(ValueError, match="out of range"):
        lrp(x, target=5)
    with pytest.raises(ValueError, match="softmax"):
        lrp(x, target="max")


def test_filter_changes_map_and_keeps_top_values() -> None:
    """At every filtered layer the engine passes on exactly the top 2% of the relevance it
    got (topk + scatter, computed here), and the map changes."""
    model = vgg(False, seed=2)
    x = torch.randn(1, 3, 48, 48, generator=torch.Generator().manual_seed(0))
    plain = LRP(model, preset="zplus")(x).relevance
    lrp = LRP(model, preset="zplus", top_k=0.02)
    real = lrp.filter
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def spy(relevance: torch.Tensor) -> torch.Tensor:
        kept = real(relevance)
        seen.append((relevance, kept))
        return kept

    lrp.filter = type("Spy", (), {"active": True, "__call__": staticmethod(spy)})()
    filtered = lrp(x).relevance
    assert len(seen) == 11  # 3 linears, the adaptive pool, 3 max-pools, 4 convs
    for relevance, kept in seen:
        assert torch.equal(kept, topk_scatter(relevance, 0.02))
    assert (filtered != 0).sum() < (plain != 0).sum()
    assert not torch.allclose(filtered, plain)


@pytest.mark.parametrize("mode", ["signed", "magnitude"])
def test_filter_equals_topk_scatter(mode: str) -> None:
    torch.manual_seed(0)
    r = torch.randn(3, 8, 9, 11)
    r[:, :2] = 0.0
    r[1] = r[1].clamp(min=0)
    filt = RelevanceFilter(0.1, mode)
    key = r.abs() if mode == "magnitude" else r
    flat_key = key.flatten(1)
    k = int(0.1 * flat_key.shape[1])
    keep = torch.zeros_like(flat_key, dtype=torch.bool).scatter_(1, flat_key.topk(k, 1).indices, True)
    assert torch.equal(filt(r), (r.flatten(1) * keep).view_as(r))
    assert torch.equal(RelevanceFilter(1.0)(r), r)
    assert not RelevanceFilter(0.0).active and not RelevanceFilter(1.0).active
    with pytest.raises(ValueError, match=r"top_k must be in \[0, 1\], got 1.5"):
        RelevanceFilter(1.5)
    with pytest.raises(ValueError, match="filter mode must be 'signed' or 'magnitude', got 'abs'"):
        RelevanceFilter(0.1, "abs")


def test_changing_top_k_keeps_the_filter_mode_and_method() -> None:
    lrp = LRP(vgg(False), top_k=0.02, filter_mode="magnitude")
    lrp.filter.method = "radix"
    lrp.top_k = 0.1
    assert (lrp.filter.top_k, lrp.filter.mode, lrp.filter.method) == (0.1, "magnitude", "radix")


def test_filter_keeps_all_ties_at_threshold() -> None:
    r = torch.tensor([[5.0, 3.0, 3.0, 3.0, 1.0, 0.0, -1.0, -2.0, -3.0, -4.0]])
    assert RelevanceFilter(0.2)(r).tolist() == [[5.0, 3.0, 3.0, 3.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]]


def test_unsupported_layer_is_named() -> None:
    model = vgg(False)
    model.features[1] = nn.LocalResponseNorm(2)
    with pytest.raises(UnsupportedModelError, match=r"'features\.1' \(LocalResponseNorm\)"):
        LRP(model)


class _Concat(nn.Module):
    """Two conv branches joined by torch.cat (as in DenseNet or Inception)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3)
        self.b = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(torch.cat([self.a(x), self.b(x)], 1), 1))


class _Product(_Concat):
    """The product of two conv branches, neither a gate of the other."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.a(x) * self.b(x), 1))


class _Attention(nn.Module):
    """A conv followed by self-attention."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.attn = nn.MultiheadAttention(8, 2)
        self.fc = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.fc(self.attn(y, y, y)[1])  # the attention weights, which no rule explains


@pytest.mark.parametrize("model, message", [
    (lambda: nn.Sequential(nn.Conv2d(3, 4, 3), nn.LPPool2d(2, 2), nn.Flatten(), nn.Linear(36, 2)),
     r"'1' \(LPPool2d\)"),
    (_Product, r"'mul' \(operator\.mul of two tensors, neither a sigmoid gate computed from the other"),
    (lambda: nn.Sequential(nn.Conv2d(3, 4, 3), nn.PReLU(), nn.Flatten(), nn.Linear(144, 2)), r"'1' \(PReLU\)"),
    (lambda: nn.Sequential(nn.Conv2d(3, 4, 3), nn.LayerNorm([4, 6, 6]), nn.Flatten(), nn.Linear(144, 2)),
     r"'1' \(LayerNorm over 3 dims"),
    (_Attention, r"'attn' \(MultiheadAttention whose attention weights are used\)"),
])
def test_unsupported_node_is_named(model, message: str) -> None:
    with pytest.raises(UnsupportedModelError, match="no LRP rule for node " + message):
        LRP(model().eval())


def test_batch_norm_neither_after_a_conv_nor_mergeable_to_the_right_is_refused() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.BatchNorm2d(4), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(36, 2))
    with pytest.raises(UnsupportedModelError, match=r"batch norm '2' follows no Conv2d and leads to no Conv2d"):
        LRP(model.eval())


def test_untraceable_model_is_refused() -> None:
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 2, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            return y if y.sum() > 0 else -y

    with pytest.raises(UnsupportedModelError, match="cannot be read as a graph by torch.fx"):
        LRP(Branchy())


@pytest.mark.parametrize("index", range(len(vgg_reference.cases())))
def test_vgg_maps_equal_the_vgg_only_engine(index: int) -> None:
    """The graph engine gives a VGG the maps the chain-only engine gave, filter included.

    fp32 maps agree to rounding. The scale factors are now exact powers of two, so the
    fp16 quotients round differently: unfiltered fp16 maps agree to fp16 rounding, and
    filtered ones may keep a different value at a near-tie, as fp16 against fp32 does.
    """
    case, saved, explained = torch.load(vgg_reference.REFERENCE)[index]
    assert case == vgg_reference.cases()[index]
    relevance, target = vgg_reference.run(case)
    assert torch.equal(target, explained)
    assert (saved.flatten(1).abs().amax(1) > 0).all()
    if case["dtype"] == "fp32":
        assert (relative_error(relevance, saved) <= 1e-5).all()
    elif case["top_k"] == 0:
        assert (relative_error(relevance, saved) <= 5e-3).all()
    else:
        assert all(pearson(relevance[i], saved[i]) >= 0.98 for i in range(len(saved)))


def test_wrong_input_is_refused() -> None:
    lrp = LRP(vgg(False))
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        lrp(torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match="float16"):
        lrp(torch.randn(1, 3, 32, 32).half())


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.corrcoef(torch.stack([a.flatten().double(), b.flatten().double()]))[0, 1])


@pytest.mark.parametrize("preset", ["epsilon-plus-flat", "epsilon-gamma-box", "zplus"])
@pytest.mark.parametrize("top_k", [0.0, 0.02])
@pytest.mark.parametrize("dtype, bounds", [(torch.float16, (0.999, 0.995)), (torch.bfloat16, (0.9, 0.9))])
def test_low_precision_on_cpu_is_finite_and_close(preset: str, top_k: float, dtype: torch.dtype, bounds: tuple) -> None:
    """fp16 and bf16 run on the CPU too: the scaled propagation keeps maps finite and close to fp32.

    The filter's selection flips at near-ties when rounding moves values, so filtered maps
    get a looser bound; bf16 keeps only 8 bits of mantissa.
    """
    model = vgg(True, seed=11)
    x = torch.randn(2, 3, 64, 64)
    ref = LRP(model, preset=preset, top_k=top_k)(x).relevance
    low = LRP(copy.deepcopy(model).to(dtype), preset=preset, top_k=top_k)(x.to(dtype)).relevance
    assert low.dtype == torch.float32 and torch.isfinite(low).all()
    bound = bounds[0] if top_k == 0 else bounds[1]
    for i in range(2):
        assert pearson(low[i], ref[i]) >= bound


def vgg16_pair(dtype: torch.dtype) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    model = torchvision.models.vgg16(num_classes=1000).eval()
    low = copy.deepcopy(model).to("cuda", dtype).to(memory_format=torch.channels_last)
    return model.cuda(), low


@pytest.mark.cuda
@pytest.mark.parametrize("size", [224, 640])
@pytest.mark.parametrize("top_k", [0.0, 0.02])
@pytest.mark.parametrize("preset", ["epsilon-plus-flat", "zplus"])
def test_fp16_matches_fp32_on_cuda(size: int, top_k: float, preset: str) -> None:
    model, half = vgg16_pair(torch.float16)
    x = torch.randn(2, 3, size, size, device="cuda")
    ref = LRP(model, preset=preset, top_k=top_k)(x).relevance
    low = LRP(half, preset=preset, top_k=top_k)(x.half().contiguous(memory_format=torch.channels_last)).relevance
    assert torch.isfinite(low).all() and low.abs().sum() > 0
    for i in range(2):
        assert pearson(low[i], ref[i]) >= 0.999


def test_target_errors_say_what_is_wrong() -> None:
    logits = torch.randn(3, 5)
    with pytest.raises(ValueError, match=r"^got 2 targets for a batch of 3$"):
        initial_relevance(logits, [1, 2])
    with pytest.raises(ValueError, match=r"^target class out of range: the model has 5 classes$"):
        initial_relevance(logits, [0, 5, 1])
    with pytest.raises(ValueError, match=r"^target must be None, a class index or 'softmax', got 'top'$"):
        initial_relevance(logits, "top")
    relevance, chosen = initial_relevance(logits, 4)
    assert chosen.tolist() == [4, 4, 4] and torch.equal(relevance[:, 4], logits[:, 4])
    assert (relevance[:, :4] == 0).all()
