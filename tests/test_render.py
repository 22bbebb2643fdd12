"""Colour maps, stable scaling, layouts, preprocessing and the shared FrameProcessor."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from media import tiny_card, tiny_model

from realtime_lrp.pipeline import render
from realtime_lrp.pipeline.preprocess import frames_to_tensor, parse_size
from realtime_lrp.pipeline.processor import FrameProcessor, parse_target
from realtime_lrp.pipeline.stream import StableScale


def test_colorize_takes_one_scale_per_map():
    """The device colouring (what the frame pass runs) on a batch: map i is coloured at scale i."""
    rng = np.random.default_rng(0)
    r = rng.normal(size=(2, 9, 13)).astype(np.float32)
    for cmap in ("hot", "diverging", "inferno"):
        both = render.colorize(r, [1.0, 0.5], cmap)
        assert both.shape == (2, 9, 13, 3) and both.dtype == np.uint8
        np.testing.assert_array_equal(both[0], render.colorize(r[0], 1.0, cmap))
        np.testing.assert_array_equal(both[1], render.colorize(r[1] * 2, 1.0, cmap))


def hot_lut() -> np.ndarray:
    """OpenCV's COLORMAP_HOT built here (BGR): black to red over the first 40 %, to yellow by
    80 %, to white; sampled at 64 knots and interpolated to 256 entries, as OpenCV builds its maps."""
    knots = np.linspace(0.0, 1.0, 64)
    rgb = np.stack([np.clip(knots / 0.4, 0, 1), np.clip((knots - 0.4) / 0.4, 0, 1), np.clip((knots - 0.8) / 0.2, 0, 1)])
    x = np.linspace(0.0, 1.0, 256)
    return np.rint(255 * np.stack([np.interp(x, knots, channel) for channel in rgb[::-1]], axis=1))


def overlay_reference(frame: np.ndarray, r: np.ndarray, scale: float, cmap: str, alpha: float) -> np.ndarray:
    """The overlay's definition, per pixel: v = min(|R| / scale, 1), w = min(alpha v (1 + b), 1) with
    b the pixel's mean brightness (of 1); the pixel pulled towards [30, 225] by w, then darkened by w
    times its brightness; then moved by w towards the map's colour at sign(R) (1 + v) / 2 (its strong half)."""
    v = np.minimum(np.abs(r) / scale, 1.0)[:, :, None]
    w = np.minimum(alpha * v * (1.0 + frame.astype(np.float64).mean(2, keepdims=True) / 255.0), 1.0)
    pulled = frame.astype(np.float64) + w * (30.0 - 60.0 / 255.0 * frame)
    pulled = pulled * (1.0 - w * pulled / 255.0)
    strong = render.colorize((np.sign(r) * (0.5 + 0.5 * v[:, :, 0])).astype(np.float32), 1.0, cmap).astype(np.float64)
    return np.floor(pulled + w * (strong - pulled) + 0.5).astype(np.uint8)


def both_paths(r: np.ndarray, scale: float, cmap: str) -> list[np.ndarray]:
    """``colorize`` of ``r``, as int arrays."""
    return [render.colorize(r, scale, cmap).astype(int)]


def test_hot_colours_are_opencvs_hot_map():
    lut = hot_lut()
    assert np.abs(render.get_colormap("hot").lut.astype(int) - lut).max() <= 1
    r = np.array([[-1.0, 0.0, 0.4, 1.2, 2.0, 3.0, 2.0 * 51 / 255]], np.float32)
    for hot in both_paths(r, 2.0, "hot"):  # the scale (2.0) gets the strongest colour
        hot = hot[0]
        assert hot[0].tolist() == hot[1].tolist() == [0, 0, 0], "zero and negative relevance are black"
        np.testing.assert_allclose(hot[2], lut[51], atol=1)   # 0.2 of the scale: dark red
        assert hot[2].tolist()[:2] == [0, 0] and 120 <= hot[2][2] <= 135
        np.testing.assert_allclose(hot[3], lut[153], atol=1)  # 0.6: orange (red full, green half)
        assert hot[4].tolist() == hot[5].tolist() == [255, 255, 255], "white at the scale, saturated beyond"
        np.testing.assert_allclose(hot[6], lut[51], atol=1)


