"""What servers, phones and shared machines do to a run: ignored signals, power loss, odd inputs.

Each case runs the real command or the real reader and writer on real files: a ``nohup``
start and a real SIGHUP, a directory fsync seen through a recording ``os.fsync``, clips
made with PyAV that rotate, lack timestamps, carry edit lists or change size mid-stream.
"""
from __future__ import annotations

import os
import signal
import stat
import subprocess
import time
from pathlib import Path

import pytest
from media import frame_count, model_file, rtlrp_command, write_video


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return model_file(tmp_path_factory.mktemp("model"))


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
    import numpy as np

    from realtime_lrp.apps.evaluate.report import write_json
    from realtime_lrp.media.writer import VideoWriter
    from realtime_lrp.util import atomic

    log = SyncLog(monkeypatch)
    atomic.write_text(tmp_path / "a" / "settings.json", "{}")
    assert log.folder_synced_after_replace(tmp_path / "a" / "settings.json"), log.events
    atomic.write_with(tmp_path / "b" / "model.pt", lambda p: p.write_bytes(b"weights"))
    assert log.folder_synced_after_replace(tmp_path / "b" / "model.pt"), log.events
    write_json(tmp_path / "c" / "report.json", {"rows": []})
    assert log.folder_synced_after_replace(tmp_path / "c" / "report.json"), log.events
    with VideoWriter(tmp_path / "d" / "out.mp4", 25, (32, 24)) as writer:
        for i in range(3):
            writer.write(np.full((24, 32, 3), 40 * i, np.uint8))
    assert log.folder_synced_after_replace(tmp_path / "d" / "out.mp4"), log.events
