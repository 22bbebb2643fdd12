"""Video files through PyAV: codecs, timestamps (VFR too), sound, many files, processes, packaging.

Inputs are real files with real sound, made here with PyAV; every output is read back
with PyAV (codec, pixel format, frame count, per-frame timestamps, audio) and, where the
browser is installed, played by Debian's headless Chromium.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from click.testing import CliRunner
from tiny_data import torchrun_two_cpu_processes

from realtime_lrp.cli import cli
from realtime_lrp.media.writer import VideoWriter, WriterError, resolve_codec

VFR_MS = [0, 33, 66, 150, 200, 400, 433, 466, 700, 1000, 1040, 1300]
AUDIO_SECONDS = 1.5


def make_clip(path: Path, times_ms: list[int] = VFR_MS, size: tuple[int, int] = (64, 48),
              audio_seconds: float | None = AUDIO_SECONDS) -> Path:
    """An H.264 clip whose frames sit at ``times_ms`` (variable rate), with a stereo AAC tone."""
    w, h = size
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=30)
        video.width, video.height, video.pix_fmt = w, h, "yuv420p"
        video.codec_context.time_base = Fraction(1, 1000)
        audio = None
        if audio_seconds:
            audio = container.add_stream("aac", rate=44100)
            audio.layout = "stereo"
        for i, ms in enumerate(times_ms):
            image = np.zeros((h, w, 3), np.uint8)
            image[:, :, 1] = 20 * i % 250
            image[h // 4: h // 2, (5 * i) % (w - 8):(5 * i) % (w - 8) + 8] = 255
            frame = av.VideoFrame.from_ndarray(image, format="bgr24")
            frame.pts, frame.time_base = ms, Fraction(1, 1000)
            container.mux(video.encode(frame))
        container.mux(video.encode())
        if audio is not None:
            t = np.arange(int(44100 * audio_seconds)) / 44100
            tone = np.sin(2 * np.pi * 440 * t).astype(np.float32)
            for start in range(0, len(tone), 1024):
                chunk = tone[start:start + 1024]
                frame = av.AudioFrame.from_ndarray(np.stack([chunk, chunk]), format="fltp", layout="stereo")
                frame.sample_rate, frame.pts = 44100, start
                container.mux(audio.encode(frame))
            container.mux(audio.encode())
    return path


def probe(path: Path) -> dict:
    """What a player sees: video codec, pixel format, size, frame times, audio codec and duration."""
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        info = {"codec": video.codec_context.name, "pix_fmt": video.codec_context.pix_fmt,
                "size": (video.codec_context.width, video.codec_context.height), "tag": video.codec_tag}
        audio = container.streams.audio[0] if container.streams.audio else None
        info["audio"] = None if audio is None else audio.codec_context.name
        times, audio_end = [], 0.0
        for packet in container.demux():
            if packet.pts is None or not packet.size:
                continue
            t = float(packet.pts * packet.time_base)
            if packet.stream.type == "video":
                times.append(t)
            elif packet.duration:
                audio_end = max(audio_end, t + float(packet.duration * packet.time_base))
        info["times"] = sorted(times)
        info["frames"] = len(times)
        info["audio_seconds"] = audio_end
    return info


def video(*args: object):
    result = CliRunner().invoke(cli, ["video", *map(str, args)])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


def test_default_is_browser_h264_with_index_first_timestamps_and_sound(tmp_path: Path, weights: Path) -> None:
    src = make_clip(tmp_path / "phone.mp4")
    out = tmp_path / "out.mp4"
    result = video(src, "--out", out, "--weights", weights, "--device", "cpu")
    assert result.exit_code == 0, result.output
    got, want = probe(out), probe(src)
    assert got["codec"] == "h264" and got["pix_fmt"] == "yuv420p" and got["size"] == (64, 48)
    assert got["frames"] == len(VFR_MS)
    assert got["times"] == pytest.approx([ms / 1000 for ms in VFR_MS], abs=1e-3), "VFR in, VFR out"
    assert got["audio"] == "aac" and got["audio_seconds"] == pytest.approx(want["audio_seconds"], abs=1e-3)
    data = out.read_bytes()
    assert data.index(b"moov") < data.index(b"mdat"), "faststart: the index comes first"


def test_audio_packets_are_copied_unchanged(tmp_path: Path, weights: Path) -> None:
    src = make_clip(tmp_path / "in.mp4")
    out = tmp_path / "out.mkv"
    assert video(src, "--out", out, "--weights", weights, "--device", "cpu").exit_code == 0

    def audio_payloads(path: Path) -> list[bytes]:
        with av.open(str(path)) as container:
            return [bytes(p) for p in container.demux(container.streams.audio[0]) if p.size]

    assert audio_payloads(out) == audio_payloads(src), "remuxed, not re-encoded"


@pytest.mark.parametrize("ext, codec, expect, pix_fmt, audio", [
    (".mp4", "hevc", "hevc", "yuv420p", "aac"),
    (".webm", None, "vp9", "yuv420p", "opus"),
    (".mkv", None, "h264", "yuv420p", "aac"),
    (".mov", None, "h264", "yuv420p", "aac"),
])
def test_codecs_and_containers(tmp_path: Path, weights: Path, ext: str, codec: str | None, expect: str,
                               pix_fmt: str, audio: str) -> None:
    src = make_clip(tmp_path / "in.mp4")
    out = tmp_path / f"out{ext}"
    result = video(src, "--out", out, "--weights", weights, "--device", "cpu", *(["--codec", codec] if codec else []))
    assert result.exit_code == 0, result.output
    got = probe(out)
    assert (got["codec"], got["pix_fmt"], got["frames"], got["audio"]) == (expect, pix_fmt, len(VFR_MS), audio)
    if expect == "hevc":
        assert got["tag"] == "hvc1", "the tag Apple players and browsers need"
    if ext == ".webm":
        assert "re-encoded as libopus" in result.stderr, "WebM cannot take AAC: said, not silent"
    times = [t - got["times"][0] for t in got["times"]]
    assert times == pytest.approx([ms / 1000 for ms in VFR_MS], abs=2e-3)


def test_mjpeg_avi_keeps_odd_sizes_and_h264_pads_them_and_says_so(tmp_path: Path, weights: Path) -> None:
    src = make_clip(tmp_path / "in.mp4", [0, 40, 80, 120], size=(64, 48), audio_seconds=None)
    odd = tmp_path / "odd.avi"
    with VideoWriter(odd, 25, (45, 31)) as writer:
        for i in range(4):
            writer.write(np.full((31, 45, 3), 50 * i, np.uint8))
    assert probe(odd)["size"] == (45, 31) and probe(odd)["codec"] == "mjpeg"
    notices: list[str] = []
    padded = tmp_path / "odd.mp4"
    with VideoWriter(padded, 25, (45, 31), notice=notices.append) as writer:
        for i in range(4):
            writer.write(np.full((31, 45, 3), 50 * i, np.uint8))
    assert probe(padded)["size"] == (46, 32) and probe(padded)["frames"] == 4
    assert len(notices) == 1 and "padded to 46x32" in notices[0]
    out = tmp_path / "side.avi"
    assert video(src, "--out", out, "--weights", weights, "--device", "cpu", "--layout", "side").exit_code == 0
    assert probe(out)["size"] == (128, 48) and probe(out)["frames"] == 4


def test_crf_trades_size_for_quality(tmp_path: Path, weights: Path) -> None:
    src = make_clip(tmp_path / "in.mp4", list(range(0, 2000, 40)), size=(128, 96), audio_seconds=None)
    sizes = {}
    for crf in (14, 40):
        out = tmp_path / f"crf{crf}.mp4"
        assert video(src, "--out", out, "--weights", weights, "--device", "cpu", "--crf", crf).exit_code == 0
        sizes[crf] = out.stat().st_size
    assert sizes[40] < sizes[14] / 2


def test_nvenc_falls_back_to_h264_with_a_notice_without_a_driver(tmp_path: Path, weights: Path) -> None:
    from realtime_lrp.media.writer import _opens

    src = make_clip(tmp_path / "in.mp4", [0, 40, 80], audio_seconds=None)
    out = tmp_path / "out.mp4"
    result = video(src, "--out", out, "--weights", weights, "--device", "cpu", "--codec", "h264_nvenc")
    assert result.exit_code == 0, result.output
    assert probe(out)["codec"] == "h264" and probe(out)["frames"] == 3
    assert ("using h264 instead" in result.stderr) == (not _opens("h264_nvenc"))


def test_codec_and_container_errors_are_one_line(tmp_path: Path, weights: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    src = make_clip(tmp_path / "in.mp4", [0, 40], audio_seconds=None)
    for args, message in (
        (["--out", tmp_path / "o.xyz"], "cannot write '.xyz' video: use one of .mp4"),
        (["--out", tmp_path / "o.avi", "--codec", "vp9"], "vp9 does not go in .avi files: use .webm, .mkv, .mp4"),
        (["--out", tmp_path / "o.avi", "--crf", "20"], "--crf does not apply to mjpeg"),
        (["--out", tmp_path / "o.mp4", "--out-dir", tmp_path / "d"], "give either --out FILE"),
    ):
        result = video(src, *args, "--weights", weights, "--device", "cpu")
        lines = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith(("Usage", "Try"))]
        assert result.exit_code in (1, 2) and len(lines) == 1 and message in lines[0], result.stderr
    monkeypatch.setattr(av, "codecs_available", av.codecs_available - {"libx265"})
    with pytest.raises(WriterError, match="this PyAV build lacks the hevc encoder .*it has h264"):
        resolve_codec("o.mp4", "hevc")
    assert not list(tmp_path.glob("o.*"))


def test_many_videos_resume_and_redo_on_new_settings(tmp_path: Path, weights: Path) -> None:
    inputs = [make_clip(tmp_path / f"clip{i}.mp4", [0, 40, 80, 120 + i * 40], audio_seconds=None) for i in range(3)]
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video")
    out_dir = tmp_path / "out"
    args = [*inputs, broken, "--out-dir", out_dir, "--weights", weights, "--device", "cpu"]
    first = video(*args)
    assert first.exit_code == 1 and "1 of 4 inputs failed" in first.stderr
    assert sorted(p.name for p in out_dir.iterdir()) == ["clip0_lrp.mp4", "clip1_lrp.mp4", "clip2_lrp.mp4"]
    assert [probe(out_dir / f"clip{i}_lrp.mp4")["frames"] for i in range(3)] == [4, 4, 4]
    stamps = {p.name: p.stat().st_mtime_ns for p in out_dir.iterdir()}
    again = video(*args)
    assert again.stdout.count("skipped") == 3 and again.stdout.count("failed") == 1
    assert {p.name: p.stat().st_mtime_ns for p in out_dir.iterdir()} == stamps, "nothing redone"
    changed = video(*inputs[:1], "--out-dir", out_dir, "--weights", weights, "--device", "cpu", "--alpha", "0.3")
    assert changed.exit_code == 0 and "skipped" not in changed.stdout
    assert (out_dir / "clip0_lrp.mp4").stat().st_mtime_ns != stamps["clip0_lrp.mp4"]


def test_two_processes_share_the_videos_under_torchrun(tmp_path: Path, weights: Path) -> None:
    inputs = [make_clip(tmp_path / f"c{i}.mp4", [0, 40, 80], audio_seconds=None) for i in range(3)]
    out_dir = tmp_path / "out"
    proc = torchrun_two_cpu_processes(["-m", "realtime_lrp.cli", "video", *map(str, inputs), "--out-dir",
                                       str(out_dir), "--weights", str(weights), "--device", "cpu"], timeout=300)
    assert sorted(p.name for p in out_dir.iterdir()) == ["c0_lrp.mp4", "c1_lrp.mp4", "c2_lrp.mp4"]
    assert proc.stdout.count("rtlrp video: 3 inputs") == 1, "one summary, from rank 0"
    assert proc.stdout.count(" done ") == 3 and "on 2 processes" in proc.stdout


def test_a_plain_install_carries_the_shipped_model(tmp_path: Path) -> None:
    repo = Path(__file__).resolve().parents[1]
    target = tmp_path / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", "--target",
                              str(target), str(repo)], capture_output=True, text=True, timeout=600)
    if install.returncode != 0 and "setuptools" in install.stderr:
        pytest.skip("pip cannot fetch setuptools for the isolated build here")
    assert install.returncode == 0, install.stderr[-2000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "RTLRP_WEIGHTS_DIR"}
    env["PYTHONPATH"] = str(target)
    code = ("import realtime_lrp, json; from realtime_lrp.models import load_model;"
            " from realtime_lrp.models.cards import shipped_weights;"
            " m, card = load_model('shipped');"
            " print(json.dumps([realtime_lrp.__file__, str(shipped_weights()), card['arch']]))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=elsewhere, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    module, weights_path, arch = json.loads(proc.stdout)
    assert module.startswith(str(target)) and weights_path.startswith(str(target)) and arch == "vgg11_bn"


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(_chromium() is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_headless_chromium_plays_the_output(tmp_path: Path, weights: Path) -> None:
    src = make_clip(tmp_path / "in.mp4")
    out = tmp_path / "out.mp4"
    assert video(src, "--out", out, "--weights", weights, "--device", "cpu").exit_code == 0
    page = tmp_path / "play.html"
    page.write_text(
        "<html><body><video id=v muted src='out.mp4'></video><pre id=r>pending</pre><script>"
        "const v = document.getElementById('v'), r = document.getElementById('r');"
        "v.addEventListener('loadeddata', () => { r.textContent = JSON.stringify("
        "{w: v.videoWidth, h: v.videoHeight, d: v.duration, state: v.readyState}); });"
        "v.addEventListener('error', () => { r.textContent = 'error ' + v.error.code; });"
        "</script></body></html>")
    proc = subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                           "--no-first-run", "--disable-background-networking", "--disable-component-update",
                           "--disable-sync", "--autoplay-policy=no-user-gesture-required",
                           "--allow-file-access-from-files", f"--user-data-dir={tmp_path / 'profile'}",
                           "--virtual-time-budget=10000", "--dump-dom", page.as_uri()],
                          capture_output=True, text=True, timeout=120)
    found = re.search(r"<pre id=\"r\">(.*?)</pre>", proc.stdout)
    assert found, proc.stdout[-2000:] + proc.stderr[-2000:]
    played = json.loads(found.group(1).replace("&quot;", '"'))
    assert (played["w"], played["h"]) == (64, 48) and played["state"] >= 2
    assert played["d"] == pytest.approx(probe(out)["audio_seconds"], abs=0.1)


def _decoded(path: Path) -> list[tuple[float, np.ndarray]]:
    """Each frame of the file's video as (seconds, BGR pixels), in presentation order."""
    with av.open(str(path)) as container:
        return [(float(f.pts * f.time_base), f.to_ndarray(format="bgr24")) for f in container.decode(video=0)]


