"""Rule branches the VGG and ResNet tests never reach, against zennit or a slow autograd reference.

In a VGG every conv but the first follows a ReLU, so z+ and gamma only ever see
non-negative inputs there. The models here feed them signed inputs (a conv after a conv,
after a signed average pool, and the first conv on normalised pixels), propagate
``nn.AvgPool2d`` (padded, ceil mode, padding not counted) and are plain ``nn.Sequential``s;
the last tests cover the guards that refuse models the engine cannot explain.
"""
from __future__ import annotations

import pytest
import torch
from references import relative_error, signed_composite, zennit_map
from torch import nn
from zplus_reference import slow_zplus

from realtime_lrp import LRP
from realtime_lrp.lrp.graph import UnsupportedModelError, canonize


class HeadFirst(nn.Module):
    """The classifier is registered before the convs: in ``named_modules()`` order the Linear
    comes first, so under epsilon-plus-flat the first conv gets z+ on normalised (signed) pixels."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8 * 4 * 5, 5)
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 8, 3, padding=1)
        self.pool = nn.AvgPool2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(torch.relu(self.conv2(torch.relu(self.conv1(x))))), 1))


MODELS = {
    # the second conv follows a conv: its input is signed
    "conv_after_conv": lambda: nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
        nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8 * 4 * 5, 5)),
    # an average pool of signed values (signed stabiliser), then a conv on its signed output
    "signed_avgpool": lambda: nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.AvgPool2d(3, stride=2, padding=1, ceil_mode=True, count_include_pad=False),
        nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 5)),
    "head_first": HeadFirst,
    # no ReLU after the two middle convs: relevance reaches their negative outputs, from
    # non-negative inputs (conv 2) and from signed ones (conv 3)
    "gamma_signed_outputs": lambda: nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 5)),
    # grouped convs, the first one too (its input channels and z^B's bounds count the groups)
    "grouped_first": lambda: nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1, groups=3), nn.ReLU(), nn.Conv2d(6, 8, 3, padding=1, groups=2), nn.ReLU(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 5)),
}


def build(name: str, seed: int = 0) -> nn.Module:
    """``MODELS[name]`` in eval mode with random weights and biases of both signs."""
    torch.manual_seed(seed)
    model = MODELS[name]().eval()
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            module.bias.data.normal_(0, 0.1)
    return model


@pytest.mark.parametrize("preset", ["epsilon-plus-flat", "epsilon-gamma-box"])
@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("explicit", [False, True])
def test_signed_inputs_and_average_pools_equal_zennit(name: str, preset: str, explicit: bool) -> None:
    model = build(name)
    x = torch.randn(3, 3, 16, 20, generator=torch.Generator().manual_seed(1))
    assert (x < 0).any()
    with torch.no_grad():
        top1 = model(x).argmax(1)
    target = (top1 + 1 + torch.arange(3)) % 5 if explicit else top1
    result = LRP(model, preset=preset)(x, target=target if explicit else None)
    assert torch.equal(result.target, target)
    ref = zennit_map(model, x, signed_composite(preset), target)  # no canonizer: no batch norm here
    assert (ref.flatten(1).abs().amax(1) > 0).all()
    assert (relative_error(result.relevance, ref) <= 1e-4).all()


def test_signed_inputs_reach_the_two_term_rules() -> None:
    """The models above do feed z+ and gamma a signed input (so the comparison covers that branch)."""
    signed = {name: [node.name for node in canonize(build(name)).nodes if node.kind == "conv" and not node.nonneg_input]
              for name in MODELS}
    assert signed == {"conv_after_conv": ["0", "1"], "signed_avgpool": ["0", "2"], "head_first": ["conv1"],
                      "gamma_signed_outputs": ["0", "3"], "grouped_first": ["0"]}


@pytest.mark.parametrize("top_k", [0.0, 0.1])
def test_zplus_on_a_sequential_with_average_pools_matches_the_slow_reference(top_k: float) -> None:
    torch.manual_seed(4)
    layers = [nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.AvgPool2d(3, stride=2, padding=1, ceil_mode=True),
              nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2, count_include_pad=False),
              nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8 * 2 * 2, 5)]
    model = nn.Sequential(*layers).eval()
    x = torch.rand(2, 3, 17, 18, generator=torch.Generator().manual_seed(2))
    ref = slow_zplus(layers, x, top_k)
    ours = LRP(model, preset="zplus", top_k=top_k)(x).relevance
    assert (ref.flatten(1).amax(1) > 0).all()
    assert (relative_error(ours, ref) <= 1e-4).all()


def one_line_refusal(model: nn.Module) -> str:
    with pytest.raises(UnsupportedModelError) as caught:
        LRP(model.eval())
    message = str(caught.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("mode", ["reflect", "circular", "replicate"])
def test_padding_modes_other_than_zeros_are_refused(mode: str) -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, padding_mode=mode), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 8 * 8, 2))
    assert one_line_refusal(model) == f"no LRP rule for node '0' (Conv2d with padding_mode='{mode}')"


class _UnusedLinear(nn.Module):
    """Has a Linear layer, but its forward pass never calls it."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(x, 1)


