"""A spy for ``rtlrp`` subprocesses of the tests, active only when ``RTLRP_TEST_SPY`` names a folder.

``media.spy_env`` puts this folder first on ``PYTHONPATH``, so Python imports this module at
start-up. It records in that folder what the run handed on: a line in ``rendered`` per frame
``FrameProcessor.process`` returned, a line in ``written`` per ``VideoWriter.write`` call, and
the last two frames the live recorder was shown (``shown_last.npy``, ``shown_prev.npy``). A test
compares them with the files the run left, which the run's own messages cannot show.
"""
import os

_FOLDER = os.environ.get("RTLRP_TEST_SPY")

if _FOLDER:
    import numpy as np

    from realtime_lrp.apps import live
    from realtime_lrp.media import writer
    from realtime_lrp.pipeline import processor

    def _count(name: str, lines: int) -> None:
        with open(os.path.join(_FOLDER, name), "a", encoding="ascii") as log:
            log.write("1\n" * lines)

    def _spy_process(process):
        def spy(self, frames, stable=True):
            out = process(self, frames, stable)
            _count("rendered", len(out[0]))
            return out
        return spy

    def _spy_write(write):
        def spy(self, frame, pts=None):
            write(self, frame, pts)
            _count("written", 1)
        return spy

    def _spy_show(show):
        def spy(self, frame, now):
            last = os.path.join(_FOLDER, "shown_last.npy")
            if os.path.exists(last):
                os.replace(last, os.path.join(_FOLDER, "shown_prev.npy"))
            np.save(last, frame)
            show(self, frame, now)
        return spy

    processor.FrameProcessor.process = _spy_process(processor.FrameProcessor.process)
    writer.VideoWriter.write = _spy_write(writer.VideoWriter.write)
    live.LiveRecorder.show = _spy_show(live.LiveRecorder.show)
