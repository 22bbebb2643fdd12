"""``rtlrp bench``: how fast the engine is, against the floor, zennit, autoLRP and LXT, in one run.

For every combination of size, batch, top-k and preset one row is measured:

- ``engine_ms``: one LRP call on a preprocessed batch (in a CUDA graph on CUDA);
- ``floor_ms``: a forward pass plus the gradient of the top-1 logit with respect to the
  input, with autograd, the same dtype and memory format and the same graph mode — the
  least any backward-pass explanation can cost;
- ``zennit_ms``: zennit's equivalent composite, eager (its hooks cannot be captured), or
  None when zennit is missing, the preset has no zennit equivalent or zennit fails on the model;
- ``autolrp_ms``: autoLRP's nearest configuration (it rewrites nothing and has no flat rule:
  z+ on convolutions and epsilon on dense layers for ``epsilon-plus-flat``, z+ on both for
  ``zplus``), eager, or None where it is missing, has no equivalent or fails on the model;
- ``lxt_ms``: LXT 2.1's CP-LRP for torchvision's ViT (Gradient x Input under its own patches),
  eager, for ``cp-lrp`` on a ``VisionTransformer``; None otherwise or where LXT is missing;
- ``pass_ms``: the whole per-frame pass of :class:`realtime_lrp.pipeline.fast.FastProcessor`
  (upload, preprocess, LRP, colour map and blend, download) on frames of that size;
- ``peak_mem_mib``: the peak GPU memory of the engine call (None on the CPU).

Times are medians over ``repeats`` calls after ``warmup`` calls; CUDA times are taken
with synchronisation around each call. :func:`bench_video` times a video file's stages
alone (decode, processing, encode) and end to end through the real video pipeline.
"""
from __future__ import annotations

import contextlib
import copy
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from realtime_lrp.lrp.engine import IMAGENET_MEAN, IMAGENET_STD, LRP, pixel_bounds
from realtime_lrp.pipeline.fast import CapturedCall, FastProcessor, channels_last_weights

Notice = Callable[[str], None]

DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
ROW_KEYS: tuple[str, ...] = (
    "size", "batch", "dtype", "top_k", "preset", "device", "graph", "engine_ms", "floor_ms", "zennit_ms",
    "autolrp_ms", "pass_ms", "peak_mem_mib", "engine_fps", "engine_over_floor", "zennit_over_engine",
    "autolrp_over_engine", "lxt_ms", "lxt_over_engine",
)


def imagenet_card(size: int, classes: int = 1000) -> dict[str, Any]:
    """A model card for a randomly initialised ImageNet-shaped model."""
    return {"arch": "random", "classes": [f"class {i}" for i in range(classes)], "input_size": [size, size],
            "input_channels": 3, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "dataset": "none",
            "test_accuracy": None}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(calls: Mapping[str, Callable[[], Any]], device: torch.device, repeats: int,
            warmup: int) -> dict[str, float]:
    """Median wall time in milliseconds of each call, synchronising CUDA around every call.

    The calls are interleaved (one of each per round), so a change of load on a shared
    machine hits all of them alike and their ratios stay fair.
    """
    for _ in range(warmup):
        for fn in calls.values():
            fn()
    _sync(device)
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, fn in calls.items():
            start = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: 1000.0 * statistics.median(t) for name, t in times.items()}


