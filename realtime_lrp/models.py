"""Architectures (VGG, ResNet/ResNeXt/Wide-ResNet, AlexNet), model cards and safe weight loading.

``load_model`` resolves ``imagenet[:ARCH]``, ``auto``, ``shipped`` or a path to an eval-mode
model plus its model card (a dict). Weight files are only ever read with
``torch.load(..., weights_only=True)``, so no arbitrary object is unpickled.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

CARD_FORMAT = "realtime_lrp-v1"
SHIPPED_NAME = "fashion_mnist_vgg11_bn"

_CONFIGS: dict[str, list[int | str]] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [
        64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
        512, 512, 512, 512, "M", 512, 512, 512, 512, "M",
    ],
}
ARCHS: tuple[str, ...] = tuple(
    name for base in _CONFIGS for name in (base, f"{base}_bn")
)

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


class WeightsError(ValueError):
    """A weight file or model name that cannot be loaded; the message is one line."""


class VGG(nn.Module):
    """torchvision's VGG layout (``features`` / ``avgpool`` / ``classifier``), resizable."""

    def __init__(self, features: nn.Sequential, channels: int, num_classes: int,
                 hidden: int, pool: int, dropout: float = 0.5) -> None:
        super().__init__()
        self.features = features
        self.avgpool = nn.AdaptiveAvgPool2d((pool, pool))
        self.classifier = nn.Sequential(
            nn.Linear(channels * pool * pool, hidden),
            nn.ReLU(True),
            nn.Dropout(p=dropout),
            nn.Linear(hidden, hidden),
            nn.ReLU(True),
            nn.Dropout(p=dropout),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


def _init_weights(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def build_vgg(arch: str, num_classes: int = 1000, in_channels: int = 3, width: float = 1.0,
              hidden: int = 4096, pool: int = 7, dropout: float = 0.5) -> VGG:
    """Build a VGG; with the defaults its state dict matches torchvision's exactly.

    ``dropout`` (torchvision's ``dropout`` argument) only matters in training.
    """
    base, _, suffix = arch.partition("_")
    if base not in _CONFIGS or suffix not in ("", "bn"):
        raise WeightsError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHS)}")
    layers: list[nn.Module] = []
    channels = in_channels
    for item in _CONFIGS[base]:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            continue
        out = max(1, round(int(item) * width))
        layers.append(nn.Conv2d(channels, out, kernel_size=3, padding=1))
        if suffix == "bn":
            layers.append(nn.BatchNorm2d(out))
        layers.append(nn.ReLU(True))
        channels = out
    model = VGG(nn.Sequential(*layers), channels, num_classes, hidden, pool, dropout)
    _init_weights(model)
    return model


RESNET_ARCHS: tuple[str, ...] = (
    "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d", "resnext101_32x8d",
    "resnext101_64x4d", "wide_resnet50_2", "wide_resnet101_2",
)
ENGINE_ARCHS: tuple[str, ...] = ARCHS + RESNET_ARCHS + ("alexnet",)


