"""Faults a user can cause: planted cache files, signals, full disks, bad options, truncated input.

Each class of fault is tested through the real command in a subprocess, with real files,
real signals and a real file-size limit (``RLIMIT_FSIZE``, which makes writes fail with
EFBIG as a full disk does, without root).
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import subprocess
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from media import frame_count, interrupt_rtlrp, read_video, rtlrp_command, run_rtlrp, write_video
from tiny_data import make_imagefolder

from realtime_lrp.media.writer import VideoWriter
from realtime_lrp.models import imagenet as imagenet_module
from realtime_lrp.models.cards import SHIPPED_NAME
from realtime_lrp.models.imagenet import ImagenetUnavailable, _imagenet_weights, imagenet_cache_file, load_imagenet
from realtime_lrp.models.loading import load_model

SHIPPED_NAME = SHIPPED_NAME


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("clips") / "long.mp4"
    write_video(path, 1500, (80, 60), 30.0)
    return path


def one_line(stderr: str) -> str:
    """The single non-empty line of ``stderr`` (fails if there are several or a traceback)."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def error_line(stderr: str) -> str:
    """The one error line of ``stderr``, its last line (notices and the progress bar may come before it;
    fails on a traceback or a second error line)."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(("Error:", "rtlrp "))]
    assert "Traceback" not in stderr and errors == lines[-1:], stderr
    return lines[-1]


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- 1. planted files in the torch cache --------------------------------------------------

class _Payload:
    """Unpickling this creates the marker file: proof that code from the file ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def plant(torch_home: Path, name: str, marker: Path) -> Path:
    path = torch_home / "hub" / "checkpoints" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"features.0.weight": _Payload(marker)}, path)
    return path


@pytest.mark.parametrize("choice", ["auto", "imagenet"])
def test_planted_cache_file_never_runs(tmp_path: Path, choice: str) -> None:
    marker = tmp_path / "pwned"
    plant(tmp_path / "torch", "vgg16-397923af.pth", marker)
    image = tmp_path / "item.png"
    import cv2

    cv2.imwrite(str(image), np.full((28, 28), 128, np.uint8))
    env = {**os.environ, "TORCH_HOME": str(tmp_path / "torch")}
    proc = run_rtlrp(["explain", image, "--out", tmp_path / "out", "--weights", choice, "--device", "cpu"], env=env)
    assert not marker.exists(), "code from the planted file ran"
    if choice == "auto":
        assert proc.returncode == 0, proc.stderr
        assert "the cached file was rejected" in proc.stderr and "shipped" in proc.stderr
    else:
        line = one_line(proc.stderr)
        assert proc.returncode == 1
        assert "does not match the SHA-256 prefix 397923af" in line and "delete it" in line


