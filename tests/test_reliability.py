"""What servers, phones and shared machines do to a run: ignored signals, power loss, odd inputs.

Each case runs the real command or the real reader and writer on real files: a ``nohup``
start and a real SIGHUP, a directory fsync seen through a recording ``os.fsync``, clips
made with PyAV that rotate, lack timestamps, carry edit lists or change size mid-stream.
"""
from __future__ import annotations

import contextlib
import os
import signal
import stat
import subprocess
import threading
import time
from pathlib import Path

import pytest
from media import frame_count, rtlrp_command, write_video


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("clips") / "clip.mp4"
    write_video(path, 300, (80, 60), 30.0)
    return path


def signal_midway(command: list[str], watch: Path, sig: int, timeout: float = 180) -> tuple[int, str]:
    """Start ``command``, send ``sig`` once ``watch`` holds data, and wait for it to end."""
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + timeout
        while proc.poll() is None and time.monotonic() < deadline:
            if watch.exists() and watch.stat().st_size >= 4096:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the run ended before the signal could be sent"
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, stderr


# -- signals the process was started with ignored stay ignored --------------------------------

def test_nohup_video_survives_a_real_sighup(tmp_path: Path, weights: Path, clip: Path) -> None:
    out = tmp_path / "out.mp4"
    args = ["video", clip, "--out", out, "--weights", weights, "--device", "cpu", "--size", "96"]
    code, stderr = signal_midway(["nohup", *rtlrp_command(), *map(str, args)], tmp_path / "out.partial.mp4",
                                 signal.SIGHUP)
    assert code == 0, stderr
    assert "Wrote 300 frames" in stderr and "Interrupted" not in stderr
    assert frame_count(out) == 300 and not (tmp_path / "out.partial.mp4").exists()


def test_under_nohup_sigterm_still_stops_the_run_cleanly(tmp_path: Path, weights: Path, clip: Path) -> None:
    out = tmp_path / "out.mp4"
    args = ["video", clip, "--out", out, "--weights", weights, "--device", "cpu", "--size", "96"]
    partial = tmp_path / "out.partial.mp4"
    code, stderr = signal_midway(["nohup", *rtlrp_command(), *map(str, args)], partial, signal.SIGTERM)
    assert code == 143, stderr
    assert "Interrupted by SIGTERM" in stderr and frame_count(partial) > 0 and not out.exists()


def test_an_ignored_signal_stays_ignored_in_process() -> None:
    from realtime_lrp.util import signals

    saved = {sig: signal.getsignal(sig) for sig in signals.SIGNALS}
    try:
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signals.install()
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
        assert signal.getsignal(signal.SIGTERM) is signals._raise
        with signals.Deferred() as stop:
            assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGHUP)
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)
            assert stop.signum == signal.SIGTERM and stop.count == 1
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


# -- durability: the folder is synced after the rename -----------------------------------------

class SyncLog:
    """Records every ``os.fsync`` (is the fd a folder, its inode) and ``os.replace`` in order."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.events: list[tuple] = []
        real_fsync, real_replace = os.fsync, os.replace

        def fsync(fd: int) -> None:
            info = os.fstat(fd)
            self.events.append(("fsync", stat.S_ISDIR(info.st_mode), info.st_ino))
            real_fsync(fd)

        def replace(src, dst) -> None:
            real_replace(src, dst)
            self.events.append(("replace", Path(dst)))

        monkeypatch.setattr(os, "fsync", fsync)
        monkeypatch.setattr(os, "replace", replace)

    def folder_synced_after_replace(self, target: Path) -> bool:
        """Whether ``target``'s folder was fsynced after the last rename onto ``target``."""
        renames = [i for i, e in enumerate(self.events) if e[0] == "replace" and e[1] == target]
        folder = target.parent.stat().st_ino
        return bool(renames) and ("fsync", True, folder) in self.events[renames[-1] + 1:]


def test_every_committed_output_syncs_its_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import json

    import numpy as np

    from realtime_lrp.media.writer import VideoWriter
    from realtime_lrp.util import atomic

    log = SyncLog(monkeypatch)
    atomic.write_text(tmp_path / "a" / "settings.json", "{}")
    assert log.folder_synced_after_replace(tmp_path / "a" / "settings.json"), log.events
    atomic.write_with(tmp_path / "b" / "model.pt", lambda p: p.write_bytes(b"weights"))
    assert log.folder_synced_after_replace(tmp_path / "b" / "model.pt"), log.events
    report = tmp_path / "c" / "report.json"
    atomic.write_json(report, {"rows": [1.5]})
    assert log.folder_synced_after_replace(report), log.events
    assert json.loads(report.read_text()) == {"rows": [1.5]}
    with pytest.raises(TypeError):  # a value JSON cannot hold: the report before it stays whole
        atomic.write_json(report, {"rows": [object()]})
    assert json.loads(report.read_text()) == {"rows": [1.5]} and not list(report.parent.glob("*partial*"))
    with VideoWriter(tmp_path / "d" / "out.mp4", 25, (32, 24)) as writer:
        for i in range(3):
            writer.write(np.full((24, 32, 3), 40 * i, np.uint8))
    assert log.folder_synced_after_replace(tmp_path / "d" / "out.mp4"), log.events


