"""torchvision's ImageNet weights, downloaded to the torch hub cache and read without torchvision's unpickler.

The cache is untrusted: a file's SHA-256 must start with the prefix its name carries.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from realtime_lrp.models.architectures import ALL_ARCHS, TRANSFORMER_ARCHS
from realtime_lrp.models.cards import _TORCHVISION_FIELDS, IMAGENET_MEAN, IMAGENET_STD, arch_fields
from realtime_lrp.models.errors import WeightsError
from realtime_lrp.models.files import DownloadCorrupt, check_finite, download, hash_prefix, safe_load, sha256_file

# The ImageNet weights of the architectures beyond ReLU CNNs: torchvision's enum member (its
# DEFAULT in torchvision 0.29) and the file its URL names, SHA-256 prefix included; pinned so
# that a newer torchvision's DEFAULT cannot swap the file a card describes.
MODERN_WEIGHTS: dict[str, tuple[str, str]] = {
    "mobilenet_v3_small": ("MobileNet_V3_Small_Weights.IMAGENET1K_V1", "mobilenet_v3_small-047dcff4.pth"),
    "mobilenet_v3_large": ("MobileNet_V3_Large_Weights.IMAGENET1K_V2", "mobilenet_v3_large-5c1a4163.pth"),
    "efficientnet_b0": ("EfficientNet_B0_Weights.IMAGENET1K_V1", "efficientnet_b0_rwightman-7f5810bc.pth"),
    "regnet_y_400mf": ("RegNet_Y_400MF_Weights.IMAGENET1K_V2", "regnet_y_400mf-e6988f5f.pth"),
    "regnet_y_800mf": ("RegNet_Y_800MF_Weights.IMAGENET1K_V2", "regnet_y_800mf-58fc7688.pth"),
    "convnext_tiny": ("ConvNeXt_Tiny_Weights.IMAGENET1K_V1", "convnext_tiny-983f1562.pth"),
    "densenet121": ("DenseNet121_Weights.IMAGENET1K_V1", "densenet121-a639ec97.pth"),
}


def _imagenet_weights(arch: str) -> Any:
    from torchvision import models as tv_models
    from torchvision.models import get_model_weights

    if arch not in ALL_ARCHS + TRANSFORMER_ARCHS:
        raise WeightsError(f"unknown architecture {arch!r}; choose one of {', '.join(ALL_ARCHS + TRANSFORMER_ARCHS)}")
    if arch not in MODERN_WEIGHTS:
        return get_model_weights(arch).DEFAULT
    (enum, member), name = MODERN_WEIGHTS[arch][0].split("."), MODERN_WEIGHTS[arch][1]
    weights = getattr(getattr(tv_models, enum), member, None)
    if weights is None or not weights.url.endswith("/" + name):
        raise WeightsError(f"this torchvision's {enum}.{member} does not name {name}, the file pinned for "
                           f"ImageNet {arch} (torchvision 0.29's); install torchvision 0.29")
    return weights


# DenseNet's published files name a layer's parts ``norm.1``/``conv.2``; torchvision's modules
# are ``norm1``/``conv2`` (its own loader renames them the same way).
_DENSENET_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")


def _torchvision_keys(arch: str, state: dict[str, Any]) -> dict[str, Any]:
    """``state`` with the key names torchvision's ``arch`` module uses today."""
    if not arch.startswith("densenet"):
        return state
    renamed = {}
    for key, value in state.items():
        match = _DENSENET_KEY.match(key)
        renamed[match.group(1) + match.group(2) if match else key] = value
    return renamed


def imagenet_cache_file(arch: str = "vgg16") -> Path:
    """Where torchvision keeps the ImageNet weights of ``arch`` in the torch hub cache."""
    url = _imagenet_weights(arch).url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


class ImagenetUnavailable(WeightsError):
    """ImageNet weights that cannot be used; ``why`` says which way (for ``auto``'s notice)."""

    def __init__(self, message: str, why: str) -> None:
        super().__init__(message)
        self.why = why


def check_hash_prefix(path: Path) -> None:
    """Raise :class:`ImagenetUnavailable` unless ``path``'s SHA-256 starts with the prefix in its name."""
    prefix = hash_prefix(path)
    if prefix is not None and not sha256_file(path).startswith(prefix):
        raise ImagenetUnavailable(
            f"{path} does not match the SHA-256 prefix {prefix} in its name (corrupt or replaced); "
            "delete it to download it again, or use --weights shipped or --weights PATH",
            "the cached file was rejected")


def _download_failure(error: OSError) -> str:
    """``not cached and offline`` for a network that cannot be reached, else ``download failed``."""
    import socket
    import urllib.error

    if isinstance(error, DownloadCorrupt):
        return "not cached and the download was corrupt"
    if isinstance(error, urllib.error.HTTPError):
        return f"not cached and the download failed (HTTP {error.code})"
    cause = getattr(error, "reason", error)
    if isinstance(cause, (socket.gaierror, socket.timeout, TimeoutError, ConnectionError)) or (
            isinstance(cause, OSError) and cause.errno in (101, 110, 111, 113)):
        return "not cached and offline"
    return f"not cached and the download failed ({type(cause).__name__})"


def load_imagenet(arch: str = "vgg16", timeout: float = 10.0,
                  notify: Callable[[str], None] | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """torchvision's ImageNet weights (its ``DEFAULT``, the most accurate) for any ``arch`` of
    :data:`ALL_ARCHS`, downloaded once to the torch hub cache.

    The cached file is untrusted (whoever can write the cache could plant one): its
    SHA-256 must start with the prefix its name carries, and it is read with
    ``weights_only=True`` here rather than by torchvision's loader, which unpickles
    arbitrary objects. A download is announced through ``notify`` with its size and shown
    with a progress bar. Failures raise :class:`ImagenetUnavailable` saying why.
    """
    from torchvision import models as tv_models

    weights = _imagenet_weights(arch)
    cached = imagenet_cache_file(arch)
    if not cached.is_file():
        try:
            download(weights.url, cached, timeout, notify=notify, expected_mib=weights.meta.get("_file_size"))
        except OSError as exc:
            why = _download_failure(exc)
            raise ImagenetUnavailable(
                f"ImageNet {arch} weights are {why}: expected in {cached.parent}; connect once to fetch "
                "them, or use --weights shipped or --weights PATH", why) from None
    check_hash_prefix(cached)
    try:
        state = _torchvision_keys(arch, safe_load(cached))
        model = getattr(tv_models, arch)(weights=None)
        model.load_state_dict(state)
    except Exception as exc:  # a corrupt or unsafe cache file surfaces as one of many torch errors
        raise ImagenetUnavailable(
            f"cannot load cached ImageNet weights {cached}: {type(exc).__name__}; delete the file to "
            "download it again", "the cached file was rejected") from None
    check_finite(model.state_dict(), str(cached))
    metric = weights.meta.get("_metrics", {}).get("ImageNet-1K", {}).get("acc@1")
    size = weights.meta["min_size"][0] if arch in TRANSFORMER_ARCHS else 224  # Swin V2: 256, the size it was trained at
    card = {
        "arch": arch, **{k: _TORCHVISION_FIELDS[k] for k in arch_fields(arch)}, "num_classes": 1000,
        "classes": list(weights.meta["categories"]), "input_size": [size, size],
        "input_channels": 3, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
        "dataset": "imagenet", "test_accuracy": metric / 100 if metric is not None else None,
        "command": None, "sha256": None, "format": "torchvision", "weights": str(weights),
    }
    return model, card
