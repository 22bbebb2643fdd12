"""``rtlrp serve``: live LRP explanations in a browser, with the user's camera and the server's device.

One process serves a page (``realtime_lrp/assets/serve.html``, ``serve.js``, ``serve.css``:
no build step, nothing fetched from the internet) and a WebSocket at ``/ws``. The page
sends camera frames, downscaled to the processing size and JPEG-encoded; the server
explains them and sends back the rendered frame with its label. With a server-side
``source`` (kiosk mode) the server explains that camera or file instead and every
connected page just watches.

The protocol on ``/ws`` (numbers are big-endian):

* server → client, text JSON: ``hello`` once (mode, processing size, device, settings,
  limits); ``skipped`` (``id``, ``reason``) for a frame that was not explained because a
  newer one replaced it or the client was over its frame rate; ``error`` (``message``).
* client → server, binary: a 4-byte frame id, then one JPEG image.
* client → server, text JSON: ``{"type": "settings", "preset", "top_k", "cmap", "layout",
  "alpha"}`` (any subset) and ``{"type": "reset"}`` (a new stream: forget the colour scale).
* server → client, binary: a 4-byte length L, L bytes of UTF-8 JSON (``id``, ``label``,
  ``server_fps``, ...), then the rendered frame as JPEG.

Flow control: the page keeps one frame in flight, so a slow link drops frames instead of
queueing them. The server keeps only the newest unexplained frame of each client and
only the newest unsent reply (a client that stops reading loses replies, nobody else
waits). One :class:`Worker` thread owns the processor and explains the newest frame of
every client in one batch per (preset, top-k) group. A message that breaks the protocol
closes that client's connection with a WebSocket close code and a reason; the others go on.

Who gets in: on any address but loopback a random token is required (``?token=`` in the
URL, then a cookie); without it HTTP requests and WebSocket handshakes get 403.
"""
from __future__ import annotations

import asyncio
import errno
import io
import ipaddress
import json
import platform
import secrets
import socket
import ssl
import threading
import time
from collections import OrderedDict
from contextlib import suppress
from dataclasses import asdict, dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping
from urllib.parse import urlsplit

import cv2
import numpy as np

from realtime_lrp import render
from realtime_lrp.capture import CameraError, CameraSpec, EndOfStream, LiveSource
from realtime_lrp.live import FpsMeter
from realtime_lrp.presets import PRESET_NAMES
from realtime_lrp.processor import FrameProcessor, ProcessingError
from realtime_lrp.signals import Deferred

if TYPE_CHECKING:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.websockets import WebSocket

Notice = Callable[[str], None]

CLOSE_UNSUPPORTED = 1003  # a kind of message this server does not take
CLOSE_INVALID = 1007      # a message whose content is broken (not JSON, not a JPEG, bad values)
CLOSE_POLICY = 1008       # against the rules (frames in kiosk mode)
CLOSE_TOO_BIG = 1009      # a frame or message over the limits
CLOSE_INTERNAL = 1011     # the server failed
CLOSE_TRY_LATER = 1013    # too many clients

COOKIE = "rtlrp_token"
KIOSK_SIDE = 640          # kiosk frames are shown at most this many pixels a side
JPEG_QUALITY = 85
ASSETS = {"/serve.js": ("serve.js", "text/javascript"), "/serve.css": ("serve.css", "text/css")}
PAGE_POLICY = ("default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob:; connect-src 'self';"
               " style-src 'self'; script-src 'self'; frame-ancestors 'none'; base-uri 'none'")


class ServeError(RuntimeError):
    """The server cannot start or had to stop (port in use, bad certificate, source failed); one line."""


