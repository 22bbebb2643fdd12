"""``rtlrp explain`` on still images: PNG heatmaps, overlays, a sheet, and clear errors."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from media import frame_for

from realtime_lrp.cli import cli


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_explain_writes_overlay_and_heatmap(tmp_path, weights):
    a, b = tmp_path / "shirt.png", tmp_path / "odd.jpg"
    cv2.imwrite(str(a), frame_for(3, (61, 45)))
    cv2.imwrite(str(b), frame_for(8, (33, 27)))
    out = tmp_path / "explained"
    result = run("explain", a, b, "--out", out, "--weights", weights, "--display-size", "0", "--device", "cpu",
                 "--sheet", tmp_path / "sheet.png")
    assert result.exit_code == 0, result.output
    for stem, shape in (("shirt", (45, 61, 3)), ("odd", (27, 33, 3))):
        overlay = cv2.imread(str(out / f"{stem}_overlay.png"))
        heatmap = cv2.imread(str(out / f"{stem}_heatmap.png"))
        assert overlay.shape == heatmap.shape == shape
        assert not np.array_equal(overlay, heatmap)
    assert sorted(p.name for p in out.iterdir()) == ["odd_heatmap.png", "odd_overlay.png",
                                                      "shirt_heatmap.png", "shirt_overlay.png"]
    assert cv2.imread(str(tmp_path / "sheet.png")) is not None
    assert "%" in result.output  # the predicted class and its probability are reported


def test_explain_enlarges_small_images_and_side_layout(tmp_path, weights):
    img = tmp_path / "tiny.png"
    cv2.imwrite(str(img), frame_for(1, (28, 28)))
    out = tmp_path / "out"
    result = run("explain", img, "--out", out, "--weights", weights, "--layout", "side", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert cv2.imread(str(out / "tiny_overlay.png")).shape == (280, 280, 3)
    assert cv2.imread(str(out / "tiny_side.png")).shape == (280, 560, 3)


@pytest.mark.parametrize("content, message", [
    (None, "no such file"),
    (b"", "not an image, or corrupt"),
    (b"\x89PNG broken " * 20, "not an image, or corrupt"),
])
def test_explain_bad_image_is_one_line(tmp_path, weights, content, message):
    good, bad = tmp_path / "good.png", tmp_path / "bad.png"
    cv2.imwrite(str(good), frame_for(0, (40, 40)))
    if content is not None:
        bad.write_bytes(content)
    out = tmp_path / "out"
    result = run("explain", good, bad, "--out", out, "--weights", weights)
    assert result.exit_code == 1
    assert message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not out.exists()  # nothing half-done: images are checked before any is written


def test_explain_bad_option_values(tmp_path, weights):
    img = tmp_path / "a.png"
    cv2.imwrite(str(img), frame_for(0, (40, 40)))
    result = run("explain", img, "--out", tmp_path / "o", "--weights", weights, "--cmap", "rainbowz")
    assert result.exit_code == 2 and "unknown colour map" in result.output
    result = run("explain", img, "--out", tmp_path / "o", "--weights", weights, "--target", "Spaceship")
    assert result.exit_code == 1 and "unknown target" in result.output
    result = run("explain", img, "--out", tmp_path / "o", "--weights", weights, "--size", "4")
    assert result.exit_code == 2 and "too small" in result.output


def test_explain_with_the_shipped_model_on_cpu(tmp_path):
    from realtime_lrp.models.cards import shipped_weights

    if not shipped_weights().is_file():
        pytest.skip("the shipped weights are not in weights/")
    sample = run("sample", tmp_path / "demo.mp4", "--size", "32", "--seconds", "0.1", "--stills", tmp_path / "items")
    assert sample.exit_code == 0, sample.output
    items = sorted((tmp_path / "items").glob("*.png"))
    result = run("explain", *items, "--out", tmp_path / "out", "--weights", "shipped", "--device", "cpu")
    assert result.exit_code == 0, result.output
    names = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
    lines = [line for line in result.output.splitlines() if "->" in line]
    assert len(lines) == 10
    correct = sum(f": {name}  " in line for name, line in zip(names, lines))
    assert correct >= 8  # a 93.6% model on ten real test items
    assert len(list((tmp_path / "out").glob("*_overlay.png"))) == 10


# -- the Python API: prepare and overlay ---------------------------------------------------------
def test_prepare_takes_a_path_a_pil_image_and_arrays_as_the_pipeline_does(tmp_path):
    import torch
    from media import tiny_card
    from PIL import Image

    from realtime_lrp import prepare
    from realtime_lrp.pipeline.preprocess import frames_to_tensor

    card = tiny_card(3)
    frame = frame_for(3, (45, 29))
    path = tmp_path / "item.png"
    cv2.imwrite(str(path), frame)
    want = frames_to_tensor([frame], card)
    rgb = np.ascontiguousarray(frame[:, :, ::-1])
    for got in (prepare(path, card), prepare(str(path), card), prepare(frame, card), prepare(rgb, card, rgb=True),
                prepare(Image.fromarray(rgb), card)):
        assert got.shape == (1, 3, 32, 32) and got.dtype == torch.float32
        torch.testing.assert_close(got, want)
    crop = prepare(frame, dict(card, dataset="imagenet"))  # ImageNet cards crop by default
    torch.testing.assert_close(crop, frames_to_tensor([frame], card, fit="crop"))
    for bad, message in ((tmp_path / "none.png", "no such file"), (np.zeros((4, 4), np.float32), "uint8")):
        with pytest.raises(ValueError, match=message):
            prepare(bad, card)


def test_api_overlay_is_what_the_frame_pass_draws_and_a_small_input_is_one_line():
    from media import tiny_card, tiny_model

    from realtime_lrp import LRP, overlay, prepare
    from realtime_lrp.pipeline.processor import FrameProcessor

    model, card = tiny_model(3), tiny_card(3)
    frame = frame_for(5, (64, 48))
    lrp = LRP(model, mean=card["mean"], std=card["std"])
    result = lrp(prepare(frame, card))
    processor = FrameProcessor(model, card, device="cpu", top_k=0.0)
    picture = overlay(frame, result.relevance[0], card, cmap=processor.cmap)
    drawn = processor.passes.process([frame], stable=False, label=False)[0][0]
    assert picture.shape == drawn.shape == (48, 64, 3)
    assert np.abs(picture.astype(int) - drawn).max() <= 1
    with pytest.raises(ValueError, match="^size 8x8 is too small for this model: it needs at least 32x32$"):
        lrp(prepare(frame, card, size=(8, 8)))
    with pytest.raises(ValueError, match="^size 8x8 is too small for vgg11_bn: it needs at least 32x32$"):
        prepare(frame, card, size=(8, 8), model=model)


def test_sheet_tiles_are_one_size(tmp_path, weights):
    """explain --sheet: images of different sizes become tiles of one size, with no white between them."""
    paths = []
    for i, size in enumerate(((40, 40), (80, 40), (30, 60))):
        paths.append(tmp_path / f"im{i}.png")
        cv2.imwrite(str(paths[-1]), frame_for(i, size))
    sheet = tmp_path / "sheet.png"
    result = run("explain", *paths, "--out", tmp_path / "o", "--weights", weights, "--device", "cpu",
                 "--display-size", "120", "--sheet", sheet)
    assert result.exit_code == 0, result.output
    picture = cv2.imread(str(sheet))
    overlays = [cv2.imread(str(tmp_path / "o" / f"im{i}_overlay.png")) for i in range(3)]
    height = max(o.shape[0] for o in overlays)
    widths = [round(o.shape[1] * height / o.shape[0]) for o in overlays]
    assert picture.shape == (height, 3 * max(widths), 3)
    white = (picture == 255).all(2)
    assert not white.all(0).any() and not white.all(1).any()  # no white gap between tiles
