"""MNIST from torchvision's raw IDX files (gzipped or not), without torchvision's four-file requirement."""

from __future__ import annotations

import gzip
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from kd_toolkit.data.loaders import TensorBatchDataset
from kd_toolkit.data.modules import _SplitsDataModule

__all__ = ["MNIST_MEAN", "MNIST_STD", "MNISTDataModule", "load_mnist_idx", "mnist_tensors"]

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _idx_dirs(data_dir: Path) -> list[Path]:
    """Where the IDX files are looked for: ``data_dir`` and torchvision's ``data_dir/MNIST/raw``."""
    return [data_dir, data_dir / "MNIST" / "raw"]


def _find_idx_file(dirs: Sequence[Path], name: str) -> Path | None:
    for folder in dirs:
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    return None


def _has_split(data_dir: Path, split: Literal["train", "test"]) -> bool:
    return all(_find_idx_file(_idx_dirs(data_dir), name) is not None for name in _IDX_FILES[split])


def _read_idx(path: Path, magic: int, header_len: int) -> tuple[np.ndarray, np.ndarray]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    found = int.from_bytes(raw[:4], "big") if len(raw) >= header_len else None
    if found != magic:
        raise ValueError(f"Expected IDX magic number {magic} in {str(path)!r}, but got {found!r} "
                         "(is this the right file?).")
    header = np.frombuffer(raw[:header_len], dtype=">u4")  # (magic, N[, rows, cols])
    dims = header[1:].astype(np.int64)
    body = np.frombuffer(raw, dtype=np.uint8, offset=header_len)
    if body.size != int(np.prod(dims)):
        raise ValueError(f"Expected {int(np.prod(dims))} data bytes in {str(path)!r} (header {dims.tolist()}), "
                         f"but got {body.size}.")
    return body, dims


def load_mnist_idx(data_dir: str | Path, split: Literal["train", "test"] = "test") -> tuple[np.ndarray, np.ndarray]:
    """Read MNIST's raw IDX files (torchvision's raw format, gzipped or not).

    Files are looked for in ``data_dir`` and in ``data_dir/MNIST/raw`` (where torchvision downloads).

    Args:
        data_dir: Folder holding ``t10k-images-idx3-ubyte[.gz]`` and friends.
        split: ``"train"`` or ``"test"``.

    Returns:
        Images as uint8 ``(N, 28, 28)`` and labels as int64 ``(N,)``.

    Raises:
        FileNotFoundError: If either file is missing.
        ValueError: On a bad ``split``, a wrong magic number or inconsistent sizes.

    Example:
        >>> images, labels = load_mnist_idx("../shared/data/mnist-test")  # doctest: +SKIP
        >>> images.shape, labels.shape  # doctest: +SKIP
        ((10000, 28, 28), (10000,))
    """
    if split not in _IDX_FILES:
        raise ValueError(f"Expected `split` to be one of {sorted(_IDX_FILES)}, but got {split!r}.")
    dirs = _idx_dirs(Path(data_dir))
    image_name, label_name = _IDX_FILES[split]
    image_path, label_path = _find_idx_file(dirs, image_name), _find_idx_file(dirs, label_name)
    if image_path is None or label_path is None:
        raise FileNotFoundError(
            f"MNIST {split} files not found in {str(dirs[0])!r} or {str(dirs[1])!r}: expected "
            f"{image_name!r} and {label_name!r} (optionally with '.gz')."
        )
    pixels, image_dims = _read_idx(image_path, 2051, 16)  # dims: (N, rows, cols)
    labels, label_dims = _read_idx(label_path, 2049, 8)  # dims: (N,)
    if image_dims[0] != label_dims[0]:
        raise ValueError(f"Expected as many labels as images, but got {int(label_dims[0])} labels in "
                         f"{str(label_path)!r} and {int(image_dims[0])} images in {str(image_path)!r}.")
    return pixels.reshape(tuple(image_dims)).copy(), labels.astype(np.int64)


