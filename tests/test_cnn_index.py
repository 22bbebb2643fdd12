"""Index ops and concatenation (relevance follows the indices), and the CNN families built on them.

Index ops move values without changing them, so their rule is the backward of their index
map. zennit passes relevance through un-hooked functional ops by autograd, which for these
ops is that same backward: on a model of convs, linears and index ops, zennit's composites
with no canonizer are the reference.
"""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torchvision.models.shufflenetv2 import channel_shuffle

from realtime_lrp import LRP
from realtime_lrp.lrp.engine import IMAGENET_MEAN, IMAGENET_STD, pixel_bounds
from realtime_lrp.lrp.graph import canonize
from realtime_lrp.lrp.nodes import UnsupportedModelError

SIGNED = ("epsilon-plus-flat", "epsilon-gamma-box")


def relative_error(ours: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """max |ours - ref| / max |ref| per sample."""
    return (ours - ref).flatten(1).abs().amax(1) / ref.flatten(1).abs().amax(1)


def zennit_map(model: nn.Module, x: torch.Tensor, preset: str, target: torch.Tensor,
               canonizers: list | None = None, bounds: tuple | None = None) -> torch.Tensor:
    """zennit's composite of ``preset`` with ``canonizers``; output relevance the target's logit."""
    composites = pytest.importorskip("zennit.composites")
    if preset == "epsilon-plus-flat":
        composite = composites.EpsilonPlusFlat(canonizers=canonizers or [])
    else:
        low, high = bounds if bounds is not None else pixel_bounds(IMAGENET_MEAN, IMAGENET_STD)
        composite = composites.EpsilonGammaBox(low=low.view(1, -1, 1, 1).expand_as(x),
                                               high=high.view(1, -1, 1, 1).expand_as(x),
                                               canonizers=canonizers or [])
    model = copy.deepcopy(model)
    x = x.clone().requires_grad_()
    with composite.context(model) as modified:
        out = modified(x)
        index = target.view(-1, 1)
        grad_output = torch.zeros_like(out).scatter_(1, index, out.gather(1, index))
        (attribution,) = torch.autograd.grad(out, x, grad_output)
    return attribution.sum(1)


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
        return self.fc(y.reshape(y.size(0), -1))


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
    assert (relative_error(ours.relevance, zennit_map(model, x, preset, target)) <= 1e-4).all()


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
