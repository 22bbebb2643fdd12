"""A tiny two-class ``imagefolder`` dataset, tiny VGG settings and two-process ``torchrun`` runs for fast CPU tests."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np

TINY = ["--arch", "vgg11_bn", "--width", "0.0625", "--hidden", "16", "--pool", "1",
        "--input-size", "32", "--batch-size", "4", "--workers", "0", "--device", "cpu"]


def make_imagefolder(root: Path, train: int = 8, val: int = 4, seed: int = 0) -> Path:
    """Write ``root/{train,val}/{dark,bright}/*.png`` (20x24 BGR images) and return ``root``."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", train), ("val", val)):
        for label, name in enumerate(("bright", "dark")):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                base = 60 if label else 190
                image = np.clip(base + rng.normal(0, 25, (20, 24, 3)), 0, 255).astype(np.uint8)
                assert cv2.imwrite(str(folder / f"{i:03d}.png"), image)
    return root


def torchrun_two_cpu_processes(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    """``torchrun`` with 2 CPU processes (gloo, one thread each) running ``args`` (a script, or
    ``-m`` and a module with its arguments), ``tests/`` on the path; it must succeed."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    path = os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def train_ddp_two_cpu_processes(folder: Path, out: Path, model_args: list[str], timeout: float) -> list[dict]:
    """``rtlrp train`` for 2 epochs under ``torchrun`` with 2 CPU processes (gloo) on ``folder``;
    the run's metrics lines. The run must succeed."""
    torchrun_two_cpu_processes(["-m", "realtime_lrp.cli", "train", "--dataset", f"imagefolder:{folder}",
                                *model_args, "--epochs", "2", "--out", str(out)], timeout)
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