def test_repeated_or_backward_timestamps_move_just_after_the_last(tmp_path: Path) -> None:
    """Muxers need strictly increasing times: a late frame keeps its place, one tick after the last."""
    path = tmp_path / "vfr.mp4"
    writer = VideoWriter(path, 25, (32, 32), time_base=Fraction(1, 1000))
    for pts in (0, 40, 40, 30, 200):
        writer.write(np.zeros((32, 32, 3), np.uint8), pts)
    assert writer.finish() == path
    times = [t for t, _ in _decoded(path)]
    assert [t - times[0] for t in times] == pytest.approx([0, 0.040, 0.041, 0.042, 0.200], abs=1e-6)


@pytest.mark.parametrize("w, h", [(33, 17), (33, 16), (32, 17)])
def test_odd_sizes_are_padded_with_their_edge_pixels(tmp_path: Path, w: int, h: int) -> None:
    """H.264 needs even sizes: an added row or column repeats the last one, the picture stays put."""
    frame = np.full((h, w, 3), 60, np.uint8)
    frame[0] = 10
    frame[:, w - 1] = 200
    path = tmp_path / "odd.mp4"
    writer = VideoWriter(path, 10, (w, h), crf=0)
    assert writer.file_size == (w + w % 2, h + h % 2)
    writer.write(frame)
    writer.finish()
    [(_, got)] = _decoded(path)
    assert got.shape == (h + h % 2, w + w % 2, 3)
    expected = np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge").astype(int)
    assert np.abs(got.astype(int) - expected).max() <= 6  # lossless H.264; the colour conversion rounds


