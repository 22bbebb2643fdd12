"""The webcam loop, its displays and ``rtlrp webcam``, with real clips as the camera.

The camera is a real video file behind the capture-factory seam (``PluggableCamera``);
the window is a scripted :class:`Display` that records what it is shown and presses keys.
Everything else (capture thread, FrameProcessor, recording, snapshots) is the real thing.
"""
from __future__ import annotations

import io
import os
import re
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from media import (
    ends_with_last_shown,
    interrupt_rtlrp,
    read_video,
    run_rtlrp,
    spied_count,
    spy_env,
    tiny_card,
    tiny_model,
)
from rich.console import Console

from realtime_lrp.apps import live
from realtime_lrp.apps.live import FpsMeter, LiveLoop, LiveRecorder, fit_frame
from realtime_lrp.cli import cli
from realtime_lrp.media.capture import LiveSource
from realtime_lrp.media.display import HeadlessDisplay, LiveStats, WindowDisplay, display_problem
from realtime_lrp.media.writer import VideoWriter
from realtime_lrp.pipeline.processor import FrameProcessor

FPS = 29.97
SIZE = (97, 75)  # odd sizes, as cameras and files may have


def write_clip(path: Path, frames: int, fps: float = FPS, size: tuple[int, int] = SIZE) -> Path:
    """A real clip: a gradient with a bright block that moves with the frame index.

    Written with the project's writer, so an ``.avi`` keeps odd sizes and fractional fps.
    """
    w, h = size
    with VideoWriter(path, fps, size) as writer:
        for i in range(frames):
            frame = np.zeros((h, w, 3), np.uint8)
            frame[:, :, 0] = np.linspace(0, 150, w, dtype=np.uint8)[None, :]
            frame[:, :, 1] = 10 + 20 * (i % 12)
            x = (3 * i) % (w - 16)
            frame[20:36, x:x + 16] = 255
            writer.write(frame)
    return path


class PluggableCamera:
    """Capture factory for a "camera" that plays a real clip while plugged in, then nothing."""

    def __init__(self, clip: Path, opens_that_work: int = 1) -> None:
        self.clip = clip
        self.opens_that_work = opens_that_work
        self.calls = 0

    def __call__(self, target: object) -> cv2.VideoCapture:
        self.calls += 1
        return cv2.VideoCapture(str(self.clip)) if self.calls <= self.opens_that_work else cv2.VideoCapture()


class ScriptedDisplay:
    """A Display that keeps what it is shown; ``keys[n]`` are pressed after the n-th show."""

    interactive = True

    def __init__(self, keys: dict[int, str] | None = None, close_after: int | None = None,
                 interrupt_after: int | None = None) -> None:
        self.keys = keys or {}
        self.close_after = close_after
        self.interrupt_after = interrupt_after
        self.frames: list[np.ndarray] = []
        self.stats: list[LiveStats] = []
        self.pending: list[str] = []
        self.closed = False
        self.close_calls = 0

    def show(self, frame: np.ndarray, stats: LiveStats) -> None:
        self.frames.append(frame.copy())
        self.stats.append(stats)
        self.pending.extend(self.keys.get(len(self.frames), ""))
        if self.close_after is not None and len(self.frames) >= self.close_after:
            self.closed = True  # the user closed the window

    def poll_key(self, wait_ms: int = 1) -> int | None:
        if self.interrupt_after is not None and len(self.frames) >= self.interrupt_after:
            raise KeyboardInterrupt
        return ord(self.pending.pop(0)) if self.pending else None

    def close(self) -> None:
        self.close_calls += 1


@pytest.fixture
def processor() -> FrameProcessor:
    processor = FrameProcessor(tiny_model(3), tiny_card(3), device="cpu")
    processor.process([np.zeros((SIZE[1], SIZE[0], 3), np.uint8)])  # warm up before the camera runs
    processor.reset()
    return processor


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """One entry per ``VideoWriter.write`` call of the test."""
    calls: list[int] = []
    write = VideoWriter.write

    def spy(self, frame, pts=None):
        write(self, frame, pts)
        calls.append(1)

    monkeypatch.setattr(VideoWriter, "write", spy)
    return calls


