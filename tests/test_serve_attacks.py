"""``rtlrp serve`` under attack: costly and broken JPEGs, malformed settings, floods, leaving early.

Attack images are made here, by hand or with PIL: a progressive JPEG of 174,000 scans (the
one that took 10 s of CPU to decode), size-patched and truncated JPEGs, decompression-bomb
headers. Each must be refused with the right close code, before any decoding, while a
well-behaved client on the same server keeps getting its frames.
"""
from __future__ import annotations

import io
import time

import cv2
import numpy as np
import pytest
from PIL import Image
from test_serve import SNEAKER, TROUSER, closed_with, frame_message, hello_of, item_jpeg, round_trip, ws_url
from websockets.sync.client import connect

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


def test_restart_markers_are_counted_exactly() -> None:
    image = cv2.GaussianBlur(noise(64, 64), (0, 0), 3)
    jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90, cv2.IMWRITE_JPEG_RST_INTERVAL, 1])[1].tobytes()
    assert inspect(jpeg, 1024).scans == 1
    assert refused(patched_size(jpeg, 80, 64)).code == 1007  # 16 more rows: 4 more MCUs, without their markers


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
