"""``rtlrp presets``: the rule sets a user can pick."""
from __future__ import annotations

import click

from realtime_lrp.cli.group import cli
from realtime_lrp.lrp.presets import AUTO, AUTO_DESCRIPTION, PRESET_NAMES


@cli.command("presets")
@click.option("--rules", "show_rules", is_flag=True, help="Also list each preset's rule for every kind of layer.")
def presets_command(show_rules: bool) -> None:
    """List the LRP rule presets and their zennit equivalents."""
    from realtime_lrp.lrp.presets import PRESETS

    click.echo(f"{AUTO:20s} {AUTO_DESCRIPTION}  [the default]")
    for name in PRESET_NAMES:
        preset = PRESETS[name]
        click.echo(f"{name:20s} {preset.description}  [{preset.reference}]")
        if show_rules:
            first = "first conv" if preset.first_conv_only else "first conv/linear"
            for kind, spec in preset.rules.items():
                click.echo(f"    {kind:26s} {spec}")
            for kind, spec in preset.first.items():
                click.echo(f"    {kind + ' (' + first + ')':26s} {spec}")
