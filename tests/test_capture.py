"""LiveSource and --camera parsing, driven by real video files through the capture-factory seam.

Only the physical camera is faked: a factory that hands out ``cv2.VideoCapture`` objects on a
real clip, and unopened captures once the "camera" has been unplugged.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from realtime_lrp.media.capture import CameraError, CameraSpec, EndOfStream, LiveSource, parse_camera

FPS = 29.97
SIZE = (97, 75)  # odd width and height (OpenCV's mp4v encoder rounds them down to even)


def write_clip(path: Path, frames: int, fps: float = FPS, size: tuple[int, int] = SIZE) -> Path:
    """A real clip whose frame i is a flat grey of level 10 + 20 i, so decoding recovers i."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    assert writer.isOpened()
    for i in range(frames):
        writer.write(np.full((size[1], size[0], 3), 10 + 20 * i, np.uint8))
    writer.release()
    return path


def frame_index(image: np.ndarray) -> int:
    return round((float(image.mean()) - 10) / 20)


class PluggableCamera:
    """A capture factory standing in for a USB camera: a real clip while plugged, nothing after.

    ``opens_that_work`` is how many calls return a capture on the clip; later calls return an
    unopened ``cv2.VideoCapture``, like reopening a camera that has been pulled out.
    """

    def __init__(self, clip: Path, opens_that_work: int = 1) -> None:
        self.clip = clip
        self.opens_that_work = opens_that_work
        self.calls: list[object] = []

    def __call__(self, target: object) -> cv2.VideoCapture:
        self.calls.append(target)
        if len(self.calls) <= self.opens_that_work:
            return cv2.VideoCapture(str(self.clip))
        return cv2.VideoCapture()


@pytest.fixture
def clip(tmp_path: Path) -> Path:
    return write_clip(tmp_path / "clip.mp4", 9)


def drain(source: LiveSource) -> list:
    frames = []
    while True:
        try:
            frame = source.read(timeout=10)
        except EndOfStream:
            return frames
        assert frame is not None, "no frame within 10 s"
        frames.append(frame)


# -- --camera parsing --------------------------------------------------------------------
def test_parse_camera_kinds(clip: Path) -> None:
    assert parse_camera("0") == CameraSpec(0, "index")
    assert parse_camera(" 2 ") == CameraSpec(2, "index")
    assert parse_camera(3) == CameraSpec(3, "index")
    assert parse_camera("rtsp://10.0.0.5:554/live") == CameraSpec("rtsp://10.0.0.5:554/live", "url")
    assert parse_camera(str(clip)) == CameraSpec(str(clip), "file")


def test_parse_camera_rejects_missing_things(tmp_path: Path) -> None:
    with pytest.raises(CameraError, match="no camera at /dev/video"):
        parse_camera("/dev/video97")
    with pytest.raises(CameraError, match="no such camera"):
        parse_camera(str(tmp_path / "missing.mp4"))
    with pytest.raises(CameraError, match="directory"):
        parse_camera(str(tmp_path))


# -- newest frame wins, never twice --------------------------------------------------------
def test_file_source_delivers_each_frame_once_in_order(clip: Path) -> None:
    with LiveSource(str(clip)) as source:
        assert source.pace, "a file used as a live source is paced like a camera by default"
        assert source.fps == pytest.approx(FPS, abs=0.01)
        frames = drain(source)
        skipped = source.skipped
    seqs = [f.seq for f in frames]
    assert seqs == sorted(set(seqs)), "a frame was returned twice or out of order"
    assert all(frame_index(f.image) == f.seq - 1 for f in frames), "sequence numbers do not match content"
    assert len(frames) + skipped == 9
    assert frames[-1].seq == 9


def test_slow_consumer_gets_only_the_newest_frame(clip: Path) -> None:
    source = LiveSource(str(clip), pace=False).open()
    try:
        deadline = 200
        while source.captured < 9 and deadline:  # let the thread read the whole clip unread
            time.sleep(0.05)
            deadline -= 1
        assert source.captured == 9
        frame = source.read(timeout=5)
        assert frame is not None and frame.seq == 9 and frame_index(frame.image) == 8
        assert source.skipped == 8, "the older frames were dropped, not queued"
        with pytest.raises(EndOfStream):
            source.read(timeout=5)
    finally:
        source.close()


class DryingCamera:
    """A capture on a clip that sets ``dry`` at its first failed read: the clip is used up and the
    "camera" delivers nothing more (it keeps failing reads silently)."""

    def __init__(self, clip: Path) -> None:
        self.capture = cv2.VideoCapture(str(clip))
        self.dry = threading.Event()

    def isOpened(self) -> bool:  # noqa: N802 - OpenCV's name
        return self.capture.isOpened()

    def read(self) -> tuple[bool, np.ndarray | None]:
        ok, image = self.capture.read()
        if not ok:
            self.dry.set()
        return ok, image

    def get(self, prop_id: int) -> float:
        return self.capture.get(prop_id)

    def release(self) -> None:
        self.capture.release()


def test_read_times_out_without_returning_an_old_frame(clip: Path) -> None:
    camera = DryingCamera(clip)
    source = LiveSource("0", lambda target: camera, max_failed_reads=10**6, retry_delay=0.01).open()
    try:
        assert camera.dry.wait(60), "the clip was not read to its end within a minute"
        frame = source.read(timeout=0)  # every frame is published before the read that failed
        assert frame is not None and frame.seq == source.captured == 9, "the newest frame is waiting"
        assert frame_index(frame.image) == 8
        assert source.read(timeout=0.1) is None, "nothing newer exists: no frame is returned twice"
    finally:
        source.close()


# -- error paths -------------------------------------------------------------------------
def test_absent_camera_with_the_real_opencv_factory() -> None:
    source = LiveSource("63")  # default factory: cv2.VideoCapture(63); no such camera here
    with pytest.raises(CameraError, match="cannot open camera 63: no camera found"):
        source.open()


def test_corrupt_file_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video at all" * 100)
    with pytest.raises(CameraError, match="not a readable video"):
        LiveSource(str(bad)).open()


def read_until_camera_error(source: LiveSource, match: str | None = None) -> list:
    """Every frame ``source`` delivers until it raises ``CameraError`` (which must happen); closes it."""
    frames = []
    try:
        with pytest.raises(CameraError, match=match):
            while True:
                frame = source.read(timeout=10)
                assert frame is not None
                frames.append(frame)
    finally:
        source.close()
    return frames


def test_unplugged_mid_run_raises_after_bounded_reconnects(clip: Path) -> None:
    camera = PluggableCamera(clip, opens_that_work=1)
    source = LiveSource("0", camera, max_failed_reads=3, retry_delay=0.01,
                        reconnect_attempts=2, reconnect_delay=0.01).open()
    frames = read_until_camera_error(source, match=r"camera 0 stopped delivering frames \(unplugged\?\)")
    assert frames, "frames before the unplug were delivered"
    assert len(camera.calls) == 3, "one open plus exactly two reconnect attempts"
    assert camera.calls == [0, 0, 0]


def test_reconnect_resumes_the_stream(clip: Path) -> None:
    camera = PluggableCamera(clip, opens_that_work=2)
    source = LiveSource("0", camera, max_failed_reads=2, retry_delay=0.01,
                        reconnect_attempts=1, reconnect_delay=0.01).open()
    frames = read_until_camera_error(source)
    assert source.reconnects == 1
    assert [f.seq for f in frames] == sorted({f.seq for f in frames})
    assert frames[-1].seq > 9, "frames after the reconnect carry on the sequence"
