"""``rtlrp train``/``export``/``explain`` with non-VGG architectures: a ResNet-18 on real
Fashion-MNIST (fp32 and bf16 AMP) exported, reloaded and explained; DDP with gloo; resume
safety and per-architecture options."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from tiny_data import make_imagefolder, train_ddp_two_cpu_processes

from realtime_lrp import load_model
from realtime_lrp.apps.train.loop import load_checkpoint
from realtime_lrp.cli import cli
from realtime_lrp.models.cards import build_from_card
from realtime_lrp.models.datasets import fashion_mnist_dir, read_idx_gz

RESNET = ["--arch", "resnet18", "--width", "0.125", "--input-size", "32", "--batch-size", "4",
          "--workers", "0", "--device", "cpu"]


def invoke(*args: object) -> object:
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_imagefolder(tmp_path_factory.mktemp("data"))


def _checkpoint_model(run: Path, fp16: bool = False) -> torch.nn.Module:
    """The network a run's checkpoint records, built from its settings alone (optionally rounded to fp16)."""
    ckpt = load_checkpoint(run)
    state = {k: v.half().float() if fp16 and v.is_floating_point() else v for k, v in ckpt["model"].items()}
    model = build_from_card(ckpt["meta"])
    model.load_state_dict(state)
    return model.eval()


@pytest.mark.skipif(fashion_mnist_dir() is None, reason="Fashion-MNIST files absent: install the Debian "
                    "package dataset-fashion-mnist (or set RTLRP_FASHION_MNIST_DIR)")
@pytest.mark.parametrize("amp, precision", [(False, "float32"), (True, "bfloat16")])
def test_resnet18_on_fashion_mnist_trains_exports_reloads_and_explains(tmp_path: Path, amp: bool,
                                                                        precision: str) -> None:
    run, weights = tmp_path / "run", tmp_path / "weights" / "resnet18.pt"
    result = invoke("train", "--arch", "resnet18", "--width", "0.25", "--dataset", "fashion-mnist",
                    "--batch-size", "16", "--max-steps", "2", "--workers", "0", "--device", "cpu",
                    *(["--amp"] if amp else []), "--out", run)
    assert result.exit_code == 0, result.output
    line = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert line["step"] == 2 and line["precision"] == precision
    result = invoke("export", run, "--out", weights, "--no-measure")
    assert result.exit_code == 0, result.output

    card = json.loads(weights.with_suffix(".json").read_text())
    assert (card["arch"], card["width"], card["small_input"]) == ("resnet18", 0.25, True)
    assert (card["input_channels"], card["input_size"], card["num_classes"]) == (1, [32, 32], 10)
    assert not {"hidden", "pool"} & card.keys() and card["amp"] is amp
    model, loaded = load_model(weights)
    assert loaded == card and model.conv1.kernel_size == (3, 3) and model.conv1.out_channels == 16
    x = torch.randn(3, 1, 32, 32)
    with torch.no_grad():
        logits = model(x)
        torch.testing.assert_close(logits, _checkpoint_model(run, fp16=True)(x), rtol=0, atol=0)  # bit for bit
        torch.testing.assert_close(logits, _checkpoint_model(run)(x), rtol=2e-2, atol=2e-2)  # fp16 rounding only

    images = read_idx_gz(fashion_mnist_dir() / "t10k-images-idx3-ubyte.gz")
    image = tmp_path / "item.png"
    cv2.imwrite(str(image), np.ascontiguousarray(images[0]))
    out = tmp_path / "explained"
    result = invoke("explain", image, "--weights", weights, "--out", out, "--device", "cpu")
    assert result.exit_code == 0, result.output
    heatmap = cv2.imread(str(out / "item_heatmap.png"))
    assert heatmap is not None and heatmap.std() > 0
    assert any(name in result.output for name in card["classes"])


def test_ddp_two_cpu_processes_with_gloo_resnet18(folder: Path, tmp_path: Path) -> None:
    lines = train_ddp_two_cpu_processes(folder, tmp_path, RESNET, timeout=300)
    # 16 images over 2 ranks with batch 4: 2 steps per epoch; rank 0 alone writes.
    assert [(x["epoch"], x["step"], x["world_size"]) for x in lines] == [(1, 2, 2), (2, 4, 2)]
    ckpt = load_checkpoint(tmp_path)
    assert ckpt["world_size"] == 2 and ckpt["meta"]["arch"] == "resnet18" and ckpt["meta"]["small_input"] is True
    assert not any(k.startswith("module.") for k in ckpt["model"]), "saved unwrapped"
    logits = _checkpoint_model(tmp_path)(torch.rand(2, 3, 32, 32))  # the state fits the model its settings describe
    assert logits.shape == (2, 2) and torch.isfinite(logits).all()


def test_resume_refuses_a_changed_architecture_or_stem(folder: Path, tmp_path: Path) -> None:
    result = invoke("train", "--dataset", f"imagefolder:{folder}", *RESNET, "--max-steps", "1", "--out", tmp_path)
    assert result.exit_code == 0, result.output
    for args, said in ([("--arch", "resnet34"), "--arch resnet34 differs from the checkpoint's resnet18"],
                       [("--no-small-input",), "--small-input False differs from the checkpoint's True"],
                       [("--width", "0.25"), "--width 0.25 differs from the checkpoint's 0.125"]):
        result = invoke("train", "--resume", tmp_path, *args)
        assert result.exit_code == 1 and said in result.stderr, result.output
        assert len(result.stderr.strip().splitlines()) == 1
    result = invoke("train", "--resume", tmp_path, "--max-steps", "2")
    assert result.exit_code == 0, result.output
    assert load_checkpoint(tmp_path)["step"] == 2


