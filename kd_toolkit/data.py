"""Data: fast in-memory loaders, sample-index wrappers, MNIST IDX reading and DataModules.

The DataModules keep every split as in-memory tensors behind :class:`TensorBatchDataset`, whose
``__getitems__`` lets torch's DataLoader fetch a whole batch with one indexing operation. Splits are
stratified and random with a fixed ``seed``; shuffling uses torch's global RNG (seeded by
``seed_everything``) so that a resumed run sees the same batches.
"""

from __future__ import annotations

import gzip
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytorch_lightning as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, default_collate

from kd_toolkit.distillation.cache import IndexedDataset, find_random_transform, with_sample_indices

__all__ = [
    "ArrayDataModule",
    "DigitsDataModule",
    "IndexedDataset",
    "MNISTDataModule",
    "TensorBatchDataset",
    "find_random_transform",
    "load_mnist_idx",
    "make_loader",
    "passthrough_collate",
    "stratified_split",
    "with_sample_indices",
]

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


# ----------------------------------------------------------------------------------------- MNIST IDX
def _find_idx_file(dirs: Sequence[Path], name: str) -> Path | None:
    for folder in dirs:
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    return None


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
    root = Path(data_dir)
    dirs = [root, root / "MNIST" / "raw"]
    image_name, label_name = _IDX_FILES[split]
    image_path, label_path = _find_idx_file(dirs, image_name), _find_idx_file(dirs, label_name)
    if image_path is None or label_path is None:
        raise FileNotFoundError(
            f"MNIST {split} files not found in {str(root)!r} or {str(dirs[1])!r}: expected "
            f"{image_name!r} and {label_name!r} (optionally with '.gz')."
        )
    pixels, image_dims = _read_idx(image_path, 2051, 16)  # dims: (N, rows, cols)
    labels, label_dims = _read_idx(label_path, 2049, 8)  # dims: (N,)
    if image_dims[0] != label_dims[0]:
        raise ValueError(f"Expected as many labels as images, but got {int(label_dims[0])} labels in "
                         f"{str(label_path)!r} and {int(image_dims[0])} images in {str(image_path)!r}.")
    return pixels.reshape(tuple(image_dims)).copy(), labels.astype(np.int64)


# ------------------------------------------------------------------------------------------- splits
def stratified_split(
    labels: np.ndarray | Tensor | Sequence[int], fractions: Sequence[float], seed: int
) -> list[np.ndarray]:
    """Split sample indices at random into ``len(fractions)`` parts, stratified by label.

    Each class is shuffled with ``seed`` and dealt out so that every part holds its fraction of every
    class (within one sample), and part sizes are ``N * fraction`` rounded by largest remainder.

    Args:
        labels: Class label per sample, shape ``(N,)``.
        fractions: Positive fractions summing to 1.
        seed: Seed of the split; the same seed gives the same split.

    Returns:
        One sorted int64 index array per fraction.

    Example:
        >>> parts = stratified_split([0, 0, 0, 0, 1, 1, 1, 1], [0.5, 0.5], seed=0)
        >>> [len(p) for p in parts]
        [4, 4]
    """
    fracs = np.asarray(list(fractions), dtype=np.float64)
    if fracs.ndim != 1 or fracs.size == 0 or not np.all(fracs > 0) or abs(fracs.sum() - 1.0) > 1e-6:
        raise ValueError(f"Expected `fractions` to be positive floats summing to 1, but got {list(fractions)!r}.")
    y = np.asarray(labels)
    if y.ndim != 1:
        raise ValueError(f"Expected `labels` to be 1-D class ids of shape (N,), but got shape {y.shape}.")
    rng = np.random.default_rng(seed)
    classes, inverse = np.unique(y, return_inverse=True)
    members = [np.flatnonzero(inverse == c) for c in range(len(classes))]
    counts = _stratified_counts(np.array([len(m) for m in members]), fracs, rng)  # (C, K)
    parts: list[list[np.ndarray]] = [[] for _ in fracs]
    for idx, row in zip(members, counts):
        bounds = np.concatenate([[0], np.cumsum(row)])
        shuffled = rng.permutation(idx)
        for k in range(len(fracs)):
            parts[k].append(shuffled[bounds[k] : bounds[k + 1]])
    return [np.sort(np.concatenate(p)).astype(np.int64) if p else np.empty(0, np.int64) for p in parts]


def _largest_remainder(total: int, fracs: np.ndarray) -> np.ndarray:
    exact = total * fracs
    out = np.floor(exact).astype(np.int64)
    out[np.argsort(-(exact - out), kind="stable")[: total - out.sum()]] += 1
    return out


