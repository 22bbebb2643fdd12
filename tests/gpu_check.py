"""The one-call GPU check: everything issue 19 wants measured on a CUDA machine, in one run, offline.

    python tests/gpu_check.py                 # on the GPU machine: at most about 8 minutes
    python tests/gpu_check.py --cpu-dry-run   # anywhere: every step, briefly, on the CPU

Steps, each timed and kept within ``--budget`` seconds in all (a step past it is written as
skipped, so the table always comes out):

1. ``pytest -m cuda``: the CUDA tests;
2. bench: the engine, the floor and the whole frame pass at 224 and 640, batch 1 and 32,
   top-k 0 and 0.02, for vgg16, resnet50 and every other family the engine explains
   (random weights, so nothing is downloaded; speed depends on them only through DenseNet's batch norms);
3. fp16 against fp32 per family: the cosine similarity of the maps, top-1 agreement, all finite;
4. the webcam loop (``rtlrp webcam``'s :class:`LiveLoop`) on a file source, frames per second;
5. ``rtlrp serve`` in-process, under serve-bench's load with 1, 4 and 8 clients;
6. NVENC: a 1280x720 clip written with ``--codec h264_nvenc``, or the fallback's reason.

It writes one dated markdown table, ``gpu-check-YYYY-MM-DD.md`` (``--out``), that goes into
the README as it is. The wheels it needs on a machine without a registry: README, "GPU check".
"""
from __future__ import annotations

import argparse
import datetime as dt
import math
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

BASE_FAMILIES = ("vgg16", "resnet50")
OTHER_FAMILIES = ("alexnet", "resnext50_32x4d", "wide_resnet50_2", "mobilenet_v3_small", "efficientnet_b0",
                  "regnet_y_400mf", "convnext_tiny", "densenet121")


@dataclass
class Plan:
    """What to run: the GPU check's grid, or the CPU dry run's small one."""

    device: str
    sizes: tuple[int, ...]
    batches: tuple[int, ...]
    top_ks: tuple[float, ...] = (0.0, 0.02)
    repeats: int = 10
    warmup: int = 3
    fidelity_size: int = 224
    webcam: tuple[int, int, int] = (640, 480, 90)  # width, height, frames
    serve_clients: tuple[int, ...] = (1, 4, 8)
    serve_seconds: float = 5.0
    nvenc: tuple[int, int, int] = (1280, 720, 60)
    pytest_timeout: int = 150
    pytest_files: tuple[str, ...] = ()  # () = every test file with a cuda mark
    other_families: tuple[str, ...] = OTHER_FAMILIES

    @classmethod
    def gpu(cls) -> "Plan":
        return cls("cuda", (224, 640), (1, 32))

    @classmethod
    def dry(cls) -> "Plan":
        return cls("cpu", (64,), (1, 2), repeats=1, warmup=0, fidelity_size=64, webcam=(64, 48, 6),
                   serve_seconds=1.0, nvenc=(256, 144, 5), pytest_timeout=120,
                   pytest_files=("tests/test_fast.py",), other_families=("mobilenet_v3_small",))


@dataclass
class Report:
    """The table's rows (step, case, figure, note) and the time left."""

    budget: float
    start: float = field(default_factory=time.monotonic)
    rows: list[tuple[str, str, str, str]] = field(default_factory=list)

    def left(self) -> float:
        return self.budget - (time.monotonic() - self.start)

    def add(self, step: str, case: str, figure: str, note: str = "") -> None:
        self.rows.append((step, case, figure, note.replace("|", "/").replace("\n", " ")[:160]))
        print(f"{step:10s} {case:42s} {figure:28s} {note[:80]}", flush=True)

    def step(self, name: str, need: float, run: Callable[[], None]) -> None:
        """Run one step if ``need`` seconds are left; an error is a row, never the end of the check."""
        if self.left() < need:
            self.add(name, "-", "skipped", f"budget: {self.left():.0f} s left, the step needs about {need:.0f} s")
            return
        try:
            run()
        except Exception as exc:  # noqa: BLE001 - the table must come out
            self.add(name, "-", "failed", f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")

    def markdown(self, title: str) -> str:
        lines = [f"### {title}", "", "| step | case | figure | note |", "|---|---|---|---|"]
        lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in self.rows]
        return "\n".join(lines) + "\n"


