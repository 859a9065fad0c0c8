"""The teacher-output cache: sample-index wrapping, the random-transform check and the cache itself.

Caching computes the teacher's logits once per training sample and reuses them every epoch (seed 003),
which is only valid when the training inputs are the same every epoch: :func:`find_random_transform`
refuses augmented data. Batches carry their sample indices through :func:`with_sample_indices`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, IterableDataset

from kd_toolkit.core.batch import logits_of, split_batch
from kd_toolkit.core.loaders import rebuild_loader
from kd_toolkit.distillation.topk import compress_topk

__all__ = ["IndexedDataset", "TopKCache", "build_teacher_cache", "build_topk_teacher_cache", "cached_training_loader",
           "find_random_transform", "with_sample_indices"]

_RANDOM_TRANSFORMS = frozenset(
    {"ColorJitter", "AutoAugment", "RandAugment", "TrivialAugmentWide", "AugMix", "ElasticTransform",
     "GaussianBlur", "GaussianNoise", "ScaleJitter", "MixUp", "CutMix"}
)


# --------------------------------------------------------------------------------- sample indices
class IndexedDataset(Dataset):
    """Wraps a map-style dataset so that item ``i`` is ``(dataset[i], i)``.

    Batched fetches are forwarded to the wrapped dataset's ``__getitems__`` when it has one. A list
    result (torch's convention: one entry per sample) becomes ``[(sample, i), ...]``, which any
    collate handles; an already-batched result (e.g. :class:`TensorBatchDataset`) becomes
    ``(batch, LongTensor indices)`` for the collate of :func:`with_sample_indices`.

    Example:
        >>> from kd_toolkit.data import TensorBatchDataset
        >>> ds = IndexedDataset(TensorBatchDataset(torch.zeros(4, 2), torch.arange(4)))
        >>> ds[3][1]
        3
    """

    def __init__(self, dataset: Dataset) -> None:
        if isinstance(dataset, IterableDataset):
            raise ValueError("Expected `dataset` to be a map-style dataset, but got an IterableDataset.")
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[Any, int]:
        return self.dataset[index], index

    def __getitems__(self, indices: Sequence[int]) -> _IndexedBatch | list[tuple[Any, int]]:
        batched = getattr(self.dataset, "__getitems__", None)
        samples = batched(list(indices)) if callable(batched) else [self.dataset[i] for i in indices]
        if isinstance(samples, list):  # one entry per sample
            return list(zip(samples, indices))
        return _IndexedBatch((samples, torch.as_tensor(indices, dtype=torch.long)))


class _IndexedBatch(tuple):
    """``(samples_as_the_wrapped_dataset_returns_them, LongTensor (B,))``."""


class _IndexedCollate:
    """Picklable collate: ``(collate_fn(samples), LongTensor indices)``."""

    def __init__(self, collate_fn: Callable[[Any], Any]) -> None:
        self.collate_fn = collate_fn

    def __call__(self, batch: Any) -> tuple[Any, Tensor]:
        if isinstance(batch, _IndexedBatch):  # (already-batched samples, (B,) indices)
            samples, indices = batch
            return self.collate_fn(samples), indices
        if isinstance(batch, list):  # [(sample, index), ...] from a per-sample fetch
            samples = [sample for sample, _ in batch]
            return self.collate_fn(samples), torch.as_tensor([i for _, i in batch], dtype=torch.long)
        sample, index = batch  # batch_size=None: one (sample, index) pair
        return self.collate_fn(sample), torch.as_tensor(index, dtype=torch.long)


def with_sample_indices(loader: DataLoader) -> DataLoader:
    """A copy of ``loader`` whose batches are ``(original_batch, LongTensor indices)``.

    Keeps the loader's sampling (shuffling, batch size, ``drop_last`` or a custom batch sampler),
    workers and collate function. Used to cache teacher outputs by sample index.

    Example:
        >>> from kd_toolkit.data import make_loader
        >>> loader = make_loader(torch.randn(6, 2), torch.arange(6), batch_size=4, shuffle=True)
        >>> (xb, yb), idx = next(iter(with_sample_indices(loader)))
        >>> bool((yb == idx).all())
        True
    """
    if not isinstance(loader, DataLoader):
        raise ValueError(f"Expected `loader` to be a torch DataLoader, but got {type(loader).__name__}.")
    if isinstance(loader.dataset, IterableDataset):
        raise ValueError("Expected a loader over a map-style dataset, but got an IterableDataset: sample "
                         "indices are undefined for it. Use a map-style dataset to cache teacher outputs.")
    return rebuild_loader(loader, dataset=IndexedDataset(loader.dataset), collate_fn=_IndexedCollate(loader.collate_fn))


# ------------------------------------------------------------------------------------- augmentation
def _is_random_transform(obj: Any) -> bool:
    name = type(obj).__name__
    return name.startswith("Random") or name in _RANDOM_TRANSFORMS


def _search_transform(obj: Any, seen: set[int]) -> str | None:
    if obj is None or id(obj) in seen or isinstance(obj, (str, bytes, Tensor, np.ndarray)):
        return None
    seen.add(id(obj))
    if isinstance(obj, (list, tuple)):
        children: list[Any] = list(obj)
    else:
        children = [getattr(obj, a, None) for a in ("transforms", "transform", "target_transform")]
        if isinstance(obj, torch.nn.Sequential):
            children += list(obj)
    for child in children:  # inner transforms first, e.g. RandomApply([ColorJitter()]) -> "ColorJitter"
        found = _search_transform(child, seen)
        if found is not None:
            return found
    return type(obj).__name__ if _is_random_transform(obj) else None


def find_random_transform(dataset: Any) -> str | None:
    """Class name of the first random augmentation applied by ``dataset``, or ``None``.

    Looks at ``.transform``, ``.transforms`` and ``.target_transform`` (through ``Compose``,
    ``RandomApply``/``RandomChoice``/``RandomOrder`` and torchvision ``v2``), and through wrappers
    (``Subset.dataset``, ``ConcatDataset.datasets``, :class:`IndexedDataset`, any ``.dataset``).
    Cached teacher outputs are only valid when this returns ``None``.

    Example:
        >>> from torchvision import transforms as T
        >>> from kd_toolkit.data import TensorBatchDataset
        >>> class Images(TensorBatchDataset):
        ...     transform = T.Compose([T.ToTensor(), T.RandomCrop(8, padding=1)])
        >>> find_random_transform(Images(torch.zeros(2, 8, 8), torch.zeros(2)))
        'RandomCrop'
    """
    pending: list[Any] = [dataset]
    seen_datasets: set[int] = set()
    seen_transforms: set[int] = set()
    while pending:
        ds = pending.pop(0)
        if ds is None or id(ds) in seen_datasets:
            continue
        seen_datasets.add(id(ds))
        for attr in ("transform", "transforms", "target_transform"):
            found = _search_transform(getattr(ds, attr, None), seen_transforms)
            if found is not None:
                return found
        pending.append(getattr(ds, "dataset", None))
        pending.extend(getattr(ds, "datasets", None) or [])
    return None


def cached_training_loader(loader: DataLoader) -> DataLoader:
    """``loader`` with sample indices, after checking that its data is not augmented at random.

    Raises:
        ValueError: the data applies a random transform (cached outputs would not match the inputs), or the
            loader is not over a map-style dataset.
    """
    found = find_random_transform(getattr(loader, "dataset", None))
    if found is not None:
        raise ValueError(
            f"Cannot cache teacher outputs (`cache_teacher_outputs=True`): the training data applies the random "
            f"transform {found}, so the teacher would see a different input every epoch. Set "
            "`cache_teacher_outputs=False`."
        )
    return with_sample_indices(loader)


def _teacher_passes(teacher_forward: Callable[[Tensor], Any], train_loader: Any, device: torch.device,
                    to_device: Callable[[Any], Any]) -> Iterator[tuple[int, Tensor, Tensor]]:
    """``(N, sample indices (B,), float32 logits (B, C) or (B, K, C))`` over the training set, in order."""
    from pytorch_lightning.utilities import rank_zero_info

    dataset = getattr(train_loader, "dataset", None)
    if not isinstance(dataset, IndexedDataset):
        raise ValueError(
            "Expected the training loader to yield sample indices for `cache_teacher_outputs=True`; wrap it "
            "with kd_toolkit.data.with_sample_indices(loader) or train through KnowledgeDistillationTraining."
        )
    random_transform = find_random_transform(dataset)
    if random_transform is not None:
        raise ValueError(
            f"Cannot cache teacher outputs: the training data uses the random transform {random_transform}, so "
            "the teacher would see a different input every epoch. Set `cache_teacher_outputs=False`."
        )
    sequential = DataLoader(dataset, batch_size=max(256, train_loader.batch_size or 1), shuffle=False,
                            collate_fn=train_loader.collate_fn, num_workers=0)
    rank_zero_info(f"Caching teacher outputs for {len(dataset)} training samples...")
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        for batch in sequential:
            x, _, index = split_batch(to_device(batch))
            assert index is not None  # an IndexedDataset's collate always yields indices
            yield len(dataset), index, logits_of(teacher_forward(x)).float()


@torch.no_grad()
def build_teacher_cache(teacher_forward: Callable[[Tensor], Any], train_loader: Any, *, device: torch.device,
                        to_device: Callable[[Any], Any] = lambda batch: batch) -> Tensor:
    """The teacher's logits ``(N, C)`` for every training sample, row ``i`` = sample ``i`` (``(N, K, C)`` when
    ``teacher_forward`` returns ``K`` teachers' logits stacked as ``(B, K, C)``).

    ``train_loader`` must yield ``((x, y), index)`` batches (see :func:`with_sample_indices`); the cache is
    filled by a sequential pass over the same dataset and collate function, under a forked RNG so that
    building it does not shift the random stream (data order, dropout) of training.
    """
    cache: Tensor | None = None
    for n, index, logits in _teacher_passes(teacher_forward, train_loader, device, to_device):
        if cache is None:
            cache = torch.empty(n, *logits.shape[1:], device=device)
        cache[index.to(cache.device)] = logits.to(cache.device)
    if cache is None:
        raise ValueError("Expected a non-empty training set to cache teacher outputs, but got 0 samples.")
    return cache


@torch.no_grad()
def build_topk_teacher_cache(teacher_forward: Callable[[Tensor], Any], train_loader: Any, *, k: int,
                             temperature: float, device: torch.device,
                             to_device: Callable[[Any], Any] = lambda batch: batch) -> TopKCache:
    """:func:`build_teacher_cache`, compressed batch by batch to top-``k`` logits plus one tail bucket at
    ``temperature`` (see :mod:`kd_toolkit.distillation.topk`): the full logits are never held for all samples."""
    parts: list[Tensor] | None = None
    num_classes = 0
    for n, index, logits in _teacher_passes(teacher_forward, train_loader, device, to_device):
        encoded = compress_topk(logits, k, temperature)  # values (B, [K,] k), indices (B, [K,] k), tail (B, [K])
        if parts is None:
            num_classes = logits.shape[-1]
            parts = [torch.empty(n, *e.shape[1:], dtype=e.dtype, device=device) for e in encoded]
        for part, e in zip(parts, encoded):
            part[index.to(device)] = e.to(device)
    if parts is None:
        raise ValueError("Expected a non-empty training set to cache teacher outputs, but got 0 samples.")
    return TopKCache(parts[0], parts[1], parts[2], num_classes, temperature)


class TopKCache(NamedTuple):
    """A top-k teacher cache: row ``i`` = sample ``i``; ``(N, k)`` / ``(N,)`` for one teacher, ``(N, K, k)`` /
    ``(N, K)`` for several."""

    values: Tensor  # float16 top-k logits
    indices: Tensor  # int16/int32 class indices
    tail: Tensor  # float32 log-sum-exp of the other logits / temperature
    num_classes: int
    temperature: float

    def rows(self, index: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        index = index.to(self.values.device)
        return self.values.index_select(0, index), self.indices.index_select(0, index), self.tail.index_select(0, index)

    def bytes_per_sample(self) -> int:
        return sum(t[0].numel() * t.element_size() for t in (self.values, self.indices, self.tail))