def test_diverging_colours_are_the_anchors():
    """Blue-white-red: -scale dark blue, -0.6 scale blue, 0 white, 0.6 scale red, +scale dark red (BGR)."""
    r = np.array([[-3.0, -1.8, 0.0, 1.8, 3.0, 6.0, -6.0]], np.float32)
    for div in both_paths(r, 3.0, "diverging"):
        div = div[0]
        assert div[0].tolist() == div[6].tolist() == [140, 40, 30]
        assert div[1].tolist() == [220, 110, 50]
        assert div[2].min() >= 253
        assert div[3].tolist() == [50, 70, 235]
        assert div[4].tolist() == div[5].tolist() == [20, 15, 140]


def test_unknown_colormap_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown colour map 'nope'"):
        render.get_colormap("nope")


def test_stable_scale_does_not_follow_each_frame():
    rng = np.random.default_rng(1)
    base = np.abs(rng.normal(size=(16, 16))).astype(np.float32)
    maps = torch.from_numpy(np.stack([base * (1.0 if i % 2 else 3.0) for i in range(20)]))
    per_frame = StableScale.frame_scale(maps)
    stable = StableScale().update(maps)
    assert (per_frame.max() / per_frame.min()).item() == pytest.approx(3.0, rel=1e-4)
    late = stable[10:]
    assert (late.max() / late.min()).item() < 1.25  # per-frame min-max would flicker by 3x


def test_stable_scale_is_independent_of_batching():
    rng = np.random.default_rng(2)
    maps = torch.from_numpy(rng.normal(size=(7, 8, 8)).astype(np.float32))
    one, many = StableScale(), StableScale()
    together = one.update(maps)
    apart = torch.cat([many.update(maps[i:i + 3]) for i in range(0, 7, 3)])
    torch.testing.assert_close(together, apart)


def test_stable_scale_follows_its_percentile_and_skips_empty_maps():
    """The first map sets the scale (its percentile, its max if that is 0); all-zero and
    non-finite maps leave it as it was, 1.0 before any map had relevance; invalid frames are skipped."""
    ramp = torch.arange(1, 101, dtype=torch.float32).reshape(1, 10, 10)
    sparse = torch.zeros((1, 10, 10))
    sparse[0, 3, 4] = -7.0
    tracker = StableScale(percentile=50.0, momentum=0.5)
    zero, nan = torch.zeros((1, 10, 10)), torch.full((1, 10, 10), float("nan"))
    assert tracker.update(torch.cat([zero, nan])).tolist() == [1.0, 1.0] and not tracker.seen.item()
    assert tracker.update(ramp).tolist() == [pytest.approx(50.5)]
    assert tracker.update(torch.cat([zero, nan, -np.inf * ramp])).tolist() == [pytest.approx(50.5)] * 3
    assert tracker.update(torch.cat([ramp * 9, sparse]), valid=torch.tensor([False, True])).tolist() == \
        [pytest.approx(50.5), pytest.approx(0.5 * 50.5 + 0.5 * 7.0)]
    tracker.reset()
    assert not tracker.seen.item() and tracker.update(sparse).tolist() == [pytest.approx(7.0)]


def test_stable_scale_with_a_slot_per_frame_keeps_each_stream_apart():
    """Serve's batches: frame i is folded into row i only, in one step."""
    rng = np.random.default_rng(4)
    maps = torch.from_numpy(np.abs(rng.normal(size=(3, 3, 8, 8))).astype(np.float32))
    rows = StableScale(slots=3)
    alone = [StableScale() for _ in range(3)]
    for step in maps:
        got = rows.update(step)
        want = torch.cat([a.update(step[i:i + 1]) for i, a in enumerate(alone)])
        torch.testing.assert_close(got, want)


