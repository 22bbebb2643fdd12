"""One frame (or a batch) in, explained frames out: the settings of the one frame pass.

:class:`FrameProcessor` is shared by every command that shows a map: the file pipeline
(``rtlrp video``), still images (``rtlrp explain``), the live view (``rtlrp webcam``) and
the server (``rtlrp serve``). It picks the device and dtype (CUDA in fp16, else CPU in fp32
with a one-line notice), holds the settings, and runs frames through its
:class:`~realtime_lrp.pipeline.fast.FastProcessor` (captured on CUDA, eager on the CPU),
which keeps one stable colour scale per stream and turns running out of memory into a
one-line :class:`ProcessingError`.

Run-time controls (for the live view's keys) are plain attributes or small methods:
``top_k`` (property, 0 turns the filter off), ``cmap`` (property; ``None`` means the
preset's default), ``layout`` and ``alpha`` (attributes), :meth:`scale_top_k`,
:meth:`next_cmap`, :meth:`next_layout`.
"""
from __future__ import annotations

import copy
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from realtime_lrp.lrp.engine import LRP, LRPResult
from realtime_lrp.lrp.presets import auto_preset
from realtime_lrp.models.sizes import check_input_size
from realtime_lrp.pipeline import render
from realtime_lrp.pipeline.fast import FastProcessor
from realtime_lrp.pipeline.preprocess import check_fit, default_fit, frames_to_tensor, processing_size
from realtime_lrp.pipeline.results import Prediction, ProcessingError, out_of_memory

__all__ = ["CMAP_CYCLE", "FrameProcessor", "Prediction", "ProcessingError", "parse_target", "select_device"]

Notice = Callable[[str], None]

CMAP_CYCLE: tuple[str, ...] = ("fire", "signed", "hot", "diverging", "inferno", "turbo", "viridis", "jet")


def select_device(requested: str = "auto", notice: Notice | None = None) -> tuple[torch.device, torch.dtype]:
    """``auto``/``cuda`` → CUDA in fp16 when available; otherwise CPU in fp32 with a notice."""
    requested = requested.lower()
    if requested not in ("auto", "cuda", "cpu") and not requested.startswith("cuda:"):
        raise ValueError(f"unknown device {requested!r}; use auto, cuda, cuda:N or cpu")
    if requested != "cpu" and torch.cuda.is_available():
        return torch.device("cuda" if requested == "auto" else requested), torch.float16
    if requested != "cpu" and notice is not None:
        notice("CUDA is not available: running on the CPU in fp32 (slow)")
    return torch.device("cpu"), torch.float32


def parse_target(value: str | int | None, classes: Sequence[str]) -> int | str | None:
    """``None``/``"top1"`` → None; ``"softmax"``; a class index; or a class name (any case)."""
    if value is None:
        return None
    if isinstance(value, int):
        index = value
    else:
        text = value.strip()
        if text.lower() in ("top1", "top-1", "predicted", ""):
            return None
        if text.lower() == "softmax":
            return "softmax"
        lowered = [c.lower() for c in classes]
        if text.lower() in lowered:
            return lowered.index(text.lower())
        try:
            index = int(text)
        except ValueError:
            raise ValueError(f"unknown target {value!r}: give top1, softmax, a class index"
                             " or a class name") from None
    if not 0 <= index < len(classes):
        raise ValueError(f"target class {index} is out of range: the model has {len(classes)} classes")
    return index


