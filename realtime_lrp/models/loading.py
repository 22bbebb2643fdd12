"""``load_model``: a weights name or path to an eval-mode model and its card."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from realtime_lrp.models.architectures import ALL_ARCHS, TRANSFORMER_ARCHS
from realtime_lrp.models.cards import SHIPPED_NAME, shipped_weights
from realtime_lrp.models.errors import WeightsError
from realtime_lrp.models.files import load_weights_file
from realtime_lrp.models.imagenet import ImagenetUnavailable, load_imagenet


def _notify_stderr(message: str) -> None:
    print(message, file=sys.stderr)


def load_model(name_or_path: str | Path = "auto", device: str | torch.device = "cpu",
               arch: str | None = None,
               notify: Callable[[str], None] = _notify_stderr) -> tuple[nn.Module, dict[str, Any]]:
    """Return ``(model, card)``: an eval-mode fp32 model on ``device`` and its model card.

    ``name_or_path``: ``auto`` (ImageNet VGG16 if cached or downloadable, else the shipped
    model, announced through ``notify``), ``imagenet`` (VGG16, or ``imagenet:ARCH`` for any
    of :data:`ALL_ARCHS`, e.g. ``imagenet:resnet50``), ``shipped``, or a path to an
    exported ``.pt`` (card beside it) or a plain torchvision VGG, ResNet or AlexNet state dict.
    """
    name = str(name_or_path)
    if name == "auto":
        try:
            model, card = load_imagenet(arch or "vgg16", timeout=5.0, notify=notify)
            notify(f"weights: auto -> ImageNet {card['arch']} (torchvision, {card['weights']})")
        except ImagenetUnavailable as exc:
            if not shipped_weights().is_file():
                raise WeightsError(f"{exc}; the shipped model {shipped_weights()} is missing "
                                   "too") from None
            model, card = load_weights_file(shipped_weights())
            notify(f"weights: auto -> shipped {SHIPPED_NAME} ({card['dataset']}, "
                   f"{len(card['classes'])} classes): ImageNet {arch or 'vgg16'} {exc.why}")
    elif name == "imagenet" or name.startswith("imagenet:"):
        model, card = load_imagenet(name.partition(":")[2] or arch or "vgg16", notify=notify)
    elif name == "shipped":
        model, card = load_weights_file(shipped_weights(), arch)
    else:
        model, card = load_weights_file(Path(name).expanduser(), arch)
    if card["arch"] not in ALL_ARCHS + TRANSFORMER_ARCHS:
        raise WeightsError(f"unknown architecture {card['arch']!r}")
    return model.float().to(device).eval(), card
