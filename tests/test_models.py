"""Architectures, ``load_model`` resolution, and safe, one-line failures for bad weight files."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torchvision
from click.testing import CliRunner

from realtime_lrp import load_model
from realtime_lrp.models import imagenet as imagenet_module
from realtime_lrp.models.architectures import (
    ALL_ARCHS,
    ARCHS,
    MODERN_ARCHS,
    RESNET_ARCHS,
    build_model,
    build_vgg,
    infer_architecture,
)
from realtime_lrp.models.cards import (
    CARD_FORMAT,
    arch_fields,
    build_from_card,
    read_card,
    shipped_weights,
    validate_card,
)
from realtime_lrp.models.errors import WeightsError
from realtime_lrp.models.files import load_weights_file, safe_load, sha256_file
from realtime_lrp.models.imagenet import MODERN_WEIGHTS, _imagenet_weights, hash_prefix, imagenet_cache_file


@pytest.mark.parametrize("arch", ARCHS)
def test_defaults_match_torchvision_layout(arch: str) -> None:
    with torch.device("meta"):
        ours = build_vgg(arch).state_dict()
        theirs = getattr(torchvision.models, arch)().state_dict()
    assert list(ours) == list(theirs)
    assert all(ours[k].shape == theirs[k].shape for k in ours)
    assert infer_architecture(ours)["arch"] == arch


def test_compact_vgg_shapes() -> None:
    model = build_vgg("vgg13_bn", num_classes=7, in_channels=1, width=0.125, hidden=24, pool=2)
    assert model.features[0].in_channels == 1 and model.features[0].out_channels == 8
    assert model.classifier[0].in_features == 64 * 2 * 2 and model.classifier[3].out_features == 24
    assert model.eval()(torch.randn(2, 1, 64, 48)).shape == (2, 7)
    info = infer_architecture(model.state_dict())
    assert info == {"arch": "vgg13_bn", "width": 0.125, "hidden": 24, "pool": 2,
                    "num_classes": 7, "input_channels": 1}


def test_unknown_architecture() -> None:
    with pytest.raises(WeightsError, match="unknown architecture"):
        build_vgg("resnet18")


def _plain(path: Path, arch: str = "vgg11", classes: int = 5) -> torch.nn.Module:
    model = build_vgg(arch, classes, 3, width=0.0625, hidden=16, pool=1).eval()
    torch.save(model.state_dict(), path)
    return model


def test_plain_state_dict_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "plain.pt"
    original = _plain(path)
    model, card = load_model(path)
    assert not model.training and card["arch"] == "vgg11" and card["num_classes"] == 5
    x = torch.randn(3, 3, 32, 32)
    torch.testing.assert_close(model(x), original(x))
    with pytest.raises(WeightsError, match="holds vgg11 weights, not vgg16"):
        load_model(path, arch="vgg16")


def _exported(tmp_path: Path) -> Path:
    path = tmp_path / "net.pt"
    _plain(path, "vgg11_bn", 4)
    info = infer_architecture(torch.load(path, weights_only=True))
    card = {**info, "classes": list("abcd"), "input_size": [32, 32], "mean": [0.5] * 3,
            "std": [0.25] * 3, "dataset": "test", "test_accuracy": 0.5, "command": "x",
            "sha256": sha256_file(path), "format": CARD_FORMAT}
    path.with_suffix(".json").write_text(json.dumps(card))
    return path


def test_card_is_used_and_validated(tmp_path: Path) -> None:
    path = _exported(tmp_path)
    _, card = load_model(path)
    assert card["classes"] == list("abcd") and card["mean"] == [0.5] * 3
    card_path = path.with_suffix(".json")
    card = json.loads(card_path.read_text())
    card["num_classes"] = 10
    card["classes"] = [str(i) for i in range(10)]
    card_path.write_text(json.dumps(card))
    with pytest.raises(WeightsError, match="does not fit vgg11_bn with 10 classes"):
        load_model(path)
    card["arch"], card["num_classes"], card["classes"] = "vgg13_bn", 4, list("abcd")
    card_path.write_text(json.dumps(card))
    with pytest.raises(WeightsError, match="does not fit vgg13_bn"):
        load_model(path)
    del card["mean"]
    card_path.write_text(json.dumps(card))
    with pytest.raises(WeightsError, match="lacks field"):
        load_model(path)
    card_path.write_text("{ not json")
    with pytest.raises(WeightsError, match="cannot read model card"):
        load_model(path)


def test_truncated_and_corrupt_files(tmp_path: Path) -> None:
    path = _exported(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="not a readable weight file"):
        load_model(path)
    path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(WeightsError):
        load_model(path)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00\x01 definitely not torch")
    with pytest.raises(WeightsError, match="not a readable weight file"):
        load_model(garbage)
    with pytest.raises(WeightsError, match="does not exist"):
        load_model(tmp_path / "missing.pt")


class _Payload:
    def __reduce__(self):
        return (Path.touch, (Path("/tmp/rtlrp-pwned"),))


def test_arbitrary_objects_are_never_unpickled(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"features.0.weight": _Payload()}, path)
    marker = Path("/tmp/rtlrp-pwned")
    marker.unlink(missing_ok=True)
    with pytest.raises(WeightsError):
        load_model(path)
    assert not marker.exists()


def test_wrong_network_state_dict(tmp_path: Path) -> None:
    path = tmp_path / "mobilenet.pt"
    torch.save(torchvision.models.mobilenet_v2(num_classes=3).state_dict(), path)
    with pytest.raises(WeightsError, match="not a torchvision-style VGG, ResNet or AlexNet"):
        load_model(path)


def _offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def fail(url: str, dest: Path, timeout: float = 0, **kwargs: object) -> None:
        raise OSError("offline")

    monkeypatch.setattr(imagenet_module, "download", fail)


def test_imagenet_offline_is_one_line_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _offline(monkeypatch, tmp_path)
    with pytest.raises(WeightsError, match="not cached") as info:
        load_model("imagenet")
    assert "\n" not in str(info.value) and "--weights" in str(info.value)


def test_corrupt_imagenet_cache_is_one_line_error(monkeypatch: pytest.MonkeyPatch,
                                                  tmp_path: Path) -> None:
    _offline(monkeypatch, tmp_path)
    cached = imagenet_cache_file("vgg16")
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"truncated download")
    with pytest.raises(WeightsError, match="does not match the SHA-256 prefix 397923af.*delete it"):
        load_model("imagenet")


def test_auto_falls_back_to_shipped_offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _offline(monkeypatch, tmp_path)
    monkeypatch.setenv("RTLRP_WEIGHTS_DIR", str(tmp_path))
    shipped = _exported(tmp_path)
    shipped.rename(shipped_weights())
    shipped.with_suffix(".json").rename(shipped_weights().with_suffix(".json"))
    notices: list[str] = []
    model, card = load_model("auto", notify=notices.append)
    assert card["classes"] == list("abcd") and not model.training
    assert len(notices) == 1 and "shipped" in notices[0] and "\n" not in notices[0]


def test_auto_without_imagenet_or_shipped(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _offline(monkeypatch, tmp_path)
    monkeypatch.setenv("RTLRP_WEIGHTS_DIR", str(tmp_path / "empty"))
    with pytest.raises(WeightsError, match="missing too") as info:
        load_model("auto")
    assert "\n" not in str(info.value)


def test_weights_option_reports_one_line(tmp_path: Path) -> None:
    import click

    from realtime_lrp.cli.options import load_weights, weights_option

    @click.command()
    @weights_option
    def probe(weights: str) -> None:
        _, card = load_weights(weights)
        click.echo(card["arch"])

    runner = CliRunner()
    ok = runner.invoke(probe, ["--weights", str(_exported(tmp_path))])
    assert ok.exit_code == 0 and ok.stdout.strip() == "vgg11_bn"
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"junk")
    result = runner.invoke(probe, ["--weights", str(bad)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert len(result.stderr.strip().splitlines()) == 1


def test_load_weights_file_reads_training_checkpoints(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pt"
    model = build_vgg("vgg11", 3, 1, 0.0625, 8, 1)
    torch.save({"model": model.state_dict(), "epoch": 1}, path)
    loaded, card = load_weights_file(path)
    assert card["input_channels"] == 1 and card["num_classes"] == 3


# -- every engine architecture: plain state dicts, cards, imagenet:ARCH -----------------------

@pytest.mark.parametrize("arch", RESNET_ARCHS + ("alexnet",))
def test_infer_architecture_recognises_plain_torchvision_state_dicts(arch: str) -> None:
    with torch.device("meta"):
        state = getattr(torchvision.models, arch)(num_classes=7).state_dict()
    info = infer_architecture(state)
    assert info["arch"] == arch and info["num_classes"] == 7 and info["input_channels"] == 3
    assert set(info) == {"arch", "num_classes", "input_channels", *arch_fields(arch)}
    if arch != "alexnet":
        assert info["width"] == 1.0 and info["small_input"] is False


@pytest.mark.parametrize("arch, width", [("resnet18", 0.25), ("resnet50", 0.125), ("resnext50_32x4d", 0.25),
                                         ("wide_resnet50_2", 0.3)])
def test_narrow_small_input_resnets_round_trip_through_their_shapes(arch: str, width: float) -> None:
    torch.manual_seed(0)
    net = build_model(arch, 6, 1, small_input=True, width=width).eval()
    info = infer_architecture(net.state_dict())
    assert (info["arch"], info["small_input"], info["num_classes"], info["input_channels"]) == (arch, True, 6, 1)
    rebuilt = build_from_card(info).eval()
    rebuilt.load_state_dict(net.state_dict())
    x = torch.randn(2, 1, 32, 32)
    torch.testing.assert_close(rebuilt(x), net(x), rtol=0, atol=0)


def test_too_narrow_resnext_is_a_one_line_error() -> None:
    with pytest.raises(WeightsError, match="width 0.1 is too small for resnext50_32x4d"):
        build_model("resnext50_32x4d", width=0.1)


def test_plain_resnet_state_dict_loads_without_a_card(tmp_path: Path) -> None:
    path = tmp_path / "resnet18.pt"
    torch.manual_seed(0)
    original = torchvision.models.resnet18(num_classes=5).eval()
    torch.save(original.state_dict(), path)
    model, card = load_model(path)
    assert (card["arch"], card["width"], card["small_input"], card["num_classes"]) == ("resnet18", 1.0, False, 5)
    assert card["format"] == "state_dict" and card["input_size"] == [224, 224]
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(model(x), original(x))
    with pytest.raises(WeightsError, match="holds resnet18 weights, not resnet34"):
        load_model(path, arch="resnet34")


def test_plain_alexnet_state_dict_loads_without_a_card(tmp_path: Path) -> None:
    path = tmp_path / "alexnet.pt"
    torch.manual_seed(0)
    original = build_model("alexnet", 3, 1).eval()
    torch.save(original.state_dict(), path)
    model, card = load_model(path)
    assert (card["arch"], card["num_classes"], card["input_channels"]) == ("alexnet", 3, 1)
    x = torch.randn(2, 1, 96, 80)
    torch.testing.assert_close(model(x), original(x))


def _resnet_card(path: Path) -> dict:
    torch.save(build_model("resnet18", 4, 1, small_input=True, width=0.125).state_dict(), path)
    return {"arch": "resnet18", "width": 0.125, "small_input": True, "num_classes": 4, "classes": list("abcd"),
            "input_size": [32, 32], "input_channels": 1, "mean": [0.5], "std": [0.25], "dataset": "test",
            "test_accuracy": None, "command": None, "sha256": sha256_file(path), "format": CARD_FORMAT}


def test_resnet_cards_carry_their_own_fields(tmp_path: Path) -> None:
    path = tmp_path / "net.pt"
    card = _resnet_card(path)
    card_path = path.with_suffix(".json")
    card_path.write_text(json.dumps(card))
    model, loaded = load_model(path)
    assert loaded == card and model.conv1.out_channels == 8 and isinstance(model.maxpool, torch.nn.Identity)
    for edit, message in [({"small_input": False}, "does not fit resnet18 with 4 classes: conv1.weight"),
                          ({"small_input": "yes"}, "invalid 'small_input' field"),
                          ({"width": 0.25}, "does not fit resnet18"),
                          ({"arch": "googlenet"}, "invalid 'arch' field"),
                          ({"arch": "vgg11"}, "lacks field.s. of vgg11: hidden, pool")]:
        card_path.write_text(json.dumps({**card, **edit}))
        with pytest.raises(WeightsError, match=message) as info:
            load_model(path)
        assert "\n" not in str(info.value)
    card_path.write_text(json.dumps({k: v for k, v in card.items() if k != "small_input"}))
    with pytest.raises(WeightsError, match="lacks field.s. of resnet18: small_input"):
        load_model(path)


def test_shipped_card_still_validates_unchanged() -> None:
    card_file = shipped_weights().with_suffix(".json")
    card = json.loads(card_file.read_text())
    assert read_card(card_file) == card and card["arch"] == "vgg11_bn"
    assert {"width", "hidden", "pool"} <= card.keys() and "small_input" not in card


def _published_densenet_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A DenseNet state as its published file spells it: ``norm.1``, not torchvision's ``norm1``,
    and no ``num_batches_tracked`` (older than that BatchNorm buffer)."""
    import re

    return {re.sub(r"(denselayer\d+\.(?:norm|relu|conv))([12])\.", r"\1.\2.", k): v for k, v in state.items()
            if not k.endswith("num_batches_tracked")}


