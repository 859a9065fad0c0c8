"""DataModules over in-memory tensors: stratified random splits with a fixed seed, fast loaders.

Every split is kept as tensors behind :class:`~kd_toolkit.data.loaders.TensorBatchDataset`; splits come
from :func:`~kd_toolkit.data.splits.stratified_split` and loaders from :func:`~kd_toolkit.data.loaders.make_loader`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from kd_toolkit._checks import check_float, check_int
from kd_toolkit.data.loaders import TensorBatchDataset, make_loader
from kd_toolkit.data.splits import stratified_split

__all__ = ["ArrayDataModule", "DigitsDataModule"]


def _check_fractions(val_fraction: Any, test_fraction: Any) -> tuple[float, float]:
    val = check_float("val_fraction", val_fraction, minimum=0, maximum=1, open_high=True)
    test = check_float("test_fraction", test_fraction, minimum=0, maximum=1, open_high=True)
    if val + test >= 1:
        raise ValueError(f"Expected `val_fraction + test_fraction` to be below 1 (something must be left to "
                         f"train on), but got {val_fraction!r} + {test_fraction!r}.")
    return val, test


def _check_finite(x: Tensor, name: str) -> None:
    """Refuse NaN/inf inputs: one bad pixel makes every loss (and every later gradient) NaN."""
    if not (x.is_floating_point() or x.is_complex()) or x.numel() == 0:
        return
    bad = ~torch.isfinite(x)
    if bool(bad.any()):
        first = int(bad.reshape(len(x), -1).any(1).nonzero()[0, 0]) if x.ndim else 0
        nan, inf = int(torch.isnan(x).sum()), int(torch.isinf(x).sum())
        raise ValueError(f"Expected `{name}` to hold finite values, but got {nan} NaN and {inf} inf entries "
                         f"(first in sample {first}); drop or impute them before training.")


def _as_xy(x: Any, y: Any, name: str, x_name: str = "x") -> tuple[Tensor, Tensor]:
    x, y = torch.as_tensor(x), torch.as_tensor(y)
    if x.is_floating_point():
        x = x.float()
    _check_finite(x, x_name)
    if y.ndim != 1 or y.is_floating_point() or y.is_complex() or len(x) != len(y):
        raise ValueError(f"Expected `{name}` labels to be integer class ids of shape ({len(x)},), but got dtype "
                         f"{y.dtype} and shape {tuple(y.shape)}.")
    if len(y) == 0 or int(y.min()) < 0:
        raise ValueError(f"Expected `{name}` to be non-empty with labels >= 0, but got {len(y)} samples.")
    return x, y.long()


class _SplitsDataModule(pl.LightningDataModule):
    """Base of the in-memory DataModules: stratified random train/val/test splits, loaders via ``make_loader``.

    Subclasses set ``num_classes`` and ``input_shape`` and fill the three datasets in ``setup``
    (usually with ``_split``). A missing val or test split gives an empty loader list, which
    Lightning skips.

    Args:
        batch_size: Samples per batch.
        val_fraction: Fraction held out for validation, in [0, 1).
        test_fraction: Fraction held out for testing, in [0, 1).
        seed: Seed of the split.
        num_workers: DataLoader worker processes.
    """

    num_classes: int
    input_shape: tuple[int, ...]

    def __init__(self, batch_size: int, val_fraction: float, test_fraction: float, seed: int,
                 num_workers: int) -> None:
        super().__init__()
        self.batch_size = check_int("batch_size", batch_size, minimum=1)
        self.num_workers = check_int("num_workers", num_workers, minimum=0)
        self.seed = check_int("seed", seed)
        self.val_fraction, self.test_fraction = _check_fractions(val_fraction, test_fraction)
        self.train_dataset: TensorBatchDataset | None = None
        self.val_dataset: TensorBatchDataset | None = None
        self.test_dataset: TensorBatchDataset | None = None

    def _split(self, x: Tensor, y: Tensor, val_fraction: float,
              test_fraction: float) -> list[TensorBatchDataset | None]:
        """``[train, val, test]`` datasets split stratified with ``self.seed``; a zero fraction gives ``None``."""
        wanted = [1.0 - val_fraction - test_fraction, val_fraction, test_fraction]
        parts = iter(stratified_split(y.numpy(), [f for f in wanted if f > 0], self.seed))
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
    Inputs with NaN or inf are refused (``ValueError`` naming the argument).

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
        self._given = {"val": self._given_pair("val", val), "test": self._given_pair("test", test)}
        labels = [self._y] + [p[1] for p in self._given.values() if p is not None]
        self.num_classes = max(int(t.max()) for t in labels) + 1

    def _given_pair(self, name: str, pair: Any) -> tuple[Tensor, Tensor] | None:
        """A given ``(x, y)`` split as tensors, checked against the training inputs' shape."""
        if pair is None:
            return None
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise ValueError(f"Expected `{name}` to be an (x, y) pair, but got {type(pair).__name__}.")
        px, py = _as_xy(pair[0], pair[1], name, x_name=f"{name}[0]")
        if tuple(px.shape[1:]) != self.input_shape:
            raise ValueError(f"Expected `{name}` inputs of shape (N, {', '.join(map(str, self.input_shape))}),"
                             f" but got {tuple(px.shape)}.")
        return px, py

    def setup(self, stage: str | None = None) -> None:
        if self.train_dataset is not None:
            return
        train, val, test = self._split(self._x, self._y, self.val_fraction, self.test_fraction)
        given_val, given_test = self._given["val"], self._given["test"]
        self.train_dataset = train
        self.val_dataset = TensorBatchDataset(*given_val) if given_val is not None else val
        self.test_dataset = TensorBatchDataset(*given_test) if given_test is not None else test
