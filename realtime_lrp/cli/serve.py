"""``rtlrp serve`` and ``rtlrp serve-bench``: a browser's camera explained by this machine, and its load test."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from realtime_lrp.cli.group import cli
from realtime_lrp.cli.options import build_processor, comma_list, processing_options, stderr_console


@cli.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; the page needs the token in the URL printed at start-up.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535), help="Port; 0 picks a free one.")
@click.option("--tls", nargs=2, default=None, metavar="CERT KEY",
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Serve HTTPS with this PEM certificate and key (browsers give the camera to remote pages only"
                   " over HTTPS).")
@click.option("--source", default=None, metavar="SOURCE",
              help="Kiosk mode: explain this server-side camera index, device, video file (played in a loop) or"
                   " stream URL, and show it to every page that connects.")
@click.option("--max-fps", type=click.FloatRange(min=0.1), default=30.0, show_default=True,
              help="Frames per second a client may send; frames over it are answered 'skipped', and a client that"
                   " keeps sending at more than twice it is closed.")
@click.option("--max-side", type=click.IntRange(min=8), default=1024, show_default=True,
              help="Largest width or height of a frame a client may send, in pixels.")
@click.option("--batch", type=click.IntRange(min=1), default=8, show_default=True,
              help="Most clients whose frames are explained together in one batch.")
@click.option("--idle-timeout", type=click.FloatRange(min=1), default=300.0, show_default=True,
              help="Seconds a page that sends nothing keeps its place (kiosk pages only watch: no limit).")
@click.option("--no-token", is_flag=True,
              help="Loopback only: serve without a token, so every user of this machine can connect.")
@processing_options
def serve_command(host: str, port: int, tls: tuple[Path, Path] | None, source: str | None, max_fps: float,
                  max_side: int, batch: int, idle_timeout: float, no_token: bool, **options: object) -> None:
    """Live LRP in the browser: pages send camera frames over a WebSocket, this machine explains them."""
    from realtime_lrp.apps.serve.auth import is_loopback
    from realtime_lrp.apps.serve.protocol import Limits
    from realtime_lrp.apps.serve.server import LrpServer, ServeError
    from realtime_lrp.media.capture import CameraError, parse_camera
    from realtime_lrp.pipeline.processor import ProcessingError
    from realtime_lrp.util import signals

    console = stderr_console()
    if no_token and not is_loopback(host):
        raise click.UsageError(f"--no-token is for loopback addresses only; {host} is reachable from other"
                               " machines, which need the token")
    if no_token:
        console.print("Warning: --no-token: every user of this machine can use this server"
                      f"{' and watch its source' if source else ''}.", style="yellow", soft_wrap=True)
    try:
        spec = parse_camera(source) if source is not None else None
    except CameraError as exc:
        raise click.ClickException(str(exc)) from None
    processor = build_processor(options, console)
    try:
        server = LrpServer(processor, host=host, port=port, tls=tls or None, source=spec,
                           limits=Limits(max_fps=max_fps, max_side=max_side, idle_seconds=idle_timeout),
                           batch=batch, require_token=not no_token,
                           notice=lambda msg: console.print(msg, style="yellow"))
    except ServeError as exc:
        raise click.ClickException(str(exc)) from None
    with server, signals.Deferred() as stop:
        try:
            server.start()
        except (ServeError, ProcessingError) as exc:
            raise click.ClickException(str(exc)) from None
        what = f"explaining {spec} for every page" if spec is not None else "explaining the pages' cameras"
        console.print(f"rtlrp serve: {server.hub.model} on {server.device}, {what}: open {server.url}"
                      "  (Ctrl-C stops)", soft_wrap=True)
        if server.hub.loopback:
            query = f"?token={server.token}" if server.token else ""
            console.print(f"From another machine: ssh -L {server.port}:localhost:{server.port} THIS-HOST,"
                          f" then open http://localhost:{server.port}/{query}", soft_wrap=True)
        outcome = server.run(stop)
    if outcome.error is not None:
        raise click.ClickException(outcome.error)
    frames, clients = server.worker.frames, server.hub.served
    console.print(f"Stopped by {signals.Interrupted(outcome.signum).name}: {frames} frame{'s' * (frames != 1)}"
                  f" explained for {clients} client{'s' * (clients != 1)}.", soft_wrap=True)
    sys.exit(128 + outcome.signum)


@cli.command("serve-bench")
@click.argument("url")
@click.option("--clients", default="1,4,8", show_default=True, callback=comma_list(int), metavar="N,N,...",
              help="Numbers of concurrent clients, one measurement each.")
@click.option("--seconds", type=click.FloatRange(min=1), default=20.0, show_default=True,
              help="How long each measurement sends frames.")
def serve_bench_command(url: str, clients: list[int], seconds: float) -> None:
    """Measure a running rtlrp serve at URL: round-trip latency and frames/s for N clients sending frames."""
    from rich.console import Console

    from realtime_lrp.apps.serve.bench import BenchError, run_load, summary_table

    if min(clients) < 1 or max(clients) > 64:
        raise click.BadParameter("client counts must be between 1 and 64", param_hint="--clients")
    console = stderr_console()
    results = []
    for n in clients:
        console.print(f"{n} client{'s' if n > 1 else ''} for {seconds:g} s ...")
        try:
            results.append(run_load(url, n, seconds))
        except BenchError as exc:
            raise click.ClickException(str(exc)) from None
    Console(highlight=False, width=None if sys.stdout.isatty() else 160).print(summary_table(results, url))
    failed = [f"{r.clients} clients: {e}" for r in results for e in r.errors]
    if failed:
        raise click.ClickException(f"{len(failed)} clients failed, first: {failed[0]}")
