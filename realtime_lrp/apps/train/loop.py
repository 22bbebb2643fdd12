"""``rtlrp train``: VGG, ResNet-family and AlexNet training shaped like torchvision's classification reference.

``train_one_epoch`` / ``evaluate`` / ``main``, with mixed precision (fp16 autocast and a
``GradScaler`` on CUDA, bf16 autocast on CPU or on request), channels_last, DDP under
``torchrun`` (NCCL on GPUs, gloo on CPU), a checkpoint every epoch and on Ctrl-C, and
per-epoch metrics appended to ``metrics.jsonl`` in the run directory.
"""
from __future__ import annotations

import json
import os
import shlex
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DistributedSampler

from realtime_lrp.models.architectures import ALL_ARCHS, ARCHS, RESNET_ARCHS, SMALL_INPUT_ARCHS
from realtime_lrp.models.cards import arch_fields, build_from_card
from realtime_lrp.models.datasets import DataInfo, load_datasets, make_loader, normalize
from realtime_lrp.models.errors import WeightsError
from realtime_lrp.models.files import safe_load
from realtime_lrp.models.sizes import accepts_size, smallest_size
from realtime_lrp.util.atomic import OutputError, check_writable, write_with
from realtime_lrp.util.signals import Deferred

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"


class TrainingError(ValueError):
    """A training setting or checkpoint that cannot be used; the message is one line."""


class TrainingInterrupted(Exception):
    """A signal (``signum``: Ctrl-C, SIGTERM, SIGHUP) stopped training after a checkpoint was written to ``path``."""

    def __init__(self, path: Path, signum: int = signal.SIGINT) -> None:
        name = signal.Signals(signum).name
        super().__init__(f"interrupted by {name}; checkpoint written to {path} (continue with --resume {path})")
        self.path = path
        self.signum = signum


# Settings a resumed run may change: where and how it runs, not what it trains.
RESUMABLE = ("resume", "out", "device", "max_steps", "workers", "command")


@dataclass
class TrainConfig:
    """All settings of a run; stored as a plain dict in every checkpoint."""

    arch: str = "vgg11_bn"
    dataset: str = "fashion-mnist"
    epochs: int = 12
    batch_size: int = 128
    lr: float = 0.1
    weight_decay: float = 5e-4
    label_smoothing: float = 0.0
    width: float | None = None  # None: 0.25 for a VGG, 1 (torchvision's) for a ResNet
    hidden: int = 256
    pool: int = 1
    dropout: float = 0.5
    small_input: bool | None = None  # None: the small-input stem for inputs of at most 64 pixels
    input_size: list[int] = field(default_factory=lambda: [32, 32])
    augment: bool = True
    out: str = "runs/train"
    resume: str | None = None
    device: str = "auto"
    seed: int = 0
    max_steps: int | None = None
    amp: bool = False
    amp_dtype: str | None = None
    workers: int = 2
    command: str = ""


@dataclass
class Precision:
    """How the forward pass runs: autocast device/dtype, and whether a GradScaler is used."""

    device_type: str
    dtype: torch.dtype | None

    @property
    def enabled(self) -> bool:
        return self.dtype is not None

    @property
    def needs_scaler(self) -> bool:
        return self.dtype is torch.float16

    def autocast(self) -> torch.autocast:
        return torch.autocast(self.device_type, dtype=self.dtype or torch.float32,
                              enabled=self.enabled)


def resolve_precision(amp: bool, amp_dtype: str | None, device: torch.device) -> Precision:
    """``--amp``: fp16 on CUDA (bf16 with ``--amp-dtype bf16``), bf16 on CPU."""
    if amp_dtype not in (None, "fp16", "bf16"):
        raise TrainingError(f"--amp-dtype must be fp16 or bf16, not {amp_dtype!r}")
    if not amp and amp_dtype is None:
        return Precision(device.type, None)
    dtype = amp_dtype or ("fp16" if device.type == "cuda" else "bf16")
    if dtype == "fp16" and device.type != "cuda":
        raise TrainingError("fp16 autocast needs CUDA; on CPU use --amp (bf16)")
    return Precision(device.type, torch.float16 if dtype == "fp16" else torch.bfloat16)


@dataclass
class Dist:
    """Process-group facts: this rank, the world size, and the training device."""

    rank: int
    world: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0

    def sum(self, values: list[float]) -> list[float]:
        """Sum ``values`` over all ranks."""
        if self.world == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64,
                         device=self.device if self.device.type == "cuda" else "cpu")
        all_reduce_released(t)
        return t.tolist()