def test_one_frame_is_a_video_and_no_frame_leaves_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "out.mp4"
    one = VideoWriter(path, 10, (32, 32))
    one.write(np.full((32, 32, 3), 90, np.uint8))
    assert one.finish() == path and len(_decoded(path)) == 1
    before = path.read_bytes()
    none = VideoWriter(path, 10, (32, 32))
    assert none.finish() is None
    assert path.read_bytes() == before and not none.partial.exists()


def test_a_file_short_of_frames_is_refused_and_removed(tmp_path: Path) -> None:
    """finish() counts the frames in the closed file; a shortfall is an error, not a video."""
    path = tmp_path / "out.mp4"
    writer = VideoWriter(path, 10, (32, 32))
    for _ in range(3):
        writer.write(np.zeros((32, 32, 3), np.uint8))
    writer.frames += 1  # as if one frame had been lost on the way to the file
    with pytest.raises(WriterError, match=r"out\.partial\.mp4 holds 3 frames, 4 were written"):
        writer.finish()
    assert not path.exists() and not writer.partial.exists()


def test_wrong_frames_and_writes_after_close_are_refused(tmp_path: Path) -> None:
    writer = VideoWriter(tmp_path / "out.mp4", 10, (32, 24))
    with pytest.raises(WriterError, match=r"frame of shape \(24, 32\) uint8 does not match the video's 32x24 BGR uint8"):
        writer.write(np.zeros((24, 32), np.uint8))
    with pytest.raises(WriterError, match="does not match"):
        writer.write(np.zeros((24, 32, 3), np.float32))
    writer.write(np.zeros((24, 32, 3), np.uint8))
    writer.finish()
    with pytest.raises(WriterError, match=r"out\.mp4 is already closed"):
        writer.write(np.zeros((24, 32, 3), np.uint8))


