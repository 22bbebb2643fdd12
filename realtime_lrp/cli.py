"""The ``rtlrp`` command line.

Each command imports torch, OpenCV and the engine inside its body, so ``rtlrp --help``
and ``rtlrp --version`` stay fast.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, TypeVar

import click

from realtime_lrp.presets import PRESET_NAMES

if TYPE_CHECKING:
    from rich.console import Console

    from realtime_lrp.processor import FrameProcessor

F = TypeVar("F", bound=Callable[..., Any])


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


@cli.command("train")
@click.option("--arch", default="vgg11_bn", show_default=True,
              type=click.Choice(["vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn",
                                 "vgg19", "vgg19_bn"]), help="torchvision VGG architecture.")
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
@click.option("--width", default=0.25, show_default=True,
              type=click.FloatRange(min=0, min_open=True), help="Scale of the conv channel counts.")
@click.option("--hidden", default=256, show_default=True, type=click.IntRange(min=1),
              help="Width of the two hidden Linear layers (torchvision: 4096).")
@click.option("--pool", default=1, show_default=True, type=click.IntRange(min=1),
              help="Output size of the adaptive average pool (torchvision: 7).")
@click.option("--dropout", default=0.5, show_default=True, type=click.FloatRange(0, 1, max_open=True),
              help="Dropout of the two hidden Linear layers (training only).")
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
    """Train a VGG (mixed precision with --amp; DDP under torchrun)."""
    import sys

    from realtime_lrp.data import DataError
    from realtime_lrp.models import WeightsError
    from realtime_lrp.training import TrainConfig, TrainingError, TrainingInterrupted, main

    size = options.pop("input_size")
    options["input_size"] = _size(size) if size else (
        [224, 224] if str(options["dataset"]).startswith("imagefolder:") else [32, 32])
    options["out"] = str(options["out"])
    options["resume"] = str(options["resume"]) if options["resume"] else None
    config = TrainConfig(**options, command=_command_line(ctx))
    try:
        main(config)
    except TrainingInterrupted as exc:
        click.echo(str(exc), err=True)
        sys.exit(130)
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
                "Fashion-MNIST model), imagenet[:ARCH], shipped, or a weight file (.pt).")


def weights_option(func):
    """Reusable ``--weights`` option (default ``auto``); pass its value to :func:`load_weights`."""
    return click.option("--weights", default="auto", show_default=True,
                        metavar="auto|imagenet|shipped|PATH", help=WEIGHTS_HELP)(func)


def processing_options(func: F) -> F:
    """Options shared by ``video``, ``explain`` and ``webcam``: model, LRP method, rendering, device.

    The command receives them as keyword arguments ``weights, preset, top_k, target, size,
    cmap, layout, alpha, device``, ready for ``FrameProcessor.from_options(**options)``
    (see :func:`build_processor`).
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
    ]
    for option in reversed(options):
        func = option(func)
    return func


def smooth_option(func: F) -> F:
    """``--smooth ALPHA`` for the streaming commands (video, webcam): a moving average of maps."""
    return click.option("--smooth", default=0.0, show_default=True, type=click.FloatRange(0, 1, max_open=True),
                        metavar="ALPHA", help="Exponential moving average of the maps over frames: weight ALPHA "
                                              "on the previous average, 1 - ALPHA on the new map; 0 turns it off.")(func)


def build_processor(options: dict[str, Any], console: Console) -> FrameProcessor:
    """A ``FrameProcessor`` from ``processing_options``; bad weights or options → one-line error."""
    from realtime_lrp.models import WeightsError
    from realtime_lrp.processor import FrameProcessor

    try:
        return FrameProcessor.from_options(notice=lambda msg: console.print(msg, style="yellow"), **options)
    except (WeightsError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None


def _console() -> Console:
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)