def all_reduce_released(t: torch.Tensor, timeout: float = 10.0) -> None:
    """``dist.all_reduce(t)`` that returns only once gloo's worker thread has let go of ``t``.

    gloo wakes the caller before its worker frees the finished work, and that free drops the
    worker's reference to ``t``. If the caller's rank exits meanwhile (its last act was a
    collective), the free lands in interpreter shutdown, needs the GIL, and aborts the rank
    ("terminate called without an active exception"), failing a finished torchrun job. Waiting
    for the reference count (microseconds) closes that window. NCCL keeps CUDA tensors until
    its watchdog runs, so CUDA tensors are not waited on.
    """
    dist.all_reduce(t)
    if t.device.type != "cpu":
        return
    deadline = time.monotonic() + timeout
    while t._use_count() > 1 and time.monotonic() < deadline:
        time.sleep(1e-4)


def init_distributed(device: str) -> Dist:
    """Join torchrun's process group when ``WORLD_SIZE`` is set, else run as one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise TrainingError("--device cuda requested but no CUDA GPU is available")
        dev = torch.device("cuda", local_rank if world > 1 else (dev.index or 0))
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    if dev.type == "cpu" and world > 1:
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    return Dist(rank, world, dev)


def augment(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random crop with zero padding of 1/16 of the size, and random horizontal flip."""
    n, _, h, w = images.shape
    pad = max(1, h // 16)
    padded = F.pad(images, (pad, pad, pad, pad))
    dev = images.device
    oy = torch.randint(0, 2 * pad + 1, (n,), device=dev, generator=generator)
    ox = torch.randint(0, 2 * pad + 1, (n,), device=dev, generator=generator)
    rows = (oy[:, None] + torch.arange(h, device=dev))[:, None, :, None]
    cols = (ox[:, None] + torch.arange(w, device=dev))[:, None, None, :]
    batch = torch.arange(n, device=dev)[:, None, None, None]
    chans = torch.arange(images.shape[1], device=dev)[None, :, None, None]
    cropped = padded[batch, chans, rows, cols]
    flip = torch.rand(n, device=dev, generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], cropped.flip(-1), cropped)


def _inputs(images: torch.Tensor, info: DataInfo, device: torch.device) -> torch.Tensor:
    images = images.to(device, non_blocking=True)
    return normalize(images, info.mean, info.std).contiguous(memory_format=torch.channels_last)


class _StepState:
    """Counters shared by the epoch loop and the checkpoint writer, and the stop request."""

    def __init__(self, step: int = 0, epoch: int = 0, epoch_step: int = 0) -> None:
        self.step = step
        self.epoch = epoch
        self.epoch_step = epoch_step
        self.stop: Deferred | None = None
        self.stop_requested = False

    def poll(self) -> bool:
        """Whether a signal asked to stop (checked once per step)."""
        if self.stop is not None and self.stop.requested:
            self.stop_requested = True
        return self.stop_requested


def _stop_agreed(state: _StepState, env: Dist) -> bool:
    """Whether any rank was asked to stop (every rank must leave the loop at the same step)."""
    state.poll()
    if env.world > 1:
        state.stop_requested = env.sum([float(state.stop_requested)])[0] > 0
    return state.stop_requested


