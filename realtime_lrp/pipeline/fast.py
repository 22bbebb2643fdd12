"""The fast path: a whole frame batch explained and rendered in one captured pass.

Per input shape, :class:`FastProcessor` builds one pass: frames are copied into a static
host buffer (pinned on CUDA), uploaded with a non-blocking copy, resized and normalised
on the device, explained by the engine (fp16 and channels_last on CUDA, rule weights
precomputed), coloured and blended on the device, and downloaded into a pinned host
buffer. On CUDA the pass is captured once in a CUDA graph (:class:`CapturedCall`) and
replayed per batch, so a frame costs one host-to-device copy, one graph launch and one
device-to-host copy. On the CPU the same code runs eagerly, so the CPU tests exercise it.
If the copies cannot be captured, the graph holds the device part alone and the copies run
around it; if nothing can be captured the pass runs eagerly. ``notice`` says which.

The colour scale is the stream's running scale of :class:`realtime_lrp.pipeline.render.StableScale`
(an EMA of the 99.5th percentile of ``|R|``, frames folded in order), kept on the device so
the pass needs no host synchronisation; so is the moving average of maps that ``smooth``
asks for (:class:`realtime_lrp.pipeline.processor.MapSmoother`). Labels are drawn on the host after the download.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from realtime_lrp.pipeline import render
from realtime_lrp.lrp.engine import LRP
from realtime_lrp.pipeline.processor import FrameProcessor, MapSmoother, Prediction, ProcessingError

Notice = Callable[[str], None]

GRAY_WEIGHTS = (0.114, 0.587, 0.299)  # B, G, R: OpenCV's BGR2GRAY


class CapturedCall:
    """``fn(*inputs)`` replayed from a CUDA graph on CUDA, called eagerly elsewhere.

    ``inputs`` are static tensors: write new data into them in place, then call. The
    outputs are static too (overwritten by the next call). ``graph=False`` forces eager
    calls; a capture that fails falls back to eager and sends one line to ``notice``
    (``graphed`` says which it is). ``fn`` runs ``warmup`` times on a side stream before
    capture, as CUDA graphs require. ``device`` says where ``fn`` runs when every input is a
    host tensor (a pass that starts with an upload); by default, the inputs' device.
    """

    def __init__(self, fn: Callable[..., Any], inputs: Sequence[Tensor], graph: bool = True,
                 warmup: int = 2, notice: Notice | None = None, name: str = "pass",
                 device: torch.device | None = None) -> None:
        self.fn = fn
        self.inputs = list(inputs)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.outputs: Any = None
        cuda = device.type == "cuda" if device is not None else any(t.is_cuda for t in self.inputs)
        if graph and cuda:
            try:
                self._capture(warmup)
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

    def _capture(self, warmup: int) -> None:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(warmup):
                self.fn(*self.inputs)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
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


def percentile_rows(values: Tensor, percentile: float) -> Tensor:
    """``np.percentile(row, percentile)`` (linear interpolation) of each row of (N, M), on the device."""
    m = values.shape[1]
    position = percentile / 100.0 * (m - 1)
    low = int(math.floor(position))
    frac = position - low
    need = m - low  # the largest (m - low) values hold positions low .. m-1 in ascending order
    top = values.topk(min(need, m), dim=1, sorted=True).values
    lower = top[:, need - 1]
    upper = top[:, max(need - 2, 0)]
    return lower + (upper - lower) * frac


class _DeviceScale:
    """:class:`realtime_lrp.pipeline.render.StableScale` on the device: per-frame percentile, EMA in frame order."""

    def __init__(self, device: torch.device, percentile: float, momentum: float) -> None:
        self.percentile = percentile
        self.momentum = momentum
        self.value = torch.ones(1, device=device)
        self.seen = torch.zeros(1, dtype=torch.bool, device=device)

    def reset(self) -> None:
        self.seen.zero_()
        self.value.fill_(1.0)

    def state(self) -> tuple[Tensor, Tensor]:
        return self.value.clone(), self.seen.clone()

    def restore(self, state: tuple[Tensor, Tensor]) -> None:
        self.value.copy_(state[0])
        self.seen.copy_(state[1])

    def update(self, relevance: Tensor) -> Tensor:
        """Fold in (N, h, w) maps in order; the scale each frame gets, (N,)."""
        a = relevance.flatten(1).abs()
        q = percentile_rows(a, self.percentile)
        q = torch.where(q > 0, q, a.amax(1))
        scales = []
        for i in range(q.shape[0]):
            qi = q[i:i + 1]
            valid = torch.isfinite(qi) & (qi > 0)
            blended = torch.where(self.seen, (1 - self.momentum) * self.value + self.momentum * qi, qi)
            self.value.copy_(torch.where(valid, blended, self.value))
            self.seen.copy_(self.seen | valid)
            scales.append(torch.where(self.seen, self.value, torch.ones_like(self.value)))
        return torch.cat(scales)


class DevicePass:
    """The device part of a frame pass: uint8 BGR frames (N, H, W, 3) on the device in,
    rendered frames (N, H, W or 2W, 3) and a (3, N) tensor of (top-1, probability,
    explained class) out.

    Resize and normalisation, the LRP call, the running colour scale, colour map and blend
    are device work only, with no host synchronisation, so a CUDA graph can hold them.
    ``size`` is the processing (H, W); ``target`` what the engine gets (a device tensor for
    a class index, see :meth:`FastProcessor.static_target`); ``smoother`` the stream's
    moving average of maps, if any.
    """

    def __init__(self, lrp: LRP, size: tuple[int, int], mean: Sequence[float], std: Sequence[float],
                 scale: "_DeviceScale", cmap: str, layout: str, alpha: float, target: Any,
                 smoother: MapSmoother | None = None) -> None:
        device = scale.value.device
        self.lrp = lrp
        self.size = size
        self.mean = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.gray = torch.tensor(GRAY_WEIGHTS, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        self.scale = scale
        colormap = render.get_colormap(cmap)
        self.centered = colormap.centered
        self.lut = torch.tensor(colormap.lut, device=device)
        self.layout = layout
        self.alpha = float(alpha)
        self.target = target
        self.smoother = smoother

    def preprocess(self, frames: Tensor) -> Tensor:
        """uint8 BGR (N, H, W, 3) → the model's normalised input (channels_last on CUDA)."""
        x = frames.permute(0, 3, 1, 2).float()
        h, w = self.size
        if x.shape[2:] != (h, w):
            x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
        if self.lrp.in_channels == 1:
            x = (x * self.gray).sum(1, keepdim=True)
        else:
            x = x.flip(1)  # BGR → RGB
        x = (x / 255.0 - self.mean) / self.std
        x = x.to(self.lrp.dtype)
        return x.contiguous(memory_format=torch.channels_last) if x.is_cuda else x.contiguous()

    def _colour(self, r: Tensor, scale: Tensor) -> Tensor:
        v = r / scale.clamp_min(1e-30).view(-1, 1, 1)
        v = (v + 1.0) * 0.5 if self.centered else v
        return self.lut[(v * 255.0).round().clamp(0, 255).long()]

    @torch.no_grad()
    def __call__(self, frame: Tensor) -> tuple[Tensor, Tensor]:
        result = self.lrp(self.preprocess(frame), target=self.target)
        relevance = torch.nan_to_num(result.relevance.float(), nan=0.0, posinf=0.0, neginf=0.0)
        if self.smoother is not None:
            relevance = self.smoother(relevance)
        scale = self.scale.update(relevance)
        top_p, top_i = torch.softmax(result.logits.float(), dim=1).max(dim=1)
        r = F.interpolate(relevance[:, None], size=frame.shape[1:3], mode="bilinear", align_corners=False)[:, 0]
        heat = self._colour(r, scale)
        if self.layout == "overlay":
            weight = ((r.abs() / scale.clamp_min(1e-30).view(-1, 1, 1)).clamp(0, 1) * self.alpha)[..., None]
            f = frame.float()
            out = (f + weight * (heat.float() - f) + 0.5).clamp(0, 255).to(torch.uint8)
        elif self.layout == "side":
            out = torch.cat([frame, heat], dim=2)
        else:
            out = heat
        return out, torch.stack([top_i.float(), top_p, result.target.float()])


