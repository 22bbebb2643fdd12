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


# -- --method: a CAM method live, through the frame pass ---------------------------------------------

def source_frames(path) -> list[np.ndarray]:
    """The frames of ``path`` as the pipeline decodes them (the project's reader)."""
    from realtime_lrp.media.reader import VideoReader

    with VideoReader(path) as reader:
        return [frame.image for frame in reader.frames()]


def reference_maps(weights, frames: list[np.ndarray], method: str, layer: str | None = None) -> np.ndarray:
    """``lrp.cam.CAM``'s maps of the frames, on the model loaded from ``weights``, in fp32 on the CPU."""
    from realtime_lrp.lrp.cam import CAM
    from realtime_lrp.models.loading import load_model
    from realtime_lrp.pipeline.preprocess import default_fit, frames_to_tensor, processing_size

    model, card = load_model(str(weights), device="cpu", notify=lambda _msg: None)
    size = processing_size(card, None)
    x = frames_to_tensor(frames, card, size, torch.device("cpu"), torch.float32, default_fit(card))
    return CAM(model, method, size, layer)(x).relevance.numpy()


def stream_rendered(frames: list[np.ndarray], maps: np.ndarray, cmap: str, layout: str) -> list[np.ndarray]:
    """The maps rendered as a stream is: one stable colour scale folded frame by frame, in order."""
    from realtime_lrp.pipeline import render
    from realtime_lrp.pipeline.stream import StableScale

    scale = StableScale()
    out = []
    for frame, cam in zip(frames, maps):
        s = float(scale.update(torch.from_numpy(cam[None]))[0])
        out.append(render.render(frame, cam, s, cmap, layout, 0.6))
    return out


@pytest.mark.parametrize("method, layer", [("gradcam", None), ("layercam", "features.24")])
def test_video_with_a_cam_method_writes_that_methods_map(tmp_path, method, layer) -> None:
    from media import read_video, write_video

    weights = model_file(tmp_path)
    src = tmp_path / "clip.avi"
    write_video(src, 6, (128, 96), 25.0, fourcc="MJPG")  # larger than the model's 32x32: the label takes the top
    out = tmp_path / "cam.mkv"
    args = ["video", str(src), "--out", str(out), "--weights", str(weights), "--method", method, "--device", "cpu",
            "--layout", "heatmap", "--codec", "h264", "--crf", "0", "--threads", "1"]
    result = CliRunner().invoke(cli, args + (["--cam-layer", layer] if layer else []))
    assert result.exit_code == 0, result.output
    written, _ = read_video(out)
    frames = source_frames(src)
    assert len(written) == len(frames) == 6
    maps = reference_maps(weights, frames, method, layer)
    expected = stream_rendered(frames, maps, "fire", "heatmap")  # CAM maps are positive: the positive map
    for got, want in zip(written, expected):
        error = np.abs(got.astype(int) - want.astype(int))[20:]  # below the label; what is left is the codec's
        assert error.mean() < 2.5 and np.percentile(error, 99) <= 10, (error.mean(), error.max())
        assert np.ptp(want[20:]) > 100  # and the map is not flat
    lrp = tmp_path / "lrp.mkv"
    assert CliRunner().invoke(cli, [*args[:3], str(lrp), *args[4:6], "--device", "cpu", "--layout", "heatmap",
                                    "--codec", "h264", "--crf", "0"]).exit_code == 0
    other, _ = read_video(lrp)
    assert np.abs(other[3].astype(int) - written[3].astype(int)).mean() > 10, "the CAM video is LRP's again"


@pytest.mark.parametrize("command", ["video", "webcam", "serve", "explain"])
def test_bad_method_and_cam_layer_are_one_line_on_every_live_command(tmp_path, command) -> None:
    from media import write_video

    weights = model_file(tmp_path)
    src = tmp_path / "clip.avi"
    write_video(src, 2, (32, 32), 25.0, fourcc="MJPG")
    where = {"video": [str(src), "--out", str(tmp_path / "o.mp4")], "webcam": ["--camera", str(src), "--no-window"],
             "serve": ["--port", "0"], "explain": [str(src.with_suffix(".png")), "--out", str(tmp_path / "x")]}
    import cv2
    from media import frame_for

    cv2.imwrite(str(src.with_suffix(".png")), frame_for(0, (32, 32)))
    base = [command, *where[command], "--weights", str(weights), "--device", "cpu"]
    result = CliRunner().invoke(cli, [*base, "--method", "gradcam", "--cam-layer", "features.99"])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert "--cam-layer 'features.99' names no layer; layers with spatial output: " in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    result = CliRunner().invoke(cli, [*base, "--method", "cam"])
    assert result.exit_code == 2 and "Invalid value for '--method'" in result.output and "gradcam++" in result.output


def test_the_method_choices_are_the_processors() -> None:
    from realtime_lrp.cli.options import processing_options
    from realtime_lrp.pipeline.processor import METHODS

    option = next(p for p in processing_options(lambda **kw: None).__click_params__ if p.name == "method")
    assert tuple(option.type.choices) == METHODS
