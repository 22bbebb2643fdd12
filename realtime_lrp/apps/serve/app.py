"""The web application: the page, its assets, ``/ws`` and ``/stats``, one :class:`Client` per connection."""
from __future__ import annotations

import asyncio
import json
import time
from contextlib import suppress
from dataclasses import asdict, dataclass, field
from importlib import resources
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from realtime_lrp.apps.serve.auth import allowed, cookie_name, same_origin
from realtime_lrp.apps.serve.protocol import (
    CLOSE_IDLE,
    CLOSE_INTERNAL,
    CLOSE_POLICY,
    CLOSE_TRY_LATER,
    CLOSE_UNSUPPORTED,
    LAYOUTS,
    METHODS,
    DecodeBudget,
    Limits,
    ProtocolError,
    RateLimit,
    Settings,
    decode_frame,
    frame_id,
    parse_text,
    shown,
)
from realtime_lrp.apps.serve.worker import Job, Notice, Stream, Worker
from realtime_lrp.lrp.presets import PRESET_NAMES
from realtime_lrp.pipeline import render

if TYPE_CHECKING:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.websockets import WebSocket

ASSETS = {"/serve.js": ("serve.js", "text/javascript"), "/serve.css": ("serve.css", "text/css")}


PAGE_POLICY = ("default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob:; connect-src 'self';"
               " style-src 'self'; script-src 'self'; frame-ancestors 'none'; base-uri 'none'")


class Outbox:
    """A client's next reply: one slot on the event loop, the newest reply wins.

    :meth:`put` may be called from any thread. A client that does not read its replies
    keeps losing the older ones (counted in ``replaced``); nothing queues up behind it.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.replaced = 0
        self._item: bytes | str | None = None
        self._ready = asyncio.Event()

    def put(self, item: bytes | str) -> None:
        """Make ``item`` the next reply (thread-safe; a no-op once the loop has closed)."""
        with suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self._put, item)

    def _put(self, item: bytes | str) -> None:
        if self._item is not None:
            self.replaced += 1
        self._item = item
        self._ready.set()

    async def get(self) -> bytes | str:
        """Wait for the next reply and take it."""
        await self._ready.wait()
        self._ready.clear()
        item, self._item = self._item, None
        return item


@dataclass
class Arrival:
    """A frame as it arrived, not decoded yet."""

    frame_id: int
    data: bytes
    received: float


@dataclass(eq=False)
class Client:
    """One connected page (or other WebSocket client) and its counters for ``/stats``.

    Its newest undecoded frame waits in ``inbox`` (one slot: a newer frame replaces it) for the
    client's decoding task; ``gone`` is set as soon as the receiving side sees the client leave.
    """

    number: int
    peer: str
    outbox: Outbox
    settings: Settings
    rate: RateLimit
    texts: RateLimit
    budget: DecodeBudget
    stream: Stream | None = None
    reset: bool = False
    inbox: Arrival | None = None
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    gone: bool = False
    received: int = 0
    skipped_newer: int = 0
    skipped_rate: int = 0
    sent: int = 0

    def stats(self) -> dict[str, Any]:
        """This client's counters."""
        return {"id": self.number, "peer": self.peer, "received": self.received,
                "explained": self.stream.explained if self.stream else 0, "skipped_newer": self.skipped_newer,
                "skipped_rate": self.skipped_rate, "replaced": self.outbox.replaced, "sent": self.sent}


def _skipped(ident: int, reason: str) -> str:
    return json.dumps({"type": "skipped", "id": ident, "reason": reason})


