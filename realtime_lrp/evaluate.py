"""``rtlrp evaluate``: how faithful, stable and sparse each explanation is, against baselines.

Every method (each LRP preset at each top-k and dtype, plus random maps, the gradient and
gradient × input) explains the same images, and the same class of each: the fp32 model's
top-1. Three properties are measured per image, then averaged:

- **Faithfulness, pixel-flipping** (Bach et al. 2015, Samek et al. 2016). Input pixels are
  ranked by their relevance summed over channels (ties in a seeded random order). In steps
  of ``step`` (2%) of the pixels up to ``max_fraction`` (50%), k = 1..K, the round(k·step·H·W)
  most relevant (MoRF) or least relevant (LeRF) pixels are set to the replacement value (the
  model's per-channel mean, 0 after normalisation), and the softmax probability of the
  explained class is recorded. AOPC = mean over k of p(x) − p(x_k). A faithful map has a
  high MoRF AOPC (the score collapses when its pixels go) and a low LeRF AOPC. Every curve is
  scored by the fp32 model, so rows differ only by their maps.
- **Robustness, average sensitivity** (Yeh et al. 2019): Pearson r between the map of x and
  the maps of x + Gaussian noise of ``noise`` grey levels (0.5/255 of the pixel range by
  default, not clipped), averaged over ``draws`` draws; 1 is a map unmoved by the noise. On a
  video, also the r between the maps of consecutive frames (``frame_r``).
- **Complexity, sparseness**: the Gini index of |R| (Chalasani et al. 2020); 1 puts all
  relevance on one pixel, 0 spreads it evenly.

The LRP maps of a dtype other than fp32 also get ``r_vs_fp32``, the median r to the fp32 map
of the same preset and top-k.
"""
from __future__ import annotations

import copy
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from realtime_lrp.engine import LRP
from realtime_lrp.presets import PRESET_NAMES

Notice = Callable[[str], None]
Explain = Callable[[Tensor, Tensor], Tensor]

BASELINES: tuple[str, ...] = ("random", "gradient", "gradient-x-input")
METHOD_NAMES: tuple[str, ...] = (*PRESET_NAMES, *BASELINES)
DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
FLIP_VALUES: tuple[str, ...] = ("mean", "black", "uniform")
FLIP_SCORES: tuple[str, ...] = ("probability", "logit")
FLIP_RANKS: tuple[str, ...] = ("relevance", "magnitude")
IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
ROW_KEYS: tuple[str, ...] = (
    "method", "kind", "preset", "top_k", "dtype", "aopc_morf", "aopc_lerf", "aopc_diff", "sensitivity_r",
    "sensitivity_r_median", "sensitivity_r_min", "gini", "r_vs_fp32", "frame_r", "images", "seconds",
    "curve_morf", "curve_lerf",
)
SMOOTH_NEEDS_VIDEO = "smoothing (--smooth) needs a video input: it averages maps over consecutive frames"
_CHUNK_ELEMENTS = 1 << 24  # perturbed-input values built at once (64 MiB in fp32)


class EvaluationError(ValueError):
    """Inputs or settings the evaluation cannot use; the message is one line."""


@dataclass(frozen=True)
class FlipProtocol:
    """Pixel-flipping settings: step and largest fraction of pixels, replacement, score, ranking.

    ``value``: ``mean`` (the model's per-channel mean, 0 after normalisation), ``black``
    (pixel value 0) or ``uniform`` (uniform random pixels, drawn once per image).
    ``score``: the softmax ``probability`` of the explained class, or its ``logit``.
    ``rank``: by ``relevance`` (signed) or by its ``magnitude``.
    """

    step: float = 0.02
    max_fraction: float = 0.5
    value: str = "mean"
    score: str = "probability"
    rank: str = "relevance"

    def __post_init__(self) -> None:
        if not 0 < self.step <= self.max_fraction <= 1:
            raise EvaluationError(f"flip step {self.step:g} and maximum {self.max_fraction:g} must satisfy "
                                  "0 < step <= maximum <= 1")
        for name, value, allowed in (("value", self.value, FLIP_VALUES), ("score", self.score, FLIP_SCORES),
                                     ("rank", self.rank, FLIP_RANKS)):
            if value not in allowed:
                raise EvaluationError(f"unknown flip {name} {value!r}; choose one of {', '.join(allowed)}")

    @property
    def steps(self) -> int:
        """K, the number of perturbation steps."""
        return int(math.floor(self.max_fraction / self.step + 1e-9))

    def fractions(self) -> list[float]:
        """Fraction of pixels flipped at k = 0..K (for the curves' x axis)."""
        return [round(k * self.step, 10) for k in range(self.steps + 1)]

    def counts(self, pixels: int) -> list[int]:
        """Pixels flipped at k = 0..K for an image of ``pixels`` pixels: round(k·step·pixels)."""
        return [min(pixels, round(k * self.step * pixels)) for k in range(self.steps + 1)]


