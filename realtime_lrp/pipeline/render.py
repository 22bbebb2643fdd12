"""Relevance → colour → frame, in torch: colour maps, the map over the frame, layouts; the label and legend.

Colour maps are 256-entry BGR lookup tables (built once, with OpenCV's own maps), indexed by
a torch map on its device (:func:`colour`). A *centred* map (``diverging``) spans
``[-scale, scale]`` with white at zero, for signed relevance; every other map spans
``[0, scale]`` (negative relevance shows as zero), for positive-only presets. The scale is
the stream's :class:`realtime_lrp.pipeline.stream.StableScale`. :func:`compose` is the device
half of the frame pass; OpenCV draws only text (the label, the legend) on the finished frame.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from realtime_lrp.pipeline.preprocess import Fit, as_frame, to_bgr

LAYOUTS: tuple[str, ...] = ("overlay", "side", "heatmap")

# RGB anchors of the blue-white-red map (dark blue → white → dark red).
_DIVERGING_RGB = [
    (0.00, (30, 40, 140)),
    (0.20, (50, 110, 220)),
    (0.50, (255, 255, 255)),
    (0.80, (235, 70, 50)),
    (1.00, (140, 15, 20)),
]
# RGB anchors of the overlay defaults, chosen for contrast on light and dark frames alike:
# neither ends in white or black where relevance is strong (hot's white vanishes on a pale
# item, the diverging map's dark red and blue on a dark one; docs/contrast.png shows both).
_FIRE_RGB = [
    (0.00, (0, 0, 0)),
    (0.50, (200, 0, 40)),
    (0.80, (255, 50, 0)),
    (1.00, (255, 160, 0)),
]
_SIGNED_RGB = [
    (0.00, (0, 70, 230)),
    (0.30, (120, 170, 255)),
    (0.50, (255, 255, 255)),
    (0.70, (255, 140, 120)),
    (1.00, (220, 0, 0)),
]
_CV2_SKIP = {"hsv", "twilight", "twilight_shifted"}  # cyclic maps make no sense for magnitudes


@dataclass(frozen=True)
class Colormap:
    """A named 256x3 BGR lookup table; ``centered`` maps span [-scale, scale] around white."""

    name: str
    lut: np.ndarray
    centered: bool


def _anchored_lut(anchors: list[tuple[float, tuple[int, int, int]]]) -> np.ndarray:
    """A BGR table interpolated linearly between RGB ``anchors`` (position in [0, 1], colour)."""
    t = np.linspace(0.0, 1.0, 256)
    xs = [a for a, _ in anchors]
    rgb = np.stack([np.interp(t, xs, [c[i] for _, c in anchors]) for i in range(3)], axis=1)
    return np.round(rgb[:, ::-1]).astype(np.uint8)


def _cv2_lut(code: int) -> np.ndarray:
    ramp = np.arange(256, dtype=np.uint8).reshape(256, 1)
    return cv2.applyColorMap(ramp, code).reshape(256, 3).copy()


@lru_cache(maxsize=None)
def colormaps() -> dict[str, Colormap]:
    """All colour maps by name: ``fire``, ``signed`` (the defaults), ``hot``, ``diverging`` and
    OpenCV's sequential maps."""
    maps = {
        "fire": Colormap("fire", _anchored_lut(_FIRE_RGB), False),
        "signed": Colormap("signed", _anchored_lut(_SIGNED_RGB), True),
        "hot": Colormap("hot", _cv2_lut(cv2.COLORMAP_HOT), False),
        "diverging": Colormap("diverging", _anchored_lut(_DIVERGING_RGB), True),
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
    """``signed`` for signed relevance, ``fire`` for positive-only: the maps that stay visible over
    light and dark frames."""
    return "signed" if signed else "fire"




def lut_tensor(cmap: str | Colormap, device: torch.device | str = "cpu") -> Tensor:
    """The colour map's 256x3 BGR table as a uint8 tensor on ``device``."""
    return torch.from_numpy(get_colormap(cmap).lut).to(device)


def colour(relevance: Tensor, scale: Tensor, lut: Tensor, centered: bool) -> Tensor:
    """Colour maps (N, H, W) with one scale per map (N,): (N, H, W, 3) BGR uint8 from ``lut``.

    ``scale`` gets the strongest colour and values beyond it saturate; a centred map spans
    [-scale, scale] around its middle entry.
    """
    v = relevance.float() / scale.float().clamp_min(1e-30).view(-1, 1, 1)
    v = (v + 1.0) * 0.5 if centered else v
    index = (v * 255.0).round().clamp(0, 255).long()
    return lut.index_select(0, index.flatten()).view(*index.shape, lut.shape[-1])  # 2.5x lut[index] on the CPU


def frame_map(relevance: Tensor, fit: Fit) -> Tensor:
    """Maps (N, h, w) at the model's size → (N, H, W) over the frame: bilinear over the region the
    model saw (``fit``), zero elsewhere (outside a crop); a letterbox's padding is cut off first."""
    py0, py1, px0, px1 = fit.placed
    r = relevance[:, py0:py1, px0:px1] if (py1 - py0, px1 - px0) != tuple(relevance.shape[1:]) else relevance
    y0, y1, x0, x1 = fit.region
    if tuple(r.shape[1:]) != (y1 - y0, x1 - x0):
        r = F.interpolate(r[:, None].float(), size=(y1 - y0, x1 - x0), mode="bilinear", align_corners=False)[:, 0]
    if (y0, y1, x0, x1) != (0, fit.frame[0], 0, fit.frame[1]):
        r = F.pad(r, (x0, fit.frame[1] - x1, y0, fit.frame[0] - y1))
    return r.float()


FRAME_MARGIN = 30.0  # under full weight the frame spans [30, 225]: no white or black for colours to vanish on
DARKEN = 1.0  # under weight w a pixel of brightness b (of 1) is darkened by DARKEN * w * b: heat stays saturated on light items
LIGHT_BOOST = 1.0  # the colour's weight grows by this times the pixel's mean brightness (of 1): pale items show weak heat too
OUTSIDE_DIM = 0.5  # what the model did not see (outside a crop) is shown at half brightness
PANELS = "panels"  # overlay, heatmap and frame side by side: what ``rtlrp explain`` writes


def compose(frames: Tensor, relevance: Tensor, scale: Tensor, lut: Tensor, centered: bool, layout: str,
            alpha: float, fit: Fit) -> Tensor:
    """The rendered frames: uint8 BGR (N, H, W, 3) frames and their maps (N, h, w) → (N, H, W', 3).

    The map is shown over the region the model saw (:func:`frame_map`). Layouts: ``overlay``
    moves each pixel towards its colour by ``w = min(alpha * v * (1 + LIGHT_BOOST * b), 1)``,
    ``v = min(|R| / scale, 1)``, ``b`` the pixel's mean brightness (of 1), so irrelevant
    areas keep the picture; the colour is the map's at ``(1 + v) / 2`` of its strong half (of
    either sign), and the pixel's range is pulled in by ``w`` * :data:`FRAME_MARGIN` first, then
    darkened by ``w`` * :data:`DARKEN` times its brightness (light pixels most, black not at all),
    so the colour contrasts with light and dark frames alike; ``side`` puts the frame left of the map; ``heatmap`` is the map
    alone; :data:`PANELS` is overlay, heatmap and frame side by side. Outside a crop the
    frame is dimmed and the map has the colour of zero. Pure device work, no host sync.
    """
    if layout not in LAYOUTS + (PANELS,):
        raise ValueError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    r = frame_map(relevance, fit)
    f = frames
    if fit.region != (0, fit.frame[0], 0, fit.frame[1]):
        y0, y1, x0, x1 = fit.region
        ys = torch.arange(fit.frame[0], device=frames.device)
        xs = torch.arange(fit.frame[1], device=frames.device)
        inside = ((ys >= y0) & (ys < y1))[:, None] & ((xs >= x0) & (xs < x1))[None, :]
        f = torch.where(inside[None, :, :, None], frames, (frames.float() * OUTSIDE_DIM).to(torch.uint8))
    parts = []
    if layout in ("overlay", PANELS):
        v = (r.abs() / scale.float().clamp_min(1e-30).view(-1, 1, 1)).clamp(0, 1)
        ff = f.float()
        light = (ff[..., 0:1] + ff[..., 1:2] + ff[..., 2:3]) / 3.0 / 255.0  # the mean, 5x faster than mean(-1)
        weight = ((v * alpha)[..., None] * (1.0 + LIGHT_BOOST * light)).clamp(max=1.0)
        strong = colour(r.sign() * (0.5 + 0.5 * v), torch.ones_like(scale), lut, centered)
        ff = ff + weight * (FRAME_MARGIN - 2 * FRAME_MARGIN / 255.0 * ff)  # relevant pixels: no white or black
        ff = ff * (1.0 - DARKEN / 255.0 * weight * ff)  # light ones darker, so a colour over them stays saturated
        parts.append((ff + weight * (strong.float() - ff) + 0.5).clamp(0, 255).to(torch.uint8))
    if layout == "side":
        parts.append(f)
    if layout in ("side", "heatmap", PANELS):
        parts.append(colour(r, scale, lut, centered))
    if layout == PANELS:
        parts.append(f)
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=2)