def families(plan: Plan, report: Report) -> list[str]:
    """vgg16, resnet50 and each other family the engine explains (the rest get a row saying why not)."""
    from realtime_lrp.lrp.engine import LRP
    from realtime_lrp.models.architectures import build_model

    names = list(BASE_FAMILIES)
    for arch in plan.other_families:
        try:
            LRP(build_model(arch, 10).eval())
        except Exception as exc:  # noqa: BLE001 - unsupported or unknown here: said, not fatal
            report.add("families", arch, "not explained", str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            continue
        names.append(arch)
    return names


def run_pytest(plan: Plan, report: Report) -> None:
    marker = "cuda"
    files = [str(ROOT / f) for f in plan.pytest_files] or \
        sorted(str(p) for p in (ROOT / "tests").glob("test_*.py") if "mark.cuda" in p.read_text())
    command = [sys.executable, "-m", "pytest", "-q", "-m", marker, "-p", "no:cacheprovider", *files]
    started = time.monotonic()
    try:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=plan.pytest_timeout)
        summary = (done.stdout.strip().splitlines() or ["no output"])[-1]
    except subprocess.TimeoutExpired:
        summary = f"timed out after {plan.pytest_timeout} s"
    report.add("pytest", f"-m {marker} ({len(files)} files)", summary, f"{time.monotonic() - started:.0f} s")


def run_bench(plan: Plan, report: Report, names: list[str]) -> None:
    from realtime_lrp.apps.bench import BenchConfig, bench_model, imagenet_card
    from realtime_lrp.models.architectures import build_model

    per_family = report.left() / max(1, len(names)) - 1
    for arch in names:
        if report.left() < 20:
            report.add("bench", arch, "skipped", "budget")
            continue
        began = time.monotonic()
        config = BenchConfig(sizes=plan.sizes, batches=plan.batches, top_ks=plan.top_ks, device=plan.device,
                             repeats=plan.repeats, warmup=plan.warmup, zennit=False)
        for size in plan.sizes:
            for batch in plan.batches:
                if time.monotonic() - began > per_family:
                    report.add("bench", f"{arch} {size} b{batch}", "skipped", "this family's share of the budget")
                    continue
                cfg = BenchConfig(**{**config.__dict__, "sizes": (size,), "batches": (batch,)})
                try:
                    rows = bench_model(build_model(arch, 1000), imagenet_card(size), cfg)
                except torch.cuda.OutOfMemoryError:
                    torch.cuda.empty_cache()
                    report.add("bench", f"{arch} {size} b{batch}", "out of memory")
                    continue
                except Exception as exc:  # noqa: BLE001 - one family's failure is a row
                    report.add("bench", f"{arch} {size} b{batch}", "failed", f"{type(exc).__name__}: {exc}")
                    continue
                for row in rows:
                    figure = f"{row['engine_ms']:.1f} ms ({row['engine_fps']:.0f} img/s)"
                    note = f"{row['engine_over_floor']:.2f}x floor"
                    if row.get("pass_ms") is not None:
                        note += f"; frame pass {row['pass_ms']:.1f} ms"
                    report.add("bench", f"{arch} {size} b{batch} top-k {row['top_k']:g} {row['dtype']}", figure, note)
        if plan.device == "cuda":
            torch.cuda.empty_cache()