# -- clips made with PyAV: edit lists, missing timestamps, rotation, size changes -----------------

def encode(path: Path, frames: list, rate: int = 25, first_pts: int = 0, rotation: int = 0,
           fmt: str | None = None) -> None:
    """Encode BGR ``frames`` with libx264 (no B-frames) at ``rate``, the first at ``first_pts``
    (negative: an MP4 edit list trims them), with a display matrix turning them ``rotation``."""
    from fractions import Fraction

    import av

    h, w = frames[0].shape[:2]
    with av.open(str(path), "w", format=fmt) as out:
        stream = out.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"bf": "0"}
        if rotation:
            stream.set_display_rotation(rotation)
        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format="bgr24")
            frame.pts, frame.time_base = first_pts + i, Fraction(1, rate)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))


def moving(count: int, size: tuple[int, int]) -> list:
    from media import frame_for

    return [frame_for(i, size) for i in range(count)]


def played(path: Path) -> tuple[list, list[float], int]:
    """Frames as a player shows them (OpenCV applies the display matrix), their times, and the rotation
    the file's display matrix asks for (PyAV)."""
    import av
    import cv2

    with av.open(str(path)) as container:
        decoded = list(container.decode(video=0))
    cap = cv2.VideoCapture(str(path))
    shown = []
    while (read := cap.read())[0]:
        shown.append(read[1])
    cap.release()
    return shown, [float(f.time) for f in decoded], decoded[0].rotation


def test_an_edit_list_is_a_notice_not_truncation(tmp_path: Path, weights: Path) -> None:
    from media import run_rtlrp

    src = tmp_path / "edit.mp4"
    encode(src, moving(20, (64, 48)), first_pts=-3)
    out = tmp_path / "out.mp4"
    proc = run_rtlrp(["video", src, "--out", out, "--weights", weights, "--device", "cpu"])
    assert proc.returncode == 0, proc.stderr
    assert "announces 20 frames and delivered 17 without an error" in proc.stderr
    assert "ended after" not in proc.stderr and frame_count(out) == 17


def test_a_cut_mp4_is_still_truncated(tmp_path: Path) -> None:
    from realtime_lrp.media.reader import VideoReader
    from realtime_lrp.media.writer import VideoWriter

    full = tmp_path / "full.mp4"
    with VideoWriter(full, 25, (64, 48)) as writer:  # its index at the front, as the cut needs
        for image in moving(40, (64, 48)):
            writer.write(image)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(full.read_bytes()[: int(full.stat().st_size * 0.6)])
    with VideoReader(cut) as reader:
        n = sum(1 for _ in reader.frames())
        assert 0 < n < 40 and reader.truncated and not reader.count_mismatch


def test_frames_without_pts_follow_the_previous_by_one_frame(tmp_path: Path, weights: Path) -> None:
    from media import run_rtlrp

    from realtime_lrp.media.reader import VideoReader

    src = tmp_path / "raw.h264"  # an elementary stream: no container, no timestamps
    encode(src, moving(12, (64, 48)), fmt="h264")
    with VideoReader(src) as reader:
        pts = [f.pts for f in reader.frames()]
        step = 1 / (reader.info.rate * reader.info.time_base)
    assert pts == [round(i * step) for i in range(12)]
    out = tmp_path / "out.mp4"
    proc = run_rtlrp(["video", src, "--out", out, "--weights", weights, "--device", "cpu"])
    assert proc.returncode == 0, proc.stderr
    _, times, _ = played(out)
    assert len(times) == 12
    assert [round(b - a, 4) for a, b in zip(times, times[1:])] == [0.04] * 11


@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_rotated_clips_are_explained_and_written_upright(tmp_path: Path, weights: Path, rotation: int) -> None:
    import numpy as np
    from media import run_rtlrp

    from realtime_lrp.media.capture import LiveSource
    from realtime_lrp.media.reader import VideoReader

    coded = moving(10, (96, 48))
    for image in coded:
        image[16:, :40] = (0, 0, 255)  # a red block at the coded bottom-left
    src = tmp_path / f"phone{rotation}.mp4"
    encode(src, coded, rotation=rotation)
    shown, _, _ = played(src)
    upright = shown[0]
    assert upright.shape[:2] == ((96, 48) if rotation != 180 else (48, 96))
    with VideoReader(src) as reader:
        first = next(reader.frames()).image
        assert reader.info.rotation == rotation and reader.info.size == upright.shape[1::-1]
    assert np.abs(first.astype(int) - upright).mean() < 3  # as the player shows it
    live = LiveSource(str(src), pace=False).open()
    try:
        assert live.read(timeout=10).image.shape == upright.shape  # webcam --camera FILE too
    finally:
        live.close()
    out = tmp_path / "out.mp4"
    proc = run_rtlrp(["video", src, "--out", out, "--weights", weights, "--device", "cpu", "--alpha", "0"])
    assert proc.returncode == 0, proc.stderr
    assert f"turned {rotation} degrees" in proc.stderr
    written, _, turn = played(out)
    assert turn == 0 and written[0].shape == upright.shape
    red = lambda im: (im[..., 2].astype(int) - im[..., 1]) > 100  # noqa: E731
    assert red(upright).mean() > 0.2
    agree = (red(written[0]) == red(upright)).mean()  # the label drawn over the frame differs a little
    assert agree > 0.75 and agree > (red(written[0]) == red(np.rot90(upright, 2))).mean() + 0.2  # not upside down


