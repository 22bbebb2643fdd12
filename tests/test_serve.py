"""``rtlrp serve``: a real server on loopback, Python WebSocket clients, and headless Chromium.

The server runs in this process (uvicorn in a thread) for the protocol tests and as an
``rtlrp serve`` subprocess where the command line matters (token, signals, port in use,
TLS, kiosk mode, the load test). Frames are real JPEGs of Fashion-MNIST test items, and
the shipped model must name them.
"""
from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from contextlib import ExitStack
from pathlib import Path
from urllib.parse import urlsplit

import cv2
import numpy as np
import pytest
import torch
from media import rtlrp_command
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from realtime_lrp.apps.sample import CLASSES, load_items, write_sample
from realtime_lrp.apps.serve.auth import is_loopback
from realtime_lrp.apps.serve.bench import run_load, summary_table
from realtime_lrp.apps.serve.protocol import Limits, decode_result
from realtime_lrp.apps.serve.server import LrpServer
from realtime_lrp.lrp.filter import DEFAULT_TOP_K
from realtime_lrp.pipeline import render
from realtime_lrp.pipeline.processor import FrameProcessor
from realtime_lrp.pipeline.stream import StableScale

TROUSER, SNEAKER = 1, 7


def item_jpeg(index: int, size: tuple[int, int] = (32, 32)) -> bytes:
    """A Fashion-MNIST test item as the page would send it: BGR, squeezed to ``size``, JPEG."""
    item = load_items()[index][0]
    frame = cv2.cvtColor(cv2.resize(item, size, interpolation=cv2.INTER_AREA), cv2.COLOR_GRAY2BGR)
    return cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()


def frame_message(ident: int, jpeg: bytes) -> bytes:
    return ident.to_bytes(4, "big") + jpeg


def ws_url(http_url: str) -> str:
    parts = urlsplit(http_url)
    return f"ws://{parts.netloc}/ws" + (f"?{parts.query}" if parts.query else "")


def hello_of(ws) -> dict:
    message = json.loads(ws.recv(timeout=30))
    assert message["type"] == "hello"
    return message


def round_trip(ws, ident: int, jpeg: bytes) -> tuple[dict, np.ndarray]:
    """Send one frame and wait for its explained frame: (meta, decoded BGR image)."""
    ws.send(frame_message(ident, jpeg))
    while True:
        reply = ws.recv(timeout=60)
        if isinstance(reply, bytes):
            meta, data = decode_result(reply)
            if meta["id"] == ident:
                return meta, cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        else:
            message = json.loads(reply)
            assert message["type"] != "error", message


def closed_with(ws) -> tuple[int, str]:
    """Read until the server closes the connection; its close code and reason."""
    with pytest.raises(ConnectionClosed) as info:
        while True:
            ws.recv(timeout=30)
    assert info.value.rcvd is not None, "the connection ended without a close frame"
    return info.value.rcvd.code, info.value.rcvd.reason


def get(url: str, headers: dict | None = None, context: ssl.SSLContext | None = None) -> tuple[int, bytes, dict]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30, context=context) as response:
            return response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), dict(exc.headers)


def stats(http_url: str) -> dict:
    parts = urlsplit(http_url)
    status, body, _ = get(f"{parts.scheme}://{parts.netloc}/stats" + (f"?{parts.query}" if parts.query else ""))
    assert status == 200
    return json.loads(body)


@pytest.fixture(scope="module")
def processor() -> FrameProcessor:
    return FrameProcessor.from_options(weights="shipped", device="cpu")


@pytest.fixture(scope="module")
def server(processor: FrameProcessor):
    """An in-process server on a free loopback port (with a token, as on every address)."""
    with LrpServer(processor, port=0) as srv:
        srv.start()
        yield srv


def test_loopback_addresses_are_told_from_the_others() -> None:
    for host in ("127.0.0.1", "127.4.5.6", "::1", "[::1]", "localhost", "LOCALHOST"):
        assert is_loopback(host), host
    for host in ("0.0.0.0", "::", "192.168.1.20", "10.0.0.1", "fe80::1", "gpu-box", "example.org"):
        assert not is_loopback(host), host


def test_frames_come_back_explained_with_their_labels(server: LrpServer) -> None:
    reference = own_processor()
    with connect(ws_url(server.url)) as ws:
        hello = hello_of(ws)
        assert hello["mode"] == "camera" and hello["size"] == [32, 32]
        assert "CPU" in hello["device"] and hello["settings"]["preset"] == "epsilon-plus-flat"
        for ident, index in enumerate((TROUSER, SNEAKER, TROUSER), start=1):
            meta, image = round_trip(ws, ident, item_jpeg(index))
            assert meta["class"] == CLASSES[index] and meta["label"].startswith(CLASSES[index])
            assert image.shape == (32, 32, 3) and (meta["width"], meta["height"]) == (32, 32)
            assert meta["server_fps"] >= 0 and meta["batch"] >= 1
            if ident == 1:  # a new stream's first frame is scaled by its own map
                sent = cv2.imdecode(np.frombuffer(item_jpeg(index), np.uint8), cv2.IMREAD_COLOR)
                relevance, _ = reference.explain([sent])
                scale = StableScale.frame_scale(torch.from_numpy(relevance[:1])).item()
                assert meta["cmap"] == render.default_cmap(reference.signed)
                expected = render.render(sent, relevance[0], scale, meta["cmap"], "overlay", 0.6)
                expected = cv2.imdecode(cv2.imencode(".jpg", expected, [cv2.IMWRITE_JPEG_QUALITY, 85])[1],
                                        cv2.IMREAD_COLOR)  # as the server sends it
                error = np.abs(image.astype(int) - expected.astype(int))
                assert error.mean() < 0.5 and error.max() <= 8, f"the overlay differs from rtlrp's own: {error.max()}"
                assert np.abs(expected.astype(int) - sent.astype(int)).max() > 100  # and it does show a heatmap


