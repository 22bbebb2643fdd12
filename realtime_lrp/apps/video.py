"""Explain every frame of a video file, in order, none dropped, each at its own timestamp.

Three stages joined by bounded queues: a reader thread decodes frames
(:class:`~realtime_lrp.media.reader.VideoReader`), the calling thread explains them in batches
(:class:`~realtime_lrp.pipeline.processor.FrameProcessor`), and a writer thread encodes them
(:class:`~realtime_lrp.media.writer.VideoWriter`). Each queue ends with a sentinel and the
threads are joined in ``finally``.

How a run ends decides where its frames go:

- complete: verified, then moved to the output path (which held the old file until then);
- a signal (``stop``, a :class:`~realtime_lrp.util.signals.Deferred`): reading stops, the
  frames in flight are finished, and the playable ``NAME.partial.EXT`` keeps them;
- a processing error: the same, and :class:`PartialOutput` says where;
- a failed write (full disk): nothing is kept, :class:`~realtime_lrp.media.writer.WriterError`;
- the input breaks early (a decoder or demuxer error, fewer packets than its index says):
  the output is complete for what the input held, :attr:`VideoResult.truncated` is set and
  :attr:`VideoResult.missing` counts the frames its header announced but never came. A
  count that differs without a break (an MP4 edit list) is only a notice.

Frames come upright (:mod:`~realtime_lrp.media.reader` applies the display matrix) and the
output is written with the rotated pixels and no display matrix, so it plays as the input
does. A frame whose size differs from the first one's (an MPEG-TS that switches resolution,
concatenated clips) is letterboxed to the first size, said once with its frame number.
"""
from __future__ import annotations

import os
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from realtime_lrp.media.reader import DEFAULT_FPS, Frame, InputError, VideoReader
from realtime_lrp.media.writer import FrameSizeError, VideoWriter, WriterError, read_comment
from realtime_lrp.pipeline.processor import FrameProcessor
from realtime_lrp.util.signals import Deferred

__all__ = ["FileOutcome", "InputError", "PartialOutput", "VideoResult", "process_video", "process_videos",
           "video_progress"]

_END = object()


class PartialOutput(RuntimeError):
    """A run failed midway; the frames done were kept in a closed, playable file (said in the message)."""


@dataclass(frozen=True)
class VideoResult:
    """How a run ended.

    ``output`` is the final path, or the partial file an interrupted run kept (None if
    no frame was done); ``signum`` the signal that stopped it; ``missing`` the frames the
    input announced but did not hold.
    """

    frames: int
    expected: int
    fps: float
    size: tuple[int, int]
    seconds: float
    output: Path | None
    signum: int | None = None
    missing: int = 0
    input_error: str | None = None
    truncated: bool = False

    @property
    def interrupted(self) -> bool:
        return self.signum is not None