@cli.command("video")
@click.argument("src", metavar="IN", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Output video; the extension picks the codec (.mp4, .m4v, .mov: mp4v; .avi: MJPG; .mkv: XVID).")
@click.option("--batch", default=1, show_default=True, type=click.IntRange(min=1),
              help="Frames explained together (throughput on a GPU).")
@processing_options
@smooth_option
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
    if processor.device.type == "cuda":
        from realtime_lrp.fast import FastProcessor

        processor = FastProcessor(processor, notice=lambda msg: console.print(msg, style="yellow"))
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
    import math
    import sys

    import cv2

    from realtime_lrp.processor import ProcessingError
    from realtime_lrp.render import contact_sheet

    console = _console()
    frames = []
    for path in images:
        if not path.is_file():
            raise click.ClickException(f"{path}: no such file")
        frame = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if frame is None:
            raise click.ClickException(f"cannot read {path}: not an image, or corrupt")
        frames.append(frame)
    if sheet is not None and sheet.suffix.lower() != ".png":
        raise click.ClickException(f"--sheet must be a .png file, got {sheet.name}")
    try:
        processor = build_processor(options, console)
        layouts = ["overlay", "heatmap"] + (["side"] if processor.layout == "side" else [])
        out.mkdir(parents=True, exist_ok=True)
        overlays, stems = [], set()
        for i, (path, frame) in enumerate(zip(images, frames)):
            relevance, preds = processor.explain([frame])
            scales = processor.scales(relevance, stable=False)
            short = min(frame.shape[:2])
            if display_size and short < display_size:
                k = math.ceil(display_size / short)
                frame = cv2.resize(frame, None, fx=k, fy=k, interpolation=cv2.INTER_NEAREST)
            stem = path.stem if path.stem not in stems else f"{path.stem}_{i}"
            stems.add(stem)
            written = []
            for layout in layouts:
                picture = processor.render([frame], relevance, preds, scales, layout)[0]
                target = out / f"{stem}_{layout}.png"
                if not cv2.imwrite(str(target), picture):
                    raise click.ClickException(f"cannot write {target}")
                written.append(target.name)
                if layout == "overlay":
                    overlays.append(picture)
            console.print(f"{path}: {preds[0].label} -> {', '.join(written)}")
        if sheet is not None:
            sheet.parent.mkdir(parents=True, exist_ok=True)
            if not cv2.imwrite(str(sheet), contact_sheet(overlays)):
                raise click.ClickException(f"cannot write {sheet}")
            console.print(f"sheet of {len(overlays)} overlays -> {sheet}")
    except ProcessingError as exc:
        raise click.ClickException(str(exc)) from None
    except KeyboardInterrupt:
        console.print("Interrupted: the PNGs listed above are complete.")
        sys.exit(130)


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
    import cv2

    from realtime_lrp.sample import CLASSES, load_items, write_sample
    from realtime_lrp.writer import WriterError, codec_for

    try:
        codec_for(out)
        frames = write_sample(out, size=size, fps=fps, seconds_per_item=seconds, count=items)
    except WriterError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"Wrote {frames} frames ({size}x{size}, {fps:g} fps) to {out}")
    if stills is not None:
        stills.mkdir(parents=True, exist_ok=True)
        for i, (image, label) in enumerate(load_items()[:items]):
            name = CLASSES[label].lower().replace("/", "-").replace(" ", "-")
            cv2.imwrite(str(stills / f"{i:02d}_{name}.png"), image)
        click.echo(f"Wrote {items} item images to {stills}")


@cli.command("webcam")
@click.option("--camera", default="0", show_default=True, metavar="SOURCE",
              help="Camera index, device path (/dev/video0), video file or stream URL (rtsp://, http://).")
