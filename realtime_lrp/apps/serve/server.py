"""``LrpServer``: binds the socket, starts the worker and uvicorn, and stops them cleanly."""
from __future__ import annotations

import errno
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from realtime_lrp.apps.serve.app import Hub
from realtime_lrp.apps.serve.auth import is_loopback, new_token
from realtime_lrp.apps.serve.kiosk import Kiosk
from realtime_lrp.apps.serve.protocol import Limits, Settings
from realtime_lrp.apps.serve.worker import Notice, Worker, device_name
from realtime_lrp.lrp.presets import PRESET_NAMES
from realtime_lrp.media.capture import CameraError, CameraSpec
from realtime_lrp.pipeline import render
from realtime_lrp.pipeline.processor import FrameProcessor
from realtime_lrp.util.signals import Deferred


class ServeError(RuntimeError):
    """The server cannot start or had to stop (port in use, bad certificate, source failed); one line."""


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host``:``port``; ServeError in one line if it cannot be had."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ServeError(f"cannot listen on {host}: {exc.strerror or exc}") from None
    family, kind, proto, _name, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ServeError(f"port {port} on {host} is already in use: stop the other server or choose"
                             " another --port") from None
        if exc.errno == errno.EACCES:
            raise ServeError(f"no permission to listen on port {port} (ports below 1024 need root):"
                             " choose another --port") from None
        raise ServeError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def check_tls(cert: Path, key: Path) -> None:
    """Load the certificate and key once, so a bad pair is one line before the server starts.

    An encrypted key is refused rather than prompted for (the server may run unattended).
    """
    def encrypted() -> str:
        raise ServeError(f"cannot use --tls {cert} {key}: the key is encrypted; give an unencrypted PEM key"
                         f" (openssl pkey -in {key} -out plain.pem)")

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(str(cert), str(key), password=encrypted)
    except ssl.SSLError as exc:
        why = exc.reason or str(exc)
        raise ServeError(f"cannot use --tls {cert} {key}: {str(why).lower().replace('_', ' ')} (give a PEM"
                         " certificate and the PEM private key that belongs to it)") from None
    except OSError as exc:
        raise ServeError(f"cannot use --tls {cert} {key}: {exc.strerror or exc}") from None


@dataclass
class Outcome:
    """How :meth:`LrpServer.run` ended: a signal number, or an error line, or neither."""

    signum: int | None = None
    error: str | None = None


class LrpServer:
    """``rtlrp serve``: the socket, the worker, the optional kiosk source and uvicorn in a thread.

    The socket is bound and the certificate checked in the constructor (ServeError, one
    line); :meth:`start` warms up the processor and starts serving; :meth:`run` (or
    :meth:`wait` in tests) serves until a signal or a failure; :meth:`close` stops
    everything. ``token`` defaults to a fresh random one on every address; ``require_token=False``
    serves without one, on loopback only (ServeError elsewhere).
    """

    def __init__(self, processor: FrameProcessor, *, host: str = "127.0.0.1", port: int = 8000,
                 tls: tuple[Path, Path] | None = None, source: CameraSpec | None = None,
                 limits: Limits = Limits(), batch: int = 8, token: str | None = None,
                 require_token: bool = True, notice: Notice | None = None) -> None:
        self.host = host
        self.tls = tls
        self.limits = limits
        self.notice = notice
        loopback = is_loopback(host)
        if not require_token and not loopback:
            raise ServeError(f"--no-token is for loopback addresses only: {host} can be reached from other"
                             " machines, which need the token")
        self.token = (token or new_token()) if require_token else None
        if tls is not None:
            check_tls(*tls)
        self.socket = bind(host, port)
        self.port = self.socket.getsockname()[1]
        own_cmap = processor.cmap if processor.cmap != render.default_cmap(processor.signed) else None
        preset = processor.preset if processor.preset in PRESET_NAMES else Settings.preset  # a CAM method's "auto"
        settings = Settings(preset, processor.top_k, own_cmap, processor.layout, processor.alpha, processor.method)
        self.worker = Worker(processor, batch=batch, notice=notice)
        self.device = device_name(processor)
        self.hub = Hub(self.worker, settings, limits, self.token, tls is not None, self.device,
                       str(source) if source is not None else None, notice, port=self.port, loopback=loopback)
        self.kiosk = None
        if source is not None:
            self.kiosk = Kiosk(source, self.worker, self.hub.kiosk_stream(), settings,
                               lambda: self.hub.viewers, self._failed)
        self._failure = threading.Event()
        self._server = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The address to open, with the token where one is needed."""
        host = self.host
        if host in ("0.0.0.0", "::", ""):
            host = socket.gethostname()
        elif ":" in host:
            host = f"[{host}]"
        query = f"?token={self.token}" if self.token else ""
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}/{query}"

    def start(self) -> None:
        """Warm up the processor, open the kiosk source, and start serving in a thread."""
        import uvicorn

        self.worker.start()
        if self.kiosk is not None:
            try:
                self.kiosk.start()
            except CameraError as exc:
                raise ServeError(str(exc)) from None
        config = uvicorn.Config(
            self.hub.app(), log_level="warning", access_log=False, lifespan="off", server_header=False,
            ws_max_size=self.limits.max_message, ws_ping_interval=20.0, ws_ping_timeout=20.0,
            ws_per_message_deflate=False,  # JPEGs do not compress; 2 MiB of zeros would be 2 KB on the wire
            timeout_graceful_shutdown=3,
            ssl_certfile=str(self.tls[0]) if self.tls else None, ssl_keyfile=str(self.tls[1]) if self.tls else None)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._serve, name="rtlrp serve http", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        if not self._server.started:
            raise ServeError(f"the server did not start on {self.host}:{self.port}")

    def _serve(self) -> None:
        try:
            self._server.run(sockets=[self.socket])
        except BaseException:  # noqa: BLE001 - reported as a failure by run()
            self._failed()

    def _failed(self) -> None:
        self._failure.set()

    def run(self, stop: Deferred) -> Outcome:
        """Serve until a signal (``stop``) or a failure, then close; how it ended."""
        try:
            while not stop.requested and not self._failure.is_set() and self._thread.is_alive():
                stop.event.wait(0.2)
        finally:
            self.close()
        if stop.requested:
            return Outcome(signum=stop.signum)
        if self.kiosk is not None and self.kiosk.error:
            return Outcome(error=self.kiosk.error)
        return Outcome(error="the web server stopped unexpectedly")

    def close(self) -> None:
        """Stop serving (open connections get close code 1012), then the source and the worker."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None and self._thread.is_alive():
            self._thread.join(15)
        if self.kiosk is not None:
            self.kiosk.stop()
        self.worker.stop()
        self.socket.close()

    def __enter__(self) -> "LrpServer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