@pytest.mark.parametrize("args, said", [
    (["--arch", "resnet18", "--hidden", "64"], "--hidden is for VGGs only, not resnet18"),
    (["--arch", "resnet50", "--pool", "2"], "--pool is for VGGs only, not resnet50"),
    (["--arch", "resnet18", "--dropout", "0.1"], "--dropout is for VGGs and AlexNet only, not resnet18"),
    (["--arch", "alexnet", "--width", "0.5"], "--width is for VGGs and ResNets only, not alexnet"),
    (["--arch", "vgg11_bn", "--small-input"], "--small-input is for ResNets and the torchvision CNNs beyond ReLU only, not vgg11_bn"),
    (["--arch", "alexnet", "--input-size", "32"], "--input-size 32x32 is too small for alexnet: it needs at least 63x63"),
    (["--arch", "resnext50_32x4d", "--width", "0.1"], "width 0.1 is too small for resnext50_32x4d"),
])
def test_architecture_options_are_checked_in_one_line(folder: Path, tmp_path: Path, args: list[str],
                                                      said: str) -> None:
    result = invoke("train", "--dataset", f"imagefolder:{folder}", "--device", "cpu", "--workers", "0",
                    *args, "--out", tmp_path / "run")
    assert result.exit_code == 1 and said in result.stderr, result.output
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "run" / "checkpoint.pt").exists()


MODERN = ["mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_b0", "regnet_y_400mf", "convnext_tiny",
          "densenet121"]


def _smallest_map(model: torch.nn.Module, x: torch.Tensor) -> int:
    """The smallest side, above 1, of any 4-D activation the model makes on ``x`` (its total stride's map)."""
    sides: list[int] = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: sides.append(min(out.shape[-2:]))
                                     if isinstance(out, torch.Tensor) and out.ndim == 4 else None)
             for m in model.modules() if not list(m.children())]
    with torch.no_grad():
        model(x)
    for hook in hooks:
        hook.remove()
    return min(s for s in sides if s > 1)


@pytest.mark.parametrize("arch", MODERN)
def test_modern_architecture_small_stem_stops_downsampling(arch: str) -> None:
    """The small-input stem keeps torchvision's state-dict layout but for the first conv, and
    its stem does not downsample: the total stride falls from torchvision's 32 to 8 (DenseNet,
    ConvNeXt, as a ResNet's CIFAR stem) or 16 (the others)."""
    import torchvision

    from realtime_lrp.models.architectures import build_model

    torch.manual_seed(0)
    small, plain = build_model(arch, 10, 1, small_input=True).eval(), build_model(arch, 10, 1).eval()
    theirs = {k: v.shape for k, v in getattr(torchvision.models, arch)(num_classes=10).state_dict().items()}
    for model in (small, plain):
        ours = {k: v.shape for k, v in model.state_dict().items()}
        assert ours.keys() == theirs.keys()
        differs = [k for k in ours if ours[k] != theirs[k]]
        assert differs == [next(k for k in ours if k.endswith("weight"))], differs  # the stem conv alone
    x = torch.randn(2, 1, 64, 64)
    stride = 8 if arch in ("densenet121", "convnext_tiny") else 16
    assert _smallest_map(small, x) == 64 // stride and _smallest_map(plain, x) == 64 // 32
    assert small(x[..., :32, :32]).shape == (2, 10)


@pytest.mark.parametrize("arch", MODERN)
def test_modern_architecture_trains_a_few_steps_and_rebuilds_from_its_checkpoint(folder: Path, tmp_path: Path,
                                                                                 arch: str) -> None:
    """Three real SGD steps on tiny data with the default small stem (32 px): the loss is finite,
    the weights moved, and the checkpoint's settings rebuild a network its state fits."""
    result = invoke("train", "--dataset", f"imagefolder:{folder}", "--arch", arch, "--input-size", "32",
                    "--batch-size", "4", "--max-steps", "3", "--workers", "0", "--device", "cpu",
                    "--no-augment", "--out", tmp_path)
    assert result.exit_code == 0, result.output
    line = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    assert line["step"] == 3 and np.isfinite(line["train_loss"]) and np.isfinite(line["test_loss"])
    ckpt = load_checkpoint(tmp_path)
    assert ckpt["meta"]["arch"] == arch and ckpt["meta"]["small_input"] is True
    torch.manual_seed(0)  # the training run's seed: the same initial weights
    initial = build_from_card(ckpt["meta"]).state_dict()
    moved = [k for k, v in ckpt["model"].items() if v.is_floating_point() and not torch.equal(v, initial[k])]
    assert len(moved) > len(initial) // 4
    logits = _checkpoint_model(tmp_path)(torch.rand(2, 3, 32, 32))
    assert logits.shape == (2, 2) and torch.isfinite(logits).all()