@dataclass(frozen=True)
class Method:
    """One explanation method of a run: an LRP preset at a top-k and dtype, or a baseline."""

    kind: str
    preset: str | None = None
    top_k: float | None = None
    dtype: str = "fp32"

    @property
    def name(self) -> str:
        """``epsilon-plus-flat k=0.02 fp32``, or the baseline's name."""
        if self.kind != "lrp":
            return self.kind
        return f"{self.preset} k={self.top_k:g} {self.dtype}"


def plan_methods(names: Sequence[str], top_ks: Sequence[float], dtypes: Sequence[str]) -> list[Method]:
    """The methods of a run, in table order: each preset × top-k × dtype, then the baselines.

    Unknown names, top-k values outside [0, 1] and unknown dtypes are one-line errors.
    """
    unknown = [n for n in names if n not in METHOD_NAMES]
    if unknown:
        raise EvaluationError(f"unknown method {unknown[0]!r}; choose from {', '.join(METHOD_NAMES)}")
    bad = [k for k in top_ks if not 0 <= k <= 1]
    if bad:
        raise EvaluationError(f"top-k {bad[0]:g} is outside [0, 1]")
    wrong = [d for d in dtypes if d not in DTYPES]
    if wrong:
        raise EvaluationError(f"unknown dtype {wrong[0]!r}; choose from {', '.join(DTYPES)}")
    ordered_dtypes = [d for d in DTYPES if d in dtypes]
    methods = [Method("lrp", p, float(k), d) for p in PRESET_NAMES if p in names
               for k in dict.fromkeys(top_ks) for d in ordered_dtypes]
    return methods + [Method(b) for b in BASELINES if b in names]


def run_dtypes(requested: Sequence[str] | None, device: torch.device, notice: Notice) -> list[str]:
    """The dtypes to run: ``None`` means fp32 plus every lower precision the device runs.

    bf16 runs everywhere; fp16 only on CUDA here, so it is skipped on the CPU with a notice.
    """
    dtypes = list(requested) if requested else ["fp32", "bf16", "fp16"]
    if "fp16" in dtypes and device.type != "cuda":
        notice("fp16 skipped: it runs on CUDA only, and no CUDA device is in use")
        dtypes.remove("fp16")
    if not dtypes:
        raise EvaluationError("no dtype left to run")
    return dtypes


# ---------------------------------------------------------------- metrics


def pearson_rows(a: Tensor, b: Tensor) -> Tensor:
    """Pearson r of each pair of rows of ``a`` and ``b`` (N, ...); NaN where a row is constant."""
    x = a.reshape(a.shape[0], -1).double()
    y = b.reshape(b.shape[0], -1).double()
    x = x - x.mean(1, keepdim=True)
    y = y - y.mean(1, keepdim=True)
    denom = (x.square().sum(1) * y.square().sum(1)).sqrt()
    r = (x * y).sum(1) / denom
    return torch.where(denom > 0, r, torch.full_like(r, float("nan"))).float()


def gini(maps: Tensor) -> Tensor:
    """Gini index of |R| per map (N, ...): Σ_k (2k − n − 1)·a_(k) / (n·Σa), a sorted ascending.

    NaN for an all-zero map.
    """
    a = maps.reshape(maps.shape[0], -1).abs().double().sort(1).values
    n = a.shape[1]
    k = torch.arange(1, n + 1, dtype=torch.float64, device=a.device)
    total = a.sum(1)
    g = ((2 * k - n - 1) * a).sum(1) / (n * total)
    return torch.where(total > 0, g, torch.full_like(g, float("nan"))).float()


def flip_order(relevance: Tensor, most_relevant_first: bool, generator: torch.Generator) -> Tensor:
    """Pixel indices (N, H·W) from most to least relevant (or the reverse), ties in random order."""
    r = relevance.reshape(relevance.shape[0], -1)
    tiebreak = torch.rand(r.shape, generator=generator, device=generator.device).to(r.device).argsort(1)
    within = r.gather(1, tiebreak).argsort(dim=1, descending=most_relevant_first, stable=True)
    return tiebreak.gather(1, within)


