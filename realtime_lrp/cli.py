"""The ``rtlrp`` command line.

Each command imports torch, OpenCV and the engine inside its body, so ``rtlrp --help``
and ``rtlrp --version`` stay fast.
"""
from __future__ import annotations

from pathlib import Path

import click

from realtime_lrp.presets import PRESET_NAMES


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="realtime-lrp", prog_name="rtlrp")
def cli() -> None:
    """Real-time LRP heatmaps for VGG image classifiers."""


@cli.command("presets")
def presets_command() -> None:
    """List the LRP rule presets and their zennit equivalents."""
    from realtime_lrp.presets import PRESETS

    for name in PRESET_NAMES:
        preset = PRESETS[name]
        click.echo(f"{name:20s} {preset.description}  [{preset.reference}]")


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


def processing_options(func):
    """Options shared by ``video``, ``explain`` and ``webcam``: model, LRP method, rendering, device.

    The command receives them as keyword arguments ``weights, preset, top_k, target, size,
    cmap, layout, alpha, device``, ready for ``FrameProcessor.from_options(**options)``
    (see :func:`build_processor`).
    """
    options = [
        click.option("--weights", default="auto", show_default=True,
                     help="Model: auto (ImageNet VGG16 if cached, else the shipped model), imagenet,"
                          " shipped, or a weight file."),
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
    ]
    for option in reversed(options):
        func = option(func)
    return func


def build_processor(options: dict, console):
    """A ``FrameProcessor`` from ``processing_options``; bad weights or options → one-line error."""
    from realtime_lrp.models import WeightsError
    from realtime_lrp.processor import FrameProcessor

    try:
        return FrameProcessor.from_options(notice=lambda msg: console.print(msg, style="yellow"), **options)
    except (WeightsError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None


def _console():
    from rich.console import Console

    return Console(stderr=True, highlight=False)


@cli.command("video")
@click.argument("src", metavar="IN", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Output video; the extension picks the codec (.mp4, .m4v, .mov: mp4v; .avi: MJPG; .mkv: XVID).")
@click.option("--batch", default=1, show_default=True, type=click.IntRange(min=1),
              help="Frames explained together (throughput on a GPU).")
@processing_options
def video_command(src: Path, out: Path, batch: int, **options: object) -> None:
    """Explain every frame of video IN into OUT, keeping its fps, frame count and size."""
    import sys

    from realtime_lrp.processor import ProcessingError
    from realtime_lrp.video import InputError, PartialOutput, open_video, process_video, video_progress
    from realtime_lrp.writer import WriterError, codec_for

    console = _console()
    try:
        codec_for(out)
        if out.resolve() == src.resolve():
            raise WriterError("--out must differ from the input")
        open_video(src)[0].release()
    except (InputError, WriterError) as exc:
        raise click.ClickException(str(exc)) from None
    try:
        processor = build_processor(options, console)
    except KeyboardInterrupt:
        console.print("Interrupted before the first frame: no output written.")
        sys.exit(130)
    try:
        with video_progress(console) as progress:
            result = process_video(src, out, processor, batch=batch, progress=progress,
                                   notice=lambda msg: console.print(msg, style="yellow"))
    except (InputError, WriterError, ProcessingError, PartialOutput) as exc:
        raise click.ClickException(str(exc)) from None
    w, h = result.size
    if result.interrupted:
        if result.frames:
            console.print(f"Interrupted: {out} is closed and playable with the {result.frames} frames done.")
        else:
            console.print("Interrupted before the first frame: no output written.")
        sys.exit(130)
    speed = result.frames / result.seconds if result.seconds > 0 else 0.0
    console.print(f"Wrote {result.frames} frames ({w}x{h}, {result.fps:.3f} fps) to {out}"
                  f" in {result.seconds:.1f} s ({speed:.1f} frames/s)")


def main() -> None:
    """Entry point of the ``rtlrp`` console script."""
    cli()


if __name__ == "__main__":
    main()
