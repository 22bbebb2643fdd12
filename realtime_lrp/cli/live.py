"""``rtlrp webcam``: a camera explained live, in a window or headless."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from realtime_lrp.cli.group import cli
from realtime_lrp.cli.options import (
    build_processor,
    check_output,
    codec_options,
    processing_options,
    smooth_option,
    stderr_console,
)


@cli.command("webcam")
@click.option("--camera", default="0", show_default=True, metavar="SOURCE",
              help="Camera index, device path (/dev/video0), video file or stream URL (rtsp://, http://).")
@click.option("--record", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Record what is shown, in real time (the same writer as rtlrp video; see --codec).")
@click.option("--no-window", is_flag=True, help="Run headless: live stats in the terminal, no window; stop with q"
                   " and Enter (when stdin is a terminal or a pipe), Ctrl-C or --max-frames.")
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
    """Live LRP heatmaps from a camera. In the window, keys q/ESC quit, space pause, s snapshot, +/- top-k,
    c colours, l layout; headless (--no-window), q and Enter quit (or Ctrl-C)."""
    import numpy as np

    from realtime_lrp.apps.live import LiveLoop
    from realtime_lrp.media.capture import CameraError, LiveSource, parse_camera
    from realtime_lrp.media.display import open_display
    from realtime_lrp.util import signals

    console = stderr_console()
    notice = lambda msg: console.print(msg, style="yellow")  # noqa: E731
    try:
        spec = parse_camera(camera)
    except CameraError as exc:
        raise click.ClickException(str(exc)) from None
    if record is not None:
        check_output(record, Path(str(spec.target)) if spec.kind == "file" else None, codec, crf)
    try:  # the camera first: a missing one is said at once, not after seconds of loading the model
        source = LiveSource(spec, pace=pace if spec.kind == "file" else False).open(start=False)
    except CameraError as exc:
        raise click.ClickException(str(exc)) from None
    try:
        processor = build_processor(options, console)
        h, w = processor.size
        processor.process([np.zeros((h, w, 3), np.uint8)])  # first-call set-up (the pass), before the camera runs
        processor.reset()
        display = open_display(f"rtlrp - {spec}", not no_window, console, notice)
    except BaseException:
        source.close()
        raise
    source.start()
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