def planted_weights(arch: str, name: str) -> object:
    """torchvision's weights entry for ``arch`` (its card), with a URL that names ``name``: a file planted
    in the torch hub cache."""
    real = _imagenet_weights(arch)
    return type("Weights", (), {"url": f"https://example.invalid/{name}", "meta": real.meta,
                                "__str__": lambda self: str(real)})()


def _plant_imagenet(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, arch: str) -> dict[str, torch.Tensor]:
    """A random torchvision ``arch`` state dict in a temporary torch hub cache, under a name
    whose hash prefix is the file's own, as ``_imagenet_weights(arch)``'s URL names it (a
    DenseNet's with the key names of its published file)."""
    torch.manual_seed(0)
    state = getattr(torchvision.models, arch)().state_dict()
    staging = tmp_path / "staging.pth"
    torch.save(_published_densenet_keys(state) if arch.startswith("densenet") else state, staging)
    name = f"{arch}-{sha256_file(staging)[:8]}.pth"
    fake = planted_weights(arch, name)
    monkeypatch.setattr(imagenet_module, "_imagenet_weights", lambda wanted: fake)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(imagenet_module, "download", lambda *args, **kwargs: pytest.fail("nothing may be downloaded"))
    cached = imagenet_cache_file(arch)
    cached.parent.mkdir(parents=True)
    staging.rename(cached)
    return state


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_imagenet_arch_loads_planted_weights_through_the_safe_loader(monkeypatch: pytest.MonkeyPatch,
                                                                   tmp_path: Path, arch: str) -> None:
    state = _plant_imagenet(monkeypatch, tmp_path, arch)
    loads: list[Path] = []
    safe = safe_load
    monkeypatch.setattr(imagenet_module, "safe_load", lambda path: loads.append(path) or safe(path))
    model, card = load_model(f"imagenet:{arch}")
    assert loads == [imagenet_cache_file(arch)]
    loaded = model.state_dict()
    assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state)
    assert (card["arch"], card["width"], card["small_input"], card["num_classes"]) == (arch, 1.0, False, 1000)
    assert card["weights"] == str(torchvision.models.get_model_weights(arch).DEFAULT)
    assert "hidden" not in card and len(card["classes"]) == 1000
    validate_card(card)


