"""Video file input through PyAV: frames with their timestamps, decoded on FFmpeg's threads.

:class:`VideoReader` opens a file and decodes its first frame at once, so a missing, empty
or corrupt input is a one-line :class:`InputError` before any work starts. It then yields
every frame with its presentation timestamp, which lets the writer keep a variable frame
rate. A stream that breaks before the frames its header announces ends the iteration
instead of raising; :attr:`VideoReader.missing` then says how many frames never came.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import numpy as np

DEFAULT_FPS = 30.0


class InputError(ValueError):
    """The input video is missing, empty or unreadable; the message is one line."""


@dataclass(frozen=True)
class VideoInfo:
    """What the input announces.

    ``rate`` is its average frame rate (``DEFAULT_FPS`` when it does not say,
    ``fps_guessed``), ``size`` (width, height) that of the first frame, ``frame_count``
    the frames its header announces (0 if unknown), ``time_base`` the unit of timestamps.
    """

    rate: Fraction
    size: tuple[int, int]
    frame_count: int
    fps_guessed: bool
    time_base: Fraction
    audio_streams: int = 0

    @property
    def fps(self) -> float:
        return float(self.rate)


@dataclass(frozen=True)
class Frame:
    """One decoded BGR frame and its timestamp in the stream's ``time_base`` (None if unknown)."""

    image: np.ndarray
    pts: int | None


class VideoReader:
    """Open ``path`` for decoding; iterate :meth:`frames`, then :meth:`close`."""

    def __init__(self, path: str | Path) -> None:
        import av

        self.path = Path(path)
        if not self.path.exists():
            raise InputError(f"{self.path}: no such file")
        if not self.path.is_file():
            raise InputError(f"{self.path} is not a file")
        if self.path.stat().st_size == 0:
            raise InputError(f"{self.path} is empty")
        try:
            self.container = av.open(str(self.path))
        except (av.FFmpegError, OSError, UnicodeDecodeError):
            raise InputError(f"cannot read {self.path}: not a video, or corrupt") from None
        if not self.container.streams.video:
            self.container.close()
            raise InputError(f"{self.path} has no video stream")
        self.stream = self.container.streams.video[0]
        self.stream.thread_type = "AUTO"
        self.frames_read = 0
        self.error: str | None = None
        self._decoded = self._decode()
        first = next(self._decoded, None)
        if first is None:
            self.close()
            raise InputError(f"{self.path} has no readable frames (empty or corrupt)")
        self._first = first
        rate = self.stream.average_rate or self.stream.guessed_rate
        guessed = not rate or not math.isfinite(float(rate)) or float(rate) <= 0
        h, w = first.image.shape[:2]
        self.info = VideoInfo(
            rate=Fraction(DEFAULT_FPS) if guessed else Fraction(rate), size=(w, h),
            frame_count=max(0, int(self.stream.frames or 0)), fps_guessed=guessed,
            time_base=Fraction(self.stream.time_base) if self.stream.time_base else Fraction(1, 90000),
            audio_streams=len(self.container.streams.audio),
        )

    def _decode(self) -> Iterator[Frame]:
        import av

        try:
            for frame in self.container.decode(self.stream):
                self.frames_read += 1
                yield Frame(frame.to_ndarray(format="bgr24"), frame.pts)
        except (av.FFmpegError, OSError) as error:
            self.error = str(error)

    def frames(self) -> Iterator[Frame]:
        """Every frame, the first included, in presentation order."""
        yield self._first
        yield from self._decoded

    @property
    def missing(self) -> int:
        """Frames the header announced that the stream did not deliver (0 if it does not say)."""
        return max(0, self.info.frame_count - self.frames_read)

    def close(self) -> None:
        self.container.close()

    def __enter__(self) -> "VideoReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
