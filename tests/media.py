"""Helpers for the video, render and explain tests: tiny models and real video files."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from realtime_lrp.models.architectures import build_vgg

CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
           "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def tiny_card(channels: int = 1, size: int = 32) -> dict:
    """A model card for :func:`tiny_model` (Fashion-MNIST-like: 10 classes)."""
    return {
        "arch": "vgg11_bn", "width": 1 / 16, "hidden": 16, "pool": 1, "num_classes": 10,
        "classes": list(CLASSES), "input_size": [size, size], "input_channels": channels,
        "mean": [0.3] * channels, "std": [0.35] * channels, "dataset": "test",
        "test_accuracy": None, "command": None, "sha256": None, "format": "realtime_lrp-v1",
    }


def tiny_model(channels: int = 1, seed: int = 0) -> torch.nn.Module:
    """A random VGG11-BN at 1/16 width: fast enough for many frames on a busy CPU."""
    torch.manual_seed(seed)
    return build_vgg("vgg11_bn", 10, channels, width=1 / 16, hidden=16, pool=1).eval()


def model_file(folder: Path, channels: int = 1, size: int = 32, seed: int = 0) -> Path:
    """Save :func:`tiny_model` with its card beside it, the way exported models are stored."""
    path = folder / "tiny.pt"
    torch.save(tiny_model(channels, seed).state_dict(), path)
    card = tiny_card(channels, size)
    card["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    path.with_suffix(".json").write_text(json.dumps(card))
    return path


def frame_for(index: int, size: tuple[int, int]) -> np.ndarray:
    """A distinct BGR frame per index: a bright block moving across a gradient."""
    w, h = size
    frame = np.zeros((h, w, 3), np.uint8)
    frame[:, :, 0] = np.linspace(0, 120, w, dtype=np.uint8)[None, :]
    frame[:, :, 1] = (index * 37) % 200
    x = (index * 5) % max(1, w - 12)
    frame[h // 4: h // 4 + 12, x:x + 12] = 255
    return frame


def write_video(path: Path, count: int, size: tuple[int, int], fps: float,
                fourcc: str = "mp4v", api: int = cv2.CAP_FFMPEG) -> list[np.ndarray]:
    """Write ``count`` distinct frames with OpenCV; returns the frames written."""
    writer = cv2.VideoWriter(str(path), api, cv2.VideoWriter_fourcc(*fourcc), fps, size)
    assert writer.isOpened(), f"OpenCV cannot write {path}"
    frames = [frame_for(i, size) for i in range(count)]
    for frame in frames:
        writer.write(frame)
    writer.release()
    return frames


def read_video(path: Path) -> tuple[list[np.ndarray], float]:
    """All frames of a video and its fps, read back with OpenCV."""
    cap = cv2.VideoCapture(str(path))
    assert cap.isOpened(), f"OpenCV cannot open {path}"
    fps = cap.get(cv2.CAP_PROP_FPS)
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    return frames, fps


def rtlrp_command() -> list[str]:
    """How to start the installed ``rtlrp`` (the console script beside this Python, else ``-m``)."""
    rtlrp = Path(sys.executable).with_name("rtlrp")
    return [str(rtlrp)] if rtlrp.exists() else [sys.executable, "-m", "realtime_lrp.cli"]


def _limit_file_size(limit: int):
    """A ``preexec_fn`` making writes past ``limit`` bytes fail with EFBIG, as on a full disk."""
    def apply() -> None:
        import resource

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def run_rtlrp(args: list[str], env: dict | None = None, file_limit: int | None = None,
              timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``rtlrp ARGS`` to the end in a subprocess (optionally under a file-size limit)."""
    return subprocess.run([*rtlrp_command(), *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=timeout, preexec_fn=_limit_file_size(file_limit) if file_limit else None)


def interrupt_rtlrp(args: list[str], watch: Path, env: dict | None = None, sig: int = signal.SIGINT,
                    min_bytes: int = 1, again_after: tuple[float, ...] = (),
                    wait_line: str | None = None) -> tuple[int, str]:
    """Run ``rtlrp ARGS``, send ``sig`` once ``watch`` holds ``min_bytes`` (or stderr shows
    ``wait_line``); ``again_after`` sends it again at those seconds after the first, while
    the process lives. Returns the exit code and stderr."""
    proc = subprocess.Popen([*rtlrp_command(), *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 120
        if wait_line is not None:
            seen = ""
            while wait_line not in seen and time.monotonic() < deadline:
                line = proc.stderr.readline()
                if not line:
                    break
                seen += line
        else:
            seen = ""
            while proc.poll() is None and time.monotonic() < deadline:
                if watch.exists() and watch.stat().st_size >= min_bytes:
                    break
                time.sleep(0.02)
        assert proc.poll() is None, "the run ended before it could be interrupted"
        proc.send_signal(sig)
        sent = time.monotonic()
        for delay in again_after:
            time.sleep(max(0.0, sent + delay - time.monotonic()))
            if proc.poll() is None:
                proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, seen + stderr


def frame_count(path: Path) -> int:
    """Frames in a video file, counted independently of the project's code (OpenCV decodes them all)."""
    return len(read_video(path)[0])


SPY = Path(__file__).parent / "spy"


def spy_env(folder: Path, env: dict | None = None) -> dict:
    """``env`` (default: this process's) for an ``rtlrp`` subprocess that records in ``folder`` the
    frames it rendered, wrote and showed the live recorder (tests/spy/sitecustomize.py)."""
    folder.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SPY), env.get("PYTHONPATH")) if p)
    env["RTLRP_TEST_SPY"] = str(folder)
    return env


def spied_count(folder: Path, name: str) -> int:
    """How many frames the spied run logged under ``name`` (``rendered`` or ``written``)."""
    log = folder / name
    return len(log.read_text().splitlines()) if log.exists() else 0


def ends_with_last_shown(frames: list[np.ndarray], last: np.ndarray, previous: np.ndarray | None) -> bool:
    """Whether a recording's last frame is ``last``, the last frame shown: closer to it than to
    ``previous``, the frame shown before it (lossy codecs move pixels, so not equal), or within
    16 grey levels of it where nothing was shown before."""
    h, w = last.shape[:2]
    end = frames[-1][:h, :w].astype(int)  # .mp4 pads odd sizes
    near = np.abs(end - last).mean()
    return near < (16 if previous is None else np.abs(end - previous).mean())