def test_layouts_sizes_and_label():
    """A 12-column map in three bands (at the scale, zero, half the scale), resized over a 33x27
    frame of grey 90: the heatmap is hot's white, black and colour at 0.5; the overlay blends
    60 %, nothing and 30 % of them into the frame; side by side puts the frame left of the heatmap."""
    frame = np.full((27, 33, 3), 90, np.uint8)
    r = np.zeros((8, 12), np.float32)
    r[:, :4], r[:, 8:] = 2.0, 1.0
    bands = [np.s_[:, :9], np.s_[:, 12:20], np.s_[:, 23:]]  # away from the bilinear edges between bands
    half = hot_lut()[128]
    heat = render.render(frame, r, 2.0, "hot", "heatmap")
    assert heat.shape == (27, 33, 3)
    assert (heat[bands[0]] == 255).all() and (heat[bands[1]] == 0).all()
    assert np.abs(heat[bands[2]].astype(int) - half).max() <= 3  # one LUT entry: bilinear weights round
    overlay = render.render(frame, r, 2.0, "hot", "overlay", alpha=0.6)
    assert overlay.shape == (27, 33, 3)
    full, half_strong = hot_lut()[255], hot_lut()[191]
    w = 0.6 * (1 + 90 / 255)  # alpha, grown by the grey's brightness
    pulled = 90 + w * (30 - 60 / 255 * 90)
    pulled *= 1 - w * pulled / 255  # darkened by its brightness
    assert (np.abs(overlay[bands[0]].astype(int) - (pulled + w * (full - pulled))) <= 1).all()
    assert (overlay[bands[1]] == 90).all()
    w /= 2
    pulled = 90 + w * (30 - 60 / 255 * 90)
    pulled *= 1 - w * pulled / 255
    assert np.abs(overlay[bands[2]].astype(int) - (pulled + w * (half_strong - pulled))).max() <= 3
    side = render.render(frame, r, 2.0, "hot", "side")
    assert side.shape == (27, 66, 3)
    np.testing.assert_array_equal(side[:, :33], frame)
    np.testing.assert_array_equal(side[:, 33:], heat)
    assert render.output_size((33, 27), "side") == (66, 27) and render.output_size((33, 27), "overlay") == (33, 27)
    big = np.full((120, 200, 3), 90, np.uint8)
    labelled = render.render(big, np.zeros((8, 8), np.float32), 1.0, "hot", "overlay", label="Coat  97.3%")
    assert (labelled[:20, :60] != 90).any() and (labelled[60:, :] == 90).all()
    assert render.label_text("Coat", 0.973) == "Coat  97.3%"


def _label_box(image: np.ndarray, background: int) -> tuple[int, int]:
    """(height, width) of the region draw_label changed, which must start at the top-left corner."""
    rows, cols = np.nonzero((image != background).any(2))
    assert rows.min() == 0 and cols.min() == 0
    return rows.max() + 1, cols.max() + 1


@pytest.mark.parametrize("size", [(120, 200), (480, 640), (1080, 1920)])
def test_label_is_white_text_inside_a_darkened_box_sized_to_the_frame(size: tuple[int, int]):
    image = np.full(size + (3,), 100, np.uint8)
    assert render.draw_label(image, "Sneaker  97.3%") is image
    h, w = _label_box(image, 100)
    box = image[:h, :w]
    assert (box == 40).all(2).mean() > 0.5, "the box darkens the picture to 2/5"
    text = (box >= 200).all(2)
    assert text.sum() > 15, "white text is drawn"
    rows, cols = np.nonzero(text)
    assert rows.min() >= 2 and cols.min() >= 2 and rows.max() < h - 2 and cols.max() < w - 2, "text inside the box"
    assert ((box == 40) | (box > 40).all(2, keepdims=True)).all(), "only the box and the text changed"
    assert 10 <= h <= 0.25 * min(size) and w < size[1] / 2


