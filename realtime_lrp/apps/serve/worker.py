"""The one thread that owns the processor and explains the newest frame of every client in batches."""
from __future__ import annotations

import json
import platform
import threading
import time
from collections import OrderedDict
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from realtime_lrp.apps.live import FpsMeter
from realtime_lrp.apps.serve.protocol import JPEG_QUALITY, Settings, encode_result
from realtime_lrp.pipeline import render
from realtime_lrp.pipeline.processor import FrameProcessor, ProcessingError

Notice = Callable[[str], None]


def device_name(processor: FrameProcessor) -> str:
    """``NVIDIA H100 (CUDA, fp16)`` or ``AMD EPYC 7B13 (CPU, fp32, 1 thread)``: shown on the page."""
    import torch

    if processor.device.type == "cuda":
        return f"{torch.cuda.get_device_name(processor.device)} (CUDA, fp16)"
    cpu = platform.processor() or platform.machine()
    with suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    threads = torch.get_num_threads()
    return f"{cpu} (CPU, fp32, {threads} thread{'s' if threads != 1 else ''})"


@dataclass
class Job:
    """One frame waiting for the worker, with the settings it is to be explained with."""

    frame_id: int
    image: np.ndarray
    settings: Settings
    received: float
    reset: bool = False


@dataclass(eq=False)
class Stream:
    """A sequence of frames explained with one colour scale: a browser client's, or the kiosk source's.

    ``deliver`` takes each reply (bytes: a result; str: JSON text) and must not block.
    ``scale`` and ``key`` belong to the worker thread; the counters are for ``/stats``.
    """

    deliver: Callable[[bytes | str], None]
    scale: render.StableScale = field(default_factory=render.StableScale)
    key: tuple[str, float] | None = None
    explained: int = 0


class Worker:
    """The one thread that owns the processor: newest frame of each stream → batch → replies.

    Frames wait in one slot per stream (a newer frame replaces the older one, which
    :meth:`submit` returns so its sender can be told). Each turn takes the waiting
    frames of up to ``batch`` streams, oldest first, and explains them in one call per
    (preset, top-k) group, with one processor per preset (built on first use, sharing the
    model). Colour scale, colour map, layout and alpha are applied per stream.
    """

    def __init__(self, processor: FrameProcessor, batch: int = 8, notice: Notice | None = None) -> None:
        self.base = processor
        self.batch = max(1, batch)
        self.notice = notice
        self._processors: dict[str, FrameProcessor] = {processor.preset: processor}
        self._pending: OrderedDict[Stream, Job] = OrderedDict()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="rtlrp serve worker", daemon=True)
        self.meter = FpsMeter(30)
        self.frames = 0
        self.batches = 0

    def start(self) -> None:
        """Run the first-call set-up, then start the thread."""
        h, w = self.base.size
        self.base.explain([np.zeros((h, w, 3), np.uint8)])
        self._thread.start()

    def stop(self) -> None:
        """Finish the batch in hand and end the thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(30)

    @property
    def fps(self) -> float:
        """Frames explained per second over the last 30 (all streams together)."""
        return self.meter.fps

    def submit(self, stream: Stream, job: Job) -> Job | None:
        """Queue ``job`` as ``stream``'s newest frame; the frame it replaced, if one was waiting."""
        with self._cond:
            old = self._pending.pop(stream, None)
            if old is not None and old.reset:
                job.reset = True
            self._pending[stream] = job
            self._cond.notify()
        return old

    def discard(self, stream: Stream) -> None:
        """Forget ``stream``'s waiting frame (its client left)."""
        with self._cond:
            self._pending.pop(stream, None)

    def _take(self) -> list[tuple[Stream, Job]] | None:
        with self._cond:
            while not self._pending and not self._stopping:
                self._cond.wait()
            if self._stopping:
                return None
            items = []
            while self._pending and len(items) < self.batch:
                items.append(self._pending.popitem(last=False))
            return items

    def _run(self) -> None:
        while (items := self._take()) is not None:
            groups: dict[tuple[str, float], list[tuple[Stream, Job]]] = {}
            for stream, job in items:
                groups.setdefault((job.settings.preset, job.settings.top_k), []).append((stream, job))
            self.batches += 1
            for key, group in groups.items():
                try:
                    self._explain(key, group)
                except Exception as exc:  # noqa: BLE001 - tell the clients, keep serving
                    message = str(exc) if isinstance(exc, ProcessingError) else f"{type(exc).__name__}: {exc}"
                    if self.notice is not None:
                        self.notice(f"could not explain {len(group)} frame(s): {message}")
                    for stream, _job in group:
                        stream.deliver(json.dumps({"type": "error", "message": message}))

    def _processor(self, preset: str) -> FrameProcessor:
        if preset not in self._processors:
            base = self.base
            self._processors[preset] = FrameProcessor(base.model, base.card, preset=preset, top_k=base.top_k,
                                                      target=base.target, size=base.size, device=str(base.device))
        return self._processors[preset]

    def _explain(self, key: tuple[str, float], group: list[tuple[Stream, Job]]) -> None:
        """Explain one (preset, top-k) group in one call, then render and send each stream's frame."""
        started = time.monotonic()
        processor = self._processor(key[0])
        processor.top_k = key[1]
        relevance, preds = processor.explain([job.image for _, job in group])
        explained = time.monotonic()
        for (stream, job), r, pred in zip(group, relevance, preds):
            if job.reset or stream.key != key:
                stream.scale.reset()  # a new stream, or maps of another method: another magnitude
                stream.key = key
            scale = stream.scale.update(r)[0]
            cmap = job.settings.cmap or render.default_cmap(processor.signed)
            image = render.render(job.image, r, scale, cmap, job.settings.layout, job.settings.alpha)
            jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])[1]
            self.frames += 1
            stream.explained += 1
            self.meter.tick(time.monotonic())
            meta = {
                "type": "result", "id": job.frame_id, "label": pred.label, "class": pred.name,
                "probability": round(pred.probability, 4), "explained": pred.explained_name,
                "width": int(image.shape[1]), "height": int(image.shape[0]),
                "preset": key[0], "top_k": key[1], "cmap": cmap, "layout": job.settings.layout,
                "batch": len(group), "explain_ms": round(1000 * (explained - started), 2),
                "wait_ms": round(1000 * (started - job.received), 2), "server_fps": round(self.fps, 2),
            }
            stream.deliver(encode_result(meta, jpeg.tobytes()))
