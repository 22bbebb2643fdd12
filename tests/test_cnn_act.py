"""Activations, gates and functional forms: MobileNet, EfficientNet, MNASNet and RegNet families.

Element-wise activations take the identity rule (zennit's ``Pass``); the signed presets are
checked against zennit's composites on Sequentials of each activation, and the function and
method forms against the module forms.
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from realtime_lrp import LRP
from realtime_lrp.lrp import ops
from realtime_lrp.lrp.engine import IMAGENET_MEAN, IMAGENET_STD, pixel_bounds
from realtime_lrp.lrp.graph import UnsupportedModelError, canonize

SIGNED = ("epsilon-plus-flat", "epsilon-gamma-box")


def relative_error(ours: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """max |ours - ref| / max |ref| per sample."""
    return (ours - ref).flatten(1).abs().amax(1) / ref.flatten(1).abs().amax(1)


def composite(preset: str, canonizers: list | None = None):
    """zennit's composite for a signed preset, arguments as in test_engine; ``Pass`` on Mish
    too, which zennit's ``Activation`` type does not list."""
    composites = pytest.importorskip("zennit.composites")
    rules = pytest.importorskip("zennit.rules")
    extra = [(nn.Mish, rules.Pass())]
    if preset == "epsilon-plus-flat":
        return composites.EpsilonPlusFlat(layer_map=extra, canonizers=canonizers or [])
    low, high = pixel_bounds(IMAGENET_MEAN, IMAGENET_STD)
    return composites.EpsilonGammaBox(low=low.view(1, 3, 1, 1), high=high.view(1, 3, 1, 1), layer_map=extra,
                                      canonizers=canonizers or [])


def zennit_map(model: nn.Module, x: torch.Tensor, preset: str, target: torch.Tensor,
               canonizers: list | None = None) -> torch.Tensor:
    """zennit's attribution of ``logit * one_hot(target)``.

    zennit's merge-batch-norm canonizer keeps each merged batch norm's eps (``x / sqrt(1 + eps)``);
    as in test_architectures, those are set to 0 after the merge: the model with batch norm folded.
    """
    model = copy.deepcopy(model)
    x = x.clone().requires_grad_()
    with composite(preset, canonizers).context(model) as modified:
        for module in modified.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.eps = 0.0
        out = modified(x)
        index = target.view(-1, 1)
        grad_output = torch.zeros_like(out).scatter_(1, index, out.gather(1, index))
        (attribution,) = torch.autograd.grad(out, x, grad_output)
    return attribution.sum(1)


# -- element-wise activations ------------------------------------------------------------------

ACTIVATIONS = {
    "relu6": (lambda: nn.ReLU6(inplace=True), F.relu6, "nonneg"),
    "hardtanh": (lambda: nn.Hardtanh(-0.5, 2.0), lambda x: F.hardtanh(x, -0.5, max_val=2.0), "any"),
    "silu": (lambda: nn.SiLU(inplace=True), lambda x: F.silu(x, True), "any"),
    "hardswish": (lambda: nn.Hardswish(), F.hardswish, "any"),
    "gelu": (lambda: nn.GELU(approximate="tanh"), lambda x: F.gelu(x, approximate="tanh"), "any"),
    "leaky_relu": (lambda: nn.LeakyReLU(0.2), lambda x: F.leaky_relu(x, 0.2, inplace=True), "any"),
    "elu": (lambda: nn.ELU(alpha=0.7), lambda x: F.elu(x, 0.7), "any"),
    "mish": (lambda: nn.Mish(), F.mish, "any"),
    "sigmoid": (lambda: nn.Sigmoid(), lambda x: x.sigmoid(), "nonneg"),
    "hardsigmoid": (lambda: nn.Hardsigmoid(), F.hardsigmoid, "nonneg"),
    "tanh": (lambda: nn.Tanh(), torch.tanh, "any"),
}