class ProtocolError(Exception):
    """A client broke the protocol: its connection is closed with ``code`` and ``reason``."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass(frozen=True)
class Limits:
    """What one client may send: frames per second, pixels a side, bytes a message; and how many clients."""

    max_fps: float = 30.0
    max_side: int = 1024
    max_message: int = 2 * 1024 * 1024
    max_clients: int = 32


def needs_token(host: str) -> bool:
    """Whether a server bound to ``host`` must require a token: every address but loopback."""
    name = host.strip("[]").lower()
    if name == "localhost":
        return False
    try:
        return not ipaddress.ip_address(name).is_loopback
    except ValueError:
        return True  # a host name: it may resolve to any interface


@dataclass(frozen=True)
class Settings:
    """How a stream is explained and shown; ``cmap=None`` is the preset's default map."""

    preset: str = "epsilon-plus-flat"
    top_k: float = 0.02
    cmap: str | None = None
    layout: str = "overlay"
    alpha: float = 0.6

    def updated(self, message: Mapping[str, Any]) -> "Settings":
        """These settings with the fields of a ``settings`` message; bad values raise ProtocolError."""
        changes: dict[str, Any] = {}
        for key, value in message.items():
            if key == "type":
                continue
            if key == "preset" and value in PRESET_NAMES:
                changes[key] = value
            elif key in ("top_k", "alpha") and _is_number(value) and 0.0 <= value <= 1.0:
                changes[key] = float(value)
            elif key == "cmap" and (value is None or (isinstance(value, str) and value.lower() in render.colormaps())):
                changes[key] = None if value is None else value.lower()
            elif key == "layout" and value in render.LAYOUTS:
                changes[key] = value
            else:
                raise ProtocolError(CLOSE_INVALID, f"bad setting {key}={json.dumps(value)[:40]}")
        return replace(self, **changes)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value)


def frame_id(data: bytes) -> int:
    """The id at the head of a frame message; ProtocolError if there is no room for an image."""
    if len(data) < 7:
        raise ProtocolError(CLOSE_INVALID, f"a frame is a 4-byte id and a JPEG image; got {len(data)} bytes")
    return int.from_bytes(data[:4], "big")


def decode_frame(data: bytes, limits: Limits) -> np.ndarray:
    """The BGR image of a frame message; ProtocolError for anything but a JPEG within the limits.

    The size is read from the JPEG header before anything is decoded, so an oversized
    frame costs nothing; a truncated or corrupt JPEG is refused, not half-decoded.
    """
    from PIL import Image

    ident = frame_id(data)
    payload = data[4:]
    if not payload.startswith(b"\xff\xd8\xff"):
        raise ProtocolError(CLOSE_INVALID, f"frame {ident} is not a JPEG image")
    try:
        with Image.open(io.BytesIO(payload), formats=["JPEG"]) as image:
            w, h = image.size
            if max(w, h) > limits.max_side:
                raise ProtocolError(CLOSE_TOO_BIG, f"frame {ident} is {w}x{h}: at most {limits.max_side}"
                                                   " pixels a side")
            rgb = np.asarray(image.convert("RGB"))
    except ProtocolError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ProtocolError(CLOSE_INVALID, f"frame {ident} is not a readable JPEG image ({exc})"[:120]) from None
    return np.ascontiguousarray(rgb[:, :, ::-1])


def encode_result(meta: Mapping[str, Any], jpeg: bytes) -> bytes:
    """A result message: 4-byte length, the JSON of ``meta``, the JPEG."""
    head = json.dumps(meta, separators=(",", ":")).encode()
    return len(head).to_bytes(4, "big") + head + jpeg


def decode_result(data: bytes) -> tuple[dict[str, Any], bytes]:
    """``(meta, jpeg)`` of a result message (for clients written in Python: tests, ``serve-bench``)."""
    n = int.from_bytes(data[:4], "big")
    return json.loads(data[4:4 + n]), data[4 + n:]


def device_name(processor: FrameProcessor) -> str:
    """``NVIDIA H100 (CUDA, fp16)`` or ``AMD EPYC 7B13 (CPU, fp32, 1 thread)``: shown on the page."""
    import torch

    if processor.device.type == "cuda":
        return f"{torch.cuda.get_device_name(processor.device)} (CUDA, fp16)"
    cpu = platform.processor() or platform.machine()
    with suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    threads = torch.get_num_threads()
    return f"{cpu} (CPU, fp32, {threads} thread{'s' if threads != 1 else ''})"


