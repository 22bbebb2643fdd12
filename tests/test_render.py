"""Colour maps, stable scaling, layouts, preprocessing and the shared FrameProcessor."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from media import tiny_card, tiny_model
from realtime_lrp import render
from realtime_lrp.preprocess import frames_to_tensor, parse_size
from realtime_lrp.processor import FrameProcessor, parse_target


def test_colorize_numpy_and_torch_agree():
    rng = np.random.default_rng(0)
    r = rng.normal(size=(2, 9, 13)).astype(np.float32)
    for cmap in ("hot", "diverging", "inferno"):
        a = render.colorize(r, [1.0, 0.5], cmap)
        b = render.colorize(torch.from_numpy(r), [1.0, 0.5], cmap)
        assert a.shape == (2, 9, 13, 3) and a.dtype == np.uint8
        assert b.dtype == torch.uint8
        np.testing.assert_array_equal(a, b.numpy())


def test_hot_and_diverging_colours():
    r = np.array([[-2.0, -1.0, 0.0, 1.0, 2.0]], np.float32)
    hot = render.colorize(r, 1.0, "hot")[0]
    np.testing.assert_array_equal(hot[0], hot[2])  # negative relevance shows as zero
    assert hot[2].sum() == 0 and hot[3].sum() == 3 * 255  # black at 0, white at the scale
    np.testing.assert_array_equal(hot[3], hot[4])  # saturates beyond the scale
    div = render.colorize(r, 1.0, "diverging")[0]
    assert div[2].min() >= 250  # white at zero
    blue, red = div[1].astype(int), div[3].astype(int)  # BGR
    assert blue[0] > blue[2] + 50 and red[2] > red[0] + 50


def test_unknown_colormap_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown colour map 'nope'"):
        render.get_colormap("nope")


def test_stable_scale_does_not_follow_each_frame():
    rng = np.random.default_rng(1)
    base = np.abs(rng.normal(size=(16, 16))).astype(np.float32)
    maps = np.stack([base * (1.0 if i % 2 else 3.0) for i in range(20)])
    per_frame = [render.StableScale.frame_scale(m) for m in maps]
    tracker = render.StableScale()
    stable = tracker.update(maps)
    assert max(per_frame) / min(per_frame) == pytest.approx(3.0, rel=1e-4)
    late = stable[10:]
    assert max(late) / min(late) < 1.25  # per-frame min-max would flicker by 3x


def test_stable_scale_is_independent_of_batching():
    rng = np.random.default_rng(2)
    maps = rng.normal(size=(7, 8, 8)).astype(np.float32)
    one, many = render.StableScale(), render.StableScale()
    together = one.update(maps)
    apart = [s for i in range(0, 7, 3) for s in many.update(maps[i:i + 3])]
    assert together == pytest.approx(apart)


def test_layouts_sizes_and_label():
    frame = np.full((27, 33, 3), 90, np.uint8)
    r = np.zeros((8, 8), np.float32)
    assert render.render(frame, r, 1.0, "hot", "overlay").shape == (27, 33, 3)
    assert render.render(frame, r, 1.0, "hot", "heatmap").shape == (27, 33, 3)
    side = render.render(frame, r, 1.0, "hot", "side")
    assert side.shape == (27, 66, 3)
    np.testing.assert_array_equal(side[:, :33], frame)
    big = np.full((120, 200, 3), 90, np.uint8)
    labelled = render.render(big, np.zeros((8, 8), np.float32), 1.0, "hot", "overlay", label="Coat  97.3%")
    assert (labelled[:20, :60] != 90).any() and (labelled[60:, :] == 90).all()
    assert render.label_text("Coat", 0.973) == "Coat  97.3%"


def test_overlay_depends_on_relevance():
    rng = np.random.default_rng(3)
    frame = rng.integers(0, 255, size=(40, 40, 3), dtype=np.uint8)
    left = np.zeros((40, 40), np.float32)
    left[:, :20] = 1.0
    right = left[:, ::-1].copy()
    a = render.render(frame, left, 1.0, "hot", "overlay", alpha=0.7)
    b = render.render(frame, right, 1.0, "hot", "overlay", alpha=0.7)
    np.testing.assert_array_equal(a[:, 25:], frame[:, 25:])  # no relevance: the picture stays
    assert np.abs(a[:, :15].astype(int) - frame[:, :15]).mean() > 20  # relevance: coloured
    assert not np.array_equal(a, b)
    np.testing.assert_array_equal(render.render(frame, left, 1.0, "hot", "overlay", alpha=0.0), frame)


def test_preprocess_whole_frame_gray_and_rgb():
    frame = np.zeros((27, 33, 3), np.uint8)
    frame[:, :, 0] = 255  # pure blue in BGR
    card = {"input_size": [16, 16], "input_channels": 3, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}
    x = frames_to_tensor([frame, frame], card)
    assert x.shape == (2, 3, 16, 16)
    torch.testing.assert_close(x[:, 2], torch.ones(2, 16, 16))  # blue is the last RGB channel
    torch.testing.assert_close(x[:, 0], -torch.ones(2, 16, 16))
    gray = frames_to_tensor([np.full((5, 9, 3), 51, np.uint8)], dict(card, input_channels=1, mean=[0.1], std=[0.2]),
                            size=(12, 20))
    assert gray.shape == (1, 1, 12, 20)
    torch.testing.assert_close(gray, torch.full((1, 1, 12, 20), (0.2 - 0.1) / 0.2))
    assert parse_size("320x240") == (240, 320) and parse_size("64") == (64, 64)
    with pytest.raises(ValueError):
        parse_size("big")


def test_processor_renders_labels_and_runtime_controls():
    notices = []
    proc = FrameProcessor(tiny_model(), tiny_card(), top_k=0.02, layout="overlay", device="cuda",
                          notice=notices.append)
    if not torch.cuda.is_available():
        assert proc.device.type == "cpu" and proc.dtype == torch.float32
        assert len(notices) == 1 and "CPU" in notices[0]
    frames = [np.random.default_rng(i).integers(0, 255, (45, 61, 3), dtype=np.uint8) for i in range(3)]
    out, preds = proc.process(frames)
    assert [o.shape for o in out] == [(45, 61, 3)] * 3
    assert all(p.name in tiny_card()["classes"] and 0 < p.probability <= 1 for p in preds)
    assert proc.cmap == "diverging"  # epsilon-plus-flat is signed
    assert proc.next_cmap() != "diverging"
    assert proc.next_layout() == "side"
    assert proc.process(frames[:1])[0][0].shape == (45, 122, 3)
    proc.top_k = 0.1
    assert proc.lrp.top_k == pytest.approx(0.1)
    assert proc.scale_top_k(0.5) == pytest.approx(0.05)
    assert FrameProcessor(tiny_model(), tiny_card(), preset="zplus", device="cpu").cmap == "hot"


def test_processor_overlay_follows_its_relevance():
    proc = FrameProcessor(tiny_model(), tiny_card(), top_k=0.0, alpha=1.0, device="cpu")
    frame = np.random.default_rng(5).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    relevance, preds = proc.explain([frame])
    scale = proc.scales(relevance, stable=False)
    overlay = proc.render([frame], relevance, preds, scale, "overlay")[0]
    import cv2

    r = np.abs(cv2.resize(relevance[0], (64, 64), interpolation=cv2.INTER_LINEAR)) / scale[0]
    change = np.abs(overlay.astype(int) - frame).sum(2)
    rows = slice(20, 64)  # below the label
    strong, none = r[rows] > 0.5, r[rows] < 1e-6
    assert strong.any()
    assert change[rows][strong].mean() > 30
    if none.any():
        assert change[rows][none].max() == 0


def test_parse_target():
    classes = tiny_card()["classes"]
    assert parse_target(None, classes) is None and parse_target("top1", classes) is None
    assert parse_target("coat", classes) == 4 and parse_target("7", classes) == 7
    assert parse_target("softmax", classes) == "softmax"
    with pytest.raises(ValueError, match="out of range"):
        parse_target("12", classes)