def peak_memory_mib(make: Callable[[], Callable[[], Any]], device: torch.device) -> float | None:
    """Peak GPU memory (MiB) while building and running one call: model, rule weights, buffers
    and activations (None on the CPU)."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    call = make()
    call()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) / 2**20
    del call
    torch.cuda.empty_cache()
    return peak


def _layout(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if x.is_cuda else x


def floor_call(model: nn.Module, x: torch.Tensor, graph: bool, notice: Notice | None = None) -> CapturedCall:
    """The floor: forward plus the input gradient of the top-1 logit, as a :class:`CapturedCall`."""
    static = _layout(x.detach().clone()).requires_grad_(True)

    def floor(inp: torch.Tensor) -> torch.Tensor:
        logits = model(inp)
        top = logits.gather(1, logits.argmax(1, keepdim=True)).sum()
        return torch.autograd.grad(top, inp)[0]

    return CapturedCall(floor, [static], graph=graph, notice=notice, name="floor")


def engine_call(lrp: LRP, x: torch.Tensor, graph: bool, notice: Notice | None = None) -> CapturedCall:
    """One LRP call (top-1 target) on a static copy of ``x``, as a :class:`CapturedCall`."""
    return CapturedCall(lambda inp: lrp(inp).relevance, [_layout(x.clone())], graph=graph, notice=notice,
                        name="LRP call")


def zennit_call(model: nn.Module, preset: str, mean: Sequence[float] = IMAGENET_MEAN,
                std: Sequence[float] = IMAGENET_STD) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """zennit's composite for ``preset`` as ``x -> relevance (N, H, W)``, or None (not installed,
    or no equivalent). ``mean``/``std`` give epsilon-gamma-box's pixel bounds. The canonizer
    is zennit's ``ResNetCanonizer`` for torchvision ResNets (and ResNeXts, Wide-ResNets),
    none for a DenseNet (its batch norms come before their convs, which zennit's merge does not
    handle), its merge-batch-norm ``VGGCanonizer`` otherwise (zennit has no canonizer of its
    own for gates or LayerNorm). The caller enters the returned object's
    ``context()`` and sets ``modified`` to what it yields."""
    try:
        from torchvision.models.resnet import ResNet
        from zennit import composites
        from zennit.torchvision import ResNetCanonizer, VGGCanonizer
    except ImportError:
        return None
    from torchvision.models.densenet import DenseNet

    canonizers = [] if isinstance(model, DenseNet) else [ResNetCanonizer() if isinstance(model, ResNet)
                                                         else VGGCanonizer()]
    if preset == "epsilon-plus-flat":
        composite = composites.EpsilonPlusFlat(canonizers=canonizers)
    elif preset == "epsilon-gamma-box":
        param = next(model.parameters())
        low, high = (b.view(1, -1, 1, 1).to(param.device, param.dtype) for b in pixel_bounds(mean, std))
        composite = composites.EpsilonGammaBox(low=low, high=high, canonizers=canonizers)
    else:
        return None
    return _ZennitCall(copy.deepcopy(model), composite)


def autolrp_call(model: nn.Module, preset: str) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """autoLRP's nearest configuration for ``preset`` as ``x -> relevance (N, H, W)`` of the top-1
    logit, one sample per call as autoLRP explains them, or None (not installed, or no
    equivalent: it cannot address the first layer, so there is no epsilon-gamma-box)."""
    try:
        import autolrp
    except ImportError:
        return None
    if preset == "epsilon-plus-flat":
        config = autolrp.LRPConfig.composite()
    elif preset == "zplus":
        config = autolrp.LRPConfig(rule={**autolrp.BASE, **autolrp.on(
            ("ConvolutionBackward", "AddmmBackward", "MmBackward"), "zplus")})
    else:
        return None

    def one(x: torch.Tensor) -> torch.Tensor:
        wrapped = autolrp.tensor(x)
        out = model(wrapped)
        out[0, out[0].argmax()].lrp(config=config)
        return wrapped.relevance.sum(1)

    def call(x: torch.Tensor) -> torch.Tensor:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # it announces every in-place op it runs out of place
            # One scalar per call: a summed batch would share one unit seed among its samples.
            return torch.cat([one(x[i:i + 1]) for i in range(len(x))])

    return call


def _lxt_recipe() -> dict | None:
    """LXT 2.1's ``cp_LRP`` patch map for torchvision's ViT, from its own file, or None without LXT.
    ``lxt.efficient`` imports its model map, which imports ``transformers`` (not a dependency): a
    stub ``lxt.efficient.models`` goes into ``sys.modules`` first, and the ViT recipe is loaded by path."""
    import importlib.util
    import sys
    import types

    if importlib.util.find_spec("lxt") is None:
        return None
    if "lxt.efficient.models" not in sys.modules:
        stub = types.ModuleType("lxt.efficient.models")
        stub.get_default_map = lambda module: {}
        sys.modules["lxt.efficient.models"] = stub
    try:
        import lxt.efficient.patches as patches

        path = Path(patches.__file__).parent / "models" / "vit_torch.py"
        spec = importlib.util.spec_from_file_location("lxt_vit_torch", path)
        recipe = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(recipe)
        return dict(recipe.cp_LRP)
    except Exception:  # another LXT version, laid out otherwise
        return None


@contextlib.contextmanager
def _patched(patch_map: Mapping[type, Callable[[type], Any]]) -> Any:
    """An LXT patch map applied to its classes, which are as before afterwards (LXT patches classes
    for the whole process: the other calls of a row must run unpatched)."""
    names = ("forward", "original_forward")
    saved = {cls: {k: cls.__dict__[k] for k in names if k in cls.__dict__} for cls in patch_map}
    try:
        for cls, patch in patch_map.items():
            patch(cls)
        yield
    finally:
        for cls, kept in saved.items():
            for k in names:
                if k in kept:
                    setattr(cls, k, kept[k])
                elif k in cls.__dict__:
                    delattr(cls, k)


def lxt_call(model: nn.Module, preset: str) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """LXT 2.1's CP-LRP for ``preset`` ``cp-lrp`` on a torchvision ``VisionTransformer``, as
    ``x -> relevance (N, H, W)`` of each sample's top-1 logit: Gradient x Input under LXT's patches
    (its ``vit_torch.cp_LRP``; LRP-0 on conv and Linear, where the engine's preset has epsilon 1e-6:
    the same cost), applied for the call and undone after. None otherwise (LXT has no Swin, no MaxViT)."""
    from torchvision.models.vision_transformer import VisionTransformer

    if preset != "cp-lrp" or not isinstance(model, VisionTransformer):
        return None
    recipe = _lxt_recipe()
    if recipe is None:
        return None

    def call(x: torch.Tensor) -> torch.Tensor:
        x = x.detach().requires_grad_(True)
        with _patched(recipe), torch.enable_grad():
            out = model(x)
            (grad,) = torch.autograd.grad(out.gather(1, out.argmax(1, keepdim=True)).sum(), x)
        return (x * grad).detach().sum(1)

    return call


def _runs(name: str, fn: Callable[[], Any], notice: Notice | None) -> bool:
    """Whether a reference library's call runs on this model; if not, say why once."""
    try:
        fn()
        return True
    except Exception as exc:  # a library that cannot explain a model raises anything
        if notice is not None:
            detail = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else ""
            notice(f"{name} cannot explain this model, its column stays empty: {type(exc).__name__}: {detail}")
        return False