def test_a_model_without_a_first_conv_is_refused() -> None:
    message = one_line_refusal(nn.Sequential(nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()))
    assert message == "Sequential has no Conv2d or Linear layer to explain"
    assert one_line_refusal(_UnusedLinear()) == "_UnusedLinear has no Conv2d or Linear layer to explain"
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10), nn.ReLU(), nn.Linear(10, 2))
    assert one_line_refusal(mlp) == "Sequential starts with a Linear layer, not a Conv2d: the engine explains image CNNs"


class _SharedConv(nn.Module):
    """A conv whose output feeds a batch norm and a residual sum: folding would change the sum."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.fc = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(self.bn(y) + y, 1), 1))


_UNMERGEABLE = "follows no Conv2d and leads to no Conv2d or Linear (through a ReLU, average pools and flatten), so " \
    "it cannot be merged"


@pytest.mark.parametrize("model, message", [
    (lambda: nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.BatchNorm2d(4), nn.MaxPool2d(2), nn.Flatten(),
                           nn.Linear(36, 2)),
     f"batch norm '2' {_UNMERGEABLE}"),
    (lambda: nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.BatchNorm2d(4)), f"batch norm '2' {_UNMERGEABLE}"),
    (_SharedConv, f"batch norm 'bn' {_UNMERGEABLE}"),
    (lambda: nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, track_running_stats=False), nn.Flatten(),
                           nn.Linear(144, 2)),
     "batch norm '1' keeps no running statistics to fold"),
])
def test_batch_norms_that_cannot_be_folded_are_refused(model, message: str) -> None:
    assert one_line_refusal(model()) == message


@pytest.mark.parametrize("conv, side", [
    (dict(in_channels=3, out_channels=8, kernel_size=16, stride=16), 40),   # a patch conv, 8 rows and columns uncovered
    (dict(in_channels=5, out_channels=6, kernel_size=(2, 4), stride=(2, 4)), 17),  # rectangular patches
    (dict(in_channels=4, out_channels=7, kernel_size=1), 9),                 # 1x1: a matrix product
    (dict(in_channels=6, out_channels=6, kernel_size=3, stride=2, padding=1, groups=6), 15),  # depthwise, flipped
    (dict(in_channels=3, out_channels=5, kernel_size=3, stride=2, padding=1), 16),  # conv_transpose2d
])
def test_each_cpu_transposed_product_equals_the_input_gradient_of_its_conv(conv: dict, side: int) -> None:
    """The engine's cheaper CPU forms of ``W^T s`` (rules/linear.py) equal torch's input gradient of the
    conv, which is the transposed product by definition, at a batch of 2."""
    from realtime_lrp.lrp.rules.linear import _transposer

    torch.manual_seed(0)
    layer = nn.Conv2d(**conv).eval()
    node = next(n for n in canonize(nn.Sequential(layer)).nodes if n.kind == "conv")
    x = torch.randn(2, conv["in_channels"], side, side)
    s = torch.randn_like(layer(x))
    expected = torch.nn.grad.conv2d_input(x.shape, layer.weight, s, **node.conv_args)
    got = _transposer(node)(s, node.weight, x.shape)
    assert got.shape == x.shape
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_the_epsilon_rule_divides_by_the_forward_output_it_is_given(dtype: torch.dtype) -> None:
    """Epsilon takes z as the node's output from the forward, not recomputed from a and W (in half
    precision a recomputed z amplifies rounding wherever z cancels): given twice the output, the
    relevance it passes down is half, up to the stabiliser (in fp16/bf16 through its power-of-two
    scale). Exact algebra, so no CPU kernel's rounding enters the bound."""
    from realtime_lrp.lrp import rules
    from realtime_lrp.lrp.rules.base import RuleContext

    torch.manual_seed(0)
    layer = nn.Linear(16, 8).eval()
    node = next(n for n in canonize(nn.Sequential(layer)).nodes if n.kind == "linear")
    propagate = rules.Epsilon(epsilon=1e-6).bind(node, dtype, RuleContext((torch.zeros(3), torch.ones(3))))
    a = torch.randn(2, 16).to(dtype)
    out = layer(a.float()).to(dtype)
    R = torch.randn(2, 8)

    def relevance(z: torch.Tensor) -> torch.Tensor:
        r, log_scale = propagate(a, z, None, R)
        return r.double() * (1.0 if log_scale is None else torch.exp2(log_scale.double()).view(-1, 1))

    torch.testing.assert_close(relevance(2 * out), relevance(out) / 2, rtol=1e-4, atol=0)
