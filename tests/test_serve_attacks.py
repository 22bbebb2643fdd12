"""``rtlrp serve`` under attack: costly and broken JPEGs, malformed settings, floods, leaving early.

Attack images are made here, by hand or with PIL: a progressive JPEG of 174,000 scans (the
one that took 10 s of CPU to decode), size-patched and truncated JPEGs, decompression-bomb
headers. Each must be refused with the right close code, before any decoding, while a
well-behaved client on the same server keeps getting its frames.
"""
from __future__ import annotations

import base64
import io
import json
import os
import socket
import threading
import time
import zlib
from contextlib import ExitStack, suppress
from pathlib import Path
from urllib.parse import urlsplit

import cv2
import numpy as np
import pytest
from PIL import Image
from test_serve import (
    SNEAKER,
    TROUSER,
    ServeProcess,
    closed_with,
    frame_message,
    hello_of,
    item_jpeg,
    round_trip,
    stats,
    ws_url,
)
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from realtime_lrp.apps.sample import CLASSES
from realtime_lrp.apps.serve.bench import run_load
from realtime_lrp.apps.serve.jpeg import MAX_SCANS, JpegError, inspect
from realtime_lrp.apps.serve.protocol import Limits, ProtocolError, Settings, decode_frame, parse_text
from realtime_lrp.apps.serve.server import LrpServer
from realtime_lrp.pipeline.processor import FrameProcessor


def _segment(marker: int, body: bytes) -> bytes:
    return bytes([0xFF, marker]) + (len(body) + 2).to_bytes(2, "big") + body


