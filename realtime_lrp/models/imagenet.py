"""torchvision's ImageNet weights, downloaded to the torch hub cache and read without torchvision's unpickler.

The cache is untrusted: a file's SHA-256 must start with the prefix its name carries.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from realtime_lrp.models.architectures import ALL_ARCHS
from realtime_lrp.models.cards import _TORCHVISION_FIELDS, IMAGENET_MEAN, IMAGENET_STD, arch_fields
from realtime_lrp.models.errors import WeightsError
from realtime_lrp.models.files import DownloadCorrupt, check_finite, download, hash_prefix, safe_load, sha256_file


def _imagenet_weights(arch: str) -> Any:
    from torchvision.models import get_model_weights

    if arch not in ALL_ARCHS:
        raise WeightsError(f"unknown architecture {arch!r}; choose one of {', '.join(ALL_ARCHS)}")
    return get_model_weights(arch).DEFAULT


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
        state = safe_load(cached)
        model = getattr(tv_models, arch)(weights=None)
        model.load_state_dict(state)
    except Exception as exc:  # a corrupt or unsafe cache file surfaces as one of many torch errors
        raise ImagenetUnavailable(
            f"cannot load cached ImageNet weights {cached}: {type(exc).__name__}; delete the file to "
            "download it again", "the cached file was rejected") from None
    check_finite(model.state_dict(), str(cached))
    metric = weights.meta.get("_metrics", {}).get("ImageNet-1K", {}).get("acc@1")
    card = {
        "arch": arch, **{k: _TORCHVISION_FIELDS[k] for k in arch_fields(arch)}, "num_classes": 1000,
        "classes": list(weights.meta["categories"]), "input_size": [224, 224],
        "input_channels": 3, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
        "dataset": "imagenet", "test_accuracy": metric / 100 if metric is not None else None,
        "command": None, "sha256": None, "format": "torchvision", "weights": str(weights),
    }
    return model, card