def build_model(arch: str, num_classes: int = 1000, in_channels: int = 3, small_input: bool = False,
                width: float = 1.0, dropout: float = 0.5) -> nn.Module:
    """A randomly initialised model of any architecture the engine explains (``ENGINE_ARCHS``).

    VGGs come from :func:`build_vgg`; ResNets, ResNeXts, Wide-ResNets and AlexNet from
    torchvision, with their first conv rebuilt for ``in_channels`` other than 3.
    ``small_input`` gives a ResNet the CIFAR-style stem for 32-pixel images: a 3x3 stride-1
    first conv and no max-pool. ``width`` scales a VGG's or ResNet's channel counts (1:
    torchvision's); ``dropout`` is VGG's and AlexNet's (training only).
    """
    if arch in ARCHS:
        return build_vgg(arch, num_classes, in_channels, width, dropout=dropout)
    if arch not in ENGINE_ARCHS:
        raise WeightsError(f"unknown architecture {arch!r}; choose one of {', '.join(ENGINE_ARCHS)}")
    from torchvision import models as tv_models

    if arch == "alexnet":
        model = tv_models.alexnet(weights=None, num_classes=num_classes, dropout=dropout)
        if in_channels != 3:
            model.features[0] = nn.Conv2d(in_channels, 64, kernel_size=11, stride=4, padding=2)
        return model
    model = getattr(tv_models, arch)(weights=None, num_classes=num_classes)
    if width != 1.0:
        _scale_resnet(model, arch, width, num_classes)
    stem = model.bn1.num_features
    if small_input:
        model.conv1 = nn.Conv2d(in_channels, stem, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    elif in_channels != 3 or width != 1.0:
        model.conv1 = nn.Conv2d(in_channels, stem, kernel_size=7, stride=2, padding=3, bias=False)
    if small_input or in_channels != 3 or width != 1.0:
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    return model


def _scale_resnet(model: nn.Module, arch: str, width: float, num_classes: int) -> None:
    """Rebuild a torchvision ResNet's stages with ``width`` times its channels (the stem conv is left to the caller)."""
    block = type(model.layer1[0])
    depths = [len(getattr(model, f"layer{i}")) for i in range(1, 5)]
    model.inplanes, model.dilation = max(1, round(64 * width)), 1
    if model.inplanes * model.base_width // 64 == 0:  # a ResNeXt's grouped convs would have no channels
        raise WeightsError(f"width {width} is too small for {arch}")
    model.bn1 = nn.BatchNorm2d(model.inplanes)
    for i, depth in enumerate(depths):
        stage = model._make_layer(block, max(1, round(64 * 2 ** i * width)), depth, stride=1 if i == 0 else 2)
        setattr(model, f"layer{i + 1}", stage)
    model.fc = nn.Linear(model.inplanes, num_classes)
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")


CARD_FIELDS = ("arch", "num_classes", "classes", "input_size", "input_channels", "mean", "std",
               "dataset", "test_accuracy", "command", "sha256", "format")


def arch_fields(arch: str) -> tuple[str, ...]:
    """The card fields beside :data:`CARD_FIELDS` that rebuild ``arch``: a VGG's ``width``,
    ``hidden`` and ``pool``; a ResNet's ``width`` and ``small_input``; none for AlexNet."""
    if arch in ARCHS:
        return ("width", "hidden", "pool")
    if arch in RESNET_ARCHS:
        return ("width", "small_input")
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
        return Path(__file__).resolve().parent.parent / "weights"


def shipped_weights() -> Path:
    """Path of the shipped Fashion-MNIST model's weight file."""
    return weights_dir() / f"{SHIPPED_NAME}.pt"


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def validate_card(card: Any, source: str = "model card") -> dict[str, Any]:
    """Check a card's fields and types; raise WeightsError naming the first problem."""
    if not isinstance(card, dict):
        raise WeightsError(f"{source} is not a JSON object")
    missing = [k for k in CARD_FIELDS if k not in card]
    if missing:
        raise WeightsError(f"{source} lacks field(s): {', '.join(missing)}")
    if not isinstance(card["arch"], str) or card["arch"] not in ENGINE_ARCHS:
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


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Load a state dict (or a training checkpoint's model) safely with ``weights_only=True``."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weight file {path} does not exist")
    try:
        obj = safe_load(path)
    except Exception as exc:  # torch raises many types for corrupt, truncated or unsafe files
        raise WeightsError(f"{path} is not a readable weight file (corrupt, truncated or not "
                           f"a plain state dict: {type(exc).__name__})") from None
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not obj or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        raise WeightsError(f"{path} does not hold a state dict of tensors")
    check_finite(obj, str(path))
    return obj


def safe_load(path: Path) -> Any:
    """``torch.load`` with ``weights_only=True``; its warnings (raw pickles) are not for users."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.load(path, map_location="cpu", weights_only=True)


def check_finite(state: dict[str, torch.Tensor], source: str) -> None:
    """Raise :class:`WeightsError` if a floating-point tensor holds NaN or infinity."""
    for key, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise WeightsError(f"{source} holds NaN or infinite values in {key}: the file is corrupt or "
                               "its training diverged")


# ResNet family: bottleneck blocks, blocks per stage, groups, and a bottleneck's width over the stem's.
_RESNETS: dict[str, tuple[bool, tuple[int, ...], int, float]] = {
    "resnet18": (False, (2, 2, 2, 2), 1, 1), "resnet34": (False, (3, 4, 6, 3), 1, 1),
    "resnet50": (True, (3, 4, 6, 3), 1, 1), "resnet101": (True, (3, 4, 23, 3), 1, 1),
    "resnet152": (True, (3, 8, 36, 3), 1, 1), "resnext50_32x4d": (True, (3, 4, 6, 3), 32, 2),
    "resnext101_32x8d": (True, (3, 4, 23, 3), 32, 4), "resnext101_64x4d": (True, (3, 4, 23, 3), 64, 4),
    "wide_resnet50_2": (True, (3, 4, 6, 3), 1, 2), "wide_resnet101_2": (True, (3, 4, 23, 3), 1, 2),
}


def _infer_resnet(state: dict[str, torch.Tensor]) -> dict[str, Any]:
    conv1, fc, inner = state["conv1.weight"], state["fc.weight"], state.get("layer1.0.conv2.weight")
    if conv1.ndim != 4 or fc.ndim != 2 or inner is None or inner.ndim != 4:
        raise WeightsError("the weights are not a torchvision-style ResNet (conv1/layer1/fc shapes)")
    bottleneck = "layer1.0.conv3.weight" in state
    depths = tuple(len({k.split(".")[1] for k in state if k.startswith(f"layer{i}.")}) for i in range(1, 5))
    groups = inner.shape[0] // max(1, inner.shape[1])
    fits = [(abs(ratio - inner.shape[0] / conv1.shape[0]), arch) for arch, (neck, blocks, g, ratio)
            in _RESNETS.items() if (neck, blocks, g) == (bottleneck, depths, groups)]
    if not fits:
        raise WeightsError(f"the weights are a ResNet with {depths} blocks per stage and {groups} groups, "
                           "which matches no torchvision ResNet, ResNeXt or Wide-ResNet")
    return {
        "arch": min(fits)[1], "width": fc.shape[1] / (512 * (4 if bottleneck else 1)),
        "small_input": conv1.shape[-1] == 3, "num_classes": int(fc.shape[0]),
        "input_channels": int(conv1.shape[1]),
    }


def infer_architecture(state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Recover the architecture and its card fields (:func:`arch_fields`), class and channel
    counts from the shapes of a torchvision-style VGG, ResNet-family or AlexNet state dict."""
    if {"conv1.weight", "fc.weight"} <= state.keys():
        return _infer_resnet(state)
    alexnet = ("features.0.weight", "features.10.weight", "classifier.1.weight", "classifier.6.weight")
    if all(k in state for k in alexnet) and "classifier.0.weight" not in state:
        return {"arch": "alexnet", "num_classes": int(state["classifier.6.weight"].shape[0]),
                "input_channels": int(state["features.0.weight"].shape[1])}
    convs = sorted(((int(k.split(".")[1]), v) for k, v in state.items()
                    if k.startswith("features.") and k.split(".")[1].isdigit() and k.endswith(".weight")
                    and v.ndim == 4),
                   key=lambda item: item[0])  # never compare tensors (nested names repeat an index)
    head = [state.get(f"classifier.{i}.weight") for i in (0, 3, 6)]
    if not convs or any(w is None or w.ndim != 2 for w in head):
        raise WeightsError("the weights are not a torchvision-style VGG, ResNet or AlexNet "
                           "(features.*/classifier.* or conv1/layer*/fc keys missing)")
    depth = {8: "vgg11", 10: "vgg13", 13: "vgg16", 16: "vgg19"}.get(len(convs))
    if depth is None:
        raise WeightsError(f"the weights have {len(convs)} conv layers, which matches no VGG")
    batch_norm = any(k.endswith("running_mean") for k in state)
    last = convs[-1][1].shape[0]
    pool = round((head[0].shape[1] / last) ** 0.5)
    return {
        "arch": f"{depth}_bn" if batch_norm else depth,
        "width": convs[0][1].shape[0] / 64, "hidden": int(head[0].shape[0]), "pool": pool,
        "num_classes": int(head[2].shape[0]), "input_channels": int(convs[0][1].shape[1]),
    }


def build_from_card(card: dict[str, Any], dropout: float = 0.5) -> nn.Module:
    """The randomly initialised model a (validated) card describes; training builds its model
    this way too, so an export rebuilds exactly the network that was trained."""
    arch = card["arch"]
    if arch in ARCHS:
        return build_vgg(arch, card["num_classes"], card["input_channels"], card["width"], card["hidden"],
                         card["pool"], dropout)
    extra = {k: card[k] for k in arch_fields(arch)}
    return build_model(arch, card["num_classes"], card["input_channels"], dropout=dropout, **extra)


def _build_from(card: dict[str, Any], state: dict[str, torch.Tensor], source: str) -> nn.Module:
    model = build_from_card(card)
    expected = model.state_dict()
    for key, tensor in expected.items():
        if key not in state:
            raise WeightsError(f"{source} does not fit {card['arch']} with {card['num_classes']} "
                               f"classes: missing {key}")
        if state[key].shape != tensor.shape:
            raise WeightsError(f"{source} does not fit {card['arch']} with {card['num_classes']} "
                               f"classes: {key} is {tuple(state[key].shape)}, "
                               f"expected {tuple(tensor.shape)}")
    extra = sorted(set(state) - set(expected))
    if extra:
        raise WeightsError(f"{source} does not fit {card['arch']}: unexpected key {extra[0]}")
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()})
    return model