def test_each_client_keeps_its_own_settings(server: LrpServer) -> None:
    with connect(ws_url(server.url)) as a, connect(ws_url(server.url)) as b:
        hello_of(a), hello_of(b)
        a.send(json.dumps({"type": "settings", "preset": "zplus", "layout": "side", "cmap": "viridis", "top_k": 0}))
        b.send(json.dumps({"type": "settings", "preset": "epsilon-gamma-box", "alpha": 1.0}))
        for ident in range(1, 4):
            meta_a, image_a = round_trip(a, ident, item_jpeg(TROUSER))
            meta_b, image_b = round_trip(b, ident, item_jpeg(TROUSER))
            assert (meta_a["preset"], meta_a["layout"], meta_a["cmap"], meta_a["top_k"]) == ("zplus", "side", "viridis", 0)
            assert image_a.shape == (32, 64, 3)
            assert (meta_b["preset"], meta_b["layout"], meta_b["cmap"], meta_b["top_k"]) == \
                ("epsilon-gamma-box", "overlay", "signed", DEFAULT_TOP_K)
            assert image_b.shape == (32, 32, 3)
            assert meta_a["class"] == meta_b["class"] == "Trouser"


def as_sent(image: np.ndarray) -> np.ndarray:
    """``image`` through the server's JPEG encoding."""
    return cv2.imdecode(cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 85])[1], cv2.IMREAD_COLOR)


def first_frame(processor: FrameProcessor, sent: np.ndarray) -> np.ndarray:
    """What a server shows as a new stream's first frame of ``sent`` (scaled by its own map), overlaid."""
    relevance, _ = processor.explain([sent], stream=False)
    scale = StableScale.frame_scale(torch.from_numpy(relevance[:1])).item()
    return render.render(sent, relevance[0], scale, processor.cmap, "overlay", 0.6)


@pytest.fixture(scope="module")
def gradcam() -> FrameProcessor:
    return FrameProcessor.from_options(weights="shipped", device="cpu", method="gradcam")


def test_a_client_picks_gradcam_and_gets_its_map(server: LrpServer, gradcam: FrameProcessor) -> None:
    with connect(ws_url(server.url)) as ws:
        hello = hello_of(ws)
        assert hello["methods"] == ["lrp", "gradcam", "gradcam++", "layercam"] and "compare" in hello["layouts"]
        ws.send(json.dumps({"type": "settings", "method": "gradcam"}))
        meta, image = round_trip(ws, 1, item_jpeg(TROUSER))
    assert (meta["method"], meta["preset"], meta["cmap"], meta["class"]) == ("gradcam", None, "fire", "Trouser")
    sent = cv2.imdecode(np.frombuffer(item_jpeg(TROUSER), np.uint8), cv2.IMREAD_COLOR)
    expected = as_sent(first_frame(gradcam, sent))
    error = np.abs(image.astype(int) - expected.astype(int))
    assert error.mean() < 0.5 and error.max() <= 8, f"the overlay differs from Grad-CAM's own: {error.max()}"
    lrp = as_sent(first_frame(own_processor(), sent))
    assert np.abs(lrp.astype(int) - expected.astype(int)).mean() > 5, "Grad-CAM's overlay is LRP's again"


def test_the_compare_layout_puts_lrp_and_gradcam_of_one_frame_side_by_side(server: LrpServer) -> None:
    """Three clients send the same frame: one in the compare layout, one with LRP alone, one with Grad-CAM
    alone. The compare frame is the two single-method frames side by side."""
    with connect(ws_url(server.url)) as both, connect(ws_url(server.url)) as lrp, \
            connect(ws_url(server.url)) as cam:
        for ws in (both, lrp, cam):
            hello_of(ws)
        both.send(json.dumps({"type": "settings", "layout": "compare", "preset": "zplus"}))
        lrp.send(json.dumps({"type": "settings", "preset": "zplus"}))
        cam.send(json.dumps({"type": "settings", "method": "gradcam"}))
        for ident, index in enumerate((SNEAKER, TROUSER, SNEAKER), start=1):
            meta, image = round_trip(both, ident, item_jpeg(index))
            _, left = round_trip(lrp, ident, item_jpeg(index))
            _, right = round_trip(cam, ident, item_jpeg(index))
            assert meta["layout"] == "compare" and image.shape == (32, 64, 3) and meta["width"] == 64
            assert [h["title"] for h in meta["halves"]] == ["LRP zplus", "Grad-CAM"]
            assert [h["cmap"] for h in meta["halves"]] == ["fire", "fire"] and meta["class"] == CLASSES[index]
            for half, alone in ((image[:, :32], left), (image[:, 32:], right)):
                error = np.abs(half.astype(int) - alone.astype(int))  # each JPEG-encoded on its own
                assert error.mean() < 0.3 and error.max() <= 14, (error.mean(), error.max())  # measured: 0.07, 11
            assert np.abs(left.astype(int) - right.astype(int)).mean() > 5, "the two halves show one method"
        both.send(json.dumps({"type": "settings", "method": "layercam"}))
        meta, _ = round_trip(both, 9, item_jpeg(TROUSER))
        assert [h["title"] for h in meta["halves"]] == ["LRP zplus", "LayerCAM"]


