"""--smooth: one moving average of maps, the same in the plain and the fast path, on for streams only."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from media import frame_for, model_file, read_video, tiny_card, tiny_model, write_video

from realtime_lrp.cli import cli
from realtime_lrp.pipeline.fast import FastProcessor
from realtime_lrp.pipeline.processor import FrameProcessor
from realtime_lrp.pipeline.stream import MapSmoother


def ema_reference(maps: np.ndarray, alpha: float) -> np.ndarray:
    out, state = [], None
    for r in maps:
        state = r.copy() if state is None else alpha * state + (1 - alpha) * r
        out.append(state.copy())
    return np.stack(out)


def test_smoother_is_an_ema_in_frame_order_whatever_the_batching() -> None:
    maps = np.random.default_rng(0).normal(size=(5, 6, 7)).astype(np.float32)
    whole = MapSmoother(0.7, (6, 7))(torch.from_numpy(maps)).numpy()
    assert np.allclose(whole, ema_reference(maps, 0.7), atol=1e-6)
    split = MapSmoother(0.7, (6, 7))
    parts = [split(torch.from_numpy(maps[:2])), split(torch.from_numpy(maps[2:]))]
    assert np.allclose(torch.cat(parts).numpy(), whole, atol=1e-6)
    split.reset()
    assert np.array_equal(split(torch.from_numpy(maps[3:4])).numpy(), maps[3:4])  # taken as it is after a reset
    off = MapSmoother(0.0, (6, 7))
    assert not off.active and np.array_equal(off(torch.from_numpy(maps)).numpy(), maps)
    with pytest.raises(ValueError, match="outside"):
        MapSmoother(1.0, (6, 7))


def test_processor_smooths_streams_not_stills() -> None:
    frames = [frame_for(i, (32, 32)) for i in range(5)]
    plain = FrameProcessor(tiny_model(3), tiny_card(3), top_k=0.0, device="cpu")
    smooth = FrameProcessor(tiny_model(3), tiny_card(3), top_k=0.0, device="cpu", smooth=0.6)
    raw = np.concatenate([plain.explain(frames[:2])[0], plain.explain(frames[2:])[0]])
    got = np.concatenate([smooth.explain(frames[:3])[0], smooth.explain(frames[3:])[0]])
    assert np.allclose(got, ema_reference(raw, 0.6), rtol=1e-5, atol=1e-9)
    assert not np.allclose(got, raw)
    still = smooth.explain(frames[:1], stream=False)[0]
    assert np.allclose(still, raw[:1], rtol=1e-4, atol=1e-12)  # batch 1 vs 2: rounding, not smoothing
    smooth.top_k = 0.0  # a change of method starts the average afresh
    assert np.allclose(smooth.explain(frames[4:])[0], raw[4:], rtol=1e-4, atol=1e-12)


def test_fast_path_smooths_like_the_plain_processor() -> None:
    options = dict(top_k=0.05, device="cpu", smooth=0.5)
    plain = FrameProcessor(tiny_model(3), tiny_card(3), **options)
    fast = FastProcessor(FrameProcessor(tiny_model(3), tiny_card(3), **options))
    unsmoothed = FastProcessor(FrameProcessor(tiny_model(3), tiny_card(3), top_k=0.05, device="cpu"))
    differs = False
    for start in (0, 3):  # two batches: the average carries over
        frames = [frame_for(i, (32, 32)) for i in range(start, start + 3)]
        a, _ = plain.process(frames)
        b, _ = fast.process(frames)
        c, _ = unsmoothed.process(frames)
        for x, y, z in zip(a, b, c):
            assert np.abs(x.astype(int) - y.astype(int)).max() <= 1
            differs |= not np.array_equal(y, z)
    assert differs
    assert torch.allclose(fast.smoother.value, plain.smoother.value, rtol=1e-5, atol=1e-12)


def test_video_command_takes_smooth(tmp_path) -> None:
    weights = model_file(tmp_path)
    src = tmp_path / "in.avi"
    write_video(src, 5, (40, 32), 25.0, fourcc="MJPG")
    outputs = {}
    for alpha in ("0", "0.8"):
        out = tmp_path / f"out{alpha}.avi"
        result = CliRunner().invoke(cli, ["video", str(src), "--out", str(out), "--weights", str(weights),
                                          "--device", "cpu", "--smooth", alpha, "--top-k", "0"])
        assert result.exit_code == 0, result.output
        outputs[alpha] = read_video(out)[0]
    assert len(outputs["0"]) == len(outputs["0.8"]) == 5
    assert np.array_equal(outputs["0"][0], outputs["0.8"][0])  # the first map is taken as it is
    assert any(not np.array_equal(a, b) for a, b in zip(outputs["0"][1:], outputs["0.8"][1:]))
    bad = CliRunner().invoke(cli, ["video", str(src), "--out", str(tmp_path / "x.avi"), "--weights", str(weights),
                                   "--smooth", "1"])
    assert bad.exit_code == 2 and "--smooth" in bad.output