def test_planted_file_with_a_matching_hash_is_still_not_unpickled(monkeypatch: pytest.MonkeyPatch,
                                                                  tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    staging = plant(tmp_path / "stage", "x.pth", marker)
    name = f"vgg16-{sha(staging)[:8]}.pth"  # a name whose hash prefix the file does match
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    real = _imagenet_weights("vgg16")
    fake = types.SimpleNamespace(url=f"https://example.invalid/{name}", meta=real.meta)
    monkeypatch.setattr(imagenet_module, "_imagenet_weights", lambda arch: fake)
    cached = imagenet_cache_file("vgg16")
    cached.parent.mkdir(parents=True)
    shutil.copy(staging, cached)
    with pytest.raises(ImagenetUnavailable, match="cannot load cached ImageNet weights") as info:
        load_imagenet("vgg16")
    assert info.value.why == "the cached file was rejected"
    assert not marker.exists()


@pytest.mark.parametrize("failure, why", [
    ("offline", "not cached and offline"),
    ("http", "not cached and the download failed (HTTP 404)"),
])
def test_auto_says_why_it_fell_back(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, failure: str,
                                    why: str) -> None:
    import socket
    import urllib.error
    import urllib.request

    def urlopen(url: str, timeout: float = 0):
        if failure == "http":
            raise urllib.error.HTTPError(url, 404, "Not Found", {}, None)
        raise urllib.error.URLError(socket.gaierror(-3, "Temporary failure in name resolution"))

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    notices: list[str] = []
    _, card = load_model("auto", notify=notices.append)
    assert card["arch"] == "vgg11_bn" and len(notices) == 1
    assert notices[0].endswith(f"ImageNet vgg16 {why}")
    assert not list((tmp_path / "torch").rglob("*.pth")), "nothing half-downloaded is left in the cache"


# -- 2. signals: outputs are never destroyed, what was done is kept and said ----------------

@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_signal_keeps_the_previous_output_and_the_frames_done(tmp_path: Path, weights: Path, long_clip: Path,
                                                              sig: int) -> None:
    out = tmp_path / "out.mp4"
    out.write_bytes(b"the previous, good output")
    args = ["video", long_clip, "--out", out, "--weights", weights, "--size", "96", "--device", "cpu"]
    partial = tmp_path / "out.partial.mp4"
    returncode, stderr = interrupt_rtlrp(args, partial, sig=sig, min_bytes=4096)
    name = signal.Signals(sig).name
    assert returncode == 128 + sig, stderr
    done = re.search(rf"Interrupted by {name}: the (\d+) frames done are in (\S+) \(closed and playable\);"
                     rf" (\S+) was left as it was", stderr)
    assert done and "Traceback" not in stderr, stderr
    assert out.read_bytes() == b"the previous, good output"
    assert Path(done.group(2)) == partial and frame_count(partial) == int(done.group(1)) > 0


def test_more_ctrl_c_during_clean_up_and_exit_change_nothing(tmp_path: Path, weights: Path, long_clip: Path) -> None:
    out = tmp_path / "out.mp4"
    args = ["video", long_clip, "--out", out, "--weights", weights, "--size", "96", "--device", "cpu"]
    partial = tmp_path / "out.partial.mp4"
    returncode, stderr = interrupt_rtlrp(args, partial, min_bytes=4096,
                                         again_after=(0.005, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.8))
    assert returncode == 130, stderr
    assert "Traceback" not in stderr and "Aborted" not in stderr
    done = re.search(r"the (\d+) frames done are in", stderr)
    assert done and frame_count(partial) == int(done.group(1)) > 0 and not out.exists()


def test_kill_9_leaves_the_previous_output_and_a_named_partial_file(tmp_path: Path, weights: Path,
                                                                    long_clip: Path) -> None:
    out = tmp_path / "out.mp4"
    out.write_bytes(b"the previous, good output")
    args = ["video", long_clip, "--out", out, "--weights", weights, "--size", "96", "--device", "cpu"]
    returncode, _ = interrupt_rtlrp(args, tmp_path / "out.partial.mp4", sig=signal.SIGKILL, min_bytes=4096)
    assert returncode == -signal.SIGKILL
    assert out.read_bytes() == b"the previous, good output"
    assert [p.name for p in tmp_path.iterdir() if p != out] == ["out.partial.mp4"]


def test_ctrl_c_during_start_up_is_one_line_and_exit_130(tmp_path: Path, long_clip: Path) -> None:
    env = {**os.environ, "TORCH_HOME": str(tmp_path / "torch")}
    plant(tmp_path / "torch", "vgg16-397923af.pth", tmp_path / "pwned")  # auto rejects it, no download
    out = tmp_path / "out.mp4"
    args = ["video", long_clip, "--out", out, "--weights", "auto", "--device", "cpu"]
    returncode, stderr = interrupt_rtlrp(args, out, env=env, wait_line="weights: auto")
    assert returncode == 130, stderr
    assert "Traceback" not in stderr and "Aborted" not in stderr and "SIGINT" in stderr
    assert not out.exists()


# -- 3. write failures are failures ----------------------------------------------------------

def test_full_disk_during_video_is_one_line_and_no_broken_file(tmp_path: Path, weights: Path) -> None:
    src = tmp_path / "in.mp4"
    write_video(src, 300, (160, 120), 25.0)
    out = tmp_path / "out.mp4"
    out.write_bytes(b"the previous, good output")
    proc = run_rtlrp(["video", src, "--out", out, "--weights", weights, "--device", "cpu", "--crf", "0"],
                     file_limit=60_000)
    assert proc.returncode == 1
    line = error_line(proc.stderr)
    assert "File too large" in line and "Wrote" not in proc.stderr
    assert out.read_bytes() == b"the previous, good output"
    assert not (tmp_path / "out.partial.mp4").exists()


def test_full_disk_during_a_recording_is_not_called_playable(tmp_path: Path, weights: Path) -> None:
    src = tmp_path / "in.mp4"
    write_video(src, 120, (160, 120), 30.0)
    out = tmp_path / "rec.mp4"
    env = {k: v for k, v in os.environ.items() if k != "DISPLAY"}
    proc = run_rtlrp(["webcam", "--camera", src, "--weights", weights, "--device", "cpu",
                      "--no-window", "--record", out, "--crf", "0"], env=env, file_limit=30_000)
    assert proc.returncode == 1, proc.stderr
    assert "File too large" in proc.stderr and "Recorded" not in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists() and not (tmp_path / "rec.partial.mp4").exists()


def test_full_disk_for_pngs_and_json(tmp_path: Path, weights: Path) -> None:
    import cv2

    image = tmp_path / "noise.png"
    cv2.imwrite(str(image), (np.random.default_rng(0).random((300, 300, 3)) * 255).astype(np.uint8))
    proc = run_rtlrp(["explain", image, "--out", tmp_path / "pngs", "--weights", weights, "--device", "cpu"],
                     file_limit=200_000)
    assert proc.returncode == 1 and "File too large" in error_line(proc.stderr)
    assert not list((tmp_path / "pngs").glob("*")), "no PNG, whole or partial, is left"


# -- 4. one line, never a traceback ----------------------------------------------------------

def _read_only(folder: Path) -> list[str] | None:
    """A command prefix that runs with ``folder`` mounted read-only (a user namespace), or None."""
    probe = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                            f"mount --bind -o ro {folder} {folder} && ! touch {folder}/x"],
                           capture_output=True)
    if probe.returncode != 0:
        return None
    return ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
            f'mount --bind -o ro {folder} {folder} && exec "$0" "$@"']


