"""The one top-level handler: every ending of a command becomes an exit code and at most one line.

Exit codes: 0 done, 1 error, 2 usage error, 3 done but the input ended before the frames
it announced, 128 + N stopped by signal N (130 Ctrl-C, 143 SIGTERM, 129 SIGHUP).
"""
from __future__ import annotations

import sys

import click

from realtime_lrp.cli import bench, evaluate, info, live, serve, stills, train, video  # noqa: F401 (they add their commands)
from realtime_lrp.cli.group import _debug, cli


def describe(error: BaseException) -> str:
    """One line for an error no command turned into a message of its own."""
    from realtime_lrp.pipeline.processor import out_of_memory

    if out_of_memory(error):
        return "out of memory: try a smaller --size or --batch"
    if isinstance(error, OSError):
        where = f" {error.filename}" if error.filename else ""
        return f"cannot access{where}: {error.strerror or error}"
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``rtlrp`` console script: run a command, turn every ending into an exit code."""
    from realtime_lrp.util import signals

    signals.install()
    try:
        code = cli.main(args=argv, prog_name="rtlrp", standalone_mode=False)
    except click.exceptions.Abort as exc:  # click turns KeyboardInterrupt (our signals too) into Abort
        signals.ignore_further()
        cause = exc.__cause__ or exc.__context__
        interrupt = cause if isinstance(cause, signals.Interrupted) else signals.Interrupted()
        click.echo(f"rtlrp: interrupted by {interrupt.name}; outputs are only ever replaced when complete", err=True)
        sys.exit(interrupt.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except SystemExit:
        raise
    except Exception as exc:
        if _debug["on"]:
            raise
        command = next((a for a in (argv if argv is not None else sys.argv[1:]) if not a.startswith("-")), "rtlrp")
        click.echo(f"rtlrp {command}: {describe(exc)} (--debug shows the traceback)", err=True)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)