def recorded_last(frames: list[np.ndarray], display: "ScriptedDisplay") -> bool:
    """Whether a recording ends with the last frame the display showed (fitted to the recording's size)."""
    size = (frames[0].shape[1], frames[0].shape[0])
    shown = [fit_frame(f, size) for f in display.frames[-2:]]
    return ends_with_last_shown(frames, shown[-1], shown[0] if len(shown) == 2 else None)


@pytest.fixture
def clip(tmp_path: Path) -> Path:
    """Ten seconds of "camera": the loop tests stop long before it runs out, even on a busy CPU."""
    return write_clip(tmp_path / "camera.avi", 300)


def camera_source(clip: Path, opens_that_work: int = 1, **kwargs) -> LiveSource:
    """Camera 0, played from ``clip`` at its frame rate like a real camera."""
    options = dict(pace=True, max_failed_reads=3, retry_delay=0.01, reconnect_attempts=1, reconnect_delay=0.01)
    options.update(kwargs)
    return LiveSource("0", PluggableCamera(clip, opens_that_work), **options).open()


# -- units ----------------------------------------------------------------------------------
def test_fps_meter_counts_processed_frames_over_a_window() -> None:
    meter = FpsMeter(window=5)
    assert meter.fps == 0.0
    for t in (0.0, 0.1, 0.2, 0.3, 0.4):
        meter.tick(t)
    assert meter.fps == pytest.approx(10.0)
    for t in (0.6, 0.8, 1.0, 1.2):  # the window forgets the older, faster frames
        meter.tick(t)
    assert meter.fps == pytest.approx(5.0)
    meter.reset()
    meter.tick(50.0)
    assert meter.fps == 0.0


def test_recorder_writes_each_frame_for_its_time_on_screen(tmp_path: Path) -> None:
    out = tmp_path / "rec.avi"
    recorder = LiveRecorder(out, fps=10.0)
    dark, light, grey = (np.full((48, 64, 3), v, np.uint8) for v in (20, 230, 120))
    recorder.show(dark, 100.0)
    recorder.show(light, 100.5)  # dark was on screen 0.5 s: 5 frames
    recorder.pause(100.8)         # light 0.3 s before the pause
    recorder.resume(107.8)        # 7 s paused: left out
    recorder.show(grey, 108.0)    # light 0.2 s more
    recorder.close(108.3)         # grey 0.3 s
    frames, fps = read_video(out)
    assert fps == pytest.approx(10.0)
    levels = [round(float(f.mean()) / 10) * 10 for f in frames]
    assert levels == [20] * 5 + [230] * 5 + [120] * 3


def test_fit_frame_keeps_aspect_on_black() -> None:
    wide = np.full((50, 200, 3), 200, np.uint8)
    fitted = fit_frame(wide, (100, 100))
    assert fitted.shape == (100, 100, 3)
    assert fitted[50, 50].tolist() == [200, 200, 200] and fitted[5, 50].tolist() == [0, 0, 0]


def test_headless_display_prints_stats_without_a_terminal() -> None:
    buffer = io.StringIO()
    display = HeadlessDisplay(Console(file=buffer, width=200), interval=0.0)
    stats = LiveStats(source="camera 0", fps=12.5, frames=7, skipped=3, label="Coat  91.0%", top_k=0.02,
                      cmap="hot", layout="overlay", recording="out.mp4")
    display.show(np.zeros((4, 4, 3), np.uint8), stats)
    display.close()
    text = buffer.getvalue()
    assert "12.5 FPS" in text and "frames 7" in text and "skipped 3" in text
    assert "Coat  91.0%" in text and "REC out.mp4" in text
    assert display.poll_key() is None and not display.closed


