"""One evaluation run: every method on the same images and classes, one row each."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor, nn

from realtime_lrp.apps.evaluate.inputs import SMOOTH_NEEDS_VIDEO, Inputs, load_inputs, source_kind
from realtime_lrp.apps.evaluate.methods import (
    CAM_METHODS,
    METHOD_NAMES,
    EvaluationError,
    Method,
    Notice,
    _explainer,
    plan_methods,
    run_dtypes,
    select_device,
)
from realtime_lrp.apps.evaluate.metrics import (
    FlipProtocol,
    aopc,
    class_sensitivity,
    flip_curves,
    gini,
    pearson_rows,
    replacement,
    sensitivity,
)
from realtime_lrp.apps.evaluate.report import payload, plot_curves
from realtime_lrp.apps.evaluate.road import NOISE
from realtime_lrp.util.atomic import write_json

ROW_KEYS: tuple[str, ...] = (
    "method", "kind", "preset", "target_mode", "top_k", "dtype", "aopc_morf", "aopc_lerf", "aopc_diff", "sensitivity_r",
    "sensitivity_r_median", "sensitivity_r_min", "gini", "r_vs_fp32", "frame_r", "images", "seconds",
    "ms_per_image", "cam_layer", "aopc_road_morf", "aopc_road_lerf", "aopc_road_diff", "class_r",
    "curve_road_morf", "curve_road_lerf",
    "curve_morf", "curve_lerf",
)


@dataclass
class EvalConfig:
    """What one ``rtlrp evaluate`` run measures (the CLI's options)."""

    methods: Sequence[str] = METHOD_NAMES
    top_ks: Sequence[float] = (0.0, 0.02, 0.05)
    target_modes: Sequence[str] = ("plain",)
    dtypes: Sequence[str] | None = None
    flip: FlipProtocol = field(default_factory=FlipProtocol)
    noise: float = 0.5
    draws: int = 3
    batch: int = 64
    smooth: float = 0.0
    seed: int = 0
    cam_layer: str | None = None
    road: bool = True
    road_noise: float = NOISE
    class_sensitivity: bool = True


def evaluate(model: nn.Module, card: Mapping[str, Any], inputs: Inputs, config: EvalConfig,
             device: torch.device, progress: Any = None, notice: Notice | None = None) -> list[dict[str, Any]]:
    """Measure every method of ``config`` on ``inputs``; one row per method (keys ``ROW_KEYS``).

    ``progress`` is an optional started ``rich.progress.Progress``; it gets one task advanced
    per image and method. Each method's random numbers come from five generators seeded from
    ``config.seed`` (tie order and uniform fills; sensitivity noise; random maps; ROAD's tie order
    and imputation noise; the other class of the class sensitivity), so methods are compared on
    the same noise, and changing ``draws`` leaves the pixel-flipping results alone.
    """
    from realtime_lrp.pipeline.stream import MapSmoother

    notice = notice or (lambda _msg: None)
    if config.draws < 1 or config.batch < 1 or config.noise < 0:
        raise EvaluationError("draws and batch must be at least 1, noise at least 0")
    if config.smooth and not inputs.video:
        raise EvaluationError(SMOOTH_NEEDS_VIDEO)
    model = model.to(device, torch.float32).eval()
    methods = plan_methods(config.methods, config.top_ks, run_dtypes(config.dtypes, device, notice),
                           config.target_modes)
    x_all = inputs.x
    n, _, h, w = x_all.shape
    std = torch.tensor(card["std"], dtype=torch.float32, device=device).view(1, -1, 1, 1)
    sigma = config.noise / 255.0 / std
    layer = None
    if any(m.kind in CAM_METHODS for m in methods):
        layer = _cam_layer(model, x_all[:1].to(device), config.cam_layer)
    targets = torch.cat([score_logits(model, x_all[i:i + config.batch].to(device)).argmax(1)
                         for i in range(0, n, config.batch)])
    classes = int(score_logits(model, x_all[:1].to(device)).shape[1])
    task = progress.add_task("evaluating", total=len(methods) * n) if progress is not None else None
    fp32_maps: dict[tuple[str, str, float], Tensor] = {}
    rows = []
    for method in methods:
        if task is not None:
            progress.update(task, description=method.name)
        flips, noise, draws, road, other = (torch.Generator(device=device).manual_seed(config.seed + i)
                                            for i in range(5))
        explain = _explainer(model, card, method, draws, layer)
        smoother = MapSmoother(config.smooth, (h, w), device)
        start = time.perf_counter()
        explaining = 0.0
        parts: dict[str, list[Tensor]] = {k: [] for k in ("maps", "morf", "lerf", "sens", "gini", "road_morf",
                                                          "road_lerf", "class_r")}
        for i in range(0, n, config.batch):
            x = x_all[i:i + config.batch].to(device)
            target = targets[i:i + config.batch]
            began = _clock(device)
            raw = explain(x, target)
            explaining += _clock(device) - began
            maps = smoother(raw)
            value = replacement(x, config.flip.value, card["mean"], card["std"], flips)
            morf, lerf = flip_curves(model, x, maps, target, config.flip, value, flips)
            parts["sens"].append(sensitivity(explain, x, target, raw, sigma, config.draws, noise))
            if config.road:
                road_morf, road_lerf = flip_curves(model, x, maps, target, config.flip, None, road, config.road_noise)
                parts["road_morf"].append(road_morf.cpu())
                parts["road_lerf"].append(road_lerf.cpu())
            if config.class_sensitivity:
                parts["class_r"].append(class_sensitivity(explain, x, target, raw, classes, other).cpu())
            parts["maps"].append(maps.cpu())
            parts["morf"].append(morf.cpu())
            parts["lerf"].append(lerf.cpu())
            parts["gini"].append(gini(maps).cpu())
            if task is not None:
                progress.advance(task, len(x))
        joined = {k: torch.cat(v) for k, v in parts.items() if v}
        key = (str(method.preset), method.target_mode, float(method.top_k or 0))
        reference = fp32_maps.get(key) if method.dtype != "fp32" else None
        if method.kind == "lrp" and method.dtype == "fp32":
            fp32_maps[key] = joined["maps"]
        row = _row(method, joined, reference, inputs.video, time.perf_counter() - start)
        row.update(ms_per_image=round(1000 * explaining / n, 4),
                   cam_layer=layer if method.kind in CAM_METHODS else None)
        rows.append(row)
    return rows


def _cam_layer(model: nn.Module, probe: Tensor, name: str | None) -> str:
    """The CAM methods' layer (:func:`realtime_lrp.lrp.cam.cam_layer`); an unfit one is an EvaluationError."""
    from realtime_lrp.lrp.cam import CAMLayerError, cam_layer

    try:
        return cam_layer(model, probe, name)
    except CAMLayerError as exc:
        raise EvaluationError(str(exc)) from None


def _clock(device: torch.device) -> float:
    """``time.perf_counter()`` once the device's queued work is done (what a method's time per image needs)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def score_logits(model: nn.Module, x: Tensor) -> Tensor:
    """The model's fp32 logits for ``x``, without autograd."""
    with torch.inference_mode():
        return model(x).float()


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
        "method": method.name, "kind": method.kind, "preset": method.preset,
        "target_mode": method.target_mode if method.kind == "lrp" else None, "top_k": method.top_k,
        "dtype": method.dtype, "aopc_morf": _stat(morf, "mean"), "aopc_lerf": _stat(lerf, "mean"),
        "aopc_diff": _stat(morf - lerf, "mean"), "sensitivity_r": _stat(m["sens"], "mean"),
        "sensitivity_r_median": _stat(m["sens"], "median"), "sensitivity_r_min": _stat(m["sens"], "min"),
        "gini": _stat(m["gini"], "mean"),
        "r_vs_fp32": None if reference is None else _stat(pearson_rows(reference, m["maps"]), "median"),
        "frame_r": None if frame_r is None else _stat(frame_r, "mean"),
        "images": len(m["maps"]), "seconds": round(seconds, 2),
        "curve_morf": [round(float(v), 6) for v in m["morf"].mean(0)],
        "curve_lerf": [round(float(v), 6) for v in m["lerf"].mean(0)],
        **_road(m), "class_r": _stat(m["class_r"], "mean") if "class_r" in m else None,
    }