def _stratified_counts(sizes: np.ndarray, fracs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Per-class part sizes ``(C, K)``: each within one of ``size * fraction``, column sums exact."""
    base = np.floor(sizes[:, None] * fracs[None, :]).astype(np.int64)  # (C, K)
    need = _largest_remainder(int(sizes.sum()), fracs) - base.sum(0)  # (K,) still to hand out
    leftover = sizes - base.sum(1)  # (C,) each < K
    order = rng.permutation(len(sizes))
    for c in order[np.argsort(-leftover[order], kind="stable")]:
        # Give this class's leftovers to the parts that need the most, one each.
        remainder = sizes[c] * fracs - base[c]
        picks = np.lexsort((-remainder, -need))[: leftover[c]]
        base[c, picks] += 1
        need[picks] -= 1
    return base


# -------------------------------------------------------------------------------- fast tensor loader
class TensorBatchDataset(Dataset):
    """Map-style dataset over in-memory tensors that serves whole batches in one indexing step.

    torch's DataLoader calls ``__getitems__`` with a batch of indices when it exists; this returns
    the already-batched ``(x[idx], y[idx])``, which :func:`passthrough_collate` hands on unchanged.

    Args:
        x: Inputs ``(N, ...)``.
        y: Targets ``(N, ...)``.

    Example:
        >>> ds = TensorBatchDataset(torch.zeros(5, 3), torch.arange(5))
        >>> len(ds), ds[2][1].item(), ds.__getitems__([0, 4])[1].tolist()
        (5, 2, [0, 4])
    """

    def __init__(self, x: Tensor, y: Tensor) -> None:
        if not isinstance(x, Tensor) or not isinstance(y, Tensor):
            raise ValueError(f"Expected `x` and `y` to be tensors, but got {type(x).__name__} and {type(y).__name__}.")
        if len(x) != len(y):
            raise ValueError(f"Expected `x` and `y` to have the same length, but got {len(x)} and {len(y)}.")
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.x[index], self.y[index]

    def __getitems__(self, indices: Sequence[int]) -> _TensorBatch:
        idx = torch.as_tensor(indices, dtype=torch.long)  # (B,)
        # index_select is several times faster than advanced indexing x[idx] on CPU
        return _TensorBatch((self.x.index_select(0, idx), self.y.index_select(0, idx)))


class _TensorBatch(tuple):
    """Marks a batch that is already collated, so it is never mistaken for a list of samples."""


def passthrough_collate(batch: Any) -> Any:
    """Collate that passes :class:`TensorBatchDataset` batches through and default-collates the rest.

    Example:
        >>> x, y = passthrough_collate([(torch.ones(2), 0), (torch.zeros(2), 1)])
        >>> x.shape, y.tolist()
        (torch.Size([2, 2]), [0, 1])
    """
    if isinstance(batch, _TensorBatch):
        return tuple(batch)
    return default_collate(batch)


def make_loader(
    x: Tensor,
    y: Tensor,
    batch_size: int,
    shuffle: bool = False,
    drop_last: bool = False,
    num_workers: int = 0,
    pin_memory: bool = False,
) -> DataLoader:
    """A plain ``DataLoader`` over :class:`TensorBatchDataset` that fetches a batch per indexing step.

    Shuffling uses torch's global RNG (no private generator), so ``seed_everything`` and checkpointed
    RNG state make the order reproducible; Lightning can still swap in a ``DistributedSampler``.

    Example:
        >>> loader = make_loader(torch.randn(10, 4), torch.arange(10), batch_size=4)
        >>> [tuple(xb.shape) for xb, _ in loader]
        [(4, 4), (4, 4), (2, 4)]
    """
    _check_int("batch_size", batch_size, minimum=1)
    _check_int("num_workers", num_workers, minimum=0)
    return DataLoader(
        TensorBatchDataset(x, y), batch_size=batch_size, shuffle=shuffle, drop_last=drop_last,
        num_workers=num_workers, collate_fn=passthrough_collate, pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
    )


# ------------------------------------------------------------------------------------- DataModules
def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        kind = "a positive int" if minimum == 1 else "a non-negative int"
        raise ValueError(f"Expected `{name}` to be {kind}, but got {value!r}.")


def _check_fractions(val_fraction: Any, test_fraction: Any) -> None:
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
            raise ValueError(f"Expected `{name}` to be a float in [0, 1), but got {value!r}.")
    if val_fraction + test_fraction >= 1:
        raise ValueError(f"Expected `val_fraction + test_fraction` to be below 1 (something must be left to "
                         f"train on), but got {val_fraction!r} + {test_fraction!r}.")


def _as_xy(x: Any, y: Any, name: str) -> tuple[Tensor, Tensor]:
    x, y = torch.as_tensor(x), torch.as_tensor(y)
    if x.is_floating_point():
        x = x.float()
    if y.ndim != 1 or y.is_floating_point() or y.is_complex() or len(x) != len(y):
        raise ValueError(f"Expected `{name}` labels to be integer class ids of shape ({len(x)},), but got dtype "
                         f"{y.dtype} and shape {tuple(y.shape)}.")
    if len(y) == 0 or int(y.min()) < 0:
        raise ValueError(f"Expected `{name}` to be non-empty with labels >= 0, but got {len(y)} samples.")
    return x, y.long()


class _SplitsDataModule(pl.LightningDataModule):
    """Shared machinery: stratified random splits of in-memory tensors, loaders via :func:`make_loader`."""

    num_classes: int
    input_shape: tuple[int, ...]

    def __init__(self, batch_size: int, val_fraction: float, test_fraction: float, seed: int,
                 num_workers: int) -> None:
        super().__init__()
        _check_int("batch_size", batch_size, minimum=1)
        _check_int("num_workers", num_workers, minimum=0)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"Expected `seed` to be an int, but got {seed!r}.")
        _check_fractions(val_fraction, test_fraction)
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        self.val_fraction, self.test_fraction = float(val_fraction), float(test_fraction)
        self.train_dataset: TensorBatchDataset | None = None
        self.val_dataset: TensorBatchDataset | None = None
        self.test_dataset: TensorBatchDataset | None = None

    def _split(self, x: Tensor, y: Tensor, val_fraction: float,
               test_fraction: float) -> list[TensorBatchDataset | None]:
        """``[train, val, test]`` datasets; a zero fraction gives ``None``."""
        wanted = [1.0 - val_fraction - test_fraction, val_fraction, test_fraction]
        used = [f for f in wanted if f > 0]
        parts = iter(stratified_split(y.numpy(), used, self.seed))
        out: list[TensorBatchDataset | None] = []
        for name, fraction in zip(("train", "val", "test"), wanted):
            idx = torch.from_numpy(next(parts)) if fraction > 0 else None
            if idx is not None and len(idx) == 0:
                raise ValueError(f"Expected a non-empty {name} split, but {fraction!r} of {len(y)} samples is none.")
            out.append(None if idx is None else TensorBatchDataset(x[idx], y[idx]))
        return out

    def _loader(self, dataset: TensorBatchDataset | None, name: str, shuffle: bool = False) -> DataLoader | list:
        if dataset is None:
            if name == "train":
                raise RuntimeError("No train split: call `setup()` first.")
            return []  # Lightning skips a stage whose loader list is empty
        return make_loader(dataset.x, dataset.y, self.batch_size, shuffle=shuffle, num_workers=self.num_workers)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_dataset, "train", shuffle=True)  # type: ignore[return-value]

    def val_dataloader(self) -> DataLoader | list:
        return self._loader(self.val_dataset, "val")

    def test_dataloader(self) -> DataLoader | list:
        return self._loader(self.test_dataset, "test")


class DigitsDataModule(_SplitsDataModule):
    """scikit-learn's 8x8 handwritten digits (1,797 images, ships with scikit-learn): the embedded default.

    Inputs are float32 ``(N, 1, 8, 8)`` in [0, 1]; splits are stratified at random with ``seed``.

    Args:
        batch_size: Samples per batch.
        val_fraction: Fraction of the data held out for validation, in [0, 1).
        test_fraction: Fraction held out for testing, in [0, 1).
        seed: Seed of the split.
        num_workers: DataLoader worker processes.

    Example:
        >>> dm = DigitsDataModule(batch_size=32)
        >>> dm.setup()
        >>> next(iter(dm.train_dataloader()))[0].shape
        torch.Size([32, 1, 8, 8])
    """

    def __init__(self, batch_size: int = 64, val_fraction: float = 0.15, test_fraction: float = 0.25,
                 seed: int = 0, num_workers: int = 0) -> None:
        super().__init__(batch_size, val_fraction, test_fraction, seed, num_workers)
        self.save_hyperparameters()
        self.num_classes, self.input_shape = 10, (1, 8, 8)

    def setup(self, stage: str | None = None) -> None:
        if self.train_dataset is not None:
            return
        from sklearn.datasets import load_digits  # slow import, only when needed

        digits = load_digits()
        x = torch.from_numpy(digits.images.astype(np.float32) / 16.0).unsqueeze(1)  # (N, 1, 8, 8)
        y = torch.from_numpy(digits.target.astype(np.int64))  # (N,)
        self.train_dataset, self.val_dataset, self.test_dataset = self._split(
            x, y, self.val_fraction, self.test_fraction)


class ArrayDataModule(_SplitsDataModule):
    """Any in-memory arrays or tensors; validation/test sets given or split off stratified.

    Floating inputs become float32, labels int64 class ids; ``num_classes`` is the largest label + 1.

    Args:
        x: Inputs ``(N, ...)``.
        y: Integer labels ``(N,)``.
        val: ``(x, y)`` for validation; when given, ``val_fraction`` is ignored.
        test: ``(x, y)`` for testing; when given, ``test_fraction`` is ignored.
        val_fraction: Fraction of ``x`` split off for validation when ``val`` is not given.
        test_fraction: Fraction of ``x`` split off for testing when ``test`` is not given.
        batch_size: Samples per batch.
        seed: Seed of the split.
        num_workers: DataLoader worker processes.

    Example:
        >>> dm = ArrayDataModule(np.random.rand(100, 5), np.arange(100) % 2, batch_size=16)
        >>> dm.setup()
        >>> len(dm.train_dataset), len(dm.val_dataset), dm.num_classes, dm.input_shape
        (85, 15, 2, (5,))
    """

    def __init__(self, x: Any, y: Any, *, val: tuple[Any, Any] | None = None, test: tuple[Any, Any] | None = None,
                 val_fraction: float = 0.15, test_fraction: float = 0.0, batch_size: int = 64, seed: int = 0,
                 num_workers: int = 0) -> None:
        val_fraction = 0.0 if val is not None else val_fraction
        test_fraction = 0.0 if test is not None else test_fraction
        super().__init__(batch_size, val_fraction, test_fraction, seed, num_workers)
        self.save_hyperparameters("val_fraction", "test_fraction", "batch_size", "seed", "num_workers")
        self._x, self._y = _as_xy(x, y, "y")
        self.input_shape = tuple(self._x.shape[1:])
        self._given: dict[str, tuple[Tensor, Tensor] | None] = {}
        for name, pair in (("val", val), ("test", test)):
            if pair is not None:
                if not isinstance(pair, (tuple, list)) or len(pair) != 2:
                    raise ValueError(f"Expected `{name}` to be an (x, y) pair, but got {type(pair).__name__}.")
                px, py = _as_xy(pair[0], pair[1], name)
                if tuple(px.shape[1:]) != self.input_shape:
                    raise ValueError(f"Expected `{name}` inputs of shape (N, {', '.join(map(str, self.input_shape))}),"
                                     f" but got {tuple(px.shape)}.")
                pair = (px, py)
            self._given[name] = pair
        labels = [self._y] + [p[1] for p in self._given.values() if p is not None]
        self.num_classes = max(int(t.max()) for t in labels) + 1

    def setup(self, stage: str | None = None) -> None:
        if self.train_dataset is not None:
            return
        train, val, test = self._split(self._x, self._y, self.val_fraction, self.test_fraction)
        given_val, given_test = self._given["val"], self._given["test"]
        self.train_dataset = train
        self.val_dataset = TensorBatchDataset(*given_val) if given_val is not None else val
        self.test_dataset = TensorBatchDataset(*given_test) if given_test is not None else test


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
        if self.download and not self._has("test"):
            from torchvision.datasets import MNIST

            MNIST(str(self.data_dir), train=True, download=True)  # fetches all four raw files

    def _has(self, split: Literal["train", "test"]) -> bool:
        dirs = [self.data_dir, self.data_dir / "MNIST" / "raw"]
        return all(_find_idx_file(dirs, name) is not None for name in _IDX_FILES[split])

    def _tensors(self, split: Literal["train", "test"]) -> tuple[Tensor, Tensor]:
        images, labels = load_mnist_idx(self.data_dir, split)
        x = torch.from_numpy(images).unsqueeze(1).float().div_(255.0)  # (N, 1, 28, 28) in [0, 1]
        if self.normalize:
            x = x.sub_(MNIST_MEAN).div_(MNIST_STD)
        return x, torch.from_numpy(labels)

    def setup(self, stage: str | None = None) -> None:
        if self.train_dataset is not None:
            return
        if not self._has("test"):
            hint = (" Call `prepare_data()` first (the Trainer does)." if self.download
                    else " Pass `download=True` or the directory that holds them.")
            raise FileNotFoundError(
                f"MNIST files not found in {str(self.data_dir)!r} or its 'MNIST/raw' folder: expected "
                f"{list(_IDX_FILES['test'])} (and optionally {list(_IDX_FILES['train'])}), '.gz' or not.{hint}")
        if self._has("train"):
            train, val, _ = self._split(*self._tensors("train"), self.val_fraction, 0.0)
            test: TensorBatchDataset | None = TensorBatchDataset(*self._tensors("test"))
        else:
            train, val, test = self._split(*self._tensors("test"), self.val_fraction, self.test_fraction)
        self.train_dataset, self.val_dataset, self.test_dataset = train, val, test
