"""Frames to model input, in torch: colour conversion, the frame's geometry, antialiased resize, normalisation.

A frame is an OpenCV image: ``H x W x 3`` BGR ``uint8``, ``H x W`` or ``H x W x 1`` gray, or
``H x W x 4`` BGRA. :func:`to_input` turns a uint8 batch ``(N, H, W, C)`` on any device into
the model's normalised ``(N, C', h, w)``: gray frames become BGR and BGRA frames lose their
alpha (:func:`to_bgr`), then the frame is fitted to the processing size (``--fit``):

- ``squash``: the whole frame, resized to the model's size (its aspect is lost);
- ``crop``: the centre crop with the model's aspect, resized (what ImageNet models were trained on);
- ``pad``: the whole frame, resized to fit inside the model's size, centred on the mean colour
  (letterbox: the padding is zero after normalisation).

Resizing is bilinear with antialiasing (a 1080p frame shrunk to 224 would alias otherwise).
Then the channels: gray (ITU-R BT.601 weights on R, G, B) for 1-channel models, RGB for
3-channel ones; then ``/255``, the card's mean and std. :class:`Fit` says where the model's
input lies in the frame, so the map can be shown over exactly that region.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

FITS: tuple[str, ...] = ("crop", "squash", "pad")

GRAY_WEIGHTS = (0.114, 0.587, 0.299)  # B, G, R: ITU-R BT.601, as OpenCV's BGR2GRAY


def parse_size(text: str | int | Sequence[int] | None) -> tuple[int, int] | None:
    """``"224"`` → (224, 224); ``"320x240"`` → (240, 320) as (H, W); None stays None.

    Sizes are written width x height, the way video sizes are; the result is (H, W),
    the way tensors are. Each side must be at least 8 pixels.
    """
    if text is None:
        return None
    if isinstance(text, int):
        h = w = text
    elif isinstance(text, str):
        parts = text.lower().replace("*", "x").split("x")
        try:
            values = [int(p) for p in parts]
        except ValueError:
            raise ValueError(f"size {text!r} is not N or WxH (for example 224 or 320x240)") from None
        if len(values) == 1:
            h = w = values[0]
        elif len(values) == 2:
            w, h = values
        else:
            raise ValueError(f"size {text!r} is not N or WxH (for example 224 or 320x240)")
    else:
        h, w = (int(v) for v in text)
    if h < 8 or w < 8:
        raise ValueError(f"size {w}x{h} is too small: each side needs at least 8 pixels")
    return h, w


def processing_size(card: Mapping[str, Any], size: tuple[int, int] | None = None) -> tuple[int, int]:
    """The (H, W) the model sees: ``size`` if given, else the card's ``input_size``."""
    if size is not None:
        return int(size[0]), int(size[1])
    h, w = card["input_size"]
    return int(h), int(w)


def default_fit(card: Mapping[str, Any]) -> str:
    """``crop`` for ImageNet models (trained on centre crops), else ``squash`` (how the cards'
    own models were trained: the whole image resized); a card may name its ``fit``."""
    if card.get("fit") in FITS:
        return str(card["fit"])
    return "crop" if card.get("dataset") == "imagenet" else "squash"


def check_fit(fit: str) -> str:
    """``fit`` if it is one of :data:`FITS`; else a one-line ``ValueError``."""
    if fit not in FITS:
        raise ValueError(f"unknown fit {fit!r}; choose one of {', '.join(FITS)}")
    return fit


Box = tuple[int, int, int, int]  # y0, y1, x0, x1


@dataclass(frozen=True)
class Fit:
    """Where the model's input lies in a frame: ``region`` of the frame (H, W) the model sees,
    and ``placed``, where that region lands in the model's (h, w) input (all of it but for ``pad``)."""

    mode: str
    frame: tuple[int, int]
    size: tuple[int, int]
    region: Box
    placed: Box

    @classmethod
    def of(cls, mode: str, frame: tuple[int, int], size: tuple[int, int]) -> "Fit":
        """The geometry of ``mode`` for frames of (H, W) ``frame`` and the model's (h, w) ``size``."""
        check_fit(mode)
        (fh, fw), (h, w) = frame, size
        region: Box = (0, fh, 0, fw)
        placed: Box = (0, h, 0, w)
        if mode == "crop":
            if fw * h > fh * w:  # wider than the model: crop the sides
                cw = max(1, min(fw, round(fh * w / h)))
                x0 = (fw - cw) // 2
                region = (0, fh, x0, x0 + cw)
            else:
                ch = max(1, min(fh, round(fw * h / w)))
                y0 = (fh - ch) // 2
                region = (y0, y0 + ch, 0, fw)
        elif mode == "pad":
            s = min(h / fh, w / fw)
            nh, nw = max(1, min(h, round(fh * s))), max(1, min(w, round(fw * s)))
            y0, x0 = (h - nh) // 2, (w - nw) // 2
            placed = (y0, y0 + nh, x0, x0 + nw)
        return cls(mode, (fh, fw), (h, w), region, placed)

    def describe(self) -> str | None:
        """One line on what the model sees of the frame, or None when it sees the frame as it is
        (the frame has the model's aspect). A model with no fixed aspect (adaptive pooling, as
        every architecture here) still sees the processing size: ``--size WxH`` sets its aspect."""
        (fh, fw), (h, w) = self.frame, self.size
        if abs(fw * h - fh * w) <= 0.01 * fh * w:
            return None
        y0, y1, x0, x1 = self.region
        if self.mode == "crop":
            return (f"--fit crop: the model sees the centre {x1 - x0}x{y1 - y0} of the {fw}x{fh} frames"
                    f" (resized to {w}x{h}); the rest is dimmed. --fit pad shows it all, --size WxH sets the aspect")
        if self.mode == "pad":
            py0, py1, px0, px1 = self.placed
            return (f"--fit pad: the model sees the whole {fw}x{fh} frame as {px1 - px0}x{py1 - py0},"
                    f" letterboxed into {w}x{h}")
        return (f"--fit squash: the whole {fw}x{fh} frame is stretched to {w}x{h} (another aspect);"
                " --fit crop or pad keeps the aspect")

    def scaled(self, k: int) -> "Fit":
        """The same geometry on the frame enlarged ``k`` times (pixels repeated)."""
        y0, y1, x0, x1 = self.region
        return Fit(self.mode, (self.frame[0] * k, self.frame[1] * k), self.size,
                   (y0 * k, y1 * k, x0 * k, x1 * k), self.placed)


