"""Index ops and concatenation (relevance follows the indices), and the CNN families built on them.

Index ops move values without changing them, so their rule is the backward of their index
map. zennit passes relevance through un-hooked functional ops by autograd, which for these
ops is that same backward: on a model of convs, linears and index ops, zennit's composites
with no canonizer are the reference.
"""
from __future__ import annotations

import copy
import operator
import types

import pytest
import torch
import torch.fx
import torchvision
from references import relative_error, signed_composite, zennit_map
from torch import nn
from torchvision.models.shufflenetv2 import channel_shuffle

from realtime_lrp import LRP
from realtime_lrp.lrp.engine import IMAGENET_MEAN, IMAGENET_STD, pixel_bounds
from realtime_lrp.lrp.graph import canonize
from realtime_lrp.lrp.nodes import UnsupportedModelError

SIGNED = ("epsilon-plus-flat", "epsilon-gamma-box")


class IndexNet(nn.Module):
    """Every index op between convs: chunk, cat, channel shuffle (size() unpacked, floordiv,
    view, transpose, contiguous), slicing with steps, permute/transpose, unsqueeze/squeeze,
    split, view(x.size(0), -1)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(4, 4, 1)
        self.c = nn.Conv2d(8, 6, 3, padding=1)
        self.fc = nn.Linear(6 * 3 * 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.a(x))
        p, q = y.chunk(2, dim=1)
        y = channel_shuffle(torch.cat([p, torch.relu(self.b(q))], 1), 2)
        y = y[:, :, 1:, ::2].permute(0, 1, 3, 2).transpose(-1, -2).contiguous()
        y = torch.relu(self.c(y.unsqueeze(2).squeeze(2)))
        first, second = torch.split(y, [2, 4], dim=1)
        y = torch.cat((second, first), dim=1)[..., :3, :4]
        return self.fc(y.permute(0, 2, 3, 1).reshape(y.size(0), -1))  # channels last: not an involution


def index_net() -> nn.Module:
    torch.manual_seed(0)
    model = IndexNet().eval()
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            module.bias.data.normal_(0, 0.05)
    return model


def test_index_ops_are_read_as_nodes() -> None:
    kinds = [n.kind for n in canonize(index_net()).nodes]
    assert kinds.count("cat") == 2 and kinds.count("select") >= 6 and "permute" in kinds and "view" in kinds
    assert "contiguous" not in kinds  # the identity: the node is its input


@pytest.mark.parametrize("preset", SIGNED)
@pytest.mark.parametrize("size", [(8, 12), (11, 9)])
def test_index_ops_equal_zennit(preset: str, size: tuple[int, int]) -> None:
    model = index_net()
    x = torch.randn(2, 3, *size)
    target = torch.tensor([1, 3])
    ours = LRP(model, preset=preset)(x, target=target)
    torch.testing.assert_close(ours.logits, model(x), rtol=1e-5, atol=1e-6)
    assert (relative_error(ours.relevance, zennit_map(model, x, signed_composite(preset), target)) <= 1e-4).all()


@pytest.mark.parametrize("preset", ["epsilon-plus-flat", "zplus"])
def test_index_ops_conserve_relevance(preset: str) -> None:
    """With biases zeroed the flat/z+ chain conserves; index ops lose or add nothing on the way."""
    model = index_net()
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            module.bias.data.zero_()
    x = torch.randn(2, 3, 9, 10)
    result = LRP(model, preset=preset)(x, target=torch.tensor([0, 2]))
    out = result.logits.gather(1, result.target.view(-1, 1)).squeeze(1)
    torch.testing.assert_close(result.relevance.sum((1, 2)), out, rtol=1e-4, atol=1e-6)


def test_data_dependent_shapes_and_indices_are_refused_by_name() -> None:
    class Gathered(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.fc = nn.Conv2d(3, 4, 3), nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            return self.fc(torch.flatten(y[:, [0, 0, 1, 2]], 1))

    with pytest.raises(UnsupportedModelError, match=r"no LRP rule for node 'getitem' \(indexing a tensor with \[0, 0"):
        canonize(Gathered())


# -- the CNN families: references ---------------------------------------------------------------

def randomise(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random biases and BN statistics (weights as built with a fixed seed), in eval mode."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.1, generator=generator)
            module.running_var.uniform_(0.5, 2.0, generator=generator)
            module.weight.data.uniform_(0.5, 1.5, generator=generator)
            module.bias.data.normal_(0, 0.1, generator=generator)
        if isinstance(module, (nn.Conv2d, nn.Linear)) and module.bias is not None:
            module.bias.data.normal_(0, 0.05, generator=generator)
    return model.eval()


def _leaves(model: nn.Module) -> list[tuple[nn.Module, str, nn.Module]]:
    """(parent, name, module) of every module without children, in definition order."""
    out = []
    for parent in model.modules():
        for name, child in parent.named_children():
            if not list(child.children()):
                out.append((parent, name, child))
    order = {id(m): i for i, m in enumerate(model.modules())}
    return sorted(out, key=lambda t: order[id(t[2])])


def fold_left(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """Fold ``bn`` into the conv before it, in place (in the engine's order of operations: maps that
    merge batch norms to the right are ill-conditioned, so the reference rounds as the engine does)."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(scale)
    with torch.no_grad():
        conv.weight.mul_(scale.view(-1, 1, 1, 1))
        conv.bias = nn.Parameter((bias - bn.running_mean) * scale + bn.bias)