class _ZennitCall:
    """zennit's attribution of the top-1 logit (``logit * one_hot``), the engine's default target."""

    def __init__(self, model: nn.Module, composite: Any) -> None:
        self.model = model
        self.composite = composite
        self.modified: nn.Module | None = None

    def context(self) -> Any:
        return self.composite.context(self.model)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.detach().requires_grad_(True)
        out = self.modified(x)
        target = out.argmax(1, keepdim=True)
        grad_output = torch.zeros_like(out).scatter_(1, target, out.gather(1, target))
        (attribution,) = torch.autograd.grad(out, x, grad_output)
        return attribution.sum(1)


@dataclass
class BenchConfig:
    """What to measure: one row per size x batch x top-k x preset."""

    sizes: Sequence[int] = (224,)
    batches: Sequence[int] = (1,)
    top_ks: Sequence[float] = (0.0, 0.02)
    presets: Sequence[str] = ("epsilon-plus-flat",)
    device: str = "cpu"
    dtype: str | None = None
    graph: bool | None = None
    repeats: int | None = None
    warmup: int | None = None
    zennit: bool = True
    frame_pass: bool = True
    select: str = "auto"
    autolrp: bool = True
    lxt: bool = True

    def resolved(self) -> tuple[torch.device, torch.dtype, bool, int, int]:
        """(device, dtype, graph, repeats, warmup) with defaults per device: fp16, graphs and
        50 repeats on CUDA; fp32, eager and 5 repeats on the CPU."""
        device = torch.device(self.device)
        cuda = device.type == "cuda"
        dtype = DTYPES[self.dtype] if self.dtype else (torch.float16 if cuda else torch.float32)
        graph = cuda if self.graph is None else (self.graph and cuda)
        repeats = self.repeats or (50 if cuda else 5)
        warmup = self.warmup if self.warmup is not None else (10 if cuda else 1)
        return device, dtype, graph, repeats, warmup