def _road(m: dict[str, Tensor]) -> dict[str, Any]:
    """The ROAD columns of a row (None where ROAD was not run)."""
    if "road_morf" not in m:
        return dict.fromkeys(("aopc_road_morf", "aopc_road_lerf", "aopc_road_diff", "curve_road_morf",
                              "curve_road_lerf"))
    morf, lerf = aopc(m["road_morf"]), aopc(m["road_lerf"])
    return {"aopc_road_morf": _stat(morf, "mean"), "aopc_road_lerf": _stat(lerf, "mean"),
            "aopc_road_diff": _stat(morf - lerf, "mean"),
            "curve_road_morf": [round(float(v), 6) for v in m["road_morf"].mean(0)],
            "curve_road_lerf": [round(float(v), 6) for v in m["road_lerf"].mean(0)]}


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
    from realtime_lrp.apps.bench import environment

    notice = notice or (lambda _msg: None)
    plan_methods(config.methods, config.top_ks, config.dtypes or ["fp32"], config.target_modes)
    if plot_path is not None and Path(plot_path).suffix.lower() != ".png":
        raise EvaluationError(f"--plot must be a .png file, got {Path(plot_path).name}")
    if config.smooth and source_kind(source, card)[0] != "video":
        raise EvaluationError(SMOOTH_NEEDS_VIDEO)
    dev = select_device(device)
    from realtime_lrp.models.sizes import check_input_size
    from realtime_lrp.pipeline.preprocess import processing_size

    try:  # a ViT or MaxViT at another size: one line naming the size it takes, before images are read
        check_input_size(model.float().eval(), dict(card), processing_size(card, size))
    except ValueError as exc:
        raise EvaluationError(str(exc)) from None
    if any(name in CAM_METHODS for name in config.methods):  # a bad --cam-layer is said before images are read
        probe = torch.zeros(1, int(card["input_channels"]), *processing_size(card, size))
        _cam_layer(model.float().eval(), probe, config.cam_layer)
    start = time.perf_counter()
    inputs = load_inputs(source, card, count, size, notice)
    if device.lower() == "auto" and dev.type == "cpu":
        notice("CUDA is not available: evaluating on the CPU")
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