class _FramePass:
    """Static buffers and the captured pass for one (batch, height, width) of BGR frames."""

    def __init__(self, owner: "FastProcessor", n: int, h: int, w: int) -> None:
        p = owner.processor
        device = owner.device
        pin = device.type == "cuda"
        self.host_in = torch.zeros((n, h, w, 3), dtype=torch.uint8, pin_memory=pin)
        out_w = 2 * w if p.layout == "side" else w
        self.host_out = torch.empty((n, h, out_w, 3), dtype=torch.uint8, pin_memory=pin)
        self.host_pred = torch.empty((3, n), dtype=torch.float32, pin_memory=pin)
        self.dev_in = torch.empty((n, h, w, 3), dtype=torch.uint8, device=device)
        self._compute = DevicePass(owner.lrp, p.size, p.card["mean"], p.card["std"], owner.scale, p.cmap,
                                   p.layout, p.alpha, owner.static_target(n), owner.smoother)
        # capture warms up on these (blank) buffers: keep the stream's scale and smoothed map
        state = owner.scale.state(), owner.smoother.state()
        self._build(owner.graph, owner.notice, f"{n}x{w}x{h} frame pass")
        owner.scale.restore(state[0])
        owner.smoother.restore(state[1])

    def _upload(self, host_in: Tensor) -> None:
        self.dev_in.copy_(host_in, non_blocking=True)

    def _download(self, out: Tensor, preds: Tensor) -> None:
        self.host_out.copy_(out, non_blocking=True)
        self.host_pred.copy_(preds, non_blocking=True)

    def _run(self, host_in: Tensor) -> None:
        """The whole pass: upload, device part, download."""
        self._upload(host_in)
        self._download(*self._compute(self.dev_in))

    def _build(self, graph: bool, notice: Notice | None, name: str) -> None:
        """Capture the whole pass; if that fails, the device part alone with the copies outside."""
        failures: list[str] = []
        self.copies_outside = False
        self.call = CapturedCall(self._run, [self.host_in], graph=graph, notice=failures.append, name=name,
                                 device=self.dev_in.device)
        if failures:
            self.copies_outside = True
            self.call = CapturedCall(self._compute, [self.dev_in], graph=graph, notice=failures.append,
                                     name=f"{name} without its copies")
            if notice is not None:
                notice(failures[-1] if not self.call.graphed else
                       f"{failures[0]}; the copies now run outside the graph")

    def __call__(self, frames: Sequence[np.ndarray]) -> tuple[list[np.ndarray], list[tuple[int, float, int]]]:
        for i, frame in enumerate(frames):
            self.host_in[i].numpy()[...] = frame
        if self.copies_outside:
            self._upload(self.host_in)
            self._download(*self.call())
        else:
            self.call()
        if self.dev_in.is_cuda:
            torch.cuda.current_stream().synchronize()
        out = self.host_out.numpy()
        pred = self.host_pred.numpy()
        rendered = [out[i].copy() for i in range(len(frames))]
        return rendered, [(int(pred[0, i]), float(pred[1, i]), int(pred[2, i])) for i in range(len(frames))]


