"""The live view: newest camera frame → the frame pass → FPS overlay → window and recording.

One frame at a time: :class:`~realtime_lrp.media.capture.LiveSource` hands over the newest frame
(never one twice), the processor's frame pass (the one ``rtlrp video`` runs, captured on
CUDA) explains and renders it, the status overlay (FPS,
pause, recording, the last key's effect) is drawn on it, and it is shown and recorded.
The FPS counter counts processed frames, over a window of recent ones, not loop turns.

Keys (window only): q / ESC quit, space pause, s snapshot PNG, + / - top-k, c colour
map, l layout. The recording and the window are closed on every way out of the loop.
"""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from realtime_lrp.media.capture import CameraError, EndOfStream, LiveSource
from realtime_lrp.media.display import Display, LiveStats
from realtime_lrp.media.writer import VideoWriter, WriterError
from realtime_lrp.pipeline.processor import FrameProcessor, Prediction, ProcessingError
from realtime_lrp.pipeline.render import wrap_text
from realtime_lrp.util.atomic import OutputError, write_image
from realtime_lrp.util.signals import Deferred, Interrupted, exit_code

Notice = Callable[[str], None]

KEY_HELP = "q quit  space pause  s snapshot  +/- top-k  c colours  l layout"
KEYS: dict[int, str] = {
    ord("q"): "quit", ord("Q"): "quit", 27: "quit",
    ord(" "): "pause",
    ord("s"): "snapshot", ord("S"): "snapshot",
    ord("+"): "more", ord("="): "more",
    ord("-"): "less", ord("_"): "less",
    ord("c"): "cmap", ord("C"): "cmap",
    ord("l"): "layout", ord("L"): "layout",
}
TOP_K_STEP = 2.0  # + doubles the kept fraction, - halves it


class FpsMeter:
    """Frames per second over the last ``window`` processed frames: (n - 1) intervals / time span."""

    def __init__(self, window: int = 30) -> None:
        self._times: deque[float] = deque(maxlen=max(2, window))

    def tick(self, now: float) -> None:
        """Record that a frame was processed at ``now`` (seconds, monotonic)."""
        self._times.append(now)

    def reset(self) -> None:
        """Forget the history (after a pause, whose gap is not processing time)."""
        self._times.clear()

    @property
    def fps(self) -> float:
        """The smoothed rate; 0 until two frames have been processed."""
        if len(self._times) < 2:
            return 0.0
        span = self._times[-1] - self._times[0]
        return (len(self._times) - 1) / span if span > 0 else 0.0