class FrameProcessor:
    """Explain and render BGR frames with one model; keeps a stable colour scale per stream.

    ``model`` is an eval-mode model (any device; never moved or cast: the engine canonises it
    from its own weights and runs in the selected device and dtype) and ``card`` its model
    card. ``size`` is the processing (H, W), default the card's input size; ``fit`` how a
    frame meets it (``crop``, ``squash`` or ``pad``; default :func:`default_fit` of the card).
    ``cmap=None`` picks the preset's default map. ``smooth`` in [0, 1) is the weight of the
    previous map in an exponential moving average of a stream's maps (0 is off). ``legend``
    draws the colour scale's legend on every frame. ``graph=None`` captures CUDA graphs on
    CUDA. ``notice`` receives one-line messages (the CPU fallback, a failed capture).
    """

    def __init__(self, model: torch.nn.Module, card: Mapping[str, Any], *, preset: str = "auto",
                 top_k: float = 0.02, target: str | int | None = None, size: tuple[int, int] | None = None,
                 cmap: str | None = None, layout: str = "overlay", alpha: float = 0.6,
                 smooth: float = 0.0, device: str = "auto", notice: Notice | None = None,
                 fit: str | None = None, legend: bool = False, graph: bool | None = None) -> None:
        if layout not in render.LAYOUTS:
            raise ValueError(f"unknown layout {layout!r}; choose one of {', '.join(render.LAYOUTS)}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha {alpha} is outside [0, 1]")
        if not 0.0 <= top_k <= 1.0:
            raise ValueError(f"top-k {top_k} is outside [0, 1]")
        if not 0.0 <= smooth < 1.0:
            raise ValueError(f"smoothing {smooth} is outside [0, 1)")
        self.card = card
        self.classes = list(card["classes"])
        self.size = processing_size(card, size)
        self.fit = check_fit(fit) if fit is not None else default_fit(card)
        self.target = parse_target(target, self.classes)
        self.device, self.dtype = select_device(device, notice)
        self.model = model if not model.training else copy.deepcopy(model).eval()  # the caller's stays as it is
        check_input_size(self.model, card, self.size)
        self.lrp = LRP(self.model, preset=preset, top_k=top_k, mean=card["mean"], std=card["std"], dtype=self.dtype,
                       device=self.device)
        self.preset = self.lrp.preset.name  # "auto" resolved
        self.notice = notice
        self._fp32: LRP | None = None
        self._overflow_said = False
        if self.lrp.chosen and self.preset != auto_preset(())[0] and notice is not None:
            notice(self.lrp.chosen)  # a CNN keeps the preset it always had: nothing new to say
        self._cmap: str | None = None
        self.cmap = cmap
        self.layout = layout
        self.alpha = alpha
        self.smooth = float(smooth)
        self.legend = legend
        self.passes = FastProcessor(self, graph=graph, notice=notice)

    def fp32_lrp(self) -> LRP:
        """An fp32 engine on the same device, model and settings, built on first use: it explains
        again the samples whose relevance overflowed fp16 (the fidelity guard)."""
        if self._fp32 is None:
            self._fp32 = LRP(self.model, preset=self.preset, mean=self.card["mean"], std=self.card["std"],
                             dtype=torch.float32, device=self.device)
        self._fp32.top_k = self.lrp.top_k
        return self._fp32

    def say_overflow(self, count: int, layers: set[str]) -> None:
        """Say, once per run, that relevance overflowed the engine's dtype (in which layers, if known)."""
        if self._overflow_said or self.notice is None:
            return
        self._overflow_said = True
        where = f"in layer {', '.join(sorted(layers))}" if layers else "in an unknown layer"
        self.notice(f"{str(self.dtype).removeprefix('torch.')} overflowed {where} on {count} frame(s):"
                    " explaining those again in fp32 (said once)")

    @property
    def scale(self):
        """The stream's colour scale (:class:`realtime_lrp.pipeline.stream.StableScale`)."""
        return self.passes.scale

    @property
    def smoother(self):
        """The stream's moving average of maps (:class:`realtime_lrp.pipeline.stream.MapSmoother`)."""
        return self.passes.smoother

    def reset(self) -> None:
        """Start a new stream: forget the running colour scale and smoothed map of the previous one."""
        self.passes.reset()

    @property
    def signed(self) -> bool:
        """Whether the preset's relevance is signed."""
        return self.lrp.signed

    @property
    def top_k(self) -> float:
        """Fraction of relevance kept before each layer (0 = unfiltered); settable at run time."""
        return self.lrp.top_k

    @top_k.setter
    def top_k(self, value: float) -> None:
        self.lrp.top_k = min(1.0, max(0.0, float(value)))
        self.reset()

    @property
    def cmap(self) -> str:
        """The colour map name in use; set a name, or ``None`` for the preset's default."""
        return self._cmap or render.default_cmap(self.signed)

    @cmap.setter
    def cmap(self, name: str | None) -> None:
        self._cmap = None if name is None else render.get_colormap(name).name

    def scale_top_k(self, factor: float) -> float:
        """Multiply ``top_k`` by ``factor`` (keys + and −), kept within [0.001, 1]; the new value."""
        current = self.top_k if self.top_k > 0 else 0.02
        self.top_k = min(1.0, max(0.001, current * factor))
        return self.top_k

    def next_cmap(self) -> str:
        """Switch to the next colour map of ``CMAP_CYCLE`` (key c); the new name."""
        names = list(CMAP_CYCLE)
        i = names.index(self.cmap) if self.cmap in names else -1
        self.cmap = names[(i + 1) % len(names)]
        return self.cmap

    def next_layout(self) -> str:
        """Switch to the next layout of ``render.LAYOUTS`` (key l); the new name."""
        i = render.LAYOUTS.index(self.layout)
        self.layout = render.LAYOUTS[(i + 1) % len(render.LAYOUTS)]
        return self.layout

    def explain(self, frames: Sequence[np.ndarray], stream: bool = True) -> tuple[np.ndarray, list[Prediction]]:
        """Relevance maps ``(N, h, w)`` float32 at the processing size, and predictions (no rendering).

        The maps of the frame pass, for the API and the metrics: the same preprocessing and
        engine call. ``stream=True`` treats the frames as the next ones of the stream: with
        ``smooth`` set, their maps are folded into its moving average; ``False`` leaves it alone.
        """
        try:
            x = frames_to_tensor(frames, self.card, self.size, self.device, self.dtype, self.fit)
            result = self.lrp(x, target=self.passes.static_target(len(frames)))
            if self.dtype in (torch.float16, torch.bfloat16):
                result = self._guarded(frames, result)
            top_p, top_i = torch.softmax(result.logits.float(), dim=1).max(dim=1)
            relevance = torch.nan_to_num(result.relevance.float(), nan=0.0, posinf=0.0, neginf=0.0)
            if stream:
                relevance = self.smoother(relevance)
            relevance = relevance.cpu().numpy()
        except (RuntimeError, MemoryError) as error:
            if not out_of_memory(error):
                raise
            where = "CUDA" if isinstance(error, torch.cuda.OutOfMemoryError) else "the CPU"
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            raise ProcessingError(f"{where} ran out of memory on {len(frames)} frame(s) at {self.size[1]}x"
                                  f"{self.size[0]}: try a smaller --batch or --size") from None
        explained = result.target.cpu().tolist()
        preds = [
            Prediction(int(i), self.classes[int(i)], float(p), int(e), self.classes[int(e)])
            for i, p, e in zip(top_i.cpu().tolist(), top_p.cpu().tolist(), explained)
        ]
        return relevance, preds

    def _guarded(self, frames: Sequence[np.ndarray], result: LRPResult) -> LRPResult:
        """The fidelity guard of :meth:`explain`: ``result`` with the rows whose relevance overflowed
        (one host read of the flag) explained again in fp32, from the frames themselves."""
        bad = (~result.finite).nonzero().flatten()
        if not len(bad):
            return result
        self.say_overflow(len(bad), {self.lrp.step_name(int(s)) for s in result.first_bad[bad]} - {None})
        x = frames_to_tensor([frames[i] for i in bad.tolist()], self.card, self.size, self.device, torch.float32,
                             self.fit)
        target = self.passes.static_target(len(frames))
        again = self.fp32_lrp()(x, target=target[bad] if torch.is_tensor(target) else target)
        return LRPResult(*(mine.index_copy(0, bad, theirs.to(mine.dtype)) for mine, theirs in
                           ((result.relevance, again.relevance), (result.logits.float(), again.logits),
                            (result.target, again.target), (result.finite, again.finite))))

    def process(self, frames: Sequence[np.ndarray], stable: bool = True) -> tuple[list[np.ndarray], list[Prediction]]:
        """Explain and render frames in order with the current layout, through the frame pass; each
        carries its label. ``stable=True`` uses the stream's running colour scale and map
        smoothing (video, webcam); ``False`` scales each frame on its own (independent stills).
        """
        return self.passes.process(frames, stable)

    def output_size(self, frame_size: tuple[int, int]) -> tuple[int, int]:
        """(width, height) of rendered frames for inputs of ``frame_size`` (width, height)."""
        return render.output_size(frame_size, self.layout)

    @classmethod
    def from_options(cls, weights: str = "auto", notice: Notice | None = None, **options: Any) -> "FrameProcessor":
        """Load ``weights`` with :func:`realtime_lrp.models.load_model` and build a processor.

        ``options`` are the keyword arguments of ``__init__`` (what ``processing_options``
        in the CLI collects); ``size`` may be a string such as ``"224"`` or ``"320x240"``.
        """
        from realtime_lrp.models.loading import load_model
        from realtime_lrp.pipeline.preprocess import parse_size

        size = options.pop("size", None)
        model, card = load_model(weights, device="cpu", notify=notice or (lambda _msg: None))
        return cls(model, card, size=parse_size(size), notice=notice, **options)