def activation_cnn(act: nn.Module, seed: int = 0) -> nn.Sequential:
    """conv -> act -> conv -> act -> pools -> linear, with biases of both signs."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), act, nn.Conv2d(6, 8, 3, padding=1), copy.deepcopy(act),
                          nn.MaxPool2d(2), nn.Conv2d(8, 8, 3, padding=1), copy.deepcopy(act),
                          nn.AdaptiveAvgPool2d((2, 3)), nn.Flatten(), nn.Linear(48, 5)).eval()
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            module.bias.data.normal_(0, 0.1)
    return model


class Functional(nn.Module):
    """The same network with the activation as a function or a tensor method."""

    def __init__(self, seq: nn.Sequential, fn) -> None:
        super().__init__()
        self.seq, self.fn = seq, fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.seq
        x = self.fn(s[2](self.fn(s[0](x))))
        x = self.fn(s[5](s[4](x)))
        return s[9](torch.flatten(s[7](x), 1))


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_activation_modules_functions_and_methods_are_one_op(name: str) -> None:
    make, fn, sign = ACTIVATIONS[name]
    op = ops.OPS_BY_KIND[name]
    assert ops.op_for_module(make()) is op and op.sign == sign
    assert op.relevance == ops.rule("Pass")
    seq = activation_cnn(make())
    functional = Functional(seq, fn)
    nodes = canonize(seq).nodes
    assert [n.kind for n in canonize(functional).nodes] == [n.kind for n in nodes]
    assert nodes[3].nonneg_input is (sign == "nonneg")  # the conv after the activation
    x = torch.randn(2, 3, 12, 18, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = seq(x)
    for preset in ("epsilon-plus-flat", "zplus"):
        ours = LRP(seq, preset=preset)(x, target=[1, 3])
        torch.testing.assert_close(ours.logits, expected)
        assert torch.equal(LRP(functional, preset=preset)(x, target=[1, 3]).relevance, ours.relevance)


@pytest.mark.parametrize("preset", SIGNED)
@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_activations_take_the_identity_rule_as_zennit_pass(name: str, preset: str) -> None:
    model = activation_cnn(ACTIVATIONS[name][0](), seed=1)
    x = torch.randn(2, 3, 12, 18, generator=torch.Generator().manual_seed(3))
    target = torch.tensor([2, 4])
    ours = LRP(model, preset=preset)(x, target=target).relevance
    ref = zennit_map(model, x, preset, target)
    assert (ref.flatten(1).abs().amax(1) > 0).all()
    assert (relative_error(ours, ref) <= 1e-4).all()


def test_inplace_activations_leave_the_stored_outputs_alone() -> None:
    """An in-place activation run as such would overwrite the conv output its rule reads."""
    inplace = activation_cnn(nn.SiLU(inplace=True))
    plain = activation_cnn(nn.SiLU())
    x = torch.randn(2, 3, 12, 18)
    for preset in SIGNED:
        assert torch.equal(LRP(inplace, preset=preset)(x).relevance, LRP(plain, preset=preset)(x).relevance)
    assert inplace[1].inplace  # the caller's module is unchanged


def test_stochastic_depth_and_dropout2d_are_the_identity_in_eval() -> None:
    torchvision = pytest.importorskip("torchvision")
    depth = torchvision.ops.StochasticDepth(0.5, "row").eval()
    assert ops.op_for_module(depth) is ops.STOCHASTIC_DEPTH
    plain = activation_cnn(nn.ReLU6())
    with_identities = copy.deepcopy(plain)
    with_identities[1] = nn.Sequential(nn.ReLU6(), depth, nn.Dropout2d(0.3)).eval()
    assert [n.kind for n in canonize(with_identities).nodes] == [n.kind for n in canonize(plain).nodes]
    x = torch.randn(2, 3, 12, 18)
    assert torch.equal(LRP(with_identities)(x).relevance, LRP(plain)(x).relevance)


# -- functional forms --------------------------------------------------------------------------

def pooling_cnn(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2, padding=1, ceil_mode=True),
        nn.Conv2d(6, 8, 3, padding=1), nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False),
        nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d((2, 3)), nn.Conv2d(8, 8, 1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5)).eval()


class FunctionalPools(nn.Module):
    """``pooling_cnn`` with each pool, the global mean and the flatten written as functions or methods."""

    def __init__(self, seq: nn.Sequential, tail: str) -> None:
        super().__init__()
        self.seq, self.tail = seq, tail

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.seq
        x = F.max_pool2d(s[1](s[0](x)), 3, 2, 1, ceil_mode=True)
        x = F.avg_pool2d(s[3](x), 3, stride=1, padding=1, count_include_pad=False)
        x = F.adaptive_avg_pool2d(s[6](s[5](x)), (2, 3))
        x = s[9](s[8](x))
        if self.tail == "mean":
            x = x.mean((2, 3))
        elif self.tail == "torch.mean keepdim":
            x = torch.mean(x, [-2, -1], keepdim=True).flatten(1)
        else:
            x = F.adaptive_avg_pool2d(x, 1).flatten(start_dim=1)
        return s[12](x)


@pytest.mark.parametrize("tail", ["mean", "torch.mean keepdim", "adaptive flatten"])
def test_functional_pools_mean_and_flatten_are_their_module_forms(tail: str) -> None:
    seq = pooling_cnn()
    functional = FunctionalPools(seq, tail)
    assert [n.kind for n in canonize(functional).nodes] == [n.kind for n in canonize(seq).nodes]
    x = torch.randn(2, 3, 19, 26, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        expected = functional(x)
    for preset in (*SIGNED, "zplus"):
        ref = LRP(seq, preset=preset)(x, target=[0, 3])
        ours = LRP(functional, preset=preset)(x, target=[0, 3])
        torch.testing.assert_close(ours.logits, expected)
        torch.testing.assert_close(ours.relevance, ref.relevance, rtol=1e-6, atol=1e-9)
        assert ours.relevance.abs().amax() > 0


class OtherMean(nn.Module):
    def __init__(self, forward) -> None:
        super().__init__()
        self.conv, self.fc, self.fn = nn.Conv2d(3, 4, 3), nn.Linear(4, 2), forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.fn(self.conv(x)))


@pytest.mark.parametrize("forward, message", [
    (lambda x: x.mean(1).mean((1, 2)).unsqueeze(1).expand(-1, 4), r"'mean' \(Tensor\.mean over dims 1 "),
    (lambda x: x.mean((2, 3), dtype=torch.float64).float(), r"'mean' \(Tensor\.mean over dims \(2, 3\)"),
    (lambda x: x.flatten(2).mean(2), r"other than flatten\(x, 1\)"),
])
def test_other_reductions_are_refused_in_one_line_naming_the_node(forward, message: str) -> None:
    with pytest.raises(UnsupportedModelError, match=message) as error:
        LRP(OtherMean(forward))
    assert "\n" not in str(error.value)
