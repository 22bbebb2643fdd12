"""The pipeline's own preprocessing and rendering as public one-image calls: :func:`prepare`, :func:`overlay`.

They run the code the frame pass runs (:func:`realtime_lrp.pipeline.preprocess.to_input`,
:func:`realtime_lrp.pipeline.render.compose`), so an explanation made through the API looks
like one made by ``rtlrp explain``::

    model, card = load_model("shipped")
    lrp = LRP(model, mean=card["mean"], std=card["std"])
    x = prepare("item.png", card)
    result = lrp(x)
    cv2.imwrite("overlay.png", overlay("item.png", result.relevance[0], card))
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from realtime_lrp.pipeline import render
from realtime_lrp.pipeline.preprocess import check_fit, default_fit, frames_to_tensor, processing_size
from realtime_lrp.pipeline.stream import StableScale


def as_bgr_frame(image: Any, rgb: bool = False) -> np.ndarray:
    """A path, a PIL image or a uint8 array (BGR as OpenCV reads it, or RGB with ``rgb=True``;
    gray, or with alpha) as an OpenCV frame. A bad input is a one-line ``ValueError``."""
    if isinstance(image, (str, Path)):
        import cv2

        path = Path(image)
        if not path.is_file():
            raise ValueError(f"{path}: no such file")
        frame = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if frame is None:
            raise ValueError(f"cannot read {path}: not an image, or corrupt")
        return frame
    if hasattr(image, "convert") and hasattr(image, "mode"):  # a PIL image
        image, rgb = np.asarray(image.convert("L" if image.mode in ("1", "L", "I;16") else "RGB")), True
    frame = np.asarray(image)
    if frame.dtype != np.uint8 or frame.ndim not in (2, 3) or (frame.ndim == 3 and frame.shape[2] not in (1, 3, 4)):
        raise ValueError(f"an image is a path, a PIL image or a uint8 (H, W[, 1|3|4]) array, not {frame.dtype}"
                         f" {frame.shape}")
    if rgb and frame.ndim == 3 and frame.shape[2] >= 3:
        frame = np.concatenate([frame[:, :, 2::-1], frame[:, :, 3:]], axis=2)
    return np.ascontiguousarray(frame)


def prepare(image: Any, card: Mapping[str, Any], *, size: tuple[int, int] | None = None, fit: str | None = None,
            device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, rgb: bool = False,
            model: nn.Module | None = None) -> torch.Tensor:
    """The model's ``x`` (1, C, H, W) for one image: the card's size (or ``size``, (H, W)),
    channels and normalisation, fitted with ``fit`` (default: the card's, see ``--fit``).

    ``image`` is a path, a PIL image or an array (see :func:`as_bgr_frame`). With ``model``,
    a size the model cannot take is refused in the CLI's one line.
    """
    hw = processing_size(card, size)
    if model is not None:
        from realtime_lrp.models.sizes import check_input_size

        check_input_size(model, dict(card), hw)
    fit = check_fit(fit) if fit is not None else default_fit(card)
    return frames_to_tensor([as_bgr_frame(image, rgb)], card, hw, device, dtype, fit)


def overlay(image: Any, relevance: torch.Tensor | np.ndarray, card: Mapping[str, Any], *, layout: str = "overlay",
            cmap: str | None = None, alpha: float = 0.6, fit: str | None = None, rgb: bool = False,
            legend: bool = False) -> np.ndarray:
    """The picture ``rtlrp explain`` draws for one image and its map (h, w): BGR uint8, scaled on its own.

    ``cmap`` defaults to ``signed`` for a map with negative values, else ``fire``.
    """
    frame = as_bgr_frame(image, rgb)
    r = torch.as_tensor(relevance).detach().float().cpu()
    r = r[0] if r.dim() == 3 else r
    name = cmap or render.default_cmap(bool((r < 0).any()))
    scale = StableScale.frame_scale(r[None]).item() or 1.0
    out = render.render(frame, r.numpy(), scale, name, layout, alpha,
                        fit=check_fit(fit) if fit is not None else default_fit(card))
    return render.draw_legend(out, name) if legend else out
