"""The ``rtlrp`` click group and its global ``--debug`` flag; each command module adds its commands to it."""
from __future__ import annotations

import os

import click

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
