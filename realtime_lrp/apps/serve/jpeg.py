"""A JPEG's structure read from its markers before it is decoded, so that costly or broken images cost nothing.

Browsers encode canvas frames as baseline JPEGs: one frame header, one scan (or one per
component), Huffman tables in the file. Anything else is refused before the decoder sees
it: progressive and other non-baseline kinds, more than :data:`MAX_SCANS` scans (a JPEG of
thousands of tiny scans takes seconds to decode), sizes over the limit (decompression
bombs), and data that ends before the size its header claims (truncated, or a header patched
to a larger size). The last is judged from a bound that every valid scan meets: each 8x8
block takes at least the shortest DC code plus the shortest AC code of its Huffman tables;
with restart markers the count of those is checked exactly. A scan cut short by a few
blocks can still pass the bound; libjpeg then fills the missing blocks.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

MAX_SCANS = 4             # baseline: one interleaved scan, or one per component (at most 3)


_KINDS = {0xC2: "progressive", 0xC3: "lossless", 0xC5: "hierarchical", 0xC6: "hierarchical progressive",
          0xC7: "hierarchical lossless", 0xC9: "arithmetic-coded", 0xCA: "arithmetic-coded progressive",
          0xCB: "arithmetic-coded lossless", 0xCD: "hierarchical arithmetic-coded",
          0xCE: "hierarchical arithmetic-coded progressive", 0xCF: "hierarchical arithmetic-coded lossless"}


_NEXT_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")  # the end of a scan's entropy-coded data


_RESTART = re.compile(rb"\xff[\xd0-\xd7]")


class JpegError(ValueError):
    """A JPEG that is refused; ``too_big`` when it is refused for its size."""

    def __init__(self, message: str, too_big: bool = False) -> None:
        super().__init__(message)
        self.too_big = too_big


@dataclass(frozen=True)
class JpegInfo:
    """What the markers say: size, components and scans."""

    width: int
    height: int
    components: int
    scans: int


@dataclass(frozen=True)
class _Component:
    h: int
    v: int


def inspect(data: bytes, max_side: int) -> JpegInfo:
    """The structure of the baseline JPEG ``data``; JpegError if it is anything the page would not send."""
    if not data.startswith(b"\xff\xd8"):
        raise JpegError("not a JPEG image")
    components: dict[int, _Component] = {}
    size: tuple[int, int] | None = None
    min_dc: dict[int, int] = {}
    min_ac: dict[int, int] = {}
    restart = 0
    scans = 0
    scanned: set[int] = set()
    pos, end = 2, len(data)
    while True:
        while pos < end and data[pos] == 0xFF and pos + 1 < end and data[pos + 1] == 0xFF:
            pos += 1  # fill bytes
        if pos + 2 > end:
            raise JpegError("ends before its end-of-image marker (truncated)")
        if data[pos] != 0xFF:
            raise JpegError(f"has no marker where one belongs (byte {pos})")
        marker = data[pos + 1]
        pos += 2
        if marker == 0xD9:
            break
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:
            continue
        if pos + 2 > end:
            raise JpegError("ends inside a header (truncated)")
        length = int.from_bytes(data[pos:pos + 2], "big")
        if length < 2 or pos + length > end:
            raise JpegError("ends inside a header (truncated)")
        segment = data[pos + 2:pos + length]
        pos += length
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if marker not in (0xC0, 0xC1):
                raise JpegError(f"is a {_KINDS[marker]} JPEG; only baseline JPEGs are taken")
            if size is not None:
                raise JpegError("has more than one frame header")
            size, components = _frame(segment, max_side)
        elif marker == 0xC4:
            _huffman(segment, min_dc, min_ac)
        elif marker == 0xDD:
            if len(segment) != 2:
                raise JpegError("has a broken restart interval")
            restart = int.from_bytes(segment, "big")
        elif marker == 0xDA:
            if size is None:
                raise JpegError("has a scan before its frame header")
            scans += 1
            if scans > MAX_SCANS:
                raise JpegError(f"has more than {MAX_SCANS} scans")
            ids, bits = _scan(segment, components, size, min_dc, min_ac)
            scanned.update(ids)
            found = _NEXT_MARKER.search(data, pos)
            stop = found.start() if found else end
            coded = data[pos:stop]
            restarts = len(_RESTART.findall(coded))
            available = 8 * (len(coded) - coded.count(b"\xff\x00") - 2 * restarts)
            units = _units(ids, components, size)
            if available < bits or (restart and restarts < math.ceil(units / restart) - 1):
                raise JpegError(f"has less data than its {size[1]}x{size[0]} header needs (truncated or"
                                " patched)")
            pos = stop
    if size is None or scans == 0:
        raise JpegError("has no image data")
    if scanned != set(components):
        raise JpegError("leaves components out of its scans")
    return JpegInfo(size[1], size[0], len(components), scans)


def _frame(segment: bytes, max_side: int) -> tuple[tuple[int, int], dict[int, _Component]]:
    if len(segment) < 6:
        raise JpegError("has a broken frame header")
    precision, height, width, count = segment[0], int.from_bytes(segment[1:3], "big"), \
        int.from_bytes(segment[3:5], "big"), segment[5]
    if precision != 8 or count not in (1, 3) or len(segment) != 6 + 3 * count or height == 0 or width == 0:
        raise JpegError("has a frame header this server does not take (8-bit grey or colour only)")
    if max(width, height) > max_side:
        raise JpegError(f"is {width}x{height}: at most {max_side} pixels a side", too_big=True)
    components = {}
    for i in range(count):
        ident, factors = segment[6 + 3 * i], segment[7 + 3 * i]
        h, v = factors >> 4, factors & 15
        if not (1 <= h <= 4 and 1 <= v <= 4) or ident in components:
            raise JpegError("has a broken frame header")
        components[ident] = _Component(h, v)
    return (height, width), components


def _huffman(segment: bytes, min_dc: dict[int, int], min_ac: dict[int, int]) -> None:
    """Record the shortest code length of each Huffman table in the segment."""
    pos = 0
    while pos < len(segment):
        if pos + 17 > len(segment):
            raise JpegError("has a broken Huffman table")
        kind, table = segment[pos] >> 4, segment[pos] & 15
        counts = segment[pos + 1:pos + 17]
        total = sum(counts)
        if kind > 1 or table > 3 or total == 0 or total > 256 or pos + 17 + total > len(segment):
            raise JpegError("has a broken Huffman table")
        shortest = next(i + 1 for i, n in enumerate(counts) if n)
        (min_ac if kind else min_dc)[table] = shortest
        pos += 17 + total


def _scan(segment: bytes, components: dict[int, _Component], size: tuple[int, int],
          min_dc: dict[int, int], min_ac: dict[int, int]) -> tuple[list[int], int]:
    """The components of a scan and the fewest bits its entropy-coded data can have."""
    count = segment[0] if segment else 0
    if not 1 <= count <= len(components) or len(segment) != 4 + 2 * count:
        raise JpegError("has a broken scan header")
    if segment[1 + 2 * count:] != b"\x00\x3f\x00":
        raise JpegError("has a scan that is not baseline")
    ids, bits = [], 0
    for i in range(count):
        ident, tables = segment[1 + 2 * i], segment[2 + 2 * i]
        if ident not in components or ident in ids:
            raise JpegError("has a scan of a component it does not have")
        dc, ac = tables >> 4, tables & 15
        if dc not in min_dc or ac not in min_ac:
            raise JpegError("uses a Huffman table it does not define")
        ids.append(ident)
        bits += _blocks(ident, count, components, size) * (min_dc[dc] + min_ac[ac])
    return ids, bits


def _blocks(ident: int, in_scan: int, components: dict[int, _Component], size: tuple[int, int]) -> int:
    """The 8x8 blocks of one component in a scan (interleaved scans code whole MCUs)."""
    height, width = size
    hmax = max(c.h for c in components.values())
    vmax = max(c.v for c in components.values())
    c = components[ident]
    if in_scan > 1:
        return math.ceil(width / (8 * hmax)) * math.ceil(height / (8 * vmax)) * c.h * c.v
    return math.ceil(math.ceil(width * c.h / hmax) / 8) * math.ceil(math.ceil(height * c.v / vmax) / 8)


def _units(ids: list[int], components: dict[int, _Component], size: tuple[int, int]) -> int:
    """The scan's MCUs (a non-interleaved scan's MCU is one block), which restart intervals count."""
    if len(ids) > 1:
        height, width = size
        hmax = max(c.h for c in components.values())
        vmax = max(c.v for c in components.values())
        return math.ceil(width / (8 * hmax)) * math.ceil(height / (8 * vmax))
    return _blocks(ids[0], 1, components, size)