@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_serve_source_sends_a_rotated_clips_frames_upright(tmp_path: Path, rotation: int) -> None:
    import cv2
    import numpy as np
    from media import tiny_card, tiny_model
    from test_serve import hello_of, ws_url
    from websockets.sync.client import connect

    from realtime_lrp.apps.serve.protocol import decode_result
    from realtime_lrp.apps.serve.server import LrpServer
    from realtime_lrp.media.capture import parse_camera
    from realtime_lrp.pipeline.processor import FrameProcessor

    coded = moving(10, (96, 48))
    for image in coded:
        image[16:, :40] = (0, 0, 255)  # a red block at the coded bottom-left
    src = tmp_path / f"phone{rotation}.mp4"
    encode(src, coded, rotation=rotation)
    upright = played(src)[0][0]
    assert upright.shape[:2] == ((96, 48) if rotation != 180 else (48, 96))
    processor = FrameProcessor(tiny_model(), tiny_card(), device="cpu", alpha=0.0)  # the frame as it is, labelled
    with LrpServer(processor, port=0, source=parse_camera(str(src))) as server:
        server.start()
        with connect(ws_url(server.url)) as ws:
            assert hello_of(ws)["mode"] == "kiosk"
            while not isinstance(reply := ws.recv(timeout=60), bytes):
                pass
    sent = cv2.imdecode(np.frombuffer(decode_result(reply)[1], np.uint8), cv2.IMREAD_COLOR)
    assert sent.shape == upright.shape
    red = lambda im: (im[..., 2].astype(int) - im[..., 1]) > 100  # noqa: E731
    agree = (red(sent) == red(upright)).mean()  # the label drawn over the frame differs a little
    assert agree > 0.75 and agree > (red(sent) == red(np.rot90(upright, 2))).mean() + 0.2  # not upside down


def test_a_size_change_mid_stream_is_letterboxed_and_said_once(tmp_path: Path, weights: Path) -> None:
    from media import run_rtlrp

    first, second = tmp_path / "a.ts", tmp_path / "b.ts"
    encode(first, moving(10, (64, 48)), fmt="mpegts")
    encode(second, moving(8, (96, 54)), first_pts=12, fmt="mpegts")
    src = tmp_path / "switch.ts"
    src.write_bytes(first.read_bytes() + second.read_bytes())  # concatenated clips: a valid stream
    out = tmp_path / "out.mp4"
    proc = run_rtlrp(["video", src, "--out", out, "--weights", weights, "--device", "cpu", "--alpha", "0"])
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("frame size changes") == 1
    assert "changes at frame 10 (0-based) from 64x48 to 96x54" in proc.stderr
    written, _, _ = played(out)
    assert len(written) == 18 and {f.shape for f in written} == {(48, 64, 3)}
    assert written[-1][-4:].max() < 40 < written[0][-4:].max()  # the letterbox's black bar (the label is on top)


def test_frames_of_a_size_that_is_not_handled_keep_the_frames_done(tmp_path: Path) -> None:
    import numpy as np
    from media import tiny_card, tiny_model

    from realtime_lrp.apps.video import PartialOutput, process_video
    from realtime_lrp.pipeline.processor import FrameProcessor

    class Reshaping(FrameProcessor):
        """Renders the fourth batch one row short, as a pipeline bug would."""

        calls = 0

        def process(self, frames, stable=True):
            rendered, preds = super().process(frames, stable)
            self.calls += 1
            return ([np.ascontiguousarray(r[1:]) for r in rendered] if self.calls == 4 else rendered), preds

    src = tmp_path / "in.mp4"
    write_video(src, 20, (48, 40), 25.0)
    out = tmp_path / "out.mp4"
    with pytest.raises(PartialOutput, match="does not match.*the 3 frames done are in"):
        process_video(src, out, Reshaping(tiny_model(), tiny_card(), device="cpu"))
    assert frame_count(tmp_path / "out.partial.mp4") == 3 and not out.exists()


# -- many files: one failure is one row, under torchrun too ---------------------------------------