def colorize(relevance: np.ndarray, scale: float | Sequence[float], cmap: str | Colormap) -> np.ndarray:
    """:func:`colour` for a numpy map ``(..., H, W)``: ``(..., H, W, 3)`` BGR uint8 (for pictures and tests)."""
    cm = get_colormap(cmap)
    r = torch.from_numpy(np.ascontiguousarray(relevance, dtype=np.float32))
    flat = r.reshape(-1, *r.shape[-2:])
    s = torch.as_tensor(scale, dtype=torch.float32).reshape(-1).expand(flat.shape[0])
    return colour(flat, s, lut_tensor(cm), cm.centered).reshape(*r.shape, 3).numpy()


def render(frame: np.ndarray, relevance: np.ndarray, scale: float, cmap: str | Colormap,
           layout: str = "overlay", alpha: float = 0.6, label: str | None = None, fit: str = "squash") -> np.ndarray:
    """:func:`compose` for one numpy frame and its map ``(h, w)`` at the processing size, with its label.

    The frame pass renders batches on the device with the same code; this is the one-frame
    form for pictures, the API and tests. The output is BGR uint8.
    """
    cm = get_colormap(cmap)
    f = to_bgr(torch.from_numpy(np.ascontiguousarray(as_frame(frame)))[None])
    r = torch.from_numpy(np.ascontiguousarray(relevance, dtype=np.float32))[None]
    geometry = Fit.of(fit, tuple(f.shape[1:3]), tuple(r.shape[1:]))
    out = compose(f, r, torch.tensor([float(scale)]), lut_tensor(cm), cm.centered, layout, alpha, geometry)
    out = np.ascontiguousarray(out[0].numpy())
    if label:
        draw_label(out, label)
    return out


