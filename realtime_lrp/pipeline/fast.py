"""The frame pass: a batch of frames explained and rendered in one pass, captured on CUDA.

Per input shape and setting, :class:`FastProcessor` builds one pass: frames are copied into
a static host buffer (pinned on CUDA), uploaded with a non-blocking copy, converted, fitted
and normalised (:func:`realtime_lrp.pipeline.preprocess.to_input`), explained by the processor's
explainer (the LRP engine or a CAM method; fp16 and channels_last on CUDA), their maps smoothed and scaled by the stream's state
(:mod:`realtime_lrp.pipeline.stream`), coloured and blended over the frame
(:func:`realtime_lrp.pipeline.render.compose`), and downloaded into a pinned host buffer.
On CUDA the pass is captured once in a CUDA graph (:class:`CapturedCall`; all passes share one
memory pool) and replayed per batch, so a frame costs one host-to-device copy, one graph
launch and one device-to-host copy. On the CPU the same code runs eagerly. If the copies
cannot be captured, the graph holds the device part alone and the copies run around it; if
nothing can be captured the pass runs eagerly. ``notice`` says which. The CAM methods run eagerly
on CUDA too, and say so once: their pass holds a backward pass (``torch.autograd.grad``), which the
fake-CUDA checks of ``tests/test_capturable.py`` cannot run (autograd needs a real CUDA context),
so its capture is unchecked.

A batch smaller than a pass already captured for its shape (the last one of a video) runs in
that pass, padded; the padding is left out of the stream's state and discarded. The label
(and the legend) are drawn by OpenCV on the host after the download.

Fidelity guard: in fp16 a rule's denominator can overflow and blank a frame's map. The pass
downloads the engine's per-frame ``finite`` flag with the predictions; after the sync, the
frames flagged (rare) are explained again in fp32, eagerly, outside the graph, and the run
says so once (:meth:`~realtime_lrp.pipeline.processor.FrameProcessor.say_overflow`). The
stream's colour scale and smoothed map then fold in the fp32 map, not the blank one.

Three modes: ``stream`` (one stream, frames folded into its state in order: video, webcam),
``streams`` (frame i belongs to stream i, each with its own state: serve) and ``stills``
(each frame scaled on its own, nothing kept: explain).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from realtime_lrp.lrp.cam import CAM
from realtime_lrp.lrp.engine import LRP
from realtime_lrp.pipeline import render
from realtime_lrp.pipeline.preprocess import Fit, as_frame, card_stats, to_input
from realtime_lrp.pipeline.results import Prediction, ProcessingError, out_of_memory
from realtime_lrp.pipeline.stream import StableScale, StreamState

if TYPE_CHECKING:
    from realtime_lrp.pipeline.processor import FrameProcessor

Notice = Callable[[str], None]

MODES: tuple[str, ...] = ("stream", "streams", "stills")

_POOL: list[Any] = []


def shared_pool() -> Any:
    """The one CUDA graph memory pool all captured passes of this process share."""
    if not _POOL:
        _POOL.append(torch.cuda.graph_pool_handle())
    return _POOL[0]


class CapturedCall:
    """``fn(*inputs)`` replayed from a CUDA graph on CUDA, called eagerly elsewhere.

    ``inputs`` are static tensors: write new data into them in place, then call. The
    outputs are static too (overwritten by the next call). ``graph=False`` forces eager
    calls; a capture that fails falls back to eager and sends one line to ``notice``
    (``graphed`` says which it is). ``fn`` runs ``warmup`` times on a side stream before
    capture, as CUDA graphs require. ``device`` says where ``fn`` runs when every input is a
    host tensor (a pass that starts with an upload); by default, the inputs' device. Graphs
    are captured into ``pool`` (default: :func:`shared_pool`).
    """

    def __init__(self, fn: Callable[..., Any], inputs: Sequence[Tensor], graph: bool = True,
                 warmup: int = 2, notice: Notice | None = None, name: str = "pass",
                 device: torch.device | None = None, pool: Any = None) -> None:
        self.fn = fn
        self.inputs = list(inputs)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.outputs: Any = None
        cuda = device.type == "cuda" if device is not None else any(t.is_cuda for t in self.inputs)
        if graph and cuda:
            try:
                self._capture(warmup, pool if pool is not None else shared_pool())
            except Exception as exc:  # any capture failure: run eagerly instead
                self.graph = None
                torch.cuda.synchronize()
                if notice is not None:
                    notice(f"CUDA graph capture of the {name} failed ({str(exc).splitlines()[0][:120]});"
                           " running it eagerly")

    @property
    def graphed(self) -> bool:
        """Whether calls replay a CUDA graph."""
        return self.graph is not None

    def _capture(self, warmup: int, pool: Any) -> None:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(warmup):
                self.fn(*self.inputs)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool):
            self.outputs = self.fn(*self.inputs)
        self.graph = graph

    def __call__(self) -> Any:
        """Run once on the current contents of ``inputs``; returns the (static) outputs."""
        if self.graph is None:
            return self.fn(*self.inputs)
        self.graph.replay()
        return self.outputs


def channels_last_weights(lrp: LRP) -> None:
    """Store the engine's 4-D weights (forward and rule weights) channels_last, in place.

    With channels_last activations cuDNN then runs NHWC kernels without converting a
    weight on every call. Values are unchanged.
    """
    def convert(t: Any) -> Any:
        return t.contiguous(memory_format=torch.channels_last) if isinstance(t, Tensor) and t.dim() == 4 else t

    for step in lrp.steps:
        step.weight = convert(step.weight)
        for group in getattr(step.propagate, "groups", ()):
            for term in group.terms:
                term.weight = convert(term.weight)


class DevicePass:
    """The device part of a frame pass: uint8 frames (N, H, W, C) on the device and a (N,)
    bool ``valid`` mask in; rendered frames (N, H k, W' k, 3) and a (5, N) tensor of
    (top-1, probability, explained class, finite, first bad step) out: the last two are the
    engine's fidelity guard (:class:`~realtime_lrp.lrp.engine.LRPResult`; -1 where not tracked).

    Conversion, fitting and normalisation, the LRP call, smoothing and the colour scale
    (``state``, per ``mode``), colour map and blend are device work only, with no host
    synchronisation, so a CUDA graph can hold them. ``fit`` is the frames' geometry;
    ``target`` what the explainer (the engine or a CAM method) gets (a device tensor for a class
    index, see :meth:`FastProcessor.static_target`); ``enlarge`` repeats the shown frame's pixels k times.
    """

    def __init__(self, explainer: LRP | CAM, fit: Fit, mean: Sequence[float], std: Sequence[float], state: StreamState,
                 cmap: str, layout: str, alpha: float, target: Any, mode: str = "stream", enlarge: int = 1) -> None:
        device = state.scale.value.device
        self.explainer = explainer
        self.fit = fit
        self.mean, self.std = card_stats({"mean": mean, "std": std}, device)
        self.state = state
        colormap = render.get_colormap(cmap)
        self.centered = colormap.centered
        self.lut = render.lut_tensor(colormap, device)
        self.layout = layout
        self.alpha = float(alpha)
        self.target = target
        self.mode = mode
        self.enlarge = int(enlarge)

    def preprocess(self, frames: Tensor) -> Tensor:
        """uint8 frames (N, H, W, C) → the model's normalised input (channels_last on CUDA)."""
        x = to_input(frames, self.explainer.in_channels, self.fit, self.mean, self.std, self.explainer.dtype)
        return x.contiguous(memory_format=torch.channels_last) if x.is_cuda else x.contiguous()

    @torch.no_grad()
    def __call__(self, frame: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
        result = self.explainer(self.preprocess(frame), target=self.target)
        relevance = torch.nan_to_num(result.relevance.float(), nan=0.0, posinf=0.0, neginf=0.0)
        if self.mode == "stills":
            scale = StableScale.frame_scale(relevance, self.state.scale.percentile)
            scale = torch.where(torch.isfinite(scale) & (scale > 0), scale, torch.ones_like(scale))
        else:
            relevance = self.state.smoother(relevance, valid)
            scale = self.state.scale.update(relevance, valid)
        top_p, top_i = torch.softmax(result.logits.float(), dim=1).max(dim=1)
        shown = render.to_bgr(frame) if frame.shape[-1] != 3 else frame
        fit = self.fit
        if self.enlarge > 1:
            shown = shown.repeat_interleave(self.enlarge, dim=1).repeat_interleave(self.enlarge, dim=2)
            fit = fit.scaled(self.enlarge)
        out = render.compose(shown, relevance, scale, self.lut, self.centered, self.layout, self.alpha, fit)
        first_bad = result.first_bad if result.first_bad is not None else torch.full_like(result.target, -1)
        return out, torch.stack([top_i.float(), top_p, result.target.float(), result.finite.float(),
                                 first_bad.float()])


class _FramePass:
    """Static buffers and the captured pass for one (batch, height, width, channels) and setting."""

    def __init__(self, owner: "FastProcessor", n: int, h: int, w: int, c: int, mode: str, layout: str,
                 enlarge: int) -> None:
        p = owner.processor
        device = owner.device
        pin = device.type == "cuda"
        self.n = n
        self.host_in = torch.zeros((n, h, w, c), dtype=torch.uint8, pin_memory=pin)
        self.host_valid = torch.zeros(n, dtype=torch.bool, pin_memory=pin)
        panels = {"side": 2, render.PANELS: 3}.get(layout, 1)
        self.host_out = torch.empty((n, h * enlarge, panels * w * enlarge, 3), dtype=torch.uint8, pin_memory=pin)
        self.host_pred = torch.empty((5, n), dtype=torch.float32, pin_memory=pin)
        self.dev_in = torch.empty((n, h, w, c), dtype=torch.uint8, device=device)
        self.dev_valid = torch.zeros(n, dtype=torch.bool, device=device)
        self.state = StreamState(owner.state.smoother.alpha, p.size, device, n) if mode == "streams" else owner.state
        self.owner, self.mode, self.layout, self.enlarge = owner, mode, layout, enlarge
        self._compute = DevicePass(owner.explainer, Fit.of(p.fit, (h, w), p.size), p.card["mean"], p.card["std"],
                                   self.state, p.cmap, layout, p.alpha, owner.static_target(n), mode, enlarge)
        saved = self.state.state()  # capture warms up on these (blank) buffers: keep the stream's state
        self._build(owner.graph, owner.notice, f"{n}x{w}x{h} frame pass")
        self.state.restore(saved)

    def _upload(self, host_in: Tensor, host_valid: Tensor) -> None:
        self.dev_in.copy_(host_in, non_blocking=True)
        self.dev_valid.copy_(host_valid, non_blocking=True)

    def _download(self, out: Tensor, preds: Tensor) -> None:
        self.host_out.copy_(out, non_blocking=True)
        self.host_pred.copy_(preds, non_blocking=True)

    def _run(self, host_in: Tensor, host_valid: Tensor) -> None:
        """The whole pass: upload, device part, download."""
        self._upload(host_in, host_valid)
        self._download(*self._compute(self.dev_in, self.dev_valid))

    def _build(self, graph: bool, notice: Notice | None, name: str) -> None:
        """Capture the whole pass; if that fails, the device part alone with the copies outside."""
        failures: list[str] = []
        self.copies_outside = False
        self.call = CapturedCall(self._run, [self.host_in, self.host_valid], graph=graph, notice=failures.append,
                                 name=name, device=self.dev_in.device)
        if failures:
            self.copies_outside = True
            self.call = CapturedCall(self._compute, [self.dev_in, self.dev_valid], graph=graph,
                                     notice=failures.append, name=f"{name} without its copies")
            if notice is not None:
                notice(failures[-1] if not self.call.graphed else
                       f"{failures[0]}; the copies now run outside the graph")

    def __call__(self, frames: Sequence[np.ndarray],
                 streams: list[StreamState] | None = None) -> tuple[list[np.ndarray], list[tuple[int, float, int]]]:
        k = len(frames)
        for i, frame in enumerate(frames):
            self.host_in[i].numpy()[...] = frame
        self.host_valid.numpy()[...] = np.arange(self.n) < k
        if streams is not None:
            self.state.load_rows(streams)
        guarded = self.owner.explainer.dtype in (torch.float16, torch.bfloat16) and self.mode != "stills"
        before = self.state.state() if guarded else None  # device copies: a re-run folds in from here
        if self.copies_outside:
            self._upload(self.host_in, self.host_valid)
            self._download(*self.call())
        else:
            self.call()
        if self.dev_in.is_cuda:
            torch.cuda.current_stream().synchronize()
        out = self.host_out.numpy()
        pred = self.host_pred.numpy()
        rendered = [out[i].copy() for i in range(k)]
        raw = [(int(pred[0, i]), float(pred[1, i]), int(pred[2, i])) for i in range(k)]
        overflowed = [i for i in range(k) if pred[3, i] == 0.0]
        if overflowed and self.owner.explainer.dtype in (torch.float16, torch.bfloat16):
            self._rescue(frames, overflowed, [int(pred[4, i]) for i in overflowed], rendered, raw, before)
        if streams is not None:
            self.state.store_rows(streams)
        return rendered, raw

    def _rescue(self, frames: Sequence[np.ndarray], rows: list[int], steps: list[int],
                rendered: list[np.ndarray], raw: list[tuple[int, float, int]], before: tuple | None) -> None:
        """Explain again in fp32, eagerly and outside the captured pass, the frames whose relevance
        overflowed the engine's dtype, replacing their rendered frames and predictions.

        The colour scale and smoothed map fold in the fp32 maps, not the blank ones: from the
        state ``before`` the batch, a stream's frames are drawn again in order (the others in the
        engine's dtype), and a row of ``streams`` mode again alone.
        """
        owner, p = self.owner, self.owner.processor
        p.say_overflow(len(rows), {owner.explainer.step_name(s) for s in steps} - {None})
        explainer = p.fp32_explainer()
        if before is not None and self.mode == "stream":
            self.state.restore(before)
        redo = range(len(frames)) if self.mode == "stream" else rows
        for i in redo:
            row = i if self.mode == "streams" else 0
            state = StreamState(self.state.smoother.alpha, p.size, owner.device, 1, self.state.scale.percentile,
                                self.state.scale.momentum)
            sources = (before if before is not None and self.mode == "streams"
                       else (self.state.scale.state(), self.state.smoother.state()))
            for mine, (value, seen) in zip((state.scale, state.smoother), sources):
                mine.value[0].copy_(value[row])
                mine.seen[0].copy_(seen[row])
            device_pass = DevicePass(explainer if i in rows else owner.explainer, self._compute.fit, p.card["mean"],
                                     p.card["std"], state, p.cmap, self.layout, p.alpha, owner.static_target(1),
                                     self.mode, self.enlarge)
            frame = torch.from_numpy(np.ascontiguousarray(frames[i]))[None].to(owner.device)
            out, pred = device_pass(frame, torch.ones(1, dtype=torch.bool, device=owner.device))
            if before is not None:
                for mine, theirs in ((state.scale, self.state.scale), (state.smoother, self.state.smoother)):
                    theirs.value[row].copy_(mine.value[0])
                    theirs.seen[row].copy_(mine.seen[0])
            rendered[i] = out[0].cpu().numpy()
            pred = pred[:, 0].cpu()
            raw[i] = (int(pred[0]), float(pred[1]), int(pred[2]))


class FastProcessor:
    """The frame pass of one :class:`~realtime_lrp.pipeline.processor.FrameProcessor`: its settings
    (model, method, preset, top-k, target, fit, colour map, layout, alpha) run through cached per-shape passes.

    Settings are read when a pass is built; a change builds a new pass (passes are kept for
    the ``cache`` most recent settings and shapes). ``graph=None`` captures CUDA graphs on
    CUDA for LRP (the CAM methods run eagerly there, and say so); the CPU always runs eagerly. ``state`` is the stream's colour scale and smoothed map.
    """

    def __init__(self, processor: "FrameProcessor", graph: bool | None = None, cache: int = 4,
                 notice: Notice | None = None, percentile: float = 99.5, momentum: float = 0.1) -> None:
        self.processor = processor
        self.explainer = processor.explainer
        self.device = processor.device
        self.graph = self.device.type == "cuda" and isinstance(self.explainer, LRP) if graph is None else graph
        if graph is None and self.device.type == "cuda" and not self.graph and notice is not None:
            notice(f"{processor.method} runs eagerly on CUDA (no CUDA graph: its backward pass is not checked"
                   " capturable)")
        self.notice = notice
        self.cache = cache
        self.state = StreamState(processor.smooth, processor.size, self.device, 1, percentile, momentum)
        self._passes: OrderedDict[tuple, _FramePass] = OrderedDict()
        self._targets: dict[int, Tensor] = {}
        self._top_k = processor.top_k
        self.runs = 0  # passes run, for the tests and the benchmarks
        self._described: set[tuple] = set()
        if self.device.type == "cuda" and isinstance(self.explainer, LRP):
            channels_last_weights(self.explainer)

    @property
    def scale(self) -> StableScale:
        """The stream's colour scale."""
        return self.state.scale

    @property
    def smoother(self) -> Any:
        """The stream's moving average of maps."""
        return self.state.smoother

    def static_target(self, n: int) -> Any:
        """The engine's target for a batch of ``n``: a device tensor for a class index, so the
        engine's range check (a host sync) is done here, once, instead of in every pass."""
        target = self.processor.target
        if not isinstance(target, int):
            return target
        if n not in self._targets:
            self._targets[n] = torch.full((n,), target, dtype=torch.long, device=self.device)
        return self._targets[n]

    def reset(self) -> None:
        """Forget the stream's colour scale and smoothed map (new stream)."""
        self.state.reset()

    def output_size(self, frame_size: tuple[int, int]) -> tuple[int, int]:
        """(width, height) of rendered frames for inputs of ``frame_size`` (width, height)."""
        return self.processor.output_size(frame_size)

    def _pass_for(self, n: int, shape: tuple[int, int, int], mode: str, layout: str, enlarge: int) -> _FramePass:
        p = self.processor
        if p.top_k != self._top_k:
            self._top_k = p.top_k
            self.state.reset()  # maps of another top-k have another magnitude
        setting = (*shape, p.top_k, str(p.target), p.cmap, layout, p.alpha, p.fit, mode, enlarge)
        key = (n, *setting)
        if key not in self._passes and self.graph:  # a partial batch runs padded in a captured pass
            larger = sorted(k for k in self._passes if k[1:] == setting and k[0] > n)
            key = larger[0] if larger else key
        if key in self._passes:
            self._passes.move_to_end(key)
            return self._passes[key]
        while len(self._passes) >= self.cache:
            self._passes.popitem(last=False)
        self._passes[key] = _FramePass(self, n, *shape, mode, layout, enlarge)
        said = self._passes[key]._compute.fit.describe()
        if said and self.notice is not None and mode != "stills" and (shape[:2], p.fit) not in self._described:
            self._described.add((shape[:2], p.fit))
            self.notice(said)
        return self._passes[key]

    def process(self, frames: Sequence[np.ndarray], stable: bool = True, streams: list[StreamState] | None = None,
                label: bool = True, layout: str | None = None,
                enlarge: int = 1) -> tuple[list[np.ndarray], list[Prediction]]:
        """Explain and render frames (all of one size) in order; each carries its label.

        ``stable=True`` folds them into the stream's state in order; ``False`` scales each
        frame on its own (independent stills); ``streams`` gives frame i the state of stream i.
        ``layout`` overrides the processor's (``render.PANELS`` too); ``enlarge`` shows each
        frame k times larger.
        """
        frames = [np.ascontiguousarray(as_frame(f)) for f in frames]
        if not frames:
            return [], []
        shape = frames[0].shape
        if any(f.shape != shape for f in frames):
            raise ProcessingError("the frame pass needs all frames of a batch to have one size")
        if streams is not None and len(streams) != len(frames):
            raise ValueError(f"{len(streams)} streams for {len(frames)} frames")
        mode = "streams" if streams is not None else "stream" if stable else "stills"
        try:
            frame_pass = self._pass_for(len(frames), shape, mode, layout or self.processor.layout, enlarge)
            rendered, raw = frame_pass(frames, streams)
        except (RuntimeError, MemoryError) as error:
            if not out_of_memory(error):
                raise
            self._passes.clear()
            where = "CUDA" if isinstance(error, torch.cuda.OutOfMemoryError) else "the CPU"
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            raise ProcessingError(f"{where} ran out of memory on {len(frames)} frame(s) at {shape[1]}x{shape[0]}:"
                                  " try a smaller --batch or --size") from None
        self.runs += 1
        classes = self.processor.classes
        preds = [Prediction(i, classes[i], p, e, classes[e]) for i, p, e in raw]
        for image, pred in zip(rendered, preds):
            if label:
                render.draw_label(image, pred.label)
            if self.processor.legend:
                render.draw_legend(image, self.processor.cmap)
        return rendered, preds
