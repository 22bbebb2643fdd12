"""Explain every frame of a video file, in order, none dropped.

Three stages joined by bounded queues: a reader thread decodes frames, the calling
thread explains them in batches (:class:`~realtime_lrp.processor.FrameProcessor`), and a
writer thread encodes them. Each queue ends with a sentinel; the threads are joined in
``finally``, so an error or Ctrl-C still leaves a closed, playable file of the frames done.
"""
from __future__ import annotations

import math
import os
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # keep FFmpeg's own messages off the terminal

import cv2
import numpy as np
from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)
from rich.text import Text

from realtime_lrp.processor import FrameProcessor
from realtime_lrp.writer import VideoWriter

DEFAULT_FPS = 30.0
_END = object()


class InputError(ValueError):
    """The input video is missing, empty or unreadable; the message is one line."""


class PartialOutput(RuntimeError):
    """A run failed midway; the frames done were kept in a closed file (said in the message)."""


@dataclass(frozen=True)
class VideoInfo:
    """What the input announces: ``fps`` (float, ``DEFAULT_FPS`` if it reads 0 or NaN),
    ``size`` (width, height) of the first frame, ``frame_count`` (0 if unknown)."""

    fps: float
    size: tuple[int, int]
    frame_count: int
    fps_guessed: bool


@dataclass(frozen=True)
class VideoResult:
    """How a run ended: frames written, frames announced, and whether Ctrl-C stopped it."""

    frames: int
    expected: int
    fps: float
    size: tuple[int, int]
    seconds: float
    interrupted: bool


def open_video(path: str | Path) -> tuple[cv2.VideoCapture, VideoInfo, np.ndarray]:
    """Open ``path`` and decode its first frame, or raise a one-line :class:`InputError`."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if not path.is_file():
        raise InputError(f"{path} is not a file")
    if path.stat().st_size == 0:
        raise InputError(f"{path} is empty")
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        cap.release()
        raise InputError(f"cannot read {path}: not a video, or corrupt")
    ok, frame = cap.read()
    if not ok or frame is None:
        cap.release()
        raise InputError(f"{path} has no readable frames (empty or corrupt)")
    fps = float(cap.get(cv2.CAP_PROP_FPS))
    guessed = not (math.isfinite(fps) and fps > 0)
    count = cap.get(cv2.CAP_PROP_FRAME_COUNT)
    count = int(count) if math.isfinite(count) and count > 0 else 0
    info = VideoInfo(DEFAULT_FPS if guessed else fps, (frame.shape[1], frame.shape[0]), count, guessed)
    return cap, info, frame


def _put(q: queue.Queue, item: Any, stop: threading.Event) -> bool:
    """Put unless ``stop`` is set first; True if the item went in."""
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


class _Reader(threading.Thread):
    def __init__(self, cap: cv2.VideoCapture, first: np.ndarray, out: queue.Queue, stop: threading.Event):
        super().__init__(name="rtlrp-reader", daemon=True)
        self.cap, self.first, self.out, self.stop = cap, first, out, stop
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            frame = self.first
            while frame is not None:
                if not _put(self.out, frame, self.stop):
                    return
                ok, frame = self.cap.read()
                frame = frame if ok else None
        except BaseException as exc:  # handed to the main thread
            self.error = exc
        finally:
            _put(self.out, _END, self.stop)


class _Writer(threading.Thread):
    def __init__(self, writer: VideoWriter, inp: queue.Queue):
        super().__init__(name="rtlrp-writer", daemon=True)
        self.writer, self.inp = writer, inp
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while (frame := self.inp.get()) is not _END:
                self.writer.write(frame)
        except BaseException as exc:  # handed to the main thread
            self.error = exc


def process_video(src: str | Path, dst: str | Path, processor: FrameProcessor, batch: int = 1,
                  progress: Any = None, notice: Callable[[str], None] | None = None) -> VideoResult:
    """Explain every frame of ``src`` into ``dst``, keeping fps, frame count and frame size.

    ``progress`` is an optional ``rich.progress.Progress`` (started by the caller); it gets
    one task advanced per frame explained. Errors in any stage are re-raised here after the
    output is closed; Ctrl-C returns a result with ``interrupted=True``. The output file
    only appears once the first frame is done, so a bad input leaves none.
    """
    notice = notice or (lambda _msg: None)
    cap, info, first = open_video(src)
    try:
        writer = VideoWriter(dst, info.fps, processor.output_size(info.size), notice=notice)
    except BaseException:
        cap.release()
        raise
    if info.fps_guessed:
        notice(f"{src} does not say its frame rate: writing at {DEFAULT_FPS:g} fps")
    stop = threading.Event()
    frames_in: queue.Queue = queue.Queue(maxsize=2 * batch + 2)
    frames_out: queue.Queue = queue.Queue(maxsize=2 * batch + 2)
    reader = _Reader(cap, first, frames_in, stop)
    writer_thread = _Writer(writer, frames_out)
    task = progress.add_task("explaining", total=info.frame_count or None) if progress is not None else None
    interrupted = False
    failure: Exception | None = None
    processed = 0
    start = time.perf_counter()
    reader.start()
    writer_thread.start()
    try:
        done = False
        while not done:
            frames = []
            while len(frames) < batch:
                item = frames_in.get()
                if item is _END:
                    done = True
                    break
                frames.append(item)
            if reader.error is not None:
                raise reader.error
            if frames:
                rendered, _ = processor.process(frames)
                for out in rendered:
                    _hand_over(frames_out, out, writer_thread)
                processed += len(frames)
                if task is not None:
                    progress.update(task, completed=processed)
    except KeyboardInterrupt:
        interrupted = True
    except Exception as exc:  # the output is finished below, then the error is reported
        failure = exc
    finally:
        stop.set()
        reader.join()
        cap.release()
        if writer_thread.is_alive():
            frames_out.put(_END)
            writer_thread.join()
        writer.close()
    failure = writer_thread.error or failure
    if failure is not None:
        if writer.frames:
            raise PartialOutput(f"{failure}; the {writer.frames} frames done are in {dst}") from failure
        raise failure
    if task is not None:
        progress.update(task, completed=writer.frames, total=None if interrupted else writer.frames)
    if not interrupted and info.frame_count and writer.frames < info.frame_count:
        notice(f"{src} ended after {writer.frames} of the {info.frame_count} frames its header announces")
    return VideoResult(writer.frames, info.frame_count, info.fps, writer.size,
                       time.perf_counter() - start, interrupted)


def _hand_over(q: queue.Queue, frame: np.ndarray, writer: _Writer) -> None:
    """Queue a frame for the writer, failing fast if the writer has stopped."""
    while True:
        if writer.error is not None or not writer.is_alive():
            raise writer.error or RuntimeError("the video writer stopped")
        try:
            q.put(frame, timeout=0.1)
            return
        except queue.Full:
            continue


class _FpsColumn(ProgressColumn):
    """Frames per second over rich's recent-sample window."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:6.1f} fps" if speed else "   --- fps", style="progress.data.speed")


def video_progress(console: Console | None = None) -> Progress:
    """A progress bar for video: frames done / total, fps, elapsed time and ETA."""
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), _FpsColumn(),
                    TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=console)
