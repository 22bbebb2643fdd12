"""The op registry and presets as data: lookup by module type (subclasses too), function and
method; presets that name a rule for every kind they bind, and an error naming the node
where one does not; batch norms of every kind folded; the caller's model never changed."""
from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
import torchvision
from torch import nn

from realtime_lrp import LRP
from realtime_lrp.lrp import ops, presets
from realtime_lrp.lrp.graph import canonize
from realtime_lrp.lrp.nodes import UnsupportedModelError


def small_cnn(*middle: nn.Module, channels: int = 3) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(channels, 4, 3, padding=1), *middle, nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                         nn.Linear(24, 3)).eval()


def test_every_preset_names_a_rule_for_every_kind_a_preset_binds() -> None:
    kinds = set(ops.preset_kinds())
    assert {"conv", "linear", "maxpool", "avgpool", "adaptive_avgpool", "add"} <= kinds
    cnn_kinds = kinds - {"layernorm", *presets.TRANSFORMER_KINDS}  # the transformer presets bind every kind
    for preset in presets.PRESETS.values():
        transformer = bool(set(presets.TRANSFORMER_KINDS) & set(preset.rules))
        assert (kinds if transformer else cnn_kinds) <= set(preset.rules), preset.name
        for spec in [*preset.rules.values(), *preset.first.values()]:
            spec.build()  # each names a rule class that exists, with arguments it takes


def test_ops_that_fix_their_rule_need_no_preset_entry() -> None:
    fixed = [op for op in ops.OPS if op.relevance != ops.PRESET]
    assert {op.kind for op in fixed} >= {"relu", "flatten"}
    for op in fixed:
        op.relevance.build()
    for preset in presets.PRESETS.values():
        assert not {op.kind for op in fixed} & set(preset.rules)


def test_a_preset_without_a_rule_for_a_kind_is_an_error_naming_kind_preset_and_node(
        monkeypatch: pytest.MonkeyPatch) -> None:
    full = presets.PRESETS["epsilon-plus-flat"]
    partial = dataclasses.replace(full, name="no-sums", rules={k: v for k, v in full.rules.items() if k != "add"})
    monkeypatch.setitem(presets.PRESETS, "no-sums", partial)
    model = torchvision.models.resnet18(num_classes=3).eval()
    with pytest.raises(UnsupportedModelError, match=r"^preset 'no-sums' has no rule for add nodes such as 'add'$"):
        LRP(model, preset="no-sums")
    LRP(small_cnn(), preset="no-sums")  # a model without sums needs no rule for them


class MyConv(nn.Conv2d):
    """A user's subclass of Conv2d: it is still a Conv2d."""


class MyReLU(nn.ReLU):
    pass


def test_modules_are_found_by_their_base_class_and_dropout_of_any_rank_is_the_identity() -> None:
    assert ops.op_for_module(MyConv(3, 4, 3)) is ops.CONV
    assert ops.op_for_module(MyReLU()) is ops.RELU
    for dropout in (nn.Dropout(), nn.Dropout1d(), nn.Dropout2d(), nn.Dropout3d(), nn.AlphaDropout()):
        assert ops.op_for_module(dropout) is ops.IDENTITY
    assert ops.op_for_module(nn.ReLU6()) is ops.RELU6  # its own entry, before its base class Hardtanh
    plain = small_cnn()
    torch.manual_seed(0)
    custom = nn.Sequential(MyConv(3, 4, 3, padding=1), nn.Dropout2d(0.3), MyReLU(), *list(plain)[2:]).eval()
    custom[0].load_state_dict(plain[0].state_dict())
    x = torch.randn(2, 3, 8, 8)
    assert [n.kind for n in canonize(custom).nodes] == [n.kind for n in canonize(plain).nodes]
    assert torch.equal(LRP(custom)(x).relevance, LRP(plain)(x).relevance)