def train_one_epoch(model: nn.Module, criterion: nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: Any, batches: Iterable, info: DataInfo, precision: Precision,
                    env: Dist, state: _StepState, total: int, max_steps: int | None,
                    progress: Any = None, scaler: torch.amp.GradScaler | None = None,
                    do_augment: bool = True) -> dict[str, float]:
    """Train over ``batches``; stops early at ``max_steps`` or on a Ctrl-C request."""
    model.train()
    loss_sum = torch.zeros((), device=env.device, dtype=torch.float64)
    correct = torch.zeros((), device=env.device, dtype=torch.int64)
    seen, start = 0, time.perf_counter()
    task = progress.add_task(f"epoch {state.epoch + 1}", total=total, completed=state.epoch_step,
                             loss=0.0, acc=0.0, ips=0.0) if progress is not None else None
    for images, labels in batches:
        images = augment(images.to(env.device)) if do_augment else images
        x, y = _inputs(images, info, env.device), labels.to(env.device, non_blocking=True)
        with precision.autocast():
            logits = model(x)
            loss = criterion(logits, y)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None and scaler.is_enabled():
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        scheduler.step()
        state.step += 1
        state.epoch_step += 1
        loss_sum += loss.detach().double() * len(y)
        correct += (logits.argmax(1) == y).sum()
        seen += len(y)
        if task is not None and (state.epoch_step % 10 == 0 or state.epoch_step == total):
            elapsed = time.perf_counter() - start
            fields = {"loss": loss_sum.item() / seen, "acc": correct.item() / seen,
                      "ips": seen * env.world / max(elapsed, 1e-9)}
            progress.update(task, completed=state.epoch_step, **fields)
            if not progress.console.is_terminal and state.epoch_step % max(10, total // 10) == 0:
                progress.console.print(f"  step {state.epoch_step}/{total}: loss {fields['loss']:.4f}"
                                       f" acc {fields['acc']:.2%} {fields['ips']:.0f} img/s")
        if _stop_agreed(state, env) or (max_steps is not None and state.step >= max_steps):
            break
    elapsed = time.perf_counter() - start
    loss_total, correct_total, count = env.sum([loss_sum.item(), float(correct.item()), float(seen)])
    if task is not None:
        progress.remove_task(task)
    return {
        "train_loss": loss_total / max(count, 1),
        "train_acc": correct_total / max(count, 1),
        "images_per_s": count / max(elapsed, 1e-9),
    }


@torch.inference_mode()
def evaluate(model: nn.Module, dataset: Any, info: DataInfo, device: torch.device,
             precision: Precision | None = None, batch_size: int = 512, rank: int = 0,
             world: int = 1, workers: int = 0) -> dict[str, float]:
    """Loss and top-1 accuracy on ``dataset``; each rank scores its own exact shard."""
    model.eval()
    precision = precision or Precision(device.type, None)
    env = Dist(rank, world, device)
    loss_sum, correct, count = 0.0, 0, 0
    for images, labels in make_loader(dataset, range(rank, len(dataset), world), batch_size,
                                      workers):
        x, y = _inputs(images, info, device), labels.to(device)
        with precision.autocast():
            logits = model(x)
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum").item()
        correct += int((logits.argmax(1) == y).sum())
        count += len(y)
    loss_sum, correct_f, count_f = env.sum([loss_sum, float(correct), float(count)])
    return {"test_loss": loss_sum / max(count_f, 1), "test_acc": correct_f / max(count_f, 1)}


# Options that only some architectures have, and which ones.
_ARCH_OPTIONS = {
    "width": (ARCHS + RESNET_ARCHS, "VGGs and ResNets"), "hidden": (ARCHS, "VGGs"), "pool": (ARCHS, "VGGs"),
    "dropout": (ARCHS + ("alexnet",), "VGGs and AlexNet"),
    "small_input": (SMALL_INPUT_ARCHS, "ResNets and the torchvision CNNs beyond ReLU"),
}


def resolve_arch_options(config: TrainConfig, explicit: Iterable[str] = ()) -> None:
    """Fill ``width`` and ``small_input`` for the architecture; refuse in one line an unknown
    ``--arch`` or an option given (``explicit``) that the architecture does not have."""
    if config.arch not in ALL_ARCHS:
        raise TrainingError(f"unknown architecture {config.arch!r}; choose one of {', '.join(ALL_ARCHS)}")
    for name in explicit:
        if name in _ARCH_OPTIONS and config.arch not in _ARCH_OPTIONS[name][0]:
            raise TrainingError(f"--{name.replace('_', '-')} is for {_ARCH_OPTIONS[name][1]} only, "
                                f"not {config.arch}")
    if config.width is None and config.arch in ARCHS + RESNET_ARCHS:
        config.width = 0.25 if config.arch in ARCHS else 1.0
    if config.small_input is None and config.arch in SMALL_INPUT_ARCHS:
        config.small_input = max(config.input_size) <= 64


def _meta(config: TrainConfig, info: DataInfo) -> dict[str, Any]:
    return {
        "arch": config.arch, **{k: getattr(config, k) for k in arch_fields(config.arch)},
        "num_classes": len(info.classes), "classes": list(info.classes),
        "input_size": list(info.input_size), "input_channels": info.input_channels,
        "mean": list(info.mean), "std": list(info.std), "dataset": info.name,
    }


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a training checkpoint (a run directory or file) with ``weights_only=True``."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT
    if not path.is_file():
        raise TrainingError(f"no checkpoint at {path}")
    try:
        ckpt = safe_load(path)
    except Exception as exc:  # torch raises many types for corrupt or truncated files
        raise TrainingError(f"cannot read checkpoint {path}: {type(exc).__name__}") from None
    if not isinstance(ckpt, dict) or not {"model", "args", "meta", "step"} <= ckpt.keys():
        raise TrainingError(f"{path} is not a realtime_lrp training checkpoint")
    return ckpt


def _save(path: Path, payload: dict[str, Any]) -> None:
    write_with(path, lambda partial: torch.save(payload, partial))


def _config_from_resume(config: TrainConfig, explicit: Iterable[str] = ()) -> tuple[TrainConfig, dict[str, Any]]:
    """The checkpoint's settings, with the ones a resumed run may change taken from ``config``.

    An option given on the command line (``explicit``) that would change what is trained
    (epochs, batch size, learning rate, architecture, ...) is refused in one line rather
    than silently ignored: the one-cycle schedule and the optimizer state were built for
    the checkpoint's values.
    """
    ckpt = load_checkpoint(Path(config.resume))
    args = ckpt["args"]
    if not isinstance(args, dict):
        raise TrainingError(f"{config.resume} is not a realtime_lrp training checkpoint (no settings)")
    saved = TrainConfig(**{k: v for k, v in args.items() if k in TrainConfig.__dataclass_fields__})
    changed = [name for name in explicit if name not in RESUMABLE
               and getattr(config, name) != getattr(saved, name)]
    if changed:
        name = changed[0]
        raise TrainingError(
            f"--{name.replace('_', '-')} {getattr(config, name)} differs from the checkpoint's "
            f"{getattr(saved, name)}: a resumed run keeps the settings it started with (its schedule and "
            f"optimizer state were built for them); drop the option, or start a new run with another --out")
    saved.resume, saved.max_steps, saved.device = config.resume, config.max_steps, config.device
    saved.workers = config.workers
    if config.out != TrainConfig.out:
        saved.out = config.out
    if config.command:
        saved.command = f"{saved.command}; resumed with: {config.command}"
    return saved, ckpt


def _restore(ckpt: dict[str, Any], path: str, model: nn.Module, optimizer: torch.optim.Optimizer,
             scheduler: Any, scaler: torch.amp.GradScaler) -> _StepState:
    """Load a checkpoint's states into this run's objects, or say in one line why it does not fit."""
    try:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["lr_scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        return _StepState(int(ckpt["step"]), int(ckpt["epoch"]), int(ckpt["epoch_step"]))
    except (KeyError, RuntimeError, ValueError, TypeError) as exc:
        lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
        telling = [line for line in lines if line.startswith(("size mismatch", "Missing key", "Unexpected key"))]
        detail = f"missing {exc}" if isinstance(exc, KeyError) else (telling or lines)[0].rstrip(".")
        raise TrainingError(f"checkpoint {path} does not fit the model and settings it records ({detail});"
                            " it was edited or comes from another version") from None


def _progress(console: Any) -> Any:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}  acc {task.fields[acc]:.2%}  "
                   "{task.fields[ips]:.0f} img/s"),
        TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=True,
    )


