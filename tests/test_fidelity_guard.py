"""The fp16 fidelity guard: a sample whose relevance overflows fp16 is flagged on the device, and the
pipeline says so once and explains it again in fp32.

The model is built to overflow: a first conv with weights 100 times too large, so a bright sample's
activations pass fp16's 65504 (inf, then NaN relevance) while a dim one and fp32 stay finite.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode

from realtime_lrp.lrp.engine import LRP
from realtime_lrp.pipeline.preprocess import frames_to_tensor
from realtime_lrp.pipeline.processor import FrameProcessor

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


CARD = {"classes": ["a", "b", "c"], "input_size": [8, 8], "input_channels": 3, "mean": [0.0] * 3,
        "std": [1e-3] * 3}  # a tiny std: a bright frame's input is ~1000, enough to overflow the model in fp16


def frames() -> list[np.ndarray]:
    """A dim frame (explained in fp16 as it is) and a bright one (overflows fp16)."""
    rng = np.random.default_rng(2)
    return [rng.integers(0, 4, (8, 8, 3), dtype=np.uint8), rng.integers(128, 256, (8, 8, 3), dtype=np.uint8)]


def processors(monkeypatch, **options) -> tuple[FrameProcessor, FrameProcessor, list[str]]:
    """An fp16 processor on the CPU (as on CUDA, where fp16 is the default) and its fp32 twin."""
    import realtime_lrp.pipeline.processor as processor

    options = dict(preset="epsilon-plus-flat", top_k=0.0, device="cpu", layout="heatmap", **options)
    fp32 = FrameProcessor(overflowing_model(), CARD, **options)
    notices: list[str] = []
    monkeypatch.setattr(processor, "select_device", lambda *_args: (torch.device("cpu"), torch.float16))
    fp16 = FrameProcessor(overflowing_model(), CARD, notice=notices.append, **options)
    assert fp16.explainer.dtype == torch.float16 and fp32.explainer.dtype == torch.float32
    return fp16, fp32, notices


def overflow_notices(notices: list[str]) -> list[str]:
    return [n for n in notices if "overflowed" in n]


def test_explain_reruns_the_overflowing_sample_in_fp32_and_says_so_once(monkeypatch) -> None:
    fp16, fp32, notices = processors(monkeypatch)
    x = frames_to_tensor(frames(), CARD, (8, 8), "cpu", torch.float16, fp16.fit)
    plain = fp16.explainer(x)
    assert plain.finite.tolist() == [True, False]  # the case the guard is for
    maps, preds = fp16.explain(frames(), stream=False)
    reference, reference_preds = fp32.explain(frames(), stream=False)
    assert np.isfinite(maps).all() and np.abs(maps[1]).max() > 0
    np.testing.assert_allclose(maps[1], reference[1], rtol=1e-5, atol=1e-6 * np.abs(reference[1]).max())
    assert preds[1] == reference_preds[1]
    np.testing.assert_array_equal(maps[0], plain.relevance[0].float().numpy())  # the normal sample is untouched
    fp16.explain(frames(), stream=False)
    said = overflow_notices(notices)
    assert len(said) == 1 and "layer 0" in said[0] and "fp32" in said[0]


@pytest.mark.parametrize("stable", [False, True])
def test_the_frame_pass_reruns_the_overflowing_frame_in_fp32_and_says_so_once(monkeypatch, stable: bool) -> None:
    fp16, fp32, notices = processors(monkeypatch)
    rendered, preds = fp16.process(frames(), stable=stable)
    reference, reference_preds = fp32.process(frames(), stable=stable)
    plain16, _ = fp16.process(frames()[:1], stable=False)  # the dim frame alone, in fp16
    assert preds[1].index == reference_preds[1].index and preds[1].explained == reference_preds[1].explained
    if not stable:  # each frame scaled on its own: the fp32 re-run draws what fp32 draws
        assert np.abs(rendered[1].astype(int) - reference[1].astype(int)).max() <= 1
        np.testing.assert_array_equal(rendered[0], plain16[0])  # the normal frame is untouched
    fp16.process(frames(), stable=stable)
    said = overflow_notices(notices)
    assert len(said) == 1 and "layer 0" in said[0]


def test_the_streams_colour_scale_and_smoothed_map_fold_in_the_fp32_rerun_not_the_blank_map(monkeypatch) -> None:
    """In stream mode the re-run frame's fp32 map, not the blank fp16 one, updates the stable colour scale
    and the smoothed map, for the frames after it too; in serve's per-stream mode, its own stream's."""
    from realtime_lrp.pipeline.stream import StreamState

    fp16, fp32, _ = processors(monkeypatch, smooth=0.5)
    dim, bright = frames()
    batch = [dim, bright, dim]
    rendered, _ = fp16.process(batch)
    reference, _ = fp32.process(batch)
    assert fp16.scale.seen.all() and fp32.scale.seen.all()
    scale16, scale32 = float(fp16.scale.value[0]), float(fp32.scale.value[0])
    assert scale16 == pytest.approx(scale32, rel=1e-3), (scale16, scale32)
    smooth16, smooth32 = fp16.smoother.value[0].numpy(), fp32.smoother.value[0].numpy()
    np.testing.assert_allclose(smooth16, smooth32, rtol=1e-3, atol=1e-3 * np.abs(smooth32).max())
    for mine, theirs in zip(rendered, reference):  # each frame drawn with the scale fp32 gives it
        assert np.abs(mine.astype(int) - theirs.astype(int)).max() <= 2
    fp16.reset()
    fp32.reset()
    streams16 = [StreamState(0.5, fp16.size) for _ in range(2)]
    streams32 = [StreamState(0.5, fp32.size) for _ in range(2)]
    for _ in range(2):
        fp16.passes.process([dim, bright], streams=streams16)
        fp32.passes.process([dim, bright], streams=streams32)
    for mine, theirs in zip(streams16, streams32):
        assert float(mine.scale.value[0]) == pytest.approx(float(theirs.scale.value[0]), rel=1e-3)
        np.testing.assert_allclose(mine.smoother.value[0].numpy(), theirs.smoother.value[0].numpy(), rtol=1e-3,
                                   atol=1e-3 * float(theirs.smoother.value[0].abs().max()))