@pytest.mark.parametrize("arch", MODERN_ARCHS)
def test_imagenet_modern_arch_loads_planted_weights_through_the_safe_loader(monkeypatch: pytest.MonkeyPatch,
                                                                          tmp_path: Path, arch: str) -> None:
    state = _plant_imagenet(monkeypatch, tmp_path, arch)
    if arch == "densenet121":
        assert "features.denseblock1.denselayer1.norm.1.weight" in safe_load(imagenet_cache_file(arch))
    model, card = load_model(f"imagenet:{arch}")
    loaded = model.state_dict()
    assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state)
    assert (card["arch"], card["small_input"], card["num_classes"]) == (arch, False, 1000)
    assert card["input_size"] == [224, 224]
    assert "width" not in card and validate_card(card) == card
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 1000)


def test_imagenet_weights_table_matches_torchvision_and_every_file_carries_its_hash() -> None:
    """The pinned table names torchvision's own files; every architecture's file name carries a
    SHA-256 prefix, so the cache check (``check_hash_prefix``) applies to all of them."""
    assert tuple(MODERN_WEIGHTS) == MODERN_ARCHS
    for arch, (member, name) in MODERN_WEIGHTS.items():
        weights = _imagenet_weights(arch)
        assert str(weights) == member and weights.url.endswith("/" + name)
        assert len(weights.meta["categories"]) == 1000
    for arch in ALL_ARCHS:
        prefix = hash_prefix(imagenet_cache_file(arch))
        assert prefix is not None and len(prefix) >= 6, arch


