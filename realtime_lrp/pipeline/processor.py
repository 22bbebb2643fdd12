"""One frame (or a batch) in, explained frames out: preprocess → LRP → colour → layout.

:class:`FrameProcessor` is shared by the file pipeline (``rtlrp video``), still images
(``rtlrp explain``) and the live view (``rtlrp webcam``). It picks the device and dtype
(CUDA in fp16, else CPU in fp32 with a one-line notice), keeps one stable colour scale
per stream, and turns CUDA out-of-memory into a one-line :class:`ProcessingError`.

Run-time controls (for the live view's keys) are plain attributes or small methods:
``top_k`` (property, 0 turns the filter off), ``cmap`` (property; ``None`` means the
preset's default), ``layout`` and ``alpha`` (attributes), :meth:`scale_top_k`,
:meth:`next_cmap`, :meth:`next_layout`.
"""
from __future__ import annotations

import copy

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from realtime_lrp.pipeline import render
from realtime_lrp.lrp.engine import LRP
from realtime_lrp.models.sizes import check_input_size
from realtime_lrp.pipeline.preprocess import frames_to_tensor, processing_size

Notice = Callable[[str], None]

CMAP_CYCLE: tuple[str, ...] = ("hot", "diverging", "inferno", "turbo", "viridis", "jet")


class ProcessingError(RuntimeError):
    """A frame batch could not be explained (for example CUDA out of memory); one line."""


@dataclass(frozen=True)
class Prediction:
    """The model's top-1 class of a frame, its probability and the class LRP explained."""

    index: int
    name: str
    probability: float
    explained: int
    explained_name: str

    @property
    def label(self) -> str:
        """``"Coat  97.3%"``, plus ``"  [LRP: Shirt]"`` when another class is explained."""
        text = render.label_text(self.name, self.probability)
        if self.explained != self.index:
            text += f"  [LRP: {self.explained_name}]"
        return text