class RateLimit:
    """At most ``rate`` frames a second on average, in bursts of up to one second's worth (a token bucket)."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.capacity = max(1.0, rate)
        self.tokens = self.capacity
        self.last = time.monotonic()

    def allow(self, now: float) -> bool:
        """Whether a frame arriving at ``now`` is within the rate (and count it if so)."""
        self.tokens = min(self.capacity, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


@dataclass
class Job:
    """One frame waiting for the worker, with the settings it is to be explained with."""

    frame_id: int
    image: np.ndarray
    settings: Settings
    received: float
    reset: bool = False


@dataclass(eq=False)
class Stream:
    """A sequence of frames explained with one colour scale: a browser client's, or the kiosk source's.

    ``deliver`` takes each reply (bytes: a result; str: JSON text) and must not block.
    ``scale`` and ``key`` belong to the worker thread; the counters are for ``/stats``.
    """

    deliver: Callable[[bytes | str], None]
    scale: render.StableScale = field(default_factory=render.StableScale)
    key: tuple[str, float] | None = None
    explained: int = 0


class Worker:
    """The one thread that owns the processor: newest frame of each stream → batch → replies.

    Frames wait in one slot per stream (a newer frame replaces the older one, which
    :meth:`submit` returns so its sender can be told). Each turn takes the waiting
    frames of up to ``batch`` streams, oldest first, and explains them in one call per
    (preset, top-k) group, with one processor per preset (built on first use, sharing the
    model). Colour scale, colour map, layout and alpha are applied per stream.
    """

    def __init__(self, processor: FrameProcessor, batch: int = 8, notice: Notice | None = None) -> None:
        self.base = processor
        self.batch = max(1, batch)
        self.notice = notice
        self._processors: dict[str, FrameProcessor] = {processor.preset: processor}
        self._pending: OrderedDict[Stream, Job] = OrderedDict()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="rtlrp serve worker", daemon=True)
        self.meter = FpsMeter(30)
        self.frames = 0
        self.batches = 0

    def start(self) -> None:
        """Run the first-call set-up, then start the thread."""
        h, w = self.base.size
        self.base.explain([np.zeros((h, w, 3), np.uint8)])
        self._thread.start()

    def stop(self) -> None:
        """Finish the batch in hand and end the thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(30)

    @property
    def fps(self) -> float:
        """Frames explained per second over the last 30 (all streams together)."""
        return self.meter.fps

    def submit(self, stream: Stream, job: Job) -> Job | None:
        """Queue ``job`` as ``stream``'s newest frame; the frame it replaced, if one was waiting."""
        with self._cond:
            old = self._pending.pop(stream, None)
            if old is not None and old.reset:
                job.reset = True
            self._pending[stream] = job
            self._cond.notify()
        return old

    def discard(self, stream: Stream) -> None:
        """Forget ``stream``'s waiting frame (its client left)."""
        with self._cond:
            self._pending.pop(stream, None)

    def _take(self) -> list[tuple[Stream, Job]] | None:
        with self._cond:
            while not self._pending and not self._stopping:
                self._cond.wait()
            if self._stopping:
                return None
            items = []
            while self._pending and len(items) < self.batch:
                items.append(self._pending.popitem(last=False))
            return items

    def _run(self) -> None:
        while (items := self._take()) is not None:
            groups: dict[tuple[str, float], list[tuple[Stream, Job]]] = {}
            for stream, job in items:
                groups.setdefault((job.settings.preset, job.settings.top_k), []).append((stream, job))
            self.batches += 1
            for key, group in groups.items():
                try:
                    self._explain(key, group)
                except Exception as exc:  # noqa: BLE001 - tell the clients, keep serving
                    message = str(exc) if isinstance(exc, ProcessingError) else f"{type(exc).__name__}: {exc}"
                    if self.notice is not None:
                        self.notice(f"could not explain {len(group)} frame(s): {message}")
                    for stream, _job in group:
                        stream.deliver(json.dumps({"type": "error", "message": message}))

    def _processor(self, preset: str) -> FrameProcessor:
        if preset not in self._processors:
            base = self.base
            self._processors[preset] = FrameProcessor(base.model, base.card, preset=preset, top_k=base.top_k,
                                                      target=base.target, size=base.size, device=str(base.device))
        return self._processors[preset]

    def _explain(self, key: tuple[str, float], group: list[tuple[Stream, Job]]) -> None:
        """Explain one (preset, top-k) group in one call, then render and send each stream's frame."""
        started = time.monotonic()
        processor = self._processor(key[0])
        processor.top_k = key[1]
        relevance, preds = processor.explain([job.image for _, job in group])
        explained = time.monotonic()
        for (stream, job), r, pred in zip(group, relevance, preds):
            if job.reset or stream.key != key:
                stream.scale.reset()  # a new stream, or maps of another method: another magnitude
                stream.key = key
            scale = stream.scale.update(r)[0]
            cmap = job.settings.cmap or render.default_cmap(processor.signed)
            image = render.render(job.image, r, scale, cmap, job.settings.layout, job.settings.alpha)
            jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])[1]
            self.frames += 1
            stream.explained += 1
            self.meter.tick(time.monotonic())
            meta = {
                "type": "result", "id": job.frame_id, "label": pred.label, "class": pred.name,
                "probability": round(pred.probability, 4), "explained": pred.explained_name,
                "width": int(image.shape[1]), "height": int(image.shape[0]),
                "preset": key[0], "top_k": key[1], "cmap": cmap, "layout": job.settings.layout,
                "batch": len(group), "explain_ms": round(1000 * (explained - started), 2),
                "wait_ms": round(1000 * (started - job.received), 2), "server_fps": round(self.fps, 2),
            }
            stream.deliver(encode_result(meta, jpeg.tobytes()))


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