class Hub:
    """The web application: the page, ``/ws``, ``/stats``, and who may use them.

    ``kiosk`` is the stream of a server-side source (or None): its replies go to every
    connected page, and pages may not send frames or change settings.
    """

    def __init__(self, worker: Worker, settings: Settings, limits: Limits, token: str | None, secure: bool,
                 device: str, source: str | None = None, notice: Notice | None = None, *, port: int = 0,
                 loopback: bool = True) -> None:
        self.worker = worker
        self.settings = settings
        self.limits = limits
        self.token = token
        self.cookie = cookie_name(port)
        self.loopback = loopback
        self.secure = secure
        self.device = device
        self.source = source
        self.notice = notice
        self.clients: list[Client] = []
        self.kiosk: Stream | None = None
        self.served = 0
        card = worker.base.card
        h, w = worker.base.size
        self.size = (w, h)
        self.model = f"{card['arch']} ({card.get('dataset') or 'unknown data'}, {len(card['classes'])} classes)"

    # -- who gets in ---------------------------------------------------------------------
    def allowed(self, headers: Mapping[str, str], query: Mapping[str, str], cookies: Mapping[str, str]) -> bool:
        """Whether a request may use this server (:func:`~realtime_lrp.apps.serve.auth.allowed`)."""
        return allowed(self.token, self.loopback, self.cookie, headers, query, cookies)

    # -- kiosk ---------------------------------------------------------------------------
    def kiosk_stream(self) -> Stream:
        """The stream of the server-side source: each reply is broadcast to every page."""
        self.kiosk = Stream(self.broadcast)
        return self.kiosk

    def broadcast(self, item: bytes | str) -> None:
        """Give ``item`` to every connected client (called from the worker thread)."""
        for client in list(self.clients):
            client.outbox.put(item)

    @property
    def viewers(self) -> int:
        """Clients connected now."""
        return len(self.clients)

    # -- the application -----------------------------------------------------------------
    def app(self) -> Starlette:
        """The Starlette application."""
        from starlette.applications import Starlette
        from starlette.routing import Route, WebSocketRoute

        routes = [Route("/", self.page), Route("/stats", self.stats)]
        routes += [Route(path, self.asset) for path in ASSETS]
        return Starlette(routes=[*routes, WebSocketRoute("/ws", self.websocket)])

    def _forbidden(self) -> Response:
        from starlette.responses import PlainTextResponse

        return PlainTextResponse("403 Forbidden: open the URL that rtlrp serve printed when it started"
                                 " (it carries a token).\n", status_code=403)

    def _check(self, request: Request) -> bool:
        return self.allowed(request.headers, request.query_params, request.cookies)

    async def page(self, request: Request) -> Response:
        """The page; a valid ``?token=`` also sets the port's cookie, so the page's own requests carry it
        (and the page can drop the token from its address)."""
        from starlette.responses import HTMLResponse

        if not self._check(request):
            return self._forbidden()
        response = HTMLResponse(_asset("serve.html"), headers=_page_headers())
        if self.token is not None:
            response.set_cookie(self.cookie, self.token, httponly=True, samesite="strict", secure=self.secure)
        return response

    async def asset(self, request: Request) -> Response:
        """The page's script and style sheet."""
        from starlette.responses import Response

        if not self._check(request):
            return self._forbidden()
        name, media_type = ASSETS[request.url.path]
        return Response(_asset(name), media_type=media_type, headers=_page_headers())

    async def stats(self, request: Request) -> Response:
        """Counters as JSON: frames explained, frames/s, each client's frames and drops."""
        from starlette.responses import JSONResponse

        if not self._check(request):
            return self._forbidden()
        return JSONResponse({
            "mode": "kiosk" if self.kiosk else "camera", "device": self.device, "frames": self.worker.frames,
            "batches": self.worker.batches, "fps": round(self.worker.fps, 2),
            "clients": [c.stats() for c in self.clients],
        })

    def hello(self) -> dict[str, Any]:
        """What a page needs to know first: mode, processing size, device, settings, their choices and limits."""
        return {
            "type": "hello", "mode": "kiosk" if self.kiosk else "camera", "source": self.source,
            "size": list(self.size), "device": self.device, "model": self.model,
            "settings": asdict(self.settings), "presets": list(PRESET_NAMES), "methods": list(METHODS),
            "cmaps": list(render.colormaps()), "layouts": list(LAYOUTS),
            "max_fps": self.limits.max_fps, "max_side": self.limits.max_side,
            "max_message": self.limits.max_message,
        }

    async def websocket(self, ws: WebSocket) -> None:
        """One client: hello, then its messages until it leaves or breaks the protocol.

        Three tasks per client: receiving (cheap checks only, so it keeps up with any sender and
        sees the client leave at once), decoding (the newest frame, in a thread) and sending.
        """
        from starlette.websockets import WebSocketDisconnect

        if not self.allowed(ws.headers, ws.query_params, ws.cookies) or not same_origin(ws.headers):
            await ws.close(code=CLOSE_POLICY)  # before accept: the handshake is answered with HTTP 403
            return
        await ws.accept()
        if len(self.clients) >= self.limits.max_clients:
            await ws.close(CLOSE_TRY_LATER, f"the server has its {self.limits.max_clients} clients; try later")
            return
        self.served += 1
        peer = f"{ws.client.host}:{ws.client.port}" if ws.client else "?"
        limits = self.limits
        client = Client(self.served, peer, Outbox(asyncio.get_running_loop()), self.settings,
                        RateLimit(limits.max_fps), RateLimit(limits.max_texts), DecodeBudget(limits.decode_share))
        if self.kiosk is None:
            client.stream = Stream(client.outbox.put)
        self.clients.append(client)
        tasks: list[asyncio.Task] = []
        failure: ProtocolError | None = None
        try:
            await ws.send_text(json.dumps(self.hello()))
            tasks = [asyncio.create_task(self._receive(ws, client)), asyncio.create_task(self._decode(client))]
            sender = asyncio.create_task(self._send(ws, client))
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            tasks.append(sender)
            for task in done:
                if task.exception() is not None:
                    raise task.exception()
        except ProtocolError as exc:
            failure = exc
        except (WebSocketDisconnect, OSError):
            pass  # the client left while the hello was on its way
        except Exception as exc:  # noqa: BLE001 - one client's failure must not take the server down
            failure = ProtocolError(CLOSE_INTERNAL, f"server error: {type(exc).__name__}: {exc}"[:120])
            if self.notice is not None:
                self.notice(f"client {client.number} ({peer}): {failure.reason}")
        finally:
            client.gone = True
            client.inbox = None
            self.clients.remove(client)
            if client.stream is not None:
                self.worker.discard(client.stream)
            for task in tasks:
                task.cancel()
            for task in tasks:
                with suppress(asyncio.CancelledError, Exception):
                    await task
        if failure is not None:
            with suppress(Exception):
                await ws.close(failure.code, _reason(failure.reason))

    async def _send(self, ws: WebSocket, client: Client) -> None:
        """Send the client's replies, newest first-come; ends when the connection does."""
        try:
            while True:
                item = await client.outbox.get()
                if isinstance(item, bytes):
                    await ws.send_bytes(item)
                else:
                    await ws.send_text(item)
                client.sent += 1
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - the client went away; the receiving side ends the connection
            return

    async def _receive(self, ws: WebSocket, client: Client) -> None:
        """Take the client's messages as they come; returns when it leaves, raises when it breaks the rules."""
        idle = None if self.kiosk is not None else self.limits.idle_seconds
        while True:
            try:
                message = await asyncio.wait_for(ws.receive(), idle)
            except asyncio.TimeoutError:
                raise ProtocolError(CLOSE_IDLE, f"idle for {idle:g} s; the page reconnects when it has a frame"
                                    " to send") from None
            if message["type"] == "websocket.disconnect":
                client.gone = True
                return
            if message.get("bytes") is not None:
                self._frame(client, message["bytes"])
            elif message.get("text") is not None:
                if not client.texts.allow(time.monotonic()):
                    if client.texts.flooding:
                        raise ProtocolError(CLOSE_POLICY, f"far over {self.limits.max_texts:g} text messages/s")
                    continue
                self._text(client, message["text"])

    def _frame(self, client: Client, data: bytes) -> None:
        """Put a frame in the client's inbox (the newest wins), or answer it "skipped" if over the rate."""
        if self.kiosk is not None:
            raise ProtocolError(CLOSE_POLICY, "kiosk mode: this server explains its own source and takes no frames")
        ident = frame_id(data)
        client.received += 1
        now = time.monotonic()
        if not client.rate.allow(now):
            if client.rate.flooding:
                raise ProtocolError(CLOSE_POLICY, f"sending far over {self.limits.max_fps:g} frames/s")
            client.skipped_rate += 1
            client.outbox.put(_skipped(ident, f"over {self.limits.max_fps:g} frames/s"))
            return
        old, client.inbox = client.inbox, Arrival(ident, data, now)
        if old is not None:
            client.skipped_newer += 1
            client.outbox.put(_skipped(old.frame_id, "a newer frame came"))
        client.arrived.set()

    async def _decode(self, client: Client) -> None:
        """Decode the client's newest frame while it is still there, within its decoding budget; queue it."""
        from starlette.concurrency import run_in_threadpool

        while True:
            await client.arrived.wait()
            client.arrived.clear()
            arrival, client.inbox = client.inbox, None
            if arrival is None or client.gone:
                continue
            if not client.budget.left(time.monotonic()):
                raise ProtocolError(CLOSE_POLICY, f"its frames took over {self.limits.decode_share:g} s of decoding"
                                    " a second")
            spent: list[float] = []
            try:
                image = await run_in_threadpool(_decode_timed, arrival.data, self.limits, spent)
            finally:
                client.budget.spend(sum(spent))
            if client.gone:
                return
            job = Job(arrival.frame_id, image, client.settings, arrival.received, reset=client.reset)
            client.reset = False
            old = self.worker.submit(client.stream, job)
            if old is not None:
                client.skipped_newer += 1
                client.outbox.put(_skipped(old.frame_id, "a newer frame came"))

    def _text(self, client: Client, text: str) -> None:
        message = parse_text(text)
        kind = message.get("type")
        if kind not in ("settings", "reset"):
            raise ProtocolError(CLOSE_UNSUPPORTED, f"unknown message type {shown(kind)}")
        if self.kiosk is not None:
            raise ProtocolError(CLOSE_POLICY, "kiosk mode: the server's settings are fixed")
        if kind == "settings":
            client.settings = client.settings.updated(message)
        else:
            client.reset = True


def _decode_timed(data: bytes, limits: Limits, spent: list[float]) -> np.ndarray:
    """:func:`decode_frame`, adding the CPU time it took in this thread to ``spent`` (a busy machine
    makes decoding take longer, not cost more)."""
    began = time.thread_time()
    try:
        return decode_frame(data, limits)
    finally:
        spent.append(time.thread_time() - began)


def _reason(text: str) -> str:
    """A close reason within the protocol's 123 bytes."""
    data = text.encode()
    return text if len(data) <= 123 else data[:120].decode(errors="ignore") + "..."


def _asset(name: str) -> bytes:
    return resources.files("realtime_lrp").joinpath("assets", name).read_bytes()


def _page_headers() -> dict[str, str]:
    return {"Content-Security-Policy": PAGE_POLICY, "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}
