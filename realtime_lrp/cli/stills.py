"""``rtlrp explain`` and ``rtlrp sample``: still images, and the sample video and stills of the demo."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from realtime_lrp.cli.group import cli
from realtime_lrp.cli.options import build_processor, check_output, processing_options, stderr_console


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
    from realtime_lrp.apps.stills import explain_images, read_images
    from realtime_lrp.media.reader import InputError
    from realtime_lrp.pipeline.processor import ProcessingError
    from realtime_lrp.util import signals
    from realtime_lrp.util.atomic import OutputError, check_writable

    console = stderr_console()
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
    from realtime_lrp.apps.sample import write_sample, write_stills
    from realtime_lrp.media.writer import WriterError
    from realtime_lrp.util.atomic import OutputError

    check_output(out)
    try:
        frames = write_sample(out, size=size, fps=fps, seconds_per_item=seconds, count=items)
        click.echo(f"Wrote {frames} frames ({size}x{size}, {fps:g} fps) to {out}")
        if stills is not None:
            write_stills(stills, items)
            click.echo(f"Wrote {items} item images to {stills}")
    except (WriterError, OutputError) as exc:
        raise click.ClickException(str(exc)) from None