def test_label_grows_with_the_frame_up_to_a_limit():
    heights = []
    for side in (100, 400, 480, 960):
        image = np.full((side, side, 3), 100, np.uint8)
        render.draw_label(image, "Bag  50.0%")
        heights.append(_label_box(image, 100)[0])
    assert heights[0] < heights[1] < heights[2] == heights[3]


def test_render_takes_gray_and_bgra_frames_as_their_bgr_frame():
    rng = np.random.default_rng(5)
    gray = rng.integers(0, 255, size=(24, 32), dtype=np.uint8)
    bgr = np.repeat(gray[:, :, None], 3, axis=2)
    bgra = np.concatenate([bgr, np.full((24, 32, 1), 7, np.uint8)], axis=2)
    relevance = rng.normal(size=(8, 8)).astype(np.float32)
    want = render.render(bgr, relevance, 1.0, "diverging", "side")
    for frame in (gray, gray[:, :, None], bgra):
        np.testing.assert_array_equal(render.render(frame, relevance, 1.0, "diverging", "side"), want)


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


def test_overlay_blends_by_relevance_over_scale_with_alpha_0_6_by_default():
    """Each pixel follows :func:`overlay_reference` (alpha 0.6 by default), on light and dark frames."""
    relevance = np.array([[0.0, 0.5, 1.0, 2.0, -1.0, -0.5, 0.25, 0.0]] * 4, np.float32)
    for level in (100, 230, 20):
        frame = np.full((4, 8, 3), level, np.uint8)
        for cmap in ("hot", "signed", "fire"):
            out = render.render(frame, relevance, 1.0, cmap)
            assert np.abs(out.astype(int) - overlay_reference(frame, relevance, 1.0, cmap, 0.6)).max() <= 1
    with pytest.raises(ValueError, match="^unknown layout 'tiles'; choose one of overlay, side, heatmap$"):
        render.render(frame, relevance, 1.0, "hot", "tiles")


def test_default_overlays_stand_out_on_white_and_on_black():
    """At full relevance the default maps move a white and a black pixel by a colour distance of at
    least 100 (Euclidean over B, G, R, of 441): hot's white top moves white by 12."""
    for signed in (False, True):
        cmap = render.default_cmap(signed)
        for level in (255, 0):
            frame = np.full((2, 2, 3), level, np.uint8)
            for sign in (1.0, -1.0) if signed else (1.0,):
                out = render.render(frame, np.full((2, 2), sign, np.float32), 1.0, cmap)
                assert np.linalg.norm(out.astype(float) - level, axis=2).min() >= 100, (cmap, level, sign)


def test_half_relevance_stands_out_on_a_pale_item_as_on_a_dark_one():
    """At half the scale the default maps move a pale pixel (230, a light dress) by a colour
    distance of at least 180 and a black one by at least 70: the colour's weight grows with the
    pixel's brightness and light pixels are darkened under heat, so a pale item's heat is at
    least as visible as a dark one's (with neither, 94 and 81 for fire; darkening alone, 158)."""
    for signed in (False, True):
        cmap = render.default_cmap(signed)
        for level, least in ((230, 180), (255, 180), (0, 70), (20, 60)):
            frame = np.full((2, 2, 3), level, np.uint8)
            for sign in (0.5, -0.5) if signed else (0.5,):
                out = render.render(frame, np.full((2, 2), sign, np.float32), 1.0, cmap)
                moved = np.linalg.norm(out.astype(float) - level, axis=2).min()
                assert moved >= least, (cmap, level, sign, moved)