BAD_MESSAGES = [
    (b"\x00\x01", 1007, "4-byte id"),
    (frame_message(1, b"GIF89a not a jpeg"), 1007, "not a JPEG"),
    (frame_message(2, item_jpeg(TROUSER)[:60]), 1007, "truncated"),
    ("not json", 1007, "not JSON"),
    (json.dumps({"type": "launch"}), 1003, "unknown message type"),
    (json.dumps({"type": "settings", "top_k": 3}), 1007, "bad setting top_k"),
    (json.dumps({"type": "settings", "preset": "rm -rf"}), 1007, "bad setting preset"),
    (json.dumps({"type": "settings", "method": "gradcam+"}), 1007, "bad setting method"),
    (json.dumps({"type": "settings", "cam_layer": "features.20"}), 1007, "bad setting cam_layer"),
    (json.dumps({"type": "settings", "layout": "Compare"}), 1007, "bad setting layout"),
    (frame_message(3, item_jpeg(TROUSER, (1100, 60))), 1009, "at most 1024 pixels"),
    (b"\x00" * (Limits().max_message + 1), 1009, "exceeds limit"),
]


@pytest.mark.parametrize("message,code,reason", BAD_MESSAGES, ids=[b[2] for b in BAD_MESSAGES])
def test_a_bad_message_closes_only_its_own_connection(server: LrpServer, message, code: int, reason: str) -> None:
    with connect(ws_url(server.url)) as good, connect(ws_url(server.url), max_size=None) as bad:
        hello_of(good), hello_of(bad)
        round_trip(good, 1, item_jpeg(SNEAKER))
        try:
            bad.send(message)
        except ConnectionClosed as exc:  # closed while the message was still going out (2 MiB: the limit)
            assert exc.rcvd is not None, f"the connection ended without a close frame: {exc}"
            got_code, got_reason = exc.rcvd.code, exc.rcvd.reason
        else:
            got_code, got_reason = closed_with(bad)
        assert got_code == code and reason in got_reason, (got_code, got_reason)
        meta, _ = round_trip(good, 2, item_jpeg(SNEAKER))
        assert meta["class"] == "Sneaker"


def own_processor() -> FrameProcessor:
    """A processor for a server of a test's own (a processor belongs to one worker)."""
    return FrameProcessor.from_options(weights="shipped", device="cpu")


def test_frames_over_the_rate_are_skipped_not_queued() -> None:
    sent = 20  # 15 over the rate: skipped; a client that keeps it up is closed (test_serve_attacks.py)
    with LrpServer(own_processor(), port=0, limits=Limits(max_fps=5)) as srv:
        srv.start()
        with connect(ws_url(srv.url)) as ws:
            hello_of(ws)
            began = time.monotonic()
            for ident in range(1, sent + 1):
                ws.send(frame_message(ident, item_jpeg(TROUSER)))
            deadline = time.monotonic() + 60
            while stats(srv.url)["clients"][0]["received"] < sent and time.monotonic() < deadline:
                time.sleep(0.05)
            elapsed = time.monotonic() - began  # covers every frame's arrival at the server
            while time.monotonic() < deadline:
                (client,) = stats(srv.url)["clients"]
                if client["skipped_rate"] + client["skipped_newer"] + client["explained"] == sent:
                    break
                time.sleep(0.1)
            assert client["received"] == sent
            assert client["skipped_rate"] + client["skipped_newer"] + client["explained"] == sent, client
            # a burst of one second's frames, then 5 a second: the rest never reaches the model
            assert 1 <= client["explained"] <= 5 + 5 * elapsed + 1, (client, elapsed)
            assert client["skipped_rate"] >= sent - (5 + 5 * elapsed + 1)
            reasons = set()
            with pytest.raises(TimeoutError):
                while True:
                    reply = ws.recv(timeout=2)
                    if isinstance(reply, str):
                        reasons.add(json.loads(reply)["reason"])
            assert "over 5 frames/s" in reasons


