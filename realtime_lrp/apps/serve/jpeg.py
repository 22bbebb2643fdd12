"""A JPEG's structure read from its markers before it is decoded, so that costly or broken images cost nothing.

Browsers encode canvas frames as baseline JPEGs: one frame header, one scan (or one per
component), Huffman tables in the file. Anything else is refused before the decoder sees
it: progressive and other non-baseline kinds, more than :data:`MAX_SCANS` scans (a JPEG of
thousands of tiny scans takes seconds to decode), sizes over the limit (decompression
bombs), and data that ends before the size its header claims (truncated, or a header patched
to a larger size, also when an end marker was added after the cut: libjpeg would fill the
missing blocks and only warn). The last is exact and, for the one-scan JPEGs browsers send,
cheap: Pillow's libjpeg decodes the luma with the header patched to one more row of MCUs,
whose first MCU stays grey only if the data ran out before it. Only then (or for several
scans, or restart markers) the scan's entropy-coded data is walked code by code with its
Huffman tables, in Python, and must hold every block its header promises.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

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


_PAD = 4096  # zero bytes after a segment's data: one MCU can overrun by ~2.6 KB before the bound is checked


def inspect(data: bytes, max_side: int) -> JpegInfo:
    """The structure of the baseline JPEG ``data``; JpegError if it is anything the page would not send."""
    if not data.startswith(b"\xff\xd8"):
        raise JpegError("not a JPEG image")
    components: dict[int, _Component] = {}
    size: tuple[int, int] | None = None
    tables: dict[tuple[int, int], bytes] = {}  # (class, id) -> its 16 counts and symbols
    restart = 0
    scans = 0
    scanned: set[int] = set()
    walks: list[tuple[int, int, list[int], list[tuple[bytes, bytes]]]] = []  # each scan's data and codes
    height_at = 0
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
            height_at = pos - length + 3
        elif marker == 0xC4:
            _huffman(segment, tables)
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
            ids, coding = _scan(segment, components, size, tables)
            scanned.update(ids)
            found = _NEXT_MARKER.search(data, pos)
            stop = found.start() if found else end
            walks.append((pos, stop, ids, coding))
            pos = stop
    if size is None or scans == 0:
        raise JpegError("has no image data")
    if scanned != set(components):
        raise JpegError("leaves components out of its scans")
    if scans > 1 or restart or not _ends_after_its_blocks(data, height_at, size, components):
        for start, stop, ids, coding in walks:
            _walk(data[start:stop], coding, _units(ids, components, size), restart, size)
    return JpegInfo(size[1], size[0], len(components), scans)


def _ends_after_its_blocks(data: bytes, height_at: int, size: tuple[int, int],
                           components: dict[int, _Component]) -> bool:
    """The cheap check of a one-scan JPEG: True if libjpeg finds every block's data before the end.

    The header is patched to one more row of MCUs, which has no data: libjpeg decodes the
    first of them from the padding bits (and zeros), but leaves it grey (128) when the data
    ran out before, inside the real blocks. So False means truncated, or a last block that
    happens to decode to 128 there too: the exact walk decides.
    """
    import io

    from PIL import Image

    one = len(components) == 1
    mcu_h = 8 if one else 8 * max(c.v for c in components.values())
    mcu_w = 8 if one else 8 * max(c.h for c in components.values())
    rows = math.ceil(size[0] / mcu_h) * mcu_h
    patched = data[:height_at] + (rows + mcu_h).to_bytes(2, "big") + data[height_at + 2:]
    try:  # Pillow's libjpeg, whose warnings go nowhere (OpenCV's print to stderr)
        with Image.open(io.BytesIO(patched)) as image:
            image.draft("L", image.size)  # the luma alone: no colour conversion
            grey = np.asarray(image)
    except (OSError, ValueError, SyntaxError):
        return False
    if grey.ndim != 2 or grey.shape[0] != rows + mcu_h:
        return False
    return bool((grey[rows:, :mcu_w] != 128).any())


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


def _huffman(segment: bytes, tables: dict[tuple[int, int], bytes]) -> None:
    """Keep each Huffman table of the segment (its 16 code-length counts and its symbols)."""
    pos = 0
    while pos < len(segment):
        if pos + 17 > len(segment):
            raise JpegError("has a broken Huffman table")
        kind, table = segment[pos] >> 4, segment[pos] & 15
        total = sum(segment[pos + 1:pos + 17])
        if kind > 1 or table > 3 or total == 0 or total > 256 or pos + 17 + total > len(segment):
            raise JpegError("has a broken Huffman table")
        tables[kind, table] = bytes(segment[pos + 1:pos + 17 + total])
        pos += 17 + total


@lru_cache(maxsize=32)
def _lookup(table: bytes, ac: bool) -> list[int]:
    """For every 16-bit window: the bits the code there and its extra bits take (0: no such code);
    for AC tables, plus 256 times the coefficients the symbol moves on (64 ends the block)."""
    counts, symbols = table[:16], table[16:]
    lengths = np.repeat(np.arange(1, 17), list(counts))
    spans = (1 << (16 - lengths)).astype(np.int64)
    code, first = 0, []
    for length, n in enumerate(counts, 1):
        if code + n > 1 << length:
            raise JpegError("has a broken Huffman table")
        first.extend(range(code, code + n))
        code = (code + n) << 1
    sym = np.frombuffer(symbols, np.uint8).astype(np.int64)
    size, run = sym & 15, sym >> 4
    if ac:
        step = np.where(size > 0, run + 1, np.where(run == 15, 16, 64))
        entry = lengths + size + (step << 8)
    else:
        entry = lengths + sym
    out = np.zeros(1 << 16, np.int64)
    starts = np.asarray(first, np.int64) << (16 - lengths)
    offsets = np.arange(int(spans.sum())) - np.repeat(np.cumsum(spans) - spans, spans)
    out[np.repeat(starts, spans) + offsets] = np.repeat(entry, spans)
    return out.tolist()


def _walk(coded: bytes, tables: list[tuple[bytes, bytes]], units: int, restart: int,
          size: tuple[int, int]) -> None:
    """Walk the codes of ``units`` MCUs (blocks with ``tables``: DC and AC) through the scan's data;
    JpegError if the data, or one restart interval of it, ends first or holds a code no table has.
    Exact, and in Python: about a microsecond a code."""
    coding = [(_lookup(dc, False), _lookup(ac, True)) for dc, ac in tables]
    parts = _RESTART.split(coded) if restart else [coded]
    intervals = math.ceil(units / restart) if restart else 1
    if len(parts) < intervals:
        raise JpegError(f"has less data than its {size[1]}x{size[0]} header needs (truncated or patched)")
    for n in range(intervals):
        part = parts[n].replace(b"\xff\x00", b"\xff")
        bits = 8 * len(part)
        u = np.frombuffer(part + bytes(_PAD), np.uint8).astype(np.int64)
        window = ((u[:-2] << 16) | (u[1:-1] << 8) | u[2:]).tolist()
        p = 0
        for _ in range(min(restart, units - n * restart) if restart else units):
            for dc, ac in coding:
                e = dc[(window[p >> 3] >> (8 - (p & 7))) & 0xFFFF]
                k = 1
                while e and k < 64:
                    p += e & 255
                    e = ac[(window[p >> 3] >> (8 - (p & 7))) & 0xFFFF]
                    k += e >> 8
                if not e:
                    raise JpegError("has a code its Huffman tables do not define (corrupt)")
                p += e & 255
            if p > bits:
                raise JpegError(f"has less data than its {size[1]}x{size[0]} header needs (truncated or"
                                " patched)")


def _scan(segment: bytes, components: dict[int, _Component], size: tuple[int, int],
          tables: dict[tuple[int, int], bytes]) -> tuple[list[int], list[tuple[bytes, bytes]]]:
    """The components of a scan, and the DC and AC tables of each block of one of its MCUs."""
    count = segment[0] if segment else 0
    if not 1 <= count <= len(components) or len(segment) != 4 + 2 * count:
        raise JpegError("has a broken scan header")
    if segment[1 + 2 * count:] != b"\x00\x3f\x00":
        raise JpegError("has a scan that is not baseline")
    ids, coding = [], []
    for i in range(count):
        ident, selectors = segment[1 + 2 * i], segment[2 + 2 * i]
        if ident not in components or ident in ids:
            raise JpegError("has a scan of a component it does not have")
        dc, ac = selectors >> 4, selectors & 15
        if (0, dc) not in tables or (1, ac) not in tables:
            raise JpegError("uses a Huffman table it does not define")
        ids.append(ident)
        c = components[ident]
        coding += [(tables[0, dc], tables[1, ac])] * (c.h * c.v if count > 1 else 1)
    return ids, coding


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
