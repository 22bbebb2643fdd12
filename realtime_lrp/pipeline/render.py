"""Relevance → colour → frame: colour maps, stable scaling, layouts and the class label.

Colour maps are 256-entry BGR lookup tables, so the same table colours a numpy map on
the CPU or a torch map on the GPU (:func:`colorize` accepts either). A *centred* map
(``diverging``) spans ``[-scale, scale]`` with white at zero, for signed relevance; every
other map spans ``[0, scale]`` (negative relevance shows as zero), for positive-only presets.

The scale comes from :class:`StableScale`, an exponential moving average of a high
percentile of ``|R|`` per stream, so colours do not flicker the way per-frame min–max does.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence, TypeVar

import cv2
import numpy as np

LAYOUTS: tuple[str, ...] = ("overlay", "side", "heatmap")

# RGB anchors of the blue-white-red map (dark blue → white → dark red).
_DIVERGING_RGB = [
    (0.00, (30, 40, 140)),
    (0.20, (50, 110, 220)),
    (0.50, (255, 255, 255)),
    (0.80, (235, 70, 50)),
    (1.00, (140, 15, 20)),
]
_CV2_SKIP = {"hsv", "twilight", "twilight_shifted"}  # cyclic maps make no sense for magnitudes


@dataclass(frozen=True)
class Colormap:
    """A named 256x3 BGR lookup table; ``centered`` maps span [-scale, scale] around white."""

    name: str
    lut: np.ndarray
    centered: bool


def _diverging_lut() -> np.ndarray:
    t = np.linspace(0.0, 1.0, 256)
    xs = [a for a, _ in _DIVERGING_RGB]
    rgb = np.stack([np.interp(t, xs, [c[i] for _, c in _DIVERGING_RGB]) for i in range(3)], axis=1)
    return np.round(rgb[:, ::-1]).astype(np.uint8)


def _cv2_lut(code: int) -> np.ndarray:
    ramp = np.arange(256, dtype=np.uint8).reshape(256, 1)
    return cv2.applyColorMap(ramp, code).reshape(256, 3).copy()


@lru_cache(maxsize=None)
def colormaps() -> dict[str, Colormap]:
    """All colour maps by name: ``hot``, ``diverging`` and OpenCV's sequential maps."""
    maps = {
        "hot": Colormap("hot", _cv2_lut(cv2.COLORMAP_HOT), False),
        "diverging": Colormap("diverging", _diverging_lut(), True),
    }
    for attr in sorted(dir(cv2)):
        if attr.startswith("COLORMAP_"):
            name = attr[len("COLORMAP_"):].lower()
            if name not in maps and name not in _CV2_SKIP:
                maps[name] = Colormap(name, _cv2_lut(getattr(cv2, attr)), False)
    return maps


def get_colormap(cmap: str | Colormap) -> Colormap:
    """Look a colour map up by name; a :class:`Colormap` passes through."""
    if isinstance(cmap, Colormap):
        return cmap
    maps = colormaps()
    key = cmap.lower()
    if key not in maps:
        raise ValueError(f"unknown colour map {cmap!r}; choose one of {', '.join(maps)}")
    return maps[key]


def default_cmap(signed: bool) -> str:
    """``diverging`` for signed relevance, ``hot`` for positive-only."""
    return "diverging" if signed else "hot"


Array = TypeVar("Array")


def colorize(relevance: Array, scale: float | Sequence[float] | Array, cmap: str | Colormap) -> Array:
    """Colour a relevance map: ``(..., H, W)`` → ``(..., H, W, 3)`` BGR uint8.

    ``relevance`` is a numpy array or a torch tensor (the result stays on its device).
    ``scale`` is the value that gets the strongest colour: a number, or one per map of a
    batch ``(N, H, W)``. Values beyond it saturate.
    """
    cm = get_colormap(cmap)
    if isinstance(relevance, np.ndarray):
        r = relevance.astype(np.float32, copy=False)
        s = np.asarray(scale, dtype=np.float32)
        s = np.maximum(s.reshape(s.shape + (1, 1)) if s.ndim else s, 1e-30)
        v = r / s
        v = (v + 1.0) * 0.5 if cm.centered else v
        idx = np.clip(np.rint(v * 255.0), 0, 255).astype(np.uint8)
        return cm.lut[idx]
    import torch

    r = relevance.float()
    s = torch.as_tensor(scale, dtype=torch.float32, device=r.device)
    s = (s.view(-1, 1, 1) if s.ndim else s).clamp_min(1e-30)
    v = r / s
    v = (v + 1.0) * 0.5 if cm.centered else v
    idx = (v * 255.0).round_().clamp_(0, 255).long()
    lut = torch.from_numpy(cm.lut).to(r.device)
    return lut[idx]


