"""The ``rtlrp`` click group and its global ``--debug`` flag; each command module adds its commands to it.

Commands that need an optional extra (:data:`EXTRAS`) check for it before they start, so a
plain ``pip install realtime-lrp`` says in one line what to install instead of failing later.
"""
from __future__ import annotations

import importlib.util
import os

import click

_debug = {"on": os.environ.get("RTLRP_DEBUG", "") not in ("", "0")}


# command -> (extra, modules it imports, the option that needs them or None for always)
EXTRAS: dict[str, tuple[str, tuple[str, ...], str | None]] = {
    "serve": ("serve", ("starlette", "uvicorn", "websockets"), None),
    "serve-bench": ("serve", ("websockets",), None),
    "evaluate": ("eval", ("matplotlib",), "--plot"),
}


def missing_extra(command: str, args: list[str]) -> str | None:
    """The one line saying what to install for ``command`` with ``args``, or None if nothing is missing."""
    if command not in EXTRAS or any(a in ("-h", "--help") for a in args):
        return None
    extra, modules, option = EXTRAS[command]
    if option is not None and not any(a == option or a.startswith(option + "=") for a in args):
        return None
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if not missing:
        return None
    what = f"rtlrp {command} {option}" if option else f"rtlrp {command}"
    return (f"{what} needs the {extra} extra ({', '.join(missing)} not installed):"
            f" pip install 'realtime-lrp[{extra}]'")


class _Group(click.Group):
    def resolve_command(self, ctx: click.Context, args: list[str]):
        name, command, rest = super().resolve_command(ctx, args)
        problem = missing_extra(name or "", rest)
        if problem is not None:
            raise click.ClickException(problem)
        return name, command, rest


def _set_debug(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    _debug["on"] = _debug["on"] or value


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]},
             epilog="Exit codes: 0 done, 1 error, 2 usage error, 3 done but the input video was truncated,"
                    " 130/143/129 stopped by SIGINT/SIGTERM/SIGHUP.")
@click.version_option(package_name="realtime-lrp", prog_name="rtlrp")
@click.option("--debug", is_flag=True, expose_value=False, is_eager=True, callback=_set_debug,
              help="Show the full traceback of an unexpected error (also RTLRP_DEBUG=1).")
def cli() -> None:
    """Real-time LRP heatmaps for CNN image classifiers (VGG, ResNet, ResNeXt, Wide-ResNet, AlexNet)."""