def run_fidelity(plan: Plan, report: Report, names: list[str]) -> None:
    """fp16 (bf16 on the CPU) against fp32, per family: maps' cosine similarity, top-1 agreement, finite."""
    from realtime_lrp.lrp.engine import LRP
    from realtime_lrp.models.architectures import build_model

    low = torch.float16 if plan.device == "cuda" else torch.bfloat16
    size = plan.fidelity_size
    for arch in names:
        if report.left() < 10:
            report.add("fp16", arch, "skipped", "budget")
            continue
        torch.manual_seed(0)
        model = build_model(arch, 1000).eval()
        x = torch.rand(4, 3, size, size, generator=torch.Generator().manual_seed(1)).to(plan.device)
        x = (x - 0.45) / 0.225
        maps = {}
        try:
            for dtype in (torch.float32, low):
                lrp = LRP(model, preset="epsilon-plus-flat", top_k=0.0, dtype=dtype, device=plan.device)
                result = lrp(x.to(dtype))
                maps[dtype] = (result.relevance.float().cpu(), result.logits.float().argmax(1).cpu())
        except Exception as exc:  # noqa: BLE001 - one family's failure is a row
            report.add("fidelity", f"{arch} {size}", "failed", f"{type(exc).__name__}: {exc}")
            continue
        (ref, top_ref), (got, top_got) = maps[torch.float32], maps[low]
        cosine = torch.nn.functional.cosine_similarity(ref.flatten(1), got.flatten(1), dim=1)
        finite = bool(torch.isfinite(got).all())
        name = str(low).replace("torch.", "")
        report.add("fidelity", f"{arch} {size} {name} vs fp32", f"cosine min {cosine.min():.4f}",
                   f"mean {cosine.mean():.4f}; top-1 agrees {int((top_ref == top_got).sum())}/4; "
                   f"{'all finite' if finite else 'NOT FINITE'}")