def test_frames_reach_the_disk_as_they_are_encoded(tmp_path: Path) -> None:
    """flush_packets: the partial file grows frame by frame, so a killed run's file holds its frames."""
    writer = VideoWriter(tmp_path / "out.mp4", 25, (64, 64))
    sizes = []
    for i in range(80):
        writer.write(np.full((64, 64, 3), 2 * i, np.uint8))
        sizes.append(writer.partial.stat().st_size if writer.partial.exists() else 0)
    assert sizes[79] > sizes[60] > sizes[40] > 0
    writer.discard()


def test_the_encoder_probe(tmp_path: Path) -> None:
    from realtime_lrp.media.writer import _opens

    assert _opens("libx264") and not _opens("no_such_encoder")


def _two_tone_clip(path: Path) -> Path:
    """A short H.264 clip with two AAC streams: 1.0 s at 440 Hz and 1.5 s at 660 Hz."""
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=10)
        video.width, video.height, video.pix_fmt = 32, 32, "yuv420p"
        tracks = []
        for seconds, hz in ((1.0, 440), (1.5, 660)):
            audio = container.add_stream("aac", rate=44100)
            audio.layout = "mono"
            tracks.append((audio, seconds, hz))
        for i in range(10):
            container.mux(video.encode(av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), format="bgr24")))
        container.mux(video.encode())
        for audio, seconds, hz in tracks:
            tone = np.sin(2 * np.pi * hz * np.arange(int(44100 * seconds)) / 44100).astype(np.float32)
            for start in range(0, len(tone), 1024):
                frame = av.AudioFrame.from_ndarray(tone[None, start:start + 1024], format="fltp", layout="mono")
                frame.sample_rate, frame.pts = 44100, start
                container.mux(audio.encode(frame))
            container.mux(audio.encode())
    return path


