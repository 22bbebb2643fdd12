"""Video file output through PyAV (FFmpeg): files that play everywhere, and never half of one.

The default is H.264 in MP4, ``yuv420p``, with the index at the front
(``movflags=+faststart``), which browsers and phones play and can start before the
download ends. ``codec`` picks another encoder (:data:`CODECS`); the extension picks the
container. 4:2:0 encoders need even sizes, so an odd width or height is padded by one
replicated row or column (said once through ``notice``); ``mjpeg`` (``.avi``) keeps odd
sizes exactly.

Frames go to ``NAME.partial.EXT`` beside the target (:mod:`realtime_lrp.util.atomic`).
:meth:`VideoWriter.finish` closes the file, reopens it and counts its frames, and only then
moves it into place, so the target holds the previous file or the complete new one. The
first failed write (a full disk, a size limit) raises a one-line :class:`WriterError`:
PyAV reports every failed write, where OpenCV's writer only prints warnings.

``audio_from`` carries a source file's audio streams into the output: copied packet for
packet where the container takes their codec, else re-encoded (AAC, Opus for WebM, MP3
for AVI) or, failing that, dropped, each said through ``notice``. Audio is interleaved
with the video by time, and an interrupted run keeps the audio up to its last frame.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Callable

import numpy as np

from realtime_lrp.util.atomic import OutputError, commit, make_parent, partial_path, reason, remove

Notice = Callable[[str], None]


class WriterError(RuntimeError):
    """The output cannot be written; the message is one line."""


class FrameSizeError(WriterError):
    """A frame does not have the video's size: the caller's mistake, not the disk's (what was
    written so far is still good)."""


@dataclass(frozen=True)
class Codec:
    """An encoder as users name it: FFmpeg encoder, pixel format, containers it goes in."""

    name: str
    encoder: str
    pix_fmt: str
    containers: tuple[str, ...]
    options: dict[str, str] = field(default_factory=dict)
    crf: bool = True
    fallback: str | None = None
    crf_max: int = 51  # x264 and x265 take 0-51, libvpx-vp9 0-63

    @property
    def even(self) -> bool:
        """Whether frames need even width and height (chroma subsampled by 2)."""
        return self.pix_fmt.startswith(("yuv420", "nv12"))


CODECS: dict[str, Codec] = {c.name: c for c in (
    Codec("h264", "libx264", "yuv420p", (".mp4", ".m4v", ".mov", ".mkv"), {"preset": "veryfast"}),
    Codec("h264_nvenc", "h264_nvenc", "yuv420p", (".mp4", ".m4v", ".mov", ".mkv"), {"preset": "p4"},
          crf=False, fallback="h264"),
    Codec("hevc", "libx265", "yuv420p", (".mp4", ".m4v", ".mov", ".mkv"),
          {"preset": "fast", "x265-params": "log-level=error"}),
    Codec("vp9", "libvpx-vp9", "yuv420p", (".webm", ".mkv", ".mp4"), {"deadline": "realtime", "cpu-used": "8",
                                                                      "row-mt": "1"}, crf_max=63),
    Codec("mjpeg", "mjpeg", "yuvj444p", (".avi", ".mkv", ".mov"), crf=False),
)}
DEFAULT_CODEC: dict[str, str] = {".mp4": "h264", ".m4v": "h264", ".mov": "h264", ".mkv": "h264",
                                 ".webm": "vp9", ".avi": "mjpeg"}
FORMATS: dict[str, str] = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska",
                           ".webm": "webm", ".avi": "avi"}
DEFAULT_CRF: dict[str, int] = {"libx264": 23, "libx265": 28, "libvpx-vp9": 33}
_FASTSTART = ("mp4", "mov")
_CONSTANT_RATE = ("avi",)  # containers that store one frame rate and no per-frame timestamps
AUDIO_ENCODERS: dict[str, str] = {"mp4": "aac", "mov": "aac", "matroska": "aac", "webm": "libopus",
                                  "avi": "libmp3lame"}  # for audio a container cannot take as it is


def available_codecs() -> list[str]:
    """The codec names this PyAV build can encode."""
    import av

    return [name for name, c in CODECS.items() if c.encoder in av.codecs_available]


def resolve_codec(path: str | Path, codec: str | None = None) -> Codec:
    """The codec for ``path`` (its extension's default, or ``codec``), or a one-line WriterError."""
    ext = Path(path).suffix.lower()
    if ext not in FORMATS:
        raise WriterError(f"cannot write {ext or 'a file without extension'!r} video: use one of "
                          f"{', '.join(FORMATS)}")
    name = codec or DEFAULT_CODEC[ext]
    if name not in CODECS:
        raise WriterError(f"unknown codec {name!r}: this build has {', '.join(available_codecs())}")
    chosen = CODECS[name]
    if name not in available_codecs():
        raise WriterError(f"this PyAV build lacks the {name} encoder ({chosen.encoder}); it has "
                          f"{', '.join(available_codecs())}")
    if ext not in chosen.containers:
        raise WriterError(f"{name} does not go in {ext} files: use {', '.join(chosen.containers)}")
    return chosen


def codec_for(path: str | Path, codec: str | None = None, crf: int | None = None) -> str:
    """The codec name that :class:`VideoWriter` will use for ``path`` (checks the same things, ``crf`` too)."""
    chosen = resolve_codec(path, codec)
    check_crf(chosen, crf)
    return chosen.name


def check_crf(codec: Codec, crf: int | None) -> None:
    """Raise a one-line :class:`WriterError` unless ``crf`` is None or in ``codec``'s range."""
    if crf is None:
        return
    if not codec.crf:
        raise WriterError(f"--crf does not apply to {codec.name}")
    if not 0 <= crf <= codec.crf_max:
        raise WriterError(f"--crf {crf} is out of range for {codec.name}: use 0-{codec.crf_max}"
                          f" (default {DEFAULT_CRF[codec.encoder]}; lower is better and larger)")


def open_failure(encoder: str, size: tuple[int, int] = (640, 480)) -> str | None:
    """Why ``encoder`` cannot be opened here at ``size`` (width, height), or None if it can.

    NVENC needs an NVIDIA driver, not just the build, and refuses frames below its minimum
    size, so the probe opens the encoder at the output's own size.
    """
    import av

    try:
        context = av.CodecContext.create(encoder, "w")
        context.width, context.height, context.pix_fmt = size[0], size[1], "yuv420p"
        context.time_base = Fraction(1, 25)
        context.open()
    except (av.FFmpegError, ValueError) as error:
        return (str(error).splitlines() or [type(error).__name__])[0][:160]
    return None


def _opens(encoder: str, size: tuple[int, int] = (640, 480)) -> bool:
    """Whether ``encoder`` can be opened here at ``size`` (width, height)."""
    return open_failure(encoder, size) is None


def read_comment(path: str | Path) -> str | None:
    """The ``comment`` tag of a video file (where ``rtlrp video`` records its settings), or None."""
    import av

    try:
        with av.open(str(path)) as container:
            return container.metadata.get("comment")
    except (av.FFmpegError, OSError):
        return None


def count_frames(path: str | Path) -> int:
    """Video frames in the file at ``path``, counted from its packets (no decoding)."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return sum(1 for packet in container.demux(stream) if packet.size)


class _Audio:
    """The source's audio streams, demuxed in time order and muxed into the output as video advances."""

    def __init__(self, path: Path, container, fmt: str, notice: Notice) -> None:
        import av

        self.source = av.open(str(path))
        self.container = container
        self.tracks: dict[int, tuple[object, bool]] = {}  # source stream index -> (output stream, copied)
        supported = container.supported_codecs
        for i, stream in enumerate(self.source.streams.audio):
            name = stream.codec_context.name
            if name in supported:
                self.tracks[stream.index] = (container.add_stream_from_template(stream), True)
                continue
            encoder = AUDIO_ENCODERS.get(fmt)
            if encoder is None or encoder not in av.codecs_available:
                notice(f"audio stream {i} ({name}) cannot go in {fmt} files and no encoder for it is available:"
                       " dropped")
                continue
            rate = 48000 if encoder == "libopus" else stream.rate or 48000  # Opus runs at 48 kHz only
            out = container.add_stream(encoder, rate=rate)
            if stream.layout is not None:
                out.layout = stream.layout
            self.tracks[stream.index] = (out, False)
            notice(f"audio stream {i} ({name}) cannot be copied into {fmt} files: re-encoded as {encoder}")
        streams = [s for s in self.source.streams.audio if s.index in self.tracks]
        self._packets = self.source.demux(*streams) if streams else iter(())
        self._pending = None

    def _next(self):
        if self._pending is None:
            for packet in self._packets:
                if packet.dts is not None and packet.pts is not None:
                    self._pending = packet
                    break
        return self._pending

    def mux_until(self, seconds: float | None) -> None:
        """Mux every audio packet that starts before ``seconds`` (all of them for None)."""
        while (packet := self._next()) is not None:
            if seconds is not None and float(packet.pts * packet.time_base) >= seconds:
                return
            self._pending = None
            out, copied = self.tracks[packet.stream.index]
            if copied:
                packet.stream = out
                self.container.mux(packet)
            else:
                for frame in packet.decode():
                    frame.pts = None
                    self.container.mux(out.encode(frame))

    def flush(self) -> None:
        """Drain the audio encoders (re-encoded streams only)."""
        for out, copied in self.tracks.values():
            if not copied:
                self.container.mux(out.encode(None))

    def close(self) -> None:
        self.source.close()


class VideoWriter:
    """Write BGR frames of one size to ``path`` at ``fps`` (or at given timestamps).

    ``size`` is (width, height). ``time_base`` with per-frame ``pts`` keeps a variable
    frame rate; by default, and always in ``.avi`` (one rate per file), frame i is at i / fps. Every frame's shape is checked. End
    with :meth:`finish` (verified, moved into place), :meth:`close` (stays at
    :attr:`partial`, e.g. after an interrupt) or :meth:`discard`.
    """

    def __init__(self, path: str | Path, fps: float | Fraction, size: tuple[int, int], *,
                 codec: str | None = None, crf: int | None = None, time_base: Fraction | None = None,
                 audio_from: str | Path | None = None, metadata: dict[str, str] | None = None,
                 notice: Notice | None = None) -> None:
        self.path = Path(path)
        self.partial = partial_path(self.path)
        self.codec = resolve_codec(self.path, codec)
        if not (math.isfinite(float(fps)) and float(fps) > 0):
            raise WriterError(f"invalid frame rate {fps!r}")
        check_crf(self.codec, crf)
        self.rate = fps if isinstance(fps, Fraction) else Fraction(fps).limit_denominator(100000)
        self.fps = float(self.rate)
        self._constant = FORMATS[self.path.suffix.lower()] in _CONSTANT_RATE
        self.time_base = 1 / self.rate if time_base is None or self._constant else time_base
        self.crf = crf
        self.size = (int(size[0]), int(size[1]))
        self.frames = 0
        self._notice = notice or (lambda _msg: None)
        self._container = None
        self._stream = None
        self._last_pts: int | None = None
        self._closed = False
        self._audio_from = None if audio_from is None else Path(audio_from)
        self._audio: _Audio | None = None
        self.metadata = dict(metadata or {})
        w, h = self.size
        self._pad = self.codec.even and (w % 2 == 1 or h % 2 == 1)
        self.file_size = (w + w % 2, h + h % 2) if self._pad else self.size

    def _fail(self, error: BaseException) -> WriterError:
        detail = reason(error) if isinstance(error, OSError) else str(error)
        return WriterError(f"cannot write {self.path}: {detail}")

    def _open(self) -> None:
        import av

        try:
            make_parent(self.path)
        except OutputError as error:
            raise WriterError(str(error)) from None
        codec = self.codec
        failure = open_failure(codec.encoder, self.file_size) if codec.fallback else None
        if failure is not None:
            self._notice(f"{codec.name} cannot encode {self.file_size[0]}x{self.file_size[1]} here ({failure}):"
                         f" using {codec.fallback} instead")
            codec = self.codec = CODECS[codec.fallback]
        fmt = FORMATS[self.path.suffix.lower()]
        options = {"flush_packets": "1"}  # each frame reaches the disk as it is encoded, not in 32 KiB blocks
        if fmt in _FASTSTART:
            options["movflags"] = "+faststart"
        try:
            self._container = av.open(str(self.partial), "w", format=fmt, options=options)
            self._container.metadata.update(self.metadata)
            stream = self._container.add_stream(codec.encoder, rate=self.rate)
            stream.width, stream.height = self.file_size
            stream.pix_fmt = codec.pix_fmt
            stream.time_base = self.time_base
            stream.codec_context.time_base = self.time_base
            options = dict(codec.options)
            if codec.crf:
                options["crf"] = str(self.crf if self.crf is not None else DEFAULT_CRF[codec.encoder])
            if codec.encoder == "libx265" and fmt in _FASTSTART:
                stream.codec_tag = "hvc1"  # the tag Apple players and browsers expect
            stream.options = options
            self._stream = stream
            if self._audio_from is not None:
                self._audio = _Audio(self._audio_from, self._container, fmt, self._notice)
        except (av.FFmpegError, OSError, ValueError) as error:
            self._abandon()
            raise self._fail(error) from None
        if self._pad:
            self._notice(f"{codec.name} needs even sizes: frames of {self.size[0]}x{self.size[1]} are padded "
                         f"to {self.file_size[0]}x{self.file_size[1]} (--codec mjpeg with .avi keeps odd sizes)")

    def write(self, frame: np.ndarray, pts: int | None = None) -> None:
        """Append one ``(height, width, 3)`` uint8 BGR frame, at ``pts`` (in ``time_base``) if given."""
        import av

        if self._closed:
            raise WriterError(f"{self.path} is already closed")
        w, h = self.size
        if frame.shape != (h, w, 3) or frame.dtype != np.uint8:
            raise FrameSizeError(f"frame of shape {frame.shape} {frame.dtype} does not match the video's {w}x{h} "
                              "BGR uint8")
        if self._container is None:
            self._open()
        if self._pad:
            fw, fh = self.file_size
            frame = np.pad(frame, ((0, fh - h), (0, fw - w), (0, 0)), mode="edge")
        pts = self.frames if pts is None or self._constant else int(pts)
        if self._last_pts is not None and pts <= self._last_pts:
            pts = self._last_pts + 1  # muxers need strictly increasing timestamps
        video = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="bgr24")
        video.pts, video.time_base = pts, self.time_base
        try:
            if self._audio is not None:
                self._audio.mux_until(float(pts * self.time_base))
            self._container.mux(self._stream.encode(video))
        except (av.FFmpegError, OSError) as error:
            raise self._fail(error) from None
        self._last_pts = pts
        self.frames += 1

    def close(self, all_audio: bool = True) -> None:
        """Flush the encoders and finish the container at :attr:`partial` (idempotent).

        The source's audio goes in whole, or with ``all_audio=False`` (an interrupted run)
        only up to the end of the last frame written.
        """
        import av

        if self._closed:
            return
        self._closed = True
        if self._container is None:
            return
        try:
            self._container.mux(self._stream.encode(None))
            if self._audio is not None:
                end = None if all_audio or self._last_pts is None else float(self._last_pts * self.time_base) + 1 / self.fps
                self._audio.mux_until(end)
                self._audio.flush()
                self._audio.close()
                self._audio = None
            self._container.close()
        except (av.FFmpegError, OSError) as error:
            self._abandon()
            raise self._fail(error) from None
        self._container = None

    def verify(self) -> int:
        """Reopen the closed partial file and check it holds every frame written."""
        import av

        try:
            found = count_frames(self.partial)
        except (av.FFmpegError, OSError, IndexError) as error:
            raise WriterError(f"{self.partial} cannot be read back: {error}") from None
        if found != self.frames:
            raise WriterError(f"{self.partial} holds {found} frames, {self.frames} were written")
        return found

    def finish(self) -> Path | None:
        """Close, verify and move the file to :attr:`path`; None (and no file) if nothing was written.

        Any failure removes the partial file and leaves :attr:`path` as it was.
        """
        try:
            self.close()
            if self.frames == 0:
                return None
            self.verify()
            commit(self.partial, self.path)
        except (WriterError, OutputError):
            remove(self.partial)
            raise
        return self.path

    def keep_partial(self) -> Path | None:
        """Close and verify the frames so far at :attr:`partial` (an interrupted or failed run).

        Returns the partial path, or None (and no file) if nothing playable was written.
        """
        try:
            self.close(all_audio=False)
            if self.frames:
                self.verify()
                return self.partial
        except WriterError:
            pass
        remove(self.partial)
        return None

    def discard(self) -> None:
        """Drop everything written; the target is left as it was."""
        self._abandon()
        remove(self.partial)

    def _abandon(self) -> None:
        self._closed = True
        if self._audio is not None:
            self._audio.close()
            self._audio = None
        container, self._container = self._container, None
        if container is not None:
            try:
                container.close()
            except Exception:  # the file is being thrown away: its close errors do not matter
                pass

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.finish()
        else:
            self.discard()
