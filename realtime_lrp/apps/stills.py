"""Still images (``rtlrp explain``): each picture explained on its own, written as PNGs.

For each image ``STEM_overlay.png`` and ``STEM_heatmap.png`` (and ``STEM_side.png`` with
the side layout), optionally one contact sheet of all overlays. Every PNG is written
atomically (:mod:`realtime_lrp.util.atomic`), and a signal stops the run between images, so
what was reported written is complete.
"""
from __future__ import annotations

import math
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from realtime_lrp.media.reader import InputError
from realtime_lrp.pipeline.processor import FrameProcessor
from realtime_lrp.pipeline.render import PANELS, contact_sheet, draw_label, draw_legend
from realtime_lrp.util.atomic import write_image
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


def enlargement(frame: np.ndarray, display_size: int) -> int:
    """The whole factor (sharp pixels) that brings ``frame``'s short side up to ``display_size``; 1 if it is there."""
    short = min(frame.shape[:2])
    if not display_size or short >= display_size:
        return 1
    return math.ceil(display_size / short)


@contextmanager
def _eager(passes: Any, eager: bool) -> Iterator[None]:
    """Build the frame pass of this call without a CUDA graph when ``eager`` (no effect on the CPU)."""
    graph = passes.graph
    passes.graph = graph and not eager
    try:
        yield
    finally:
        passes.graph = graph


def explain_images(paths: Sequence[Path], frames: Sequence[np.ndarray], processor: FrameProcessor, out: Path,
                   display_size: int = 256, sheet: Path | None = None, stop: Deferred | None = None,
                   report: Callable[[Path, str, list[Path]], None] | None = None) -> StillsResult:
    """Explain ``frames`` (read from ``paths``) one by one into PNGs in ``out``.

    Each image takes one run of the frame pass, on its own colour scale, that renders the
    overlay, the heatmap and the frame side by side; the PNGs are its panels. On CUDA an image
    whose size no other image has runs eagerly: a CUDA graph is captured only for a size seen
    again, so a folder of pictures of many sizes does not capture (and warm up) a graph each.
    """
    layouts = ["overlay", "heatmap"] + (["side"] if processor.layout == "side" else [])
    result = StillsResult()
    overlays, stems = [], set()
    sizes = Counter(frame.shape for frame in frames)
    for i, (path, frame) in enumerate(zip(paths, frames)):
        if stop is not None and stop.requested:
            result.signum = stop.signum
            return result
        with _eager(processor.passes, sizes[frame.shape] == 1):
            rendered, preds = processor.passes.process([frame], stable=False, label=False, layout=PANELS,
                                                       enlarge=enlargement(frame, display_size))
        w = rendered[0].shape[1] // 3
        overlay, heatmap, shown = (np.ascontiguousarray(rendered[0][:, j * w:(j + 1) * w]) for j in range(3))
        pictures = {"overlay": overlay, "heatmap": heatmap, "side": np.concatenate([shown, heatmap], axis=1)}
        stem = path.stem if path.stem not in stems else f"{path.stem}_{i}"
        stems.add(stem)
        written = []
        for layout in layouts:
            picture = draw_label(pictures[layout], preds[0].label)
            if processor.legend:
                draw_legend(picture, processor.cmap)
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