DRIVER = '''\
"""rtlrp with faults planted by input name: OOM (a ProcessingError) in the first batch of any input
whose name starts with "oom"; with RTLRP_TEST_BROKEN_RANK=N, rank N cannot build its processor; with
RTLRP_TEST_HUNG_RANK=N, rank N's first batch never returns; with RTLRP_TEST_PID_DIR, each process
leaves its pid there (torchrun starts its workers in sessions of their own)."""
import os
import sys

if os.environ.get("RTLRP_TEST_PID_DIR"):
    open(os.path.join(os.environ["RTLRP_TEST_PID_DIR"], str(os.getpid())), "w").close()

from realtime_lrp.apps import video
from realtime_lrp.cli import main
from realtime_lrp.cli import video as video_cli
from realtime_lrp.pipeline.processor import FrameProcessor, ProcessingError

current = {"src": ""}
run_one, process = video.process_video, FrameProcessor.process


def process_video(src, *args, **kwargs):
    current["src"] = os.path.basename(str(src))
    return run_one(src, *args, **kwargs)


def failing_process(self, frames, stable=True):
    if os.environ.get("RANK", "0") == os.environ.get("RTLRP_TEST_HUNG_RANK", "none"):
        import time
        time.sleep(3600)  # the work is stuck, as in a hung kernel; the heartbeat thread lives on
    if current["src"].startswith("oom"):
        raise ProcessingError("the model ran out of memory on 1 frame(s) at 32x32 (simulated)")
    return process(self, frames, stable)


build = video_cli._video_processor


def broken_build(options, console):
    if os.environ.get("RANK", "0") == os.environ.get("RTLRP_TEST_BROKEN_RANK", "none"):
        raise RuntimeError("CUDA error: no kernel image is available for execution on the device (simulated)")
    return build(options, console)


video.process_video, FrameProcessor.process, video_cli._video_processor = process_video, failing_process, broken_build
main(sys.argv[1:])
'''


def driver(tmp_path: Path) -> Path:
    path = tmp_path / "faulty_rtlrp.py"
    path.write_text(DRIVER)
    return path


def test_out_of_memory_on_one_input_is_its_row_and_the_others_go_on(tmp_path: Path, weights: Path) -> None:
    import sys

    inputs = [tmp_path / name for name in ("a.mp4", "oom.mp4", "c.mp4")]
    for path in inputs:
        write_video(path, 6, (48, 40), 25.0)
    out_dir = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(driver(tmp_path)), "video", *map(str, inputs), "--out-dir",
                           str(out_dir), "--weights", str(weights), "--device", "cpu"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == "Error: 1 of 3 inputs failed (see the table)"
    assert "Traceback" not in proc.stderr
    rows = {line.split()[1]: line for line in proc.stdout.splitlines() if ".mp4" in line}
    assert "failed" in rows[str(inputs[1])] and "ran out of memory" in rows[str(inputs[1])]
    assert sorted(p.name for p in out_dir.iterdir()) == ["a_lrp.mp4", "c_lrp.mp4"]
    assert frame_count(out_dir / "a_lrp.mp4") == frame_count(out_dir / "c_lrp.mp4") == 6


def torchrun_command(args: list[str], env: dict | None = None) -> tuple[list[str], dict]:
    """The command and environment of two CPU processes under torchrun (gloo, one thread each)."""
    import sys

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    return cmd, {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}


