"""The ``rtlrp`` command line.

Each command imports torch, OpenCV and the engine inside its body, so ``rtlrp --help``
and ``rtlrp --version`` stay fast.
"""
from __future__ import annotations

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


def main() -> None:
    """Entry point of the ``rtlrp`` console script."""
    cli()


if __name__ == "__main__":
    main()
