"""The CAM family of rtlrp evaluate against pytorch-grad-cam's maps, the layer it reads, and its one-line errors."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from media import model_file, tiny_model
from torch import nn

from realtime_lrp.cli import cli
from realtime_lrp.lrp.cam import CAM_METHODS, CAMLayerError, cam_layer, cam_maps, spatial_layers


def library_maps(model: nn.Module, layer: str, x: torch.Tensor, target: torch.Tensor, method: str) -> np.ndarray:
    cam_lib = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    cls = {"gradcam": cam_lib.GradCAM, "gradcam++": cam_lib.GradCAMPlusPlus, "layercam": cam_lib.LayerCAM}[method]
    with cls(model, [dict(model.named_modules())[layer]]) as cam:
        return cam(x, [ClassifierOutputTarget(int(t)) for t in target])


def resnet() -> nn.Module:
    from torchvision.models import resnet18

    torch.manual_seed(1)
    model = resnet18(num_classes=10).eval()
    for m in model.modules():  # statistics that are not the identity, so the maps are not trivial
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    return model


@pytest.mark.parametrize("make, shape, layer", [
    (lambda: tiny_model(3), (3, 3, 32, 32), None),  # the last conv stage: 2x2 activations
    (lambda: tiny_model(1), (2, 1, 40, 56), "features.20"),  # a named layer, non-square input
    (resnet, (2, 3, 64, 48), None),  # layer4, 2x2
    (resnet, (2, 3, 64, 64), "layer3"),
])
@pytest.mark.parametrize("method", CAM_METHODS)
def test_maps_equal_pytorch_grad_cam(make, shape, layer, method) -> None:
    model = make()
    x = torch.randn(shape, generator=torch.Generator().manual_seed(3))
    name = cam_layer(model, x, layer)
    target = torch.arange(shape[0]) * 3 % 10  # not always the top-1 class
    ours = cam_maps(model, name, x, target, method)
    reference = library_maps(model, name, x, target, method)
    assert ours.shape == reference.shape == (shape[0], *shape[2:])
    informative = 0
    for got, want in zip(ours.numpy(), reference):
        if want.max() == 0:  # a random model can make the weighted sum negative everywhere: ReLU leaves 0
            assert got.max() == 0
            continue
        informative += 1
        assert np.corrcoef(got.ravel(), want.ravel())[0, 1] >= 0.999
        assert np.abs(got - want).max() < 2e-3  # the same scale too: [0, 1] per image (OpenCV resizes in fixed point)
    assert informative >= 1 and float(ours.min()) >= 0 and float(ours.max()) <= 1


def test_the_default_layer_is_the_last_conv_stage() -> None:
    vgg = tiny_model(1)
    x = torch.randn(1, 1, 32, 32)
    assert cam_layer(vgg, x) == "features.27"  # its last max-pool leaves 1x1: no map to read
    assert cam_layer(vgg, torch.randn(1, 1, 64, 64)) == "features"  # 2x2 after the last pool at 64x64
    assert cam_layer(resnet(), torch.randn(1, 3, 64, 64)) == "layer4"
    names = spatial_layers(resnet(), torch.randn(1, 3, 64, 64))
    assert "layer4.1.relu" not in names  # called twice per block: ambiguous, left out
    assert names[-3:] == ["layer4.1.bn2", "layer4.1", "layer4"]  # one tensor: the sum is added in place
    assert names.index("layer3") < names.index("layer4") and "fc" not in names


def test_a_model_without_a_conv_stage_is_one_line() -> None:
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(16, 10))
    with pytest.raises(CAMLayerError, match="no convolutional stage: the CAM methods need one"):
        cam_layer(mlp, torch.randn(1, 1, 4, 4))


@pytest.mark.parametrize("layer, message", [
    ("features.99", "--cam-layer 'features.99' names no layer; layers with spatial output: "),
    ("classifier.0", "--cam-layer 'classifier.0' has no spatial output; layers with spatial output: "),
])
def test_bad_cam_layer_is_one_line_listing_candidates(tmp_path, layer, message) -> None:
    weights = model_file(tmp_path)
    folder = tmp_path / "images"
    folder.mkdir()
    import cv2
    from media import frame_for

    cv2.imwrite(str(folder / "a.png"), frame_for(0, (32, 32)))
    result = CliRunner().invoke(cli, ["evaluate", str(folder), "--weights", str(weights), "--methods", "gradcam",
                                      "--cam-layer", layer, "--draws", "1", "--dtypes", "fp32"])
    assert result.exit_code == 1, result.output
    assert message in result.output and "features.27" in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output


def test_cam_rows_in_the_json(tmp_path) -> None:
    weights = model_file(tmp_path)
    src = tmp_path / "clip.avi"
    from media import write_video

    write_video(src, 5, (32, 32), 25.0, fourcc="MJPG")
    out = tmp_path / "rows.json"
    result = CliRunner().invoke(cli, ["evaluate", str(src), "--weights", str(weights), "--methods",
                                      "gradcam,gradcam++,layercam", "--cam-layer", "features.24", "--draws", "1",
                                      "--dtypes", "fp32", "--json", str(out)])
    assert result.exit_code == 0, result.output
    rows = json.loads(out.read_text())["rows"]
    assert [r["method"] for r in rows] == list(CAM_METHODS)
    for r in rows:
        assert r["cam_layer"] == "features.24" and r["ms_per_image"] > 0 and r["kind"] == r["method"]
        assert 0 <= r["gini"] <= 1 and -1 <= r["sensitivity_r"] <= 1 and r["images"] == 5


# ------------------------------------------------------------ --method and --target-mode in the other commands


def test_frame_processor_shows_the_cam_method_and_the_target_mode() -> None:
    from media import frame_for, tiny_card

    from realtime_lrp.lrp.engine import LRP
    from realtime_lrp.pipeline.preprocess import frames_to_tensor
    from realtime_lrp.pipeline.processor import FrameProcessor

    model, card = tiny_model(1), tiny_card(1)
    frames = [frame_for(i, (32, 32)) for i in range(3)]
    x = frames_to_tensor(frames, card)
    for method in CAM_METHODS:
        processor = FrameProcessor(model, card, method=method, device="cpu")
        maps, preds = processor.explain(frames)
        explained = torch.tensor([p.explained for p in preds])
        assert torch.equal(explained, model(x).argmax(1))
        assert np.allclose(maps, cam_maps(model, "features.27", x, explained, method).numpy(), atol=1e-6)
        assert not processor.signed and processor.cmap == "hot"
    processor = FrameProcessor(model, card, target_mode="contrastive", top_k=0.0, device="cpu")
    maps, _ = processor.explain(frames)
    want = LRP(model, mean=card["mean"], std=card["std"], target_mode="contrastive")(x).relevance
    assert np.allclose(maps, want.numpy(), rtol=1e-5, atol=1e-7)


def test_video_and_explain_take_method_and_target_mode(tmp_path) -> None:
    import cv2
    from media import frame_for, write_video

    weights = model_file(tmp_path)
    src = tmp_path / "clip.avi"
    write_video(src, 4, (32, 32), 25.0, fourcc="MJPG")
    out = tmp_path / "cam.mp4"
    result = CliRunner().invoke(cli, ["video", str(src), "--out", str(out), "--weights", str(weights),
                                      "--method", "layercam", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert out.is_file() and out.stat().st_size > 0
    image = tmp_path / "a.png"
    cv2.imwrite(str(image), frame_for(2, (32, 32)))
    result = CliRunner().invoke(cli, ["explain", str(image), "--out", str(tmp_path / "x"), "--weights", str(weights),
                                      "--target-mode", "softmax-gradient", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(cli, ["explain", str(image), "--out", str(tmp_path / "y"), "--weights", str(weights),
                                      "--method", "gradcam", "--target-mode", "contrastive", "--device", "cpu"])
    assert result.exit_code == 1 and "--target-mode contrastive is an LRP mode: gradcam has none" in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