@click.option("--record", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Record what is shown, in real time (.mp4, .m4v, .mov: mp4v; .avi: MJPG; .mkv: XVID).")
@click.option("--no-window", is_flag=True, help="Run headless: live stats in the terminal, no window.")
@click.option("--snapshot-dir", default="snapshots", show_default=True,
              type=click.Path(file_okay=False, path_type=Path), help="Where key s saves PNG snapshots.")
@click.option("--max-frames", type=click.IntRange(min=1), default=None,
              help="Stop after this many processed frames (automation, tests).")
@click.option("--pace/--no-pace", default=True, show_default=True,
              help="Play a video file at its own frame rate, like a camera (files only).")
@processing_options
@smooth_option
def webcam_command(camera: str, record: Path | None, no_window: bool, snapshot_dir: Path,
                   max_frames: int | None, pace: bool, **options: object) -> None:
    """Live LRP heatmaps from a camera: keys q/ESC quit, space pause, s snapshot, +/- top-k, c colours, l layout."""
    import sys

    import numpy as np

    from realtime_lrp.capture import CameraError, LiveSource, parse_camera
    from realtime_lrp.display import open_display
    from realtime_lrp.live import LiveLoop
    from realtime_lrp.writer import WriterError, codec_for

    console = _console()
    notice = lambda msg: console.print(msg, style="yellow")  # noqa: E731
    try:
        spec = parse_camera(camera)
        if record is not None:
            codec_for(record)
            folder = next((f for f in record.absolute().parents if f.exists()), None)
            if folder is not None and not folder.is_dir():
                raise WriterError(f"cannot record to {record}: {folder} is not a folder")
    except (CameraError, WriterError) as exc:
        raise click.ClickException(str(exc)) from None
    try:
        processor = build_processor(options, console)
        h, w = processor.size
        processor.explain([np.zeros((h, w, 3), np.uint8)])  # first-call set-up, before the camera runs
        display = open_display(f"rtlrp - {spec}", not no_window, console, notice)
    except KeyboardInterrupt:
        console.print("Interrupted before the first frame: nothing recorded.")
        sys.exit(130)
    try:
        source = LiveSource(spec, pace=pace if spec.kind == "file" else False).open()
    except CameraError as exc:
        display.close()
        raise click.ClickException(str(exc)) from None
    except KeyboardInterrupt:
        display.close()
        console.print("Interrupted before the first frame: nothing recorded.")
        sys.exit(130)
    try:
        summary = LiveLoop(source, processor, display, record=record, snapshot_dir=snapshot_dir,
                           max_frames=max_frames, notice=notice).run()
    finally:
        source.close()
    if record is not None:
        if summary.recorded_frames:
            console.print(f"Recorded {summary.recorded_frames} frames to {record} (closed and playable).",
                          soft_wrap=True)
        else:
            console.print(f"No frame was recorded, so {record} was not created.", soft_wrap=True)
    console.print(f"{summary.frames} frames processed in {summary.seconds:.1f} s ({summary.fps:.1f} FPS),"
                  f" {summary.skipped} camera frames skipped; ended: {summary.reason}.", soft_wrap=True)
    if summary.error:
        raise click.ClickException(summary.error)
    if summary.interrupted:
        sys.exit(130)


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
    from realtime_lrp.data import DataError
    from realtime_lrp.export import export
    from realtime_lrp.models import WeightsError
    from realtime_lrp.training import TrainingError

    try:
        card = export(source, out, measure=measure)
    except (TrainingError, DataError, WeightsError, ValueError) as exc:
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
              help="VGG architecture with random weights (speed does not depend on the weights).")
@click.option("--weights", default=None, metavar="imagenet|shipped|PATH",
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
              help="CPU threads for torch; 1 gives steadier numbers on a machine shared with other work.")
def bench_command(device: str, sizes: list[int], batch: list[int], top_k: list[float], preset: list[str],
                  dtype: str | None, arch: str, weights: str | None, repeats: int | None, warmup: int | None,
                  graph: bool, zennit: bool, frame_pass: bool, select: str, json_path: Path | None,
                  video: Path | None, frames: int, plain: bool, threads: int | None) -> None:
    """Time the LRP engine against the floor (forward + input gradient) and zennit."""
    import json
    import sys

    import torch
    from rich.console import Console

    from realtime_lrp import bench
    from realtime_lrp.models import WeightsError, build_vgg

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
    if device == "cuda" and not torch.cuda.is_available():
        notice("CUDA is not available: benchmarking on the CPU in fp32")
        device = "cpu"
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if threads is not None:
        torch.set_num_threads(threads)
    if device == "cpu" and dtype == "fp16":
        raise click.BadParameter("fp16 is CUDA-only here; use fp32 or bf16 on the CPU", param_hint="--dtype")
    if weights is not None:
        model, card = load_weights(weights)
    else:
        try:
            model, card = build_vgg(arch, 1000, 3).eval(), bench.imagenet_card(sizes[0])
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
    except KeyboardInterrupt:
        console.print("Interrupted: nothing written.")
        sys.exit(130)
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(payload, indent=2) + "\n")
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
@click.option("--threads", type=click.IntRange(min=1), default=None, help="CPU threads for torch.")
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
    if threads is not None:
        torch.set_num_threads(threads)
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
    except KeyboardInterrupt:
        console.print("Interrupted: nothing written.")
        sys.exit(130)
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


def main() -> None:
    """Entry point of the ``rtlrp`` console script."""
    cli()


if __name__ == "__main__":
    main()
