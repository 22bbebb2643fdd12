"""Weight files read safely: ``torch.load(..., weights_only=True)`` only, hashes checked, NaN refused.

Downloads (torchvision's ImageNet weights on a first run) say what they fetch and how big it
is, show a progress bar, are written beside their target, checked against the SHA-256
prefix their torch.hub name carries, and only then moved into place.
"""
from __future__ import annotations

import hashlib
import re
import sys
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from realtime_lrp.models.architectures import infer_architecture
from realtime_lrp.models.cards import IMAGENET_MEAN, IMAGENET_STD, build_from_card, read_card
from realtime_lrp.models.errors import WeightsError


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def hash_prefix(path: Path) -> str | None:
    """The SHA-256 prefix a torch.hub file name carries (``vgg16-397923af.pth`` → ``397923af``)."""
    match = re.search(r"-([a-f0-9]{6,})\.", Path(path).name)
    return match.group(1) if match else None


class DownloadCorrupt(OSError):
    """A download whose SHA-256 does not start with the prefix in its name."""


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def download(url: str, dest: Path, timeout: float = 10.0, notify: Callable[[str], None] | None = None,
             expected_mib: float | None = None, progress: bool = True) -> None:
    """Fetch ``url`` into ``dest``: announced with its size, shown with a progress bar, written
    beside ``dest``, hash-checked, then moved into place (synced, folder too).

    Every socket wait is bounded by ``timeout``; nothing is announced before the server
    answers, so an offline machine sees only its caller's one-line fallback. ``expected_mib``
    (torchvision's ``_file_size``, in MiB) gives the size said when the server does not send one.
    Raises ``OSError`` (:class:`DownloadCorrupt` for a hash mismatch); the cache is left as it was.
    """
    import urllib.request

    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

    from realtime_lrp.util.atomic import OutputError, commit, partial_path, remove

    notify = notify or _stderr
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_path(dest)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as fh:
            length = response.headers.get("Content-Length") if getattr(response, "headers", None) else None
            total = int(length) if length and length.isdigit() else None
            size = total / 1e6 if total else (expected_mib * 1.048576 if expected_mib else None)  # MB
            notify(f"downloading {dest.name}{f' ({size:,.1f} MB)' if size else ''} from {url} to {dest.parent}"
                   " (once; later runs read the cache)")
            bar = Progress("{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                           TimeRemainingColumn(), console=Console(stderr=True), disable=not progress)
            with bar:
                task = bar.add_task(dest.name, total=total)
                for block in iter(lambda: response.read(1 << 20), b""):
                    fh.write(block)
                    bar.advance(task, len(block))
        prefix = hash_prefix(dest)
        if prefix is not None and not sha256_file(tmp).startswith(prefix):
            raise DownloadCorrupt(f"the download of {url} does not match the SHA-256 prefix {prefix}")
        try:
            commit(tmp, dest)
        except OutputError as error:
            raise OSError(str(error)) from None
    finally:
        remove(tmp)


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