class StableScale:
    """Per-stream colour scale: an EMA of the ``percentile`` of ``|R|``, one update per frame.

    Frames are folded in one at a time and in order, so the scale a frame gets does not
    depend on how frames were batched. ``momentum`` is the weight of the newest frame
    (0.1 settles in about 10 frames). A map whose percentile is 0 (a very sparse map)
    falls back to its maximum; an all-zero map leaves the scale unchanged.
    """

    def __init__(self, percentile: float = 99.5, momentum: float = 0.1) -> None:
        self.percentile = percentile
        self.momentum = momentum
        self.value: float | None = None

    def reset(self) -> None:
        """Forget the history (for a new stream or after a change of method)."""
        self.value = None

    @staticmethod
    def frame_scale(relevance: np.ndarray, percentile: float = 99.5) -> float:
        """The scale of one map on its own: a high percentile of ``|R|`` (its max if that is 0)."""
        a = np.abs(np.asarray(relevance, dtype=np.float32))
        with np.errstate(invalid="ignore"):  # a map with inf gives nan here, which update() skips
            q = float(np.percentile(a, percentile))
        return q if q > 0 else float(a.max())

    def update(self, relevance: np.ndarray) -> list[float]:
        """Fold in a batch ``(N, H, W)`` (or one ``(H, W)`` map); the scale for each frame."""
        maps = relevance[None] if relevance.ndim == 2 else relevance
        scales = []
        for r in maps:
            q = self.frame_scale(r, self.percentile)
            if np.isfinite(q) and q > 0:
                self.value = q if self.value is None else (1 - self.momentum) * self.value + self.momentum * q
            scales.append(self.value if self.value is not None else 1.0)
        return scales


def label_text(name: str, probability: float) -> str:
    """The label a frame carries: ``"T-shirt/top  97.3%"``."""
    return f"{name}  {100.0 * probability:.1f}%"


def draw_label(image: np.ndarray, text: str) -> np.ndarray:
    """Write ``text`` in the top-left corner on a dark box, sized to the image; in place."""
    h, w = image.shape[:2]
    font = cv2.FONT_HERSHEY_SIMPLEX
    scale = max(0.3, min(1.2, min(h, w) / 400.0))
    thickness = max(1, int(round(scale * 2)))
    (tw, th), base = cv2.getTextSize(text, font, scale, thickness)
    pad = max(2, int(round(4 * scale)))
    x1, y1 = min(w, tw + 2 * pad), min(h, th + base + 2 * pad)
    box = image[:y1, :x1]
    box[:] = (box.astype(np.uint16) * 2 // 5).astype(np.uint8)
    cv2.putText(image, text, (pad, pad + th), font, scale, (255, 255, 255), thickness, cv2.LINE_AA)
    return image


def to_bgr(frame: np.ndarray) -> np.ndarray:
    """A gray (2-D or one-channel), BGRA or BGR frame as the BGR frame it shows."""
    if frame.ndim == 2 or frame.shape[2] == 1:
        return cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
    if frame.shape[2] == 4:
        return cv2.cvtColor(frame, cv2.COLOR_BGRA2BGR)
    return frame


def render(frame: np.ndarray, relevance: np.ndarray, scale: float, cmap: str | Colormap,
           layout: str = "overlay", alpha: float = 0.6, label: str | None = None) -> np.ndarray:
    """Compose one output frame from an input frame and its relevance map.

    ``relevance`` is ``(h, w)`` at the processing size; it is resized bilinearly to the
    frame (so the whole frame is covered) and coloured with ``cmap`` at ``scale``.
    Layouts: ``overlay`` blends the map over the frame, each pixel weighted by
    ``alpha * |R| / scale`` so irrelevant areas keep the picture; ``side`` puts the frame
    and the map side by side (double width); ``heatmap`` is the map alone. The output is
    BGR uint8; ``label`` is drawn on it.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    frame = to_bgr(frame)
    h, w = frame.shape[:2]
    r = np.asarray(relevance, dtype=np.float32)
    if r.shape != (h, w):
        r = cv2.resize(r, (w, h), interpolation=cv2.INTER_LINEAR)
    heat = colorize(r, scale, cmap)
    if layout == "overlay":
        weight = np.clip(np.abs(r) / max(float(scale), 1e-30), 0.0, 1.0) * alpha
        out = frame.astype(np.float32) + weight[:, :, None] * (heat.astype(np.float32) - frame)
        out = np.clip(out + 0.5, 0, 255).astype(np.uint8)
    elif layout == "side":
        out = np.concatenate([frame, heat], axis=1)
    else:
        out = heat
    if label:
        draw_label(out, label)
    return out


def output_size(frame_size: tuple[int, int], layout: str) -> tuple[int, int]:
    """(width, height) of a rendered frame for an input of ``frame_size`` (width, height)."""
    w, h = frame_size
    return (2 * w, h) if layout == "side" else (w, h)


def contact_sheet(images: Sequence[np.ndarray], columns: int = 5, gap: int = 4) -> np.ndarray:
    """Tile BGR images into one picture, ``columns`` per row, each cell the size of the largest."""
    if not images:
        raise ValueError("no images for the sheet")
    images = [to_bgr(im) for im in images]
    ch = max(im.shape[0] for im in images)
    cw = max(im.shape[1] for im in images)
    cols = min(columns, len(images))
    rows = -(-len(images) // cols)
    sheet = np.full((rows * ch + (rows - 1) * gap, cols * cw + (cols - 1) * gap, 3), 255, np.uint8)
    for i, im in enumerate(images):
        y, x = (i // cols) * (ch + gap), (i % cols) * (cw + gap)
        sheet[y:y + im.shape[0], x:x + im.shape[1]] = im
    return sheet