@dataclass(eq=False)
class Client:
    """One connected page (or other WebSocket client) and its counters for ``/stats``."""

    number: int
    peer: str
    outbox: Outbox
    settings: Settings
    rate: RateLimit
    stream: Stream | None = None
    reset: bool = False
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
                 device: str, source: str | None = None, notice: Notice | None = None) -> None:
        self.worker = worker
        self.settings = settings
        self.limits = limits
        self.token = token
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
        """Token servers: the token in the query or the cookie. Loopback servers: a loopback Host header
        (so a page on another site cannot reach them through DNS rebinding)."""
        if self.token is None:
            host = urlsplit(f"//{headers.get('host', '')}").hostname or ""
            return not needs_token(host)
        given = query.get("token") or cookies.get(COOKIE) or ""
        return secrets.compare_digest(given.encode(), self.token.encode())

    @staticmethod
    def same_origin(headers: Mapping[str, str]) -> bool:
        """Whether a WebSocket handshake comes from this server's own page (or from a non-browser client)."""
        origin = headers.get("origin")
        return origin is None or urlsplit(origin).netloc == headers.get("host")

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
                                 " (on a non-local address it carries a token).\n", status_code=403)

    def _check(self, request: Request) -> bool:
        return self.allowed(request.headers, request.query_params, request.cookies)

    async def page(self, request: Request) -> Response:
        """The page; a valid ``?token=`` also sets the cookie, so the page's own requests carry it."""
        from starlette.responses import HTMLResponse

        if not self._check(request):
            return self._forbidden()
        response = HTMLResponse(_asset("serve.html"), headers=_page_headers())
        if self.token is not None:
            response.set_cookie(COOKIE, self.token, httponly=True, samesite="strict", secure=self.secure)
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
        """What a page needs to know first: mode, processing size, device, settings and limits."""
        return {
            "type": "hello", "mode": "kiosk" if self.kiosk else "camera", "source": self.source,
            "size": list(self.size), "device": self.device, "model": self.model,
            "settings": asdict(self.settings), "presets": list(PRESET_NAMES),
            "cmaps": list(render.colormaps()), "layouts": list(render.LAYOUTS),
            "max_fps": self.limits.max_fps, "max_side": self.limits.max_side,
            "max_message": self.limits.max_message,
        }

    async def websocket(self, ws: WebSocket) -> None:
        """One client: hello, then its messages until it leaves or breaks the protocol."""
        from starlette.websockets import WebSocketDisconnect

        if not self.allowed(ws.headers, ws.query_params, ws.cookies) or not self.same_origin(ws.headers):
            await ws.close(code=CLOSE_POLICY)  # before accept: the handshake is answered with HTTP 403
            return
        await ws.accept()
        if len(self.clients) >= self.limits.max_clients:
            await ws.close(CLOSE_TRY_LATER, f"the server has its {self.limits.max_clients} clients; try later")
            return
        self.served += 1
        peer = f"{ws.client.host}:{ws.client.port}" if ws.client else "?"
        client = Client(self.served, peer, Outbox(asyncio.get_running_loop()), self.settings,
                        RateLimit(self.limits.max_fps))
        if self.kiosk is None:
            client.stream = Stream(client.outbox.put)
        self.clients.append(client)
        sender: asyncio.Task | None = None
        failure: ProtocolError | None = None
        try:
            await ws.send_text(json.dumps(self.hello()))
            sender = asyncio.create_task(self._send(ws, client))
            await self._receive(ws, client)
        except ProtocolError as exc:
            failure = exc
        except (WebSocketDisconnect, OSError):
            pass  # the client left while the hello was on its way
        except Exception as exc:  # noqa: BLE001 - one client's failure must not take the server down
            failure = ProtocolError(CLOSE_INTERNAL, f"server error: {type(exc).__name__}: {exc}"[:120])
            if self.notice is not None:
                self.notice(f"client {client.number} ({peer}): {failure.reason}")
        finally:
            self.clients.remove(client)
            if client.stream is not None:
                self.worker.discard(client.stream)
            if sender is not None:
                sender.cancel()
                with suppress(asyncio.CancelledError, Exception):
                    await sender
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
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            if message.get("bytes") is not None:
                await self._frame(client, message["bytes"])
            elif message.get("text") is not None:
                self._text(client, message["text"])

    async def _frame(self, client: Client, data: bytes) -> None:
        from starlette.concurrency import run_in_threadpool

        if self.kiosk is not None:
            raise ProtocolError(CLOSE_POLICY, "kiosk mode: this server explains its own source and takes no frames")
        ident = frame_id(data)
        client.received += 1
        now = time.monotonic()
        if not client.rate.allow(now):
            client.skipped_rate += 1
            client.outbox.put(_skipped(ident, f"over {self.limits.max_fps:g} frames/s"))
            return
        image = await run_in_threadpool(decode_frame, data, self.limits)
        job = Job(ident, image, client.settings, now, reset=client.reset)
        client.reset = False
        old = self.worker.submit(client.stream, job)
        if old is not None:
            client.skipped_newer += 1
            client.outbox.put(_skipped(old.frame_id, "a newer frame came"))

    def _text(self, client: Client, text: str) -> None:
        if len(text) > 4096:
            raise ProtocolError(CLOSE_TOO_BIG, f"a text message of {len(text)} characters: at most 4096")
        try:
            message = json.loads(text)
        except ValueError:
            raise ProtocolError(CLOSE_INVALID, "a text message that is not JSON") from None
        kind = message.get("type") if isinstance(message, dict) else None
        if kind not in ("settings", "reset"):
            raise ProtocolError(CLOSE_UNSUPPORTED, f"unknown message type {json.dumps(kind)[:40]}")
        if self.kiosk is not None:
            raise ProtocolError(CLOSE_POLICY, "kiosk mode: the server's settings are fixed")
        if kind == "settings":
            client.settings = client.settings.updated(message)
        else:
            client.reset = True