def _put(q: queue.Queue, item: Any, stop: threading.Event) -> bool:
    """Put unless ``stop`` is set first; True if the item went in."""
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def letterbox(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``image`` scaled to fit (width, height) ``size`` with its aspect kept, centred on black."""
    import cv2

    w, h = size
    ih, iw = image.shape[:2]
    scale = min(w / iw, h / ih)
    nw, nh = max(1, min(w, round(iw * scale))), max(1, min(h, round(ih * scale)))
    resized = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    out = np.zeros((h, w, 3), np.uint8)
    x, y = (w - nw) // 2, (h - nh) // 2
    out[y:y + nh, x:x + nw] = resized
    return out


class _Reader(threading.Thread):
    def __init__(self, reader: VideoReader, out: queue.Queue, stop: threading.Event,
                 notice: Callable[[str], None]):
        super().__init__(name="rtlrp-reader", daemon=True)
        self.reader, self.out, self.stop, self.notice = reader, out, stop, notice
        self.error: BaseException | None = None

    def run(self) -> None:
        size = self.reader.info.size
        said = False
        try:
            for index, frame in enumerate(self.reader.frames()):
                h, w = frame.image.shape[:2]
                if (w, h) != size:
                    if not said:
                        said = True
                        self.notice(f"the input's frame size changes at frame {index} (0-based) from "
                                    f"{size[0]}x{size[1]} to {w}x{h}: frames of another size are letterboxed"
                                    f" to {size[0]}x{size[1]}")
                    frame = Frame(letterbox(frame.image, size), frame.pts)
                if not _put(self.out, frame, self.stop):
                    return
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
            while (item := self.inp.get()) is not _END:
                self.writer.write(*item)
        except BaseException as exc:  # handed to the main thread; the queue is drained below
            self.error = exc
            while self.inp.get() is not _END:
                pass


def _hand_over(q: queue.Queue, item: tuple[np.ndarray, int | None], writer: _Writer) -> None:
    """Queue a frame for the writer, failing fast once the writer has failed."""
    while True:
        if writer.error is not None:
            raise writer.error
        try:
            q.put(item, timeout=0.1)
            return
        except queue.Full:
            continue


def _next_batch(frames_in: queue.Queue, batch: int, stop: Deferred) -> tuple[list[Frame], bool]:
    """Up to ``batch`` frames and whether the input has ended; stops early when a signal came."""
    frames: list[Frame] = []
    while len(frames) < batch and not stop.requested:
        try:
            item = frames_in.get(timeout=0.1)
        except queue.Empty:
            continue
        if item is _END:
            return frames, True
        frames.append(item)
    return frames, False


def process_video(src: str | Path, dst: str | Path, processor: FrameProcessor, batch: int = 1,
                  progress: Any = None, notice: Callable[[str], None] | None = None,
                  stop: Deferred | None = None, codec: str | None = None,
                  crf: int | None = None, settings: str | None = None) -> VideoResult:
    """Explain every frame of ``src`` into ``dst``, keeping timestamps, frame count and size.

    ``progress`` is an optional ``rich.progress.Progress`` (started by the caller).
    ``stop`` is the caller's signal handling; without one, signals are deferred here.
    ``settings`` is stored as the output's ``comment`` tag, so a rerun can tell whether an
    existing output was made the same way.
    Raises :class:`InputError` before any work for a bad input, :class:`WriterError` for a
    failed write, :class:`PartialOutput` for a processing error after some frames.
    """
    notice = notice or (lambda _msg: None)
    dst = Path(dst)
    reader = VideoReader(src)
    info = reader.info
    try:
        writer = VideoWriter(dst, info.rate, processor.output_size(info.size), codec=codec, crf=crf,
                             time_base=info.time_base, audio_from=src if info.audio_streams else None,
                             metadata={"comment": settings} if settings else None, notice=notice)
    except BaseException:
        reader.close()
        raise
    if info.fps_guessed:
        notice(f"{src} does not say its frame rate: writing at {DEFAULT_FPS:g} fps")
    if info.rotation:
        notice(f"{src} is shown turned {info.rotation} degrees counter-clockwise (its display matrix): explained"
               f" upright and written upright as {info.size[0]}x{info.size[1]} pixels, without a display matrix")
    own_stop = stop is None
    stop = Deferred().__enter__() if own_stop else stop
    halt = threading.Event()
    frames_in: queue.Queue = queue.Queue(maxsize=2 * batch + 2)
    frames_out: queue.Queue = queue.Queue(maxsize=2 * batch + 2)
    read_thread = _Reader(reader, frames_in, halt, notice)
    write_thread = _Writer(writer, frames_out)
    task = progress.add_task("explaining", total=info.frame_count or None) if progress is not None else None
    failure: BaseException | None = None
    processed = 0
    start = time.perf_counter()
    read_thread.start()
    write_thread.start()
    try:
        done = False
        while not done and not stop.requested:
            frames, done = _next_batch(frames_in, batch, stop)
            if read_thread.error is not None:
                raise read_thread.error
            if frames:
                rendered, _ = processor.process([f.image for f in frames])
                for frame, out in zip(frames, rendered):
                    _hand_over(frames_out, (out, frame.pts), write_thread)
                processed += len(frames)
                if task is not None:
                    progress.update(task, completed=processed)
    except BaseException as exc:  # the output is settled below, then the error is reported
        failure = exc
    finally:
        halt.set()
        read_thread.join()
        frames_out.put(_END)
        write_thread.join()
        reader.close()
        if own_stop:
            stop.__exit__(None, None, None)
    failure = write_thread.error or failure
    if isinstance(failure, WriterError) and not isinstance(failure, FrameSizeError):
        writer.discard()
        raise failure
    if failure is not None:
        kept = writer.keep_partial()
        if kept is not None and isinstance(failure, Exception):
            raise PartialOutput(f"{failure}; the {writer.frames} frames done are in {kept} (playable),"
                                f" {dst} was left as it was") from failure
        raise failure
    output = writer.keep_partial() if stop.requested else writer.finish()
    if task is not None:
        progress.update(task, completed=writer.frames, total=None if stop.requested else writer.frames)
    if not stop.requested and reader.count_mismatch:
        notice(f"{src} announces {info.frame_count} frames and delivered {reader.frames_read} without an error"
               " (an edit list or a dropped damaged frame): all of them were explained")
    truncated = not stop.requested and reader.truncated
    return VideoResult(writer.frames, info.frame_count, info.fps, writer.size, time.perf_counter() - start,
                       output, stop.signum, reader.missing if truncated else 0, reader.error, truncated)


@dataclass(frozen=True)
class FileOutcome:
    """One input of a many-file run: ``status`` is done, skipped, truncated, failed or interrupted."""

    src: Path
    out: Path
    status: str
    frames: int = 0
    seconds: float = 0.0
    message: str = ""


def output_for(src: Path, out_dir: Path, codec: str | None = None) -> Path:
    """Where a many-file run writes ``src``: ``OUT_DIR/STEM_lrp.EXT`` (EXT from the codec, .mp4 by default)."""
    ext = {"vp9": ".webm", "mjpeg": ".avi"}.get(codec or "", ".mp4")
    return Path(out_dir) / f"{src.stem}_lrp{ext}"


def share(items: list[Path], rank: int, world: int) -> list[Path]:
    """The items one of ``world`` processes takes: every ``world``-th, starting at ``rank``."""
    return items[rank::world]


def already_done(out: Path, settings: str) -> bool:
    """Whether ``out`` is a complete output made with ``settings`` (outputs are only ever complete)."""
    return out.is_file() and read_comment(out) == settings


def process_videos(sources: list[Path], out_dir: Path, processor: FrameProcessor, settings: str,
                   batch: int = 1, progress: Any = None, notice: Callable[[str], None] | None = None,
                   stop: Deferred | None = None, codec: str | None = None, crf: int | None = None,
                   rank: int = 0, world: int = 1) -> list[FileOutcome]:
    """Explain this process's share of ``sources`` into ``out_dir``, skipping finished outputs.

    A file whose output is already there, made with the same ``settings``, is skipped, so a
    rerun resumes. A file that fails in any way (a bad input, a full disk, out of memory) is
    recorded and the next one started; a signal ends the run after the current file's frames
    in flight.
    """
    notice = notice or (lambda _msg: None)
    outcomes = []
    for src in share(sources, rank, world):
        out = output_for(src, out_dir, codec)
        if stop is not None and stop.requested:
            break
        if already_done(out, settings):
            outcomes.append(FileOutcome(src, out, "skipped", message="already done with these settings"))
            continue
        try:
            processor.reset()
            result = process_video(src, out, processor, batch, progress, notice, stop, codec, crf, settings)
        except Exception as exc:  # any failure of one input (out of memory too) is its row; the others go on
            outcomes.append(FileOutcome(src, out, "failed", message=one_line(exc)))
            continue
        if result.interrupted:
            outcomes.append(FileOutcome(src, result.output or out, "interrupted", result.frames, result.seconds,
                                        f"{result.frames} frames kept in {result.output}" if result.output else ""))
            break
        status = "truncated" if result.truncated else "done"
        message = f"input ended {result.missing} frames early" if result.truncated else ""
        outcomes.append(FileOutcome(src, out, status, result.frames, result.seconds, message))
    return outcomes


def one_line(error: BaseException) -> str:
    """An error as the one line a table row or a message shows."""
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


RANK_TIMEOUT_S = float(os.environ.get("RTLRP_RANK_TIMEOUT", "120"))  # a rank silent this long is lost


class Ranks:
    """The processes of a ``torchrun`` run, joined at the start and gathered at the end, never forever.

    :meth:`start` joins the process group (gloo, bounded by ``timeout``) and starts a heartbeat
    thread that counts up a key in the rendezvous store every second; once :meth:`watch` gives it a
    count of work done, it beats only in seconds in which that count moved, so a rank whose work
    is stuck (a hung kernel, a dead device) falls silent although its heartbeat thread lives.
    :meth:`gather` posts this rank's outcomes to the store; rank 0 waits for every other rank's, as
    long as its heartbeat goes on (a long file is not a hang), and gives up on a rank silent for
    ``timeout`` seconds, listing its share as lost. No collective waits on a rank that failed,
    died or hung.
    """

    def __init__(self, rank: int, world: int, timeout: float = RANK_TIMEOUT_S) -> None:
        self.rank, self.world, self.timeout = rank, world, timeout
        self.store: Any = None
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None
        self._work: Callable[[], float] | None = None

    def start(self) -> "Ranks":
        from datetime import timedelta

        import torch.distributed as dist

        if self.world == 1:
            return self
        store, _, _ = next(dist.rendezvous("env://", timeout=timedelta(seconds=self.timeout)))
        if not dist.is_initialized():
            dist.init_process_group("gloo", store=store, rank=self.rank, world_size=self.world,
                                    timeout=timedelta(seconds=self.timeout))
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        self.store = dist.PrefixStore(f"rtlrp-video/{attempt}/", store)
        self._beat = threading.Thread(target=self._heartbeat, name="rtlrp-heartbeat", daemon=True)
        self._beat.start()
        return self

    def watch(self, work: Callable[[], float]) -> None:
        """From now on beat only while ``work()`` (frames done, say) changes from one second to the next."""
        self._work = work

    def _heartbeat(self) -> None:
        last = None
        try:
            while not self._stop.wait(1.0):
                work = self._work
                if work is not None:
                    done = work()
                    if done == last:
                        continue
                    last = done
                self.store.add(f"beat/{self.rank}", 1)
        except Exception:  # the store went away with rank 0: nothing left to tell
            return

    def _post(self, outcomes: list[FileOutcome]) -> None:
        import json

        rows = [{**o.__dict__, "src": str(o.src), "out": str(o.out)} for o in outcomes]
        self.store.set(f"outcomes/{self.rank}", json.dumps(rows))

    def _collect(self, rank: int) -> list[FileOutcome] | None:
        """Rank ``rank``'s outcomes, or None once its heartbeat has stopped for ``timeout`` seconds."""
        import json

        key, beat = f"outcomes/{rank}", f"beat/{rank}"
        last, since = None, time.monotonic()
        while not self.store.check([key]):
            count = self.store.add(beat, 0)
            if count != last:
                last, since = count, time.monotonic()
            elif time.monotonic() - since > self.timeout:
                return None
            time.sleep(0.2)
        rows = json.loads(self.store.get(key))
        return [FileOutcome(**{**r, "src": Path(r["src"]), "out": Path(r["out"])}) for r in rows]

    def gather(self, outcomes: list[FileOutcome], sources: list[Path], out_dir: Path,
               codec: str | None = None, wait: bool = True) -> list[FileOutcome] | None:
        """Every rank's outcomes on rank 0 (None on the others, and on every rank without ``wait``:
        an interrupted run only posts its own); a rank lost on the way has its share listed as failed."""
        if self.world == 1:
            return outcomes
        self._post(outcomes)
        if self.rank != 0 or not wait:
            self.close()
            return None
        everything = list(outcomes)
        for rank in range(1, self.world):
            part = self._collect(rank)
            if part is None:
                part = [FileOutcome(src, output_for(src, out_dir, codec), "failed",
                                    message=f"rank {rank} stopped answering for {self.timeout:g} s before it"
                                            " reported (killed or hung)") for src in share(sources, rank, self.world)]
            everything += part
        self.close()
        return everything

    def close(self) -> None:
        """Stop the heartbeat and leave the process group."""
        import torch.distributed as dist

        self._stop.set()
        if self._beat is not None:
            self._beat.join()
            self._beat = None
        if dist.is_initialized():
            dist.destroy_process_group()


class _FpsColumn(ProgressColumn):
    """Frames per second over rich's recent-sample window."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:6.1f} fps" if speed else "   --- fps", style="progress.data.speed")


def video_progress(console: Console | None = None) -> Progress:
    """A progress bar for video: frames done / total, fps, elapsed time and ETA."""
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), _FpsColumn(),
                    TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=console)
