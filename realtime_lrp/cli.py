"""The ``rtlrp`` command line: it parses options and reports; each command's work lives in its module.

Each command imports torch, OpenCV and the engine inside its body, so ``rtlrp --help``
and ``rtlrp --version`` stay fast. :func:`main` is the one top-level handler: signals
end a run with 130 / 143 / 129, and anything a command did not turn into a clear error
becomes one line naming what failed (``--debug`` or ``RTLRP_DEBUG=1`` shows the traceback).

Exit codes: 0 done, 1 error, 2 usage error, 3 done but the input ended before the frames
it announced, 128 + N stopped by signal N (130 Ctrl-C, 143 SIGTERM, 129 SIGHUP).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, TypeVar

import click

from realtime_lrp.presets import PRESET_NAMES

if TYPE_CHECKING:
    from rich.console import Console

    from realtime_lrp.processor import FrameProcessor

F = TypeVar("F", bound=Callable[..., Any])


_debug = {"on": os.environ.get("RTLRP_DEBUG", "") not in ("", "0")}


def _set_debug(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    _debug["on"] = _debug["on"] or value


@click.group(context_settings={"help_option_names": ["-h", "--help"]},
             epilog="Exit codes: 0 done, 1 error, 2 usage error, 3 done but the input video was truncated,"
                    " 130/143/129 stopped by SIGINT/SIGTERM/SIGHUP.")
@click.version_option(package_name="realtime-lrp", prog_name="rtlrp")
@click.option("--debug", is_flag=True, expose_value=False, is_eager=True, callback=_set_debug,
              help="Show the full traceback of an unexpected error (also RTLRP_DEBUG=1).")
def cli() -> None:
    """Real-time LRP heatmaps for CNN image classifiers (VGG, ResNet, ResNeXt, Wide-ResNet, AlexNet)."""


@cli.command("presets")
def presets_command() -> None:
    """List the LRP rule presets and their zennit equivalents."""
    from realtime_lrp.presets import PRESETS

    for name in PRESET_NAMES:
        preset = PRESETS[name]
        click.echo(f"{name:20s} {preset.description}  [{preset.reference}]")


def _size(text: str) -> list[int]:
    """``32`` → [32, 32]; ``64x48`` (width x height) → [48, 64]."""
    parts = text.lower().split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise click.BadParameter(f"{text!r} is not N or WxH") from None
    if len(values) not in (1, 2) or min(values) < 8:
        raise click.BadParameter(f"{text!r} is not N or WxH with sides of at least 8 pixels")
    return [values[0], values[0]] if len(values) == 1 else [values[1], values[0]]


def _command_line(ctx: click.Context) -> str:
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


# realtime_lrp.models.ENGINE_ARCHS, spelled out so that --help does not import torch (a test checks they agree).
TRAIN_ARCHS = ("vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn",
               "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d",
               "resnext101_32x8d", "resnext101_64x4d", "wide_resnet50_2", "wide_resnet101_2", "alexnet")


@cli.command("train")
@click.option("--arch", default="vgg11_bn", show_default=True, type=click.Choice(TRAIN_ARCHS),
              help="torchvision architecture: a VGG, ResNet, ResNeXt, Wide-ResNet or AlexNet.")
@click.option("--dataset", default="fashion-mnist", show_default=True,
              help="fashion-mnist, cifar10 or imagefolder:PATH (PATH/train and PATH/val).")
@click.option("--epochs", default=12, show_default=True, type=click.IntRange(min=1))
@click.option("--batch-size", default=128, show_default=True, type=click.IntRange(min=2),
              help="Per process.")
@click.option("--lr", default=0.1, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Peak learning rate of the one-cycle schedule (SGD, Nesterov momentum).")
@click.option("--weight-decay", default=5e-4, show_default=True, type=click.FloatRange(min=0))
@click.option("--label-smoothing", default=0.0, show_default=True,
              type=click.FloatRange(0, 1, max_open=True))
@click.option("--width", default=None, type=click.FloatRange(min=0, min_open=True),
              help="Scale of the conv channel counts (VGGs and ResNets); default 0.25 for a VGG, "
                   "1 (torchvision's) for a ResNet.")
@click.option("--hidden", default=256, show_default=True, type=click.IntRange(min=1),
              help="VGG: width of the two hidden Linear layers (torchvision: 4096).")
@click.option("--pool", default=1, show_default=True, type=click.IntRange(min=1),
              help="VGG: output size of the adaptive average pool (torchvision: 7).")
@click.option("--dropout", default=0.5, show_default=True, type=click.FloatRange(0, 1, max_open=True),
              help="VGG, AlexNet: dropout of the two hidden Linear layers (training only).")
@click.option("--small-input/--no-small-input", default=None,
              help="ResNet: CIFAR-style stem (3x3 stride-1 first conv, no max-pool); default on for "
                   "inputs of at most 64 pixels.")
@click.option("--input-size", default=None, metavar="N|WxH",
              help="Training resolution; default 32 (fashion-mnist, cifar10) or 224.")
@click.option("--augment/--no-augment", default=True, show_default=True,
              help="Random crop with padding and horizontal flip.")
@click.option("--amp", is_flag=True, help="Mixed precision: fp16 + GradScaler on CUDA, bf16 on CPU.")
@click.option("--amp-dtype", type=click.Choice(["fp16", "bf16"]), default=None,
              help="Autocast dtype (implies --amp).")
@click.option("--out", default="runs/train", show_default=True,
              type=click.Path(file_okay=False, path_type=Path), help="Run directory.")
@click.option("--resume", type=click.Path(exists=True, path_type=Path), default=None,
              help="Checkpoint file or run directory to continue from.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--max-steps", default=None, type=click.IntRange(min=1),
              help="Stop after this many optimizer steps in total (quick runs).")
@click.option("--workers", default=2, show_default=True, type=click.IntRange(min=0),
              help="Data-loading processes for imagefolder data.")
@click.pass_context
def train_command(ctx: click.Context, **options: object) -> None:
    """Train a VGG, ResNet or AlexNet (mixed precision with --amp; DDP under torchrun)."""
    from realtime_lrp.data import DataError
    from realtime_lrp.models import WeightsError
    from realtime_lrp.training import TrainConfig, TrainingError, TrainingInterrupted, main

    size = options.pop("input_size")
    options["input_size"] = _size(size) if size else (
        [224, 224] if str(options["dataset"]).startswith("imagefolder:") else [32, 32])
    options["out"] = str(options["out"])
    options["resume"] = str(options["resume"]) if options["resume"] else None
    config = TrainConfig(**options, command=_command_line(ctx))
    explicit = [p.name for p in ctx.command.params
                if ctx.get_parameter_source(p.name) is click.core.ParameterSource.COMMANDLINE]
    try:
        main(config, explicit)
    except TrainingInterrupted as exc:
        click.echo(str(exc), err=True)
        sys.exit(128 + exc.signum)
    except (TrainingError, DataError, WeightsError) as exc:
        raise click.ClickException(str(exc)) from None


def _check_cmap(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    from realtime_lrp.render import get_colormap

    try:
        return get_colormap(value).name
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _check_size(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    from realtime_lrp.preprocess import parse_size

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

    The command receives them as keyword arguments ``weights, preset, top_k, target, size,
    cmap, layout, alpha, device, threads``; :func:`build_processor` sets the threads and
    hands the rest to ``FrameProcessor.from_options``.
    """
    options = [
        weights_option,
        click.option("--preset", type=click.Choice(PRESET_NAMES), default="epsilon-plus-flat",
                     show_default=True, help="LRP rule preset (see rtlrp presets)."),
        click.option("--top-k", type=click.FloatRange(0, 1), default=0.02, show_default=True,
                     help="Fraction of relevance kept before each layer (filtered LRP); 0 turns the filter off."),
        click.option("--target", default=None, metavar="CLASS",
                     help="Class to explain: top1 (default), softmax, a class index or a class name."),
        click.option("--size", default=None, metavar="N|WxH", callback=_check_size,
                     help="Processing size the whole frame is resized to; default: the model's input size."),
        click.option("--cmap", default=None, metavar="NAME", callback=_check_cmap,
                     help="Colour map: hot, diverging, or an OpenCV map (inferno, turbo, viridis, jet, ...);"
                          " default: hot for positive-only presets, diverging for signed ones."),
        click.option("--layout", type=click.Choice(["overlay", "side", "heatmap"]), default="overlay",
                     show_default=True, help="Map over the frame, frame and map side by side, or the map alone."),
        click.option("--alpha", type=click.FloatRange(0, 1), default=0.6, show_default=True,
                     help="Strength of the overlay."),
        click.option("--device", default="auto", show_default=True,
                     help="auto, cuda, cuda:N or cpu. CUDA runs in fp16; the CPU in fp32."),
        click.option("--threads", type=click.IntRange(min=1), default=None,
                     help="CPU threads for torch; default: all cores but two (at least one), which leaves"
                          " room for decoding and encoding."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def default_threads() -> int:
    """torch's CPU threads when not given: all cores but two, at least one.

    On a 2-core machine torch's default of two threads stalls at its barriers whenever the
    decoder, the encoder or another process takes a core (measured: 6-13 frames/s against
    62-71 with one thread for the README demo).
    """
    return max(1, (os.cpu_count() or 1) - 2)


def smooth_option(func: F) -> F:
    """``--smooth ALPHA`` for the streaming commands (video, webcam): a moving average of maps."""
    return click.option("--smooth", default=0.0, show_default=True, type=click.FloatRange(0, 1, max_open=True),
                        metavar="ALPHA", help="Exponential moving average of the maps over frames: weight ALPHA "
                                              "on the previous average, 1 - ALPHA on the new map; 0 turns it off.")(func)


def build_processor(options: dict[str, Any], console: Console) -> FrameProcessor:
    """A ``FrameProcessor`` from ``processing_options``; bad weights or options → one-line error."""
    import torch

    from realtime_lrp.models import WeightsError
    from realtime_lrp.processor import FrameProcessor

    options = dict(options)
    torch.set_num_threads(options.pop("threads", None) or default_threads())
    try:
        return FrameProcessor.from_options(notice=lambda msg: console.print(msg, style="yellow"), **options)
    except (WeightsError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None


def _console() -> Console:
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)


def codec_options(func: F) -> F:
    """``--codec`` and ``--crf``, shared by ``video`` and ``webcam --record``."""
    func = click.option("--crf", type=click.IntRange(0, 63), default=None,
                        help="Quality of h264/hevc/vp9 (lower is better and larger); default 23 / 28 / 33.")(func)
    return click.option("--codec", type=click.Choice(["h264", "hevc", "vp9", "mjpeg", "h264_nvenc"]), default=None,
                        help="Encoder; default by extension: .mp4/.mov/.m4v/.mkv h264, .webm vp9, .avi mjpeg"
                             " (keeps odd sizes). h264_nvenc falls back to h264 without an NVIDIA driver.")(func)


def check_output(out: Path, src: Path | None = None, codec: str | None = None) -> None:
    """Refuse an output that cannot be written, or that is the input, before any work starts."""
    from realtime_lrp.atomic import OutputError, check_writable, same_file
    from realtime_lrp.writer import WriterError, codec_for

    try:
        codec_for(out, codec)
        if src is not None and (same_file(out, src) or out.absolute() == src.absolute()):
            raise WriterError(f"--out {out} is the input file itself")
        check_writable(out)
    except (WriterError, OutputError) as exc:
        raise click.ClickException(str(exc)) from None


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
        from realtime_lrp.models import sha256_file

        weights = f"sha256:{sha256_file(Path(weights))}"
    keys = ("preset", "top_k", "target", "size", "cmap", "layout", "alpha", "smooth")
    return "rtlrp " + json.dumps({"version": __version__, "weights": weights, "codec": codec, "crf": crf,
                                  **{k: options.get(k) for k in keys}}, sort_keys=True)


@cli.command("video")
@click.argument("sources", metavar="IN...", nargs=-1, required=True,
                type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Output video for one IN (.mp4 by default H.264; see --codec). It appears only when complete.")
@click.option("--out-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Explain every IN into DIR/STEM_lrp.mp4; outputs already there with the same settings are"
                   " skipped, so a rerun resumes. Under torchrun each process takes its share on its own GPU.")
@click.option("--batch", default=1, show_default=True, type=click.IntRange(1, 1024),
              help="Frames explained together (throughput on a GPU).")
@codec_options
@processing_options
@smooth_option
def video_command(sources: tuple[Path, ...], out: Path | None, out_dir: Path | None, batch: int,
                  codec: str | None, crf: int | None, **options: object) -> None:
    """Explain every frame of video IN into --out (or each IN into --out-dir), keeping timestamps, sound and size."""
    from realtime_lrp import signals
    from realtime_lrp.processor import ProcessingError
    from realtime_lrp.reader import InputError, VideoReader
    from realtime_lrp.video import PartialOutput, process_video, video_progress
    from realtime_lrp.writer import WriterError

    if (out is None) == (out_dir is None):
        raise click.UsageError("give either --out FILE (one input) or --out-dir DIR (any number of inputs)")
    if out is not None and len(sources) > 1:
        raise click.UsageError(f"--out takes one input, got {len(sources)}: use --out-dir DIR for several")
    console = _console()
    notice = lambda msg: console.print(msg, style="yellow")  # noqa: E731
    rank, world, local_rank = rank_and_world()
    if world > 1 and str(options["device"]) in ("auto", "cuda"):
        import torch

        if torch.cuda.is_available():
            options["device"] = f"cuda:{local_rank}"
    if out_dir is not None:
        return _video_many(list(sources), out_dir, batch, codec, crf, options, console, rank, world)
    src = sources[0]
    check_output(out, src, codec)
    try:
        VideoReader(src).close()
    except InputError as exc:
        raise click.ClickException(str(exc)) from None
    processor = _video_processor(options, console)
    with signals.Deferred() as stop:
        try:
            with video_progress(console) as progress:
                result = process_video(src, out, processor, batch=batch, progress=progress, notice=notice,
                                       stop=stop, codec=codec, crf=crf, settings=run_settings(options, codec, crf))
        except (InputError, WriterError, ProcessingError, PartialOutput) as exc:
            raise click.ClickException(str(exc)) from None
    w, h = result.size
    if result.interrupted:
        name = signals.Interrupted(result.signum).name
        if result.output is not None:
            console.print(f"Interrupted by {name}: the {result.frames} frames done are in {result.output}"
                          f" (closed and playable); {out} was left as it was.")
        else:
            console.print(f"Interrupted by {name} before the first frame: nothing written.")
        sys.exit(128 + result.signum)
    speed = result.frames / result.seconds if result.seconds > 0 else 0.0
    console.print(f"Wrote {result.frames} frames ({w}x{h}, {result.fps:.3f} fps), checked by reading them back,"
                  f" to {out} in {result.seconds:.1f} s ({speed:.1f} frames/s)")
    if result.missing:
        console.print(f"{src} ended after {result.frames} of the {result.expected} frames its header announces"
                      f" ({result.missing} missing{': ' + result.input_error if result.input_error else ''}):"
                      f" {out} holds the {result.frames} frames it had.", style="yellow")
        sys.exit(signals.EXIT_TRUNCATED)


def _video_processor(options: dict[str, Any], console: Console) -> Any:
    """The processor for ``rtlrp video``: the captured fast path on CUDA, the plain one elsewhere."""
    processor = build_processor(options, console)
    if processor.device.type == "cuda":
        from realtime_lrp.fast import FastProcessor

        processor = FastProcessor(processor, notice=lambda msg: console.print(msg, style="yellow"))
    return processor


def _video_many(sources: list[Path], out_dir: Path, batch: int, codec: str | None, crf: int | None,
                options: dict[str, Any], console: Console, rank: int, world: int) -> None:
    """``rtlrp video IN... --out-dir DIR``: this process's share, then one summary on rank 0."""
    from rich.console import Console as Output
    from rich.table import Table

    from realtime_lrp import signals
    from realtime_lrp.atomic import OutputError, check_writable
    from realtime_lrp.video import gather, output_for, process_videos, video_progress

    names = [output_for(src, out_dir, codec) for src in sources]
    clash = next((n for n in names if names.count(n) > 1), None)
    if clash is not None:
        raise click.ClickException(f"two inputs would both be written to {clash}: give inputs with distinct names")
    try:
        check_writable(names[0])
    except OutputError as exc:
        raise click.ClickException(str(exc)) from None
    processor = _video_processor(options, console)
    settings = run_settings(options, codec, crf)
    notice = lambda msg: console.print(msg, style="yellow")  # noqa: E731
    with signals.Deferred() as stop:
        with video_progress(console) as progress:
            outcomes = process_videos(sources, out_dir, processor, settings, batch, progress, notice, stop,
                                      codec, crf, rank, world)
    if stop.requested:
        for o in outcomes:
            if o.status == "interrupted":
                console.print(f"Interrupted by {signals.Interrupted(stop.signum).name}: {o.message or 'nothing kept'};"
                              f" rerun the same command to resume.")
        sys.exit(128 + stop.signum)
    everything = gather(outcomes, world)
    if everything is None:
        return
    table = Table(title=f"rtlrp video: {len(sources)} inputs into {out_dir}"
                        + (f" on {world} processes" if world > 1 else ""))
    for column in ("input", "status", "frames", "seconds", "output / note"):
        table.add_column(column, justify="right" if column in ("frames", "seconds") else "left")
    for o in sorted(everything, key=lambda o: str(o.src)):
        table.add_row(str(o.src), o.status, str(o.frames), f"{o.seconds:.1f}",
                      o.message if o.status in ("failed", "skipped") else str(o.out))
    Output(highlight=False, width=None if sys.stdout.isatty() else 200).print(table)
    statuses = {o.status for o in everything}
    if "failed" in statuses:
        raise click.ClickException(f"{sum(o.status == 'failed' for o in everything)} of {len(sources)} inputs failed"
                                   " (see the table)")
    if "truncated" in statuses:
        sys.exit(signals.EXIT_TRUNCATED)


@cli.command("explain")
@click.argument("images", metavar="IMAGE...", nargs=-1, required=True,
                type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for the PNGs (created if missing).")
@click.option("--display-size", default=256, show_default=True, type=click.IntRange(min=0),
              help="Images whose short side is smaller are enlarged (sharp pixels) for the PNGs; 0 keeps sizes.")
@click.option("--sheet", default=None, type=click.Path(dir_okay=False, path_type=Path),
              help="Also write all overlays tiled into this one PNG.")
@processing_options
def explain_command(images: tuple[Path, ...], out: Path, display_size: int, sheet: Path | None,
                    **options: object) -> None:
    """Write STEM_overlay.png and STEM_heatmap.png (and STEM_side.png with --layout side) per image."""
    from realtime_lrp import signals
    from realtime_lrp.atomic import OutputError, check_writable
    from realtime_lrp.processor import ProcessingError
    from realtime_lrp.reader import InputError
    from realtime_lrp.stills import explain_images, read_images

    console = _console()
    if sheet is not None and sheet.suffix.lower() != ".png":
        raise click.ClickException(f"--sheet must be a .png file, got {sheet.name}")
    try:
        frames = read_images(images)
        check_writable(out / f"{images[0].stem}_overlay.png")
        if sheet is not None:
            check_writable(sheet)
    except (InputError, OutputError) as exc:
        raise click.ClickException(str(exc)) from None
    processor = build_processor(options, console)

    def report(path: Path, label: str, written: list[Path]) -> None:
        console.print(f"{path}: {label} -> {', '.join(p.name for p in written)}")

    with signals.Deferred() as stop:
        try:
            result = explain_images(images, frames, processor, out, display_size, sheet, stop, report)
        except (ProcessingError, OutputError) as exc:
            raise click.ClickException(str(exc)) from None
    if result.signum is not None:
        name = signals.Interrupted(result.signum).name
        console.print(f"Interrupted by {name}: the PNGs of the {len(result.written)} images listed above are"
                      f" complete; {len(images) - len(result.written)} images were not explained"
                      + (", and no sheet was written." if sheet is not None else "."))
        sys.exit(128 + result.signum)
    if result.sheet is not None:
        console.print(f"sheet of {len(result.written)} overlays -> {result.sheet}")


@cli.command("sample")
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--size", default=256, show_default=True, type=click.IntRange(min=32),
              help="Width and height of the square frames.")
@click.option("--fps", default=24.0, show_default=True, type=click.FloatRange(min=1))
@click.option("--seconds", default=1.5, show_default=True, type=click.FloatRange(min=0.1),
              help="Seconds each item is shown.")
@click.option("--items", default=10, show_default=True, type=click.IntRange(1, 20),
              help="How many clothing items (one per class first, then a second of each).")
@click.option("--stills", default=None, type=click.Path(file_okay=False, path_type=Path),
              help="Also save the items as PNGs in this folder (input for rtlrp explain).")
def sample_command(out: Path, size: int, fps: float, seconds: float, items: int, stills: Path | None) -> None:
    """Write a demo video of Fashion-MNIST test items for the shipped model."""
    from realtime_lrp.atomic import OutputError
    from realtime_lrp.sample import write_sample, write_stills
    from realtime_lrp.writer import WriterError

    check_output(out)
    try:
        frames = write_sample(out, size=size, fps=fps, seconds_per_item=seconds, count=items)
        click.echo(f"Wrote {frames} frames ({size}x{size}, {fps:g} fps) to {out}")
        if stills is not None:
            write_stills(stills, items)
            click.echo(f"Wrote {items} item images to {stills}")
    except (WriterError, OutputError) as exc:
        raise click.ClickException(str(exc)) from None


@cli.command("webcam")
@click.option("--camera", default="0", show_default=True, metavar="SOURCE",
              help="Camera index, device path (/dev/video0), video file or stream URL (rtsp://, http://).")
@click.option("--record", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Record what is shown, in real time (the same writer as rtlrp video; see --codec).")
@click.option("--no-window", is_flag=True, help="Run headless: live stats in the terminal, no window.")
@click.option("--snapshot-dir", default="snapshots", show_default=True,
              type=click.Path(file_okay=False, path_type=Path), help="Where key s saves PNG snapshots.")
@click.option("--max-frames", type=click.IntRange(min=1), default=None,
              help="Stop after this many processed frames (automation, tests).")
@click.option("--pace/--no-pace", default=True, show_default=True,
              help="Play a video file at its own frame rate, like a camera (files only).")
@codec_options
@processing_options
@smooth_option
def webcam_command(camera: str, record: Path | None, no_window: bool, snapshot_dir: Path,
                   max_frames: int | None, pace: bool, codec: str | None, crf: int | None,
                   **options: object) -> None:
    """Live LRP heatmaps from a camera: keys q/ESC quit, space pause, s snapshot, +/- top-k, c colours, l layout."""
    import numpy as np

    from realtime_lrp import signals
    from realtime_lrp.capture import CameraError, LiveSource, parse_camera
    from realtime_lrp.display import open_display
    from realtime_lrp.live import LiveLoop

    console = _console()
    notice = lambda msg: console.print(msg, style="yellow")  # noqa: E731
    try:
        spec = parse_camera(camera)
    except CameraError as exc:
        raise click.ClickException(str(exc)) from None
    if record is not None:
        check_output(record, Path(str(spec.target)) if spec.kind == "file" else None, codec)
    processor = build_processor(options, console)
    h, w = processor.size
    processor.explain([np.zeros((h, w, 3), np.uint8)])  # first-call set-up, before the camera runs
    display = open_display(f"rtlrp - {spec}", not no_window, console, notice)
    try:
        source = LiveSource(spec, pace=pace if spec.kind == "file" else False).open()
    except BaseException as exc:
        display.close()
        if isinstance(exc, CameraError):
            raise click.ClickException(str(exc)) from None
        raise
    with signals.Deferred() as stop:
        try:
            summary = LiveLoop(source, processor, display, record=record, snapshot_dir=snapshot_dir,
                               max_frames=max_frames, notice=notice, stop=stop, codec=codec, crf=crf).run()
        finally:
            source.close()
    if summary.recording is not None:
        console.print(f"Recorded {summary.recorded_frames} frames to {summary.recording}, checked by reading"
                      " them back.", soft_wrap=True)
    elif record is not None:
        console.print(f"Nothing was recorded, so {record} was left as it was.", soft_wrap=True)
    console.print(f"{summary.frames} frames processed in {summary.seconds:.1f} s ({summary.fps:.1f} FPS),"
                  f" {summary.skipped} camera frames skipped; ended: {summary.reason}.", soft_wrap=True)
    if summary.error:
        raise click.ClickException(summary.error)
    if summary.interrupted:
        sys.exit(128 + (summary.signum or 2))


def load_weights(weights: str, device: str = "cpu"):
    """``load_model`` for a command: notices on stderr, any weights problem as a one-line error."""
    from realtime_lrp.models import WeightsError, load_model

    try:
        return load_model(weights, device=device, notify=lambda msg: click.echo(msg, err=True))
    except WeightsError as exc:
        raise click.ClickException(str(exc)) from None


@cli.command("export")
@click.argument("source", metavar="RUN_DIR_OR_CHECKPOINT", type=click.Path(exists=True, path_type=Path))
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Weight file to write, e.g. weights/NAME.pt; the card goes to NAME.json beside it.")
@click.option("--measure/--no-measure", default=True, show_default=True,
              help="Measure test_accuracy on the exported fp16 weights (else the checkpoint's value).")
def export_command(source: Path, out: Path, measure: bool) -> None:
    """Export a training run as fp16 weights plus a JSON model card."""
    from realtime_lrp.atomic import OutputError
    from realtime_lrp.data import DataError
    from realtime_lrp.export import export
    from realtime_lrp.models import WeightsError
    from realtime_lrp.training import TrainingError

    try:
        card = export(source, out, measure=measure)
    except (TrainingError, DataError, WeightsError, OutputError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    acc = card["test_accuracy"]
    click.echo(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB, {card['arch']}, "
               f"{card['num_classes']} classes) and {out.with_suffix('.json')}; test accuracy "
               + (f"{acc:.2%}" if acc is not None else "not measured"))


def _csv(cast):
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


@cli.command("bench")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="auto: CUDA if available, else the CPU (with a notice).")
@click.option("--sizes", default="224", show_default=True, callback=_csv(int), metavar="N,N,...",
              help="Square input sizes, e.g. 224,448,640.")
@click.option("--batch", default="1", show_default=True, callback=_csv(int), metavar="N,N,...",
              help="Batch sizes, e.g. 1,8,32.")
@click.option("--top-k", default="0,0.02", show_default=True, callback=_csv(float), metavar="K,K,...",
              help="Filter fractions; 0 is unfiltered.")
@click.option("--preset", default="epsilon-plus-flat", show_default=True, callback=_csv(str),
              metavar="NAME,...", help=f"LRP presets ({', '.join(PRESET_NAMES)}), comma-separated.")
@click.option("--dtype", type=click.Choice(["fp32", "fp16", "bf16"]), default=None,
              help="Default: fp16 on CUDA, fp32 on the CPU.")
@click.option("--arch", default="vgg16", show_default=True,
              help="Architecture with random weights (speed does not depend on the weights): vgg11 ... "
                   "vgg19_bn, resnet18 ... resnet152, resnext50_32x4d, resnext101_32x8d, resnext101_64x4d, "
                   "wide_resnet50_2, wide_resnet101_2 or alexnet.")
@click.option("--weights", default=None, metavar="imagenet[:ARCH]|shipped|PATH",
              help="Benchmark this model instead of a random --arch.")
@click.option("--repeats", type=click.IntRange(min=1), default=None,
              help="Timed calls per measurement (median); default 50 on CUDA, 5 on the CPU.")
@click.option("--warmup", type=click.IntRange(min=0), default=None, help="Untimed calls first; default 10 / 1.")
@click.option("--graph/--no-graph", default=True, show_default=True, help="CUDA graphs on CUDA.")
@click.option("--zennit/--no-zennit", default=True, show_default=True,
              help="Also time zennit's equivalent preset (when installed).")
@click.option("--frame-pass/--no-frame-pass", default=True, show_default=True,
              help="Also time the fast path's whole frame pass (upload to download).")
@click.option("--select", type=click.Choice(["auto", "topk", "radix"]), default="auto", show_default=True,
              help="How the top-k filter finds its threshold: auto is topk on the CPU, radix on CUDA.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the rows (and the environment) to this JSON file.")
@click.option("--video", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Time this video's stages alone (decode, process, encode) and end to end instead.")
@click.option("--frames", type=click.IntRange(min=1), default=120, show_default=True,
              help="With --video: frames held in memory for the process and encode stages.")
@click.option("--plain", is_flag=True, help="With --video: use the plain FrameProcessor, not the fast path.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="CPU threads for torch; default as for video: all cores but two, at least one.")
def bench_command(device: str, sizes: list[int], batch: list[int], top_k: list[float], preset: list[str],
                  dtype: str | None, arch: str, weights: str | None, repeats: int | None, warmup: int | None,
                  graph: bool, zennit: bool, frame_pass: bool, select: str, json_path: Path | None,
                  video: Path | None, frames: int, plain: bool, threads: int | None) -> None:
    """Time the LRP engine against the floor (forward + input gradient) and zennit."""
    import json

    import torch
    from rich.console import Console

    from realtime_lrp import bench
    from realtime_lrp.atomic import OutputError, check_writable, write_text
    from realtime_lrp.models import WeightsError, build_model

    console = _console()
    out = Console(highlight=False, width=None if sys.stdout.isatty() else 160)  # the table, on stdout
    notice = lambda msg: console.print(msg, style="yellow")  # noqa: E731
    unknown = [p for p in preset if p not in PRESET_NAMES]
    if unknown:
        raise click.BadParameter(f"unknown preset {unknown[0]!r}; choose from {', '.join(PRESET_NAMES)}",
                                 param_hint="--preset")
    if any(not 0 <= k <= 1 for k in top_k):
        raise click.BadParameter("top-k values must be in [0, 1]", param_hint="--top-k")
    if min(sizes) < 32 or min(batch) < 1:
        raise click.BadParameter("sizes must be at least 32 and batches at least 1")
    if json_path is not None:
        try:
            check_writable(json_path)
        except OutputError as exc:
            raise click.ClickException(str(exc)) from None
    if device == "cuda" and not torch.cuda.is_available():
        notice("CUDA is not available: benchmarking on the CPU in fp32")
        device = "cpu"
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.set_num_threads(threads or default_threads())
    if device == "cpu" and dtype == "fp16":
        raise click.BadParameter("fp16 is CUDA-only here; use fp32 or bf16 on the CPU", param_hint="--dtype")
    if weights is not None:
        model, card = load_weights(weights)
    else:
        try:
            model, card = build_model(arch, 1000, 3).eval(), bench.imagenet_card(sizes[0])
        except WeightsError as exc:
            raise click.ClickException(str(exc)) from None
    env = bench.environment()
    try:
        if video is not None:
            result = _bench_video(video, model, card, preset[0], top_k[-1], sizes, batch[0], device,
                                  frames, plain, notice)
            out.print(bench.video_table(result))
            payload = {"environment": env, "rows": [], "video": result.as_dict()}
        else:
            config = bench.BenchConfig(sizes, batch, top_k, preset, device, dtype, graph, repeats, warmup,
                                       zennit, frame_pass, select)
            rows = bench.bench_model(model, card, config, notice,
                                     on_row=lambda r: console.print(
                                         f"  {r['size']}px batch {r['batch']} top-k {r['top_k']:g} {r['preset']}:"
                                         f" engine {r['engine_ms']:.2f} ms, floor {r['floor_ms']:.2f} ms"))
            out.print(bench.rows_table(rows, f"rtlrp bench on {env['gpu'] or 'CPU'} ({env['date']})"))
            payload = {"environment": env, "rows": rows, "video": None}
    except torch.cuda.OutOfMemoryError:
        raise click.ClickException("CUDA out of memory: try smaller --sizes or --batch") from None
    except KeyboardInterrupt as exc:
        from realtime_lrp.signals import exit_code

        console.print(f"Interrupted: nothing written{f' to {json_path}' if json_path else ''}.")
        sys.exit(exit_code(exc))
    if json_path is not None:
        try:
            write_text(json_path, json.dumps(payload, indent=2) + "\n")
        except OutputError as exc:
            raise click.ClickException(str(exc)) from None
        console.print(f"wrote {json_path}")


def _bench_video(path: Path, model, card: dict, preset: str, top_k: float, sizes: list[int], batch: int,
                 device: str, frames: int, plain: bool, notice):
    """``rtlrp bench --video``: build the processor and time the stages (errors as one line)."""
    from realtime_lrp import bench
    from realtime_lrp.fast import FastProcessor
    from realtime_lrp.processor import FrameProcessor, ProcessingError
    from realtime_lrp.video import InputError, PartialOutput

    size = None if card.get("arch") != "random" else (sizes[0], sizes[0])
    processor = FrameProcessor(model, card, preset=preset, top_k=top_k, size=size, device=device, notice=notice)
    if not plain:
        processor = FastProcessor(processor, notice=notice)
    try:
        return bench.bench_video(path, processor, batch=batch, keep=frames, notice=notice)
    except (InputError, ProcessingError, PartialOutput) as exc:
        raise click.ClickException(str(exc)) from None


@cli.command("evaluate")
@click.argument("source", metavar="[SOURCE]", required=False)
@click.option("--weights", default="shipped", show_default=True, metavar="auto|imagenet|shipped|PATH",
              help=WEIGHTS_HELP)
@click.option("-n", "--images", default=256, show_default=True, type=click.IntRange(min=1),
              help="Evaluate on the first N images (or video frames).")
@click.option("--methods", default=",".join((*PRESET_NAMES, "random", "gradient", "gradient-x-input")),
              show_default=True, callback=_csv(str), metavar="NAME,...",
              help="LRP presets and baselines (random, gradient, gradient-x-input), comma-separated.")
@click.option("--top-k", default="0,0.02,0.05", show_default=True, callback=_csv(float), metavar="K,K,...",
              help="Filter fractions for every preset; 0 is unfiltered.")
@click.option("--dtypes", default="auto", show_default=True, metavar="auto|fp32,bf16,fp16",
              help="Precisions of the LRP maps; auto: fp32, bf16, and fp16 on CUDA.")
@click.option("--batch", default=64, show_default=True, type=click.IntRange(min=1), help="Images per batch.")
@click.option("--size", default=None, metavar="N|WxH", callback=_check_size,
              help="Processing size the images are resized to; default: the model's input size.")
@click.option("--noise", default=0.5, show_default=True, type=click.FloatRange(min=0),
              help="Standard deviation of the sensitivity noise, in grey levels of 255.")
@click.option("--draws", default=3, show_default=True, type=click.IntRange(min=1),
              help="Noise draws per image for the sensitivity.")
@click.option("--flip-step", default=0.02, show_default=True, type=click.FloatRange(0, 1, min_open=True),
              help="Fraction of the pixels flipped per pixel-flipping step.")
@click.option("--flip-max", default=0.5, show_default=True, type=click.FloatRange(0, 1, min_open=True),
              help="Fraction of the pixels flipped at the last step.")
@click.option("--flip-value", type=click.Choice(["mean", "black", "uniform"]), default="mean", show_default=True,
              help="What flipped pixels become: the model's mean (0 after normalisation), black, or uniform noise.")
@click.option("--flip-score", type=click.Choice(["probability", "logit"]), default="probability",
              show_default=True, help="Score recorded after each step, for the explained class.")
@click.option("--flip-rank", type=click.Choice(["relevance", "magnitude"]), default="relevance",
              show_default=True, help="Rank pixels by relevance (signed) or by its magnitude.")
@click.option("--smooth", default=0.0, show_default=True, type=click.FloatRange(0, 1, max_open=True),
              help="Video input: average maps over frames as rtlrp video --smooth does.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the noise, tie order and random maps.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="CPU threads for torch; default as for video: all cores but two, at least one.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write one row per method (and the settings) to this JSON file.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also draw the MoRF and LeRF curves of every method into this PNG.")
def evaluate_command(source: str | None, weights: str, images: int, methods: list[str], top_k: list[float],
                     dtypes: str, batch: int, size: str | None, noise: float, draws: int, flip_step: float,
                     flip_max: float, flip_value: str, flip_score: str, flip_rank: str, smooth: float, seed: int,
                     device: str, threads: int | None, json_path: Path | None, plot_path: Path | None) -> None:
    """Measure how faithful, stable and sparse each method's maps are: SOURCE is a folder of
    images, a video file or fashion-mnist (the default for models trained on it)."""
    import sys

    import torch
    from rich.console import Console

    from realtime_lrp import evaluate
    from realtime_lrp.preprocess import parse_size

    console = _console()
    out = Console(highlight=False, width=None if sys.stdout.isatty() else 160)  # the table, on stdout
    torch.set_num_threads(threads or default_threads())
    try:
        config = evaluate.EvalConfig(
            methods=methods, top_ks=top_k,
            dtypes=None if dtypes == "auto" else [d.strip() for d in dtypes.split(",") if d.strip()],
            flip=evaluate.FlipProtocol(flip_step, flip_max, flip_value, flip_score, flip_rank),
            noise=noise, draws=draws, batch=batch, smooth=smooth, seed=seed)
        evaluate.plan_methods(config.methods, config.top_ks, config.dtypes or ["fp32"])
        model, card = load_weights(weights)
        with evaluate.evaluate_progress(console) as progress:
            report = evaluate.run(source, model, card, config, count=images, size=parse_size(size), device=device,
                                  json_path=json_path, plot_path=plot_path, progress=progress,
                                  notice=lambda msg: console.print(msg, style="yellow"))
    except evaluate.EvaluationError as exc:
        raise click.ClickException(str(exc)) from None
    except KeyboardInterrupt as exc:
        from realtime_lrp.signals import exit_code

        console.print("Interrupted: nothing written.")
        sys.exit(exit_code(exc))
    settings = report.payload["settings"]
    title = f"rtlrp evaluate: {settings['model']} on {report.images} images of {settings['source']}"
    out.print(evaluate.results_table(report.rows, title))
    if report.accuracy is not None:
        console.print(f"top-1 accuracy on these images: {report.accuracy:.2%}")
    if report.input_frame_r is not None:
        console.print(f"consecutive input frames correlate at r = {report.input_frame_r:.3f}")
    console.print(f"{len(report.rows)} methods on {report.images} images in {report.seconds:.1f} s")
    for path in (json_path, plot_path):
        if path is not None:
            console.print(f"wrote {path}")


@cli.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; on any but loopback the page needs the token printed at start-up.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535), help="Port; 0 picks a free one.")
@click.option("--tls", nargs=2, default=None, metavar="CERT KEY",
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Serve HTTPS with this PEM certificate and key (browsers give the camera to remote pages only"
                   " over HTTPS).")
@click.option("--source", default=None, metavar="SOURCE",
              help="Kiosk mode: explain this server-side camera index, device, video file (played in a loop) or"
                   " stream URL, and show it to every page that connects.")
@click.option("--max-fps", type=click.FloatRange(min=0.1), default=30.0, show_default=True,
              help="Frames per second a client may send; frames over it are answered 'skipped'.")
@click.option("--max-side", type=click.IntRange(min=8), default=1024, show_default=True,
              help="Largest width or height of a frame a client may send, in pixels.")
@click.option("--batch", type=click.IntRange(min=1), default=8, show_default=True,
              help="Most clients whose frames are explained together in one batch.")
@processing_options
def serve_command(host: str, port: int, tls: tuple[Path, Path] | None, source: str | None, max_fps: float,
                  max_side: int, batch: int, **options: object) -> None:
    """Live LRP in the browser: pages send camera frames over a WebSocket, this machine explains them."""
    from realtime_lrp import signals
    from realtime_lrp.capture import CameraError, parse_camera
    from realtime_lrp.processor import ProcessingError
    from realtime_lrp.serve import Limits, LrpServer, ServeError

    console = _console()
    try:
        spec = parse_camera(source) if source is not None else None
    except CameraError as exc:
        raise click.ClickException(str(exc)) from None
    processor = build_processor(options, console)
    try:
        server = LrpServer(processor, host=host, port=port, tls=tls or None, source=spec,
                           limits=Limits(max_fps=max_fps, max_side=max_side), batch=batch,
                           notice=lambda msg: console.print(msg, style="yellow"))
    except ServeError as exc:
        raise click.ClickException(str(exc)) from None
    with server, signals.Deferred() as stop:
        try:
            server.start()
        except (ServeError, ProcessingError) as exc:
            raise click.ClickException(str(exc)) from None
        what = f"explaining {spec} for every page" if spec is not None else "explaining the pages' cameras"
        console.print(f"rtlrp serve: {server.hub.model} on {server.device}, {what}: open {server.url}"
                      "  (Ctrl-C stops)", soft_wrap=True)
        if server.token is None:
            console.print(f"From another machine: ssh -L {server.port}:localhost:{server.port} THIS-HOST,"
                          f" then open http://localhost:{server.port}/", soft_wrap=True)
        outcome = server.run(stop)
    if outcome.error is not None:
        raise click.ClickException(outcome.error)
    frames, clients = server.worker.frames, server.hub.served
    console.print(f"Stopped by {signals.Interrupted(outcome.signum).name}: {frames} frame{'s' * (frames != 1)}"
                  f" explained for {clients} client{'s' * (clients != 1)}.", soft_wrap=True)
    sys.exit(128 + outcome.signum)


@cli.command("serve-bench")
@click.argument("url")
@click.option("--clients", default="1,4,8", show_default=True, callback=_csv(int), metavar="N,N,...",
              help="Numbers of concurrent clients, one measurement each.")
@click.option("--seconds", type=click.FloatRange(min=1), default=20.0, show_default=True,
              help="How long each measurement sends frames.")
def serve_bench_command(url: str, clients: list[int], seconds: float) -> None:
    """Measure a running rtlrp serve at URL: round-trip latency and frames/s for N clients sending frames."""
    from rich.console import Console

    from realtime_lrp.serve_bench import BenchError, run_load, summary_table

    if min(clients) < 1 or max(clients) > 64:
        raise click.BadParameter("client counts must be between 1 and 64", param_hint="--clients")
    console = _console()
    results = []
    for n in clients:
        console.print(f"{n} client{'s' if n > 1 else ''} for {seconds:g} s ...")
        try:
            results.append(run_load(url, n, seconds))
        except BenchError as exc:
            raise click.ClickException(str(exc)) from None
    Console(highlight=False, width=None if sys.stdout.isatty() else 160).print(summary_table(results, url))
    failed = [f"{r.clients} clients: {e}" for r in results for e in r.errors]
    if failed:
        raise click.ClickException(f"{len(failed)} clients failed, first: {failed[0]}")


def describe(error: BaseException) -> str:
    """One line for an error no command turned into a message of its own."""
    from realtime_lrp.processor import out_of_memory

    if out_of_memory(error):
        return "out of memory: try a smaller --size or --batch"
    if isinstance(error, OSError):
        where = f" {error.filename}" if error.filename else ""
        return f"cannot access{where}: {error.strerror or error}"
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``rtlrp`` console script: run a command, turn every ending into an exit code."""
    from realtime_lrp import signals

    signals.install()
    try:
        code = cli.main(args=argv, prog_name="rtlrp", standalone_mode=False)
    except click.exceptions.Abort as exc:  # click turns KeyboardInterrupt (our signals too) into Abort
        signals.ignore_further()
        cause = exc.__cause__ or exc.__context__
        interrupt = cause if isinstance(cause, signals.Interrupted) else signals.Interrupted()
        click.echo(f"rtlrp: interrupted by {interrupt.name}; outputs are only ever replaced when complete", err=True)
        sys.exit(interrupt.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except SystemExit:
        raise
    except Exception as exc:
        if _debug["on"]:
            raise
        command = next((a for a in (argv if argv is not None else sys.argv[1:]) if not a.startswith("-")), "rtlrp")
        click.echo(f"rtlrp {command}: {describe(exc)} (--debug shows the traceback)", err=True)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