def _dtype_name(dtype: torch.dtype) -> str:
    return next(name for name, d in DTYPES.items() if d == dtype)


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b <= 0 else a / b


class InputSizeError(ValueError):
    """A size of the bench the model does not take (one line naming what it takes)."""


def bench_model(model: nn.Module, card: Mapping[str, Any], config: BenchConfig,
                notice: Notice | None = None, on_row: Callable[[dict], None] | None = None) -> list[dict]:
    """Measure every row of ``config`` for ``model``; a size the model does not take raises
    :class:`InputSizeError` before anything is timed. The floor and the libraries run on a copy moved to
    the device and dtype; the engine is built from ``model``'s own weights, as the pipeline builds it
    (canonised in fp32 where they are, then cast and moved)."""
    from realtime_lrp.models.sizes import check_input_size

    for size in config.sizes:
        try:
            named = dict(card, arch=type(model).__name__) if card.get("arch") == "random" else dict(card)
            check_input_size(model, named, (size, size))
        except ValueError as exc:
            raise InputSizeError(str(exc)) from None
    device, dtype, graph, repeats, warmup = config.resolved()
    source, param = model.eval(), next(model.parameters())
    model = (model if (param.device, param.dtype) == (device, dtype) else copy.deepcopy(model)).to(device, dtype)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    channels = int(card["input_channels"])
    pipeline_dtype = torch.float16 if device.type == "cuda" else torch.float32
    rows = []
    for preset in config.presets:
        zennit = zennit_call(model, preset, card["mean"], card["std"]) if config.zennit else None
        autolrp = autolrp_call(model, preset) if config.autolrp else None
        lxt = lxt_call(model, preset) if config.lxt else None
        for size in config.sizes:
            for batch in config.batches:
                generator = torch.Generator().manual_seed(size * 1000 + batch)
                x = torch.randn(batch, channels, size, size, generator=generator).to(device, dtype)
                engines = {}
                for top_k in config.top_ks:
                    lrp = LRP(source, preset=preset, top_k=top_k, mean=card["mean"], std=card["std"], dtype=dtype,
                              device=device)
                    lrp.filter.method = config.select
                    if device.type == "cuda":
                        channels_last_weights(lrp)
                    engines[top_k] = lrp
                peaks = {k: peak_memory_mib(lambda: engine_call(lrp, x, graph), device) for k, lrp in engines.items()}
                calls: dict[str, Callable[[], Any]] = {"floor": floor_call(model, x, graph, notice)}
                for top_k, lrp in engines.items():
                    calls[f"engine {top_k}"] = engine_call(lrp, x, graph, notice)
                    if config.frame_pass and dtype == pipeline_dtype:
                        calls[f"pass {top_k}"] = _frame_pass(source, card, preset, top_k, size, batch, device,
                                                             graph, notice)
                if autolrp is not None and _runs("autoLRP", lambda: autolrp(x), notice):
                    calls["autolrp"] = lambda: autolrp(x)
                if lxt is not None and _runs("LXT", lambda: lxt(x), notice):
                    calls["lxt"] = lambda: lxt(x)
                with contextlib.ExitStack() as stack:
                    def enter_and_call() -> Any:  # canonizing can fail as well as the call
                        zennit.modified = stack.enter_context(zennit.context())
                        return zennit(x)

                    if zennit is not None and _runs("zennit", enter_and_call, notice):
                        calls["zennit"] = lambda: zennit(x)
                    ms = time_ms(calls, device, repeats, warmup)
                for top_k in config.top_ks:
                    engine_ms = ms[f"engine {top_k}"]
                    row = {
                        "size": size, "batch": batch, "dtype": _dtype_name(dtype), "top_k": top_k,
                        "preset": preset, "device": str(device), "graph": graph, "engine_ms": engine_ms,
                        "floor_ms": ms["floor"], "zennit_ms": ms.get("zennit"), "autolrp_ms": ms.get("autolrp"),
                        "pass_ms": ms.get(f"pass {top_k}"), "peak_mem_mib": peaks[top_k],
                        "engine_fps": 1000.0 * batch / engine_ms,
                        "engine_over_floor": _ratio(engine_ms, ms["floor"]),
                        "zennit_over_engine": _ratio(ms.get("zennit"), engine_ms),
                        "autolrp_over_engine": _ratio(ms.get("autolrp"), engine_ms),
                        "lxt_ms": ms.get("lxt"), "lxt_over_engine": _ratio(ms.get("lxt"), engine_ms),
                    }
                    rows.append(row)
                    if on_row is not None:
                        on_row(row)
    return rows