def _audio_ends(path: Path) -> list[float]:
    """Where each audio stream of the file ends, in seconds."""
    with av.open(str(path)) as container:
        ends = {s.index: 0.0 for s in container.streams.audio}
        for packet in container.demux(*container.streams.audio):
            if packet.pts is not None and packet.duration:
                ends[packet.stream.index] = max(ends[packet.stream.index],
                                                float((packet.pts + packet.duration) * packet.time_base))
        return [ends[i] for i in sorted(ends)]


@pytest.mark.parametrize("ext, codec, rate", [(".mkv", "aac", 44100), (".webm", "opus", 48000)])
def test_every_audio_stream_is_kept(tmp_path: Path, ext: str, codec: str, rate: int) -> None:
    """Both of two audio streams reach the output: copied where the container takes them, else re-encoded."""
    src = _two_tone_clip(tmp_path / "two.mp4")
    notes: list[str] = []
    path = tmp_path / f"out{ext}"
    writer = VideoWriter(path, 10, (32, 32), audio_from=src, notice=notes.append)
    for _ in range(10):
        writer.write(np.zeros((32, 32, 3), np.uint8))
    writer.finish()
    with av.open(str(path)) as container:
        got = [(s.codec_context.name, s.rate, s.layout.name) for s in container.streams.audio]
    assert got == [(codec, rate, "mono")] * 2
    assert _audio_ends(path) == [pytest.approx(1.0, abs=0.05), pytest.approx(1.5, abs=0.05)]
    copied = ext == ".mkv"
    assert notes == ([] if copied else [f"audio stream {i} (aac) cannot be copied into webm files: re-encoded as libopus"
                                        for i in (0, 1)])