def output_size(frame_size: tuple[int, int], layout: str) -> tuple[int, int]:
    """(width, height) of a rendered frame for an input of ``frame_size`` (width, height)."""
    w, h = frame_size
    return (2 * w, h) if layout == "side" else (w, h)


def label_text(name: str, probability: float) -> str:
    """The label a frame carries: ``"T-shirt/top  97.3%"``."""
    return f"{name}  {100.0 * probability:.1f}%"


FONT = cv2.FONT_HERSHEY_SIMPLEX
MIN_TEXT_SCALE = 0.3


def wrap_text(text: str, width: int, scale: float, thick: int, font: int = FONT) -> list[str]:
    """Split ``text`` at double spaces (else spaces) into lines no wider than ``width`` pixels
    (a single word wider than that stays one line)."""
    sep = "  " if "  " in text else " "
    lines: list[str] = []
    for word in text.split(sep):
        candidate = f"{lines[-1]}{sep}{word}" if lines else word
        if lines and cv2.getTextSize(candidate, font, scale, thick)[0][0] <= width:
            lines[-1] = candidate
        else:
            lines.append(word)
    return lines


def text_box(image: np.ndarray, lines: Sequence[str], x: int, y: int, scale: float, thick: int,
             color: tuple[int, int, int] = (255, 255, 255)) -> tuple[int, int]:
    """Draw ``lines`` on a box darkened to 2/5 with its top-left at (x, y), kept inside the
    image; in place. Returns the box's (width, height)."""
    h, w = image.shape[:2]
    pad = max(2, int(round(4 * scale)))
    sizes = [cv2.getTextSize(line, FONT, scale, thick) for line in lines]
    line_h = max(th + base for (_, th), base in sizes) + pad
    bw = min(w, max(tw for (tw, _), _ in sizes) + 2 * pad)
    bh = min(h, line_h * len(lines) + pad)
    x, y = max(0, min(x, w - bw)), max(0, min(y, h - bh))
    box = image[y:y + bh, x:x + bw]
    box[:] = (box.astype(np.uint16) * 2 // 5).astype(np.uint8)
    for i, (line, ((_, th), _)) in enumerate(zip(lines, sizes)):
        cv2.putText(image, line, (x + pad, y + pad + th + i * line_h), FONT, scale, color, thick, cv2.LINE_AA)
    return bw, bh


def draw_label(image: np.ndarray, text: str) -> np.ndarray:
    """Write ``text`` in the top-left corner on a dark box, sized to the image; in place.

    A label wider than the frame is drawn smaller (down to a readable minimum), then
    wrapped at its double spaces (name, probability, explained class) or spaces.
    """
    h, w = image.shape[:2]
    scale = max(MIN_TEXT_SCALE, min(1.2, min(h, w) / 400.0))
    thickness = max(1, int(round(scale * 2)))
    room = w - 2 * max(2, int(round(4 * scale)))
    while cv2.getTextSize(text, FONT, scale, thickness)[0][0] > room and scale > MIN_TEXT_SCALE:
        scale = max(MIN_TEXT_SCALE, scale * 0.9)
        thickness = max(1, int(round(scale * 2)))
    lines = [text] if cv2.getTextSize(text, FONT, scale, thickness)[0][0] <= room else \
        wrap_text(text, room, scale, thickness)
    text_box(image, lines, 0, 0, scale, thickness)
    return image


def draw_legend(image: np.ndarray, cmap: str | Colormap) -> np.ndarray:
    """A colour-scale legend in the bottom-right corner, in place: the map's colours from low
    to high with what they mean (``-  0  +`` relevance for a centred map, ``0 … max`` otherwise)."""
    cm = get_colormap(cmap)
    h, w = image.shape[:2]
    scale = max(MIN_TEXT_SCALE, min(0.8, min(h, w) / 600.0))
    thick = max(1, int(round(scale * 2)))
    pad = max(2, int(round(4 * scale)))
    bar_w, bar_h = max(32, min(w // 3, 256)), max(6, int(round(12 * scale)))
    (tw, th), base = cv2.getTextSize("relevance", FONT, scale, thick)
    box_w, box_h = min(w, bar_w + 2 * pad), min(h, bar_h + th + base + 3 * pad)
    x0, y0 = w - box_w, h - box_h
    box = image[y0:, x0:]
    box[:] = (box.astype(np.uint16) * 2 // 5).astype(np.uint8)
    ramp = cm.lut[np.linspace(0, 255, bar_w).round().astype(int)]
    bar = np.broadcast_to(ramp[None], (bar_h, bar_w, 3))
    by, bx = y0 + pad, x0 + pad
    image[by:by + bar_h, bx:bx + bar_w] = bar[:max(0, h - by), :max(0, w - bx)]
    marks = (("-", 0.0), ("0", 0.5), ("+", 1.0)) if cm.centered else (("0", 0.0), ("relevance", 0.5), ("max", 1.0))
    ty = by + bar_h + pad + th
    for text, at in marks:
        mw = cv2.getTextSize(text, FONT, scale, thick)[0][0]
        tx = int(bx + at * bar_w - at * mw)
        cv2.putText(image, text, (tx, min(h - 1, ty)), FONT, scale, (255, 255, 255), thick, cv2.LINE_AA)
    return image


def contact_sheet(images: Sequence[np.ndarray], columns: int = 5) -> np.ndarray:
    """Tile BGR images into one picture, ``columns`` per row, every tile the same size.

    Each image is scaled (keeping its aspect) to the tallest one's height, and centred in a
    tile as wide as the widest so scaled; tiles touch, and what no image covers is black.
    """
    if not images:
        raise ValueError("no images for the sheet")
    images = [np.ascontiguousarray(to_bgr(torch.from_numpy(as_frame(im))[None])[0].numpy()) for im in images]
    ch = max(im.shape[0] for im in images)
    scaled = []
    for im in images:
        if im.shape[0] != ch:
            width = max(1, round(im.shape[1] * ch / im.shape[0]))
            im = cv2.resize(im, (width, ch), interpolation=cv2.INTER_AREA if im.shape[0] > ch else cv2.INTER_LINEAR)
        scaled.append(im)
    cw = max(im.shape[1] for im in scaled)
    cols = min(columns, len(scaled))
    rows = -(-len(scaled) // cols)
    sheet = np.zeros((rows * ch, cols * cw, 3), np.uint8)
    for i, im in enumerate(scaled):
        y, x = (i // cols) * ch, (i % cols) * cw + (cw - im.shape[1]) // 2
        sheet[y:y + ch, x:x + im.shape[1]] = im
    return sheet
