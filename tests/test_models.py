"""Architectures, ``load_model`` resolution, and safe, one-line failures for bad weight files."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torchvision
from click.testing import CliRunner

from realtime_lrp import load_model
from realtime_lrp import models
from realtime_lrp.models import (ARCHS, WeightsError, build_vgg, infer_architecture,
                                 load_weights_file, sha256_file)


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
            "sha256": sha256_file(path), "format": models.CARD_FORMAT}
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

    def fail(url: str, dest: Path, timeout: float = 0) -> None:
        raise OSError("offline")

    monkeypatch.setattr(models, "download", fail)


def test_imagenet_offline_is_one_line_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _offline(monkeypatch, tmp_path)
    with pytest.raises(WeightsError, match="not cached") as info:
        load_model("imagenet")
    assert "\n" not in str(info.value) and "--weights" in str(info.value)


def test_corrupt_imagenet_cache_is_one_line_error(monkeypatch: pytest.MonkeyPatch,
                                                  tmp_path: Path) -> None:
    _offline(monkeypatch, tmp_path)
    cached = models.imagenet_cache_file("vgg16")
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"truncated download")
    with pytest.raises(WeightsError, match="does not match the SHA-256 prefix 397923af.*delete it"):
        load_model("imagenet")


def test_auto_falls_back_to_shipped_offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _offline(monkeypatch, tmp_path)
    monkeypatch.setenv("RTLRP_WEIGHTS_DIR", str(tmp_path))
    shipped = _exported(tmp_path)
    shipped.rename(models.shipped_weights())
    shipped.with_suffix(".json").rename(models.shipped_weights().with_suffix(".json"))
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

    from realtime_lrp.cli import load_weights, weights_option

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
