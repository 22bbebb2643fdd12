"""Make docs/contrast.png: the overlay of a pale dress on light grey and on dark, with ``hot``
and ``fire`` (zplus, top row) and ``diverging`` and ``signed`` (epsilon-plus-flat, bottom).

    PYTHONPATH=. python docs/contrast.py   # writes docs/contrast.png
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from realtime_lrp import LRP, load_model, overlay, prepare
from realtime_lrp.pipeline.render import draw_label

ROOT = Path(__file__).resolve().parent.parent
TILE = 192


def dress() -> np.ndarray:
    """The first dress (class 3) of the test strip, as a 28x28 gray level in [0, 1]."""
    strip = cv2.imread(str(ROOT / "realtime_lrp/assets/fashion_mnist_test.png"), cv2.IMREAD_GRAYSCALE)
    tiles = [strip[r:r + 28, c:c + 28] for r in range(0, strip.shape[0], 28) for c in range(0, strip.shape[1], 28)]
    model, card = load_model("shipped", device="cpu")
    for tile in tiles:
        if int(model(prepare(tile, card)).argmax()) == card["classes"].index("Dress"):
            return tile.astype(np.float32) / 255.0
    return tiles[0].astype(np.float32) / 255.0


def main() -> None:
    model, card = load_model("shipped", device="cpu")
    item = dress()
    frames = {"light": 200 + 45 * item, "dark": 40 + 190 * item}  # a pale dress on light grey, then on dark
    rows = []
    for preset, cmaps in (("zplus", ("hot", "fire")), ("epsilon-plus-flat", ("diverging", "signed"))):
        lrp = LRP(model, preset=preset)
        row = []
        for shade, gray in frames.items():
            frame = cv2.resize(np.round(gray).astype(np.uint8), (TILE, TILE), interpolation=cv2.INTER_NEAREST)
            frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
            result = lrp(prepare(frame, card))
            name = card["classes"][int(result.logits.argmax())]
            prob = float(result.logits.softmax(1).max())
            for cmap in cmaps:
                tile = overlay(frame, result.relevance[0], card, cmap=cmap)
                draw_label(tile, f"{name}  {100 * prob:.1f}%")
                cv2.putText(tile, f"{cmap} {shade}", (4, TILE - 8), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1,
                            cv2.LINE_AA)
                row.append(tile)
        rows.append(np.concatenate(row, axis=1))
    cv2.imwrite(str(ROOT / "docs/contrast.png"), np.concatenate(rows, axis=0))


if __name__ == "__main__":
    main()
