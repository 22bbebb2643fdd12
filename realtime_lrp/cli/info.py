"""``rtlrp presets``: the rule sets a user can pick."""
from __future__ import annotations

import click

from realtime_lrp.cli.group import cli
from realtime_lrp.lrp.presets import PRESET_NAMES


@cli.command("presets")
def presets_command() -> None:
    """List the LRP rule presets and their zennit equivalents."""
    from realtime_lrp.lrp.presets import PRESETS

    for name in PRESET_NAMES:
        preset = PRESETS[name]
        click.echo(f"{name:20s} {preset.description}  [{preset.reference}]")