def merge_batchnorm_left(model: nn.Module) -> nn.Module:
    """The test's canonizer (Pahde's CorrectSequentialMergeBatchNorm): a batch norm defined right
    after a conv is folded into it, without zennit's left-over epsilon, and becomes the identity."""
    model = copy.deepcopy(model)
    leaves = _leaves(model)
    for (_, _, conv), (parent, name, bn) in zip(leaves, leaves[1:]):
        if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
            fold_left(conv, bn)
            setattr(parent, name, nn.Identity())
    return model


POOL_FUNCTIONS = {nn.functional.max_pool2d: nn.MaxPool2d, nn.functional.avg_pool2d: nn.AvgPool2d,
                  nn.functional.adaptive_avg_pool2d: nn.AdaptiveAvgPool2d}


def dag_zplus(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Slow z+ reference on any fx-traceable DAG (BN folded beforehand): each Conv2d/Linear by
    the z+ rule with zero bias (alpha=1, beta=0: positive weights on positive inputs and negative
    ones on negative inputs; the first layer on an all-ones input), each pool by the z-rule (a
    max-pool as the average pool of its windows), one autograd gradient trick per layer; every
    ReLU module (and the thresholded ReLU) passes relevance unchanged; every other node (functional
    ReLUs, cat, flatten, slicing, views) by its vector-Jacobian product, which for these is the
    identity where the ReLU's output is not 0, or the index map."""
    model = copy.deepcopy(model)
    for module in model.modules():
        if hasattr(module, "inplace"):
            module.inplace = False
    class Tracer(torch.fx.Tracer):  # ReLU modules (the thresholded ReLU too) stay one call: the identity rule
        def is_leaf_module(self, m: nn.Module, name: str) -> bool:
            return isinstance(m, nn.ReLU) or super().is_leaf_module(m, name)

    tracer = Tracer()
    graph = tracer.trace(model)
    traced = torch.fx.GraphModule(tracer.root, graph)
    modules = dict(traced.named_modules())
    first = next(m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    values: dict = {}
    for node in traced.graph.nodes:
        if node.op == "placeholder":
            values[node] = x
        elif node.op == "get_attr":
            values[node] = operator.attrgetter(node.target)(traced)
        elif node.op == "output":
            out_node = node.args[0]
        else:
            args = torch.fx.node.map_arg(node.args, lambda n: values[n])
            kwargs = torch.fx.node.map_arg(node.kwargs, lambda n: values[n])
            fn = modules[node.target] if node.op == "call_module" else (
                getattr(args[0], node.target) if node.op == "call_method" else node.target)
            values[node] = fn(*(args[1:] if node.op == "call_method" else args), **kwargs)
    logits = values[out_node]
    index = target.view(-1, 1)
    relevance = {out_node: torch.zeros_like(logits).scatter_(1, index, logits.gather(1, index))}
    for node in reversed(list(traced.graph.nodes)):
        if node not in relevance or node.op in ("placeholder", "get_attr"):
            continue
        R = relevance.pop(node)
        if node.target is operator.getitem and isinstance(values[node.args[0]], tuple):  # a part of chunk/split
            parts_of = relevance.setdefault(node.args[0], {})
            parts_of[node.args[1]] = parts_of[node.args[1]] + R if node.args[1] in parts_of else R
            continue
        if isinstance(values[node], tuple):  # chunk/split: the relevance of each part read
            R = tuple(R.get(k, torch.zeros_like(v)) for k, v in enumerate(values[node]))
        elif not isinstance(values[node], torch.Tensor):
            continue
        inputs = list(node.all_input_nodes)
        layer = modules[node.target] if node.op == "call_module" else None
        if node.target in POOL_FUNCTIONS:  # F.max_pool2d(x, ...) is its module
            layer = POOL_FUNCTIONS[node.target](*node.args[1:], **node.kwargs)
        if isinstance(layer, nn.ReLU):
            parts = [R]
        elif isinstance(layer, (nn.Conv2d, nn.Linear)):  # z+ = alpha 1, beta 0: W+ on a+ and W- on a-
            a = values[inputs[0]]
            a = (torch.ones_like(a) if layer is first else a).detach()
            pos, neg = (a.clamp(min=0).requires_grad_(), a.clamp(max=0).requires_grad_())
            w_pos, w_neg = copy.deepcopy(layer), copy.deepcopy(layer)
            w_pos.weight.data.clamp_(min=0)
            w_neg.weight.data.clamp_(max=0)
            for part in (w_pos, w_neg):
                if part.bias is not None:
                    part.bias.data.zero_()
            z = w_pos(pos) + w_neg(neg) + 1e-5
            (z * (R / z).detach()).sum().backward()
            parts = [(pos * pos.grad + neg * neg.grad).detach()]
        elif isinstance(layer, (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d)):
            if isinstance(layer, nn.MaxPool2d):
                layer = nn.AvgPool2d(layer.kernel_size, layer.stride, layer.padding, layer.ceil_mode)
            a = values[inputs[0]].detach().requires_grad_()
            z = layer(a) + 1e-5
            (z * (R / z).detach()).sum().backward()
            parts = [(a * a.grad).detach()]
        else:
            inputs = [n for n in inputs if isinstance(values[n], torch.Tensor) and values[n].is_floating_point()]
            lookup = {n: values[n] for n in node.all_input_nodes}
            leaves = {n: values[n].detach().requires_grad_() for n in inputs}
            lookup.update({n: leaf.clone() for n, leaf in leaves.items()})  # F.relu(..., inplace=True) may write
            args = torch.fx.node.map_arg(node.args, lambda n: lookup[n])
            kwargs = torch.fx.node.map_arg(node.kwargs, lambda n: lookup[n])
            fn = modules[node.target] if node.op == "call_module" else (
                getattr(args[0], node.target) if node.op == "call_method" else node.target)
            out = fn(*(args[1:] if node.op == "call_method" else args), **kwargs)
            grads = torch.autograd.grad(out, [leaves[n] for n in inputs], R, allow_unused=True)
            parts = [g if g is not None else torch.zeros_like(leaves[n]) for n, g in zip(inputs, grads)]
        for n, part in zip(inputs, parts):
            relevance[n] = relevance[n] + part if n in relevance else part
    return relevance[next(iter(traced.graph.nodes))].sum(1)


# -- batch norm merged into the layer after it ----------------------------------------------------

def bn_affine(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    scale = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach()
    return scale, (bn.bias - bn.running_mean * scale).detach()


class ThreshReLU(nn.ReLU):
    """Pahde's thresholded ReLU (an nn.ReLU, so zennit gives it Pass): ``x`` where ``s x + t > 0``, else
    ``-t/s`` (the test written as ``sign(s) (x + t/s) > 0``, as the engine rounds it)."""

    def __init__(self, bn: nn.BatchNorm2d) -> None:
        super().__init__()
        self.scale, self.shift = bn_affine(bn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sign, floor = torch.sign(self.scale).view(1, -1, 1, 1), (-self.shift / self.scale).view(1, -1, 1, 1)
        return torch.where((x - floor) * sign > 0, x, floor)


def merged_right(layer: nn.Module, bn: nn.BatchNorm2d) -> nn.Module:
    """The test's canonizer (Pahde's SequentialMergeBatchNormtoRight) for one layer: weight times the
    BN's scale per input channel, bias plus the weights times its shift; a padded conv padded
    explicitly with ``-t/s`` (whose BN image is the zero a padded conv sees) and run unpadded."""
    scale, shift = bn_affine(bn)
    layer = copy.deepcopy(layer)
    if isinstance(layer, nn.Conv2d) and layer.groups > 1:  # the same conv with a block-diagonal dense weight
        out_g, in_g = layer.out_channels // layer.groups, layer.in_channels // layer.groups
        dense = layer.weight.new_zeros(layer.out_channels, layer.in_channels, *layer.kernel_size)
        for g in range(layer.groups):
            dense[g * out_g:(g + 1) * out_g, g * in_g:(g + 1) * in_g] = layer.weight.data[g * out_g:(g + 1) * out_g]
        layer.groups, layer.weight = 1, nn.Parameter(dense)
    per = layer.weight.shape[1] // scale.numel()
    view = (1, -1, 1, 1) if isinstance(layer, nn.Conv2d) else (1, -1)
    s, t = (v.repeat_interleave(per).view(view) for v in (scale, shift))
    bias = layer.bias.detach() if layer.bias is not None else 0
    with torch.no_grad():
        layer.bias = nn.Parameter(bias + (layer.weight * t).sum(tuple(range(1, layer.weight.dim()))))
        layer.weight.mul_(s)
    if isinstance(layer, nn.Conv2d) and layer.padding != (0, 0):
        (ph, pw), fill = layer.padding, (-shift / scale).view(1, -1, 1, 1)
        layer.padding = (0, 0)

        def pad(module: nn.Module, args: tuple) -> tuple:
            x = args[0]
            out = fill.expand(x.shape[0], -1, x.shape[2] + 2 * ph, x.shape[3] + 2 * pw).clone()
            out[:, :, ph:ph + x.shape[2], pw:pw + x.shape[3]] = x
            return (out,)

        layer.register_forward_pre_hook(pad)
    return layer


class BNFirst(nn.Module):
    """Batch norms before convs and a linear: BN -> ReLU -> padded strided conv, BN -> grouped conv
    with asymmetric padding, BN -> ReLU -> average pools -> flatten -> linear; scales of both signs.

    The ReLUs before a batch norm are modules: zennit gives those Pass, as the engine does every
    ReLU, while it takes a functional ReLU's gradient, which drops the relevance that the merged
    layer gives the thresholded ReLU's floor where the ReLU before was 0."""

    def __init__(self) -> None:
        super().__init__()
        self.conv0, self.act0, self.act1, self.act2 = nn.Conv2d(3, 6, 3), nn.ReLU(), nn.ReLU(), nn.ReLU()
        self.bn1, self.conv1 = nn.BatchNorm2d(6), nn.Conv2d(6, 8, 3, padding=1, stride=2)
        self.bn2, self.conv2 = nn.BatchNorm2d(8), nn.Conv2d(8, 4, 3, padding=(2, 1), groups=2, bias=False)
        self.bn3, self.pool, self.fc = nn.BatchNorm2d(4), nn.AdaptiveAvgPool2d((2, 3)), nn.Linear(24, 5)
        self.avg = nn.AvgPool2d(2, ceil_mode=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act0(self.conv0(x))
        y = self.act1(self.conv1(torch.relu(self.bn1(y))))
        y = self.act2(self.conv2(self.bn2(y)))
        return self.fc(torch.flatten(self.pool(self.avg(torch.relu(self.bn3(y)))), 1))


def bn_first() -> nn.Module:
    torch.manual_seed(3)
    model = randomise(BNFirst())
    model.bn2.weight.data[::3] *= -1  # a negative scale flips the threshold's side
    return model


def bn_first_signs() -> nn.Module:
    """``bn_first`` whose thresholded ReLUs have channels of every sign: never negative (scale > 0,
    floor >= 0), never positive (scale < 0, floor <= 0) and mixed, one of six and one of four, so z+
    takes one product on the known channels and one more on the mixed (``_known_sign_terms``)."""
    model = bn_first()
    for bn, scale, shift in ((model.bn1, [1.0, -1.0, 0.7, -0.8, 1.2, 0.9], [-0.1, -0.2, -0.05, -0.3, 0.1, 0.0]),
                             (model.bn3, [1.0, -1.0, 1.1, 0.8], [-0.1, 0.0, 0.2, -0.3])):
        bn.weight.data, bn.bias.data = torch.tensor(scale), torch.tensor(shift)
        bn.running_mean.zero_()  # a floor is then -shift * sigma / scale: of the sign the values above give
    return model


BN_FIRST = {"bn_first": bn_first, "bn_first_signs": bn_first_signs}


class BNFirstMerged(nn.Module):
    """BNFirst canonised by hand (the reference's canonizer)."""

    def __init__(self, m: BNFirst) -> None:
        super().__init__()
        self.conv0, self.act0, self.act1, self.act2, self.avg = m.conv0, m.act0, m.act1, m.act2, m.avg
        self.relu1, self.conv1 = ThreshReLU(m.bn1), merged_right(m.conv1, m.bn1)
        self.conv2, self.relu3 = merged_right(m.conv2, m.bn2), ThreshReLU(m.bn3)
        self.pool, self.fc = m.pool, merged_right(m.fc, m.bn3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act0(self.conv0(x))
        y = self.act2(self.conv2(self.act1(self.conv1(self.relu1(y)))))
        return self.fc(torch.flatten(self.pool(self.avg(self.relu3(y))), 1))


def test_batch_norm_before_a_layer_is_merged_into_it() -> None:
    model = bn_first()
    kinds = [n.kind for n in canonize(model).nodes]
    assert "batchnorm_right" not in kinds and kinds.count("shifted_relu") == 2 and kinds.count("border_pad") == 2
    x = torch.randn(2, 3, 13, 11)
    with torch.no_grad():
        assert (BNFirstMerged(model)(x) - model(x)).abs().max() <= 1e-5  # the reference canonizer is exact
    for preset in ("epsilon-plus-flat", "epsilon-gamma-box", "zplus"):
        torch.testing.assert_close(LRP(model, preset=preset)(x).logits, model(x), rtol=1e-5, atol=1e-6)


def test_batch_norm_of_zero_scale_is_merged_exactly() -> None:
    """A channel a batch norm sets to a constant (gamma 0, as in pruned models) stays that constant."""
    model = bn_first()
    for bn in (model.bn1, model.bn2, model.bn3):
        bn.weight.data[1] = 0
    x = torch.randn(2, 3, 13, 11)
    for preset in ("epsilon-plus-flat", "epsilon-gamma-box", "zplus"):
        result = LRP(model, preset=preset)(x)
        torch.testing.assert_close(result.logits, model(x), rtol=1e-5, atol=1e-6)
        assert torch.isfinite(result.relevance).all() and result.relevance.abs().amax() > 0


@pytest.mark.parametrize("preset", SIGNED)
@pytest.mark.parametrize("build", sorted(BN_FIRST))
def test_batch_norm_merged_right_equals_zennit(build: str, preset: str) -> None:
    model = BN_FIRST[build]()
    x = torch.randn(2, 3, 13, 11)
    target = torch.tensor([4, 1])
    ref = zennit_map(BNFirstMerged(model), x, signed_composite(preset), target)
    assert (relative_error(LRP(model, preset=preset)(x, target=target).relevance, ref) <= 1e-4).all()


@pytest.mark.parametrize("preset", ("epsilon-plus-flat", "zplus"))
@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16))
def test_thresholded_relu_of_known_signs_in_half_precision(dtype: torch.dtype, preset: str) -> None:
    """The known-sign terms in fp16/bf16 (scaled quotients, the mixed channels' term among them) follow fp32."""
    model, x = bn_first_signs(), torch.randn(2, 3, 13, 11)
    ref = LRP(model, preset=preset)(x).relevance
    low = LRP(model, preset=preset, dtype=dtype)(x.to(dtype)).relevance
    assert torch.isfinite(low).all()
    for i in range(2):
        assert torch.nn.functional.cosine_similarity(low[i].flatten(), ref[i].flatten(), 0) >= 0.999


def test_thresholded_relu_channels_are_read_by_sign() -> None:
    signs = [n.input_signs.tolist() for n in canonize(bn_first_signs()).nodes if n.input_signs is not None]
    assert signs == [[1, -1, 1, -1, 0, 1], [s for s in (1, -1, 0, 1) for _ in range(6)]]


class _Dense(nn.Module):
    """Conv -> ReLU -> (BN -> ReLU, or nothing) -> 1x1 conv -> pool -> linear: DenseNet's bottleneck."""

    def __init__(self, norm: bool) -> None:
        super().__init__()
        self.conv0, self.conv1, self.fc = nn.Conv2d(3, 32, 3), nn.Conv2d(32, 16, 1), nn.Linear(16, 5)
        self.norm = nn.Sequential(nn.BatchNorm2d(32), nn.ReLU()) if norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv1(self.norm(torch.relu(self.conv0(x))))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(torch.relu(y), 1), 1))


@pytest.mark.parametrize("preset", ("epsilon-plus-flat", "zplus"))
def test_thresholded_relu_of_known_signs_costs_no_more_than_a_relu(preset: str) -> None:
    """z+ after BN -> ReLU merged right: as many multiply-adds as after a plain ReLU where every channel's
    sign is known (torchvision's BN at its initial values: a ReLU), one extra channel's worth per mixed
    channel, and the split's (a third more on the 1x1 conv) where most are mixed."""
    from torch.utils.flop_counter import FlopCounterMode

    def flops(model: nn.Module) -> int:
        torch.manual_seed(0)
        lrp, x = LRP(model.eval(), preset=preset), torch.randn(1, 3, 20, 20)
        with FlopCounterMode(display=False) as counter:
            lrp(x)
        return counter.get_total_flops()

    torch.manual_seed(0)
    plain, normed = _Dense(False), _Dense(True)
    normed.load_state_dict(plain.state_dict(), strict=False)
    relu = flops(plain)
    assert flops(normed) == relu
    bn = normed.norm[0]
    bn.bias.data[:4] = 0.5  # four channels of 32 whose floor is below 0: mixed
    one_by_one = 2 * 32 * 16 * 18 * 18  # the 1x1 conv's flops on a full input, per product
    assert flops(normed) == relu + 2 * one_by_one * 4 // 32
    bn.bias.data[:] = 0.5
    assert flops(normed) == relu + one_by_one


# -- the CNN families -------------------------------------------------------------------------------

class _PoolShim:
    """Stands for ``torch.nn.functional`` in one block's forward: its ``avg_pool2d`` calls a module of the
    block, so zennit hooks it (Norm), as the engine reads the function as the module."""

    def __init__(self, pool: nn.Module) -> None:
        self.pool = pool

    def avg_pool2d(self, x: torch.Tensor, kernel_size: int, stride: int, padding: int) -> torch.Tensor:
        assert (self.pool.kernel_size, self.pool.stride, self.pool.padding) == (kernel_size, stride, padding)
        return self.pool(x)

    def __getattr__(self, name: str):
        return getattr(nn.functional, name)


class _ModularPools(nn.Module):
    """An Inception block whose ``F.avg_pool2d`` calls a module of its own (built per call, so copies
    and fx traces see this module's pool)."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block, self.ref_pool = block, nn.AvgPool2d(3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        code = type(self.block)._forward
        fn = types.FunctionType(code.__code__, {**code.__globals__, "F": _PoolShim(self.ref_pool)})
        return torch.cat(fn(self.block, x), 1)


def modular_avg_pools(model: nn.Module) -> nn.Module:
    """The test's canonizer for Inception-v3's ``F.avg_pool2d(x, 3, 1, 1)`` in its A, C and E blocks:
    each block gets an ``nn.AvgPool2d`` module of its own that its forward calls instead."""
    from torchvision.models import inception

    model = copy.deepcopy(model)
    for name, block in list(model.named_children()):
        if isinstance(block, (inception.InceptionA, inception.InceptionC, inception.InceptionE)):
            setattr(model, name, _ModularPools(block))
    return model


class _Head(nn.Module):
    """``classifier(final(body(x)))``: a canonised model's forward as modules (zennit hooks modules)."""

    def __init__(self, body: nn.Module, final: nn.Module, classifier: nn.Module) -> None:
        super().__init__()
        self.body, self.final, self.classifier = body, final, classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.final(self.body(x)))


def densenet_canonised(model: nn.Module) -> nn.Module:
    """The test's canonizer for DenseNet (Pahde's ``ThreshSequentialCanonizer``): each BN -> ReLU ->
    conv of a dense layer or transition, and norm5 -> ReLU -> pool -> classifier, merged to the right
    with a thresholded ReLU; the other BNs folded into the conv before them; the final ReLU and pool
    as modules (Pahde's ``DenseNetAdaptiveAvgPoolCanonizer``)."""
    from torchvision.models.densenet import _DenseLayer, _Transition

    model = copy.deepcopy(model)
    fold_left(model.features.conv0, model.features.norm0)
    model.features.norm0 = nn.Identity()
    for m in model.modules():
        if isinstance(m, _DenseLayer):
            fold_left(m.conv1, m.norm2)
            m.relu1, m.conv1, m.norm1 = ThreshReLU(m.norm1), merged_right(m.conv1, m.norm1), nn.Identity()
            m.norm2 = nn.Identity()
        if isinstance(m, _Transition):
            m.relu, m.conv, m.norm = ThreshReLU(m.norm), merged_right(m.conv, m.norm), nn.Identity()
    norm5 = model.features.norm5
    model.classifier, model.features.norm5 = merged_right(model.classifier, norm5), nn.Identity()
    final = nn.Sequential(ThreshReLU(norm5), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return _Head(model.features, final, model.classifier).eval()


def shufflenet_canonised(model: nn.Module) -> nn.Module:
    """The test's canonizer for ShuffleNetV2: BNs folded into their convs, and the global mean as a
    module pool (zennit's Norm; the engine reads ``x.mean([2, 3])`` as that pool)."""
    m = merge_batchnorm_left(model)
    body = nn.Sequential(m.conv1, m.maxpool, m.stage2, m.stage3, m.stage4, m.conv5)
    return _Head(body, nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()), m.fc).eval()


def transformed_twin(model: nn.Module, x: torch.Tensor, bounds: tuple) -> tuple[nn.Module, torch.Tensor, tuple]:
    """The test's canonizer for ``transform_input``: the same model without it, the image
    transformed as torchvision does, and the z^B bounds mapped the same way (per channel)."""
    if not getattr(model, "transform_input", False):
        return model, x, bounds
    twin = copy.deepcopy(model)
    twin.transform_input = False
    low, high = (model._transform_input(b.view(1, -1, 1, 1)).flatten() for b in bounds)
    return twin, model._transform_input(x), (low, high)


def googlenet(transform_input: bool) -> nn.Module:
    torch.manual_seed(0)
    return randomise(torchvision.models.googlenet(num_classes=7, aux_logits=True, transform_input=transform_input,
                                                  init_weights=False))


def inception() -> nn.Module:
    torch.manual_seed(0)
    return randomise(torchvision.models.inception_v3(num_classes=7, aux_logits=True, transform_input=True,
                                                     init_weights=False))


# name: (build, input size, the reference's canonizer)
FAMILIES = {
    "squeezenet1_0": (lambda: randomise(torchvision.models.squeezenet1_0(num_classes=7)), (37, 51), None),
    "squeezenet1_1": (lambda: randomise(torchvision.models.squeezenet1_1(num_classes=7)), (37, 51), None),
    "googlenet": (lambda: googlenet(True), (40, 56), merge_batchnorm_left),
    "googlenet_plain": (lambda: googlenet(False), (48, 40), merge_batchnorm_left),
    "inception_v3": (inception, (80, 96), lambda m: merge_batchnorm_left(modular_avg_pools(m))),
    "shufflenet_v2_x0_5": (lambda: randomise(torchvision.models.shufflenet_v2_x0_5(num_classes=7)), (40, 56),
                           shufflenet_canonised),
    "densenet121": (lambda: randomise(torchvision.models.densenet121(num_classes=7)), (40, 72), densenet_canonised),
}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request) -> tuple[str, nn.Module, torch.Tensor, torch.Tensor]:
    build, size, _ = FAMILIES[request.param]
    torch.manual_seed(1)
    model = build()
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        logits = model(x)
    ranked = logits.argsort(1, descending=True)
    second = ranked[:, 1]  # explicit targets, not the top-1, unless that logit is 0 (SqueezeNet's ReLU'd logits)
    target = torch.where(logits.gather(1, second.view(-1, 1)).squeeze(1) > 0, second, ranked[:, 0])
    assert (logits.gather(1, target.view(-1, 1)) != 0).all()
    return request.param, model, x, target