def to_bgr(frames: Tensor) -> Tensor:
    """uint8 (N, H, W, C) frames, C 1 (gray), 3 (BGR) or 4 (BGRA), as the BGR frames they show."""
    c = frames.shape[-1]
    if c == 1:
        return frames.expand(*frames.shape[:-1], 3)
    if c == 4:
        return frames[..., :3]
    if c != 3:
        raise ValueError(f"a frame has {c} channels: expected 1 (gray), 3 (BGR) or 4 (BGRA)")
    return frames


def resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize of (N, C, H, W) to ``size``, antialiased when shrinking; unchanged at that size."""
    if tuple(x.shape[2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)


def to_input(frames: Tensor, channels: int, fit: Fit, mean: Tensor, std: Tensor,
             dtype: torch.dtype = torch.float32) -> Tensor:
    """uint8 (N, H, W, C) frames on any device → the model's normalised (N, channels, h, w) input.

    ``mean`` and ``std`` are (1, channels, 1, 1) float tensors on the frames' device. Pure
    device work with no host synchronisation (a CUDA graph can hold it).
    """
    x = to_bgr(frames).permute(0, 3, 1, 2).float()
    y0, y1, x0, x1 = fit.region
    if (y0, y1, x0, x1) != (0, x.shape[2], 0, x.shape[3]):
        x = x[:, :, y0:y1, x0:x1]
    if channels == 1:  # term by term: a sum over the strided channel axis costs 5x as much on the CPU
        (wb, wg, wr), (b, g, r) = GRAY_WEIGHTS, (x[:, i:i + 1] for i in range(3))
        x = b * wb + g * wg + r * wr
    else:
        x = x.flip(1)  # BGR → RGB
    py0, py1, px0, px1 = fit.placed
    x = (resize(x, (py1 - py0, px1 - px0)) / 255.0 - mean) / std
    if (py1 - py0, px1 - px0) != fit.size:
        x = F.pad(x, (px0, fit.size[1] - px1, py0, fit.size[0] - py1))  # zero: the mean colour
    return x.to(dtype)


def card_stats(card: Mapping[str, Any], device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
    """The card's mean and std as (1, C, 1, 1) float tensors on ``device``."""
    mean = torch.tensor(card["mean"], dtype=torch.float32, device=device).view(1, -1, 1, 1)
    std = torch.tensor(card["std"], dtype=torch.float32, device=device).view(1, -1, 1, 1)
    return mean, std


def as_frame(frame: np.ndarray) -> np.ndarray:
    """An OpenCV image as (H, W, C) uint8 (a 2-D gray image gets its channel axis)."""
    frame = np.asarray(frame)
    if frame.dtype != np.uint8:
        raise ValueError(f"frames are uint8 images, not {frame.dtype}")
    return frame[:, :, None] if frame.ndim == 2 else frame


def frames_to_tensor(frames: Sequence[np.ndarray], card: Mapping[str, Any],
                     size: tuple[int, int] | None = None, device: torch.device | str = "cpu",
                     dtype: torch.dtype = torch.float32, fit: str = "squash") -> Tensor:
    """A batch of OpenCV frames → normalised ``(N, C, H, W)`` tensor on ``device`` in ``dtype``.

    Frames may differ in size; each is fitted to the processing size with :func:`to_input`
    (the same code the frame pass runs). The uint8 pixels travel to the device first.
    """
    if len(frames) == 0:
        raise ValueError("no frames to convert")
    channels = int(card["input_channels"])
    hw = processing_size(card, size)
    mean, std = card_stats(card, device)
    out = []
    for frame in frames:
        f = torch.from_numpy(np.ascontiguousarray(as_frame(frame))).to(device, non_blocking=True)[None]
        out.append(to_input(f, channels, Fit.of(fit, tuple(f.shape[1:3]), hw), mean, std, dtype))
    return torch.cat(out).contiguous()
