"""Activations, gates and functional forms: MobileNet, EfficientNet, MNASNet and RegNet families.

Element-wise activations take the identity rule (zennit's ``Pass``); the signed presets are
checked against zennit's composites on Sequentials of each activation, and the function and
method forms against the module forms.
"""
from __future__ import annotations

import copy
import functools

import pytest
import torch
import torch.nn.functional as F
from references import relative_error, signed_composite, zennit_map
from torch import nn
from zplus_reference import topk_scatter

from realtime_lrp import LRP
from realtime_lrp.lrp import ops
from realtime_lrp.lrp.graph import UnsupportedModelError, canonize

SIGNED = ("epsilon-plus-flat", "epsilon-gamma-box")


def composite(preset: str, canonizers: list | None = None):
    """zennit's composite for a signed preset, with ``Pass`` on Mish too, which zennit's
    ``Activation`` type does not list."""
    rules = pytest.importorskip("zennit.rules")
    return signed_composite(preset, canonizers, layer_map=[(nn.Mish, rules.Pass())])


def zennit_ref(model: nn.Module, x: torch.Tensor, preset, target: torch.Tensor,
               canonizers: list | None = None) -> torch.Tensor:
    """zennit's map under a signed preset's composite (or the composite given), batch norm folded
    (see references.zennit_relevance)."""
    chosen = composite(preset, canonizers) if isinstance(preset, str) else preset
    return zennit_map(model, x, chosen, target, folded=True)


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
    ref = zennit_ref(model, x, preset, target)
    assert (ref.flatten(1).abs().amax(1) > 0).all()
    assert (relative_error(ours, ref) <= 1e-4).all()


def test_inplace_activations_leave_the_stored_outputs_alone() -> None:
    """An in-place activation run as such would overwrite the pool output whose value the pool's
    rule divides by."""
    def build(inplace: bool) -> nn.Sequential:
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.AvgPool2d(2), nn.SiLU(inplace=inplace),
                             nn.Conv2d(6, 8, 3, padding=1), nn.AdaptiveAvgPool2d(2), nn.Hardswish(inplace=inplace),
                             nn.Flatten(), nn.Linear(32, 5)).eval()

    inplace, plain = build(True), build(False)
    x = torch.randn(2, 3, 12, 18)
    for preset in (*SIGNED, "zplus"):
        assert torch.equal(LRP(inplace, preset=preset)(x).relevance, LRP(plain, preset=preset)(x).relevance)
    assert inplace[2].inplace and inplace[5].inplace  # the caller's modules are unchanged


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
    (lambda x: x.flatten(2).mean(2), r"'mean' \(Tensor\.mean over dims 2 "),  # flatten(x, 2) is read (cnn-index)
])
def test_other_reductions_are_refused_in_one_line_naming_the_node(forward, message: str) -> None:
    with pytest.raises(UnsupportedModelError, match=message) as error:
        LRP(OtherMean(forward))
    assert "\n" not in str(error.value)


# -- gates, products with constants, and whole torchvision families ----------------------------

