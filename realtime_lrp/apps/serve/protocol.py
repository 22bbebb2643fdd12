"""The messages of ``/ws``, their limits and their close codes (see :mod:`realtime_lrp.apps.serve`)."""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, replace
from typing import Any, Mapping

import numpy as np

from realtime_lrp.apps.serve.jpeg import JpegError, inspect
from realtime_lrp.lrp.filter import DEFAULT_TOP_K
from realtime_lrp.lrp.presets import PRESET_NAMES
from realtime_lrp.pipeline import render
from realtime_lrp.pipeline.processor import METHODS

CLOSE_IDLE = 1000         # a client that sent nothing for a while (a normal closure)


CLOSE_UNSUPPORTED = 1003  # a kind of message this server does not take


CLOSE_INVALID = 1007      # a message whose content is broken (not JSON, not a JPEG, bad values)


CLOSE_POLICY = 1008       # against the rules (frames in kiosk mode)


CLOSE_TOO_BIG = 1009      # a frame or message over the limits


CLOSE_INTERNAL = 1011     # the server failed


CLOSE_TRY_LATER = 1013    # too many clients


JPEG_QUALITY = 85


MAX_TEXT = 4096           # characters of a text message


MAX_DIGITS = 15           # digits of an integer in a text message (no setting needs more)


COMPARE = "compare"       # the layout that shows LRP and a CAM method of the same frame side by side


LAYOUTS: tuple[str, ...] = (*render.LAYOUTS, COMPARE)


class ProtocolError(Exception):
    """A client broke the protocol: its connection is closed with ``code`` and ``reason``."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass(frozen=True)
class Limits:
    """What one client may send and use, and how many clients there may be.

    Frames per second (a client far over it for a few seconds is closed), pixels a side,
    bytes a message, text messages per second; ``decode_share``: CPU seconds of decoding
    per second of connection, on average; ``idle_seconds``: how long a client that sends
    nothing keeps its slot (kiosk pages only watch, and have no such limit).
    """

    max_fps: float = 30.0
    max_side: int = 1024
    max_message: int = 2 * 1024 * 1024
    max_clients: int = 32
    max_texts: float = 60.0
    decode_share: float = 0.5
    idle_seconds: float = 300.0


@dataclass(frozen=True)
class Settings:
    """How a stream is explained and shown; ``cmap=None`` is the method's default map.

    ``method`` is ``lrp`` (with ``preset`` and ``top_k``) or a CAM method. The ``compare`` layout
    shows two overlays of the frame side by side: LRP with ``preset`` on the left, and on the right
    the CAM method of ``method`` (Grad-CAM when ``method`` is ``lrp``), each with its default
    colour map unless ``cmap`` is set.
    """

    preset: str = "epsilon-plus-flat"
    top_k: float = DEFAULT_TOP_K
    cmap: str | None = None
    layout: str = "overlay"
    alpha: float = 0.6
    method: str = "lrp"

    @property
    def explainer(self) -> str:
        """The name of the explainer of a single-method layout: the preset for LRP, else the CAM method."""
        return self.preset if self.method == "lrp" else self.method

    @property
    def compared(self) -> str:
        """The CAM method on the right of the ``compare`` layout."""
        return "gradcam" if self.method == "lrp" else self.method

    def updated(self, message: Mapping[str, Any]) -> "Settings":
        """These settings with the fields of a ``settings`` message; bad values raise ProtocolError."""
        changes: dict[str, Any] = {}
        for key, value in message.items():
            if key == "type":
                continue
            number = _number(value)
            if key == "preset" and isinstance(value, str) and value in PRESET_NAMES:
                changes[key] = value
            elif key in ("top_k", "alpha") and number is not None and 0.0 <= number <= 1.0:
                changes[key] = number
            elif key == "cmap" and (value is None or (isinstance(value, str) and value.lower() in render.colormaps())):
                changes[key] = None if value is None else value.lower()
            elif key == "layout" and isinstance(value, str) and value in LAYOUTS:
                changes[key] = value
            elif key == "method" and isinstance(value, str) and value in METHODS:
                changes[key] = value
            else:
                raise ProtocolError(CLOSE_INVALID, f"bad setting {key[:40]}={shown(value)}")
        return replace(self, **changes)


def _number(value: Any) -> float | None:
    """``value`` as a finite float, or None if it is not a number (booleans are not)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def shown(value: Any) -> str:
    """A short rendering of a client's value for a close reason: scalars as JSON, containers by kind."""
    if isinstance(value, (dict, list)):
        return f"<{'object' if isinstance(value, dict) else 'array'}>"
    return json.dumps(value)[:40]


