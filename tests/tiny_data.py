"""A tiny two-class ``imagefolder`` dataset and tiny VGG settings for fast CPU tests."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

TINY = ["--arch", "vgg11_bn", "--width", "0.0625", "--hidden", "16", "--pool", "1",
        "--input-size", "32", "--batch-size", "4", "--workers", "0", "--device", "cpu"]


def make_imagefolder(root: Path, train: int = 8, val: int = 4, seed: int = 0) -> Path:
    """Write ``root/{train,val}/{dark,bright}/*.png`` (20x24 BGR images) and return ``root``."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", train), ("val", val)):
        for label, name in enumerate(("bright", "dark")):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                base = 60 if label else 190
                image = np.clip(base + rng.normal(0, 25, (20, 24, 3)), 0, 255).astype(np.uint8)
                assert cv2.imwrite(str(folder / f"{i:03d}.png"), image)
    return root