def _frame_pass(model: nn.Module, card: Mapping[str, Any], preset: str, top_k: float, size: int, batch: int,
                device: torch.device, graph: bool, notice: Notice | None) -> Callable[[], Any]:
    """The fast path's whole pass on ``batch`` random BGR frames of ``size``, ready to call
    (only in the dtype the frame pipeline uses: fp16 on CUDA, fp32 on the CPU)."""
    from realtime_lrp.pipeline.processor import FrameProcessor

    card = dict(card, input_size=[size, size])
    processor = FrameProcessor(model, card, preset=preset, top_k=top_k, device=device.type)
    fast = FastProcessor(processor, graph=graph, notice=notice)
    rng = np.random.default_rng(size + batch)
    frames = [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(batch)]
    fast.process(frames)
    return lambda: fast.process(frames)


@dataclass
class VideoBench:
    """Frames per second of each stage alone and of the whole pipeline (overlapped)."""

    frames: int
    size: tuple[int, int]
    decode_fps: float
    process_fps: float
    encode_fps: float
    end_to_end_fps: float
    processor: str

    @property
    def slowest_stage(self) -> str:
        rates = {"decode": self.decode_fps, "process": self.process_fps, "encode": self.encode_fps}
        return min(rates, key=rates.get)

    @property
    def overlap(self) -> float:
        """End-to-end rate over the slowest stage's rate (1.0 = perfect overlap)."""
        return self.end_to_end_fps / min(self.decode_fps, self.process_fps, self.encode_fps)

    def as_dict(self) -> dict[str, Any]:
        return {"frames": self.frames, "width": self.size[0], "height": self.size[1],
                "decode_fps": self.decode_fps, "process_fps": self.process_fps, "encode_fps": self.encode_fps,
                "end_to_end_fps": self.end_to_end_fps, "slowest_stage": self.slowest_stage,
                "overlap": self.overlap, "processor": self.processor}


def _decode(path: Path, keep: int) -> tuple[int, float, list[np.ndarray]]:
    """Decode the whole file: (frames, seconds, the first ``keep`` frames)."""
    from realtime_lrp.media.reader import VideoReader

    kept: list[np.ndarray] = []
    count = 0
    with VideoReader(path) as reader:
        start = time.perf_counter()
        for frame in reader.frames():
            count += 1
            if len(kept) < keep:
                kept.append(frame.image)
        return count, time.perf_counter() - start, kept


def bench_video(path: str | Path, processor: Any, batch: int = 1, keep: int = 120,
                notice: Notice | None = None) -> VideoBench:
    """Time decode, processing and encode of ``path`` alone, then the real pipeline end to end.

    Decode reads the whole file; processing and encode run on its first ``keep`` frames
    (held in memory, so they time the stage, not the disk); end to end is
    :func:`realtime_lrp.apps.video.process_video` on the whole file into a temporary H.264 .mp4.
    ``processor`` is a ``FrameProcessor`` or a ``FastProcessor``.
    """
    from realtime_lrp.apps.video import process_video
    from realtime_lrp.media.reader import VideoReader
    from realtime_lrp.media.writer import VideoWriter

    with VideoReader(path) as reader:
        info = reader.info
    count, seconds, frames = _decode(Path(path), keep)
    decode_fps = count / seconds if seconds > 0 else float("inf")
    device = getattr(processor, "device", torch.device("cpu"))
    processor.process(frames[:batch])  # build (and capture) the pass before timing
    _sync(device)
    rendered: list[np.ndarray] = []
    start = time.perf_counter()
    for i in range(0, len(frames), batch):
        out, _ = processor.process(frames[i:i + batch])
        rendered += out
    _sync(device)
    process_fps = len(frames) / (time.perf_counter() - start)
    with tempfile.TemporaryDirectory() as tmp:
        out_size = (rendered[0].shape[1], rendered[0].shape[0])
        start = time.perf_counter()
        with VideoWriter(Path(tmp) / "encode.mp4", info.rate, out_size) as writer:
            for frame in rendered:
                writer.write(frame)
        encode_fps = len(rendered) / (time.perf_counter() - start)
        processor.reset()
        result = process_video(path, Path(tmp) / "pipeline.mp4", processor, batch=batch, notice=notice)
    end_to_end_fps = result.frames / result.seconds
    return VideoBench(result.frames, info.size, decode_fps, process_fps, encode_fps, end_to_end_fps,
                      type(processor).__name__)