# -- the loop over a file-backed camera -------------------------------------------------------
def test_loop_shows_each_new_frame_once_with_label_and_fps(clip: Path, processor: FrameProcessor,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Every frame the camera hands over is explained and shown once, in order; the FPS shown
    with frame k is (k - 1) / (time from the first processed frame to the k-th), on a clock that
    moves only while a frame is explained (frame k takes 0.05 k s)."""
    clock = [100.0]
    monkeypatch.setattr(live, "time", SimpleNamespace(monotonic=lambda: clock[0], strftime=time.strftime))
    explained: list[np.ndarray] = []
    process = processor.process

    def slow_process(images):
        explained.extend(images)
        clock[0] += 0.05 * len(explained)
        return process(images)

    monkeypatch.setattr(processor, "process", slow_process)
    source = camera_source(clip)
    delivered = []
    read = source.read

    def spy_read(timeout=None):
        frame = read(timeout)
        if frame is not None:
            delivered.append(frame)
        return frame

    source.read = spy_read
    display = ScriptedDisplay()
    try:
        summary = LiveLoop(source, processor, display, max_frames=6).run()
    finally:
        source.close()
    assert summary.reason == "max frames", summary.error
    assert summary.frames == 6 == len(display.frames) == len(delivered) == len(explained)
    assert [f.seq for f in delivered] == sorted({f.seq for f in delivered}), "a camera frame came twice"
    assert all(image is frame.image for image, frame in zip(explained, delivered)), "each frame explained once, in order"
    assert [s.frames for s in display.stats] == [1, 2, 3, 4, 5, 6], "FPS counts processed frames"
    ticks = np.cumsum([0.05 * k for k in range(1, 7)])
    expected = [0.0] + [(k - 1) / (ticks[k - 1] - ticks[0]) for k in range(2, 7)]
    assert [s.fps for s in display.stats] == pytest.approx(expected)
    assert all(f.shape == (SIZE[1], SIZE[0], 3) for f in display.frames)
    assert all(s.label.endswith("%") and s.label.split()[0] for s in display.stats)
    assert display.close_calls == 1


def test_keys_change_layout_cmap_topk_pause_and_snapshot(tmp_path: Path, clip: Path,
                                                         processor: FrameProcessor) -> None:
    source = camera_source(clip)
    cmap0, top_k0 = processor.cmap, processor.top_k
    # One key per loop turn, as waitKey delivers them. Show n+1 is the first after keys[n].
    # Space after show 5 pauses (show 6 is the still frame); s, -, l act on it; space resumes.
    display = ScriptedDisplay({2: "l", 3: "c", 4: "+", 5: " ", 6: "s", 7: "-", 8: "l", 9: " ", 11: "q"})
    try:
        summary = LiveLoop(source, processor, display, snapshot_dir=tmp_path / "shots").run()
    finally:
        source.close()
    stats = display.stats
    assert summary.reason == "quit" and len(stats) == 11, summary.error
    assert stats[2].layout == "side" and display.frames[2].shape[1] == 2 * SIZE[0]
    assert stats[3].cmap != cmap0
    assert stats[4].top_k == pytest.approx(2 * top_k0)
    paused = [s for s in stats if s.paused]
    assert [s.paused for s in stats[5:9]] == [True] * 4 and len(paused) == 4
    assert len({s.frames for s in paused}) == 1, "no new frame while paused"
    assert paused[-1].layout == "heatmap" and paused[-1].top_k == pytest.approx(top_k0)
    assert not stats[-1].paused and stats[-1].frames > paused[0].frames, "space resumes"
    assert len(summary.snapshots) == 1
    saved = cv2.imread(str(summary.snapshots[0]))
    assert summary.snapshots[0].suffix == ".png"
    assert np.array_equal(saved, display.frames[5]), "the snapshot is the frame on screen"


def test_closing_the_window_ends_the_loop_and_closes_the_recording(tmp_path: Path, clip: Path,
                                                                   processor: FrameProcessor, writes: list[int]) -> None:
    out = tmp_path / "rec.mp4"
    source = camera_source(clip)
    display = ScriptedDisplay(keys={2: "l"}, close_after=5)
    try:
        summary = LiveLoop(source, processor, display, record=out).run()
    finally:
        source.close()
    assert summary.reason == "window closed" and summary.frames == 5, summary.error
    frames, fps = read_video(out)
    assert fps == pytest.approx(FPS, abs=0.01)
    assert len(frames) == summary.recorded_frames == len(writes) >= 1
    assert {f.shape for f in frames} == {(SIZE[1] + 1, SIZE[0] + 1, 3)}, "one size (padded to even by .mp4)"
    assert recorded_last([f[:SIZE[1], :SIZE[0]] for f in frames], display), "ends with the frame on screen"


def test_unplugged_camera_mid_run_keeps_a_playable_recording(tmp_path: Path, processor: FrameProcessor,
                                                             writes: list[int]) -> None:
    out = tmp_path / "rec.avi"
    clip = write_clip(tmp_path / "short.avi", 20)
    writes.clear()  # count the recording's writes only
    source = camera_source(clip, opens_that_work=1)  # the reconnect finds no camera
    display = ScriptedDisplay()
    try:
        summary = LiveLoop(source, processor, display, record=out).run()
    finally:
        source.close()
    assert summary.reason == "error"
    assert "camera 0 stopped delivering frames (unplugged?)" in summary.error
    assert summary.frames == len(display.frames) > 0
    frames, _ = read_video(out)
    assert len(frames) == summary.recorded_frames == len(writes) >= 1
    assert frames[0].shape == (SIZE[1], SIZE[0], 3)
    assert recorded_last(frames, display), "ends with the last frame shown"
    assert display.close_calls == 1


def test_ctrl_c_in_the_loop_closes_the_recording(tmp_path: Path, clip: Path, processor: FrameProcessor,
                                                 writes: list[int]) -> None:
    out = tmp_path / "rec.mp4"
    source = camera_source(clip)
    display = ScriptedDisplay(interrupt_after=3)
    try:
        summary = LiveLoop(source, processor, display, record=out).run()
    finally:
        source.close()
    assert summary.interrupted and summary.frames == 3
    frames, _ = read_video(out)
    assert len(frames) == summary.recorded_frames == len(writes) >= 1
    assert recorded_last([f[:SIZE[1], :SIZE[0]] for f in frames], display), "ends with the frame on screen"


@pytest.mark.skipif(display_problem() is not None, reason="needs a display (run under Xvfb)")
def test_real_window_counts_as_closed_only_after_it_was_seen_open() -> None:
    display = WindowDisplay("rtlrp test window")
    assert display.poll_key(1) is None and not display.closed, "not yet shown is not closed"
    display.show(np.full((60, 80, 3), 90, np.uint8), LiveStats(source="test"))
    for _ in range(20):
        display.poll_key(5)
    assert not display.closed
    cv2.destroyWindow(display.title)  # what the window manager's close button amounts to
    display.poll_key(5)
    assert display.closed
    display.close()


# -- rtlrp webcam -----------------------------------------------------------------------------
def shown(spy: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """The last two frames a spied run showed its recorder (the earlier one None if there was one)."""
    previous = spy / "shown_prev.npy"
    return np.load(spy / "shown_last.npy"), np.load(previous) if previous.exists() else None


def webcam(*args: object, env: dict | None = None):
    result = CliRunner().invoke(cli, ["webcam", *map(str, args)], env=env)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


def test_webcam_headless_on_a_file_records_a_playable_video(tmp_path: Path, clip: Path, weights: Path) -> None:
    out = tmp_path / "out.avi"
    spy = tmp_path / "spy"
    result = run_rtlrp(["webcam", "--camera", clip, "--weights", weights, "--device", "cpu", "--no-window",
                        "--record", out, "--max-frames", 4], env=spy_env(spy))
    assert result.returncode == 0, result.stderr
    assert "FPS" in result.stderr and "4 frames processed" in result.stderr
    recorded = re.search(r"Recorded (\d+) frames to (\S+), checked by reading them back", result.stderr)
    assert recorded and recorded.group(2) == str(out), result.stderr
    frames, fps = read_video(out)
    assert len(frames) == int(recorded.group(1)) == spied_count(spy, "written") > 0, \
        "every frame written is in the file, and the summary counts them"
    assert ends_with_last_shown(frames, *shown(spy)), "the recording ends with the last frame shown"
    assert fps == pytest.approx(FPS, abs=0.01)
    assert frames[0].shape == (SIZE[1], SIZE[0], 3), ".avi keeps the odd size"
    assert not (tmp_path / "out.partial.avi").exists()


@pytest.mark.parametrize("env, reason", [
    ({"DISPLAY": None, "WAYLAND_DISPLAY": None}, "no display found"),
    ({"DISPLAY": ":87", "WAYLAND_DISPLAY": None}, "cannot open a window on :87"),
])
def test_no_display_falls_back_to_headless(clip: Path, weights: Path, env: dict, reason: str) -> None:
    if sys.platform != "linux":
        pytest.skip("display variables are a Linux (X11/Wayland) matter")
    result = webcam("--camera", clip, "--weights", weights, "--device", "cpu", "--max-frames", 2, env=env)
    assert result.exit_code == 0, result.output
    assert reason in result.stderr and "running headless" in result.stderr
    assert "2 frames processed" in result.stderr


def test_absent_camera_is_one_clear_line(weights: Path) -> None:
    result = webcam("--camera", "63", "--weights", weights, "--device", "cpu", "--no-window")
    assert result.exit_code == 1
    assert "Error: cannot open camera 63: no camera found" in result.stderr
    assert "Traceback" not in result.output


def test_bad_camera_argument_and_record_extension(tmp_path: Path, clip: Path, weights: Path) -> None:
    result = webcam("--camera", tmp_path / "nope.mp4", "--weights", weights, "--no-window")
    assert result.exit_code == 1 and "no such camera index, device, video file or stream URL" in result.stderr
    result = webcam("--camera", clip, "--weights", weights, "--no-window", "--record", tmp_path / "x.gif")
    assert result.exit_code == 1 and "cannot write '.gif' video" in result.stderr
    assert not (tmp_path / "x.gif").exists()
    result = webcam("--camera", clip, "--weights", weights, "--no-window", "--record", clip / "rec.mp4")
    assert result.exit_code == 1 and f"{clip} is not a folder" in result.stderr


def test_unwritable_recording_ends_the_loop_with_one_message(tmp_path: Path, clip: Path,
                                                             processor: FrameProcessor) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the recording's folder should be")
    source = camera_source(clip)
    display = ScriptedDisplay()
    try:
        summary = LiveLoop(source, processor, display, record=blocker / "sub" / "rec.mp4").run()
    finally:
        source.close()
    assert summary.reason == "error" and f"{blocker} is not a folder" in summary.error
    assert summary.recorded_frames == 0 and display.close_calls == 1


def test_sigint_closes_the_recording_and_exits_130(tmp_path: Path, weights: Path) -> None:
    src = write_clip(tmp_path / "long.mp4", 600, fps=30.0, size=(80, 60))
    out = tmp_path / "rec.mp4"
    args = ["webcam", "--camera", str(src), "--weights", str(weights), "--device", "cpu", "--no-window", "--record", str(out)]
    out.write_bytes(b"an older recording")
    spy = tmp_path / "spy"
    returncode, stderr = interrupt_rtlrp(args, tmp_path / "rec.partial.mp4", wait_line="LIVE",
                                         env=spy_env(spy, {k: v for k, v in os.environ.items() if k != "DISPLAY"}))
    assert returncode == 130, stderr
    assert "ended: interrupted by SIGINT" in stderr and "Traceback" not in stderr
    recorded = re.search(r"Recorded (\d+) frames to (\S+), checked by reading them back", stderr)
    assert recorded and recorded.group(2) == str(out), stderr
    frames, fps = read_video(out)
    assert len(frames) == int(recorded.group(1)) == spied_count(spy, "written") > 0 and fps == pytest.approx(30.0)
    assert ends_with_last_shown(frames, *shown(spy)), "the recording ends with the last frame shown"


# -- one pass for every command ----------------------------------------------------------------
def test_video_webcam_serve_and_explain_run_the_one_frame_pass(tmp_path: Path, clip: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A spy on the frame pass's device part counts its runs: one per batch of ``rtlrp video``, per
    webcam frame, per serve batch (two clients in one run) and per still image; evaluate's inputs
    come from the pass's own preprocessing."""
    from realtime_lrp.apps.serve.protocol import Settings
    from realtime_lrp.apps.serve.worker import Job, Stream, Worker, group_key
    from realtime_lrp.apps.stills import explain_images
    from realtime_lrp.apps.video import process_video
    from realtime_lrp.pipeline import fast, preprocess

    runs: list[tuple[int, str]] = []
    call = fast.DevicePass.__call__

    def spy(self, frames, valid):
        runs.append((int(valid.sum()), self.mode))
        return call(self, frames, valid)

    monkeypatch.setattr(fast.DevicePass, "__call__", spy)
    processor = FrameProcessor(tiny_model(3), tiny_card(3), device="cpu")
    short = write_clip(tmp_path / "short.avi", 9)
    process_video(short, tmp_path / "out.avi", processor, batch=4)
    assert runs == [(4, "stream"), (4, "stream"), (1, "stream")]
    runs.clear()
    source = camera_source(clip)
    try:
        summary = LiveLoop(source, processor, ScriptedDisplay(), max_frames=3).run()
    finally:
        source.close()
    assert summary.frames == 3 and runs == [(1, "stream")] * 3
    runs.clear()
    worker = Worker(processor, batch=8)
    replies: list[list] = [[], []]
    streams = [Stream(deliver=replies[0].append), Stream(deliver=replies[1].append)]
    image = np.full((SIZE[1], SIZE[0], 3), 90, np.uint8)
    for i, stream in enumerate(streams):
        worker.submit(stream, Job(i, image, Settings(), time.monotonic(), reset=True))
    worker._explain(group_key(Settings(), image.shape), worker._take())
    assert runs == [(2, "streams")] and all(len(r) == 1 for r in replies)
    runs.clear()
    paths = [tmp_path / "a.png", tmp_path / "b.png"]
    explain_images(paths, [image, image[:40]], processor, tmp_path)
    assert runs == [(1, "stills"), (1, "stills")]
    converted: list[int] = []
    to_input = preprocess.to_input
    monkeypatch.setattr(preprocess, "to_input", lambda frames, *a, **k: converted.append(len(frames)) or
                        to_input(frames, *a, **k))
    from realtime_lrp.apps.evaluate import inputs

    x = inputs._frames_tensor([image, image[:40]], tiny_card(3), (32, 32))
    assert converted == [1, 1] and x.shape == (2, 3, 32, 32)


def test_webcam_with_a_cam_method_shows_that_methods_map(clip: Path, weights: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """``rtlrp webcam --method gradcam`` on a file camera: each frame the pass renders is Grad-CAM's map
    of that frame (lrp.cam.CAM's, on the same model), drawn with the stream's colour scale."""
    from test_cam import reference_maps, stream_rendered

    from realtime_lrp.pipeline import fast

    seen: list[tuple[np.ndarray, np.ndarray]] = []
    call = fast.DevicePass.__call__

    def spy(self, frames, valid):
        out, preds = call(self, frames, valid)
        seen.append((frames[0].numpy().copy(), out[0].numpy().copy()))
        return out, preds

    monkeypatch.setattr(fast.DevicePass, "__call__", spy)
    result = webcam("--camera", clip, "--weights", weights, "--device", "cpu", "--no-window", "--max-frames", 3,
                    "--method", "gradcam", "--layout", "heatmap", "--threads", 1)
    assert result.exit_code == 0, result.output
    assert "3 frames processed" in result.stderr
    frames = [frame for frame, _ in seen[1:]]  # after the warm-up on a blank frame (its state is reset)
    assert len(frames) == 3
    expected = stream_rendered(frames, reference_maps(weights, frames, "gradcam"), "fire", "heatmap")
    for (_, got), want in zip(seen[1:], expected):
        assert np.abs(got.astype(int) - want.astype(int)).max() <= 1
    assert np.ptp(expected[0]) > 100