class FastProcessor:
    """A :class:`~realtime_lrp.pipeline.processor.FrameProcessor` run through captured per-shape passes.

    It renders what ``processor.process`` renders (same model, preset, top-k, target,
    colour map, layout, alpha) and has the same ``process``/``output_size`` interface, so
    :func:`realtime_lrp.apps.video.process_video` can use it. Settings are read when a pass is
    built; a change of top-k, colour map, layout or alpha builds a new pass (passes are
    kept for the ``cache`` most recent settings and shapes). ``graph=None`` captures CUDA
    graphs on CUDA; the CPU always runs eagerly.
    """

    def __init__(self, processor: FrameProcessor, graph: bool | None = None, cache: int = 4,
                 notice: Notice | None = None, percentile: float = 99.5, momentum: float = 0.1) -> None:
        self.processor = processor
        self.lrp = processor.lrp
        self.device = processor.device
        self.graph = self.device.type == "cuda" if graph is None else graph
        self.notice = notice
        self.cache = cache
        self.scale = _DeviceScale(self.device, percentile, momentum)
        self.smoother = MapSmoother(processor.smoother.alpha, processor.size, self.device)
        self._passes: OrderedDict[tuple, _FramePass] = OrderedDict()
        self._targets: dict[int, Tensor] = {}
        self._top_k = processor.top_k
        if self.device.type == "cuda":
            channels_last_weights(self.lrp)

    def static_target(self, n: int) -> Any:
        """The engine's target for a batch of ``n``: a device tensor for a class index, so the
        engine's range check (a host sync) is done here, once, instead of in the pass."""
        target = self.processor.target
        if not isinstance(target, int) or self.device.type == "cpu":
            return target
        if n not in self._targets:
            self._targets[n] = torch.full((n,), target, dtype=torch.long, device=self.device)
        return self._targets[n]

    def reset(self) -> None:
        """Forget the stream's colour scale and smoothed map (new stream)."""
        self.scale.reset()
        self.smoother.reset()

    def output_size(self, frame_size: tuple[int, int]) -> tuple[int, int]:
        """(width, height) of rendered frames for inputs of ``frame_size`` (width, height)."""
        return self.processor.output_size(frame_size)

    def _pass_for(self, n: int, h: int, w: int) -> _FramePass:
        p = self.processor
        if p.top_k != self._top_k:
            self._top_k = p.top_k
            self.scale.reset()  # maps of another top-k have another magnitude
            self.smoother.reset()
        key = (n, h, w, p.top_k, str(p.target), p.cmap, p.layout, p.alpha)
        if key in self._passes:
            self._passes.move_to_end(key)
            return self._passes[key]
        while len(self._passes) >= self.cache:
            self._passes.popitem(last=False)
        self._passes[key] = _FramePass(self, n, h, w)
        return self._passes[key]

    def process(self, frames: Sequence[np.ndarray], stable: bool = True) -> tuple[list[np.ndarray], list[Prediction]]:
        """Explain and render BGR frames (all of one size) in order; each carries its label.

        ``stable=False`` (independent stills) resets the running scale before each frame.
        """
        frames = [np.ascontiguousarray(render.to_bgr(f)) for f in frames]
        if not frames:
            return [], []
        h, w = frames[0].shape[:2]
        if any(f.shape[:2] != (h, w) for f in frames):
            raise ProcessingError("the fast path needs all frames of a batch to have one size")
        if not stable:
            out, preds = [], []
            for f in frames:
                self.reset()
                o, p = self.process([f])
                out += o
                preds += p
            return out, preds
        try:
            rendered, raw = self._pass_for(len(frames), h, w)(frames)
        except torch.cuda.OutOfMemoryError:
            self._passes.clear()
            torch.cuda.empty_cache()
            raise ProcessingError(f"CUDA out of memory on {len(frames)} frame(s) at {w}x{h}:"
                                  " try a smaller --batch or --size") from None
        classes = self.processor.classes
        preds = [Prediction(i, classes[i], p, e, classes[e]) for i, p, e in raw]
        for image, pred in zip(rendered, preds):
            render.draw_label(image, pred.label)
        return rendered, preds