def scan_bomb(side: int = 1024, scans: int = 174_000) -> bytes:
    """A grey progressive JPEG of ``side`` x ``side`` made of a DC scan and ``scans`` AC scans.

    Each AC scan is 12 bytes: one end-of-band-run symbol covers every block, so the file is
    small, yet a decoder walks all blocks once per scan (libjpeg only warns of the repeated scans).
    """
    blocks = (side // 8) ** 2
    assert blocks <= 32767
    run = blocks.bit_length() - 1  # EOBn: a run of 2**n + n extra bits
    head = b"\xff\xd8" + _segment(0xDB, b"\x00" + bytes([1] * 64))
    head += _segment(0xC2, b"\x08" + side.to_bytes(2, "big") * 2 + b"\x01\x01\x11\x00")
    head += _segment(0xC4, b"\x00" + bytes([1] + [0] * 15) + b"\x00")               # DC: category 0 is "0"
    head += _segment(0xC4, b"\x10" + bytes([1] + [0] * 15) + bytes([run << 4]))     # AC: EOBn is "0"
    dc = _segment(0xDA, b"\x01\x01\x00\x00\x00\x00") + b"\x00" * (blocks // 8)
    extra = blocks - (1 << run)
    bits = "0" + format(extra, f"0{run}b") if run else "0"
    bits += "1" * (-len(bits) % 8)
    coded = int(bits, 2).to_bytes(len(bits) // 8, "big").replace(b"\xff", b"\xff\x00")
    ac = _segment(0xDA, b"\x01\x01\x00\x01\x3f\x00") + coded
    return head + dc + ac * scans + b"\xff\xd9"


def jpeg_of(image: np.ndarray, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "JPEG", **options)
    return buffer.getvalue()


def noise(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)


def patched_size(jpeg: bytes, height: int, width: int) -> bytes:
    """``jpeg`` with its frame header claiming ``height`` x ``width``."""
    at = jpeg.index(b"\xff\xc0") + 5
    return jpeg[:at] + height.to_bytes(2, "big") + width.to_bytes(2, "big") + jpeg[at + 4:]


LIMITS = Limits()


def refused(payload: bytes) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        decode_frame(frame_message(5, payload), LIMITS)
    return info.value


# -- JPEG structure, before any decoding ---------------------------------------------------------

def test_what_the_page_sends_is_taken_and_decoded() -> None:
    for image, options in [(noise(240, 320), {"quality": 90}), (noise(32, 32), {"quality": 90, "subsampling": 0}),
                           (noise(33, 57), {"quality": 60, "subsampling": 1}), (noise(17, 9), {"quality": 95})]:
        jpeg = jpeg_of(image, **options)
        info = inspect(jpeg, LIMITS.max_side)
        assert (info.height, info.width, info.components, info.scans) == (*image.shape[:2], 3, 1)
        decoded = decode_frame(frame_message(1, jpeg), LIMITS)
        assert decoded.shape == image.shape
        reference = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))[:, :, ::-1]  # PIL's decoding, as BGR
        assert np.abs(decoded.astype(int) - reference).max() <= 2
    grey = cv2.imencode(".jpg", noise(40, 30)[:, :, 0])[1].tobytes()
    assert inspect(grey, 1024).components == 1 and decode_frame(frame_message(1, grey), LIMITS).shape == (40, 30, 3)
    assert item_jpeg(TROUSER) and decode_frame(frame_message(1, item_jpeg(TROUSER)), LIMITS).shape == (32, 32, 3)


def test_the_scan_bomb_and_progressive_jpegs_are_refused_unread() -> None:
    bomb = scan_bomb()
    assert 2_000_000 < len(bomb) <= Limits().max_message - 4, len(bomb)
    began = time.process_time()
    error = refused(bomb)
    assert error.code == 1007 and "progressive" in error.reason
    assert time.process_time() - began < 1.0  # one header read, not 174,000 scans (a generous bound)
    progressive = jpeg_of(noise(64, 64), quality=90, progressive=True)
    assert refused(progressive).code == 1007 and "progressive" in refused(progressive).reason


def test_a_baseline_jpeg_with_too_many_scans_is_refused() -> None:
    jpeg = jpeg_of(noise(16, 16), quality=90)
    start = jpeg.index(b"\xff\xda")
    scan = jpeg[start:-2]
    error = refused(jpeg[:start] + scan * (MAX_SCANS + 1) + b"\xff\xd9")
    assert error.code == 1007 and f"more than {MAX_SCANS} scans" in error.reason


def test_truncated_and_size_patched_jpegs_are_refused() -> None:
    jpeg = jpeg_of(noise(64, 64), quality=90)
    for cut in (len(jpeg) // 2, len(jpeg) - 2, 100):
        error = refused(jpeg[:cut])
        assert error.code == 1007 and "truncated" in error.reason, (cut, error.reason)
    error = refused(patched_size(jpeg, 1000, 1000))  # a 64x64 image's data under a 1000x1000 header
    assert error.code == 1007 and "less data than its 1000x1000 header" in error.reason
    smooth = jpeg_of(np.full((64, 64, 3), 128, np.uint8), quality=90)  # the least data a block can have
    assert refused(patched_size(smooth, 640, 64)).code == 1007
    assert decode_frame(frame_message(1, smooth), LIMITS).shape == (64, 64, 3)


def test_a_jpeg_cut_by_a_few_blocks_with_an_end_marker_added_is_refused() -> None:
    image = cv2.GaussianBlur(noise(240, 320), (0, 0), 2)
    for options in ({"quality": 90}, {"quality": 100, "subsampling": 0}, {"quality": 50, "optimize": True}):
        jpeg = jpeg_of(image, **options)
        assert inspect(jpeg, LIMITS.max_side).scans == 1
        assert decode_frame(frame_message(1, jpeg), LIMITS).shape == (240, 320, 3)
        for cut in (1, 2, 3, 5, 8, 13, 21, 34, 55):  # from one byte to several 4:2:0 MCUs of data
            bad = jpeg[:-2 - cut] + b"\xff\xd9"
            assert cv2.imdecode(np.frombuffer(bad, np.uint8), cv2.IMREAD_COLOR) is not None  # libjpeg fills it
            error = refused(bad)
            assert error.code == 1007 and "less data than its 320x240 header" in error.reason, (options, cut)
    grey = cv2.imencode(".jpg", image[:, :, 0], [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
    assert inspect(grey, 1024).components == 1 and refused(grey[:-3] + b"\xff\xd9").code == 1007


def test_the_page_s_jpegs_are_checked_without_the_python_walk_and_without_a_word(monkeypatch, capfd) -> None:
    import realtime_lrp.apps.serve.jpeg as jpeg_module

    walked = []
    walk = jpeg_module._walk
    monkeypatch.setattr(jpeg_module, "_walk", lambda *args: (walked.append(args), walk(*args))[1])
    image = cv2.GaussianBlur(noise(224, 224), (0, 0), 1.5)
    for options in ({"quality": 92}, {"quality": 75, "subsampling": 2}, {"quality": 92, "subsampling": 0}):
        assert decode_frame(frame_message(1, jpeg_of(image, **options)), LIMITS).shape == (224, 224, 3)
    assert walked == [], "the libjpeg check alone passed the page's frames"
    assert capfd.readouterr().err == "", "libjpeg's warnings are not printed for every frame"
    cut = jpeg_of(image, quality=92)
    assert refused(cut[:-10] + b"\xff\xd9").code == 1007 and len(walked) == 1  # the walk confirms


def test_restart_markers_are_counted_exactly() -> None:
    image = cv2.GaussianBlur(noise(64, 64), (0, 0), 3)
    jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90, cv2.IMWRITE_JPEG_RST_INTERVAL, 1])[1].tobytes()
    assert inspect(jpeg, 1024).scans == 1
    assert refused(patched_size(jpeg, 80, 64)).code == 1007  # 16 more rows: 4 more MCUs, without their markers
    assert refused(jpeg[:-3] + b"\xff\xd9").code == 1007  # the last interval cut by one byte


def test_decompression_bomb_headers_are_too_big_not_broken() -> None:
    jpeg = jpeg_of(noise(8, 8), quality=90)
    for h, w in [(65000, 65000), (1025, 8), (8, 40000)]:
        error = refused(patched_size(jpeg, h, w))
        assert error.code == 1009 and "at most 1024 pixels a side" in error.reason


@pytest.mark.parametrize("payload", [b"\xff\xd8", b"\xff\xd8\xff", b"\xff\xd8\xff\xc0\x00", b"\xff\xd8\xff\xd9",
                                     b"\xff\xd8\x00\x00\x00\x00", b"\xff\xd8\xff\xda\x00\x08\x01\x01\x00\x00\x3f\x00"])
def test_broken_structures_are_refused(payload: bytes) -> None:
    with pytest.raises(JpegError):
        inspect(payload, 1024)
    assert refused(payload).code == 1007


def test_random_corruption_never_escapes_as_anything_but_a_protocol_error() -> None:
    rng = np.random.default_rng(1)
    jpeg = bytearray(jpeg_of(noise(48, 48), quality=85))
    for _ in range(300):
        bad = bytearray(jpeg)
        for at in rng.integers(2, len(bad), rng.integers(1, 6)):
            bad[at] = rng.integers(0, 256)
        try:
            image = decode_frame(frame_message(1, bytes(bad)), LIMITS)
        except ProtocolError as exc:
            assert exc.code in (1007, 1009)
        else:
            assert image.ndim == 3 and max(image.shape[:2]) <= 1024


# -- text messages ---------------------------------------------------------------------------------

MALFORMED = [
    ("[" * 2000 + "]" * 2000, "nested too deep"),
    ('{"type": "settings", "top_k": ' + "9" * 400 + "}", "400 digits"),
    ('{"type": "settings", "top_k": 100000000000000000000}', "21 digits"),
    ('{"type": "settings", "top_k": -100000000000000000000}', "21 digits"),
    ('{"type": "settings", "alpha": 1' + "0" * 400 + '.0}', "bad setting alpha"),
    ('{"type": "settings", "alpha": NaN}', "NaN"),
    ('{"type": "settings", "top_k": Infinity}', "Infinity"),
    ('{"type": "settings", "top_k": true}', "bad setting top_k"),
    ('{"type": "settings", "preset": ["zplus"]}', "bad setting preset=<array>"),
    ('{"type": "settings", "layout": {"a": 1}}', "bad setting layout=<object>"),
    ('{"type": "settings", "cmap": 7}', "bad setting cmap"),
    ('{"type": "settings", "x": ' + "[" * 400 + "]" * 400 + "}", "bad setting"),
    ("[1, 2]", "not a JSON object"),
    ('"settings"', "not a JSON object"),
    ("{", "not JSON"),
]


@pytest.mark.parametrize("text,reason", MALFORMED, ids=[r for _, r in MALFORMED])
def test_malformed_settings_are_invalid_messages(text: str, reason: str) -> None:
    with pytest.raises(ProtocolError) as info:
        Settings().updated(parse_text(text))
    assert info.value.code == 1007 and reason in info.value.reason, info.value.reason


def test_good_settings_still_parse() -> None:
    settings = Settings().updated(parse_text('{"type": "settings", "top_k": 0, "alpha": 1, "preset": "zplus"}'))
    assert (settings.top_k, settings.alpha, settings.preset) == (0.0, 1.0, "zplus")
    assert parse_text('{"type": "reset", "n": 123456789012345}')["n"] == 123456789012345


# -- on a server -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server():
    with LrpServer(FrameProcessor.from_options(weights="shipped", device="cpu"), port=0) as srv:
        srv.start()
        yield srv


ON_THE_WIRE = [
    ("[" * 2000 + "]" * 2000, 1007, "nested too deep"),
    ('{"type": "settings", "top_k": ' + "9" * 400 + "}", 1007, "400 digits"),
    ('{"type": "settings", "top_k": 100000000000000000000}', 1007, "21 digits"),
    (frame_message(9, scan_bomb()), 1007, "progressive"),
    (frame_message(9, patched_size(item_jpeg(SNEAKER), 65000, 65000)), 1009, "at most 1024 pixels"),
    (frame_message(9, patched_size(item_jpeg(SNEAKER), 320, 320)), 1007, "less data"),
]


@pytest.mark.parametrize("message,code,reason", ON_THE_WIRE, ids=[w[2] for w in ON_THE_WIRE])
def test_attacks_close_their_connection_with_the_right_code(server: LrpServer, message, code: int,
                                                              reason: str) -> None:
    with connect(ws_url(server.url)) as good, connect(ws_url(server.url), max_size=None) as bad:
        hello_of(good), hello_of(bad)
        bad.send(message)
        got_code, got_reason = closed_with(bad)
        assert got_code == code and reason in got_reason, (got_code, got_reason)
        assert round_trip(good, 1, item_jpeg(SNEAKER))[0]["class"] == "Sneaker"


def test_permessage_deflate_is_not_offered(server: LrpServer) -> None:
    """JPEGs do not compress, and a compressed 2 MiB message of zeros is 2 KB on the wire."""
    with connect(ws_url(server.url)) as ws:  # the client offers it (websockets does by default)
        assert ws.response.headers.get("Sec-WebSocket-Extensions") is None
        hello_of(ws)


# -- floods, slow decoding, leaving early, idling ----------------------------------------------------

def own_server(**limits) -> LrpServer:
    return LrpServer(FrameProcessor.from_options(weights="shipped", device="cpu"), port=0, limits=Limits(**limits))


def wait_until(check, seconds: float = 30.0) -> bool:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_a_client_far_over_its_rate_is_disconnected() -> None:
    with own_server(max_fps=5) as srv:
        srv.start()
        with connect(ws_url(srv.url), max_queue=None) as flood, connect(ws_url(srv.url)) as good:
            hello_of(flood), hello_of(good)
            jpeg = item_jpeg(TROUSER)
            with suppress(ConnectionClosed):  # the server closes it mid-flood
                for ident in range(1, 5000):  # 100 times the rate, for at most 10 s
                    flood.send(frame_message(ident, jpeg))
                    time.sleep(0.002)
            code, reason = closed_with(flood)
            assert code == 1008 and "far over 5 frames/s" in reason, (code, reason)
            assert round_trip(good, 1, item_jpeg(SNEAKER))[0]["class"] == "Sneaker"


def test_an_idle_client_is_closed_and_frees_its_slot() -> None:
    with own_server(idle_seconds=1.5, max_clients=1) as srv:
        srv.start()
        with connect(ws_url(srv.url)) as idle:
            hello_of(idle)
            code, reason = closed_with(idle)
        assert code == 1000 and "idle for 1.5 s" in reason
        with connect(ws_url(srv.url)) as again:  # its place is free
            hello_of(again)
            assert round_trip(again, 1, item_jpeg(TROUSER))[0]["class"] == "Trouser"


class SlowDecoding(list):
    """The ids of the frames decoded, each of which took ``delay`` seconds, as a costly JPEG would:
    of CPU if ``busy``, else asleep."""

    delay = 0.3
    busy = False


@pytest.fixture()
def slow_decoding(monkeypatch) -> SlowDecoding:
    from realtime_lrp.apps.serve import app

    decoded = SlowDecoding()

    def slow(data: bytes, limits: Limits) -> np.ndarray:
        began = time.thread_time()
        if not decoded.busy:
            time.sleep(decoded.delay)
        while time.thread_time() - began < decoded.delay and decoded.busy:
            pass
        decoded.append(int.from_bytes(data[:4], "big"))
        return decode_frame(data, limits)

    monkeypatch.setattr(app, "decode_frame", slow)
    return decoded


def test_a_client_that_leaves_frees_its_slot_at_once_and_its_queued_frames_are_not_decoded(slow_decoding) -> None:
    with own_server(max_fps=1000, max_clients=1) as srv:
        srv.start()
        with connect(ws_url(srv.url)) as leaving:
            hello_of(leaving)
            for ident in range(1, 41):
                leaving.send(frame_message(ident, item_jpeg(TROUSER)))
        assert wait_until(lambda: not srv.hub.clients, 5.0), "the slot was still held 5 s after its client left"
        assert len(slow_decoding) <= 3, slow_decoding  # the one in hand, not the 40 sent (12 s of decoding)
        with connect(ws_url(srv.url)) as next_client:
            hello_of(next_client)
            assert round_trip(next_client, 1, item_jpeg(SNEAKER))[0]["class"] == "Sneaker"


def test_a_client_whose_frames_take_too_long_to_decode_is_closed(slow_decoding) -> None:
    slow_decoding.busy = True
    with own_server(max_fps=1000, decode_share=0.05) as srv:
        srv.start()
        with connect(ws_url(srv.url)) as ws:
            hello_of(ws)
            with pytest.raises(ConnectionClosed):
                for ident in range(1, 60):
                    round_trip(ws, ident, item_jpeg(TROUSER))
            code, reason = closed_with(ws)
        assert code == 1008 and "of decoding a second" in reason, (code, reason)
        assert 6 <= len(slow_decoding) <= 12  # a 2 s burst of 0.3 s decodes, then the budget is spent


def test_stopping_while_frames_are_being_decoded_leaves_no_traceback(slow_decoding, capfd) -> None:
    """What SIGTERM and SIGINT do (LrpServer.close), with a decode in hand that outlasts uvicorn's grace period."""
    slow_decoding.delay = 4.0
    srv = own_server(max_fps=1000)
    try:
        srv.start()
        with ExitStack() as opened:
            clients = [opened.enter_context(connect(ws_url(srv.url))) for _ in range(3)]
            for ws in clients:
                hello_of(ws)
                for ident in range(1, 4):
                    ws.send(frame_message(ident, item_jpeg(TROUSER)))
            assert wait_until(lambda: sum(c.received for c in srv.hub.clients) == 9)
            srv.close()
            for ws in clients:
                assert closed_with(ws)[0] == 1012
    finally:
        srv.close()
    err = capfd.readouterr().err
    assert "Traceback" not in err and "CancelledError" not in err, err[-2000:]


# -- presets ---------------------------------------------------------------------------------------

def test_every_preset_is_built_at_start_up_and_none_on_a_switch(monkeypatch) -> None:
    """Building a preset's processor when a client first picks it stalled every client while it was built."""
    from realtime_lrp.apps.serve.worker import Worker
    from realtime_lrp.lrp.cam import CAM_METHODS
    from realtime_lrp.lrp.presets import PRESET_NAMES

    built = []
    make = Worker._make

    def counted(self, preset: str):
        built.append(preset)
        return make(self, preset)

    monkeypatch.setattr(Worker, "_make", counted)
    with own_server(max_fps=1000) as srv:
        srv.start()
        assert srv.worker.ready() == set(PRESET_NAMES) | set(CAM_METHODS)
        at_start = list(built)
        with connect(ws_url(srv.url)) as chooser, connect(ws_url(srv.url)) as other:
            hello_of(chooser), hello_of(other)
            for ident, preset in enumerate(PRESET_NAMES, start=1):
                chooser.send(json.dumps({"type": "settings", "preset": preset}))
                assert round_trip(chooser, ident, item_jpeg(TROUSER))[0]["preset"] == preset
                assert round_trip(other, ident, item_jpeg(SNEAKER))[0]["class"] == "Sneaker"
            for ident, method in enumerate(CAM_METHODS, start=100):
                chooser.send(json.dumps({"type": "settings", "method": method, "layout": "compare"}))
                assert round_trip(chooser, ident, item_jpeg(TROUSER))[0]["halves"][1]["title"] != ""
        assert built == at_start, "a processor was built while clients were being served"


# -- the load test -------------------------------------------------------------------------------

def rss_mb(pid: int) -> float:
    """The resident memory of process ``pid`` in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def compressed_frame(url: str) -> int:
    """Open ``/ws`` by hand, offering permessage-deflate, then send a 2 MiB frame of zeros compressed to
    2 KB, as if it had been accepted; the close code the server answers with."""
    parts = urlsplit(ws_url(url))
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as raw:
        key = base64.b64encode(os.urandom(16)).decode()
        raw.sendall((f"GET {parts.path}?{parts.query} HTTP/1.1\r\nHost: {parts.netloc}\r\nUpgrade: websocket\r\n"
                     f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                     "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += raw.recv(4096)
        assert head.startswith(b"HTTP/1.1 101") and b"permessage-deflate" not in head.lower(), head
        squeezer = zlib.compressobj(9, zlib.DEFLATED, -15)
        payload = squeezer.compress(b"\x00\x00\x00\x01" + bytes(2 * 1024 * 1024)) + squeezer.flush(zlib.Z_SYNC_FLUSH)
        payload = payload[:-4]
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        raw.sendall(bytes([0x80 | 0x40 | 0x2, 0x80 | 126]) + len(payload).to_bytes(2, "big") + mask + masked)
        data = head.split(b"\r\n\r\n", 1)[1]
        while True:
            while len(data) >= 2 and data[0] & 0x0F != 0x8:  # skip the hello
                size = data[1] & 0x7F
                offset = 2 if size < 126 else (4 if size == 126 else 10)
                size = size if size < 126 else int.from_bytes(data[2:offset], "big")
                if len(data) < offset + size:
                    break
                data = data[offset + size:]
            if len(data) >= 4 and data[0] & 0x0F == 0x8:
                return int.from_bytes(data[2:4], "big")
            chunk = raw.recv(65536)
            if not chunk:
                return 1006
            data += chunk


def test_under_attack_a_good_client_keeps_its_frames_and_the_attackers_are_closed(tmp_path: Path) -> None:
    """One well-behaved client (the page's pace: one frame in flight, 30 frames/s at most), first alone, then
    beside the attacks: scan bombs, floods of large frames from clients that then vanish, floods over the
    rate, deep JSON, compressed frames. Prints its rate and latency and the server's memory; asserts the good
    client is served throughout and each attacker is closed with its code."""
    served = ServeProcess([], tmp_path)
    pid = served.proc.pid
    try:
        alone = run_load(served.url, 1, 3.0)
        memory = {"start": rss_mb(pid)}
        closes: dict[str, list[int]] = {}
        big = cv2.imencode(".jpg", noise(480, 640), [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()

        def attacker(name: str, message, repeat: int = 3, max_size: int | None = None) -> None:
            for _ in range(repeat):
                with connect(ws_url(served.url), max_size=max_size, max_queue=None) as ws:  # it reads nothing
                    hello_of(ws)
                    with suppress(ConnectionClosed):  # the server closes it mid-flood
                        for _ in range(1 if not callable(message) else 1_000_000):
                            ws.send(message() if callable(message) else message)
                            time.sleep(0.003 if callable(message) else 0)  # 10 times the rate
                    closes.setdefault(name, []).append(closed_with(ws)[0])

        def vanishing() -> None:  # large frames as fast as the socket takes them, then gone without a close
            for _ in range(6):
                raw = socket.create_connection(("127.0.0.1", urlsplit(served.url).port))
                ws = connect(ws_url(served.url), sock=raw, max_size=None).__enter__()
                began = time.monotonic()
                with suppress(Exception):
                    ident = 0
                    while time.monotonic() - began < 0.5:
                        ident += 1
                        ws.send(frame_message(ident, big))
                raw.shutdown(socket.SHUT_RDWR)
                raw.close()
                vanished.append(ident)

        ident = iter(range(1, 10**9))
        vanished: list[int] = []  # frames each vanishing client sent
        attacks = [
            threading.Thread(target=attacker, args=("scan bomb", frame_message(1, scan_bomb()))),
            threading.Thread(target=attacker, args=("deep JSON", "[" * 2000 + "]" * 2000)),
            threading.Thread(target=attacker, args=("over the rate", lambda: frame_message(next(ident),
                                                                                         item_jpeg(TROUSER)))),
            *[threading.Thread(target=vanishing) for _ in range(4)],
            threading.Thread(target=lambda: closes.setdefault("compressed", []).extend(
                compressed_frame(served.url) for _ in range(3))),
        ]
        good: list = []
        watcher = threading.Thread(target=lambda: good.append(run_load(served.url, 1, 10.0)))
        watcher.start()
        for thread in attacks:
            thread.start()
        peak = memory["start"]
        while watcher.is_alive():
            peak = max(peak, rss_mb(pid))
            time.sleep(0.1)
        for thread in attacks:
            thread.join(60)
        memory["peak"] = peak
        assert wait_until(lambda: not stats(served.url)["clients"], 10), stats(served.url)["clients"]
        memory["after"] = rss_mb(pid)
        after = run_load(served.url, 1, 2.0)
    finally:
        assert served.stop() == 143
    for name, load in (("alone", alone), ("under attack", good[0]), ("after", after)):
        client = load.results[0]
        print(f"good client {name}: {client.frames} frames, {client.fps:.1f} frames/s, round trip p50"
              f" {np.percentile(client.latencies_ms, 50):.1f} ms, p95 {np.percentile(client.latencies_ms, 95):.1f} ms")
    print(f"server memory: {memory['start']:.0f} MB before the attacks, peak {memory['peak']:.0f} MB,"
          f" {memory['after']:.0f} MB after; {len(vanished)} clients vanished after sending {sum(vanished)} frames"
          f" of {len(big) // 1024} KB; closes: {closes}")
    for load in (alone, good[0], after):
        assert load.errors == [] and load.results[0].frames >= 3 and load.results[0].labels <= set(CLASSES)
    assert closes["scan bomb"] == [1007] * 3 and closes["deep JSON"] == [1007] * 3
    assert closes["over the rate"] == [1008] * 3
    assert closes["compressed"] == [1002] * 3 and len(vanished) == 24
    assert "Traceback" not in served.stderr
