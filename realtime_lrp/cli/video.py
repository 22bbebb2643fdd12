"""``rtlrp video``: explain every frame of one file, or of many into a folder (also under torchrun)."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from realtime_lrp.cli.group import cli
from realtime_lrp.cli.options import (
    build_processor,
    check_output,
    codec_options,
    processing_options,
    rank_and_world,
    run_settings,
    smooth_option,
    stderr_console,
)

if TYPE_CHECKING:
    from rich.console import Console


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
    from realtime_lrp.apps.video import PartialOutput, process_video, video_progress
    from realtime_lrp.media.reader import InputError, VideoReader
    from realtime_lrp.media.writer import WriterError
    from realtime_lrp.pipeline.processor import ProcessingError
    from realtime_lrp.util import signals

    if (out is None) == (out_dir is None):
        raise click.UsageError("give either --out FILE (one input) or --out-dir DIR (any number of inputs)")
    if out is not None and len(sources) > 1:
        raise click.UsageError(f"--out takes one input, got {len(sources)}: use --out-dir DIR for several")
    console = stderr_console()
    notice = lambda msg: console.print(msg, style="yellow")  # noqa: E731
    rank, world, local_rank = rank_and_world()
    if world > 1 and str(options["device"]) in ("auto", "cuda"):
        import torch

        if torch.cuda.is_available():
            options["device"] = f"cuda:{local_rank}"
    if out_dir is not None:
        return _video_many(list(sources), out_dir, batch, codec, crf, options, console, rank, world)
    src = sources[0]
    check_output(out, src, codec, crf)
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
    if result.truncated:
        why = f": {result.input_error}" if result.input_error else ""
        ended = (f"ended after {result.frames} of the {result.expected} frames its header announces"
                 f" ({result.missing} missing{why})" if result.missing
                 else f"broke after {result.frames} frames ({result.input_error or 'the container ended early'})")
        console.print(f"{src} {ended}: {out} holds the {result.frames} frames it had.", style="yellow")
        sys.exit(signals.EXIT_TRUNCATED)


def _video_processor(options: dict[str, Any], console: Console) -> Any:
    """The processor for ``rtlrp video``: its frame pass is captured on CUDA, eager elsewhere."""
    return build_processor(options, console)


def _video_many(sources: list[Path], out_dir: Path, batch: int, codec: str | None, crf: int | None,
                options: dict[str, Any], console: Console, rank: int, world: int) -> None:
    """``rtlrp video IN... --out-dir DIR``: this process's share, then one summary on rank 0."""
    from rich.console import Console as Output
    from rich.table import Table

    from realtime_lrp.apps.video import FileOutcome, Ranks, one_line, output_for, process_videos, share, video_progress
    from realtime_lrp.util import signals

    names = [output_for(src, out_dir, codec) for src in sources]
    clash = next((n for n in names if names.count(n) > 1), None)
    if clash is not None:
        raise click.ClickException(f"two inputs would both be written to {clash}: give inputs with distinct names")
    check_output(names[0], None, codec, crf)
    ranks = Ranks(rank, world).start()  # every rank joins before any work, so none waits on one that never came
    settings = run_settings(options, codec, crf)
    notice = lambda msg: console.print(msg, style="yellow")  # noqa: E731
    with signals.Deferred() as stop:
        try:
            processor = _video_processor(options, console)
            with video_progress(console) as progress:
                ranks.watch(lambda: sum(task.completed for task in progress.tasks))  # frames done: a hang is silence
                outcomes = process_videos(sources, out_dir, processor, settings, batch, progress, notice, stop,
                                          codec, crf, rank, world)
        except Exception as exc:  # this rank cannot work: its share is its report
            if world == 1:
                raise
            reason = exc.format_message() if isinstance(exc, click.ClickException) else one_line(exc)
            console.print(f"rank {rank}: {reason}", style="red")
            outcomes = [FileOutcome(src, output_for(src, out_dir, codec), "failed", message=f"rank {rank}: {reason}")
                        for src in share(sources, rank, world)]
    for o in outcomes:
        if o.status == "failed" and world > 1:
            console.print(f"rank {rank}: {o.src} failed: {o.message}", style="red")
    everything = ranks.gather(outcomes, sources, out_dir, codec, wait=not stop.requested)
    if stop.requested:
        for o in outcomes:
            if o.status == "interrupted":
                console.print(f"Interrupted by {signals.Interrupted(stop.signum).name}: {o.message or 'nothing kept'};"
                              f" rerun the same command to resume.")
        sys.exit(128 + stop.signum)
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
