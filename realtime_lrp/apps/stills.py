"""Still images (``rtlrp explain``): each picture explained on its own, written as PNGs.

For each image ``STEM_overlay.png`` and ``STEM_heatmap.png`` (and ``STEM_side.png`` with
the side layout), optionally one contact sheet of all overlays. Every PNG is written
atomically (:mod:`realtime_lrp.util.atomic`), and a signal stops the run between images, so
what was reported written is complete.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from realtime_lrp.util.atomic import write_image
from realtime_lrp.pipeline.processor import FrameProcessor
from realtime_lrp.media.reader import InputError
from realtime_lrp.pipeline.render import contact_sheet
from realtime_lrp.util.signals import Deferred


@dataclass
class StillsResult:
    """The PNGs written, per input image, and the signal that stopped the run, if any."""

    written: list[tuple[Path, str, list[Path]]] = field(default_factory=list)
    sheet: Path | None = None
    signum: int | None = None


def read_images(paths: Sequence[Path]) -> list[np.ndarray]:
    """Decode every image first, so a bad one is a one-line :class:`InputError` before any work."""
    import cv2

    frames = []
    for path in paths:
        if not path.is_file():
            raise InputError(f"{path}: no such file")
        frame = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if frame is None:
            raise InputError(f"cannot read {path}: not an image, or corrupt")
        frames.append(frame)
    return frames


def enlarge(frame: np.ndarray, display_size: int) -> np.ndarray:
    """Scale ``frame`` up by a whole factor (sharp pixels) until its short side reaches ``display_size``."""
    import cv2

    short = min(frame.shape[:2])
    if not display_size or short >= display_size:
        return frame
    k = math.ceil(display_size / short)
    return cv2.resize(frame, None, fx=k, fy=k, interpolation=cv2.INTER_NEAREST)


def explain_images(paths: Sequence[Path], frames: Sequence[np.ndarray], processor: FrameProcessor, out: Path,
                   display_size: int = 256, sheet: Path | None = None, stop: Deferred | None = None,
                   report: Callable[[Path, str, list[Path]], None] | None = None) -> StillsResult:
    """Explain ``frames`` (read from ``paths``) one by one into PNGs in ``out``."""
    layouts = ["overlay", "heatmap"] + (["side"] if processor.layout == "side" else [])
    result = StillsResult()
    overlays, stems = [], set()
    for i, (path, frame) in enumerate(zip(paths, frames)):
        if stop is not None and stop.requested:
            result.signum = stop.signum
            return result
        relevance, preds = processor.explain([frame])
        scales = processor.scales(relevance, stable=False)
        shown = enlarge(frame, display_size)
        stem = path.stem if path.stem not in stems else f"{path.stem}_{i}"
        stems.add(stem)
        written = []
        for layout in layouts:
            picture = processor.render([shown], relevance, preds, scales, layout)[0]
            target = out / f"{stem}_{layout}.png"
            write_image(target, picture)
            written.append(target)
            if layout == "overlay":
                overlays.append(picture)
        result.written.append((path, preds[0].label, written))
        if report is not None:
            report(path, preds[0].label, written)
    if sheet is not None:
        write_image(sheet, contact_sheet(overlays))
        result.sheet = sheet
    return result