def replacement(x: Tensor, value: str, mean: Sequence[float], std: Sequence[float],
                generator: torch.Generator) -> Tensor:
    """What flipped pixels become, in normalised units, shaped like ``x``."""
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    if value == "mean":
        return torch.zeros_like(x)
    if value == "black":
        return ((0.0 - m) / s).expand_as(x).clone()
    pixels = torch.rand(x.shape, generator=generator, device=generator.device).to(x.device, x.dtype)
    return (pixels - m) / s


def score_batch(model: nn.Module, x: Tensor, target: Tensor, score: str) -> Tensor:
    """The explained class's softmax probability (or logit) for each input, in fp32."""
    with torch.inference_mode():
        logits = model(x).float()
    if score == "probability":
        logits = torch.softmax(logits, dim=1)
    return logits.gather(1, target.view(-1, 1))[:, 0]


def flip_curves(model: nn.Module, x: Tensor, relevance: Tensor, target: Tensor, protocol: FlipProtocol,
                value: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """MoRF and LeRF curves (N, K+1): the score after flipping 0, 1, ..., K steps of pixels.

    All steps of a group of images go through the model in one forward pass.
    """
    n, c, h, w = x.shape
    rank_by = relevance.abs() if protocol.rank == "magnitude" else relevance
    counts = torch.tensor(protocol.counts(h * w), device=x.device)
    steps = len(counts)
    flat_x, flat_v = x.reshape(n, 1, c, h * w), value.reshape(n, 1, c, h * w)
    group = max(1, _CHUNK_ELEMENTS // (steps * c * h * w))
    curves = []
    for most_first in (True, False):
        order = flip_order(rank_by, most_first, generator)
        position = torch.empty_like(order).scatter_(
            1, order, torch.arange(h * w, device=x.device).expand(n, -1).contiguous())
        scores = []
        for i in range(0, n, group):
            flipped = position[i:i + group, None, None, :] < counts.view(1, -1, 1, 1)  # (g, K+1, 1, HW)
            inputs = torch.where(flipped, flat_v[i:i + group], flat_x[i:i + group]).reshape(-1, c, h, w)
            labels = target[i:i + group].repeat_interleave(steps)
            scores.append(score_batch(model, inputs, labels, protocol.score).view(-1, steps))
        curves.append(torch.cat(scores))
    return curves[0], curves[1]


def aopc(curve: Tensor) -> Tensor:
    """Area over the perturbation curve per image: mean over k = 1..K of score_0 − score_k."""
    return (curve[:, :1] - curve[:, 1:]).mean(1)


def sensitivity(explain: Explain, x: Tensor, target: Tensor, maps: Tensor, sigma: Tensor, draws: int,
                generator: torch.Generator) -> Tensor:
    """Mean Pearson r (N,) between ``maps`` (of ``x``) and the maps of ``x`` + N(0, sigma²) noise.

    ``sigma`` is per channel in normalised units, shaped to broadcast against ``x``.
    """
    rs = []
    for _ in range(draws):
        noise = torch.randn(x.shape, generator=generator, device=generator.device).to(x.device) * sigma
        rs.append(pearson_rows(maps, explain(x + noise, target)))
    return torch.stack(rs).nanmean(0)


# ---------------------------------------------------------------- explainers


def lrp_explainer(model: nn.Module, card: Mapping[str, Any], method: Method) -> Explain:
    """LRP maps (N, H, W) in fp32 from a copy of ``model`` in the method's dtype."""
    dtype = DTYPES[method.dtype]
    runner = model if dtype == torch.float32 else copy.deepcopy(model).to(dtype)
    lrp = LRP(runner, preset=method.preset, top_k=method.top_k, mean=card["mean"], std=card["std"])

    def explain(x: Tensor, target: Tensor) -> Tensor:
        maps = lrp(x.to(dtype), target=target).relevance.float()
        return torch.nan_to_num(maps, nan=0.0, posinf=0.0, neginf=0.0)
    return explain


def gradient_explainer(model: nn.Module, times_input: bool) -> Explain:
    """Saliency |∂y_c/∂x| summed over channels, or gradient × input (x normalised, signed).

    x is relative to the model's mean, so gradient × input is the first-order estimate of
    what replacing a pixel by the mean (the default flip) does to the logit.
    """
    def explain(x: Tensor, target: Tensor) -> Tensor:
        inp = x.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            logits = model(inp)
            grad, = torch.autograd.grad(logits.gather(1, target.view(-1, 1)).sum(), inp)
        maps = grad * x if times_input else grad.abs()
        return maps.sum(1).detach().float()
    return explain


def random_explainer(generator: torch.Generator) -> Explain:
    """Uniform random maps: the floor every explanation must beat."""
    def explain(x: Tensor, target: Tensor) -> Tensor:
        n, _, h, w = x.shape
        return torch.rand((n, h, w), generator=generator, device=generator.device).to(x.device)
    return explain


# ---------------------------------------------------------------- inputs


@dataclass
class Inputs:
    """Normalised images (N, C, H, W) in fp32 on the CPU, their labels if known, and what they are."""

    x: Tensor
    labels: Tensor | None
    source: str
    video: bool = False


def load_inputs(source: str | None, card: Mapping[str, Any], count: int, size: tuple[int, int] | None = None,
                notice: Notice | None = None) -> Inputs:
    """The first ``count`` images of a folder, frames of a video, or test images of ``fashion-mnist``.

    ``None`` means ``fashion-mnist`` for a model trained on it. Images are brought to the
    processing size and the model's channels the way the other commands do it, with a notice.
    """
    from realtime_lrp.preprocess import processing_size

    notice = notice or (lambda _msg: None)
    hw = processing_size(card, size)
    kind, name = source_kind(source, card)
    if kind == "dataset":
        return _dataset_inputs(card, count, hw, notice)
    path = Path(name).expanduser()
    if kind == "folder":
        return _folder_inputs(path, card, count, hw, notice)
    return _video_inputs(path, card, count, hw, notice)


def source_kind(source: str | None, card: Mapping[str, Any]) -> tuple[str, str]:
    """``("dataset" | "folder" | "video", name)`` for a SOURCE argument, or a one-line error."""
    if source is None:
        if card.get("dataset") != "fashion-mnist":
            raise EvaluationError("give the images to evaluate on: a folder of images, a video file or "
                                  "fashion-mnist")
        source = "fashion-mnist"
    if source == "fashion-mnist":
        return "dataset", source
    path = Path(source).expanduser()
    if path.is_dir():
        return "folder", source
    if path.is_file():
        return "video", source
    raise EvaluationError(f"{source}: no such folder, video file or dataset (give a folder of images, "
                          "a video file or fashion-mnist)")


def _fewer(count: int, available: int, what: str, notice: Notice) -> int:
    if available < count:
        notice(f"asked for {count} images, but {what} has only {available}: using {available}")
    return min(count, available)


def _dataset_inputs(card: Mapping[str, Any], count: int, hw: tuple[int, int], notice: Notice) -> Inputs:
    from realtime_lrp.data import DataError, fashion_mnist, normalize, resize

    try:
        images, labels = fashion_mnist(train=False)
    except DataError as exc:
        raise EvaluationError(str(exc)) from None
    n = _fewer(count, len(images), "the Fashion-MNIST test set", notice)
    x = resize(images[:n].float() / 255.0, hw)
    channels = int(card["input_channels"])
    if channels != 1:
        notice(f"Fashion-MNIST is gray: its images are repeated into the model's {channels} channels")
        x = x.repeat(1, channels, 1, 1)
    if list(hw) != [28, 28]:
        notice(f"Fashion-MNIST's 28x28 images are resized to {hw[1]}x{hw[0]} (bilinear, as in training)")
    known = card.get("dataset") == "fashion-mnist"
    return Inputs(normalize(x, card["mean"], card["std"]), labels[:n] if known else None, "fashion-mnist")


def _frames_tensor(frames: Sequence[np.ndarray], card: Mapping[str, Any], hw: tuple[int, int]) -> Tensor:
    from realtime_lrp.preprocess import frames_to_tensor

    return torch.cat([frames_to_tensor(frames[i:i + 256], card, hw) for i in range(0, len(frames), 256)])


def _say_conversions(frames: Sequence[np.ndarray], card: Mapping[str, Any], hw: tuple[int, int], what: str,
                     notice: Notice) -> None:
    """Say how many of ``frames`` are resized or converted to the model's channels (``what``: their name)."""
    channels = int(card["input_channels"])
    resized = sum(f.shape[:2] != tuple(hw) for f in frames)
    converted = sum((1 if f.ndim == 2 else f.shape[2]) != channels for f in frames)
    kind = "gray" if channels == 1 else "RGB"
    def share(k: int) -> str:
        return what if len(frames) == 1 else f"{k} of the {len(frames)} {what}"

    if resized:
        notice(f"{share(resized)} not {hw[1]}x{hw[0]}: resized to it as a whole (bilinear), as the other "
               "commands do")
    if converted:
        notice(f"{share(converted)} not {kind}: converted to {kind} ({channels} channel"
               f"{'s' if channels > 1 else ''}), as the other commands do")


def _folder_inputs(folder: Path, card: Mapping[str, Any], count: int, hw: tuple[int, int],
                   notice: Notice) -> Inputs:
    import cv2

    paths = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not paths:
        raise EvaluationError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {folder}")
    frames = []
    for path in paths[:count]:
        frame = cv2.imread(str(path), cv2.IMREAD_ANYCOLOR)
        if frame is None:
            raise EvaluationError(f"cannot read {path}: not an image, or corrupt")
        frames.append(frame)
    _fewer(count, len(paths), str(folder), notice)
    _say_conversions(frames, card, hw, "images are" if len(frames) > 1 else "the image is", notice)
    return Inputs(_frames_tensor(frames, card, hw), None, str(folder))


def _video_inputs(path: Path, card: Mapping[str, Any], count: int, hw: tuple[int, int],
                  notice: Notice) -> Inputs:
    from realtime_lrp.reader import InputError, VideoReader

    try:
        reader = VideoReader(path)
    except InputError as exc:
        raise EvaluationError(str(exc)) from None
    frames = []
    with reader:
        for frame in reader.frames():
            if len(frames) >= count:
                break
            frames.append(frame.image)
    _fewer(count, len(frames), str(path), notice)
    _say_conversions(frames[:1], card, hw, "the video's frames are", notice)
    return Inputs(_frames_tensor(frames, card, hw), None, str(path), video=True)


# ---------------------------------------------------------------- the run


@dataclass
class EvalConfig:
    """What one ``rtlrp evaluate`` run measures (the CLI's options)."""

    methods: Sequence[str] = METHOD_NAMES
    top_ks: Sequence[float] = (0.0, 0.02, 0.05)
    dtypes: Sequence[str] | None = None
    flip: FlipProtocol = field(default_factory=FlipProtocol)
    noise: float = 0.5
    draws: int = 3
    batch: int = 64
    smooth: float = 0.0
    seed: int = 0


def select_device(requested: str) -> torch.device:
    """``auto``: CUDA when available, else the CPU; ``cuda`` without CUDA is a one-line error."""
    requested = requested.lower()
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise EvaluationError("CUDA is not available: use --device cpu or auto")
    try:
        return torch.device(requested)
    except RuntimeError:
        raise EvaluationError(f"unknown device {requested!r}; use auto, cpu, cuda or cuda:N") from None


def evaluate(model: nn.Module, card: Mapping[str, Any], inputs: Inputs, config: EvalConfig,
             device: torch.device, progress: Any = None, notice: Notice | None = None) -> list[dict[str, Any]]:
    """Measure every method of ``config`` on ``inputs``; one row per method (keys ``ROW_KEYS``).

    ``progress`` is an optional started ``rich.progress.Progress``; it gets one task advanced
    per image and method. Each method's random numbers come from three generators seeded from
    ``config.seed`` (tie order and uniform fills; sensitivity noise; random maps), so methods are
    compared on the same noise, and changing ``draws`` leaves the pixel-flipping results alone.
    """
    from realtime_lrp.processor import MapSmoother

    notice = notice or (lambda _msg: None)
    if config.draws < 1 or config.batch < 1 or config.noise < 0:
        raise EvaluationError("draws and batch must be at least 1, noise at least 0")
    if config.smooth and not inputs.video:
        raise EvaluationError(SMOOTH_NEEDS_VIDEO)
    model = model.to(device, torch.float32).eval()
    methods = plan_methods(config.methods, config.top_ks, run_dtypes(config.dtypes, device, notice))
    x_all = inputs.x
    n, _, h, w = x_all.shape
    std = torch.tensor(card["std"], dtype=torch.float32, device=device).view(1, -1, 1, 1)
    sigma = config.noise / 255.0 / std
    targets = torch.cat([score_logits(model, x_all[i:i + config.batch].to(device)).argmax(1)
                         for i in range(0, n, config.batch)])
    task = progress.add_task("evaluating", total=len(methods) * n) if progress is not None else None
    fp32_maps: dict[tuple[str, float], Tensor] = {}
    rows = []
    for method in methods:
        if task is not None:
            progress.update(task, description=method.name)
        flips, noise, draws = (torch.Generator(device=device).manual_seed(config.seed + i) for i in range(3))
        explain = _explainer(model, card, method, draws)
        smoother = MapSmoother(config.smooth, (h, w), device)
        start = time.perf_counter()
        parts: dict[str, list[Tensor]] = {k: [] for k in ("maps", "morf", "lerf", "sens", "gini")}
        for i in range(0, n, config.batch):
            x = x_all[i:i + config.batch].to(device)
            target = targets[i:i + config.batch]
            raw = explain(x, target)
            maps = smoother(raw)
            value = replacement(x, config.flip.value, card["mean"], card["std"], flips)
            morf, lerf = flip_curves(model, x, maps, target, config.flip, value, flips)
            parts["sens"].append(sensitivity(explain, x, target, raw, sigma, config.draws, noise))
            parts["maps"].append(maps.cpu())
            parts["morf"].append(morf.cpu())
            parts["lerf"].append(lerf.cpu())
            parts["gini"].append(gini(maps).cpu())
            if task is not None:
                progress.advance(task, len(x))
        joined = {k: torch.cat(v) for k, v in parts.items()}
        reference = fp32_maps.get((method.preset, method.top_k)) if method.dtype != "fp32" else None
        if method.kind == "lrp" and method.dtype == "fp32":
            fp32_maps[(method.preset, method.top_k)] = joined["maps"]
        rows.append(_row(method, joined, reference, inputs.video, time.perf_counter() - start))
    return rows


def score_logits(model: nn.Module, x: Tensor) -> Tensor:
    """The model's fp32 logits for ``x``, without autograd."""
    with torch.inference_mode():
        return model(x).float()


def _explainer(model: nn.Module, card: Mapping[str, Any], method: Method, generator: torch.Generator) -> Explain:
    if method.kind == "lrp":
        return lrp_explainer(model, card, method)
    if method.kind == "random":
        return random_explainer(generator)
    return gradient_explainer(model, times_input=method.kind == "gradient-x-input")


def _stat(values: Tensor, how: str) -> float | None:
    v = values[~torch.isnan(values)]
    if v.numel() == 0:
        return None
    if how == "median":
        return float(v.double().quantile(0.5))
    return float(v.mean() if how == "mean" else v.min())


def _row(method: Method, m: dict[str, Tensor], reference: Tensor | None, video: bool,
         seconds: float) -> dict[str, Any]:
    morf, lerf = aopc(m["morf"]), aopc(m["lerf"])
    frame_r = pearson_rows(m["maps"][:-1], m["maps"][1:]) if video and len(m["maps"]) > 1 else None
    return {
        "method": method.name, "kind": method.kind, "preset": method.preset, "top_k": method.top_k,
        "dtype": method.dtype, "aopc_morf": _stat(morf, "mean"), "aopc_lerf": _stat(lerf, "mean"),
        "aopc_diff": _stat(morf - lerf, "mean"), "sensitivity_r": _stat(m["sens"], "mean"),
        "sensitivity_r_median": _stat(m["sens"], "median"), "sensitivity_r_min": _stat(m["sens"], "min"),
        "gini": _stat(m["gini"], "mean"),
        "r_vs_fp32": None if reference is None else _stat(pearson_rows(reference, m["maps"]), "median"),
        "frame_r": None if frame_r is None else _stat(frame_r, "mean"),
        "images": len(m["maps"]), "seconds": round(seconds, 2),
        "curve_morf": [round(float(v), 6) for v in m["morf"].mean(0)],
        "curve_lerf": [round(float(v), 6) for v in m["lerf"].mean(0)],
    }


def input_frame_r(inputs: Inputs) -> float | None:
    """Mean Pearson r between consecutive input frames: how much the video itself changes."""
    if not inputs.video or len(inputs.x) < 2:
        return None
    return _stat(pearson_rows(inputs.x[:-1], inputs.x[1:]), "mean")


def accuracy(model: nn.Module, inputs: Inputs, device: torch.device, batch: int = 256) -> float | None:
    """Top-1 accuracy on the inputs when their labels are known (a check of the set-up)."""
    if inputs.labels is None:
        return None
    model = model.to(device, torch.float32).eval()
    preds = torch.cat([score_logits(model, inputs.x[i:i + batch].to(device)).argmax(1).cpu()
                       for i in range(0, len(inputs.x), batch)])
    return float((preds == inputs.labels).float().mean())


@dataclass
class Report:
    """A finished run: the rows, the JSON document, and facts for the summary lines."""

    rows: list[dict[str, Any]]
    payload: dict[str, Any]
    images: int
    accuracy: float | None
    input_frame_r: float | None
    seconds: float


def run(source: str | None, model: nn.Module, card: Mapping[str, Any], config: EvalConfig, *, count: int = 256,
        size: tuple[int, int] | None = None, device: str = "auto", json_path: Path | None = None,
        plot_path: Path | None = None, progress: Any = None, notice: Notice | None = None) -> Report:
    """The ``rtlrp evaluate`` command: load the inputs, measure every method, write JSON and plot.

    Settings are checked before any image is read; every problem is an :class:`EvaluationError`.
    """
    from realtime_lrp.bench import environment

    notice = notice or (lambda _msg: None)
    plan_methods(config.methods, config.top_ks, config.dtypes or ["fp32"])
    if plot_path is not None and Path(plot_path).suffix.lower() != ".png":
        raise EvaluationError(f"--plot must be a .png file, got {Path(plot_path).name}")
    if config.smooth and source_kind(source, card)[0] != "video":
        raise EvaluationError(SMOOTH_NEEDS_VIDEO)
    dev = select_device(device)
    start = time.perf_counter()
    inputs = load_inputs(source, card, count, size, notice)
    acc = accuracy(model, inputs, dev)
    rows = evaluate(model, card, inputs, config, dev, progress, notice)
    frame_r = input_frame_r(inputs)
    extra = {"accuracy": acc, "input_frame_r": frame_r, "device": str(dev)}
    document = payload(rows, config, inputs, card, environment(), extra)
    if json_path is not None:
        write_json(Path(json_path), document)
    if plot_path is not None:
        title = (f"rtlrp evaluate: {card.get('arch')} on {len(inputs.x)} images of {Path(inputs.source).name}, "
                 f"pixels set to the {config.flip.value} in steps of {100 * config.flip.step:g}%")
        plot_curves(rows, config.flip.fractions(), Path(plot_path), title, config.flip.score)
    return Report(rows, document, len(inputs.x), acc, frame_r, time.perf_counter() - start)


def evaluate_progress(console: Any = None) -> Any:
    """A progress bar for the run: images done over all methods, elapsed time and ETA."""
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    return Progress(TextColumn("{task.description:<34}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TextColumn("ETA"), TimeRemainingColumn(), console=console)


# ---------------------------------------------------------------- reports


def _fmt(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def results_table(rows: Sequence[Mapping[str, Any]], title: str = "rtlrp evaluate") -> Any:
    """A rich table of the rows: AOPC MoRF/LeRF and their difference, sensitivity r, Gini."""
    from rich.table import Table

    video = any(r["frame_r"] is not None for r in rows)
    low = any(r["r_vs_fp32"] is not None for r in rows)
    table = Table(title=title, caption="↑ higher is better, ↓ lower is better; r: Pearson correlation of maps")
    columns = ["method", "top-k", "dtype", "MoRF AOPC ↑", "LeRF AOPC ↓", "MoRF−LeRF ↑", "noise r ↑",
               "noise r min", "Gini ↑"] + (["r vs fp32"] if low else []) + (["frame r"] if video else [])
    for name in columns:
        table.add_column(name, justify="left" if name in ("method", "dtype") else "right")
    best = max(rows, key=lambda r: r["aopc_diff"] if r["aopc_diff"] is not None else -math.inf)
    for r in rows:
        cells = [r["preset"] or r["method"], "—" if r["top_k"] is None else f"{r['top_k']:g}", r["dtype"],
                 _fmt(r["aopc_morf"]), _fmt(r["aopc_lerf"]), _fmt(r["aopc_diff"]), _fmt(r["sensitivity_r"]),
                 _fmt(r["sensitivity_r_min"]), _fmt(r["gini"])]
        cells += [_fmt(r["r_vs_fp32"], 4)] if low else []
        cells += [_fmt(r["frame_r"])] if video else []
        table.add_row(*cells, style="bold" if r is best else None)
    return table


def write_json(path: Path, payload: Mapping[str, Any]) -> None:
    """Write ``payload`` atomically: ``PATH.partial`` beside it, then renamed over ``PATH``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    with open(partial, "w", encoding="utf-8") as fh:
        fh.write(json.dumps(payload, indent=2) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(partial, path)


def plot_curves(rows: Sequence[Mapping[str, Any]], fractions: Sequence[float], path: Path,
                title: str = "rtlrp evaluate", score: str = "probability") -> None:
    """MoRF (top) and LeRF (bottom) curves, one column per preset with the baselines in each.

    Colour marks the top-k, the line style the dtype, baselines are grey; one legend below
    serves every panel (the AOPC values are in the table). Written atomically.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    presets = list(dict.fromkeys(r["preset"] for r in rows if r["kind"] == "lrp")) or ["baselines"]
    baselines = [r for r in rows if r["kind"] != "lrp"]
    top_ks = list(dict.fromkeys(r["top_k"] for r in rows if r["kind"] == "lrp"))
    colours = {k: plt.get_cmap("viridis")(i / max(1, len(top_ks) - 1) * 0.85) for i, k in enumerate(top_ks)}
    styles = {"fp32": "-", "bf16": "--", "fp16": ":"}
    base_styles = {"random": ("0.55", ":"), "gradient": ("0.35", "-."), "gradient-x-input": ("0.05", (0, (5, 2)))}
    xs = [100 * f for f in fractions]
    fig, axes = plt.subplots(2, len(presets), figsize=(4.4 * len(presets) + 0.6, 8.2), sharex=True, sharey=True,
                             squeeze=False)
    legend: dict[str, Any] = {}
    for col, preset in enumerate(presets):
        for row_i, (key, label) in enumerate((("curve_morf", "MoRF: most relevant first (lower is better)"),
                                              ("curve_lerf", "LeRF: least relevant first (higher is better)"))):
            ax = axes[row_i][col]
            for r in rows:
                if r["kind"] == "lrp" and r["preset"] == preset:
                    name = f"LRP top-k {r['top_k']:g}, {r['dtype']}"
                    legend[name], = ax.plot(xs, r[key], color=colours[r["top_k"]], linestyle=styles[r["dtype"]],
                                            linewidth=1.8)
            for r in baselines:
                colour, style = base_styles[r["kind"]]
                legend[r["kind"].replace("-x-", " × ")], = ax.plot(xs, r[key], color=colour, linestyle=style,
                                                                    linewidth=1.5)
            ax.set_title(f"{preset}\n{label}", fontsize=9.5)
            ax.set_ylim(0, 1.02 if score == "probability" else None)
            ax.grid(alpha=0.3)
            if row_i == 1:
                ax.set_xlabel("pixels flipped (%)")
            if col == 0:
                ax.set_ylabel(f"{score} of the explained class")
    fig.suptitle(title, fontsize=10.5)
    columns = [[n for n in legend if n.startswith(f"LRP top-k {k:g},")] for k in top_ks]
    columns.append([n for n in legend if not n.startswith("LRP ")])
    columns = [c for c in columns if c]
    depth = max(len(c) for c in columns)
    labels = [n for c in columns for n in c + [""] * (depth - len(c))]  # one column per top-k, then baselines
    blank = plt.Line2D([], [], alpha=0)
    fig.legend([legend.get(n, blank) for n in labels], labels, loc="lower center", ncol=len(columns),
               fontsize=8.5, frameon=False)
    fig.tight_layout(rect=(0, 0.015 + 0.03 * depth, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    fig.savefig(partial, dpi=110, format="png")
    plt.close(fig)
    os.replace(partial, path)


def payload(rows: Sequence[Mapping[str, Any]], config: EvalConfig, inputs: Inputs, card: Mapping[str, Any],
            environment: Mapping[str, Any], extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The ``--json`` document: environment, settings (protocol included) and one row per method."""
    settings = {k: v for k, v in asdict(config).items() if k != "flip"}
    settings.update(flip=asdict(config.flip), flip_fractions=config.flip.fractions(), source=inputs.source,
                    images=len(inputs.x), input_size=list(inputs.x.shape[-2:]),
                    model=card.get("arch"), dataset=card.get("dataset"), **(extra or {}))
    return {"environment": dict(environment), "settings": settings, "rows": [dict(r) for r in rows]}
