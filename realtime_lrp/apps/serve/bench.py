"""``rtlrp serve-bench``: N clients against a running ``rtlrp serve``, the way pages use it.

Each client is a thread with its own WebSocket that does what the page does: one frame
in flight, sent at the server's processing size as a JPEG (Fashion-MNIST items from
:mod:`realtime_lrp.apps.sample`, squeezed to that size), paced to the server's frame limit.
The round trip is measured from just before a frame is sent to its explained frame being
received. A client that is closed by the server, or waits 30 s for a reply, records an error.
"""
from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from typing import Sequence
from urllib.parse import urlsplit, urlunsplit

import cv2
import numpy as np

from realtime_lrp.apps.serve.protocol import decode_result

REPLY_TIMEOUT = 30.0


class BenchError(RuntimeError):
    """The server cannot be reached or does not speak the protocol; one line."""


@dataclass
class ClientResult:
    """What one client measured: frames explained, frames skipped, round trips in ms, an error."""

    frames: int = 0
    skipped: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    labels: set[str] = field(default_factory=set)
    seconds: float = 0.0
    error: str | None = None

    @property
    def fps(self) -> float:
        """Explained frames received per second."""
        return self.frames / self.seconds if self.seconds > 0 else 0.0


@dataclass
class LoadResult:
    """One measurement: ``clients`` clients sending at once."""

    clients: int
    results: list[ClientResult]

    @property
    def fps(self) -> float:
        """Explained frames per second, all clients together."""
        return sum(r.fps for r in self.results)

    @property
    def errors(self) -> list[str]:
        """The clients' errors."""
        return [r.error for r in self.results if r.error]

    def percentile(self, q: float) -> float:
        """The ``q``-th percentile of all round trips, in ms (NaN without any)."""
        values = [v for r in self.results for v in r.latencies_ms]
        return float(np.percentile(values, q)) if values else float("nan")


def websocket_url(url: str) -> str:
    """The ``/ws`` address of the server whose page is at ``url`` (its token kept)."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if parts.scheme not in ("http", "https", "ws", "wss"):
        raise BenchError(f"{url} is not an http:// or https:// address")
    scheme = "wss" if parts.scheme in ("https", "wss") else "ws"
    return urlunsplit((scheme, parts.netloc, "/ws", parts.query, ""))


def sample_jpegs(size: tuple[int, int], count: int = 24) -> list[bytes]:
    """``count`` demo frames at ``size`` (width, height), JPEG-encoded like the page does (quality 90)."""
    from realtime_lrp.apps.sample import sample_frames

    w, h = size
    frames = sample_frames(size=max(64, w, h), fps=count / 2, seconds_per_item=1.0, count=2)
    jpegs = []
    for frame in frames:
        small = cv2.resize(frame, (w, h), interpolation=cv2.INTER_AREA)
        jpegs.append(cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes())
    return jpegs


def _hello(ws) -> dict:
    message = json.loads(ws.recv(timeout=REPLY_TIMEOUT))
    if message.get("type") != "hello":
        raise BenchError(f"the server's first message is not a hello: {str(message)[:80]}")
    if message.get("mode") != "camera":
        raise BenchError("the server is in kiosk mode (--source): it takes no frames to measure")
    return message


def _client(url: str, seconds: float, start: threading.Barrier, result: ClientResult) -> None:
    """One client: frames in a loop, one in flight, until ``seconds`` have passed."""
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    try:
        with connect(url, open_timeout=REPLY_TIMEOUT, max_size=None) as ws:
            hello = _hello(ws)
            jpegs = sample_jpegs(tuple(hello["size"]))
            interval = 1.0 / float(hello["max_fps"])
            start.wait(timeout=REPLY_TIMEOUT)
            began = time.perf_counter()
            ident = 0
            while time.perf_counter() - began < seconds:
                ident += 1
                sent = time.perf_counter()
                ws.send(ident.to_bytes(4, "big") + jpegs[ident % len(jpegs)])
                while True:  # wait for this frame's reply
                    reply = ws.recv(timeout=REPLY_TIMEOUT)
                    if isinstance(reply, bytes):
                        meta, _jpeg = decode_result(reply)
                        if meta["id"] == ident:
                            result.latencies_ms.append(1000 * (time.perf_counter() - sent))
                            result.frames += 1
                            result.labels.add(meta["class"])
                            break
                    else:
                        message = json.loads(reply)
                        if message.get("type") == "error":
                            raise BenchError(f"server error: {message.get('message')}")
                        if message.get("type") == "skipped" and message.get("id") == ident:
                            result.skipped += 1
                            break
                pause = sent + interval - time.perf_counter()
                if pause > 0:
                    time.sleep(pause)
            result.seconds = time.perf_counter() - began
    except ConnectionClosed as exc:
        close = exc.rcvd
        result.error = f"closed by the server ({close.code}: {close.reason})" if close else "connection lost"
    except TimeoutError:
        result.error = f"no reply within {REPLY_TIMEOUT:g} s"
    except (BenchError, OSError) as exc:
        result.error = str(exc) or type(exc).__name__
    except Exception as exc:  # noqa: BLE001 - the websockets handshake errors (403 etc.) end up here
        result.error = f"{type(exc).__name__}: {exc}"


def run_load(url: str, clients: int, seconds: float) -> LoadResult:
    """Run ``clients`` concurrent clients against the server at ``url`` for ``seconds``.

    BenchError if the server cannot be reached at all (checked with one connection first).
    """
    from websockets.sync.client import connect

    ws_url = websocket_url(url)
    try:
        with connect(ws_url, open_timeout=REPLY_TIMEOUT) as ws:
            _hello(ws)
    except BenchError:
        raise
    except Exception as exc:  # noqa: BLE001 - refused, 403, TLS, DNS: one line
        raise BenchError(f"cannot connect to {ws_url}: {exc}") from None
    results = [ClientResult() for _ in range(clients)]
    start = threading.Barrier(clients)
    threads = [threading.Thread(target=_client, args=(ws_url, seconds, start, r), daemon=True) for r in results]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 3 * REPLY_TIMEOUT)
    for t, r in zip(threads, results):
        if t.is_alive() and r.error is None:
            r.error = "the client did not finish"
    return LoadResult(clients, results)


def summary_table(results: Sequence[LoadResult], url: str):
    """A rich table: per measurement, frames/s in total and per client, round-trip percentiles."""
    from rich.table import Table

    table = Table(title=f"rtlrp serve-bench {urlsplit(url).netloc}")
    for name in ("clients", "frames/s total", "frames/s per client (min-max)", "round trip p50",
                 "p95", "p99", "skipped", "errors"):
        table.add_column(name, justify="right")
    for load in results:
        per = [r.fps for r in load.results]
        table.add_row(str(load.clients), f"{load.fps:.1f}", f"{min(per):.1f}-{max(per):.1f}",
                      f"{load.percentile(50):.1f} ms", f"{load.percentile(95):.1f} ms",
                      f"{load.percentile(99):.1f} ms", str(sum(r.skipped for r in load.results)),
                      str(len(load.errors)))
    return table