def fit_frame(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``frame`` scaled to fit ``size`` (width, height) keeping its aspect, centred on black."""
    w, h = size
    fh, fw = frame.shape[:2]
    if (fw, fh) == (w, h):
        return frame
    scale = min(w / fw, h / fh)
    nw, nh = max(1, round(fw * scale)), max(1, round(fh * scale))
    canvas = np.zeros((h, w, 3), np.uint8)
    x, y = (w - nw) // 2, (h - nh) // 2
    canvas[y:y + nh, x:x + nw] = cv2.resize(frame, (nw, nh), interpolation=cv2.INTER_AREA)
    return canvas


class LiveRecorder:
    """Records what is shown, in real time, at a fixed ``fps``.

    Each shown frame is written as many times as it stayed on screen (zero times if it was
    replaced within one recording frame), so the file plays at the speed it was seen
    however fast the processing ran. Paused time is left out. The file's size is the first
    frame's; frames of another size (after a layout change) are fitted into it.
    """

    def __init__(self, path: Path, fps: float, notice: Notice | None = None, codec: str | None = None,
                 crf: int | None = None) -> None:
        self.path = path
        self.fps = fps
        self.codec, self.crf = codec, crf
        self._notice = notice
        self._writer: VideoWriter | None = None
        self._frame: np.ndarray | None = None
        self._start = 0.0
        self._paused_at: float | None = None

    @property
    def frames(self) -> int:
        """Frames written to the file so far."""
        return self._writer.frames if self._writer is not None else 0

    def show(self, frame: np.ndarray, now: float) -> None:
        """``frame`` appears on screen at ``now``; the previous one is written for its time."""
        if self._writer is None:
            h, w = frame.shape[:2]
            self._writer = VideoWriter(self.path, self.fps, (w, h), codec=self.codec, crf=self.crf,
                                       notice=self._notice)
            self._start = now
        else:
            self._flush(now, at_least_once=False)
        self._frame = fit_frame(frame, self._writer.size)

    def pause(self, now: float) -> None:
        """Stop the recording clock (the frame shown so far is written up to ``now``)."""
        if self._paused_at is None and self._writer is not None:
            self._flush(now, at_least_once=False)
            self._paused_at = now

    def resume(self, now: float) -> None:
        """Restart the clock, leaving the paused time out of the file."""
        if self._paused_at is not None:
            self._start += now - self._paused_at
            self._paused_at = None

    def close(self, now: float) -> Path | None:
        """Write the last frame for its time on screen, then finish the file: verified and moved
        to :attr:`path`, which is returned (None if nothing was recorded). A failed write
        discards the recording and leaves :attr:`path` as it was. Idempotent."""
        if self._writer is None:
            return None
        try:
            if self._frame is not None:
                frame, self._frame = self._frame, None
                self._flush(self._paused_at if self._paused_at is not None else now, at_least_once=True, frame=frame)
            return self._writer.finish()
        except BaseException:
            self._writer.discard()
            raise

    def _flush(self, now: float, at_least_once: bool, frame: np.ndarray | None = None) -> None:
        """Write the frame on screen (``frame`` or the current one) until the file reaches ``now``."""
        frame = self._frame if frame is None else frame
        due = round((now - self._start) * self.fps)
        repeats = max(due - self._writer.frames, 1 if at_least_once else 0)
        for _ in range(repeats):
            self._writer.write(frame)


def draw_status(image: np.ndarray, fps: float, paused: bool = False, recording: bool = False,
                message: str | None = None) -> np.ndarray:
    """The live overlay, in place: FPS (top right), PAUSED/REC under it, a message at the bottom."""
    h, w = image.shape[:2]
    font = cv2.FONT_HERSHEY_SIMPLEX
    scale = max(0.35, min(1.0, min(h, w) / 450.0))
    thick = max(1, round(scale * 2))
    pad = max(3, round(6 * scale))

    def box(text: str, x: int, y: int, color: tuple[int, int, int]) -> int:
        (tw, th), base = cv2.getTextSize(text, font, scale, thick)
        x = max(0, min(x, w - tw - 2 * pad))
        region = image[y:y + th + base + 2 * pad, x:x + tw + 2 * pad]
        region[:] = (region.astype(np.uint16) * 2 // 5).astype(np.uint8)
        cv2.putText(image, text, (x + pad, y + pad + th), font, scale, color, thick, cv2.LINE_AA)
        return th + base + 2 * pad

    y = box(f"{fps:5.1f} FPS", w, 0, (255, 255, 255))
    if paused:
        y += box("PAUSED", w, y, (0, 215, 255))
    if recording:
        box("REC", w, y, (40, 40, 230))
    if message:
        lines = wrap_text(message, w - 2 * pad, scale, thick, font)
        (_, th), base = cv2.getTextSize(message, font, scale, thick)
        y = h - len(lines) * (th + base + 2 * pad)
        for line in lines:
            y += box(line, 0, max(0, y), (255, 255, 255))
    return image


@dataclass
class LiveSummary:
    """How a live session ended."""

    frames: int = 0
    seconds: float = 0.0
    skipped: int = 0
    reason: str = ""
    error: str | None = None
    interrupted: bool = False
    recorded_frames: int = 0
    recording: Path | None = None
    signum: int | None = None
    snapshots: list[Path] = field(default_factory=list)

    @property
    def fps(self) -> float:
        """Average processed frames per second over the session (pauses included)."""
        return self.frames / self.seconds if self.seconds > 0 else 0.0


class LiveLoop:
    """Runs the live view until quit, window close, end of a file, ``max_frames`` or an error."""

    def __init__(self, source: LiveSource, processor: FrameProcessor, display: Display, *,
                 record: Path | None = None, snapshot_dir: Path = Path("snapshots"),
                 max_frames: int | None = None, notice: Notice | None = None,
                 message_seconds: float = 2.0, stop: Deferred | None = None, codec: str | None = None,
                 crf: int | None = None) -> None:
        self.source = source
        self.stop = stop
        self.processor = processor
        self.display = display
        self.snapshot_dir = snapshot_dir
        self.max_frames = max_frames
        self.notice = notice or (lambda _msg: None)
        self.message_seconds = message_seconds
        self.recorder = LiveRecorder(record, source.fps, self.notice, codec, crf) if record is not None else None
        self.meter = FpsMeter()
        self.summary = LiveSummary()
        self.paused = False
        self._last: np.ndarray | None = None  # the last camera frame explained
        self._before: tuple[tuple, float] | None = None  # the stream's state before it, and its top-k
        self._shown: np.ndarray | None = None
        self._message: tuple[str, float] | None = None
        if display.interactive:
            self._message = (KEY_HELP, time.monotonic() + 2 * message_seconds)

    def run(self) -> LiveSummary:
        """Loop until the end; closes the recording and the display whatever happens."""
        start = time.monotonic()
        try:
            while self.summary.reason == "":
                self._turn()
        except KeyboardInterrupt as exc:
            self.summary.interrupted = True
            self.summary.signum = exit_code(exc) - 128
            self.summary.reason = "interrupted"
        except (CameraError, ProcessingError, WriterError, OutputError) as exc:
            self.summary.error = str(exc)
            self.summary.reason = "error"
        except OSError as exc:  # the recording's folder cannot be created, the disk is full, ...
            self.summary.error = f"cannot write {exc.filename or self.recorder.path}: {exc.strerror or exc}"
            self.summary.reason = "error"
        finally:
            self.summary.seconds = time.monotonic() - start
            self.summary.skipped = self.source.skipped
            try:
                if self.recorder is not None:
                    self.summary.recording = self.recorder.close(time.monotonic())
                    self.summary.recorded_frames = self.recorder.frames if self.summary.recording else 0
            except (WriterError, OutputError, OSError) as exc:
                self.summary.error = self.summary.error or str(exc)
                self.summary.reason = "error"
            finally:
                self.display.close()
        return self.summary

    def _turn(self) -> None:
        """One loop turn: process the newest frame if there is one, then handle keys."""
        if self.stop is not None and self.stop.requested:
            self.summary.interrupted = True
            self.summary.signum = self.stop.signum
            self.summary.reason = f"interrupted by {Interrupted(self.stop.signum).name}"
            return
        if self.display.closed:
            self.summary.reason = "window closed"
            return
        if not self.paused:
            try:
                frame = self.source.read(timeout=0.03)
            except EndOfStream:
                self.summary.reason = "end of stream"
                return
            if frame is not None:
                self._process(frame.image)
                if self.max_frames is not None and self.summary.frames >= self.max_frames:
                    self.summary.reason = "max frames"
                    return
        key = self.display.poll_key(30 if self.paused else 1)
        if key is not None and key in KEYS:
            self._act(KEYS[key])

    def _process(self, image: np.ndarray) -> None:
        self._before = (self.processor.passes.state.state(), self.processor.top_k)
        rendered, preds = self.processor.process([image])
        now = time.monotonic()
        self.meter.tick(now)
        self.summary.frames += 1
        self._last = image
        self._present(rendered[0], preds[0], now)

    def _redraw(self, now: float) -> None:
        """Explain the still frame again with the current settings, from the stream's state before it."""
        state, top_k = self._before
        if top_k == self.processor.top_k:  # another top-k started the state afresh
            self.processor.passes.state.restore(state)
        rendered, preds = self.processor.process([self._last])
        self._present(rendered[0], preds[0], now)

    def _present(self, out: np.ndarray, pred: Prediction, now: float) -> None:
        """Draw the overlay on a rendered frame; show and record it."""
        message = None
        if self._message is not None and now < self._message[1]:
            message = self._message[0]
        draw_status(out, self.meter.fps, self.paused, self.recorder is not None, message)
        self._shown = out
        self.display.show(out, self._stats(pred))
        if self.recorder is not None and not self.paused:
            self.recorder.show(out, now)

    def _stats(self, pred: Prediction) -> LiveStats:
        return LiveStats(
            source=str(self.source.spec), fps=self.meter.fps, frames=self.summary.frames,
            skipped=self.source.skipped, label=pred.label, top_k=self.processor.top_k,
            cmap=self.processor.cmap, layout=self.processor.layout,
            device=f"{self.processor.device.type} {str(self.processor.dtype).replace('torch.', '')}",
            paused=self.paused, recording=str(self.recorder.path) if self.recorder is not None else None,
        )

    def _say(self, text: str) -> None:
        self._message = (text, time.monotonic() + self.message_seconds)

    def _act(self, action: str) -> None:
        now = time.monotonic()
        if action == "quit":
            self.summary.reason = "quit"
            return
        if action == "pause":
            self.paused = not self.paused
            if self.recorder is not None:
                (self.recorder.pause if self.paused else self.recorder.resume)(now)
            if not self.paused:
                self.meter.reset()  # the pause is not processing time
            self._say("paused: space resumes" if self.paused else "resumed")
        elif action == "snapshot":
            self._say(self._snapshot())
        elif action in ("more", "less") and self.processor.method != "lrp":
            self._say(f"top-k is LRP's: {self.processor.method} has none")
        elif action in ("more", "less"):
            value = self.processor.scale_top_k(TOP_K_STEP if action == "more" else 1 / TOP_K_STEP)
            self._say(f"top-k {100 * value:g}%")
        elif action == "cmap":
            self._say(f"colour map {self.processor.next_cmap()}")
        elif action == "layout":
            self._say(f"layout {self.processor.next_layout()}")
        if self._last is not None and (self.paused or action == "pause"):
            self._redraw(now)  # the still frame with the new settings

    def _snapshot(self) -> str:
        """Save the frame on screen as a PNG in ``snapshot_dir``; the message to show."""
        if self._shown is None:
            return "no frame to save yet"
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = self.snapshot_dir / f"rtlrp-{stamp}-{self.summary.frames:06d}.png"
        try:
            write_image(path, self._shown)
        except OutputError as exc:
            self.notice(f"could not write snapshot: {exc}")
            return "snapshot failed"
        self.summary.snapshots.append(path)
        self.notice(f"saved {path}")
        return f"saved {path.name}"