def reference_model(name: str, model: nn.Module, x: torch.Tensor, bounds: tuple
                    ) -> tuple[nn.Module, torch.Tensor, tuple]:
    twin, x_ref, bounds = transformed_twin(model, x, bounds)
    canonizer = FAMILIES[name][2]
    return (canonizer(twin) if canonizer else twin), x_ref, bounds


@pytest.mark.parametrize("preset", SIGNED)
def test_family_equals_zennit(family, preset: str) -> None:
    name, model, x, target = family
    ref_model, x_ref, bounds = reference_model(name, model, x, pixel_bounds(IMAGENET_MEAN, IMAGENET_STD))
    with torch.no_grad():
        torch.testing.assert_close(ref_model(x_ref), model(x), rtol=1e-4, atol=1e-5)  # the canonizers are exact
    ref = zennit_map(ref_model, x_ref, signed_composite(preset, bounds=bounds), target)
    ours = LRP(model, preset=preset)(x, target=target)
    torch.testing.assert_close(ours.logits, model(x), rtol=1e-4, atol=1e-5)
    error = relative_error(ours.relevance, ref)
    print(f"{name} {preset}: max error {error.max():.2e}")
    assert (error <= 1e-4).all()


def test_family_zplus_equals_slow_reference(family) -> None:
    name, model, x, target = family
    ref_model, x_ref, _ = reference_model(name, model, x, (torch.zeros(3), torch.ones(3)))
    ref = dag_zplus(ref_model, x_ref, target)
    error = relative_error(LRP(model, preset="zplus")(x, target=target).relevance, ref)
    print(f"{name} zplus: max error {error.max():.2e}")
    assert (error <= 1e-4).all()


