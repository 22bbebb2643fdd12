"""``rtlrp export``: fp16 weights + card, round trip through ``load_model``, the shipped model."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from tiny_data import TINY, make_imagefolder

from realtime_lrp import load_model
from realtime_lrp.apps.train.loop import load_checkpoint
from realtime_lrp.cli import cli
from realtime_lrp.models.architectures import build_vgg
from realtime_lrp.models.cards import CARD_FIELDS, shipped_weights
from realtime_lrp.models.datasets import fashion_mnist_dir, read_idx_gz


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("export")
    folder = make_imagefolder(root / "data")
    out = root / "run"
    result = CliRunner().invoke(cli, ["train", "--dataset", f"imagefolder:{folder}", *TINY,
                                      "--epochs", "2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return folder, out


def _accuracy_from_card_alone(card: dict, model: torch.nn.Module, images: torch.Tensor,
                              labels: torch.Tensor) -> float:
    """Card preprocessing, written out independently: bilinear resize, then mean/std."""
    x = F.interpolate(images, size=tuple(card["input_size"]), mode="bilinear", align_corners=False)
    x = (x - torch.tensor(card["mean"]).view(1, -1, 1, 1)) / torch.tensor(card["std"]).view(1, -1, 1, 1)
    with torch.no_grad():
        return (model(x).argmax(1) == labels).float().mean().item()


def test_export_round_trip(run: tuple[Path, Path], tmp_path: Path) -> None:
    folder, out = run
    weights = tmp_path / "weights" / "tiny.pt"
    result = CliRunner().invoke(cli, ["export", str(out), "--out", str(weights)])
    assert result.exit_code == 0, result.output
    card = json.loads(weights.with_suffix(".json").read_text())
    assert set(CARD_FIELDS) <= set(card)
    assert card["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert card["classes"] == ["bright", "dark"] and card["input_size"] == [32, 32]
    assert card["input_channels"] == 3 and card["command"].startswith("rtlrp train")
    state = torch.load(weights, weights_only=True)
    assert {v.dtype for v in state.values() if v.is_floating_point()} == {torch.float16}

    model, loaded = load_model(weights)
    assert loaded == card and not model.training
    assert next(model.parameters()).dtype == torch.float32
    reference = build_vgg("vgg11_bn", 2, 3, 0.0625, 16, 1)
    reference.load_state_dict(load_checkpoint(out)["model"])
    reference.eval()
    x = torch.randn(4, 3, 32, 32)
    torch.testing.assert_close(model(x), reference(x), rtol=2e-2, atol=2e-2)

    images, labels = [], []
    for label, name in enumerate(card["classes"]):
        for path in sorted((folder / "val" / name).glob("*.png")):
            rgb = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
            images.append(torch.from_numpy(rgb).permute(2, 0, 1).float() / 255)
            labels.append(label)
    acc = _accuracy_from_card_alone(card, model, torch.stack(images), torch.tensor(labels))
    assert acc == pytest.approx(card["test_accuracy"], abs=1e-6)


def test_export_errors_are_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "checkpoint.pt"
    bad.write_bytes(b"\x80\x02garbage")
    result = CliRunner().invoke(cli, ["export", str(bad), "--out", str(tmp_path / "w.pt")])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert len(result.stderr.strip().splitlines()) == 1


def test_export_needs_a_pt_name(run: tuple[Path, Path], tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["export", str(run[1]), "--out", str(tmp_path / "w.bin")])
    assert result.exit_code == 1 and ".pt" in result.stderr


shipped = pytest.mark.skipif(not shipped_weights().is_file(), reason="shipped weights not built")


@shipped
def test_shipped_model_card() -> None:
    path = shipped_weights()
    assert path.stat().st_size <= 20 * 1024 * 1024
    model, card = load_model("shipped")
    assert card["dataset"] == "fashion-mnist" and card["test_accuracy"] >= 0.93
    assert "rtlrp train" in card["command"] and "--amp" in card["command"]
    assert card["input_channels"] == 1 and len(card["classes"]) == 10
    assert model(torch.zeros(1, 1, *card["input_size"])).shape == (1, 10)


@shipped
@pytest.mark.skipif(fashion_mnist_dir() is None,
                    reason="Fashion-MNIST files absent: install the Debian package "
                           "dataset-fashion-mnist")
def test_shipped_accuracy_reproduces_from_card() -> None:
    model, card = load_model("shipped")
    root = fashion_mnist_dir()
    images = torch.from_numpy(read_idx_gz(root / "t10k-images-idx3-ubyte.gz").copy())
    labels = torch.from_numpy(read_idx_gz(root / "t10k-labels-idx1-ubyte.gz").astype(np.int64))
    acc = _accuracy_from_card_alone(card, model, images[:, None].float() / 255, labels)
    assert acc >= 0.93
    assert acc == pytest.approx(card["test_accuracy"], abs=2e-4)
