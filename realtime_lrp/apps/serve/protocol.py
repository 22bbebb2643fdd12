"""The messages of ``/ws``, their limits and their close codes (see :mod:`realtime_lrp.apps.serve`)."""
from __future__ import annotations

import io
import json
import time
from dataclasses import dataclass, replace
from typing import Any, Mapping

import numpy as np

from realtime_lrp.lrp.presets import PRESET_NAMES
from realtime_lrp.pipeline import render

CLOSE_UNSUPPORTED = 1003  # a kind of message this server does not take


CLOSE_INVALID = 1007      # a message whose content is broken (not JSON, not a JPEG, bad values)


CLOSE_POLICY = 1008       # against the rules (frames in kiosk mode)


CLOSE_TOO_BIG = 1009      # a frame or message over the limits


CLOSE_INTERNAL = 1011     # the server failed


CLOSE_TRY_LATER = 1013    # too many clients


JPEG_QUALITY = 85


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
