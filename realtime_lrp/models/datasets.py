"""Training datasets and the model card's preprocessing.

Every image is brought to ``input_size`` by a bilinear resize of the whole image (no pad,
no crop) and normalised with the card's ``mean``/``std``: ``resize`` and ``normalize``
below are that preprocessing, shared by training, evaluation and export
(``realtime_lrp.pipeline.preprocess`` does the same for camera frames).
"""
from __future__ import annotations

import gzip
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from realtime_lrp.models.cards import IMAGENET_MEAN, IMAGENET_STD

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
_FASHION_FILES = {
    True: ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    False: ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
DATASETS = ("fashion-mnist", "cifar10", "imagefolder:PATH")


class DataError(ValueError):
    """A dataset that cannot be found or read; the message is one line."""


@dataclass
class DataInfo:
    """What a model card needs to know about a dataset."""

    name: str
    classes: list[str]
    input_size: list[int]
    input_channels: int
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)


def resize(images: torch.Tensor, input_size: Sequence[int]) -> torch.Tensor:
    """Bilinear resize of whole float images (N, C, H, W) to ``input_size`` [H, W]."""
    if list(images.shape[-2:]) == list(input_size):
        return images
    return F.interpolate(images, size=tuple(input_size), mode="bilinear",
                         align_corners=False, antialias=False)


def normalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Normalise float images in [0, 1] with per-channel ``mean``/``std``."""
    shape = (1, -1, 1, 1)
    m = torch.tensor(mean, dtype=images.dtype, device=images.device).view(shape)
    s = torch.tensor(std, dtype=images.dtype, device=images.device).view(shape)
    return (images - m) / s


def read_idx_gz(path: Path) -> np.ndarray:
    """Read a gzipped IDX file (the MNIST format) into a uint8 array."""
    try:
        with gzip.open(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{path} is not an unsigned-byte IDX file")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    if len(raw) - offset != int(np.prod(dims)):
        raise DataError(f"{path} is truncated: expected {int(np.prod(dims))} values")
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(dims)


def fashion_mnist_dir() -> Path | None:
    """The directory holding the real Fashion-MNIST files, or None when absent.

    ``RTLRP_FASHION_MNIST_DIR`` overrides the Debian location.
    """
    root = Path(os.environ.get("RTLRP_FASHION_MNIST_DIR", FASHION_MNIST_DIR))
    names = [n for pair in _FASHION_FILES.values() for n in pair]
    return root if all((root / n).is_file() for n in names) else None


def _fashion_mnist(train: bool, download_root: Path) -> tuple[torch.Tensor, torch.Tensor]:
    root = fashion_mnist_dir()
    if root is not None:
        images_file, labels_file = _FASHION_FILES[train]
        images = read_idx_gz(root / images_file)
        labels = read_idx_gz(root / labels_file)
        return torch.from_numpy(images.copy())[:, None], torch.from_numpy(labels.astype(np.int64))
    from torchvision.datasets import FashionMNIST

    try:
        ds = FashionMNIST(str(download_root), train=train, download=True)
    except Exception as exc:  # torchvision raises RuntimeError/URLError/OSError offline
        raise DataError(f"Fashion-MNIST not found in {FASHION_MNIST_DIR} and the download "
                        f"failed ({type(exc).__name__}); install the Debian package "
                        "dataset-fashion-mnist") from None
    return ds.data[:, None].clone(), ds.targets.clone().long()


def fashion_mnist(train: bool = False, download_root: Path | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Fashion-MNIST's training or test split: uint8 images (N, 1, 28, 28) and int64 labels (N,).

    Read from the Debian package's files (``fashion_mnist_dir``), else downloaded once by
    torchvision into ``download_root``; DataError when neither works.
    """
    return _fashion_mnist(train, download_root or Path.home() / ".cache" / "realtime_lrp" / "data")


CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
CIFAR10_MD5 = "c32a1d4ab5d03f1284b67883e8d87530"
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
_CIFAR10_RECORD = 1 + 3 * 32 * 32  # one label byte, then 32x32 red, green and blue planes


def read_cifar10_binary(files: list[Path]) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 3, 32, 32) uint8 and labels (N,) from CIFAR-10's binary batch files.

    The binary release is plain fixed-size records, so nothing is unpickled: torchvision's
    ``CIFAR10`` reads the Python release with ``pickle.load``, which would run whatever a
    file planted in the dataset cache contains.
    """
    chunks = []
    for path in files:
        data = np.fromfile(path, dtype=np.uint8)
        if data.size == 0 or data.size % _CIFAR10_RECORD:
            raise DataError(f"{path} is not a CIFAR-10 binary batch ({data.size} bytes)")
        chunks.append(data.reshape(-1, _CIFAR10_RECORD))
    records = np.concatenate(chunks)
    labels = records[:, 0].astype(np.int64)
    if labels.max() >= len(CIFAR10_CLASSES):
        raise DataError(f"CIFAR-10 labels out of range in {files[0].parent}")
    images = records[:, 1:].reshape(-1, 3, 32, 32)
    return torch.from_numpy(images.copy()), torch.from_numpy(labels)


def _cifar10(train: bool, download_root: Path) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    from torchvision.datasets.utils import download_and_extract_archive

    folder = download_root / "cifar-10-batches-bin"
    names = [f"data_batch_{i}.bin" for i in range(1, 6)] if train else ["test_batch.bin"]
    if not all((folder / n).is_file() for n in names):
        try:
            download_and_extract_archive(CIFAR10_URL, str(download_root), md5=CIFAR10_MD5)
        except Exception as exc:  # torchvision raises RuntimeError/URLError/OSError offline
            raise DataError(f"CIFAR-10 download failed ({type(exc).__name__}); put the binary release's "
                            f"files ({', '.join(names)}) under {folder}") from None
    images, labels = read_cifar10_binary([folder / n for n in names])
    return images, labels, list(CIFAR10_CLASSES)


class MemoryDataset(Dataset):
    """Preprocessed-size float images in [0, 1] held in memory, indexed by batch."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images = images
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: Any) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index], self.labels[index]