def torchrun(args: list[str], env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Two CPU processes under torchrun, however they end."""
    cmd, env = torchrun_command(args, env)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["oom-input", "broken-rank"])
def test_a_failing_rank_reports_and_no_rank_waits(tmp_path: Path, weights: Path, fault: str) -> None:
    names = ["a.mp4", "oom.mp4" if fault == "oom-input" else "b.mp4", "c.mp4"]  # rank 1 takes the second
    inputs = [tmp_path / name for name in names]
    for path in inputs:
        write_video(path, 6, (48, 40), 25.0)
    out_dir = tmp_path / "out"
    env = {"RTLRP_TEST_BROKEN_RANK": "1" if fault == "broken-rank" else "none"}
    started = time.monotonic()
    proc = torchrun([str(driver(tmp_path)), "video", *map(str, inputs), "--out-dir", str(out_dir),
                     "--weights", str(weights), "--device", "cpu"], env=env)
    print(f"{fault}: torchrun ended after {time.monotonic() - started:.1f} s")
    assert proc.returncode != 0, proc.stderr  # torchrun's own ChildFailedError report follows the ranks' lines
    assert "realtime_lrp/" not in proc.stderr, "a traceback through the project's code"
    assert proc.stdout.count("rtlrp video: 3 inputs") == 1, proc.stdout + proc.stderr
    rows = {line.split()[1]: line for line in proc.stdout.splitlines() if ".mp4" in line}
    assert "failed" in rows[str(inputs[1])] and " done " in rows[str(inputs[0])] and " done " in rows[str(inputs[2])]
    why = "ran out of memory" if fault == "oom-input" else "rank 1: CUDA error"
    assert why in rows[str(inputs[1])] and why in proc.stderr
    assert sorted(p.name for p in out_dir.iterdir()) == ["a_lrp.mp4", "c_lrp.mp4"]


@pytest.mark.slow
def test_a_rank_whose_work_hangs_is_given_up_although_its_heartbeat_thread_lives(tmp_path: Path,
                                                                                  weights: Path) -> None:
    """Rank 1 stuck in its first batch (as in a hung kernel): its frames stop moving, so its heartbeat
    stops, and rank 0 lists its share as lost after RTLRP_RANK_TIMEOUT and reports, instead of waiting
    for ever. The hung rank itself is killed by the test (nothing can unstick a hung kernel)."""
    inputs = [tmp_path / name for name in ("a.mp4", "b.mp4", "c.mp4")]
    for path in inputs:
        write_video(path, 6, (48, 40), 25.0)
    out_dir = tmp_path / "out"
    pids = tmp_path / "pids"
    pids.mkdir()
    cmd, env = torchrun_command([str(driver(tmp_path)), "video", *map(str, inputs), "--out-dir", str(out_dir),
                                 "--weights", str(weights), "--device", "cpu"],
                                {"RTLRP_TEST_HUNG_RANK": "1", "RTLRP_RANK_TIMEOUT": "6", "RTLRP_TEST_PID_DIR": str(pids)})
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            start_new_session=True)

    def kill_all() -> None:  # torchrun, then its workers, which hold the pipe open in sessions of their own
        os.killpg(proc.pid, signal.SIGKILL)
        for pid in pids.iterdir():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid.name), signal.SIGKILL)

    lines: list[str] = []
    killer = threading.Timer(120, kill_all)
    killer.start()
    try:
        for line in proc.stdout:  # until rank 0's table has a row for each input
            lines.append(line)
            if all(any(str(src) in seen and (" done " in seen or "failed" in seen) for seen in lines) for src in inputs):
                break
    finally:
        killer.cancel()
        kill_all()
        proc.wait(30)
    out = "".join(lines)
    rows = {line.split()[1]: line for line in lines if ".mp4" in line and len(line.split()) > 1}
    assert str(inputs[1]) in rows, out
    assert "rank 1 stopped answering for 6 s" in rows[str(inputs[1])], out
    assert " done " in rows[str(inputs[0])] and " done " in rows[str(inputs[2])], out
    assert sorted(p.name for p in out_dir.iterdir()) == ["a_lrp.mp4", "c_lrp.mp4"]


def test_rank_zero_gives_up_on_a_rank_whose_heartbeat_stopped(tmp_path: Path) -> None:
    import socket

    import torch.distributed as dist

    from realtime_lrp.apps.video import FileOutcome, Ranks

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    store = dist.TCPStore("127.0.0.1", port, 1, is_master=True)
    sources = [tmp_path / f"{name}.mp4" for name in ("a", "b", "c")]
    ranks = Ranks(0, 2, timeout=1.5)
    ranks.store = dist.PrefixStore("test/", store)  # rank 1 joined, beat twice, then died
    ranks.store.add("beat/1", 2)
    started = time.monotonic()
    mine = [FileOutcome(sources[0], tmp_path / "a_lrp.mp4", "done", 6),
            FileOutcome(sources[2], tmp_path / "c_lrp.mp4", "done", 6)]
    result: list = []
    waiting = threading.Thread(target=lambda: result.append(ranks.gather(mine, sources, tmp_path)), daemon=True)
    waiting.start()
    waiting.join(timeout=60)
    assert result, "rank 0 still waits for a rank that stopped answering"
    assert 1.5 <= time.monotonic() - started
    everything = result[0]
    lost = [o for o in everything if o.status == "failed"]
    assert [o.src for o in lost] == [sources[1]] and "rank 1 stopped answering for 1.5 s" in lost[0].message


# -- first run: a download says what it fetches, how big, and shows its progress -------------------

@pytest.fixture()
def weight_server(tmp_path: Path):
    """A loopback HTTP server for the files in ``tmp_path / "served"``; yields its base URL."""
    import functools
    import http.server

    folder = tmp_path / "served"
    folder.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", folder
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def serve_weights(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, base: str, folder: Path, arch: str,
                  corrupt: bool = False) -> dict:
    """A random torchvision ``arch`` state dict served as torchvision's URL would name it."""
    import torch
    import torchvision

    from realtime_lrp.models import imagenet
    from realtime_lrp.models.files import sha256_file

    torch.manual_seed(0)
    state = getattr(torchvision.models, arch)().state_dict()
    staging = tmp_path / "staging.pth"
    torch.save(state, staging)
    name = f"{arch}-{('0' * 8) if corrupt else sha256_file(staging)[:8]}.pth"
    staging.rename(folder / name)
    real = imagenet._imagenet_weights(arch)
    fake = type("Weights", (), {"url": f"{base}/{name}", "meta": real.meta, "__str__": lambda self: str(real)})()
    monkeypatch.setattr(imagenet, "_imagenet_weights", lambda wanted: fake)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return state


def test_a_first_run_download_says_its_size_and_shows_progress(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                                weight_server, capsys: pytest.CaptureFixture) -> None:
    import torch

    from realtime_lrp.models.loading import load_model

    base, folder = weight_server
    state = serve_weights(monkeypatch, tmp_path, base, folder, "mobilenet_v3_small")
    served = next(folder.iterdir())
    notices: list[str] = []
    model, card = load_model("imagenet:mobilenet_v3_small", notify=notices.append)
    size = served.stat().st_size / 1e6
    assert notices == [f"downloading {served.name} ({size:,.1f} MB) from {base}/{served.name} to "
                       f"{tmp_path / 'torch' / 'hub' / 'checkpoints'} (once; later runs read the cache)"]
    bar = capsys.readouterr().err
    assert served.name in bar and f"{size:.1f}/{size:.1f} MB" in bar, bar
    assert all(torch.equal(model.state_dict()[k].cpu(), v) for k, v in state.items())
    cached = list((tmp_path / "torch").rglob("*.pth"))
    assert [p.name for p in cached] == [served.name] and not list((tmp_path / "torch").rglob("*partial*"))
    notices.clear()
    load_model("imagenet:mobilenet_v3_small", notify=notices.append)
    assert notices == [], "a cached file is not downloaded again"


def test_a_corrupt_download_is_refused_and_leaves_no_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                          weight_server) -> None:
    from realtime_lrp.models.errors import WeightsError
    from realtime_lrp.models.loading import load_model

    base, folder = weight_server
    serve_weights(monkeypatch, tmp_path, base, folder, "mobilenet_v3_small", corrupt=True)
    with pytest.raises(WeightsError, match="download was corrupt"):
        load_model("imagenet:mobilenet_v3_small", notify=lambda msg: None)
    notices: list[str] = []
    _, card = load_model("auto", arch="mobilenet_v3_small", notify=notices.append)
    assert card["arch"] != "mobilenet_v3_small" and notices[-1].endswith("the download was corrupt")
    assert not [p for p in (tmp_path / "torch").rglob("*") if p.is_file()]


