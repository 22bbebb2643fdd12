"""Options and helpers that several commands share: the model, the processing settings, codecs, outputs."""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, TypeVar

import click

from realtime_lrp.lrp.filter import DEFAULT_TOP_K
from realtime_lrp.lrp.presets import PRESET_CHOICES

if TYPE_CHECKING:
    from rich.console import Console

    from realtime_lrp.pipeline.processor import FrameProcessor


F = TypeVar("F", bound=Callable[..., Any])


class BadValue(click.ClickException):
    """An option value that cannot work here: one line (``Error: ...``) and exit 2, like a usage error."""

    exit_code = 2


def check_device(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """``--device``: auto, cpu, cuda or cuda:N; an explicit CUDA device that is not there is refused
    (``auto`` falls back to the CPU and says so)."""
    text = str(value).strip().lower()
    index = text.partition(":")[2]
    if text not in ("auto", "cpu", "cuda") and not (text.startswith("cuda:") and index.isdigit()):
        raise BadValue(f"--device {value}: use auto, cpu, cuda or cuda:N")
    if text.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise BadValue(f"--device {value}: CUDA is not available here (no NVIDIA GPU or driver, or a CPU-only"
                           " torch); use --device auto (falls back to the CPU) or --device cpu")
        if index and int(index) >= torch.cuda.device_count():
            raise BadValue(f"--device {value}: this machine has {torch.cuda.device_count()} CUDA device(s),"
                           f" cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    return text


def size_pair(text: str) -> list[int]:
    """``32`` → [32, 32]; ``64x48`` (width x height) → [48, 64]."""
    parts = text.lower().split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise click.BadParameter(f"{text!r} is not N or WxH") from None
    if len(values) not in (1, 2) or min(values) < 8:
        raise click.BadParameter(f"{text!r} is not N or WxH with sides of at least 8 pixels")
    return [values[0], values[0]] if len(values) == 1 else [values[1], values[0]]


def command_line(ctx: click.Context) -> str:
    """The command as the user gave it: ``rtlrp NAME`` plus the options set on the command line.

    Under torchrun it is prefixed with the launcher, so a model card records how to rerun it.
    """
    import os
    import shlex

    from click.core import ParameterSource

    words = ["rtlrp", str(ctx.info_name)]
    local_world = os.environ.get("LOCAL_WORLD_SIZE")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and local_world:
        words = ["torchrun", "--nproc_per_node", local_world, "-m", "realtime_lrp.cli", words[1]]
    for param in ctx.command.params:
        if ctx.get_parameter_source(param.name) is not ParameterSource.COMMANDLINE:
            continue
        value = ctx.params[param.name]
        if isinstance(param, click.Option) and param.is_flag:
            words.append(param.opts[0] if value else param.secondary_opts[0])
        elif isinstance(param, click.Option):
            words += [param.opts[0], str(value)]
        else:
            words.append(str(value))
    return shlex.join(words)


def check_cmap(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    from realtime_lrp.pipeline.render import get_colormap

    try:
        return get_colormap(value).name
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def check_size(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    from realtime_lrp.pipeline.preprocess import parse_size

    try:
        parse_size(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    return value


WEIGHTS_HELP = ("Model: auto (ImageNet VGG16 if cached or downloadable, else the shipped "
                "Fashion-MNIST model), imagenet[:ARCH] (torchvision's ImageNet weights for any train --arch, "
                "e.g. imagenet:resnet50; default vgg16), shipped, or a weight file (.pt).")


def weights_option(func):
    """Reusable ``--weights`` option (default ``auto``); pass its value to :func:`load_weights`."""
    return click.option("--weights", default="auto", show_default=True,
                        metavar="auto|imagenet[:ARCH]|shipped|PATH", help=WEIGHTS_HELP)(func)


def processing_options(func: F) -> F:
    """Options shared by ``video``, ``explain`` and ``webcam``: model, LRP method, rendering, device.

    The command receives them as keyword arguments ``weights, method, cam_layer, preset, top_k,
    target, size, fit, cmap, layout, alpha, legend, device, threads``; :func:`build_processor` sets the threads and
    hands the rest to ``FrameProcessor.from_options``.
    """
    options = [
        weights_option,
        click.option("--method", type=click.Choice(["lrp", "gradcam", "gradcam++", "layercam"]), default="lrp",
                     show_default=True,
                     help="What explains the frame: LRP (--preset, --top-k) or a class activation map (Grad-CAM,"
                          " Grad-CAM++, LayerCAM) of --cam-layer, through the same pipeline and overlay. CAM maps are"
                          " positive (fire colour map); on CUDA they run in fp16 but eagerly, without the CUDA"
                          " graph of LRP's pass (their backward pass is not checked capturable)."),
        click.option("--cam-layer", default=None, metavar="NAME",
                     help="The layer the CAM methods read (a module name with spatial output); default: the last"
                          " conv stage. A name that does not fit is one line listing the candidates."),
        click.option("--preset", type=click.Choice(PRESET_CHOICES), default="auto", show_default=True,
                     help="LRP rule preset (see rtlrp presets); auto: cp-lrp for transformers, else epsilon-plus-flat."),
        click.option("--top-k", type=click.FloatRange(0, 1), default=DEFAULT_TOP_K, show_default=True,
                     help="Fraction of relevance kept before each layer (filtered LRP); 0 turns the filter off."
                          " 0.05: the most faithful and steadiest filter under rtlrp evaluate (README)."),
        click.option("--target", default=None, metavar="CLASS",
                     help="Class to explain: top1 (default), softmax, a class index or a class name."),
        click.option("--size", default=None, metavar="N|WxH", callback=check_size,
                     help="Processing size the frame is fitted to; default: the model's input size."),
        click.option("--fit", type=click.Choice(["crop", "squash", "pad"]), default=None,
                     help="How a frame meets the processing size: centre crop to its aspect, squash the whole"
                          " frame, or pad it (letterbox); default: crop for ImageNet models, else squash."
                          " The map is shown over the region the model saw."),
        click.option("--cmap", default=None, metavar="NAME", callback=check_cmap,
                     help="Colour map: fire, signed, hot, diverging, or an OpenCV map (inferno, turbo, viridis,"
                          " jet, ...); default: fire for positive-only presets, signed for signed ones (both stay"
                          " visible on light and dark frames)."),
        click.option("--layout", type=click.Choice(["overlay", "side", "heatmap"]), default="overlay",
                     show_default=True, help="Map over the frame, frame and map side by side, or the map alone."),
        click.option("--alpha", type=click.FloatRange(0, 1), default=0.6, show_default=True,
                     help="Strength of the overlay."),
        click.option("--legend", is_flag=True, default=False,
                     help="Draw the colour scale's legend (what the colours mean) on every frame."),
        click.option("--device", default="auto", show_default=True, callback=check_device,
                     help="auto, cuda, cuda:N or cpu. CUDA runs in fp16; the CPU in fp32. auto falls back to the"
                          " CPU (and says so); an explicit cuda without CUDA is an error."),
        click.option("--threads", type=click.IntRange(min=1), default=None,
                     help="CPU threads for torch; default: all cores but two (at least one), which leaves"
                          " room for decoding and encoding."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def default_threads() -> int:
    """torch's CPU threads when not given: ``OMP_NUM_THREADS`` where it is set (a positive integer, as
    torch itself reads it), else all cores but two, at least one.

    On a 2-core machine torch's default of two threads stalls at its barriers whenever the
    decoder, the encoder or another process takes a core (measured: 6-13 frames/s against
    62-71 with one thread for the README demo).
    """
    given = os.environ.get("OMP_NUM_THREADS", "").strip()
    if given.isdigit() and int(given) > 0:
        return int(given)
    return max(1, (os.cpu_count() or 1) - 2)


def smooth_option(func: F) -> F:
    """``--smooth ALPHA`` for the streaming commands (video, webcam): a moving average of maps."""
    return click.option("--smooth", default=0.0, show_default=True, type=click.FloatRange(0, 1, max_open=True),
                        metavar="ALPHA", help="Exponential moving average of the maps over frames: weight ALPHA "
                                              "on the previous average, 1 - ALPHA on the new map; 0 turns it off.")(func)


def build_processor(options: dict[str, Any], console: Console) -> FrameProcessor:
    """A ``FrameProcessor`` from ``processing_options``; bad weights or options → one-line error."""
    import torch

    from realtime_lrp.models.errors import WeightsError
    from realtime_lrp.pipeline.processor import FrameProcessor

    options = dict(options)
    torch.set_num_threads(options.pop("threads", None) or default_threads())
    try:
        return FrameProcessor.from_options(notice=lambda msg: console.print(msg, style="yellow"), **options)
    except (WeightsError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None


def stderr_console() -> Console:
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)


def codec_options(func: F) -> F:
    """``--codec`` and ``--crf``, shared by ``video`` and ``webcam --record``."""
    func = click.option("--crf", type=click.IntRange(0), default=None,
                        help="Quality of h264/hevc (0-51) or vp9 (0-63); lower is better and larger;"
                             " default 23 / 28 / 33.")(func)
    return click.option("--codec", type=click.Choice(["h264", "hevc", "vp9", "mjpeg", "h264_nvenc"]), default=None,
                        help="Encoder; default by extension: .mp4/.mov/.m4v/.mkv h264, .webm vp9, .avi mjpeg"
                             " (keeps odd sizes). h264_nvenc falls back to h264 without an NVIDIA driver.")(func)


def check_output(out: Path, src: Path | None = None, codec: str | None = None, crf: int | None = None) -> None:
    """Refuse an output that cannot be written, or that is the input, before any work starts
    (a --crf out of the codec's range is exit 2)."""
    from realtime_lrp.media.writer import WriterError, resolve_codec
    from realtime_lrp.util.atomic import OutputError, check_writable, same_file

    try:
        chosen = resolve_codec(out, codec)
    except WriterError as exc:
        raise click.ClickException(str(exc)) from None
    check_codec_crf(chosen, crf)
    try:
        if src is not None and (same_file(out, src) or out.absolute() == src.absolute()):
            raise WriterError(f"--out {out} is the input file itself")
        check_writable(out)
    except (WriterError, OutputError) as exc:
        raise click.ClickException(str(exc)) from None


def check_codec_crf(codec: Any, crf: int | None) -> None:
    """``--crf`` within the range of ``codec`` (a writer ``Codec``), else one line and exit 2."""
    from realtime_lrp.media.writer import WriterError, check_crf

    try:
        check_crf(codec, crf)
    except WriterError as exc:
        raise BadValue(str(exc)) from None


def rank_and_world() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) when run alone."""
    return (int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")),
            int(os.environ.get("LOCAL_RANK", "0")))


def run_settings(options: dict[str, Any], codec: str | None, crf: int | None) -> str:
    """The settings an output was made with, as stored in its comment tag (a rerun compares them)."""
    import json

    from realtime_lrp import __version__

    weights = str(options["weights"])
    if Path(weights).is_file():
        from realtime_lrp.models.files import sha256_file

        weights = f"sha256:{sha256_file(Path(weights))}"
    keys = ("method", "cam_layer", "preset", "top_k", "target", "size", "cmap", "layout", "alpha", "smooth")
    return "rtlrp " + json.dumps({"version": __version__, "weights": weights, "codec": codec, "crf": crf,
                                  **{k: options.get(k) for k in keys}}, sort_keys=True)


def load_weights(weights: str, device: str = "cpu"):
    """``load_model`` for a command: notices on stderr, any weights problem as a one-line error."""
    from realtime_lrp.models.errors import WeightsError
    from realtime_lrp.models.loading import load_model

    try:
        return load_model(weights, device=device, notify=lambda msg: click.echo(msg, err=True))
    except WeightsError as exc:
        raise click.ClickException(str(exc)) from None


def comma_list(cast):
    """A click callback parsing ``a,b,c`` into a list of ``cast`` values."""
    def parse(ctx: click.Context, param: click.Parameter, value: str) -> list:
        try:
            values = [cast(v) for v in value.split(",") if v.strip()]
        except ValueError:
            raise click.BadParameter(f"{value!r} is not a comma-separated list") from None
        if not values:
            raise click.BadParameter("give at least one value")
        return values
    return parse
