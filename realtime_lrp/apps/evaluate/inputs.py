"""The images evaluated: Fashion-MNIST's test set, a folder of images, or a video's frames."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from realtime_lrp.apps.evaluate.methods import EvaluationError, Notice

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


SMOOTH_NEEDS_VIDEO = "smoothing (--smooth) needs a video input: it averages maps over consecutive frames"


@dataclass
class Inputs:
    """Normalised images (N, C, H, W) in fp32 on the CPU, their labels if known, and what they are."""

    x: Tensor
    labels: Tensor | None
    source: str
    video: bool = False


def load_inputs(source: str | None, card: Mapping[str, Any], count: int, size: tuple[int, int] | None = None,
                notice: Notice | None = None) -> Inputs:
    """The first ``count`` images of a folder, frames of a video, or test images of ``fashion-mnist``.

    ``None`` means ``fashion-mnist`` for a model trained on it. Images are brought to the
    processing size and the model's channels the way the other commands do it, with a notice.
    """
    from realtime_lrp.pipeline.preprocess import processing_size

    notice = notice or (lambda _msg: None)
    hw = processing_size(card, size)
    kind, name = source_kind(source, card)
    if kind == "dataset":
        return _dataset_inputs(card, count, hw, notice)
    path = Path(name).expanduser()
    if kind == "folder":
        return _folder_inputs(path, card, count, hw, notice)
    return _video_inputs(path, card, count, hw, notice)


def source_kind(source: str | None, card: Mapping[str, Any]) -> tuple[str, str]:
    """``("dataset" | "folder" | "video", name)`` for a SOURCE argument, or a one-line error."""
    if source is None:
        if card.get("dataset") != "fashion-mnist":
            raise EvaluationError("give the images to evaluate on: a folder of images, a video file or "
                                  "fashion-mnist")
        source = "fashion-mnist"
    if source == "fashion-mnist":
        return "dataset", source
    path = Path(source).expanduser()
    if path.is_dir():
        return "folder", source
    if path.is_file():
        return "video", source
    raise EvaluationError(f"{source}: no such folder, video file or dataset (give a folder of images, "
                          "a video file or fashion-mnist)")


def _fewer(count: int, available: int, what: str, notice: Notice) -> int:
    if available < count:
        notice(f"asked for {count} images, but {what} has only {available}: using {available}")
    return min(count, available)


def _dataset_inputs(card: Mapping[str, Any], count: int, hw: tuple[int, int], notice: Notice) -> Inputs:
    from realtime_lrp.models.datasets import DataError, fashion_mnist, normalize, resize

    try:
        images, labels = fashion_mnist(train=False)
    except DataError as exc:
        raise EvaluationError(str(exc)) from None
    n = _fewer(count, len(images), "the Fashion-MNIST test set", notice)
    x = resize(images[:n].float() / 255.0, hw)
    channels = int(card["input_channels"])
    if channels != 1:
        notice(f"Fashion-MNIST is gray: its images are repeated into the model's {channels} channels")
        x = x.repeat(1, channels, 1, 1)
    if list(hw) != [28, 28]:
        notice(f"Fashion-MNIST's 28x28 images are resized to {hw[1]}x{hw[0]} (bilinear, as in training)")
    known = card.get("dataset") == "fashion-mnist"
    return Inputs(normalize(x, card["mean"], card["std"]), labels[:n] if known else None, "fashion-mnist")


def _frames_tensor(frames: Sequence[np.ndarray], card: Mapping[str, Any], hw: tuple[int, int]) -> Tensor:
    from realtime_lrp.pipeline.preprocess import frames_to_tensor

    return torch.cat([frames_to_tensor(frames[i:i + 256], card, hw) for i in range(0, len(frames), 256)])


def _say_conversions(frames: Sequence[np.ndarray], card: Mapping[str, Any], hw: tuple[int, int], what: str,
                     notice: Notice) -> None:
    """Say how many of ``frames`` are resized or converted to the model's channels (``what``: their name)."""
    channels = int(card["input_channels"])
    resized = sum(f.shape[:2] != tuple(hw) for f in frames)
    converted = sum((1 if f.ndim == 2 else f.shape[2]) != channels for f in frames)
    kind = "gray" if channels == 1 else "RGB"
    def share(k: int) -> str:
        return what if len(frames) == 1 else f"{k} of the {len(frames)} {what}"

    if resized:
        notice(f"{share(resized)} not {hw[1]}x{hw[0]}: resized to it as a whole (bilinear), as the other "
               "commands do")
    if converted:
        notice(f"{share(converted)} not {kind}: converted to {kind} ({channels} channel"
               f"{'s' if channels > 1 else ''}), as the other commands do")


def _folder_inputs(folder: Path, card: Mapping[str, Any], count: int, hw: tuple[int, int],
                   notice: Notice) -> Inputs:
    import cv2

    paths = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not paths:
        raise EvaluationError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {folder}")
    frames = []
    for path in paths[:count]:
        frame = cv2.imread(str(path), cv2.IMREAD_ANYCOLOR)
        if frame is None:
            raise EvaluationError(f"cannot read {path}: not an image, or corrupt")
        frames.append(frame)
    _fewer(count, len(paths), str(folder), notice)
    _say_conversions(frames, card, hw, "images are" if len(frames) > 1 else "the image is", notice)
    return Inputs(_frames_tensor(frames, card, hw), None, str(folder))


def _video_inputs(path: Path, card: Mapping[str, Any], count: int, hw: tuple[int, int],
                  notice: Notice) -> Inputs:
    from realtime_lrp.media.reader import InputError, VideoReader

    try:
        reader = VideoReader(path)
    except InputError as exc:
        raise EvaluationError(str(exc)) from None
    frames = []
    with reader:
        for frame in reader.frames():
            if len(frames) >= count:
                break
            frames.append(frame.image)
    _fewer(count, len(frames), str(path), notice)
    _say_conversions(frames[:1], card, hw, "the video's frames are", notice)
    return Inputs(_frames_tensor(frames, card, hw), None, str(path), video=True)