# -- small CLI faults ------------------------------------------------------------------------------

def only_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_an_explicit_cuda_device_without_cuda_is_one_line_and_exit_2(tmp_path: Path, weights: Path,
                                                                     clip: Path) -> None:
    import cv2
    import numpy as np
    from click.testing import CliRunner
    from media import run_rtlrp

    from realtime_lrp.cli import cli

    proc = run_rtlrp(["video", clip, "--out", tmp_path / "o.mp4", "--weights", weights, "--device", "cuda"])
    assert proc.returncode == 2 and "--device cuda: CUDA is not available here" in only_line(proc.stderr)
    assert not (tmp_path / "o.mp4").exists()
    image = tmp_path / "item.png"
    cv2.imwrite(str(image), np.full((32, 32), 100, np.uint8))
    explain = ["explain", str(image), "--out", str(tmp_path / "maps"), "--weights", str(weights)]
    for device, line in (("cuda:1", "--device cuda:1: CUDA is not available here"),
                         ("gpu", "use auto, cpu, cuda or cuda:N")):
        result = CliRunner().invoke(cli, [*explain, "--device", device])
        assert result.exit_code == 2 and line in only_line(result.output), result.output
    result = CliRunner().invoke(cli, [*explain, "--device", "auto"])
    assert result.exit_code == 0 and "CUDA is not available: running on the CPU" in result.output, result.output


def test_bench_evaluate_and_train_refuse_cuda_without_it_and_auto_says_it_falls_back(tmp_path: Path,
                                                                                     weights: Path) -> None:
    import cv2
    import numpy as np
    from media import run_rtlrp

    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # no CUDA, also on a machine that has it
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(2):
        cv2.imwrite(str(folder / f"{i}.png"), np.full((32, 32), 60 + 50 * i, np.uint8))
    commands = {
        "bench": (["bench", "--weights", weights, "--sizes", "32", "--top-k", "0", "--repeats", "1", "--warmup", "0",
                   "--no-zennit", "--no-autolrp", "--no-frame-pass"], "benchmarking on the CPU"),
        "evaluate": (["evaluate", folder, "--weights", weights, "-n", "2", "--methods", "random", "--top-k", "0",
                      "--dtypes", "fp32", "--draws", "1", "--no-road", "--no-class-r"], "evaluating on the CPU"),
        "train": (["train", "--dataset", "fashion-mnist", "--width", "0.0625", "--hidden", "16", "--max-steps", "1",
                   "--batch-size", "8", "--workers", "0", "--out", tmp_path / "run"], "training on the CPU"),
    }
    for name, (args, said) in commands.items():
        for device in ("cuda", "cuda:0"):
            proc = run_rtlrp([*args, "--device", device], env=env)
            assert proc.returncode == 2, (name, proc.stderr)
            assert f"--device {device}: CUDA is not available here" in only_line(proc.stderr), name
        assert not (tmp_path / "run").exists(), "a refused train left a run folder"
        proc = run_rtlrp([*args, "--device", "auto"], env=env)
        assert proc.returncode == 0, (name, proc.stderr)
        assert f"CUDA is not available: {said}" in proc.stderr, (name, proc.stderr)