def test_preprocess_whole_frame_gray_and_rgb():
    frame = np.zeros((27, 33, 3), np.uint8)
    frame[:, :, 0] = 255  # pure blue in BGR
    card = {"input_size": [16, 16], "input_channels": 3, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}
    x = frames_to_tensor([frame, frame], card)
    assert x.shape == (2, 3, 16, 16)
    torch.testing.assert_close(x[:, 2], torch.ones(2, 16, 16))  # blue is the last RGB channel
    torch.testing.assert_close(x[:, 0], -torch.ones(2, 16, 16))
    colour = np.empty((5, 9, 3), np.uint8)
    colour[:] = (200, 100, 50)  # B, G, R: the weights' order shows
    gray = frames_to_tensor([colour], dict(card, input_channels=1, mean=[0.1], std=[0.2]), size=(12, 20))
    assert gray.shape == (1, 1, 12, 20)
    luma = 0.299 * 50 + 0.587 * 100 + 0.114 * 200  # ITU-R BT.601 on R, G, B
    torch.testing.assert_close(gray, torch.full((1, 1, 12, 20), (luma / 255 - 0.1) / 0.2), atol=0.6 / 255 / 0.2, rtol=0)
    rgb = frames_to_tensor([colour], dict(card, mean=[0.1, 0.2, 0.3], std=[0.2, 0.3, 0.4]))
    expected = [(50 / 255 - 0.1) / 0.2, (100 / 255 - 0.2) / 0.3, (200 / 255 - 0.3) / 0.4]
    torch.testing.assert_close(rgb[0, :, 0, 0], torch.tensor(expected))
    assert parse_size("320x240") == (240, 320) and parse_size("64") == (64, 64)
    with pytest.raises(ValueError):
        parse_size("big")


@pytest.mark.parametrize("channels", [3, 1])
def test_gray_bgra_and_single_channel_frames(channels: int):
    """2-D gray, H x W x 1 and BGRA frames (resized from 10x14) reach a 3- or 1-channel model as
    the gray level in every channel, and as the BGR pixel without its alpha."""
    card = {"input_size": [6, 8], "input_channels": channels, "mean": [0.2] * channels, "std": [0.5] * channels}
    gray = np.full((10, 14), 120, np.uint8)
    bgra = np.empty((10, 14, 4), np.uint8)
    bgra[:] = (200, 100, 50, 7)
    x = frames_to_tensor([gray, gray[:, :, None], bgra], card)
    assert x.shape == (3, channels, 6, 8)
    level = torch.full((channels, 6, 8), (120 / 255 - 0.2) / 0.5)
    torch.testing.assert_close(x[0], level)
    torch.testing.assert_close(x[1], level)
    pixel = [50, 100, 200] if channels == 3 else [0.299 * 50 + 0.587 * 100 + 0.114 * 200]
    expected = (torch.tensor(pixel).view(-1, 1, 1) / 255 - 0.2) / 0.5
    torch.testing.assert_close(x[2], expected.expand(channels, 6, 8), atol=0.6 / 255 / 0.5, rtol=0)


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
    assert proc.cmap == "signed"  # epsilon-plus-flat is signed
    assert proc.next_cmap() != "diverging"
    assert proc.next_layout() == "side"
    assert proc.process(frames[:1])[0][0].shape == (45, 122, 3)
    proc.top_k = 0.1
    assert proc.explainer.top_k == pytest.approx(0.1)
    assert proc.scale_top_k(0.5) == pytest.approx(0.05)
    assert FrameProcessor(tiny_model(), tiny_card(), preset="zplus", device="cpu").cmap == "fire"


def test_processor_overlay_follows_its_relevance():
    proc = FrameProcessor(tiny_model(), tiny_card(), top_k=0.0, alpha=1.0, device="cpu")
    frame = np.random.default_rng(5).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    relevance, preds = proc.explain([frame])
    scale = StableScale.frame_scale(torch.from_numpy(relevance)).item()
    overlay = proc.process([frame], stable=False)[0][0]
    import cv2

    r = np.abs(cv2.resize(relevance[0], (64, 64), interpolation=cv2.INTER_LINEAR)) / scale
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


