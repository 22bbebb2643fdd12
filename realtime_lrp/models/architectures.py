"""The architectures the engine explains or trains, built with random weights, and recovered from a state dict's shapes.

VGGs are built here (torchvision's layout, resizable); ResNets, ResNeXts, Wide-ResNets, AlexNet,
MobileNetV3, EfficientNet, RegNetY, ConvNeXt and DenseNet come from torchvision, with the stem
rebuilt for other channel counts or small inputs.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from realtime_lrp.models.errors import WeightsError

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


# torchvision CNNs beyond ReLU (gates, other activations, LayerNorm, concatenation).
MODERN_ARCHS: tuple[str, ...] = (
    "mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_b0", "regnet_y_400mf", "regnet_y_800mf",
    "convnext_tiny", "densenet121",
)


# torchvision's transformers the engine explains (cp-lrp, attnlrp): built and loaded (``imagenet:ARCH``,
# ``--arch`` of bench), not trained (vit_h_14 is left out: 518 px and 633 M parameters).
TRANSFORMER_ARCHS: tuple[str, ...] = (
    "vit_b_16", "vit_b_32", "vit_l_16", "vit_l_32", "swin_t", "swin_s", "swin_b", "swin_v2_t", "swin_v2_s",
    "swin_v2_b", "maxvit_t",
)


# What `rtlrp train`, model cards and ``imagenet:ARCH`` accept; the engine explains ENGINE_ARCHS
# for sure, the others as far as its rules reach.
ALL_ARCHS: tuple[str, ...] = ENGINE_ARCHS + MODERN_ARCHS


# Architectures with a ``small_input`` stem (card field and --small-input).
SMALL_INPUT_ARCHS: tuple[str, ...] = RESNET_ARCHS + MODERN_ARCHS


def build_model(arch: str, num_classes: int = 1000, in_channels: int = 3, small_input: bool = False,
                width: float = 1.0, dropout: float = 0.5) -> nn.Module:
    """A randomly initialised model of any architecture of :data:`ALL_ARCHS`.

    VGGs come from :func:`build_vgg`; the others from torchvision, with their first conv
    rebuilt for ``in_channels`` other than 3. ``small_input`` gives a ResNet the
    CIFAR-style stem for 32-pixel images: a 3x3 stride-1 first conv and no max-pool; the
    other families' stems lose their downsampling too (:func:`_small_stem`).
    ``width`` scales a VGG's or ResNet's channel counts (1: torchvision's); ``dropout`` is
    VGG's and AlexNet's (training only).
    """
    if arch in ARCHS:
        return build_vgg(arch, num_classes, in_channels, width, dropout=dropout)
    from torchvision import models as tv_models

    if arch in TRANSFORMER_ARCHS:
        if small_input or in_channels != 3:
            raise WeightsError(f"{arch} is built for 3-channel images at its own size only")
        model = getattr(tv_models, arch)(weights=None, num_classes=num_classes)
        if isinstance(model, tv_models.VisionTransformer):
            # torchvision zeroes a ViT's head (a fine-tuning start): every logit and every map of a random ViT is 0,
            # which the bench would time (a filter that keeps everything) and a test would pass
            nn.init.trunc_normal_(model.heads.head.weight, std=0.02)
        return model
    if arch not in ALL_ARCHS:
        raise WeightsError(f"unknown architecture {arch!r}; choose one of {', '.join(ALL_ARCHS + TRANSFORMER_ARCHS)}")

    if arch in MODERN_ARCHS:
        model = getattr(tv_models, arch)(weights=None, num_classes=num_classes)
        if small_input or in_channels != 3:
            _small_stem(model, arch, in_channels, small_input)
        return model

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


def _small_stem(model: nn.Module, arch: str, in_channels: int, small_input: bool) -> None:
    """Rebuild the first conv of a :data:`MODERN_ARCHS` model for ``in_channels``; with
    ``small_input``, the stem stops downsampling as the ResNet's CIFAR stem does, the body
    stays torchvision's: DenseNet gets a 3x3 stride-1 conv without its max-pool and ConvNeXt
    a 3x3 stride-1 conv for its 4x4 patches (total stride 8: 32 px reach the head as 4x4);
    MobileNetV3, EfficientNet and RegNet a stride-1 stem conv (total stride 16, 2x2 at 32 px:
    their stride-1 first blocks at full resolution would cost 5 times more to train)."""
    name, first = next((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d))
    kernel, stride, padding = first.kernel_size, first.stride, first.padding
    if small_input and arch in ("densenet121", "convnext_tiny"):
        kernel, stride, padding = (3, 3), (1, 1), (1, 1)
    elif small_input:
        stride = (1, 1)
    conv = nn.Conv2d(in_channels, first.out_channels, kernel, stride, padding, bias=first.bias is not None)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out")
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent), leaf, conv)
    if small_input and arch == "densenet121":
        model.features.pool0 = nn.Identity()


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