def _plain_card(info: dict[str, Any], path: Path) -> dict[str, Any]:
    from torchvision.models import VGG16_Weights

    imagenet = info["num_classes"] == 1000 and info["input_channels"] == 3
    return {
        **info,
        "classes": list(VGG16_Weights.IMAGENET1K_V1.meta["categories"]) if imagenet
        else [str(i) for i in range(info["num_classes"])],
        "input_size": [32, 32] if info.get("small_input") else [224, 224],
        "mean": list(IMAGENET_MEAN) if info["input_channels"] == 3 else [0.5] * info["input_channels"],
        "std": list(IMAGENET_STD) if info["input_channels"] == 3 else [0.5] * info["input_channels"],
        "dataset": "unknown (plain state dict without a model card)",
        "test_accuracy": None, "command": None, "sha256": sha256_file(path), "format": "state_dict",
    }


def load_weights_file(path: Path, arch: str | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Load an exported model (card ``NAME.json`` beside it) or a plain torchvision state dict."""
    path = Path(path)
    card_path = path.with_suffix(".json")
    card = read_card(card_path) if card_path.is_file() and path.is_file() else None
    state = read_state_dict(path)
    if card is not None:
        if card["sha256"] != sha256_file(path):
            raise WeightsError(f"{path} does not match the sha256 in {card_path} "
                               "(corrupt or replaced)")
    else:
        card = _plain_card(infer_architecture(state), path)
    if arch is not None and arch != card["arch"]:
        raise WeightsError(f"{path} holds {card['arch']} weights, not {arch}")
    return _build_from(card, state, str(path)), card


def _imagenet_weights(arch: str) -> Any:
    from torchvision.models import get_model_weights

    if arch not in ENGINE_ARCHS:
        raise WeightsError(f"unknown architecture {arch!r}; choose one of {', '.join(ENGINE_ARCHS)}")
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


def hash_prefix(path: Path) -> str | None:
    """The SHA-256 prefix a torch.hub file name carries (``vgg16-397923af.pth`` → ``397923af``)."""
    match = re.search(r"-([a-f0-9]{6,})\.", path.name)
    return match.group(1) if match else None


def check_hash_prefix(path: Path) -> None:
    """Raise :class:`ImagenetUnavailable` unless ``path``'s SHA-256 starts with the prefix in its name."""
    prefix = hash_prefix(path)
    if prefix is not None and not sha256_file(path).startswith(prefix):
        raise ImagenetUnavailable(
            f"{path} does not match the SHA-256 prefix {prefix} in its name (corrupt or replaced); "
            "delete it to download it again, or use --weights shipped or --weights PATH",
            "the cached file was rejected")


def download(url: str, dest: Path, timeout: float = 10.0) -> None:
    """Fetch ``url`` into ``dest``: written beside it, hash-checked, then moved into place.

    Every socket wait is bounded by ``timeout``; the torch.hub hash prefix in the file
    name is checked before the file replaces anything.
    """
    import urllib.request

    from realtime_lrp.atomic import partial_path, remove

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_path(dest)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as fh:
            for block in iter(lambda: response.read(1 << 20), b""):
                fh.write(block)
        prefix = hash_prefix(dest)
        if prefix is not None and not sha256_file(tmp).startswith(prefix):
            raise ImagenetUnavailable(f"the download of {url} does not match the SHA-256 prefix {prefix}",
                                      "the download was corrupt")
        os.replace(tmp, dest)
    finally:
        remove(tmp)


def _download_failure(error: OSError) -> str:
    """``not cached and offline`` for a network that cannot be reached, else ``download failed``."""
    import socket
    import urllib.error

    if isinstance(error, urllib.error.HTTPError):
        return f"not cached and the download failed (HTTP {error.code})"
    cause = getattr(error, "reason", error)
    if isinstance(cause, (socket.gaierror, socket.timeout, TimeoutError, ConnectionError)) or (
            isinstance(cause, OSError) and cause.errno in (101, 110, 111, 113)):
        return "not cached and offline"
    return f"not cached and the download failed ({type(cause).__name__})"


def load_imagenet(arch: str = "vgg16", timeout: float = 10.0) -> tuple[nn.Module, dict[str, Any]]:
    """torchvision's ImageNet weights (its ``DEFAULT``, the most accurate) for any ``arch`` of
    :data:`ENGINE_ARCHS`, downloaded once to the torch hub cache.

    The cached file is untrusted (whoever can write the cache could plant one): its
    SHA-256 must start with the prefix its name carries, and it is read with
    ``weights_only=True`` here rather than by torchvision's loader, which unpickles
    arbitrary objects. Failures raise :class:`ImagenetUnavailable` saying why.
    """
    from torchvision import models as tv_models

    weights = _imagenet_weights(arch)
    cached = imagenet_cache_file(arch)
    if not cached.is_file():
        try:
            download(weights.url, cached, timeout)
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


def _notify_stderr(message: str) -> None:
    print(message, file=sys.stderr)


def load_model(name_or_path: str | Path = "auto", device: str | torch.device = "cpu",
               arch: str | None = None,
               notify: Callable[[str], None] = _notify_stderr) -> tuple[nn.Module, dict[str, Any]]:
    """Return ``(model, card)``: an eval-mode fp32 model on ``device`` and its model card.

    ``name_or_path``: ``auto`` (ImageNet VGG16 if cached or downloadable, else the shipped
    model, announced through ``notify``), ``imagenet`` (VGG16, or ``imagenet:ARCH`` for any
    of :data:`ENGINE_ARCHS`, e.g. ``imagenet:resnet50``), ``shipped``, or a path to an
    exported ``.pt`` (card beside it) or a plain torchvision VGG, ResNet or AlexNet state dict.
    """
    name = str(name_or_path)
    if name == "auto":
        try:
            model, card = load_imagenet(arch or "vgg16", timeout=5.0)
            notify(f"weights: auto -> ImageNet {card['arch']} (torchvision, {card['weights']})")
        except ImagenetUnavailable as exc:
            if not shipped_weights().is_file():
                raise WeightsError(f"{exc}; the shipped model {shipped_weights()} is missing "
                                   "too") from None
            model, card = load_weights_file(shipped_weights())
            notify(f"weights: auto -> shipped {SHIPPED_NAME} ({card['dataset']}, "
                   f"{len(card['classes'])} classes): ImageNet {arch or 'vgg16'} {exc.why}")
    elif name == "imagenet" or name.startswith("imagenet:"):
        model, card = load_imagenet(name.partition(":")[2] or arch or "vgg16")
    elif name == "shipped":
        model, card = load_weights_file(shipped_weights(), arch)
    else:
        model, card = load_weights_file(Path(name).expanduser(), arch)
    if card["arch"] not in ENGINE_ARCHS:
        raise WeightsError(f"unknown architecture {card['arch']!r}")
    return model.float().to(device).eval(), card


MAX_SIDE = 4096  # larger processing sizes exhaust memory long before they help an explanation


def accepts_size(model: nn.Module, channels: int, size: tuple[int, int]) -> bool:
    """Whether ``model`` runs on a ``(1, channels, H, W)`` input, found by shape propagation alone.

    The forward pass runs under ``FakeTensorMode``: shapes are computed, nothing is
    allocated or multiplied, so this costs milliseconds even for sizes that would not fit
    in memory.
    """
    import logging

    from torch._subclasses.fake_tensor import FakeTensorMode

    log = logging.getLogger("torch._subclasses.fake_tensor")
    level = log.level
    log.setLevel(logging.CRITICAL)  # a failing shape check is the answer here, not an error to log
    param = next(model.parameters())
    try:
        with torch.no_grad(), FakeTensorMode(allow_non_fake_inputs=True):
            model(torch.empty(1, channels, *size, dtype=param.dtype, device=param.device))
        return True
    except (RuntimeError, ValueError, IndexError):
        return False
    finally:
        log.setLevel(level)


def smallest_size(model: nn.Module, channels: int, limit: int = 1024) -> int | None:
    """The smallest square side ``model`` accepts (binary search; assumes larger sides work too)."""
    if not accepts_size(model, channels, (limit, limit)):
        return None
    low, high = 1, limit
    while low < high:
        mid = (low + high) // 2
        if accepts_size(model, channels, (mid, mid)):
            high = mid
        else:
            low = mid + 1
    return low


def check_input_size(model: nn.Module, card: dict[str, Any], size: tuple[int, int]) -> None:
    """Raise a one-line ``ValueError`` unless ``model`` takes inputs of ``size`` (H, W)."""
    h, w = size
    if max(h, w) > MAX_SIDE:
        raise ValueError(f"size {w}x{h} is too large: each side can be at most {MAX_SIDE} pixels")
    channels = int(card["input_channels"])
    if not accepts_size(model, channels, (h, w)):
        least = smallest_size(model, channels)
        need = f"at least {least}x{least}" if least else "a larger input"
        raise ValueError(f"size {w}x{h} is too small for {card['arch']}: it needs {need}")