def _reason(text: str) -> str:
    """A close reason within the protocol's 123 bytes."""
    data = text.encode()
    return text if len(data) <= 123 else data[:120].decode(errors="ignore") + "..."


def _asset(name: str) -> bytes:
    return resources.files("realtime_lrp").joinpath("assets", name).read_bytes()


def _page_headers() -> dict[str, str]:
    return {"Content-Security-Policy": PAGE_POLICY, "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}


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


def fit_side(image: np.ndarray, side: int) -> np.ndarray:
    """``image`` scaled down so neither side exceeds ``side`` pixels (aspect kept)."""
    h, w = image.shape[:2]
    if max(h, w) <= side:
        return image
    scale = side / max(h, w)
    return cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)


class Kiosk:
    """Feeds a server-side camera or file to the worker while anyone watches; files loop.

    A camera that fails (unplugged, after LiveSource's reconnect attempts) ends the
    server through ``on_error``, with the one-line reason in :attr:`error`.
    """

    def __init__(self, spec: CameraSpec, worker: Worker, stream: Stream, settings: Settings,
                 viewers: Callable[[], int], on_error: Callable[[], None]) -> None:
        self.spec = spec
        self.worker = worker
        self.stream = stream
        self.settings = settings
        self.viewers = viewers
        self.on_error = on_error
        self.error: str | None = None
        self._stop = threading.Event()
        self._source: LiveSource | None = None
        self._thread = threading.Thread(target=self._run, name="rtlrp serve source", daemon=True)

    def start(self) -> None:
        """Open the source (ServeError if it cannot be) and start feeding."""
        try:
            self._source = LiveSource(self.spec).open()
        except CameraError as exc:
            raise ServeError(str(exc)) from None
        self._thread.start()

    def stop(self) -> None:
        """Stop feeding and close the source."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)
        if self._source is not None:
            self._source.close()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    frame = self._source.read(timeout=0.25)
                except EndOfStream:
                    if self._stop.is_set():
                        return
                    if self.spec.kind != "file":
                        raise CameraError(f"{self.spec} ended") from None
                    self._source.close()
                    self._source = LiveSource(self.spec).open()  # a file plays in a loop
                    continue
                if frame is None or self.viewers() == 0:
                    continue
                job = Job(frame.seq, fit_side(frame.image, KIOSK_SIDE), self.settings, time.monotonic())
                self.worker.submit(self.stream, job)
        except CameraError as exc:
            self.error = str(exc)
            self.on_error()


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
    everything. ``token`` defaults to a fresh random one on every address but loopback.
    """

    def __init__(self, processor: FrameProcessor, *, host: str = "127.0.0.1", port: int = 8000,
                 tls: tuple[Path, Path] | None = None, source: CameraSpec | None = None,
                 limits: Limits = Limits(), batch: int = 8, token: str | None = None,
                 notice: Notice | None = None) -> None:
        self.host = host
        self.tls = tls
        self.limits = limits
        self.notice = notice
        self.token = token if token is not None else (secrets.token_urlsafe(24) if needs_token(host) else None)
        if tls is not None:
            check_tls(*tls)
        self.socket = bind(host, port)
        self.port = self.socket.getsockname()[1]
        own_cmap = processor.cmap if processor.cmap != render.default_cmap(processor.signed) else None
        settings = Settings(processor.preset, processor.top_k, own_cmap, processor.layout, processor.alpha)
        self.worker = Worker(processor, batch=batch, notice=notice)
        self.device = device_name(processor)
        self.hub = Hub(self.worker, settings, limits, self.token, tls is not None, self.device,
                       str(source) if source is not None else None, notice)
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
            self.kiosk.start()
        config = uvicorn.Config(
            self.hub.app(), log_level="warning", access_log=False, lifespan="off", server_header=False,
            ws_max_size=self.limits.max_message, ws_ping_interval=20.0, ws_ping_timeout=20.0,
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