def _integer(text: str) -> int:
    if len(text.lstrip("-")) > MAX_DIGITS:
        raise ProtocolError(CLOSE_INVALID, f"a number of {len(text.lstrip('-'))} digits: at most {MAX_DIGITS}")
    return int(text)


def _constant(name: str) -> float:
    raise ProtocolError(CLOSE_INVALID, f"{name} is not a number this server takes")


def parse_text(text: str) -> dict[str, Any]:
    """A client's text message as a JSON object; ProtocolError (1009 too long, 1007 broken) otherwise.

    Integers are refused past :data:`MAX_DIGITS` digits before they are converted, and nesting
    deeper than the parser goes is a broken message, not a server error.
    """
    if len(text) > MAX_TEXT:
        raise ProtocolError(CLOSE_TOO_BIG, f"a text message of {len(text)} characters: at most {MAX_TEXT}")
    try:
        message = json.loads(text, parse_int=_integer, parse_constant=_constant)
    except RecursionError:
        raise ProtocolError(CLOSE_INVALID, "a text message nested too deep") from None
    except ValueError:
        raise ProtocolError(CLOSE_INVALID, "a text message that is not JSON") from None
    if not isinstance(message, dict):
        raise ProtocolError(CLOSE_INVALID, "a text message that is not a JSON object")
    return message


def frame_id(data: bytes) -> int:
    """The id at the head of a frame message; ProtocolError if there is no room for an image."""
    if len(data) < 7:
        raise ProtocolError(CLOSE_INVALID, f"a frame is a 4-byte id and a JPEG image; got {len(data)} bytes")
    return int.from_bytes(data[:4], "big")


def decode_frame(data: bytes, limits: Limits) -> np.ndarray:
    """The BGR image of a frame message; ProtocolError for anything but a baseline JPEG within the limits.

    The markers are read first (:func:`~realtime_lrp.apps.serve.jpeg.inspect`), so an
    oversized, progressive, many-scan, truncated or size-patched JPEG costs no decoding.
    """
    import cv2

    ident = frame_id(data)
    payload = memoryview(data)[4:]
    try:
        info = inspect(payload.tobytes(), limits.max_side)
    except JpegError as exc:
        raise ProtocolError(CLOSE_TOO_BIG if exc.too_big else CLOSE_INVALID,
                            f"frame {ident} {exc}"[:120]) from None
    image = cv2.imdecode(np.frombuffer(payload, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if image is None or image.shape[:2] != (info.height, info.width):
        raise ProtocolError(CLOSE_INVALID, f"frame {ident} is not a readable JPEG image")
    return image


def encode_result(meta: Mapping[str, Any], jpeg: bytes) -> bytes:
    """A result message: 4-byte length, the JSON of ``meta``, the JPEG."""
    head = json.dumps(meta, separators=(",", ":")).encode()
    return len(head).to_bytes(4, "big") + head + jpeg


def decode_result(data: bytes) -> tuple[dict[str, Any], bytes]:
    """``(meta, jpeg)`` of a result message (for clients written in Python: tests, ``serve-bench``)."""
    n = int.from_bytes(data[:4], "big")
    return json.loads(data[4:4 + n]), data[4 + n:]


class RateLimit:
    """At most ``rate`` events a second on average, in bursts of up to one second's worth (a token bucket).

    Refused events fill a second bucket that drains at ``rate``: a client that keeps sending
    at more than twice its rate fills it in a few seconds and is :attr:`flooding`.
    """

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.capacity = max(1.0, rate)
        self.tokens = self.capacity
        self.excess = 0.0
        self.last = time.monotonic()

    def allow(self, now: float) -> bool:
        """Whether an event arriving at ``now`` is within the rate (and count it if so)."""
        elapsed = max(0.0, now - self.last)
        self.tokens = min(self.capacity, self.tokens + elapsed * self.rate)
        self.excess = max(0.0, self.excess - elapsed * self.rate)
        self.last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        self.excess += 1.0
        return False

    @property
    def flooding(self) -> bool:
        """Whether the refused events outrun the rate by more than four seconds' worth (at least 10)."""
        return self.excess > max(10.0, 4.0 * self.rate)


class DecodeBudget:
    """CPU seconds of decoding a client may use: ``share`` of each second, in bursts of up to 2 s."""

    def __init__(self, share: float) -> None:
        self.share = share
        self.capacity = 2.0
        self.seconds = self.capacity
        self.last = time.monotonic()

    def left(self, now: float) -> bool:
        """Whether any budget is left at ``now``."""
        self.seconds = min(self.capacity, self.seconds + max(0.0, now - self.last) * self.share)
        self.last = now
        return self.seconds > 0.0

    def spend(self, seconds: float) -> None:
        """Count ``seconds`` of decoding."""
        self.seconds -= seconds
