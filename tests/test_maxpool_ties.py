"""The max-pool option 'shared' (NearMaxShare): a slow per-window reference, conservation, stability at
near-ties, no host syncs; winner-take-all stays zennit's (tests/test_engine.py)."""
from __future__ import annotations

import copy

import pytest
import torch
import torchvision
from torch import nn

from realtime_lrp.lrp.engine import LRP


def pool_net(pool: nn.MaxPool2d, channels: int = 4) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, channels, 3, padding=1), nn.ReLU(), pool, nn.Flatten(),
                         nn.LazyLinear(5)).eval()


def maxpool_step(lrp: LRP):
    return next(s for s in lrp.steps if s.node.kind == "maxpool")


def shared_reference(a: torch.Tensor, R: torch.Tensor, pool: nn.MaxPool2d, tol: float) -> torch.Tensor:
    """Window by window in Python: the inputs within tol·|max| of the window's maximum share R equally."""
    k, s, p, d = (nn.modules.utils._pair(v) for v in (pool.kernel_size, pool.stride, pool.padding, pool.dilation))
    n, c, h, w = a.shape
    out = torch.zeros_like(a, dtype=torch.float64)
    for b in range(n):
        for ch in range(c):
            for i in range(R.shape[2]):
                for j in range(R.shape[3]):
                    cells = [(i * s[0] - p[0] + u * d[0], j * s[1] - p[1] + v * d[1])
                             for u in range(k[0]) for v in range(k[1])]
                    cells = [(y, x) for y, x in cells if 0 <= y < h and 0 <= x < w]
                    peak = max(float(a[b, ch, y, x]) for y, x in cells)
                    near = [(y, x) for y, x in cells if float(a[b, ch, y, x]) >= peak - tol * abs(peak)]
                    for y, x in near:
                        out[b, ch, y, x] += float(R[b, ch, i, j]) / len(near)
    return out


@pytest.mark.parametrize("pool", [
    nn.MaxPool2d(2), nn.MaxPool2d(3, 2, 1), nn.MaxPool2d(3, 2, ceil_mode=True), nn.MaxPool2d(2, 1, dilation=2),
])
def test_shared_equals_the_per_window_reference(pool: nn.MaxPool2d) -> None:
    model = pool_net(pool)
    x = torch.randn(2, 1, 11, 9, generator=torch.Generator().manual_seed(1))
    x[:, :, 2:7, 1:6] = 0.3  # a flat region: exactly tied activations
    model(x)  # sizes the lazy layer
    lrp = LRP(model, maxpool="shared")
    step = maxpool_step(lrp)
    a = torch.relu(model[0](x)).detach()
    a[:, :, :2, :] = 0.0  # dead units along the top and left edges: windows whose maximum, 0, ties with padding
    a[:, :, :, :1] = 0.0
    out, aux = step.node.forward(a, None, None)
    R = torch.rand(out.shape, generator=torch.Generator().manual_seed(2))
    got, _ = step.propagate(a, out, aux, R)
    want = shared_reference(a, R, pool, 1e-2)
    assert torch.allclose(got.double(), want, atol=1e-6)
    assert float(got.sum()) == pytest.approx(float(R.sum()), rel=1e-5)  # conserved, padding gets nothing
    wta, _ = maxpool_step(LRP(model, maxpool="wta")).propagate(a, out, aux, R)
    assert not torch.allclose(got, wta)  # the flat region's ties are shared, not given to one input


def test_near_ties_no_longer_flip_the_map() -> None:
    """The shipped model in fp64, 16 test images moved by 1e-9: winner-take-all moves relevance between
    tied activations of the black background (1 - r up to 0.05; README), sharing moves nothing."""
    from test_evaluate import shipped_inputs

    from realtime_lrp.apps.evaluate.metrics import pearson_rows

    model, card, inputs = shipped_inputs(16)
    model = copy.deepcopy(model).double()
    x = inputs.x.double()
    moved = x + 1e-9 * torch.randn(x.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(5))

    def change(option: str) -> float:
        lrp = LRP(model, maxpool=option, mean=card["mean"], std=card["std"])
        target = model(x).argmax(1)
        return float((1 - pearson_rows(lrp(x, target=target).relevance, lrp(moved, target=target).relevance)).max())

    assert change("wta") > 1e-3
    assert change("shared") < 1e-6


def test_options_and_errors() -> None:
    model = pool_net(nn.MaxPool2d(2))
    x = torch.randn(1, 1, 8, 8)
    model(x)
    assert torch.equal(LRP(model, maxpool="preset")(x).relevance, LRP(model, maxpool="wta")(x).relevance)
    with pytest.raises(ValueError, match="unknown max-pool option 'soft'; choose one of preset, wta, shared"):
        LRP(model, maxpool="soft")


def test_shared_runs_in_the_captured_fp16_pass_without_host_syncs() -> None:
    from test_capturable import CUDA, audited, fake_cuda, fake_input
    from torch._subclasses.fake_tensor import FakeTensorMode

    torch.manual_seed(0)
    mode = FakeTensorMode()
    model = fake_cuda(torchvision.models.resnet18(num_classes=10), mode, torch.float16)  # a padded 3x3/2 pool
    with mode:
        lrp = LRP(model, maxpool="shared", top_k=0.02)
    x = fake_input(mode, 2, 64, 48)
    result, audit = audited(mode, lambda: lrp(x))
    assert audit.off_device == [] and result.relevance.device == CUDA and result.relevance.shape == (2, 64, 48)