def test_an_interrupted_run_keeps_the_audio_of_the_frames_done(tmp_path: Path) -> None:
    """keep_partial: the sound stops with the last frame written (one frame's time after it), not at the source's end."""
    src = make_clip(tmp_path / "in.mp4")
    writer = VideoWriter(tmp_path / "out.mp4", 10, (32, 32), audio_from=src)
    for _ in range(5):
        writer.write(np.zeros((32, 32, 3), np.uint8))
    partial = writer.keep_partial()
    assert partial == writer.partial and probe(partial)["frames"] == 5
    assert 0.45 <= _audio_ends(partial)[0] <= 0.65 < AUDIO_SECONDS


def test_a_full_disk_is_one_clear_error_and_the_old_file_stays(tmp_path: Path) -> None:
    """A real file-size limit (RLIMIT_FSIZE, writes fail with EFBIG) in this process, for the writer alone."""
    resource = pytest.importorskip("resource")
    path = tmp_path / "out.mp4"
    path.write_bytes(b"the previous video")
    writer = VideoWriter(path, 25, (64, 64), crf=0)  # lossless noise: large packets
    rng = np.random.default_rng(0)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, hard))
    try:
        with pytest.raises(WriterError) as caught:
            for _ in range(200):
                writer.write(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
            writer.finish()
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)
    assert str(caught.value) == f"cannot write {path}: File too large"
    writer.discard()
    assert path.read_bytes() == b"the previous video" and not writer.partial.exists()
    with pytest.raises(WriterError, match="already closed"):
        writer.write(np.zeros((64, 64, 3), np.uint8))


def test_frame_rates_are_checked_and_kept_exact(tmp_path: Path) -> None:
    for bad in (0, -5, float("nan"), float("inf")):
        with pytest.raises(WriterError, match=r"^invalid frame rate"):
            VideoWriter(tmp_path / "out.mp4", bad, (32, 32))
    assert VideoWriter(tmp_path / "out.mp4", 0.5, (32, 32)).rate == Fraction(1, 2)
    ntsc = VideoWriter(tmp_path / "out.mp4", Fraction(30000, 1001), (32, 32))
    assert ntsc.rate == Fraction(30000, 1001) and ntsc.fps == pytest.approx(29.97003)
    assert VideoWriter(tmp_path / "out.mp4", 29.97, (32, 32)).rate == Fraction(2997, 100)


def test_colours_survive_the_round_trip(tmp_path: Path) -> None:
    """Frames are BGR in and BGR out: a blue, a green and a red band stay where they were."""
    frame = np.zeros((32, 48, 3), np.uint8)
    frame[:, :16, 0] = frame[:, 16:32, 1] = frame[:, 32:, 2] = 200
    path = tmp_path / "bands.mp4"
    writer = VideoWriter(path, 10, (48, 32), crf=0)
    writer.write(frame)
    writer.finish()
    [(_, got)] = _decoded(path)
    for band, channel in ((slice(2, 14), 0), (slice(18, 30), 1), (slice(34, 46), 2)):
        means = got[4:28, band].reshape(-1, 3).mean(0)
        assert means[channel] > 150 and np.delete(means, channel).max() < 60, (channel, means)


def test_unknown_extensions_and_codecs_name_the_choices() -> None:
    with pytest.raises(WriterError, match=r"^cannot write 'a file without extension' video: use one of "
                                          r"\.mp4, \.m4v, \.mov, \.mkv, \.webm, \.avi$"):
        resolve_codec("noext")
    with pytest.raises(WriterError, match=r"^unknown codec 'theora9': this build has h264(, \w+)*, vp9"):
        resolve_codec("o.mp4", "theora9")


def test_nvenc_probe_opens_at_the_outputs_size_and_names_the_cause(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The probe opens NVENC at the file's own (even) size, not a tiny one NVENC refuses, and the
    fallback notice carries the encoder's own reason."""
    from realtime_lrp.media import writer

    calls: list[tuple[str, tuple[int, int]]] = []

    def refuse(encoder: str, size: tuple[int, int]) -> str:
        calls.append((encoder, size))
        return "No capable devices found"

    monkeypatch.setattr(writer, "open_failure", refuse)
    notes: list[str] = []
    out = tmp_path / "out.mp4"
    with writer.VideoWriter(out, 25.0, (97, 75), codec="h264_nvenc", notice=notes.append) as w:
        w.write(np.zeros((75, 97, 3), np.uint8))
    assert calls == [("h264_nvenc", (98, 76))]
    assert any("h264_nvenc cannot encode 98x76 here (No capable devices found): using h264 instead" in n for n in notes)
    assert probe(out)["codec"] == "h264"