def _video(path: Path, size: tuple[int, int], frames: int, codec: str | None = None,
           notice: Callable[[str], None] | None = None) -> Any:
    from realtime_lrp.media.writer import VideoWriter

    w, h = size
    with VideoWriter(path, 30.0, size, codec=codec, notice=notice) as writer:
        for i in range(frames):
            frame = np.zeros((h, w, 3), np.uint8)
            frame[:, :, 0] = np.linspace(0, 200, w, dtype=np.uint8)[None]
            frame[:, :, 1] = (7 * i) % 200
            x = (5 * i) % max(1, w - w // 4)
            frame[h // 3: h // 3 + h // 4, x: x + w // 4] = 255
            writer.write(frame)
    return writer


class _NoWindow:
    """A display that shows nothing (the loop's own work is what is timed)."""

    interactive = False
    closed = False

    def show(self, frame: np.ndarray, stats: Any) -> None:
        pass

    def poll_key(self, wait_ms: int = 1) -> int | None:
        return None

    def close(self) -> None:
        pass


def _processor(plan: Plan, arch: str = "vgg16", size: int = 224) -> Any:
    from realtime_lrp.apps.bench import imagenet_card
    from realtime_lrp.models.architectures import build_model
    from realtime_lrp.pipeline.processor import FrameProcessor

    card = dict(imagenet_card(size), dataset="imagenet", arch=arch)
    torch.manual_seed(0)
    return FrameProcessor(build_model(arch, 1000).eval(), card, device=plan.device, notice=print)


def run_webcam(plan: Plan, report: Report, tmp: Path) -> None:
    from realtime_lrp.apps.live import LiveLoop
    from realtime_lrp.media.capture import LiveSource

    w, h, count = plan.webcam
    clip = tmp / "camera.avi"
    _video(clip, (w, h), count, codec="mjpeg")
    size = 224 if plan.device == "cuda" else 32
    processor = _processor(plan, size=size)
    processor.process([np.zeros((h, w, 3), np.uint8)])
    processor.reset()
    source = LiveSource(str(clip), pace=False).open()
    try:
        summary = LiveLoop(source, processor, _NoWindow()).run()
    finally:
        source.close()
    report.add("webcam", f"vgg16 {size}, file {w}x{h}, {summary.frames} frames ({summary.skipped} skipped)",
               f"{summary.fps:.1f} frames/s", f"{summary.reason}; {processor.passes.runs} passes"
               + (f"; {summary.error}" if summary.error else ""))


def run_serve(plan: Plan, report: Report) -> None:
    from realtime_lrp.apps.serve.bench import run_load
    from realtime_lrp.apps.serve.server import LrpServer

    size = 224 if plan.device == "cuda" else 32
    processor = _processor(plan, size=size)
    with LrpServer(processor, port=0) as server:
        server.start()
        for clients in plan.serve_clients:
            if report.left() < plan.serve_seconds + 10:
                report.add("serve", f"{clients} clients", "skipped", "budget")
                continue
            load = run_load(server.url, clients, plan.serve_seconds)
            report.add("serve", f"vgg16 {size}, {clients} clients, {plan.serve_seconds:g} s",
                       f"{load.fps:.1f} frames/s", f"round trip p50 {load.percentile(50):.1f} ms, p95 "
                       f"{load.percentile(95):.1f} ms; {len(load.errors)} errors")


def run_nvenc(plan: Plan, report: Report, tmp: Path) -> None:
    from realtime_lrp.media.writer import open_failure

    w, h, count = plan.nvenc
    failure = open_failure("h264_nvenc", (w, h))
    notices: list[str] = []
    began = time.perf_counter()
    writer = _video(tmp / "nvenc.mp4", (w, h), count, codec="h264_nvenc", notice=notices.append)
    seconds = time.perf_counter() - began
    used = writer.codec.name
    report.add("nvenc", f"{w}x{h}, {count} frames", f"{used}, {count / seconds:.0f} frames/s",
               "encoded on the GPU" if used == "h264_nvenc" else f"fell back: {failure or '; '.join(notices)}")


def environment(plan: Plan) -> str:
    import torchvision

    gpu = torch.cuda.get_device_name(0) if plan.device == "cuda" else platform.processor() or platform.machine()
    return (f"{gpu}; torch {torch.__version__}, torchvision {torchvision.__version__}, CUDA "
            f"{torch.version.cuda}; Python {platform.python_version()}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-dry-run", action="store_true", help="every step briefly on the CPU")
    parser.add_argument("--budget", type=float, default=None, help="seconds in all (default 450; 420 dry)")
    parser.add_argument("--out", type=Path, default=Path("."), help="folder of the dated markdown table")
    parser.add_argument("--skip", default="", help="steps to leave out, comma-separated (pytest,bench,...)")
    args = parser.parse_args(argv)
    if not args.cpu_dry_run and not torch.cuda.is_available():
        print("no CUDA GPU here: run with --cpu-dry-run to exercise the steps on the CPU", file=sys.stderr)
        return 1
    plan = Plan.dry() if args.cpu_dry_run else Plan.gpu()
    report = Report(args.budget or (420.0 if args.cpu_dry_run else 450.0))
    skip = set(filter(None, args.skip.split(",")))
    torch.set_num_threads(max(1, torch.get_num_threads()))
    with tempfile.TemporaryDirectory(prefix="rtlrp-gpu-check-") as folder:
        tmp = Path(folder)
        names = families(plan, report)
        steps: list[tuple[str, float, Callable[[], None]]] = [
            ("pytest", 30, lambda: run_pytest(plan, report)),
            ("nvenc", 5, lambda: run_nvenc(plan, report, tmp)),
            ("webcam", 15, lambda: run_webcam(plan, report, tmp)),
            ("serve", 20, lambda: run_serve(plan, report)),
            ("fidelity", 10, lambda: run_fidelity(plan, report, names)),
            ("bench", 30, lambda: run_bench(plan, report, names)),
        ]
        for name, need, run in steps:
            if name not in skip:
                report.step(name, need, run)
    today = dt.date.today().isoformat()
    kind = "CPU dry run" if args.cpu_dry_run else "GPU check"
    title = f"{kind}, {today}: {environment(plan)} ({math.ceil(time.monotonic() - report.start)} s)"
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"gpu-check-{today}{'-cpu-dry-run' if args.cpu_dry_run else ''}.md"
    path.write_text(report.markdown(title))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