def _fmt(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _ms(value: float | None) -> str:
    """Milliseconds in at most 7 characters (one decimal from 100 ms, none from 10 s)."""
    if value is None:
        return "—"
    return f"{value:.2f}" if value < 100 else f"{value:.1f}" if value < 10_000 else f"{value:.0f}"


def rows_table(rows: Iterable[Mapping[str, Any]], title: str = "rtlrp bench") -> Any:
    """The bench rows as rich tables that fit 80 columns: one per preset and dtype, times in
    ms, the engine over the floor, and (with ``--json``) everything else.

    ``pass`` is the whole frame pass; a table with LXT times shows them in zennit's place (zennit has
    no transformer preset). The engine's frames/s and the ratios to zennit, autoLRP and LXT follow from these columns and are left to the JSON rows; peak memory is shown
    where it was measured (CUDA).
    """
    from rich import box
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    rows = list(rows)
    groups: dict[tuple[str, str, str], list[Mapping[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["preset"], r["dtype"], r["device"]), []).append(r)
    tables: list[Any] = [Text(title, style="bold")]
    for (preset, dtype, device), members in groups.items():
        peak = any(r["peak_mem_mib"] is not None for r in members)
        lxt = any(r.get("lxt_ms") is not None for r in members)
        table = Table(title=f"{preset}, {dtype}, {device}: times in ms", title_justify="left",
                      box=box.SIMPLE_HEAD, padding=(0, 1), collapse_padding=True, pad_edge=False)
        names = ["size", "N", "top-k", "LRP", "floor", "LRP/floor", "LXT" if lxt else "zennit", "autoLRP", "pass"]
        for name in names + (["peak MiB"] if peak else []):
            table.add_column(name, justify="right")
        for r in members:
            cells = [str(r["size"]), str(r["batch"]), f"{r['top_k']:g}", _ms(r["engine_ms"]), _ms(r["floor_ms"]),
                     _fmt(r["engine_over_floor"]), _ms(r.get("lxt_ms") if lxt else r["zennit_ms"]),
                     _ms(r.get("autolrp_ms")), _ms(r["pass_ms"])]
            table.add_row(*cells, *([_fmt(r["peak_mem_mib"], 0)] if peak else []))
        tables.append(table)
    return Group(*tables)


def video_table(result: VideoBench) -> Any:
    """A rich table of the video stages and the end-to-end rate."""
    from rich.table import Table

    w, h = result.size
    table = Table(title=f"rtlrp bench --video ({w}x{h}, {result.frames} frames)",
                  caption=f"processing: {result.processor}")
    table.add_column("stage")
    table.add_column("FPS", justify="right")
    for name, fps in (("decode alone", result.decode_fps), ("process alone", result.process_fps),
                      ("encode alone", result.encode_fps), ("end to end", result.end_to_end_fps)):
        table.add_row(name, f"{fps:.1f}" if fps >= 10 else f"{fps:.2f}")
    table.add_row(f"end to end / slowest ({result.slowest_stage})", f"{result.overlap:.2f}")
    return table


def environment() -> dict[str, Any]:
    """Where the numbers came from: date, torch version, device names."""
    import platform
    from datetime import datetime, timezone

    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }
