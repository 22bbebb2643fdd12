"""Kiosk mode: the server's own camera or file, explained and shown to every page."""
from __future__ import annotations

import threading
import time
from typing import Callable

import cv2
import numpy as np

from realtime_lrp.apps.serve.protocol import Settings
from realtime_lrp.apps.serve.worker import Job, Stream, Worker
from realtime_lrp.media.capture import CameraError, CameraSpec, EndOfStream, LiveSource

KIOSK_SIDE = 640          # kiosk frames are shown at most this many pixels a side


def fit_side(image: np.ndarray, side: int) -> np.ndarray:
    """``image`` scaled down so neither side exceeds ``side`` pixels (aspect kept)."""
    h, w = image.shape[:2]
    if max(h, w) <= side:
        return image
    scale = side / max(h, w)
    return cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)


class Kiosk:
    """Feeds a server-side camera or file to the worker while anyone watches; files loop.

    A camera that fails (unplugged, after LiveSource's reconnect attempts) ends the
    server through ``on_error``, with the one-line reason in :attr:`error`.
    """

    def __init__(self, spec: CameraSpec, worker: Worker, stream: Stream, settings: Settings,
                 viewers: Callable[[], int], on_error: Callable[[], None]) -> None:
        self.spec = spec
        self.worker = worker
        self.stream = stream
        self.settings = settings
        self.viewers = viewers
        self.on_error = on_error
        self.error: str | None = None
        self._stop = threading.Event()
        self._source: LiveSource | None = None
        self._thread = threading.Thread(target=self._run, name="rtlrp serve source", daemon=True)

    def start(self) -> None:
        """Open the source (CameraError if it cannot be) and start feeding."""
        self._source = LiveSource(self.spec).open()
        self._thread.start()

    def stop(self) -> None:
        """Stop feeding and close the source."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)
        if self._source is not None:
            self._source.close()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    frame = self._source.read(timeout=0.25)
                except EndOfStream:
                    if self._stop.is_set():
                        return
                    if self.spec.kind != "file":
                        raise CameraError(f"{self.spec} ended") from None
                    self._source.close()
                    self._source = LiveSource(self.spec).open()  # a file plays in a loop
                    continue
                if frame is None or self.viewers() == 0:
                    continue
                job = Job(frame.seq, fit_side(frame.image, KIOSK_SIDE), self.settings, time.monotonic())
                self.worker.submit(self.stream, job)
        except CameraError as exc:
            self.error = str(exc)
            self.on_error()
