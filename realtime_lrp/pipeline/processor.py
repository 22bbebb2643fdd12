"""One frame (or a batch) in, explained frames out: the settings of the one frame pass.

:class:`FrameProcessor` is shared by every command that shows a map: the file pipeline
(``rtlrp video``), still images (``rtlrp explain``), the live view (``rtlrp webcam``) and
the server (``rtlrp serve``). It picks the device and dtype (CUDA in fp16, else CPU in fp32
with a one-line notice), holds the settings, and runs frames through its
:class:`~realtime_lrp.pipeline.fast.FastProcessor` (captured on CUDA, eager on the CPU),
which keeps one stable colour scale per stream and turns running out of memory into a
one-line :class:`ProcessingError`.

The explainer is a constructor choice (``method``): the LRP engine, or one of the CAM family
(:class:`~realtime_lrp.lrp.cam.CAM`, with the engine's call interface) read at ``cam_layer``;
:func:`build_explainer` is the one place that builds either. The CAM maps are positive, so they
get the colour map of the positive-only presets.

Run-time controls (for the live view's keys) are plain attributes or small methods:
``top_k`` (property, 0 turns the filter off), ``cmap`` (property; ``None`` means the
preset's default), ``layout`` and ``alpha`` (attributes), :meth:`scale_top_k`,
:meth:`next_cmap`, :meth:`next_layout`.
"""
from __future__ import annotations

import copy
import weakref
from typing import Any, Callable, Mapping, Sequence, Union

import numpy as np
import torch

from realtime_lrp.lrp.cam import CAM, CAM_METHODS, in_channels
from realtime_lrp.lrp.cam import cam_layer as find_cam_layer
from realtime_lrp.lrp.engine import LRP, LRPResult
from realtime_lrp.lrp.filter import DEFAULT_TOP_K
from realtime_lrp.lrp.presets import auto_preset
from realtime_lrp.models.sizes import check_input_size
from realtime_lrp.pipeline import render
from realtime_lrp.pipeline.fast import FastProcessor
from realtime_lrp.pipeline.preprocess import check_fit, default_fit, frames_to_tensor, processing_size
from realtime_lrp.pipeline.results import Prediction, ProcessingError, out_of_memory

__all__ = ["CMAP_CYCLE", "METHODS", "FrameProcessor", "Prediction", "ProcessingError", "build_explainer",
           "parse_target", "select_device"]

Notice = Callable[[str], None]

Explainer = Union[LRP, CAM]

METHODS: tuple[str, ...] = ("lrp", *CAM_METHODS)

_DEVICE_COPIES: "weakref.WeakKeyDictionary[torch.nn.Module, dict[tuple, torch.nn.Module]]" = weakref.WeakKeyDictionary()

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


