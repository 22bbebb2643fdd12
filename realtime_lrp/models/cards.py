"""Model cards: the JSON beside a weight file that says what to rebuild and how to feed it."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from torch import nn

from realtime_lrp.models.architectures import (ALL_ARCHS, ARCHS, RESNET_ARCHS, SMALL_INPUT_ARCHS, TRANSFORMER_ARCHS,
                                                build_model, build_vgg)
from realtime_lrp.models.errors import WeightsError

CARD_FORMAT = "realtime_lrp-v1"


SHIPPED_NAME = "fashion_mnist_vgg11_bn"


IMAGENET_MEAN = [0.485, 0.456, 0.406]


IMAGENET_STD = [0.229, 0.224, 0.225]


CARD_FIELDS = ("arch", "num_classes", "classes", "input_size", "input_channels", "mean", "std",
               "dataset", "test_accuracy", "command", "sha256", "format")


def arch_fields(arch: str) -> tuple[str, ...]:
    """The card fields beside :data:`CARD_FIELDS` that rebuild ``arch``: a VGG's ``width``,
    ``hidden`` and ``pool``; a ResNet's ``width`` and ``small_input``; the other torchvision
    CNNs' ``small_input``; none for AlexNet."""
    if arch in ARCHS:
        return ("width", "hidden", "pool")
    if arch in RESNET_ARCHS:
        return ("width", "small_input")
    if arch in SMALL_INPUT_ARCHS:
        return ("small_input",)
    return ()


_TORCHVISION_FIELDS = {"width": 1.0, "hidden": 4096, "pool": 7, "small_input": False}


def weights_dir() -> Path:
    """The shipped weights' folder: ``$RTLRP_WEIGHTS_DIR``, else the installed ``realtime_lrp.weights``
    package data, else (a source tree on ``PYTHONPATH``) the repository's ``weights/``."""
    override = os.environ.get("RTLRP_WEIGHTS_DIR")
    if override:
        return Path(override)
    from importlib import resources

    try:
        return Path(str(resources.files("realtime_lrp.weights")))
    except ModuleNotFoundError:
        return Path(__file__).resolve().parents[2] / "weights"


def shipped_weights() -> Path:
    """Path of the shipped Fashion-MNIST model's weight file."""
    return weights_dir() / f"{SHIPPED_NAME}.pt"


def validate_card(card: Any, source: str = "model card") -> dict[str, Any]:
    """Check a card's fields and types; raise WeightsError naming the first problem."""
    if not isinstance(card, dict):
        raise WeightsError(f"{source} is not a JSON object")
    missing = [k for k in CARD_FIELDS if k not in card]
    if missing:
        raise WeightsError(f"{source} lacks field(s): {', '.join(missing)}")
    if not isinstance(card["arch"], str) or card["arch"] not in ALL_ARCHS + TRANSFORMER_ARCHS:
        raise WeightsError(f"{source} has an invalid 'arch' field")
    fields = arch_fields(card["arch"])
    missing = [k for k in fields if k not in card]
    if missing:
        raise WeightsError(f"{source} lacks field(s) of {card['arch']}: {', '.join(missing)}")
    channels = card["input_channels"]
    checks = {
        "num_classes": isinstance(card["num_classes"], int) and card["num_classes"] > 0,
        "classes": isinstance(card["classes"], list) and len(card["classes"]) == card["num_classes"],
        "input_size": isinstance(card["input_size"], list) and len(card["input_size"]) == 2
        and all(isinstance(v, int) and v > 0 for v in card["input_size"]),
        "input_channels": isinstance(channels, int) and channels > 0,
        "mean": isinstance(card["mean"], list) and len(card["mean"]) == channels,
        "std": isinstance(card["std"], list) and len(card["std"]) == channels
        and all(isinstance(v, (int, float)) and v > 0 for v in card["std"]),
    }
    kinds = {
        "width": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0,
        "hidden": lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0,
        "pool": lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0,
        "small_input": lambda v: isinstance(v, bool),
    }
    checks.update({name: kinds[name](card[name]) for name in fields})
    bad = [name for name, ok in checks.items() if not ok]
    if bad:
        raise WeightsError(f"{source} has an invalid {bad[0]!r} field")
    return card


def read_card(path: Path) -> dict[str, Any]:
    """Read and validate the JSON model card at ``path``."""
    try:
        card = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WeightsError(f"cannot read model card {path}: {type(exc).__name__}") from None
    return validate_card(card, f"model card {path}")


def build_from_card(card: dict[str, Any], dropout: float = 0.5) -> nn.Module:
    """The randomly initialised model a (validated) card describes; training builds its model
    this way too, so an export rebuilds exactly the network that was trained."""
    arch = card["arch"]
    if arch in ARCHS:
        return build_vgg(arch, card["num_classes"], card["input_channels"], card["width"], card["hidden"],
                         card["pool"], dropout)
    extra = {k: card[k] for k in arch_fields(arch)}
    return build_model(arch, card["num_classes"], card["input_channels"], dropout=dropout, **extra)