def test_clients_over_the_limit_are_told_to_come_back_later() -> None:
    with LrpServer(own_processor(), port=0, limits=Limits(max_clients=2)) as srv:
        srv.start()
        with connect(ws_url(srv.url)) as a, connect(ws_url(srv.url)) as b:
            hello_of(a), hello_of(b)
            with connect(ws_url(srv.url)) as c:
                code, reason = closed_with(c)
            assert code == 1013 and "try later" in reason
            assert round_trip(a, 1, item_jpeg(SNEAKER))[0]["class"] == "Sneaker"
        deadline = time.monotonic() + 30
        while stats(srv.url)["clients"] and time.monotonic() < deadline:
            time.sleep(0.05)
        with connect(ws_url(srv.url)) as d:  # the two left: there is room again
            hello_of(d)
            assert round_trip(d, 1, item_jpeg(TROUSER))[0]["class"] == "Trouser"


def test_a_stalled_client_does_not_slow_another(server: LrpServer) -> None:
    """A client that sends big frames and never reads: its replies are dropped on the server
    (counted as replaced), and another client's round trips all complete meanwhile."""
    rng = np.random.default_rng(0)
    noise = cv2.imencode(".jpg", rng.integers(0, 255, (480, 640, 3), dtype=np.uint8),
                         [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
    raw = socket.create_connection(("127.0.0.1", server.port))
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stop = threading.Event()
    with connect(ws_url(server.url), sock=raw) as stalled, connect(ws_url(server.url)) as active:
        hello_of(active)

        def flood() -> None:  # never reads anything, the hello included
            ident = 0
            while not stop.is_set():
                ident += 1
                stalled.send(frame_message(ident, noise))
                stop.wait(0.1)

        flooder = threading.Thread(target=flood, daemon=True)
        flooder.start()
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                clients = {c["id"]: c for c in stats(server.url)["clients"]}
                stalled_stats = min(clients.values(), key=lambda c: c["id"])
                if stalled_stats["replaced"] >= 2:
                    break
                time.sleep(0.2)
            assert stalled_stats["replaced"] >= 2, "the stalled client's replies never backed up"
            for ident in range(1, 31):
                meta, _ = round_trip(active, ident, item_jpeg(TROUSER))
                assert meta["class"] == "Trouser"
            clients = {c["id"]: c for c in stats(server.url)["clients"]}
            assert min(clients.values(), key=lambda c: c["id"])["replaced"] > stalled_stats["replaced"]
        finally:
            stop.set()
            flooder.join(10)


# -- the command: token, signals, port in use, TLS, kiosk -------------------------------------

class ServeProcess:
    """``rtlrp serve ARGS`` in a subprocess (``command``, when given, starts rtlrp instead); ``url`` is
    what its start-up line says to open."""

    def __init__(self, args: list[str], tmp_path: Path, weights: str = "shipped",
                 command: list[str] | None = None) -> None:
        env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
        self.stderr_path = tmp_path / f"serve-{time.monotonic_ns()}.err"
        self.proc = subprocess.Popen([*(command or rtlrp_command()), "serve", "--weights", weights, "--port", "0",
                                      *args], stdout=subprocess.DEVNULL, stderr=self.stderr_path.open("w"), env=env)
        self.url = self._wait_for_url()

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def _wait_for_url(self) -> str:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            found = re.search(r"open (https?://\S+)", self.stderr)
            if found:
                return found.group(1)
            if self.proc.poll() is not None:
                raise AssertionError(f"rtlrp serve ended with {self.proc.returncode}: {self.stderr}")
            time.sleep(0.1)
        self.proc.kill()
        raise AssertionError(f"rtlrp serve did not print its URL: {self.stderr}")

    def local(self) -> str:
        """The URL with its host replaced by 127.0.0.1 (tests talk to loopback only)."""
        parts = urlsplit(self.url)
        return parts._replace(netloc=f"127.0.0.1:{parts.port}").geturl()

    def kill(self) -> None:
        """End the server if a test failed before it could be stopped."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=60)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()


def test_off_loopback_the_token_is_required_over_http_and_websocket(tmp_path: Path) -> None:
    served = ServeProcess(["--host", "0.0.0.0"], tmp_path)
    try:
        url = served.local()
        token = re.search(r"token=([\w-]+)", url).group(1)
        assert len(token) >= 32
        base = url.split("?")[0]
        assert get(base)[0] == 403
        assert get(f"{base}?token=wrong{token}")[0] == 403
        assert get(f"{base}serve.js")[0] == 403
        status, page, headers = get(url)
        assert status == 200 and b"serve.js" in page and "default-src 'self'" in headers["content-security-policy"]
        cookie = headers["set-cookie"].split(";")[0]
        assert get(f"{base}serve.js", {"Cookie": cookie})[0] == 200
        for bad in (ws_url(base), ws_url(f"{base}?token=x")):
            with pytest.raises(InvalidStatus) as refused:
                connect(bad)
            assert refused.value.response.status_code == 403
        with connect(ws_url(base), additional_headers={"Cookie": cookie}) as ws:
            hello_of(ws)
        with connect(ws_url(url)) as ws:
            hello_of(ws)
            meta, _ = round_trip(ws, 7, item_jpeg(SNEAKER))
            assert meta["class"] == "Sneaker"
    finally:
        code = served.stop()
    assert code == 143 and "Stopped by SIGTERM" in served.stderr and "Traceback" not in served.stderr


def test_on_loopback_too_the_token_is_required_and_its_cookie_carries_the_port(tmp_path: Path) -> None:
    served = ServeProcess([], tmp_path)
    try:
        url = served.url
        assert urlsplit(url).hostname == "127.0.0.1"
        token = re.search(r"token=([\w-]+)", url).group(1)
        assert len(token) >= 32 and f"localhost:{urlsplit(url).port}/?token={token}" in served.stderr
        base = url.split("?")[0]
        assert get(base)[0] == 403 and get(f"{base}stats")[0] == 403
        with pytest.raises(InvalidStatus) as refused:
            connect(ws_url(base))
        assert refused.value.response.status_code == 403
        status, _page, headers = get(url)
        assert status == 200
        name, value = headers["set-cookie"].split(";")[0].split("=", 1)
        assert name == f"rtlrp_token_{urlsplit(url).port}" and value == token
        with connect(ws_url(url)) as ws:
            hello_of(ws)
            assert round_trip(ws, 1, item_jpeg(TROUSER))[0]["class"] == "Trouser"
    finally:
        assert served.stop() == 143


def test_no_token_serves_loopback_openly_with_a_warning_and_is_refused_elsewhere(tmp_path: Path) -> None:
    served = ServeProcess(["--no-token"], tmp_path)
    try:
        assert "token" not in served.url and "Warning: --no-token" in served.stderr
        assert get(served.url)[0] == 200
        with connect(ws_url(served.url)) as ws:
            hello_of(ws)
            assert round_trip(ws, 1, item_jpeg(SNEAKER))[0]["class"] == "Sneaker"
    finally:
        assert served.stop() == 143
    proc = run_serve(["--port", "0", "--host", "0.0.0.0", "--no-token"])
    assert proc.returncode == 2 and "loopback addresses only" in proc.stderr and "Traceback" not in proc.stderr


def test_a_page_from_another_site_cannot_use_a_loopback_server(server: LrpServer) -> None:
    with pytest.raises(InvalidStatus) as refused:
        connect(ws_url(server.url), origin="http://evil.example")
    assert refused.value.response.status_code == 403
    assert get(server.url, {"Host": "evil.example:8000"})[0] == 403  # DNS rebinding, even with the token
    assert get(server.url)[0] == 200


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGHUP, 129)],
                         ids=["SIGINT", "SIGTERM", "SIGHUP"])
def test_signals_stop_the_server_cleanly(tmp_path: Path, sig: int, code: int) -> None:
    served = ServeProcess([], tmp_path)
    try:
        with connect(ws_url(served.url)) as ws:
            hello_of(ws)
            round_trip(ws, 1, item_jpeg(TROUSER))
            assert served.stop(sig) == code
            closing, _reason = closed_with(ws)
            assert closing == 1012  # "service restart": the page reconnects by itself
    finally:
        served.kill()
    lines = [line for line in served.stderr.splitlines() if line.strip()]
    assert lines[-1] == f"Stopped by {signal.Signals(sig).name}: 1 frame explained for 1 client."
    assert "Traceback" not in served.stderr


def run_serve(args: list[str], stdin: int | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    return subprocess.run([*rtlrp_command(), "serve", "--weights", "shipped", *args], capture_output=True,
                          text=True, env=env, timeout=120, stdin=stdin)


def test_port_in_use_and_bad_certificates_are_one_line_errors(tmp_path: Path) -> None:
    taken = socket.create_server(("127.0.0.1", 0))
    try:
        proc = run_serve(["--port", str(taken.getsockname()[1])])
    finally:
        taken.close()
    assert proc.returncode == 1 and "already in use" in proc.stderr and "Traceback" not in proc.stderr
    assert len([line for line in proc.stderr.splitlines() if line.startswith("Error")]) == 1
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_text("-----BEGIN CERTIFICATE-----\nnot a certificate\n-----END CERTIFICATE-----\n")
    key.write_text("not a key\n")
    proc = run_serve(["--port", "0", "--tls", str(cert), str(key)])
    assert proc.returncode == 1 and "cannot use --tls" in proc.stderr and "Traceback" not in proc.stderr
    if shutil.which("openssl") is not None:
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-keyout", str(key), "-out", str(cert),
                        "-days", "1", "-subj", "/CN=localhost", "-passout", "pass:secret"],
                       check=True, capture_output=True)
        proc = run_serve(["--port", "0", "--tls", str(cert), str(key)], stdin=subprocess.DEVNULL)
        assert proc.returncode == 1 and "the key is encrypted" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_serve(["--port", "0", "--tls", str(tmp_path / "missing.pem"), str(key)])
    assert proc.returncode == 2 and "does not exist" in proc.stderr
    proc = run_serve(["--port", "0", "--source", str(tmp_path / "missing.mp4")])
    assert proc.returncode == 1 and "missing.mp4" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make a certificate")
def test_tls_serves_https_and_wss(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=localhost"], check=True, capture_output=True)
    served = ServeProcess(["--tls", str(cert), str(key)], tmp_path)
    try:
        assert served.url.startswith("https://127.0.0.1:")
        context = ssl.create_default_context(cafile=str(cert))
        context.check_hostname = False
        status, page, headers = get(served.url, context=context)
        assert status == 200 and b"<canvas" in page
        with connect(ws_url(served.url).replace("ws://", "wss://"), ssl=context) as ws:
            hello_of(ws)
            meta, _ = round_trip(ws, 1, item_jpeg(SNEAKER))
            assert meta["class"] == "Sneaker"
    finally:
        assert served.stop(signal.SIGINT) == 130


def test_kiosk_mode_shows_the_server_source_to_every_page(tmp_path: Path) -> None:
    video = tmp_path / "items.mp4"
    write_sample(video, size=96, fps=12, seconds_per_item=0.5, count=3)
    served = ServeProcess(["--source", str(video)], tmp_path)
    try:
        with connect(ws_url(served.url)) as first, connect(ws_url(served.url)) as second:
            for ws in (first, second):
                hello = hello_of(ws)
                assert hello["mode"] == "kiosk" and "items.mp4" in hello["source"]
            for ws in (first, second):  # the file loops: frames keep coming without sending any
                labels = set()
                for _ in range(24):
                    reply = ws.recv(timeout=60)
                    if isinstance(reply, bytes):
                        meta, data = decode_result(reply)
                        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
                        assert image.shape == (96, 96, 3)
                        labels.add(meta["class"])
                assert labels <= set(CLASSES) and labels
            first.send(frame_message(1, item_jpeg(TROUSER)))
            code, reason = closed_with(first)
            assert code == 1008 and "takes no frames" in reason
            assert isinstance(second.recv(timeout=60), bytes)
    finally:
        assert served.stop(signal.SIGHUP) == 129
    assert "Traceback" not in served.stderr


def test_serve_bench_measures_a_running_server(server: LrpServer) -> None:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    proc = subprocess.run([*rtlrp_command(), "serve-bench", server.url, "--clients", "1,3", "--seconds", "2"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    rows = [line.split("│")[1:-1] for line in proc.stdout.splitlines() if line.startswith("│")]
    assert [r[0].strip() for r in rows] == ["1", "3"]
    for row in rows:
        assert float(row[1]) > 0 and row[2].count("-") == 1 and row[4].strip().endswith("ms")
        assert row[-1].strip() == "0"  # errors
    nobody = socket.create_server(("127.0.0.1", 0))
    port = nobody.getsockname()[1]
    nobody.close()
    proc = subprocess.run([*rtlrp_command(), "serve-bench", f"http://127.0.0.1:{port}/", "--seconds", "1"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 1 and "cannot connect" in proc.stderr and "Traceback" not in proc.stderr


# -- a real browser -------------------------------------------------------------------------

def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def write_y4m(path: Path, frames: list[np.ndarray], fps: int = 10) -> None:
    """A YUV4MPEG2 file (4:2:0) for Chromium's fake camera."""
    h, w = frames[0].shape[:2]
    with path.open("wb") as f:
        f.write(f"YUV4MPEG2 W{w} H{h} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for frame in frames:
            f.write(b"FRAME\n" + cv2.cvtColor(frame, cv2.COLOR_BGR2YUV_I420).tobytes())


def camera_frames(index: int, count: int = 10) -> list[np.ndarray]:
    """A 320x240 camera view of one item on black, drifting slightly."""
    item = cv2.resize(load_items()[index][0], (200, 200), interpolation=cv2.INTER_CUBIC)
    frames = []
    for i in range(count):
        canvas = np.zeros((240, 320), np.uint8)
        x = 60 + (i % 5) - 2
        canvas[20:220, x:x + 200] = item
        frames.append(cv2.cvtColor(canvas, cv2.COLOR_GRAY2BGR))
    return frames


class Chromium:
    """Headless Chromium driven through the DevTools protocol (its own port, read from the profile)."""

    def __init__(self, url: str, profile: Path, extra: list[str]) -> None:
        self.proc = subprocess.Popen(
            [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--remote-debugging-port=0", f"--user-data-dir={profile}", "--window-size=1100,760", *extra, url],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._closing = ExitStack()
        try:
            self.ws = self._closing.enter_context(connect(self._page(profile), max_size=None))
        except BaseException:
            self.proc.kill()
            self.proc.wait(timeout=30)
            raise
        self.calls = 0

    def _page(self, profile: Path) -> str:
        """The DevTools WebSocket address of the page Chromium opened."""
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not port_file.exists() or not port_file.read_text().strip():
            assert time.monotonic() < deadline and self.proc.poll() is None, "Chromium did not start"
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        while True:
            pages = [t for t in json.loads(get(f"http://127.0.0.1:{port}/json/list")[1]) if t["type"] == "page"]
            if pages:
                break
            assert time.monotonic() < deadline, "Chromium opened no page"
            time.sleep(0.1)
        return pages[0]["webSocketDebuggerUrl"]

    def call(self, method: str, **params) -> dict:
        self.calls += 1
        self.ws.send(json.dumps({"id": self.calls, "method": method, "params": params}))
        while True:
            reply = json.loads(self.ws.recv(timeout=60))
            if reply.get("id") == self.calls:
                assert "error" not in reply, reply
                return reply["result"]

    def evaluate(self, expression: str):
        return self.call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def state(self) -> dict:
        return json.loads(self.evaluate("JSON.stringify(window.rtlrpState || null)") or "null") or {}

    def wait_for(self, check, what: str, timeout: float = 90) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.state()
            if check(state):
                return state
            time.sleep(0.2)
        raise AssertionError(f"the page never showed {what}: {state}")

    def screenshot(self, path: Path) -> None:
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"]))

    def close(self) -> None:
        self._closing.close()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


needs_chromium = pytest.mark.skipif(_chromium() is None, reason="Debian's chromium is not installed (.ci/run installs it)")


def camera_page(server: LrpServer, tmp_path: Path) -> Chromium:
    """The served page in Chromium, its camera a fake one playing a trouser (a Y4M file)."""
    camera = tmp_path / "camera.y4m"
    write_y4m(camera, camera_frames(TROUSER))
    return Chromium(server.url, tmp_path / "profile",
                    ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                     f"--use-file-for-fake-video-capture={camera}"])


@needs_chromium
def test_the_page_explains_a_fake_camera_and_a_picked_image(server: LrpServer, tmp_path: Path) -> None:
    browser = camera_page(server, tmp_path)
    try:
        state = browser.wait_for(lambda s: s.get("framesReceived", 0) >= 5, "five explained camera frames")
        assert state["source"] == "camera" and state["connected"] and state["message"] == ""
        assert state["label"].startswith("Trouser"), state["label"]
        assert "CPU" in state["device"] and state["size"] == [32, 32]
        assert state["latencyMs"] is not None and state["serverFps"] is not None
        browser.wait_for(lambda s: s.get("clientFps") is not None, "its frames per second")
        browser.screenshot(tmp_path / "camera.png")
        shown = cv2.imread(str(tmp_path / "camera.png"))
        assert shown is not None and shown.shape[1] == 1100
        assert browser.evaluate("document.getElementById('label').textContent").startswith("Trouser")

        browser.evaluate("(() => { const s = document.getElementById('layout'); s.value = 'side';"
                         " s.dispatchEvent(new Event('input')); })()")
        browser.wait_for(lambda s: s.get("size") == [64, 32], "the side-by-side layout")

        still = tmp_path / "sneaker.png"
        cv2.imwrite(str(still), cv2.resize(load_items()[SNEAKER][0], (112, 112), interpolation=cv2.INTER_NEAREST))
        root = browser.call("DOM.getDocument")["root"]["nodeId"]
        node = browser.call("DOM.querySelector", nodeId=root, selector="#file")["nodeId"]
        before = browser.state()["framesReceived"]
        browser.call("DOM.setFileInputFiles", nodeId=node, files=[str(still)])
        state = browser.wait_for(lambda s: s.get("source") == "image" and s["framesReceived"] > before
                                 and s["label"].startswith("Sneaker"), "the picked image explained")
        sent = state["framesSent"]
        time.sleep(1.5)
        assert browser.state()["framesSent"] == sent, "a still image is sent once, not streamed"

        downloads = tmp_path / "downloads"
        downloads.mkdir()
        browser.call("Browser.setDownloadBehavior", behavior="allow", downloadPath=str(downloads))
        browser.evaluate("document.getElementById('snapshot').click()")
        deadline = time.monotonic() + 30
        while not list(downloads.glob("rtlrp-*.png")) and time.monotonic() < deadline:
            time.sleep(0.2)
        (snapshot,) = downloads.glob("rtlrp-*.png")
        image = cv2.imread(str(snapshot))
        assert image is not None and image.shape == (360 + 34, 720, 3)  # the side layout of a square, and the label bar
        assert (image[360:] > 200).all(axis=2).any(), "no label text in the snapshot's bar"
        assert np.ptp(image[:360, 360:].reshape(-1, 3), axis=0).max() > 60, "the snapshot's heatmap half is flat"
        browser.screenshot(tmp_path / "image.png")
    finally:
        browser.close()


@needs_chromium
def test_the_page_shows_lrp_and_gradcam_side_by_side(server: LrpServer, tmp_path: Path) -> None:
    """The page's compare layout: LRP and Grad-CAM of each camera frame side by side, each half named.
    With RTLRP_SCREENSHOTS=DIR the screenshot is kept as DIR/serve-compare.png (the README's)."""
    browser = camera_page(server, tmp_path)
    try:
        browser.wait_for(lambda s: s.get("framesReceived", 0) >= 2, "explained camera frames")
        browser.evaluate("(() => { const s = document.getElementById('layout'); s.value = 'compare';"
                         " s.dispatchEvent(new Event('input')); })()")
        state = browser.wait_for(lambda s: s.get("size") == [64, 32] and s.get("halves"), "the compare layout")
        assert state["halves"] == ["LRP epsilon-plus-flat", "Grad-CAM"] and state["label"].startswith("Trouser")
        assert browser.evaluate("document.getElementById('method').value") == "lrp"
        halves = browser.evaluate("""(() => {
            const c = document.getElementById('out'), d = c.getContext('2d').getImageData(0, 0, c.width,
                c.height - 40).data, w = c.width, sums = [0, 0];
            for (let i = 0; i < d.length; i += 4) sums[(i / 4) % w < w / 2 ? 0 : 1] += d[i] + d[i + 1] + d[i + 2];
            return [c.width, c.height, ...sums]; })()""")
        width, height, left, right = halves
        assert (width, height) == (2 * 480, 360) and abs(left - right) > 0.05 * max(left, right), halves  # 4:3 halves
        shot = tmp_path / "serve-compare.png"
        browser.screenshot(shot)
        assert cv2.imread(str(shot)).shape[1] == 1100
        if os.environ.get("RTLRP_SCREENSHOTS"):
            shutil.copy(shot, Path(os.environ["RTLRP_SCREENSHOTS"]) / shot.name)
    finally:
        browser.close()


@needs_chromium
def test_the_page_drops_the_token_from_its_address_and_reloads_with_the_cookie(server: LrpServer,
                                                                              tmp_path: Path) -> None:
    browser = Chromium(server.url, tmp_path / "profile", ["--use-fake-device-for-media-stream",
                                                          "--deny-permission-prompts"])
    try:
        browser.wait_for(lambda s: s.get("tokenDropped") and s.get("mode") == "camera", "the token dropped")
        address = browser.evaluate("location.href")
        assert "token" not in address and address == server.url.split("?")[0], address
        assert browser.evaluate("history.length") == 1  # replaced, not pushed: the token is in no history entry
        browser.evaluate("location.reload()")
        time.sleep(0.5)
        state = browser.wait_for(lambda s: s.get("mode") == "camera" and s.get("connected"), "the page reloaded")
        assert not state["tokenDropped"] and "token" not in browser.evaluate("location.href")
    finally:
        browser.close()


@needs_chromium
def test_a_page_closed_for_idling_reconnects_when_it_has_a_frame(tmp_path: Path) -> None:
    with LrpServer(own_processor(), port=0, limits=Limits(idle_seconds=2)) as srv:
        srv.start()
        browser = Chromium(srv.url, tmp_path / "profile", ["--use-fake-device-for-media-stream",
                                                           "--deny-permission-prompts"])
        try:  # no camera: the page sends nothing, and is closed
            state = browser.wait_for(lambda s: (s.get("closed") or {}).get("code") == 1000, "the idle close")
            assert "idle for 2 s" in state["closed"]["reason"] and "reconnects" in state["message"]
            still = tmp_path / "sneaker.png"
            cv2.imwrite(str(still), cv2.resize(load_items()[SNEAKER][0], (64, 64), interpolation=cv2.INTER_NEAREST))
            root = browser.call("DOM.getDocument")["root"]["nodeId"]
            node = browser.call("DOM.querySelector", nodeId=root, selector="#file")["nodeId"]
            browser.call("DOM.setFileInputFiles", nodeId=node, files=[str(still)])
            state = browser.wait_for(lambda s: s.get("framesReceived", 0) >= 1, "the picked image explained")
            assert state["connected"] and state["label"].startswith("Sneaker")
        finally:
            browser.close()


@needs_chromium
def test_the_page_says_so_when_the_camera_is_denied(server: LrpServer, tmp_path: Path) -> None:
    browser = Chromium(server.url, tmp_path / "profile", ["--use-fake-device-for-media-stream",
                                                          "--deny-permission-prompts"])
    try:
        state = browser.wait_for(lambda s: s.get("cameraError"), "the camera error")
        assert state["cameraError"] == "NotAllowedError" and "denied" in state["message"]
        visible = browser.evaluate("(() => { const m = document.getElementById('message');"
                                   " return !m.hidden && m.offsetHeight > 0 && m.textContent; })()")
        assert visible and "denied" in visible
    finally:
        browser.close()


@needs_chromium
def test_the_page_watches_a_kiosk(tmp_path: Path) -> None:
    video = tmp_path / "items.mp4"
    write_sample(video, size=96, fps=12, seconds_per_item=0.5, count=3)
    served = ServeProcess(["--source", str(video)], tmp_path)
    try:
        browser = Chromium(served.url, tmp_path / "profile", [])
        try:
            state = browser.wait_for(lambda s: s.get("framesReceived", 0) >= 3, "three frames of the kiosk")
            assert state["mode"] == "kiosk" and state["framesSent"] == 0 and state["size"] == [96, 96]
            assert state["label"].split("  ")[0] in CLASSES
            assert browser.evaluate("document.getElementById('settings').disabled")
            assert "items.mp4" in browser.evaluate("document.getElementById('kiosk').textContent")
        finally:
            browser.close()
    finally:
        assert served.stop(signal.SIGINT) == 130


# -- load ------------------------------------------------------------------------------------

@pytest.mark.slow
def test_eight_clients_for_twenty_seconds(tmp_path: Path) -> None:
    served = ServeProcess(["--max-fps", "1000"], tmp_path)
    try:
        load = run_load(served.url, clients=8, seconds=20)
    finally:
        assert served.stop() == 143
    assert load.errors == []
    for i, client in enumerate(load.results):
        print(f"client {i}: {client.frames} frames, {client.fps:.1f} frames/s, round trip p50"
              f" {np.percentile(client.latencies_ms, 50):.1f} ms, p95 {np.percentile(client.latencies_ms, 95):.1f} ms")
        assert client.frames >= 1 and client.labels <= set(CLASSES)
    from rich.console import Console

    Console(width=160).print(summary_table([load], served.url))