def test_crf_is_checked_against_the_codecs_own_range(tmp_path: Path, clip: Path) -> None:
    import numpy as np
    from click.testing import CliRunner
    from media import run_rtlrp

    from realtime_lrp.cli import cli
    from realtime_lrp.media.writer import VideoWriter, WriterError

    proc = run_rtlrp(["video", clip, "--out", tmp_path / "o.mp4", "--crf", "60", "--device", "cpu"])
    assert proc.returncode == 2, proc.stderr
    assert "--crf 60 is out of range for h264: use 0-51" in only_line(proc.stderr)
    for args, line in ((["--out", tmp_path / "o.mkv", "--codec", "hevc", "--crf", "52"], "for hevc: use 0-51"),
                       (["--out", tmp_path / "o.webm", "--crf", "64"], "for vp9: use 0-63"),
                       (["--out-dir", tmp_path / "many", "--crf", "60"], "for h264: use 0-51")):
        result = CliRunner().invoke(cli, ["video", str(clip), *map(str, args), "--device", "cpu"])
        assert result.exit_code == 2 and line in only_line(result.output), result.output
    with pytest.raises(WriterError, match="out of range for h264"):
        VideoWriter(tmp_path / "w.mp4", 25, (32, 24), crf=52)
    with VideoWriter(tmp_path / "w.webm", 25, (32, 24), crf=60) as writer:  # in range for vp9
        writer.write(np.zeros((24, 32, 3), np.uint8))
    assert frame_count(tmp_path / "w.webm") == 1


def test_webcam_looks_for_the_camera_before_loading_the_model(tmp_path: Path) -> None:
    from media import run_rtlrp

    cached = tmp_path / "torch" / "hub" / "checkpoints" / "vgg16-397923af.pth"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"not the weights")  # auto rejects it and loads the shipped model, saying so: no download
    env = {**os.environ, "TORCH_HOME": str(tmp_path / "torch")}
    started = time.monotonic()
    proc = run_rtlrp(["webcam", "--camera", "9", "--no-window", "--weights", "auto"], env=env)
    print(f"no camera: said after {time.monotonic() - started:.1f} s")
    assert proc.returncode == 1 and "cannot open camera 9" in only_line(proc.stderr)
    assert "weights" not in proc.stderr, "the model was loaded before the camera was tried"
    from click.testing import CliRunner

    from realtime_lrp.cli import cli

    helped = CliRunner().invoke(cli, ["webcam", "--help"])
    assert "headless (--no-window), q and Enter quit (or Ctrl-C)" in " ".join(helped.output.split())


