"""A small demo video of clothing items for the shipped Fashion-MNIST model.

The items are real Fashion-MNIST test images (two per class, shipped as one PNG in
``realtime_lrp/assets``). Each is shown in turn, slowly zooming and drifting, and
cross-fades into the next, so ``rtlrp sample demo.mp4 && rtlrp video demo.mp4 --out
lrp.mp4`` is a one-command demo that needs no camera and no download.
"""
from __future__ import annotations

import math
from importlib import resources
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from realtime_lrp.media.writer import VideoWriter
from realtime_lrp.util.atomic import write_image

ASSET = "fashion_mnist_test.png"
ITEM = 28
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
           "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


def load_items() -> list[tuple[np.ndarray, int]]:
    """The shipped test images as (28x28 gray image, class index), in class order, twice over."""
    data = resources.files("realtime_lrp").joinpath("assets", ASSET).read_bytes()
    sheet = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
    rows, cols = sheet.shape[0] // ITEM, sheet.shape[1] // ITEM
    return [(sheet[r * ITEM:(r + 1) * ITEM, c * ITEM:(c + 1) * ITEM], c) for r in range(rows) for c in range(cols)]


def _place(item: np.ndarray, size: int, t: float, phase: float) -> np.ndarray:
    """Draw ``item`` on a black square frame, zoomed and shifted for time ``t`` in [0, 1)."""
    zoom = size / ITEM * (0.82 + 0.16 * t)
    dx = 0.05 * size * math.sin(2 * math.pi * (t + phase))
    dy = 0.03 * size * math.cos(2 * math.pi * (t + phase))
    tx = (size - zoom * ITEM) / 2 + dx
    ty = (size - zoom * ITEM) / 2 + dy
    m = np.float32([[zoom, 0, tx], [0, zoom, ty]])
    return cv2.warpAffine(item, m, (size, size), flags=cv2.INTER_LINEAR, borderValue=0)


def sample_frames(size: int = 256, fps: float = 24.0, seconds_per_item: float = 1.5,
                  count: int = 10) -> Iterator[np.ndarray]:
    """BGR frames showing ``count`` items in turn (class order), each for ``seconds_per_item``."""
    items = load_items()[:count]
    per_item = max(2, int(round(seconds_per_item * fps)))
    fade = max(1, per_item // 5)
    for k, (item, _) in enumerate(items):
        nxt = items[(k + 1) % len(items)][0]
        for i in range(per_item):
            t = i / per_item
            frame = _place(item, size, t, k / len(items)).astype(np.float32)
            if k + 1 < len(items) and i >= per_item - fade:
                w = (i - (per_item - fade) + 1) / (fade + 1)
                frame = (1 - w) * frame + w * _place(nxt, size, 0.0, (k + 1) / len(items))
            yield cv2.cvtColor(np.clip(frame + 0.5, 0, 255).astype(np.uint8), cv2.COLOR_GRAY2BGR)


def write_sample(path: str | Path, size: int = 256, fps: float = 24.0, seconds_per_item: float = 1.5,
                 count: int = 10) -> int:
    """Write the demo video to ``path`` (codec by extension), atomically; the number of frames."""
    with VideoWriter(path, fps, (size, size)) as writer:
        for frame in sample_frames(size, fps, seconds_per_item, count):
            writer.write(frame)
    return writer.frames


def write_stills(folder: Path, count: int = 10) -> list[Path]:
    """Save the first ``count`` items as ``NN_class.png`` in ``folder`` (input for ``rtlrp explain``)."""
    written = []
    for i, (image, label) in enumerate(load_items()[:count]):
        name = CLASSES[label].lower().replace("/", "-").replace(" ", "-")
        target = Path(folder) / f"{i:02d}_{name}.png"
        write_image(target, image)
        written.append(target)
    return written
