"""Video file input through PyAV: upright frames with their timestamps, decoded on FFmpeg's threads.

:class:`VideoReader` opens a file and decodes its first frame at once, so a missing, empty
or corrupt input is a one-line :class:`InputError` before any work starts. It then yields
every frame with its presentation timestamp, which lets the writer keep a variable frame
rate; a frame without one gets the previous timestamp plus one frame duration.

Frames come upright, as a player shows them: a display matrix (every portrait phone video
carries one, e.g. a rotation of 90) is applied to the pixels, so the model sees the scene
the right way up and the output, written without a display matrix, plays the same way.

A stream that breaks ends the iteration instead of raising. It is :attr:`VideoReader.truncated`
only when the decoder or demuxer failed, or the container delivered fewer packets than its
index announces; a decoded count that merely differs from the header's (an MP4 edit list
that trims frames, a decoder that drops a damaged one) is :attr:`VideoReader.count_mismatch`.
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
    ``fps_guessed``), ``size`` (width, height) that of the first frame as shown (upright),
    ``frame_count`` the frames its header announces (0 if unknown), ``time_base`` the unit
    of timestamps, ``rotation`` the counter-clockwise turn in degrees (0, 90, 180, 270) that
    its display matrix asks of the first frame, and that the reader applied.
    """

    rate: Fraction
    size: tuple[int, int]
    frame_count: int
    fps_guessed: bool
    time_base: Fraction
    audio_streams: int = 0
    rotation: int = 0

    @property
    def fps(self) -> float:
        return float(self.rate)


@dataclass(frozen=True)
class Frame:
    """One decoded BGR frame, upright, and its timestamp in the stream's ``time_base``."""

    image: np.ndarray
    pts: int


def upright_turn(rotation: float | None) -> int:
    """Quarter turns counter-clockwise (0-3) that show a frame of display-matrix ``rotation``
    (PyAV's ``VideoFrame.rotation``: degrees counter-clockwise) upright."""
    return round((rotation or 0) / 90) % 4


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
        self.packets_read = 0
        self.error: str | None = None
        rate = self.stream.average_rate or self.stream.guessed_rate
        guessed = not rate or not math.isfinite(float(rate)) or float(rate) <= 0
        rate = Fraction(DEFAULT_FPS) if guessed else Fraction(rate)
        time_base = Fraction(self.stream.time_base) if self.stream.time_base else Fraction(1, 90000)
        self._step = max(1, round(1 / (rate * time_base)))  # one frame's duration in time_base
        self._decoded = self._decode()
        first = next(self._decoded, None)
        if first is None:
            self.close()
            raise InputError(f"{self.path} has no readable frames (empty or corrupt)")
        self._first = first
        h, w = first.image.shape[:2]
        self.info = VideoInfo(
            rate=rate, size=(w, h), frame_count=max(0, int(self.stream.frames or 0)), fps_guessed=guessed,
            time_base=time_base, audio_streams=len(self.container.streams.audio), rotation=self._first_rotation,
        )

    def _decode(self) -> Iterator[Frame]:
        import av

        last: int | None = None
        self._first_rotation = 0
        try:
            for packet in self.container.demux(self.stream):
                if packet.size:
                    self.packets_read += 1
                for frame in packet.decode():
                    turn = upright_turn(frame.rotation)
                    if self.frames_read == 0:
                        self._first_rotation = 90 * turn
                    self.frames_read += 1
                    pts = frame.pts if frame.pts is not None else (0 if last is None else last + self._step)
                    last = pts
                    image = frame.to_ndarray(format="bgr24")
                    yield Frame(np.ascontiguousarray(np.rot90(image, turn)) if turn else image, pts)
        except (av.FFmpegError, OSError) as error:
            self.error = str(error)

    def frames(self) -> Iterator[Frame]:
        """Every frame, the first included, in presentation order."""
        yield self._first
        yield from self._decoded

    @property
    def missing(self) -> int:
        """Frames the header announced that were not decoded (0 if it does not say)."""
        return max(0, self.info.frame_count - self.frames_read)

    @property
    def truncated(self) -> bool:
        """Whether the input ended early: a decoder or demuxer error, or fewer packets than its
        index announces (read once the frames are exhausted)."""
        return self.error is not None or 0 < self.packets_read < self.info.frame_count

    @property
    def count_mismatch(self) -> bool:
        """Whether the decoded frames differ from the header's count although nothing broke."""
        return not self.truncated and self.info.frame_count > 0 and self.frames_read != self.info.frame_count

    def close(self) -> None:
        self.container.close()

    def __enter__(self) -> "VideoReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
