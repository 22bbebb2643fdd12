"""The fp16 fidelity guard: a sample whose relevance overflows fp16 is flagged on the device, and the
pipeline says so once and explains it again in fp32.

The model is built to overflow: a first conv with weights 100 times too large, so a bright sample's
activations pass fp16's 65504 (inf, then NaN relevance) while a dim one and fp32 stay finite.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode

from realtime_lrp.lrp.engine import LRP

PLAIN = dict(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


def overflowing_model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).eval()
    with torch.no_grad():
        model[0].weight.abs_().mul_(100.0)
    return model


def inputs() -> torch.Tensor:
    """Sample 0 is dim (finite in fp16), sample 1 bright (its first conv overflows fp16)."""
    torch.manual_seed(1)
    x = torch.rand(2, 3, 8, 8)
    x[1] *= 2000.0
    return x


@pytest.mark.parametrize("target_mode", ["plain", "contrastive"])
def test_the_overflowing_sample_alone_is_flagged_with_its_layer(target_mode: str) -> None:
    x = inputs()
    fp32 = LRP(overflowing_model(), preset="epsilon-plus-flat", target_mode=target_mode, **PLAIN)(x)
    assert bool(torch.isfinite(fp32.relevance).all()) and fp32.finite.tolist() == [True, True]
    lrp = LRP(overflowing_model(), preset="epsilon-plus-flat", dtype=torch.float16, target_mode=target_mode, **PLAIN)
    result = lrp(x.half())
    assert result.finite.tolist() == [True, False]
    assert not bool(torch.isfinite(result.relevance[1]).all())  # the flag tells the truth
    assert result.first_bad[0].item() == -1
    assert lrp.step_name(int(result.first_bad[1])) == "0"  # the first conv, named as in the model
    assert lrp.step_name(-1) is None


def test_a_normal_fp16_batch_is_all_finite() -> None:
    x = inputs()[:1].repeat(3, 1, 1, 1)
    result = LRP(overflowing_model(), preset="epsilon-plus-flat", dtype=torch.float16, **PLAIN)(x.half())
    assert result.finite.tolist() == [True] * 3 and result.first_bad.tolist() == [-1] * 3


def test_computing_the_flag_has_no_host_sync() -> None:
    """On fake CUDA fp16 tensors a host sync (``.item()``, ``bool``) raises and the audit records any result
    off the device: the call, flag included, has neither, and the flag and the step index stay on the device."""
    from test_capturable import CUDA, audited, fake_cuda

    mode = FakeTensorMode()
    model = fake_cuda(overflowing_model(), mode, torch.float16)
    with mode:
        lrp = LRP(model, preset="epsilon-plus-flat", **PLAIN)
        x = torch.randn(2, 3, 8, 8, device=CUDA, dtype=torch.float16)
        target = torch.tensor([0, 1], device=CUDA)
    assert lrp.dtype == torch.float16 and lrp.device == CUDA
    result, audit = audited(mode, lambda: lrp(x, target=target))
    assert audit.off_device == []
    assert result.finite.device == CUDA and result.finite.dtype == torch.bool and result.finite.shape == (2,)
    assert result.first_bad.device == CUDA and result.first_bad.shape == (2,)
