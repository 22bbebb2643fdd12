"""Input sizes a model accepts, found by shape propagation under FakeTensorMode (nothing is computed)."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

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
    except (RuntimeError, ValueError, IndexError, AssertionError):  # torchvision's ViT checks its size by assert
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
        fixed = getattr(model, "image_size", None)  # torchvision's ViT says its size; MaxViT's card does
        built = (fixed, fixed) if isinstance(fixed, int) else tuple(card.get("input_size") or ())
        if least is None and len(built) == 2 and accepts_size(model, channels, built):  # ViT, MaxViT: one size
            raise ValueError(f"size {w}x{h} does not fit {card['arch']}: it takes {built[1]}x{built[0]}, the size "
                             "it was built for")
        need = f"at least {least}x{least}" if least else "a larger input"
        raise ValueError(f"size {w}x{h} is too small for {card['arch']}: it needs {need}")
