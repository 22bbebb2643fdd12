"""``rtlrp video`` and ``rtlrp sample`` on real files written and read back by OpenCV."""
from __future__ import annotations

import re

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from media import interrupt_rtlrp, read_video, spied_count, spy_env, tiny_card, tiny_model, write_video

from realtime_lrp.apps.video import PartialOutput, process_video
from realtime_lrp.cli import cli
from realtime_lrp.media.writer import VideoWriter, WriterError
from realtime_lrp.pipeline.processor import FrameProcessor, ProcessingError


def run(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


def nearest_input(out: np.ndarray, inputs: list[np.ndarray]) -> int:
    return int(np.argmin([np.abs(out.astype(int) - f).mean() for f in inputs]))


@pytest.mark.parametrize("size, fps, ext, layout, batch", [
    ((94, 58), 29.97, ".mp4", "overlay", 1),
    ((70, 46), 23.976, ".avi", "side", 4),
    ((62, 38), 12.5, ".mkv", "heatmap", 3),
])
def test_video_keeps_fps_count_size_and_order(tmp_path, weights, size, fps, ext, layout, batch):
    src = tmp_path / "in.mp4"
    write_video(src, 13, size, fps)
    out = tmp_path / f"out{ext}"
    result = run("video", src, "--out", out, "--weights", weights, "--layout", layout, "--batch", batch,
                 "--device", "cpu", "--top-k", "0.05")
    assert result.exit_code == 0, result.output
    assert "Wrote 13 frames" in result.output
    written, out_fps = read_video(out)
    w, h = size
    assert len(written) == 13
    assert out_fps == pytest.approx(fps, abs=1e-3)
    assert written[0].shape == ((h, 2 * w, 3) if layout == "side" else (h, w, 3))
    if layout != "heatmap":  # the frames are all there, in order
        inputs, _ = read_video(src)
        assert [nearest_input(f[:, :w], inputs) for f in written] == list(range(13))


def test_odd_size_avi_keeps_size_and_fractional_fps(tmp_path, weights):
    src = tmp_path / "odd.avi"  # OpenCV's own MJPEG writer keeps odd sizes
    write_video(src, 9, (45, 31), 15.0, fourcc="MJPG", api=cv2.CAP_OPENCV_MJPEG)
    out = tmp_path / "out.avi"
    result = run("video", src, "--out", out, "--weights", weights, "--layout", "side", "--device", "cpu")
    assert result.exit_code == 0, result.output
    written, fps = read_video(out)
    assert len(written) == 9 and written[0].shape == (31, 90, 3) and fps == pytest.approx(15.0)
    frac = tmp_path / "frac.avi"
    with VideoWriter(frac, 29.97, (33, 27)) as writer:
        for i in range(5):
            writer.write(np.full((27, 33, 3), 40 * i, np.uint8))
    written, fps = read_video(frac)
    assert len(written) == 5 and written[0].shape == (27, 33, 3) and fps == pytest.approx(29.97, abs=1e-3)


def test_writer_refuses_wrong_sized_frames(tmp_path):
    writer = VideoWriter(tmp_path / "w.mp4", 25.0, (32, 24))
    with pytest.raises(WriterError, match="does not match"):
        writer.write(np.zeros((24, 30, 3), np.uint8))
    writer.close()
    assert not (tmp_path / "w.mp4").exists()  # no frame, no file


def test_batching_changes_nothing(tmp_path):
    src = tmp_path / "in.mp4"
    write_video(src, 10, (64, 48), 25.0)
    outputs = []
    for batch in (1, 4):
        proc = FrameProcessor(tiny_model(), tiny_card(), device="cpu")
        out = tmp_path / f"b{batch}.avi"
        result = process_video(src, out, proc, batch=batch)
        assert result.frames == 10 and not result.interrupted
        outputs.append(read_video(out)[0])
    assert len(outputs[0]) == len(outputs[1]) == 10
    assert max(np.abs(a.astype(int) - b).mean() for a, b in zip(*outputs)) < 1.0


class FailingProcessor(FrameProcessor):
    """Fails on the third batch, like a GPU running out of memory mid-run."""

    calls = 0

    def process(self, frames, stable=True):
        self.calls += 1
        if self.calls == 3:
            raise ProcessingError("CUDA out of memory (simulated)")
        return super().process(frames, stable)


def test_error_mid_run_keeps_a_playable_file(tmp_path):
    src = tmp_path / "in.mp4"
    write_video(src, 20, (48, 40), 25.0)
    out = tmp_path / "out.mp4"
    out.write_bytes(b"the previous output")
    with pytest.raises(PartialOutput, match="out of memory.*the 4 frames done are in .*out.partial.mp4"):
        process_video(src, out, FailingProcessor(tiny_model(), tiny_card(), device="cpu"), batch=2)
    assert out.read_bytes() == b"the previous output"
    written, fps = read_video(tmp_path / "out.partial.mp4")
    assert len(written) == 4 and written[0].shape == (40, 48, 3) and fps == pytest.approx(25.0)


@pytest.mark.parametrize("content, message", [
    (None, "no such file"),
    (b"", "is empty"),
    (b"\x00\x01 not a video at all " * 50, "not a video, or corrupt"),
])
def test_bad_input_is_one_line_and_leaves_no_output(tmp_path, weights, content, message):
    src = tmp_path / "in.mp4"
    if content is not None:
        src.write_bytes(content)
    out = tmp_path / "out.mp4"
    result = run("video", src, "--out", out, "--weights", weights)
    assert result.exit_code == 1
    assert message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not out.exists()


def test_bad_output_and_weights_are_clear_errors(tmp_path, weights):
    src = tmp_path / "in.mp4"
    write_video(src, 3, (32, 32), 10.0)
    result = run("video", src, "--out", tmp_path / "out.xyz", "--weights", weights)
    assert result.exit_code == 1 and "cannot write '.xyz' video" in result.output
    result = run("video", src, "--out", src, "--weights", weights)
    assert result.exit_code == 1 and "is the input file itself" in result.output
    result = run("video", src, "--out", src / "sub" / "o.mp4", "--weights", weights)
    assert result.exit_code == 1 and f"{src} is not a folder" in result.output
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"garbage")
    result = run("video", src, "--out", tmp_path / "o.mp4", "--weights", broken)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert not (tmp_path / "o.mp4").exists() and not (tmp_path / "out.xyz").exists()