def out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is the CUDA or CPU allocator running out (the CPU's is a plain RuntimeError)."""
    return isinstance(error, (torch.OutOfMemoryError, MemoryError)) or "can't allocate memory" in str(error)


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


class MapSmoother:
    """Exponential moving average of a stream's relevance maps, kept on the maps' device.

    ``s_t = alpha * s_(t-1) + (1 - alpha) * R_t``; the first map after a reset is taken as
    it is, and ``alpha = 0`` passes maps through. Maps are folded in one at a time and in
    order, so batching does not change the result. The state is two preallocated tensors
    updated in place with no host synchronisation, so the same code runs inside the CUDA
    graph of :class:`realtime_lrp.pipeline.fast.FastProcessor`. It damps the frame-to-frame flicker of
    maps that move under imperceptible changes of the input (``rtlrp evaluate`` measures it).
    """

    def __init__(self, alpha: float, size: tuple[int, int], device: torch.device | str = "cpu") -> None:
        if not 0.0 <= alpha < 1.0:
            raise ValueError(f"smoothing {alpha} is outside [0, 1)")
        self.alpha = float(alpha)
        self.value = torch.zeros(size, dtype=torch.float32, device=device)
        self.seen = torch.zeros((), dtype=torch.bool, device=device)

    @property
    def active(self) -> bool:
        """Whether maps are smoothed at all (``alpha > 0``)."""
        return self.alpha > 0.0

    def reset(self) -> None:
        """Forget the history: the next map is taken as it is (new stream, new method)."""
        self.seen.fill_(False)

    def state(self) -> tuple[torch.Tensor, torch.Tensor]:
        """A copy of the running map and its flag (to keep across a CUDA graph's warm-up)."""
        return self.value.clone(), self.seen.clone()

    def restore(self, state: tuple[torch.Tensor, torch.Tensor]) -> None:
        """Put back a :meth:`state`, in place (captured graphs keep the tensors' addresses)."""
        self.value.copy_(state[0])
        self.seen.copy_(state[1])

    def __call__(self, maps: torch.Tensor) -> torch.Tensor:
        """Fold in fp32 maps (N, h, w) in order; the smoothed maps, (N, h, w)."""
        if not self.active:
            return maps
        out = []
        for r in maps:
            blended = torch.where(self.seen, self.alpha * self.value + (1.0 - self.alpha) * r, r)
            self.value.copy_(blended)
            self.seen.fill_(True)
            out.append(blended)
        return torch.stack(out)


class FrameProcessor:
    """Explain and render BGR frames with one model; keeps a stable colour scale per stream.

    ``model`` is an eval-mode model (any device; never moved or cast: the engine canonises it
    from its own weights and runs in the selected device and dtype) and ``card`` its model card. ``size`` is the processing (H, W), default the card's
    input size. ``cmap=None`` picks ``hot`` for positive-only presets and ``diverging``
    for signed ones. ``smooth`` in [0, 1) is the weight of the previous map in an
    exponential moving average of a stream's maps (:class:`MapSmoother`; 0 is off).
    ``notice`` receives one-line messages (the CPU fallback).
    """

    def __init__(self, model: torch.nn.Module, card: Mapping[str, Any], *, preset: str = "epsilon-plus-flat",
                 top_k: float = 0.02, target: str | int | None = None, size: tuple[int, int] | None = None,
                 cmap: str | None = None, layout: str = "overlay", alpha: float = 0.6,
                 smooth: float = 0.0, device: str = "auto", notice: Notice | None = None) -> None:
        if layout not in render.LAYOUTS:
            raise ValueError(f"unknown layout {layout!r}; choose one of {', '.join(render.LAYOUTS)}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha {alpha} is outside [0, 1]")
        if not 0.0 <= top_k <= 1.0:
            raise ValueError(f"top-k {top_k} is outside [0, 1]")
        self.card = card
        self.classes = list(card["classes"])
        self.size = processing_size(card, size)
        self.target = parse_target(target, self.classes)
        self.device, self.dtype = select_device(device, notice)
        self.model = model if not model.training else copy.deepcopy(model).eval()  # the caller's stays as it is
        check_input_size(self.model, card, self.size)
        self.lrp = LRP(self.model, preset=preset, top_k=top_k, mean=card["mean"], std=card["std"], dtype=self.dtype,
                       device=self.device)
        self.preset = preset
        self._cmap: str | None = None
        self.cmap = cmap
        self.layout = layout
        self.alpha = alpha
        self.scale = render.StableScale()
        self.smoother = MapSmoother(smooth, self.size, self.device)

    def reset(self) -> None:
        """Start a new stream: forget the running colour scale and smoothed map of the previous one."""
        self.scale.reset()
        self.smoother.reset()

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
        self.scale.reset()
        self.smoother.reset()

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
        """Relevance maps ``(N, h, w)`` float32 at the processing size, and predictions.

        ``stream=True`` treats the frames as the next ones of a stream: with ``smooth`` set,
        their maps are folded into the stream's moving average; ``False`` leaves them alone.
        """
        try:
            x = frames_to_tensor(frames, self.card, self.size, self.device, self.dtype)
            result = self.lrp(x, target=self.target)
            probs = torch.softmax(result.logits.float(), dim=1)
            top_p, top_i = probs.max(dim=1)
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

    def process(self, frames: Sequence[np.ndarray], stable: bool = True) -> tuple[list[np.ndarray], list[Prediction]]:
        """Explain and render frames in order with the current layout; each carries its label.

        ``stable=True`` uses the stream's running colour scale and map smoothing (video,
        webcam); ``False`` scales each frame on its own (independent still images).
        """
        relevance, preds = self.explain(frames, stream=stable)
        scales = self.scales(relevance, stable)
        return self.render(frames, relevance, preds, scales), preds

    def scales(self, relevance: np.ndarray, stable: bool = True) -> list[float]:
        """Colour scale per map: the stream's running scale, or each map's own."""
        if stable:
            return self.scale.update(relevance)
        return [render.StableScale.frame_scale(r) or 1.0 for r in relevance]

    def render(self, frames: Sequence[np.ndarray], relevance: np.ndarray, preds: Sequence[Prediction],
               scales: Sequence[float], layout: str | None = None) -> list[np.ndarray]:
        """Render explained frames with ``layout`` (default: the current one)."""
        layout = layout or self.layout
        return [
            render.render(f, r, s, self.cmap, layout, self.alpha, p.label)
            for f, r, s, p in zip(frames, relevance, scales, preds)
        ]

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