def main(config: TrainConfig, explicit: Iterable[str] = ()) -> dict[str, Any]:
    """Run (or resume) training; returns the last metrics line written.

    ``explicit`` names the options the user set; on ``--resume`` they must agree with
    the checkpoint unless they are in :data:`RESUMABLE`.
    """
    from rich.console import Console

    ckpt = None
    if config.resume:
        config, ckpt = _config_from_resume(config, explicit)
    resolve_arch_options(config, explicit)
    out = Path(config.out)
    try:
        check_writable(out / CHECKPOINT)  # before any training work, not after it
    except OutputError as exc:
        raise TrainingError(str(exc)) from None
    env = init_distributed(config.device)
    precision = resolve_precision(config.amp, config.amp_dtype, env.device)
    torch.manual_seed(config.seed + env.rank)
    console = Console(stderr=True)

    train_set, test_set, info = load_datasets(config.dataset, config.input_size)
    if ckpt is not None:
        info.mean, info.std = list(ckpt["meta"]["mean"]), list(ckpt["meta"]["std"])
    try:
        model = build_from_card(_meta(config, info), config.dropout)
    except WeightsError as exc:
        raise TrainingError(str(exc)) from None
    height, width = config.input_size
    if not accepts_size(model.eval(), info.input_channels, (height, width)):
        least = smallest_size(model, info.input_channels)
        need = f"at least {least}x{least}" if least else "a larger input"
        raise TrainingError(f"--input-size {width}x{height} is too small for {config.arch}: it needs {need}")
    model = model.to(env.device, memory_format=torch.channels_last)
    sampler = DistributedSampler(train_set, num_replicas=env.world, rank=env.rank, shuffle=True,
                                 seed=config.seed, drop_last=True)
    steps_per_epoch = len(sampler) // config.batch_size
    if steps_per_epoch == 0:
        raise TrainingError(f"batch size {config.batch_size} exceeds the {len(sampler)} "
                            "training images per process")
    criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=0.9, nesterov=True,
                                weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.lr, total_steps=config.epochs * steps_per_epoch,
        pct_start=0.15, div_factor=20.0, final_div_factor=200.0)
    scaler = torch.amp.GradScaler(env.device.type, enabled=precision.needs_scaler)
    state = _StepState()
    test_acc = None
    if ckpt is not None:
        state = _restore(ckpt, config.resume, model, optimizer, scheduler, scaler)
        test_acc = ckpt.get("test_accuracy")
        if "rng" in ckpt and env.world == 1:
            torch.set_rng_state(ckpt["rng"])
    ddp_model = model
    if env.world > 1:
        ddp_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[env.device.index] if env.device.type == "cuda" else None)
    if not config.command:
        config.command = shlex.join(["rtlrp", *sys.argv[1:]])

    def checkpoint(last_test_acc: float | None) -> Path:
        path = out / CHECKPOINT
        if env.main:
            out.mkdir(parents=True, exist_ok=True)
            _save(path, {
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "lr_scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                "epoch": state.epoch, "epoch_step": state.epoch_step, "step": state.step,
                "args": asdict(config), "meta": _meta(config, info),
                "test_accuracy": last_test_acc, "world_size": env.world,
                "rng": torch.get_rng_state(),
            })
        return path

    stop = state.stop = Deferred().__enter__()
    progress = _progress(console) if env.main else None
    line: dict[str, Any] = {}
    if env.main and config.device == "auto" and env.device.type == "cpu":
        console.print("CUDA is not available: training on the CPU", style="yellow")
    if env.main:
        console.print(f"[bold]rtlrp train[/] {config.arch} on {info.name}: {len(train_set)} images, "
                      f"{steps_per_epoch} steps/epoch x {config.epochs} epochs, "
                      f"device {env.device} x{env.world}, "
                      f"precision {precision.dtype or torch.float32}")
    try:
        if progress is not None:
            progress.start()
        while state.epoch < config.epochs:
            if config.max_steps is not None and state.step >= config.max_steps:
                break
            if _stop_agreed(state, env):
                checkpoint(test_acc)
                raise TrainingInterrupted(out / CHECKPOINT, stop.signum or signal.SIGINT)
            sampler.set_epoch(state.epoch)
            indices = list(sampler)[state.epoch_step * config.batch_size:
                                    steps_per_epoch * config.batch_size]
            batches = make_loader(train_set, indices, config.batch_size, config.workers)
            metrics = train_one_epoch(ddp_model, criterion, optimizer, scheduler, batches, info,
                                      precision, env, state, steps_per_epoch, config.max_steps,
                                      progress, scaler, config.augment)
            if state.stop_requested:
                checkpoint(test_acc)
                raise TrainingInterrupted(out / CHECKPOINT, stop.signum or signal.SIGINT)
            metrics.update(evaluate(model, test_set, info, env.device, precision,
                                    rank=env.rank, world=env.world, workers=config.workers))
            test_acc = metrics["test_acc"]
            finished_epoch = state.epoch_step >= steps_per_epoch
            line = {"epoch": state.epoch + 1, "step": state.step, "partial": not finished_epoch,
                    **{k: round(v, 5) for k, v in metrics.items()},
                    "lr": scheduler.get_last_lr()[0], "world_size": env.world,
                    "precision": str(precision.dtype or torch.float32).replace("torch.", "")}
            if finished_epoch:
                state.epoch, state.epoch_step = state.epoch + 1, 0
            checkpoint(test_acc)
            if env.main:
                with open(out / METRICS, "a", encoding="utf-8") as fh:
                    fh.write(json.dumps(line) + "\n")
                console.print(f"epoch {line['epoch']} step {line['step']}: "
                              f"train loss {line['train_loss']:.4f} acc {line['train_acc']:.2%}  "
                              f"test loss {line['test_loss']:.4f} acc {line['test_acc']:.2%}  "
                              f"{line['images_per_s']:.0f} img/s")
    finally:
        if progress is not None:
            progress.stop()
        stop.__exit__(None, None, None)
        if env.world > 1 and dist.is_initialized():
            dist.destroy_process_group()
    return line