def test_functions_and_methods_are_looked_up_in_the_registry() -> None:
    assert ops.op_for_function(torch.flatten) is ops.FLATTEN
    assert ops.op_for_function(torch.relu) is ops.RELU
    assert ops.op_for_method("relu") is ops.RELU
    assert ops.op_for_function(torch.cat) is ops.CAT and ops.op_for_method("view") is ops.VIEW

    class MethodReLU(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.fc = nn.Conv2d(3, 4, 3), nn.Linear(4 * 6 * 6, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(torch.flatten(self.conv(x).relu(), 1))

    assert [n.kind for n in canonize(MethodReLU()).nodes] == ["input", "conv", "relu", "flatten", "linear"]

    class Viewed(MethodReLU):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            return self.fc(y.view(y.shape[0], -1))

    assert [n.kind for n in canonize(Viewed()).nodes] == ["input", "conv", "view", "linear"]


def _fold_by_hand(conv: nn.Conv2d, bn: nn.Module) -> nn.Conv2d:
    folded = copy.deepcopy(conv)
    gamma = bn.weight if bn.weight is not None else torch.ones_like(bn.running_mean)
    beta = bn.bias if bn.bias is not None else torch.zeros_like(bn.running_mean)
    scale = gamma / torch.sqrt(bn.running_var + bn.eps)
    with torch.no_grad():
        folded.weight.mul_(scale.view(-1, 1, 1, 1))
        folded.bias.copy_((conv.bias - bn.running_mean) * scale + beta)
    return folded


@pytest.mark.parametrize("affine", [True, False])
def test_batch_norms_with_and_without_affine_parameters_are_folded(affine: bool) -> None:
    bn = nn.BatchNorm2d(4, affine=affine)
    bn.running_mean.normal_(0, 0.2)
    bn.running_var.uniform_(0.5, 2.0)
    if affine:
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.normal_(0, 0.1)
    model = small_cnn(bn.eval())
    by_hand = small_cnn()
    by_hand[0] = _fold_by_hand(model[0], bn)
    x = torch.randn(2, 3, 8, 8)
    for preset in presets.PRESET_NAMES:
        ours, ref = LRP(model, preset=preset)(x).relevance, LRP(by_hand, preset=preset)(x).relevance
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-7)


def test_one_channel_model_with_the_box_rule_and_no_mean_or_std_takes_pixels_in_0_1() -> None:
    model = small_cnn(channels=1)
    x = torch.rand(2, 1, 8, 8)
    implicit = LRP(model, preset="epsilon-gamma-box")(x).relevance
    explicit = LRP(model, preset="epsilon-gamma-box", mean=[0.0], std=[1.0])(x).relevance
    assert torch.isfinite(implicit).all() and torch.equal(implicit, explicit)
    other = LRP(model, preset="epsilon-gamma-box", mean=[0.5], std=[0.25])(x).relevance
    assert not torch.equal(implicit, other)  # the bounds matter, so the default was used


def test_the_engine_canonises_from_the_callers_weights_and_never_changes_the_model() -> None:
    bn = nn.BatchNorm2d(4)
    bn.running_var.fill_(1e-3)  # a large scale: folding in fp16 first loses bits that folding in fp32 keeps
    bn.running_mean.normal_(0, 3.0)
    model = small_cnn(bn.eval())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    lrp = LRP(model, dtype=torch.float16)
    after = model.state_dict()
    assert all(after[k].dtype == v.dtype and torch.equal(after[k], v) for k, v in before.items())
    conv = next(step for step in lrp.steps if step.node.kind == "conv")
    folded = _fold_by_hand(model[0], bn)
    assert conv.weight.dtype == torch.float16
    assert torch.equal(conv.weight, folded.weight.detach().half())
    cast_first = LRP(copy.deepcopy(model).half())
    assert not torch.equal(next(s for s in cast_first.steps if s.node.kind == "conv").weight, conv.weight)
    x = torch.randn(2, 3, 8, 8)
    result = lrp(x.half())
    assert torch.isfinite(result.relevance).all() and result.relevance.dtype == torch.float32