def mnist_tensors(data_dir: str | Path, split: Literal["train", "test"] = "test",
                  normalize: bool = True) -> tuple[Tensor, Tensor]:
    """MNIST's IDX files as tensors, preprocessed as torchvision's ``ToTensor()`` + ``Normalize``.

    Args:
        data_dir: Folder with the IDX files (directly or under ``MNIST/raw``).
        split: ``"train"`` or ``"test"``.
        normalize: Standardise with ``MNIST_MEAN``/``MNIST_STD``; otherwise pixels in [0, 1].

    Returns:
        Images float32 ``(N, 1, 28, 28)`` and labels int64 ``(N,)``.

    Example:
        >>> x, y = mnist_tensors("../shared/data/mnist-test")  # doctest: +SKIP
        >>> x.shape, y.dtype  # doctest: +SKIP
        (torch.Size([10000, 1, 28, 28]), torch.int64)
    """
    images, labels = load_mnist_idx(data_dir, split)
    x = torch.from_numpy(images).unsqueeze(1).float().div_(255.0)  # (N, 1, 28, 28) in [0, 1]
    if normalize:
        x = x.sub_(MNIST_MEAN).div_(MNIST_STD)
    return x, torch.from_numpy(labels)


class MNISTDataModule(_SplitsDataModule):
    """MNIST from torchvision's raw IDX files, as float32 ``(N, 1, 28, 28)`` tensors.

    With the train files present, the train file is split into train/val (``test_fraction`` is
    unused) and the test file is the test set. With only the test files (as on machines without
    the train set), those 10,000 images are split stratified at random into train/val/test: the
    first 5,000 test images are easier than the last 5,000, so they are never split in order.

    Args:
        data_dir: Folder with the IDX files (directly or under ``MNIST/raw``).
        download: Download with torchvision when the files are missing.
        batch_size: Samples per batch.
        val_fraction: Fraction held out for validation, in [0, 1).
        test_fraction: Fraction held out for testing when only the test files exist, in [0, 1).
        seed: Seed of the split.
        normalize: Standardise with MNIST's mean and std (0.1307, 0.3081); otherwise pixels in [0, 1].
        num_workers: DataLoader worker processes.

    Example:
        >>> dm = MNISTDataModule("../shared/data/mnist-test")  # doctest: +SKIP
        >>> dm.setup(); len(dm.train_dataset), len(dm.val_dataset), len(dm.test_dataset)  # doctest: +SKIP
        (7000, 1000, 2000)
    """

    def __init__(self, data_dir: str | Path, download: bool = False, batch_size: int = 128,
                 val_fraction: float = 0.1, test_fraction: float = 0.2, seed: int = 0, normalize: bool = True,
                 num_workers: int = 0) -> None:
        super().__init__(batch_size, val_fraction, test_fraction, seed, num_workers)
        if not isinstance(data_dir, (str, Path)):
            raise ValueError(f"Expected `data_dir` to be a str or Path, but got {data_dir!r}.")
        self.save_hyperparameters({"data_dir": str(data_dir), "download": download, "batch_size": batch_size,
                                   "val_fraction": val_fraction, "test_fraction": test_fraction, "seed": seed,
                                   "normalize": normalize, "num_workers": num_workers})
        self.data_dir, self.download, self.normalize = Path(data_dir), bool(download), bool(normalize)
        self.num_classes, self.input_shape = 10, (1, 28, 28)

    def prepare_data(self) -> None:
        if self.download and not _has_split(self.data_dir, "test"):
            from torchvision.datasets import MNIST

            MNIST(str(self.data_dir), train=True, download=True)  # fetches all four raw files

    def _tensors(self, split: Literal["train", "test"]) -> tuple[Tensor, Tensor]:
        return mnist_tensors(self.data_dir, split, normalize=self.normalize)

    def setup(self, stage: str | None = None) -> None:
        if self.train_dataset is not None:
            return
        if not _has_split(self.data_dir, "test"):
            hint = (" Call `prepare_data()` first (the Trainer does)." if self.download
                    else " Pass `download=True` or the directory that holds them.")
            raise FileNotFoundError(
                f"MNIST files not found in {str(self.data_dir)!r} or its 'MNIST/raw' folder: expected "
                f"{list(_IDX_FILES['test'])} (and optionally {list(_IDX_FILES['train'])}), '.gz' or not.{hint}")
        if _has_split(self.data_dir, "train"):
            train, val, _ = self._split(*self._tensors("train"), self.val_fraction, 0.0)
            test: TensorBatchDataset | None = TensorBatchDataset(*self._tensors("test"))
        else:
            train, val, test = self._split(*self._tensors("test"), self.val_fraction, self.test_fraction)
        self.train_dataset, self.val_dataset, self.test_dataset = train, val, test