def test_read_only_filesystem_is_one_line_for_every_output(tmp_path: Path, weights: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    prefix = _read_only(ro)
    if prefix is None:
        pytest.skip("user namespaces are not available to mount a read-only folder")
    import cv2

    src = tmp_path / "in.mp4"
    write_video(src, 5, (64, 48), 10.0)
    image = tmp_path / "i.png"
    cv2.imwrite(str(image), np.zeros((32, 32, 3), np.uint8))
    ckpt = tmp_path / "run"
    data = make_imagefolder(tmp_path / "data")
    train = subprocess.run([*rtlrp_command(), "train", "--dataset", f"imagefolder:{data}", "--input-size", "32",
                            "--width", "0.0625",
                            "--hidden", "16", "--max-steps", "1", "--batch-size", "8", "--device", "cpu",
                            "--workers", "0", "--out", str(ckpt)], capture_output=True, text=True)
    assert train.returncode == 0, train.stderr
    commands = {
        "video": ["video", src, "--out", ro / "o.mp4", "--weights", weights, "--device", "cpu"],
        "explain": ["explain", image, "--out", ro / "pngs", "--weights", weights, "--device", "cpu"],
        "bench": ["bench", "--device", "cpu", "--sizes", "32", "--json", ro / "b.json", "--no-zennit"],
        "sample": ["sample", ro / "s.mp4"],
        "export": ["export", ckpt, "--out", ro / "m.pt", "--no-measure"],
    }
    for name, args in commands.items():
        proc = subprocess.run([*prefix, *rtlrp_command(), *map(str, args)], capture_output=True, text=True)
        line = one_line(proc.stderr)
        assert proc.returncode == 1 and "Read-only file system" in line, (name, proc.stderr)
    assert not list(ro.iterdir())


def test_sizes_the_model_cannot_take(tmp_path: Path, weights: Path) -> None:
    image = tmp_path / "i.png"
    import cv2

    cv2.imwrite(str(image), np.zeros((32, 32, 3), np.uint8))
    for size, message in (("16", "size 16x16 is too small for vgg11_bn: it needs at least 32x32"),
                          ("31x40", "size 31x40 is too small for vgg11_bn: it needs at least 32x32"),
                          ("100000", "size 100000x100000 is too large")):
        proc = run_rtlrp(["explain", image, "--out", tmp_path / "o", "--weights", weights, "--size", size,
                          "--device", "cpu"])
        assert proc.returncode == 1 and message in one_line(proc.stderr)


def test_nan_and_raw_pickle_weights(tmp_path: Path, weights: Path) -> None:
    import cv2

    image = tmp_path / "i.png"
    cv2.imwrite(str(image), np.zeros((32, 32, 3), np.uint8))
    state = torch.load(weights, weights_only=True)
    nan = tmp_path / "nan.pt"
    torch.save({k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in state.items()}, nan)
    proc = run_rtlrp(["explain", image, "--out", tmp_path / "o", "--weights", nan, "--device", "cpu"])
    assert proc.returncode == 1 and "holds NaN or infinite values" in one_line(proc.stderr)
    raw = tmp_path / "raw.pt"
    torch.save({"features.0.weight": torch.zeros(2)}, raw, _use_new_zipfile_serialization=False)
    proc = run_rtlrp(["explain", image, "--out", tmp_path / "o", "--weights", raw, "--device", "cpu"])
    assert proc.returncode == 1 and "Warning" not in proc.stderr
    one_line(proc.stderr)


def test_unexpected_errors_are_one_line_and_debug_shows_the_traceback(monkeypatch: pytest.MonkeyPatch,
                                                                      capsys: pytest.CaptureFixture) -> None:
    from realtime_lrp.cli import info
    from realtime_lrp.cli.main import main
    from realtime_lrp.lrp import presets

    class Exploding:
        """A preset description that fails when printed: an error no command expects."""

        def __format__(self, spec: str) -> str:
            raise RuntimeError("something deep went wrong\nwith a second line")

    monkeypatch.setitem(presets.PRESETS, "broken", types.SimpleNamespace(description=Exploding(), reference=""))
    monkeypatch.setattr(info, "PRESET_NAMES", ("broken",))
    with pytest.raises(SystemExit) as ended:
        main(["presets"])
    assert ended.value.code == 1
    line = one_line(capsys.readouterr().err)
    assert line == "rtlrp presets: RuntimeError: something deep went wrong (--debug shows the traceback)"
    with pytest.raises(RuntimeError, match="something deep went wrong"):
        main(["--debug", "presets"])


# -- 5. the output is the input under another name -------------------------------------------

def test_hard_link_to_the_input_is_refused(tmp_path: Path, weights: Path) -> None:
    src = tmp_path / "in.mp4"
    write_video(src, 5, (64, 48), 10.0)
    before = sha(src)
    link = tmp_path / "link.mp4"
    os.link(src, link)
    proc = run_rtlrp(["video", src, "--out", link, "--weights", weights, "--device", "cpu"])
    assert proc.returncode == 1 and "is the input file itself" in one_line(proc.stderr)
    assert sha(src) == before


# -- 6. training ------------------------------------------------------------------------------

TINY = ["--arch", "vgg11_bn", "--width", "0.0625", "--hidden", "16", "--pool", "1", "--input-size", "32",
        "--batch-size", "4", "--workers", "0", "--device", "cpu"]


def test_training_finds_an_unwritable_out_before_the_first_step(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    proc = run_rtlrp(["train", *TINY, "--out", blocker / "run"])
    assert proc.returncode == 1 and f"{blocker} is not a folder" in one_line(proc.stderr)


def test_sigterm_during_training_writes_a_checkpoint(tmp_path: Path) -> None:
    from realtime_lrp.apps.train.loop import load_checkpoint

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    data = make_imagefolder(tmp_path / "data")
    args = ["train", *TINY, "--dataset", f"imagefolder:{data}", "--epochs", "1000", "--out", tmp_path]
    returncode, stderr = interrupt_rtlrp(args, tmp_path, env=env, sig=signal.SIGTERM, wait_line="rtlrp train")
    assert returncode == 143, stderr
    assert "interrupted by SIGTERM; checkpoint written to" in stderr and "Traceback" not in stderr
    step = load_checkpoint(tmp_path)["step"]
    proc = run_rtlrp(["train", "--resume", tmp_path, "--max-steps", step + 2], env=env)
    assert proc.returncode == 0, proc.stderr
    assert load_checkpoint(tmp_path)["step"] == step + 2


def test_resume_refuses_changed_settings_and_unfit_checkpoints(tmp_path: Path) -> None:
    from realtime_lrp.apps.train.loop import load_checkpoint

    data = make_imagefolder(tmp_path / "data")
    proc = run_rtlrp(["train", *TINY, "--dataset", f"imagefolder:{data}", "--max-steps", "2", "--out", tmp_path])
    assert proc.returncode == 0, proc.stderr
    proc = run_rtlrp(["train", "--resume", tmp_path, "--epochs", "20"])
    line = one_line(proc.stderr)
    assert proc.returncode == 1 and "--epochs 20 differs from the checkpoint's 12" in line
    ckpt = load_checkpoint(tmp_path)
    ckpt["args"]["width"] = 0.125  # an edited checkpoint: the weights no longer fit
    torch.save(ckpt, tmp_path / "edited.pt")
    proc = run_rtlrp(["train", "--resume", tmp_path / "edited.pt", "--max-steps", "3"])
    line = one_line(proc.stderr)
    assert proc.returncode == 1 and "does not fit the model and settings it records (size mismatch for" in line
    del ckpt["optimizer"]
    ckpt["args"]["width"] = 0.0625
    torch.save(ckpt, tmp_path / "no_optimizer.pt")
    proc = run_rtlrp(["train", "--resume", tmp_path / "no_optimizer.pt", "--max-steps", "3"])
    assert proc.returncode == 1 and "missing 'optimizer'" in one_line(proc.stderr)


# -- 7. truncated input ------------------------------------------------------------------------

def test_truncated_input_keeps_what_was_explained_and_exits_3(tmp_path: Path, weights: Path) -> None:
    full = tmp_path / "full.mp4"
    rng = np.random.default_rng(1)
    with VideoWriter(full, 25, (64, 48)) as writer:
        for _ in range(60):
            writer.write((rng.random((48, 64, 3)) * 255).astype(np.uint8))
    data = full.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: int(len(data) * 0.6)])
    out = tmp_path / "out.mp4"
    proc = run_rtlrp(["video", cut, "--out", out, "--weights", weights, "--device", "cpu"])
    assert proc.returncode == 3, proc.stderr
    said = re.search(r"ended after (\d+) of the 60 frames its header announces \((\d+) missing", proc.stderr)
    assert said, proc.stderr
    kept = int(said.group(1))
    assert 0 < kept < 60 and int(said.group(2)) == 60 - kept
    assert frame_count(out) == kept and len(read_video(out)[0]) == kept