def test_headless_webcam_stops_on_q_and_enter_and_reads_only_a_terminal_or_a_pipe(tmp_path: Path,
                                                                                   weights: Path) -> None:
    from realtime_lrp.media.display import StdinKeys

    src = tmp_path / "long.mp4"
    write_video(src, 600, (80, 60), 30.0)  # 20 s at its own pace: q must end it long before
    args = [*rtlrp_command(), "webcam", "--camera", str(src), "--weights", str(weights), "--device", "cpu",
            "--size", "64", "--no-window"]
    proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    try:
        for line in proc.stderr:
            lines.append(line)
            if "frames " in line and ("LIVE" in line or "PAUSED" in line):  # the loop runs: now type q
                proc.stdin.write("q\n")
                proc.stdin.flush()
                break
        started = time.monotonic()
        rest = proc.communicate(timeout=60)[1]
        took = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
    stderr = "".join(lines) + rest
    assert proc.returncode == 0, stderr
    assert "headless: type q and Enter to stop" in stderr
    done = [line for line in stderr.splitlines() if "frames processed in" in line]
    assert len(done) == 1 and done[0].endswith("ended: quit."), stderr
    assert int(done[0].split()[0]) < 600 and took < 15, f"q took {took:.1f} s to stop the run"
    with open(os.devnull) as null:  # /dev/null: no keys, no thread, no prompt
        assert not StdinKeys(null).active
    proc = subprocess.run([*args, "--max-frames", "3"], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0 and "ended: max frames." in proc.stderr, proc.stderr
    assert "type q" not in proc.stderr
    regular = tmp_path / "keys.txt"
    regular.write_text("q\n")
    with regular.open() as plain:
        assert not StdinKeys(plain).active, "a regular file is not read as keys"
    read, write = os.pipe()
    with os.fdopen(read) as pipe_in, os.fdopen(write, "w") as pipe_out:
        keys = StdinKeys(pipe_in)
        pipe_out.write("x\nquit\n")
        pipe_out.flush()
        deadline = time.monotonic() + 5
        key = None
        while key is None and time.monotonic() < deadline:
            key, _ = keys.poll(), time.sleep(0.01)
        keys.stop()
        assert keys.active and key == ord("q") and keys.poll() is None



def test_the_stdin_reader_stops_with_the_display_and_never_reads_a_reused_descriptor(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The reader thread holds a descriptor number: once its pipe is closed and the number reused (CI: a
    test's next open file, which it read as keys), it must leave the new file alone; stop() ends it.
    The thread's first call waits until the number is reused, so that the reuse comes before the
    thread does anything, whatever the scheduler does."""
    from realtime_lrp.media.display import StdinKeys

    def readers() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name == "rtlrp-stdin-keys"]

    reused_now = threading.Event()
    isatty = os.isatty

    def isatty_once_reused(fd: int) -> bool:
        if threading.current_thread().name == "rtlrp-stdin-keys":
            reused_now.wait(10)
        return isatty(fd)

    monkeypatch.setattr(os, "isatty", isatty_once_reused)
    before = set(readers())
    read, write = os.pipe()
    keys = StdinKeys(os.fdopen(read, closefd=False))
    thread, = set(readers()) - before
    os.close(read)
    os.close(write)
    reused = tmp_path / "setup.cfg"
    reused.write_text("q\n" * 100)
    opened = os.open(reused, os.O_RDONLY)
    try:
        if opened != read:
            os.dup2(opened, read)  # the reader's number now names the file, as when the next open reuses it
        reused_now.set()
        time.sleep(1.5)  # three of the reader's half-second waits
        assert os.lseek(read, 0, os.SEEK_CUR) == 0, "the reader read a file that reused its descriptor"
        assert keys.poll() is None
        thread.join(1.0)
        assert not thread.is_alive(), "the reader went on after its descriptor was reused"
    finally:
        if opened != read:
            os.close(read)
        os.close(opened)
    other_read, other_write = os.pipe()
    try:
        keys = StdinKeys(os.fdopen(other_read, closefd=False))
        thread, = set(readers()) - before
        keys.stop()
        thread.join(2.0)
        assert not thread.is_alive(), "stop() left the reader running"
    finally:
        os.close(other_read)
        os.close(other_write)


def test_omp_num_threads_sets_the_default_thread_count(monkeypatch: pytest.MonkeyPatch) -> None:
    """OMP_NUM_THREADS, as torch reads it, is the count when --threads is not given (how the suite runs
    with 2 threads); an unset, empty or malformed value leaves all cores but two, at least one."""
    from realtime_lrp.cli.options import default_threads

    fallback = max(1, (os.cpu_count() or 1) - 2)
    for value, expected in (("2", 2), ("7", 7), ("", fallback), ("0", fallback), ("two", fallback)):
        monkeypatch.setenv("OMP_NUM_THREADS", value)
        assert default_threads() == expected, value
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert default_threads() == fallback

# -- install what you use ----------------------------------------------------------------------------

def test_a_missing_extra_is_one_line_saying_what_to_install(tmp_path: Path) -> None:
    from media import run_rtlrp

    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text("import sys\nfor name in ('starlette', 'websockets', 'matplotlib'):\n"
                                           "    sys.modules[name] = None  # as if not installed\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(hide), os.environ.get("PYTHONPATH", "")])}
    proc = run_rtlrp(["serve", "--port", "0"], env=env)
    assert proc.returncode == 1
    assert only_line(proc.stderr) == ("Error: rtlrp serve needs the serve extra (starlette, websockets not"
                                      " installed): pip install 'realtime-lrp[serve]'")
    proc = run_rtlrp(["evaluate", "--plot", tmp_path / "p.png"], env=env)
    assert proc.returncode == 1 and "pip install 'realtime-lrp[eval]'" in only_line(proc.stderr)
    from realtime_lrp.cli.group import missing_extra

    assert missing_extra("serve", ["--help"]) is None and missing_extra("evaluate", []) is None


def test_the_extras_split_what_each_command_needs() -> None:
    import configparser
    import re

    cfg = configparser.ConfigParser()
    cfg.read(Path(__file__).resolve().parents[1] / "setup.cfg")
    names = lambda text: {re.split(r"[<>=\[ ]", line.strip())[0] for line in text.splitlines() if line.strip()}  # noqa: E731
    core = names(cfg["options"]["install_requires"])
    extras = {k: names(v) for k, v in cfg["options.extras_require"].items()}
    assert core == {"torch", "torchvision", "numpy", "opencv-python", "av", "click", "rich"}
    assert extras["serve"] == {"starlette", "uvicorn", "websockets"} and extras["eval"] == {"matplotlib"}
    assert extras["serve"] | extras["eval"] | {"pytest", "zennit"} <= extras["dev"]
    assert "mutmut" not in extras["dev"] and extras["mutmut"] == {"mutmut"}