def test_sigint_keeps_the_frames_done_playable_beside_the_output(tmp_path, weights):
    src = tmp_path / "long.mp4"
    write_video(src, 1500, (80, 60), 30.0)
    out = tmp_path / "out.mp4"
    args = ["video", str(src), "--out", str(out), "--weights", str(weights), "--size", "96", "--device", "cpu"]
    spy = tmp_path / "spy"
    returncode, stderr = interrupt_rtlrp(args, tmp_path / "out.partial.mp4", min_bytes=4096, env=spy_env(spy))
    assert returncode == 130, stderr
    done = re.search(r"Interrupted by SIGINT: the (\d+) frames done are in (\S+) \(closed and playable\)", stderr)
    assert done and "Traceback" not in stderr, stderr
    assert done.group(2) == str(tmp_path / "out.partial.mp4") and not out.exists()
    written, fps = read_video(tmp_path / "out.partial.mp4")
    assert 0 < len(written) < 1500
    assert len(written) == int(done.group(1)) == spied_count(spy, "rendered") == spied_count(spy, "written"), \
        "every frame explained is in the file, the frames in flight too"
    assert written[0].shape == (60, 80, 3) and fps == pytest.approx(30.0)


def test_sample_video(tmp_path):
    out = tmp_path / "sample.mp4"
    result = run("sample", out, "--size", "64", "--fps", "23.976", "--seconds", "0.5", "--items", "3",
                 "--stills", tmp_path / "items")
    assert result.exit_code == 0, result.output
    frames, fps = read_video(out)
    assert len(frames) == 3 * 12 and frames[0].shape == (64, 64, 3) and fps == pytest.approx(23.976, abs=1e-3)
    assert frames[0].mean() > 5 and not np.array_equal(frames[0], frames[20])  # items, moving
    stills = sorted((tmp_path / "items").glob("*.png"))
    assert [p.name for p in stills] == ["00_t-shirt-top.png", "01_trouser.png", "02_pullover.png"]
    assert cv2.imread(str(stills[0]), cv2.IMREAD_GRAYSCALE).shape == (28, 28)
