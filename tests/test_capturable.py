"""The CUDA path is graph-capturable by construction, checked on the CPU with fake CUDA tensors.

Under ``FakeTensorMode`` tensors carry a device, dtype, shape and memory format but no data.
A host synchronisation (``.item()``, ``bool(t)``, ``float(t)``, a data-dependent shape)
raises there, and a CPU tensor mixed into a CUDA op raises a device mismatch. On top, an
audit mode records every aten op of a call and fails on any result that is not on the
(fake) CUDA device, which also catches a copy to the host. Engines are built inside the
mode from fake fp16 CUDA copies of real models, weights converted to channels_last as the
fast path does, and called on channels_last fp16 input, so the code runs the CUDA branches
(the radix select of the filter, channels_last layouts) that a GPU would run.
"""
from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torchvision
from torch import nn
from torch._subclasses.fake_tensor import DataDependentOutputException, FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from realtime_lrp.lrp.engine import LRP
from realtime_lrp.lrp.presets import PRESET_NAMES
from realtime_lrp.pipeline.fast import MODES, DevicePass, channels_last_weights
from realtime_lrp.pipeline.preprocess import FITS, Fit
from realtime_lrp.pipeline.stream import StreamState

CUDA = torch.device("cuda", 0)


class DeviceAudit(TorchDispatchMode):
    """Records each aten op and every op result that is not on the CUDA device."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: set[str] = set()
        self.off_device: list[str] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        self.ops.add(str(func))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.device != CUDA:
                self.off_device.append(f"{func} -> {t.device} {tuple(t.shape)}")
        return out


def fake_cuda(model: nn.Module, mode: FakeTensorMode, dtype: torch.dtype) -> nn.Module:
    """A copy of ``model`` whose parameters and buffers are fake ``dtype`` tensors on CUDA."""
    model = copy.deepcopy(model).eval()
    for module in model.modules():
        for store in (module._parameters, module._buffers):
            for name, tensor in list(store.items()):
                if tensor is not None:
                    fake = mode.from_tensor(tensor.detach())
                    with mode:
                        store[name] = fake.to(CUDA, dtype if tensor.is_floating_point() else tensor.dtype)
    return model


def audited(mode: FakeTensorMode, fn: Callable[[], Any]) -> tuple[Any, DeviceAudit]:
    """Run ``fn`` inside the fake mode under a fresh audit."""
    with mode, DeviceAudit() as audit:
        out = fn()
    return out, audit


MODELS = {
    "vgg16_bn": lambda: torchvision.models.vgg16_bn(num_classes=10),
    "resnet50": lambda: torchvision.models.resnet50(num_classes=10),
    "efficientnet_b0": lambda: torchvision.models.efficientnet_b0(num_classes=10),
    "mobilenet_v3_large": lambda: torchvision.models.mobilenet_v3_large(num_classes=10),
}


@pytest.fixture(scope="module")
def fake_models() -> tuple[FakeTensorMode, dict[str, nn.Module]]:
    torch.manual_seed(0)
    mode = FakeTensorMode()
    return mode, {name: fake_cuda(build(), mode, torch.float16) for name, build in MODELS.items()}


def fake_input(mode: FakeTensorMode, n: int, h: int, w: int) -> torch.Tensor:
    with mode:
        x = torch.randn(n, 3, h, w, device=CUDA, dtype=torch.float16)
        return x.contiguous(memory_format=torch.channels_last)


CNN_PRESETS = ("epsilon-plus-flat", "epsilon-gamma-box", "zplus")
FILTERS = ((0.0, "signed"), (0.02, "signed"), (0.05, "magnitude"))
FULL_GRID = ("vgg16_bn", "resnet50")
"""Every CNN preset with every filter on these; the newer families (each fake trace takes seconds) get
each preset once, the filter rotating, and the transformer presets run once on a CNN each."""
ENGINE_CASES = [(arch, preset, *f) for arch in FULL_GRID for preset in CNN_PRESETS for f in FILTERS] + [
    (arch, preset, *FILTERS[(i + j) % 3]) for i, arch in enumerate(MODELS) if arch not in FULL_GRID
    for j, preset in enumerate(CNN_PRESETS)] + [
    ("resnet50", "cp-lrp", 0.02, "signed"), ("vgg16_bn", "attnlrp", 0.0, "signed")]
PASS_CASES = [(arch, preset, top_k) for arch in FULL_GRID for preset in CNN_PRESETS for top_k in (0.0, 0.02)] + [
    (arch, preset, (0.0, 0.02)[(i + j) % 2]) for i, arch in enumerate(MODELS) if arch not in FULL_GRID
    for j, preset in enumerate(CNN_PRESETS)]


@pytest.mark.parametrize("arch, preset, top_k, filter_mode", ENGINE_CASES)
def test_engine_call_has_no_host_sync(fake_models, arch: str, preset: str, top_k: float, filter_mode: str) -> None:
    mode, models = fake_models
    with mode:
        lrp = LRP(models[arch], preset=preset, top_k=top_k, filter_mode=filter_mode)
        channels_last_weights(lrp)
        explicit = torch.tensor([3, 7], device=CUDA)
    rule_weights = [t.weight for s in lrp.steps for g in getattr(s.propagate, "groups", ()) for t in g.terms]
    assert rule_weights and all(w.is_contiguous(memory_format=torch.channels_last) for w in rule_weights if w.dim() == 4)
    x = fake_input(mode, 2, 64, 48)
    for target in (None, explicit, "softmax"):
        result, audit = audited(mode, lambda: lrp(x, target=target))
        assert audit.off_device == []
        assert result.relevance.shape == (2, 64, 48) and result.relevance.dtype == torch.float32
        assert result.relevance.device == CUDA and result.logits.shape == (2, 10)
        if lrp.filter.active:
            assert "aten.topk.default" not in audit.ops  # the filter ran its CUDA select (radix)
            assert "aten.scatter_add.default" in audit.ops or "aten.scatter_add_.default" in audit.ops


def test_the_checks_catch_a_sync_and_a_host_copy(fake_models) -> None:
    """Controls: the fake mode raises on a host sync, the audit records a copy to the host."""
    mode, models = fake_models
    with mode:
        lrp = LRP(models["resnet50"], preset="epsilon-plus-flat")
    x = fake_input(mode, 1, 32, 32)
    with pytest.raises(DataDependentOutputException):
        audited(mode, lambda: lrp(x, target=3))  # an int target is range-checked on the host
    with pytest.raises(DataDependentOutputException):
        audited(mode, lambda: float(lrp(x).relevance.sum()))
    _, audit = audited(mode, lambda: lrp(x).relevance.cpu())
    assert audit.off_device and "cpu" in audit.off_device[-1]
    with pytest.raises(RuntimeError, match="device"):
        audited(mode, lambda: lrp(x).relevance + torch.ones(1, 32, 32))


@pytest.mark.parametrize("arch, preset, top_k", PASS_CASES)
def test_fast_frame_pass_device_part_has_no_host_sync(fake_models, arch: str, preset: str, top_k: float) -> None:
    """The frame pass's device part (conversion, fit, antialiased resize, normalise, LRP,
    smoothing, colour scale, colour map, blend) on uint8 frames of another size than the
    processing size; each case takes one layout, one fit and one mode, with a padded frame."""
    mode, models = fake_models
    case = PRESET_NAMES.index(preset) + list(MODELS).index(arch) + int(top_k > 0)
    layout = ("overlay", "side", "heatmap")[case % 3]
    fit = FITS[(case // 3) % 3]
    pass_mode = MODES[case % 3]
    with mode:
        lrp = LRP(models[arch], preset=preset, top_k=top_k)
        channels_last_weights(lrp)
        state = StreamState(0.5, (64, 48), CUDA, 2 if pass_mode == "streams" else 1)
        target = torch.full((2,), 4, dtype=torch.long, device=CUDA)
        device_pass = DevicePass(lrp, Fit.of(fit, (60, 90), (64, 48)), [0.485, 0.456, 0.406], [0.229, 0.224, 0.225],
                                 state, "diverging", layout, 0.6, target, pass_mode)
        frames = torch.randint(0, 256, (2, 60, 90, 3), dtype=torch.uint8, device=CUDA)
        valid = torch.tensor([True, False], device=CUDA)
    (out, preds), audit = audited(mode, lambda: device_pass(frames, valid))
    assert audit.off_device == []
    assert out.dtype == torch.uint8 and out.device == CUDA
    assert out.shape == ((2, 60, 180, 3) if layout == "side" else (2, 60, 90, 3))
    assert preds.shape == (5, 2) and preds.device == CUDA


@pytest.fixture(scope="module")
def fake_densenet() -> tuple[FakeTensorMode, nn.Module]:
    torch.manual_seed(0)
    mode = FakeTensorMode()
    return mode, fake_cuda(torchvision.models.densenet121(num_classes=10), mode, torch.float16)


@pytest.mark.parametrize("preset, top_k", [("epsilon-plus-flat", 0.02), ("epsilon-gamma-box", 0.0), ("zplus", 0.02)])
def test_densenet121_fp16_has_no_host_sync(fake_densenet, preset: str, top_k: float) -> None:
    """DenseNet-121 (concatenations, batch norms merged into the conv after them, thresholded ReLUs) in
    fp16: building the engine and a call stay on the device, with no host sync."""
    mode, model = fake_densenet
    with mode:
        lrp = LRP(model, preset=preset, top_k=top_k)
        channels_last_weights(lrp)
        target = torch.tensor([3, 7], device=CUDA)
    assert {"cat", "shifted_relu"} <= {step.node.kind for step in lrp.steps}
    x = fake_input(mode, 2, 64, 48)
    result, audit = audited(mode, lambda: lrp(x, target=target))
    assert audit.off_device == []
    assert result.relevance.shape == (2, 64, 48) and result.relevance.device == CUDA


@pytest.fixture(scope="module")
def fake_convnext() -> tuple[FakeTensorMode, nn.Module]:
    torch.manual_seed(0)
    mode = FakeTensorMode()
    return mode, fake_cuda(torchvision.models.convnext_tiny(num_classes=10), mode, torch.float16)


@pytest.mark.parametrize("preset, top_k", [("epsilon-plus-flat", 0.02), ("epsilon-gamma-box", 0.0)])
def test_convnext_tiny_fp16_has_no_host_sync(fake_convnext, preset: str, top_k: float) -> None:
    """ConvNeXt-Tiny (depthwise 7x7 convs, LayerNorm over channels through permutes, Linear layers on
    NHWC maps, layer scale) in fp16: building the engine and a call stay on the device, with no host sync.
    (zplus binds no LayerNorm rule, so it refuses ConvNeXt when built.)"""
    mode, model = fake_convnext
    with mode:
        lrp = LRP(model, preset=preset, top_k=top_k)
        channels_last_weights(lrp)
        target = torch.tensor([3, 7], device=CUDA)
    assert {"layernorm", "permute", "scale", "linear"} <= {step.node.kind for step in lrp.steps}
    x = fake_input(mode, 2, 64, 48)
    result, audit = audited(mode, lambda: lrp(x, target=target))
    assert audit.off_device == []
    assert result.relevance.shape == (2, 64, 48) and result.relevance.device == CUDA
    assert result.relevance.dtype == torch.float32


def test_the_webcam_loops_own_pass_has_no_host_sync_on_fake_cuda_fp16(fake_models, tmp_path, monkeypatch) -> None:
    """The pass the real webcam loop builds (run here on the CPU over a file camera, with a class
    target, smoothing and a crop) replayed on fake CUDA in fp16 with VGG16-BN: device work only."""
    from media import tiny_card, tiny_model
    from test_live import SIZE, ScriptedDisplay, camera_source, write_clip

    from realtime_lrp.apps.live import LiveLoop
    from realtime_lrp.pipeline.processor import FrameProcessor

    built: list[DevicePass] = []
    init = DevicePass.__init__

    def spy(self, *args, **kwargs):
        init(self, *args, **kwargs)
        built.append(self)

    monkeypatch.setattr(DevicePass, "__init__", spy)
    processor = FrameProcessor(tiny_model(3), tiny_card(3), device="cpu", target=4, smooth=0.5, fit="crop")
    source = camera_source(write_clip(tmp_path / "camera.avi", 30))
    try:
        summary = LiveLoop(source, processor, ScriptedDisplay(), max_frames=2).run()
    finally:
        source.close()
    assert summary.frames == 2 and len(built) == 1
    live = built[0]
    assert (live.mode, live.fit.mode, live.fit.frame) == ("stream", "crop", (SIZE[1], SIZE[0]))
    target = int(live.target[0])
    mode, models = fake_models
    with mode:
        lrp = LRP(models["vgg16_bn"], preset=processor.preset, top_k=processor.top_k)
        channels_last_weights(lrp)
        state = StreamState(live.state.smoother.alpha, processor.size, CUDA)
        device_pass = DevicePass(lrp, live.fit, processor.card["mean"], processor.card["std"], state,
                                 processor.cmap, live.layout, live.alpha, torch.full((1,), target, device=CUDA),
                                 live.mode)
        frames = torch.randint(0, 256, (1, SIZE[1], SIZE[0], 3), dtype=torch.uint8, device=CUDA)
        valid = torch.ones(1, dtype=torch.bool, device=CUDA)
    (out, preds), audit = audited(mode, lambda: device_pass(frames, valid))
    assert audit.off_device == [] and out.shape == (1, SIZE[1], SIZE[0], 3) and out.device == CUDA
    assert tuple(preds.shape) == (5, 1) and preds.device == CUDA


@pytest.mark.parametrize("arch, size", [("small", 32), pytest.param("vit_b_16", 224, marks=pytest.mark.slow)])
@pytest.mark.parametrize("preset, top_k", [("cp-lrp", 0.02), ("attnlrp", 0.0)])
def test_vision_transformer_fp16_has_no_host_sync(arch: str, size: int, preset: str, top_k: float) -> None:
    """torchvision ViTs (attention read as its parts, class token, position embedding, shape checks)
    in fp16: building the engine and a call stay on the device, with no host sync."""
    torch.manual_seed(0)
    mode = FakeTensorMode()
    if arch == "small":
        build = torchvision.models.VisionTransformer(32, 8, 2, 2, 16, 32, num_classes=10)
    else:
        build = torchvision.models.vit_b_16(num_classes=10)
    model = fake_cuda(build, mode, torch.float16)
    with mode:  # parameters stay Parameters: fx reads the class token and position embedding as get_attr
        for module in model.modules():
            for name, tensor in list(module._parameters.items()):
                if tensor is not None:
                    module._parameters[name] = nn.Parameter(tensor, requires_grad=False)
        lrp = LRP(model, preset=preset, top_k=top_k)
        target = torch.tensor([3, 7], device=CUDA)
    assert {"matmul", "softmax", "layernorm", "projection", "assert"} <= {step.node.kind for step in lrp.steps}
    x = fake_input(mode, 2, size, size)
    result, audit = audited(mode, lambda: lrp(x, target=target))
    assert audit.off_device == []
    assert result.relevance.shape == (2, size, size) and result.relevance.device == CUDA
