"""The one thread that owns the processor and explains the newest frame of every client in batches.

A batch runs through the processor's frame pass (the one ``rtlrp video`` runs, captured on
CUDA) in its ``streams`` mode: frame i is scaled and smoothed with the state of its client. The
``compare`` layout runs two passes per batch (LRP and a CAM method, each with its own state per
client) and puts their overlays side by side.
"""
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
from realtime_lrp.apps.serve.protocol import COMPARE, JPEG_QUALITY, Settings, encode_result
from realtime_lrp.lrp.cam import CAM_METHODS
from realtime_lrp.lrp.presets import PRESET_NAMES
from realtime_lrp.pipeline.processor import FrameProcessor, ProcessingError
from realtime_lrp.pipeline.stream import StreamState

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
    ``states`` (colour scale and smoothed map of each half of the frame: one, two in the compare
    layout; made by the worker on first use) and ``keys`` (the explainer and top-k each was made
    with) belong to the worker thread; the counters are for ``/stats``.
    """

    deliver: Callable[[bytes | str], None]
    states: list[StreamState] = field(default_factory=list)
    keys: list[tuple[str, float]] = field(default_factory=list)
    explained: int = 0

    def state(self, half: int, key: tuple[str, float], processor: FrameProcessor, reset: bool) -> StreamState:
        """The state of one half of the frame, started afresh for a new stream or another explainer or top-k
        (maps of another magnitude)."""
        while len(self.states) <= half:
            self.states.append(StreamState(processor.smooth, processor.size, processor.device))
            self.keys.append(key)
        if reset or self.keys[half] != key:
            self.states[half].reset()
            self.keys[half] = key
        return self.states[half]


def group_key(settings: Settings, shape: tuple[int, ...]) -> tuple:
    """Frames explained in one pass share this: the explainers (one, or LRP's and the compared CAM
    method's), top-k, colour map, layout, alpha and frame shape."""
    s = settings
    names = (s.preset, s.compared) if s.layout == COMPARE else (s.explainer,)
    return names, s.top_k, s.cmap, s.layout, s.alpha, shape


class Worker:
    """The one thread that owns the processor: newest frame of each stream → batch → replies.

    Frames wait in one slot per stream (a newer frame replaces the older one, which
    :meth:`submit` returns so its sender can be told). Each turn takes the waiting
    frames of up to ``batch`` streams, oldest first, and explains and renders them in one
    pass per group of the same explainer, top-k, colour map, layout, alpha and frame size (two
    passes for the compare layout), with one processor per preset and per CAM method (sharing the
    model), all built at start-up: building one on
    first use stalled every stream, and building one in another thread races the worker
    (torch.fx tracing patches ``Module.__call__`` process-wide). Each stream keeps its own
    colour scale.
    """

    def __init__(self, processor: FrameProcessor, batch: int = 8, notice: Notice | None = None) -> None:
        self.base = processor
        self.batch = max(1, batch)
        self.notice = notice
        self._processors: dict[str, FrameProcessor] = {explainer_name(processor): processor}
        self._unbuildable: dict[str, str] = {}
        self._pending: OrderedDict[Stream, Job] = OrderedDict()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="rtlrp serve worker", daemon=True)
        self.meter = FpsMeter(30)
        self.frames = 0
        self.batches = 0

    def start(self) -> None:
        """Build and warm up the processor of every preset and CAM method (one that fails answers its
        frames with the error), then start the thread."""
        h, w = self.base.size
        warm = [np.zeros((h, w, 3), np.uint8)]
        self.base.passes.process(warm, stable=False, label=False)
        for name in (*PRESET_NAMES, *CAM_METHODS):
            if name in self._processors:
                continue
            try:
                processor = self._make(name)
                processor.passes.process(warm, stable=False, label=False)
            except Exception as exc:  # noqa: BLE001 - the other explainers still serve
                self._unbuildable[name] = f"cannot explain with {name}: {exc}"
                continue
            self._processors[name] = processor
        self._thread.start()

    def ready(self) -> set[str]:
        """The presets and CAM methods whose processors are built."""
        return set(self._processors)

    def _make(self, name: str) -> FrameProcessor:
        base = self.base
        method, preset = (name, "auto") if name in CAM_METHODS else ("lrp", name)
        return FrameProcessor(base.model, base.card, method=method, preset=preset, cam_layer=base.cam_layer,
                              top_k=base.top_k, target=base.target, size=base.size, device=str(base.device),
                              fit=base.fit, smooth=base.smooth, notice=self.notice)

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
            groups: dict[tuple, list[tuple[Stream, Job]]] = {}
            for stream, job in items:
                groups.setdefault(group_key(job.settings, job.image.shape), []).append((stream, job))
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
        if preset in self._unbuildable:
            raise ProcessingError(self._unbuildable[preset])
        return self._processors[preset]

    def _explain(self, key: tuple, group: list[tuple[Stream, Job]]) -> None:
        """Explain and render one group of frames in one pass per explainer, each with its stream's
        state; send each (the compare layout: the halves side by side)."""
        started = time.monotonic()
        names, top_k, cmap, layout, alpha, _shape = key
        halves, preds, cmaps = [], [], []
        for half, name in enumerate(names):
            processor = self._processor(name)
            processor.top_k = top_k
            processor.cmap, processor.alpha = cmap, alpha
            processor.layout = "overlay" if layout == COMPARE else layout
            states = [stream.state(half, (name, top_k), processor, job.reset) for stream, job in group]
            images, found = processor.passes.process([job.image for _, job in group], label=False, streams=states)
            halves.append(images)
            preds = preds or found
            cmaps.append(processor.cmap)
        images = [np.hstack(parts) if len(parts) > 1 else parts[0] for parts in zip(*halves)]
        explained = time.monotonic()
        for (stream, job), image, pred in zip(group, images, preds):
            jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])[1]
            self.frames += 1
            stream.explained += 1
            self.meter.tick(time.monotonic())
            meta = {
                "type": "result", "id": job.frame_id, "label": pred.label, "class": pred.name,
                "probability": round(pred.probability, 4), "explained": pred.explained_name,
                "width": int(image.shape[1]), "height": int(image.shape[0]),
                "preset": names[0] if names[0] in PRESET_NAMES else None, "method": _method(names[0]),
                "halves": [{"title": _title(n), "cmap": c} for n, c in zip(names, cmaps)] if len(names) > 1 else None,
                "top_k": top_k, "cmap": cmaps[0], "layout": layout,
                "batch": len(group), "explain_ms": round(1000 * (explained - started), 2),
                "wait_ms": round(1000 * (started - job.received), 2), "server_fps": round(self.fps, 2),
            }
            stream.deliver(encode_result(meta, jpeg.tobytes()))


def explainer_name(processor: FrameProcessor) -> str:
    """The worker's name for a processor's explainer: its preset for LRP, else its CAM method."""
    return processor.preset if processor.method == "lrp" else processor.method


def _method(name: str) -> str:
    return name if name in CAM_METHODS else "lrp"


def _title(name: str) -> str:
    """How the page names an explainer over its half of the compare layout."""
    return CAM_TITLES.get(name, f"LRP {name}")


CAM_TITLES = {"gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++", "layercam": "LayerCAM"}