def device_model(model: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """``model`` itself if it is on ``device`` in ``dtype``, else one eval-mode copy there (channels_last
    on CUDA, no parameter gradients), shared by every caller for the same model, device and dtype."""
    param = next(model.parameters())
    if param.device == device and param.dtype == dtype:
        return model
    copies = _DEVICE_COPIES.setdefault(model, {})
    key = (str(device), dtype)
    if key not in copies:
        moved = copy.deepcopy(model).eval().to(device, dtype).requires_grad_(False)
        copies[key] = moved.to(memory_format=torch.channels_last) if device.type == "cuda" else moved
    return copies[key]


def build_explainer(model: torch.nn.Module, method: str, *, card: Mapping[str, Any], size: tuple[int, int],
                    dtype: torch.dtype, device: torch.device, preset: str = "auto", top_k: float = DEFAULT_TOP_K,
                    cam_layer: str | None = None) -> Explainer:
    """The explainer of ``method``: the LRP engine (``preset``, ``top_k``) or a CAM method at ``cam_layer``
    (default: the last conv stage at ``size``) on a copy of ``model`` in ``dtype`` on ``device``."""
    if method == "lrp":
        return LRP(model, preset=preset, top_k=top_k, mean=card["mean"], std=card["std"], dtype=dtype, device=device)
    if method not in CAM_METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    explainer = CAM(device_model(model, device, dtype), method, size, cam_layer)
    explainer.top_k = top_k
    return explainer


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
    from its own weights and runs in the selected device and dtype, a CAM method runs a copy there)
    and ``card`` its model card. ``method`` is ``lrp`` (with ``preset`` and ``top_k``) or a CAM
    method of :data:`METHODS` (``top_k`` has no effect on it); ``cam_layer`` names the layer the
    CAM methods read (checked for every method, as a server shows CAM beside LRP; default: the
    last conv stage). ``size`` is the processing (H, W), default the card's input size; ``fit`` how a
    frame meets it (``crop``, ``squash`` or ``pad``; default :func:`default_fit` of the card).
    ``cmap=None`` picks the preset's default map. ``smooth`` in [0, 1) is the weight of the
    previous map in an exponential moving average of a stream's maps (0 is off). ``legend``
    draws the colour scale's legend on every frame. ``graph=None`` captures CUDA graphs on
    CUDA. ``notice`` receives one-line messages (the CPU fallback, a failed capture).
    """

    def __init__(self, model: torch.nn.Module, card: Mapping[str, Any], *, preset: str = "auto",
                 top_k: float = DEFAULT_TOP_K, target: str | int | None = None, size: tuple[int, int] | None = None,
                 cmap: str | None = None, layout: str = "overlay", alpha: float = 0.6,
                 smooth: float = 0.0, device: str = "auto", notice: Notice | None = None,
                 fit: str | None = None, legend: bool = False, graph: bool | None = None, method: str = "lrp",
                 cam_layer: str | None = None) -> None:
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
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
        self.method = method
        self.explainer = build_explainer(self.model, method, card=card, size=self.size, dtype=self.dtype,
                                         device=self.device, preset=preset, top_k=top_k, cam_layer=cam_layer)
        if isinstance(self.explainer, LRP):
            self.preset = self.explainer.preset.name  # "auto" resolved
            param = next(self.model.parameters())
            probe = torch.zeros(1, in_channels(self.model), *self.size, device=param.device, dtype=param.dtype)
            self.cam_layer = None if cam_layer is None else find_cam_layer(self.model, probe, cam_layer)
        else:
            self.preset = preset
            self.cam_layer = self.explainer.layer
        self.notice = notice
        self._fp32: Explainer | None = None
        self._overflow_said = False
        chosen = getattr(self.explainer, "chosen", None)
        if chosen and self.preset != auto_preset(())[0] and notice is not None:
            notice(chosen)  # a CNN keeps the preset it always had: nothing new to say
        self._cmap: str | None = None
        self.cmap = cmap
        self.layout = layout
        self.alpha = alpha
        self.smooth = float(smooth)
        self.legend = legend
        self.passes = FastProcessor(self, graph=graph, notice=notice)

    def fp32_explainer(self) -> Explainer:
        """An fp32 explainer of the same method on the same device, model and settings, built on first
        use: it explains again the samples whose map overflowed fp16 (the fidelity guard)."""
        if self._fp32 is None:
            self._fp32 = build_explainer(self.model, self.method, card=self.card, size=self.size, dtype=torch.float32,
                                         device=self.device, preset=self.preset, cam_layer=self.cam_layer)
        self._fp32.top_k = self.explainer.top_k
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
        """Whether the maps are signed (the preset's relevance; CAM maps are positive)."""
        return self.explainer.signed

    @property
    def top_k(self) -> float:
        """Fraction of relevance kept before each layer (0 = unfiltered); settable at run time."""
        return self.explainer.top_k

    @top_k.setter
    def top_k(self, value: float) -> None:
        self.explainer.top_k = min(1.0, max(0.0, float(value)))
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
        current = self.top_k if self.top_k > 0 else DEFAULT_TOP_K
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
            result = self.explainer(x, target=self.passes.static_target(len(frames)))
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
        steps = result.first_bad[bad].tolist() if result.first_bad is not None else []
        self.say_overflow(len(bad), {self.explainer.step_name(int(s)) for s in steps} - {None})
        x = frames_to_tensor([frames[i] for i in bad.tolist()], self.card, self.size, self.device, torch.float32,
                             self.fit)
        target = self.passes.static_target(len(frames))
        again = self.fp32_explainer()(x, target=target[bad] if torch.is_tensor(target) else target)
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