class SignalOnlyGate(torch.autograd.Function):
    """``gate * signal`` whose backward (zennit passes relevance, not gradients) gives the signal
    all of it and the gate nothing: Pahde et al. 2023's gate rule, written here."""

    @staticmethod
    def forward(ctx, gate: torch.Tensor, signal: torch.Tensor) -> torch.Tensor:
        return gate * signal

    @staticmethod
    def backward(ctx, relevance: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.zeros_like(relevance), relevance


def _sum(module: nn.Module, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return module.canonizer_sum(torch.stack([a, b], dim=-1))


def _mobilenet_v2_block(self, x):
    return _sum(self, x, self.conv(x)) if self.use_res_connect else self.conv(x)


def _mobilenet_v3_block(self, x):
    return _sum(self, self.block(x), x) if self.use_res_connect else self.block(x)


def _mbconv(self, x):
    return _sum(self, self.stochastic_depth(self.block(x)), x) if self.use_res_connect else self.block(x)


def _mnasnet_block(self, x):
    return _sum(self, self.layers(x), x) if self.apply_residual else self.layers(x)


def _regnet_block(self, x):
    return self.activation(_sum(self, self.proj(x) if self.proj is not None else x, self.f(x)))


def _squeeze_excitation(self, x):
    return SignalOnlyGate.apply(self._scale(x), x)


def _pooled_head(features: str, classifier: str):
    """A model forward whose global mean (``F.adaptive_avg_pool2d``, ``x.mean``) is a pool module,
    which zennit hooks (with ``Norm``); an unhooked function would pass the plain gradient."""
    def forward(self, x):
        return getattr(self, classifier)(torch.flatten(self.canonizer_pool(getattr(self, features)(x)), 1))
    return forward


def family_canonizers() -> list:
    """The test's canonizers, in the manner of Pahde et al.'s ``EfficientNetBNCanonizer``: a zennit
    ``Sum`` for each block's residual, the signal-only gate for each squeeze-excitation, the global
    mean as a module, and zennit's merge of each batch norm into the conv before it."""
    zcanon = pytest.importorskip("zennit.canonizers")
    zlayer = pytest.importorskip("zennit.layer")
    tv = pytest.importorskip("torchvision")
    from torchvision.models import efficientnet, mnasnet, mobilenetv2, mobilenetv3, regnet

    blocks = {mobilenetv2.InvertedResidual: _mobilenet_v2_block, mobilenetv3.InvertedResidual: _mobilenet_v3_block,
              efficientnet.MBConv: _mbconv, efficientnet.FusedMBConv: _mbconv, mnasnet._InvertedResidual: _mnasnet_block,
              regnet.ResBottleneckBlock: _regnet_block}
    heads = {mobilenetv2.MobileNetV2: _pooled_head("features", "classifier"),
             mnasnet.MNASNet: _pooled_head("layers", "classifier")}

    def attributes(name: str, module: nn.Module):
        for cls, forward in blocks.items():
            if type(module) is cls:
                return {"forward": forward.__get__(module), "canonizer_sum": zlayer.Sum()}
        for cls, forward in heads.items():
            if type(module) is cls:
                return {"forward": forward.__get__(module), "canonizer_pool": nn.AdaptiveAvgPool2d(1)}
        if isinstance(module, tv.ops.SqueezeExcitation):
            return {"forward": _squeeze_excitation.__get__(module)}
        return None

    return [zcanon.SequentialMergeBatchNorm(), zcanon.AttributeCanonizer(attributes)]


FAMILIES = {
    "mobilenet_v2": {"width_mult": 0.5},
    "mobilenet_v3_small": {},
    "mobilenet_v3_large": {"width_mult": 0.5},
    "efficientnet_b0": {},
    "efficientnet_v2_s": {},
    "mnasnet0_5": {},
    "regnet_x_400mf": {},
    "regnet_y_400mf": {},
}
ARCHS = [pytest.param(arch, marks=pytest.mark.slow) if arch == "efficientnet_v2_s" else arch for arch in FAMILIES]
"""EfficientNetV2-S (fused MBConv blocks) takes ~40 s of the file on a 2-core CPU: marked slow."""


@functools.lru_cache(maxsize=None)
def family(arch: str) -> nn.Module:
    """A torchvision model with random weights, conv and linear biases, and batch-norm statistics."""
    tv = pytest.importorskip("torchvision")
    torch.manual_seed(len(arch))
    model = tv.models.get_model(arch, num_classes=10, **FAMILIES[arch])
    g = torch.Generator().manual_seed(len(arch))
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            c = module.num_features
            module.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
            module.running_var.copy_(torch.rand(c, generator=g) * 1.5 + 0.5)
            module.weight.data.copy_(torch.rand(c, generator=g) + 0.5)
            module.bias.data.copy_(torch.randn(c, generator=g) * 0.1)
        if isinstance(module, (nn.Conv2d, nn.Linear)) and module.bias is not None:
            module.bias.data.copy_(torch.randn(module.bias.shape, generator=g) * 0.05)
        if isinstance(module, nn.Linear):
            module.weight.data.copy_(torch.randn(module.weight.shape, generator=g) / module.in_features**0.5)
    return model.eval()


def family_input(arch: str, n: int = 2, h: int = 64, w: int = 80) -> tuple[torch.Tensor, torch.Tensor]:
    """A non-square batch and explicit targets other than the top-1."""
    x = torch.randn(n, 3, h, w, generator=torch.Generator().manual_seed(h * w + len(arch)))
    with torch.no_grad():
        top1 = family(arch)(x).argmax(1)
    return x, (top1 + 1 + torch.arange(n)) % 10


@pytest.mark.parametrize("preset", SIGNED)
@pytest.mark.parametrize("arch", ARCHS)
def test_families_equal_zennit_with_the_canonizers_of_pahde_et_al(arch: str, preset: str) -> None:
    model = family(arch)
    x, target = family_input(arch)
    result = LRP(model, preset=preset)(x, target=target)
    assert torch.equal(result.target, target) and result.relevance.shape == (2, 64, 80)
    ref = zennit_ref(model, x, preset, target, family_canonizers())
    assert (ref.flatten(1).abs().amax(1) > 0).all()
    error = relative_error(result.relevance, ref)
    print(f"{arch} {preset}: max relative error {error.max().item():.2e}")
    assert (error <= 1e-4).all()


class LayerScale(nn.Module):
    """``gamma * x`` with a per-channel parameter (ConvNeXt's layer scale) and a number."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.rand(channels, 1, 1) - 0.3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * torch.mul(self.gamma, x).mul(3.0)


class Gated(nn.Module):
    """A squeeze-excitation gate written either way round, as ``x * gate`` or ``gate * x``."""

    def __init__(self, gate_first: bool, hard: bool) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 8, 3, padding=1)
        self.squeeze, self.excite = nn.Conv2d(6, 3, 1), nn.Conv2d(3, 6, 1)
        self.fc, self.gate_first, self.hard = nn.Linear(8, 5), gate_first, hard

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        s = self.excite(F.relu(self.squeeze(F.adaptive_avg_pool2d(x, 1))))
        return F.hardsigmoid(s) if self.hard else torch.sigmoid(s)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = self.gate(x) * x if self.gate_first else x * self.gate(x)
        return self.fc(F.relu(self.conv2(x)).mean((2, 3)))


def test_a_product_with_a_constant_passes_all_relevance_to_the_tensor() -> None:
    """zennit with ``Pass`` on the scale module is the reference: unhooked, autograd would multiply
    the relevance by the factor."""
    rules = pytest.importorskip("zennit.rules")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), LayerScale(6), nn.Conv2d(6, 8, 3, padding=1),
                          nn.SiLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5)).eval()
    assert [n.kind for n in canonize(model).nodes].count("scale") == 3
    x, target = torch.randn(2, 3, 10, 14), torch.tensor([1, 4])
    for preset in SIGNED:
        ours = LRP(model, preset=preset)(x, target=target)
        torch.testing.assert_close(ours.logits, model(x).detach())
        ref = copy.deepcopy(model)
        with composite(preset).context(ref) as modified:
            handle = rules.Pass().register(modified[2])
            xg = x.clone().requires_grad_()
            out = modified(xg)
            grad = torch.zeros_like(out).scatter_(1, target.view(-1, 1), out.gather(1, target.view(-1, 1)))
            (attribution,) = torch.autograd.grad(out, xg, grad)
            handle.remove()
        assert (relative_error(ours.relevance, attribution.sum(1)) <= 1e-4).all()


@pytest.mark.parametrize("gate_first", [True, False])
@pytest.mark.parametrize("hard", [True, False])
def test_a_gate_either_way_round_gives_the_signal_all_relevance_and_keeps_the_sign(gate_first: bool,
                                                                                   hard: bool) -> None:
    torch.manual_seed(1)
    model = Gated(gate_first, hard).eval()
    nodes = canonize(model).nodes
    gate = next(n for n in nodes if n.kind == "gate")
    signal, side = (nodes[i] for i in gate.inputs)
    assert signal.kind == "relu" and side.kind == ("hardsigmoid" if hard else "sigmoid")
    assert gate.nonneg_input and nodes[nodes.index(gate) + 1].nonneg_input  # the conv after the gate
    x, target = torch.randn(2, 3, 10, 14), torch.tensor([0, 2])
    for preset in SIGNED:
        ours = LRP(model, preset=preset)(x, target=target).relevance
        ref = zennit_ref(GatedReference(model), x, preset, target)
        assert (relative_error(ours, ref) <= 1e-4).all()


class GatedReference(nn.Module):
    """``Gated`` as zennit needs it: activations and pools as modules, the gate a signal-only gate."""

    def __init__(self, m: Gated) -> None:
        super().__init__()
        self.conv1, self.conv2, self.squeeze, self.excite, self.fc = m.conv1, m.conv2, m.squeeze, m.excite, m.fc
        self.relu1, self.relu2, self.relu3 = nn.ReLU(), nn.ReLU(), nn.ReLU()
        self.pool, self.mean, self.sigmoid = nn.AdaptiveAvgPool2d(1), nn.AdaptiveAvgPool2d(1), (
            nn.Hardsigmoid() if m.hard else nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.conv1(x))
        g = self.sigmoid(self.excite(self.relu2(self.squeeze(self.pool(x)))))
        x = SignalOnlyGate.apply(g, x)
        return self.fc(torch.flatten(self.mean(self.relu3(self.conv2(x))), 1))


class Products(nn.Module):
    def __init__(self, forward) -> None:
        super().__init__()
        self.a, self.b, self.fc, self.fn = nn.Conv2d(3, 4, 3), nn.Conv2d(3, 4, 3), nn.Linear(4, 2), forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.fn(self, x).mean((2, 3)))


@pytest.mark.parametrize("forward", [
    lambda m, x: m.a(x) * m.b(x),  # two branches of the input, neither computed from the other
    lambda m, x: m.a(x) * torch.tanh(m.a(x)),  # computed from it, but not a sigmoid
    lambda m, x: torch.sigmoid(m.b(x)) * m.a(x),  # a sigmoid, of another branch
])
def test_a_product_of_two_tensors_that_is_not_a_gate_is_refused(forward) -> None:
    with pytest.raises(UnsupportedModelError, match=r"^no LRP rule for node 'mul\w*' \(operator\.mul of two tensors"):
        LRP(Products(forward))


def test_frozen_batch_norm_is_folded_as_batch_norm() -> None:
    tv = pytest.importorskip("torchvision")
    model = small_cnn_with(nn.BatchNorm2d(6))
    bn = model[1]
    bn.running_mean.normal_(0, 0.2)
    bn.running_var.uniform_(0.5, 2.0)
    bn.weight.data.uniform_(0.5, 1.5)
    bn.bias.data.normal_(0, 0.1)
    frozen = copy.deepcopy(model)
    frozen[1] = tv.ops.FrozenBatchNorm2d(6)
    frozen[1].load_state_dict({k: v for k, v in bn.state_dict().items() if k != "num_batches_tracked"})
    x = torch.randn(2, 3, 10, 14)
    torch.testing.assert_close(frozen(x), model(x))
    assert [n.kind for n in canonize(frozen).nodes] == [n.kind for n in canonize(model).nodes]
    for preset in (*SIGNED, "zplus"):
        assert torch.equal(LRP(frozen, preset=preset)(x).relevance, LRP(model, preset=preset)(x).relevance)


def small_cnn_with(norm: nn.Module) -> nn.Sequential:
    torch.manual_seed(2)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), norm, nn.Hardswish(), nn.Conv2d(6, 8, 3, padding=1),
                         nn.ReLU6(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5)).eval()


def slow_zplus_composite(top_k: float, canonizers: list):
    """The zplus preset as zennit hooks, per layer, with the filter (topk values scattered into
    zeros) before each conv, linear and pool: z+ with zero bias (the first layer on an all-ones
    input), pools by the z-rule with an unsigned stabiliser, residual sums by z+ on their positive
    summands, ``Pass`` on activations, gates by the signal-only gate of the canonizers."""
    core = pytest.importorskip("zennit.core")
    zcomposites = pytest.importorskip("zennit.composites")
    zlayer, zrules, ztypes = (pytest.importorskip(f"zennit.{m}") for m in ("layer", "rules", "types"))
    eps = 1e-5

    def kept(relevance: torch.Tensor) -> torch.Tensor:
        return topk_scatter(relevance, top_k) if 0 < top_k < 1 else relevance

    def hook(inputs: list, params: list, filtered: bool = True) -> core.BasicHook:
        return core.BasicHook(
            input_modifiers=inputs, param_modifiers=params, output_modifiers=[lambda out: out] * len(inputs),
            gradient_mapper=lambda grad, outs: [(kept(grad) if filtered else grad) / (sum(outs) + eps)] * len(outs),
            reducer=lambda ins, grads: sum(i * g for i, g in zip(ins, grads)))

    positive, negative = zrules.ClampMod(min=0.0, zero_params=["bias"]), zrules.ClampMod(max=0.0, zero_params=["bias"])
    zplus = hook([lambda a: a.clamp(min=0), lambda a: a.clamp(max=0)], [positive, negative])
    ones = hook([torch.ones_like], [positive])
    pool = hook([lambda a: a], [zrules.NoMod(param_keys=[])])
    summed = hook([lambda a: a.clamp(min=0)], [zrules.NoMod(param_keys=[])], filtered=False)
    layers = (ztypes.Convolution, ztypes.Linear)
    return zcomposites.SpecialFirstLayerMapComposite(
        layer_map=[(ztypes.Activation, zrules.Pass()), (zlayer.Sum, summed), (ztypes.AvgPool, pool), (layers, zplus)],
        first_map=[(layers, ones)], canonizers=canonizers)


@pytest.mark.parametrize("top_k", [0.0, 0.05])
@pytest.mark.parametrize("arch", ARCHS)
def test_families_zplus_equals_the_slow_per_layer_reference(arch: str, top_k: float) -> None:
    model = family(arch)
    x, target = family_input(arch)
    if top_k:  # a signed filter on a class with a negative logit keeps nothing: explain the top-1 there
        target = model(x).argmax(1)
    ours = LRP(model, preset="zplus", top_k=top_k)(x, target=target).relevance
    ref = zennit_ref(model, x, slow_zplus_composite(top_k, family_canonizers()), target)
    assert (ref.flatten(1).abs().amax(1) > 0).all()
    error = relative_error(ours, ref)
    print(f"{arch} zplus top_k={top_k}: max relative error {error.max().item():.2e}")
    assert (error <= 1e-4).all()


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.corrcoef(torch.stack([a.flatten().double(), b.flatten().double()]))[0, 1])


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["efficientnet_b0", "mobilenet_v3_large"])
@pytest.mark.parametrize("preset", [*SIGNED, "zplus"])
@pytest.mark.parametrize("dtype, top_k, bound", [(torch.float16, 0.0, 0.997), (torch.bfloat16, 0.0, 0.995),
                                                 (torch.float16, 0.02, 0.9)])
def test_low_precision_gated_families_are_finite_and_close(arch: str, preset: str, dtype: torch.dtype, top_k: float,
                                                           bound: float) -> None:
    """fp16 and bf16 maps of the gated families against fp32 (CPU); with the filter, top-k picks
    among near-ties that rounding reorders, so its bound is looser (and bf16, with 3 digits, is
    left out: its filtered maps follow fp32 only loosely, Pearson 0.02-0.99 measured)."""
    model = family(arch)
    x, _ = family_input(arch)
    ref = LRP(model, preset=preset, top_k=top_k)(x).relevance
    low = LRP(model, preset=preset, top_k=top_k, dtype=dtype)(x.to(dtype)).relevance
    assert low.dtype == torch.float32 and torch.isfinite(low).all()
    for i in range(2):
        assert pearson(low[i], ref[i]) >= bound


def test_a_product_that_broadcasts_the_tensor_keeping_the_relevance_is_refused_in_one_line() -> None:
    class Broadcast(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.fc = nn.Conv2d(3, 4, 3), nn.Linear(4, 2)
            self.register_buffer("grid", torch.ones(1, 4, 6, 6))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc((self.conv(x).mean((2, 3), keepdim=True) * self.grid).mean((2, 3)))

    lrp = LRP(Broadcast().eval())
    with pytest.raises(UnsupportedModelError, match=r"^no LRP rule for node 'mul' \(a product that broadcasts its "
                                                    r"\(2, 4, 1, 1\) input to \(2, 4, 6, 6\)\)$"):
        lrp(torch.randn(2, 3, 8, 8))