class FolderDataset(Dataset):
    """``imagefolder`` data: one sub-directory per class, read with OpenCV."""

    EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")

    def __init__(self, root: Path, classes: list[str], input_size: Sequence[int]) -> None:
        self.input_size = list(input_size)
        self.samples = [
            (path, label)
            for label, name in enumerate(classes)
            for path in sorted((root / name).iterdir())
            if path.suffix.lower() in self.EXTENSIONS
        ]
        if not self.samples:
            raise DataError(f"no images found under {root}")

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        import cv2

        path, label = self.samples[index]
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise DataError(f"cannot read image {path}")
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        tensor = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255.0
        return resize(tensor, self.input_size)[0], label


def _memory(images: torch.Tensor, labels: torch.Tensor, input_size: Sequence[int]) -> MemoryDataset:
    chunks = [resize(images[i:i + 4096].float() / 255.0, input_size)
              for i in range(0, len(images), 4096)]
    return MemoryDataset(torch.cat(chunks).contiguous(), labels)


def _channel_stats(images: torch.Tensor) -> tuple[list[float], list[float]]:
    flat = images.transpose(0, 1).reshape(images.shape[1], -1).double()
    return [round(v, 4) for v in flat.mean(1).tolist()], [round(v, 4) for v in flat.std(1).tolist()]


def load_datasets(spec: str, input_size: Sequence[int] | None = None,
                  download_root: Path | None = None) -> tuple[Dataset, Dataset, DataInfo]:
    """Return (train, test, info) for ``fashion-mnist``, ``cifar10`` or ``imagefolder:PATH``.

    Datasets yield float images in [0, 1] already resized to ``input_size``; mean and std
    are measured on the resized training images (ImageNet's for ``imagefolder``).
    """
    root = download_root or Path.home() / ".cache" / "realtime_lrp" / "data"
    if spec == "fashion-mnist":
        size = list(input_size or [32, 32])
        (xtr, ytr), (xte, yte) = (_fashion_mnist(t, root) for t in (True, False))
        train, test = _memory(xtr, ytr, size), _memory(xte, yte, size)
        info = DataInfo(spec, list(FASHION_MNIST_CLASSES), size, 1)
    elif spec == "cifar10":
        size = list(input_size or [32, 32])
        xtr, ytr, classes = _cifar10(True, root)
        xte, yte, _ = _cifar10(False, root)
        train, test = _memory(xtr, ytr, size), _memory(xte, yte, size)
        info = DataInfo(spec, classes, size, 3)
    elif spec.startswith("imagefolder:"):
        size = list(input_size or [224, 224])
        base = Path(spec.partition(":")[2]).expanduser()
        splits = [base / "train", next((base / s for s in ("val", "test") if (base / s).is_dir()),
                                       base / "val")]
        for split in splits:
            if not split.is_dir():
                raise DataError(f"imagefolder needs {split}/ with one sub-directory per class")
        classes = sorted(p.name for p in splits[0].iterdir() if p.is_dir())
        train, test = (FolderDataset(s, classes, size) for s in splits)
        return train, test, DataInfo(spec, classes, size, 3, list(IMAGENET_MEAN), list(IMAGENET_STD))
    else:
        raise DataError(f"unknown dataset {spec!r}; choose one of {', '.join(DATASETS)}")
    info.mean, info.std = _channel_stats(train.images)
    return train, test, info


def make_loader(dataset: Dataset, indices: Sequence[int], batch_size: int,
                workers: int = 0) -> DataLoader:
    """Batches of ``dataset`` in the order of ``indices``: (images, labels) tensors.

    The loader gets its own generator, so creating it leaves the global RNG (dropout,
    augmentation) untouched and a resumed run draws the same numbers as an unbroken one.
    """
    batches = [list(indices[i:i + batch_size]) for i in range(0, len(indices), batch_size)]
    if isinstance(dataset, MemoryDataset):
        return DataLoader(dataset, batch_size=None, sampler=batches, generator=torch.Generator())
    return DataLoader(dataset, batch_sampler=batches, num_workers=workers,
                      generator=torch.Generator())
