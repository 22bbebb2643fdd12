"""``rtlrp explain`` of many images: a CUDA graph is captured only for a size seen more than once."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from media import tiny_card, tiny_model

from realtime_lrp.apps.stills import explain_images
from realtime_lrp.pipeline import fast
from realtime_lrp.pipeline.processor import FrameProcessor


def test_a_size_seen_once_runs_eagerly_and_a_repeated_size_is_captured_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each frame pass built records whether it asked for a graph (on the CPU nothing is
    captured, so asking is what is counted): sizes 40x30 (twice) and 50x30 (once) and 36x44
    (once) build three passes, and only the repeated size asks for a graph."""
    built: list[tuple[int, int, bool]] = []
    init = fast._FramePass.__init__

    def spy(self, owner, n, h, w, c, *args, **kwargs):
        built.append((h, w, owner.graph))
        init(self, owner, n, h, w, c, *args, **kwargs)

    monkeypatch.setattr(fast._FramePass, "__init__", spy)
    processor = FrameProcessor(tiny_model(3), tiny_card(3), device="cpu")
    processor.passes.graph = True  # as on CUDA
    frames = [np.full((h, w, 3), 60 + 20 * i, np.uint8) for i, (h, w) in enumerate([(30, 40), (30, 50), (30, 40), (44, 36)])]
    paths = [tmp_path / f"{i}.png" for i in range(len(frames))]
    result = explain_images(paths, frames, processor, tmp_path / "out")
    assert len(result.written) == 4
    assert built == [(30, 40, True), (30, 50, False), (44, 36, False)]
    assert processor.passes.graph  # the setting is restored after each eager image
