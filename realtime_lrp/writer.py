"""Video file output that keeps fps, size and every frame, and always closes.

The codec follows the extension (``CODECS``). OpenCV's FFmpeg writer silently trims odd
widths and heights to even ones, so an ``.avi`` of odd size is written with OpenCV's
own MJPEG writer instead, which keeps the size; that writer stores the frame rate as an
integer, so the exact rational rate is patched into the AVI header when the file is
closed. Other containers cannot hold odd sizes from OpenCV: those frames are padded by
one replicated row/column, and ``notice`` says so.

The file is created at its final path on the first :meth:`VideoWriter.write`, so an
input that fails before any frame leaves no file; :meth:`VideoWriter.close` always
leaves a finished, playable file of the frames written so far.
"""
from __future__ import annotations

import math
import struct
from fractions import Fraction
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

CODECS: dict[str, str] = {
    ".mp4": "mp4v",
    ".m4v": "mp4v",
    ".mov": "mp4v",
    ".avi": "MJPG",
    ".mkv": "XVID",
}


class WriterError(RuntimeError):
    """The output cannot be written; the message is one line."""


def codec_for(path: str | Path) -> str:
    """The FourCC for ``path``'s extension, or a one-line :class:`WriterError`."""
    ext = Path(path).suffix.lower()
    if ext not in CODECS:
        known = ", ".join(CODECS)
        raise WriterError(f"cannot write {ext or 'a file without extension'!r} video: use one of {known}")
    return CODECS[ext]


def _patch_avi_rate(path: Path, fps: float) -> None:
    """Write the exact frame rate into an AVI's main and stream headers."""
    rate = Fraction(fps).limit_denominator(1001)
    data = bytearray(path.read_bytes()[:4096])
    avih, strh = data.find(b"avih"), data.find(b"strh")
    if avih < 0 or strh < 0:
        return
    with path.open("r+b") as f:
        f.seek(avih + 8)
        f.write(struct.pack("<I", int(round(1e6 / fps))))
        f.seek(strh + 28)
        f.write(struct.pack("<II", rate.denominator, rate.numerator))


class VideoWriter:
    """Write BGR frames of one fixed size to ``path`` at ``fps``.

    ``size`` is (width, height). Every frame's shape is checked before it is written
    (some OpenCV builds drop wrong-sized frames silently). Use as a context manager or
    call :meth:`close`; ``frames`` counts frames written.
    """

    def __init__(self, path: str | Path, fps: float, size: tuple[int, int],
                 notice: Callable[[str], None] | None = None) -> None:
        self.path = Path(path)
        self.fourcc = codec_for(self.path)
        if not (math.isfinite(fps) and fps > 0):
            raise WriterError(f"invalid frame rate {fps!r}")
        self.fps = float(fps)
        self.size = (int(size[0]), int(size[1]))
        self.frames = 0
        self._notice = notice or (lambda _msg: None)
        self._writer: cv2.VideoWriter | None = None
        self._closed = False
        w, h = self.size
        odd = w % 2 == 1 or h % 2 == 1
        self._native_mjpeg = odd and self.path.suffix.lower() == ".avi"
        self._pad = odd and not self._native_mjpeg
        self.file_size = (w + w % 2, h + h % 2) if self._pad else self.size

    def _open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise WriterError(f"cannot create the folder for {self.path}: {error.strerror}") from None
        fourcc = cv2.VideoWriter_fourcc(*self.fourcc)
        api = cv2.CAP_OPENCV_MJPEG if self._native_mjpeg else cv2.CAP_FFMPEG
        writer = cv2.VideoWriter(str(self.path), api, fourcc, self.fps, self.file_size)
        if not writer.isOpened():
            writer.release()
            self.path.unlink(missing_ok=True)
            raise WriterError(f"cannot open {self.path} for writing with codec {self.fourcc}"
                              " (this OpenCV build lacks it, or the folder is not writable)")
        if self._pad:
            self._notice(f"{self.path.suffix} needs even sizes: frames of {self.size[0]}x{self.size[1]}"
                         f" are padded to {self.file_size[0]}x{self.file_size[1]} (.avi keeps odd sizes)")
        self._writer = writer

    def write(self, frame: np.ndarray) -> None:
        """Append one ``(height, width, 3)`` uint8 BGR frame."""
        if self._closed:
            raise WriterError(f"{self.path} is already closed")
        w, h = self.size
        if frame.shape != (h, w, 3) or frame.dtype != np.uint8:
            raise WriterError(f"frame of shape {frame.shape} {frame.dtype} does not match the"
                              f" video's {w}x{h} BGR uint8")
        if self._writer is None:
            self._open()
        if self._pad:
            frame = cv2.copyMakeBorder(frame, 0, self.file_size[1] - h, 0, self.file_size[0] - w,
                                       cv2.BORDER_REPLICATE)
        self._writer.write(np.ascontiguousarray(frame))
        self.frames += 1

    def close(self) -> None:
        """Finish the file (idempotent). A writer that never wrote a frame leaves no file."""
        if self._closed:
            return
        self._closed = True
        if self._writer is not None:
            self._writer.release()
            self._writer = None
            if self._native_mjpeg:
                _patch_avi_rate(self.path, self.fps)

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