def test_imagenet_arch_rejects_a_file_that_does_not_match_its_name(monkeypatch: pytest.MonkeyPatch,
                                                                   tmp_path: Path) -> None:
    _plant_imagenet(monkeypatch, tmp_path, "resnet18")
    cached = imagenet_cache_file("resnet18")
    data = bytearray(cached.read_bytes())
    data[-100] ^= 1
    cached.write_bytes(bytes(data))
    prefix = hash_prefix(cached)
    with pytest.raises(WeightsError, match=f"does not match the SHA-256 prefix {prefix}"):
        load_model("imagenet:resnet18")


def test_unknown_architectures_are_one_line_errors(tmp_path: Path) -> None:
    for name in ("imagenet:resnet9", "imagenet:googlenet"):
        with pytest.raises(WeightsError, match=f"unknown architecture '{name[9:]}'; choose one of vgg11") as info:
            load_model(name)
        assert "\n" not in str(info.value)
    import cv2
    import numpy as np

    from realtime_lrp.cli.group import cli

    image = tmp_path / "x.png"
    cv2.imwrite(str(image), np.full((28, 28), 128, np.uint8))
    result = CliRunner().invoke(cli, ["explain", str(image), "--weights", "imagenet:resnet9", "--out",
                                      str(tmp_path / "out"), "--device", "cpu"])
    assert result.exit_code == 1 and "unknown architecture 'resnet9'" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    result = CliRunner().invoke(cli, ["train", "--arch", "resnet9", "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and "resnet9" in result.stderr


def test_train_offers_every_architecture() -> None:
    from realtime_lrp.cli.train import TRAIN_ARCHS

    assert TRAIN_ARCHS == ALL_ARCHS


MOBILENET = Path(__file__).resolve().parents[1] / "weights" / "fashion_mnist_mobilenet_v3_small.pt"


@pytest.mark.skipif(not MOBILENET.is_file(), reason="shipped MobileNetV3-Small weights not built")
def test_shipped_mobilenet_v3_small_card_accuracy_and_map() -> None:
    """The second shipped model: its card rebuilds it, its test accuracy (>= 92 %) reproduces from
    the card alone on the 10,000 test images, and the engine explains it with a finite map."""
    import torch.nn.functional as F

    from realtime_lrp import LRP
    from realtime_lrp.models.datasets import fashion_mnist_dir, read_idx_gz

    model, card = load_model(MOBILENET)
    assert (card["arch"], card["small_input"], card["input_size"], card["input_channels"]) == (
        "mobilenet_v3_small", True, [32, 32], 1)
    assert card["test_accuracy"] >= 0.92 and "rtlrp train --arch mobilenet_v3_small" in card["command"]
    assert MOBILENET.stat().st_size <= 20 * 1024 * 1024
    if fashion_mnist_dir() is not None:
        root = fashion_mnist_dir()
        images = torch.from_numpy(read_idx_gz(root / "t10k-images-idx3-ubyte.gz").copy())[:, None].float() / 255
        labels = torch.from_numpy(read_idx_gz(root / "t10k-labels-idx1-ubyte.gz").astype("int64"))
        correct = 0
        with torch.no_grad():
            for i in range(0, len(images), 1000):
                x = F.interpolate(images[i:i + 1000], size=card["input_size"], mode="bilinear", align_corners=False)
                x = (x - card["mean"][0]) / card["std"][0]
                correct += int((model(x).argmax(1) == labels[i:i + 1000]).sum())
        assert correct / len(images) == pytest.approx(card["test_accuracy"], abs=2e-4)
    x = torch.randn(2, 1, 32, 32)
    for preset in ("epsilon-plus-flat", "zplus"):
        result = LRP(model, preset=preset, mean=card["mean"], std=card["std"], top_k=0.02)(x)
        assert result.relevance.shape == (2, 32, 32) and torch.isfinite(result.relevance).all()
        assert (result.relevance != 0).any()