def test_contact_sheet_tiles_are_one_size_with_no_gaps():
    """Every tile has the tallest image's height and the widest scaled width; images are scaled
    keeping their aspect and centred; nothing is white, the uncovered rest is black."""
    images = [np.full((10, 6, 3), 10 * (i + 1), np.uint8) for i in range(7)]
    images[3] = np.full((5, 6), 99, np.uint8)  # gray, half as tall: scaled up to 10x12
    sheet = render.contact_sheet(images, columns=3)
    assert sheet.shape == (3 * 10, 3 * 12, 3) and sheet.dtype == np.uint8
    for i, im in enumerate(images):
        y, x = (i // 3) * 10, (i % 3) * 12
        cell = sheet[y:y + 10, x:x + 12]
        value = 99 if i == 3 else 10 * (i + 1)
        if i == 3:
            assert (cell == value).all(), i
        else:
            assert (cell[:, 3:9] == value).all() and (cell[:, :3] == 0).all() and (cell[:, 9:] == 0).all(), i
    assert (sheet[20:, 12:] == 0).all()  # the empty cells of the last row
    assert not (sheet == 255).all(2).any()
    with pytest.raises(ValueError, match="^no images for the sheet$"):
        render.contact_sheet([])
    assert render.contact_sheet(images[:2], columns=5).shape == (10, 2 * 6, 3)


# -- --fit: the frame's geometry ---------------------------------------------------------------
def test_fit_geometry_of_crop_pad_and_squash():
    from realtime_lrp.pipeline.preprocess import Fit, default_fit

    wide, tall = (50, 100), (90, 30)  # (H, W) frames for a square model
    assert Fit.of("crop", wide, (32, 32)).region == (0, 50, 25, 75)
    assert Fit.of("crop", tall, (32, 32)).region == (30, 60, 0, 30)
    assert Fit.of("crop", wide, (32, 64)).region == (0, 50, 0, 100)  # the model's aspect: nothing cut
    pad = Fit.of("pad", wide, (32, 32))
    assert pad.region == (0, 50, 0, 100) and pad.placed == (8, 24, 0, 32)
    assert Fit.of("squash", wide, (32, 32)).placed == (0, 32, 0, 32)
    assert Fit.of("crop", wide, (32, 32)).scaled(3).region == (0, 150, 75, 225)
    assert default_fit({"dataset": "imagenet"}) == "crop" and default_fit({"dataset": "fashion-mnist"}) == "squash"
    assert default_fit({"dataset": "imagenet", "fit": "pad"}) == "pad"
    with pytest.raises(ValueError, match="^unknown fit 'zoom'; choose one of crop, squash, pad$"):
        Fit.of("zoom", wide, (32, 32))
    assert "centre 50x50 of the 100x50 frames" in Fit.of("crop", wide, (32, 32)).describe()
    assert "letterboxed into 32x32" in pad.describe() and "stretched" in Fit.of("squash", wide, (32, 32)).describe()
    assert Fit.of("crop", (64, 64), (32, 32)).describe() is None


def test_crop_and_pad_feed_the_model_what_they_say():
    """crop: the model's input is the centre square, resized; pad: the whole frame resized into the
    middle rows, the rest zero (the mean colour after normalisation)."""
    rng = np.random.default_rng(7)
    frame = rng.integers(0, 255, (40, 80, 3), dtype=np.uint8)
    card = {"input_size": [20, 20], "input_channels": 3, "mean": [0.4, 0.5, 0.6], "std": [0.2, 0.3, 0.4]}
    crop = frames_to_tensor([frame], card, fit="crop")
    torch.testing.assert_close(crop, frames_to_tensor([frame[:, 20:60]], card, fit="squash"))
    pad = frames_to_tensor([frame], card, fit="pad")
    assert (pad[:, :, :5] == 0).all() and (pad[:, :, 15:] == 0).all()
    torch.testing.assert_close(pad[:, :, 5:15], frames_to_tensor([frame], dict(card, input_size=[10, 20]), fit="squash"))


def test_the_map_is_shown_over_the_region_the_model_saw():
    """A map that is 1 on its left half and 0 elsewhere: with crop, the heat covers the left half
    of the centre square only, and outside the square the frame is dimmed to half, uncoloured;
    with pad, the letterbox rows of the map are cut off before it is laid over the frame."""
    frame = np.full((40, 80, 3), 100, np.uint8)
    r = np.zeros((20, 20), np.float32)
    r[:, :10] = 1.0
    crop = render.render(frame, r, 1.0, "hot", "heatmap", fit="crop")
    assert (crop[:, :20] == 0).all() and (crop[:, 60:] == 0).all()  # outside: the colour of zero
    assert (crop[:, 22:38] == 255).all() and (crop[:, 42:58] == 0).all()
    overlay = render.render(frame, r, 1.0, "hot", "overlay", alpha=0.6, fit="crop")
    assert (overlay[:, :20] == 50).all() and (overlay[:, 42:58] == 100).all()
    letterbox = np.zeros((20, 20), np.float32)
    letterbox[5:15] = 1.0  # the frame's rows in the model's input
    padded = render.render(frame, letterbox, 1.0, "hot", "heatmap", fit="pad")
    assert (padded == 255).all()


def test_a_long_label_shrinks_then_wraps_to_fit_the_frame():
    long = "Greater Swiss Mountain dog  6.8%  [LRP: Bernese mountain dog]"
    for width in (640, 320, 160):
        image = np.full((240, width, 3), 100, np.uint8)
        render.draw_label(image, long)
        h, w = _label_box(image, 100)
        assert w <= width, width
        text = (image[:h, :w] >= 200).all(2)
        assert text[:, -3:].sum() == 0, "no text cut at the right edge"
    wide = np.full((240, 1280, 3), 100, np.uint8)
    render.draw_label(wide, long)
    one_line = _label_box(wide, 100)[0]
    narrow = np.full((240, 160, 3), 100, np.uint8)
    render.draw_label(narrow, long)
    assert _label_box(narrow, 100)[0] > one_line, "wrapped onto more lines"
    assert render.wrap_text(long, 200, 0.5, 1) == ["Greater Swiss Mountain dog", "6.8%", "[LRP: Bernese mountain dog]"]


@pytest.mark.parametrize("cmap", ["fire", "signed"])
def test_legend_shows_the_maps_colours_in_order_with_their_meaning(cmap: str):
    image = np.full((240, 320, 3), 100, np.uint8)
    render.draw_legend(image, cmap)
    changed = (image != 100).any(2)
    rows, cols = np.nonzero(changed)
    assert rows.min() > 120 and cols.min() > 160 and rows.max() == 239 and cols.max() == 319, "bottom-right"
    lut = render.get_colormap(cmap).lut.astype(int)
    bar_row = image[rows.min() + 4, cols.min() + 4: 319 - 4].astype(int)
    assert np.abs(bar_row[0] - lut[0]).max() <= 40 and np.abs(bar_row[-1] - lut[255]).max() <= 40
    if render.get_colormap(cmap).centered:
        middle = bar_row[len(bar_row) // 2]
        assert middle.min() > 200, "white at zero"


def test_shrinking_is_antialiased():
    """1-pixel black and white stripes shrunk 7x average to mid grey; plain bilinear sampling
    would land on single stripes and alias (values near 0 and 255)."""
    frame = np.zeros((56, 224, 3), np.uint8)
    frame[:, ::2] = 255
    card = {"input_size": [8, 32], "input_channels": 3, "mean": [0.0] * 3, "std": [1.0] * 3}
    x = frames_to_tensor([frame], card) * 255
    assert (x[..., 1:-1] - 127.5).abs().max() < 8  # the edge columns see one stripe more
