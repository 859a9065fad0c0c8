"""Fast in-memory loaders: a dataset that serves whole batches in one indexing step, and its collate.

torch's DataLoader calls ``__getitems__`` with a batch of indices when a dataset defines it;
:class:`TensorBatchDataset` answers with the already-batched ``(x[idx], y[idx])``, which
:func:`passthrough_collate` hands on unchanged. Shuffling uses torch's global RNG (seeded by
``seed_everything``), so a resumed run sees the same batches.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, default_collate

from kd_toolkit._checks import check_int

__all__ = ["TensorBatchDataset", "make_loader", "passthrough_collate"]


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

    Args:
        x: Inputs ``(N, ...)``.
        y: Targets ``(N, ...)``.
        batch_size: Samples per batch, a positive int.
        shuffle: Reshuffle every epoch (torch's global RNG).
        drop_last: Drop the last incomplete batch.
        num_workers: DataLoader worker processes (kept alive between epochs when positive).
        pin_memory: Pin batches in page-locked memory.

    Returns:
        The ``DataLoader``.

    Example:
        >>> loader = make_loader(torch.randn(10, 4), torch.arange(10), batch_size=4)
        >>> [tuple(xb.shape) for xb, _ in loader]
        [(4, 4), (4, 4), (2, 4)]
    """
    check_int("batch_size", batch_size, minimum=1)
    check_int("num_workers", num_workers, minimum=0)
    return DataLoader(
        TensorBatchDataset(x, y), batch_size=batch_size, shuffle=shuffle, drop_last=drop_last,
        num_workers=num_workers, collate_fn=passthrough_collate, pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
    )
