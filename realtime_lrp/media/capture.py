"""Live frame sources: a capture thread that keeps only the newest frame.

A camera delivers frames at its own pace whether or not we keep up. The capture thread
overwrites one lock-protected slot with the newest frame and a sequence number, and
``LiveSource.read`` blocks until a frame newer than the last one it returned exists:
a frame is never processed twice and stale frames never queue. Lost frames are counted,
not hidden.

The capture is opened through an injectable factory (default ``cv2.VideoCapture``), so
tests drive the same code with a file-backed source instead of a physical camera.
"""
from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Protocol

import numpy as np

DEFAULT_FPS = 30.0


class CameraError(RuntimeError):
    """A camera could not be opened or stopped delivering frames (one-line message)."""


class EndOfStream(Exception):
    """A file-backed live source has delivered its last frame."""


class Capture(Protocol):
    """The part of ``cv2.VideoCapture`` that a live source uses."""

    def isOpened(self) -> bool: ...  # noqa: N802 - OpenCV's name

    def read(self) -> tuple[bool, np.ndarray | None]: ...

    def get(self, prop_id: int) -> float: ...

    def release(self) -> None: ...


CaptureFactory = Callable[[Any], Capture]
SourceKind = Literal["index", "device", "file", "url"]


@dataclass(frozen=True)
class CameraSpec:
    """What ``--camera`` named: the value handed to the capture factory, and its kind."""

    target: int | str
    kind: SourceKind

    def __str__(self) -> str:
        if self.kind in ("index", "device"):
            return f"camera {self.target}"
        if self.kind == "file":
            return f"video file {self.target}"
        return f"stream {self.target}"


def parse_camera(text: str | int) -> CameraSpec:
    """Parse ``--camera``: an index (``0``), a device path, a video file, or a stream URL.

    Raises ``CameraError`` for a device path or file that does not exist.
    """
    if isinstance(text, int):
        return CameraSpec(text, "index")
    value = text.strip()
    if value.isdigit():
        return CameraSpec(int(value), "index")
    if "://" in value:
        return CameraSpec(value, "url")
    path = Path(value).expanduser()
    if value.startswith("/dev/"):
        if not path.exists():
            raise CameraError(f"no camera at {value}: the device does not exist")
        return CameraSpec(str(path), "device")
    if path.is_dir():
        raise CameraError(f"--camera {value}: is a directory, not a camera, video file or stream URL")
    if not path.is_file():
        raise CameraError(f"--camera {value}: no such camera index, device, video file or stream URL")
    return CameraSpec(str(path), "file")


def open_capture(target: int | str) -> Capture:
    """Default capture factory: ``cv2.VideoCapture`` with OpenCV's own open-time warnings silenced.

    Without this, a missing camera prints several backend warnings before our one-line message.
    A file's display matrix (a phone video's rotation) is applied, so frames come upright.
    """
    import cv2

    logging = cv2.utils.logging
    level = logging.getLogLevel()
    logging.setLogLevel(logging.LOG_LEVEL_SILENT)
    try:
        capture = cv2.VideoCapture(target)
        if capture.isOpened():  # files: apply the display matrix, as rtlrp video does (also OpenCV's default)
            capture.set(cv2.CAP_PROP_ORIENTATION_AUTO, 1)
        return capture
    finally:
        logging.setLogLevel(level)


def capture_fps(capture: Capture) -> float:
    """The capture's frame rate as a float (29.97 stays 29.97); 30 when it reads 0 or NaN."""
    import cv2

    try:
        fps = float(capture.get(cv2.CAP_PROP_FPS))
    except Exception:  # noqa: BLE001 - some backends raise for unsupported properties
        return DEFAULT_FPS
    if not math.isfinite(fps) or fps <= 0 or fps > 1000:
        return DEFAULT_FPS
    return fps


@dataclass(frozen=True)
class LiveFrame:
    """One captured frame: BGR pixels, its sequence number (1, 2, ...) and capture time."""

    image: np.ndarray
    seq: int
    timestamp: float