# -- what is still refused: one line, the node, its module, a hint ----------------------------------

class _Flattened(nn.Module):
    def __init__(self, flatten) -> None:
        super().__init__()
        self.conv, self.fc, self.flatten = nn.Conv2d(3, 4, 3), nn.Linear(4 * 6 * 6, 2), flatten

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flatten(self.conv(x)))


@pytest.mark.parametrize("flatten, message", [
    (lambda y: y.view(len(y), -1), r"'len' is not supported.*; hint: x\.view\(len\(x\), -1\): "
                                   r"use torch\.flatten\(x, 1\)$"),
    (lambda y: y.view(int(y.size(0)), -1), r"; hint: x\.view\(int\(x\.size\(0\)\), -1\): use torch\.flatten\(x, 1\)"),
    (lambda y: y.view(y.numel() // 144, -1), r"^no LRP rule for node 'numel' \(Tensor\.numel\); "
                                              r"hint: x\.view\(x\.numel\(\) // n, -1\): use torch\.flatten\(x, 1\)$"),
    (lambda y: y.view(y.size(0), -1) if y.sum() > 0 else y, r"; hint: the forward branches on tensor values"),
])
def test_refusals_are_one_line_with_a_hint(flatten, message: str) -> None:
    with pytest.raises(UnsupportedModelError, match=message) as error:
        LRP(_Flattened(flatten).eval())
    assert "\n" not in str(error.value)
    LRP(_Flattened(lambda y: y.view(y.size(0), -1)).eval())  # what the hints say works


class _Cumulative(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cumsum(x, 1)


def test_a_refused_function_names_the_module_that_calls_it() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Sequential(nn.ReLU(), _Cumulative()), nn.Flatten(),
                          nn.Linear(8 * 6 * 6, 2)).eval()
    with pytest.raises(UnsupportedModelError) as error:
        canonize(model)
    assert str(error.value) == "no LRP rule for node 'cumsum' (torch.cumsum) in '1.1' (_Cumulative)"