class LiveSource:
    """A camera, stream or file read on a background thread; ``read`` returns the newest frame.

    Camera read failures are retried; after ``max_failed_reads`` failures in a row the
    capture is reopened, at most ``reconnect_attempts`` times before a frame arrives again,
    and then ``read`` raises a ``CameraError``. A file source ends with ``EndOfStream``;
    ``pace`` (default: on for files) delivers its frames at the file's frame rate, like a camera.
    """

    def __init__(
        self,
        spec: CameraSpec | str | int,
        factory: CaptureFactory | None = None,
        *,
        pace: bool | None = None,
        max_failed_reads: int = 30,
        retry_delay: float = 0.02,
        reconnect_attempts: int = 3,
        reconnect_delay: float = 0.5,
    ) -> None:
        self.spec = spec if isinstance(spec, CameraSpec) else parse_camera(spec)
        self._factory = factory or open_capture
        self.pace = self.spec.kind == "file" if pace is None else pace
        self.max_failed_reads = max(1, max_failed_reads)
        self.retry_delay = retry_delay
        self.reconnect_attempts = max(0, reconnect_attempts)
        self.reconnect_delay = reconnect_delay
        self.fps = DEFAULT_FPS
        self.reconnects = 0
        self._capture: Capture | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._cond = threading.Condition()
        self._slot: LiveFrame | None = None
        self._captured = 0
        self._returned = 0
        self._last_seq = 0
        self._ended = False
        self._error: CameraError | None = None

    # -- lifecycle ---------------------------------------------------------------------
    def open(self, start: bool = True) -> LiveSource:
        """Open the capture (raising ``CameraError`` at once if it fails) and, unless ``start`` is
        False, start the thread (:meth:`start`; a file then plays from its first frame once the
        caller is ready, e.g. after loading the model)."""
        if self._capture is None and self._thread is None:
            capture = self._open_once()
            if capture is None:
                raise CameraError(self._open_failure_message())
            self._capture = capture
            self.fps = capture_fps(capture)
        return self.start() if start else self

    def start(self) -> LiveSource:
        """Start the capture thread of an opened source (once)."""
        if self._thread is None:
            if self._capture is None:
                raise RuntimeError("LiveSource.start() before open()")
            self._thread = threading.Thread(target=self._run, name=f"capture {self.spec}", daemon=True)
            self._thread.start()
        return self

    def close(self, timeout: float = 5.0) -> None:
        """Stop the capture thread and release the capture; safe to call more than once."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
        elif self._capture is not None:
            self._capture.release()
            self._capture = None

    def __enter__(self) -> LiveSource:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- consumer side -----------------------------------------------------------------
    def read(self, timeout: float | None = None) -> LiveFrame | None:
        """Block until a frame newer than the last one returned exists, and return it.

        Returns ``None`` if ``timeout`` seconds pass first. Raises ``CameraError`` once the
        camera has failed and ``EndOfStream`` once a file has ended, in both cases only
        after the last captured frame has been returned.
        """
        if self._thread is None:
            raise RuntimeError("LiveSource.read() before open()")
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                slot = self._slot
                if slot is not None and slot.seq > self._last_seq:
                    self._last_seq = slot.seq
                    self._returned += 1
                    return slot
                if self._error is not None:
                    raise self._error
                if self._ended or self._stop.is_set():
                    raise EndOfStream(str(self.spec))
                if deadline is None:
                    self._cond.wait()
                else:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return None
                    self._cond.wait(remaining)

    @property
    def captured(self) -> int:
        """Frames delivered by the capture so far."""
        return self._captured

    @property
    def skipped(self) -> int:
        """Frames overwritten by a newer one before anyone read them."""
        with self._cond:
            pending = int(self._slot is not None and self._slot.seq > self._last_seq)
            return self._captured - self._returned - pending

    # -- capture thread ----------------------------------------------------------------
    def _open_once(self) -> Capture | None:
        try:
            capture = self._factory(self.spec.target)
        except Exception:  # noqa: BLE001 - a backend failing to open is reported as "cannot open"
            return None
        if capture is not None and capture.isOpened():
            return capture
        if capture is not None:
            capture.release()
        return None

    def _open_failure_message(self) -> str:
        if self.spec.kind == "index":
            return f"cannot open {self.spec}: no camera found at that index (is one plugged in and free?)"
        if self.spec.kind == "device":
            return f"cannot open {self.spec}: the device exists but does not deliver video (busy or not a camera?)"
        if self.spec.kind == "file":
            return f"cannot open {self.spec}: not a readable video (missing codec or corrupt file?)"
        return f"cannot open {self.spec}: the stream did not answer or is not video"

    def _run(self) -> None:
        failures = 0
        reconnects_since_frame = 0
        next_due = time.monotonic()
        try:
            while not self._stop.is_set():
                ok, image = self._read_capture()
                if ok:
                    failures = 0
                    reconnects_since_frame = 0
                    self._publish(image)
                    if self.pace:
                        next_due = self._wait_until_due(next_due)
                    continue
                if self.spec.kind == "file":
                    break
                failures += 1
                if failures < self.max_failed_reads:
                    self._stop.wait(self.retry_delay)
                    continue
                reopened = False
                while not reopened and reconnects_since_frame < self.reconnect_attempts:
                    reconnects_since_frame += 1
                    reopened = self._reconnect()
                if self._stop.is_set():
                    return
                if not reopened:
                    self._fail(
                        f"{self.spec} stopped delivering frames (unplugged?): {failures} failed reads "
                        f"in a row, then {reconnects_since_frame} reconnect attempts failed"
                    )
                    return
                failures = 0
        finally:
            if self._capture is not None:
                self._capture.release()
                self._capture = None
            with self._cond:
                self._ended = True
                self._cond.notify_all()

    def _read_capture(self) -> tuple[bool, np.ndarray | None]:
        try:
            ok, image = self._capture.read()
        except Exception:  # noqa: BLE001 - a backend exception is one more failed read
            return False, None
        if not ok or image is None or image.size == 0:
            return False, None
        return True, image

    def _publish(self, image: np.ndarray) -> None:
        with self._cond:
            self._captured += 1
            self._slot = LiveFrame(image, self._captured, time.monotonic())
            self._cond.notify_all()

    def _wait_until_due(self, due: float) -> float:
        """Sleep until one frame interval after ``due``; re-anchor if decoding fell behind."""
        due += 1.0 / self.fps
        now = time.monotonic()
        if due < now - 1.0 / self.fps:
            return now
        if due > now:
            self._stop.wait(due - now)
        return due

    def _reconnect(self) -> bool:
        """Release and reopen the capture once, after ``reconnect_delay``."""
        if self._capture is not None:
            self._capture.release()
            self._capture = None
        if self._stop.wait(self.reconnect_delay):
            return False
        capture = self._open_once()
        if capture is None:
            return False
        self._capture = capture
        self.reconnects += 1
        return True

    def _fail(self, message: str) -> None:
        with self._cond:
            self._error = CameraError(message)
            self._cond.notify_all()
