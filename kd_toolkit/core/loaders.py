"""DataLoader copies: the one place a loader is rebuilt with the same sampling, workers and options, and the
loader that resumes mid-epoch exactly."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from torch.utils.data import DataLoader, Dataset

from kd_toolkit.core.resume import apply_rng_state, rng_state

__all__ = ["ResumableDataLoader", "rebuild_loader"]


def rebuild_loader(loader: DataLoader, *, cls: type[DataLoader] = DataLoader, dataset: Dataset | None = None,
                   collate_fn: Callable[[Any], Any] | None = None) -> DataLoader:
    """A new ``cls`` loader with ``loader``'s sampling (shuffling, batch size, ``drop_last`` or a custom batch
    sampler), workers and options; ``dataset``/``collate_fn`` replace the loader's when given."""
    if not isinstance(loader, DataLoader):
        raise ValueError(f"Expected `loader` to be a torch DataLoader, but got {type(loader).__name__}.")
    if loader.batch_size is not None:
        sampling: dict[str, Any] = {"batch_size": loader.batch_size, "sampler": loader.sampler,
                                    "drop_last": loader.drop_last}
    elif loader.batch_sampler is not None:
        sampling = {"batch_sampler": loader.batch_sampler}
    else:
        sampling = {"batch_size": None, "sampler": loader.sampler}
    if dataset is None and not isinstance(loader.sampler, (list, tuple)) and _is_iterable(loader.dataset):
        sampling = {"batch_size": loader.batch_size, "drop_last": loader.drop_last}  # no sampler for iterables
    workers: dict[str, Any] = {k: getattr(loader, k) for k in ("pin_memory_device", "in_order") if hasattr(loader, k)}
    if loader.num_workers > 0:
        workers |= {"prefetch_factor": loader.prefetch_factor, "persistent_workers": loader.persistent_workers,
                    "multiprocessing_context": loader.multiprocessing_context}
    return cls(
        loader.dataset if dataset is None else dataset, **sampling, num_workers=loader.num_workers,
        collate_fn=loader.collate_fn if collate_fn is None else collate_fn,
        pin_memory=loader.pin_memory, timeout=loader.timeout, worker_init_fn=loader.worker_init_fn,
        generator=loader.generator, **workers,
    )


def _is_iterable(dataset: Any) -> bool:
    from torch.utils.data import IterableDataset

    return isinstance(dataset, IterableDataset)


class ResumableDataLoader(DataLoader):
    """A ``DataLoader`` that a checkpoint written mid-epoch (Ctrl-C, a crash) resumes exactly.

    Lightning saves the ``state_dict`` of a training loader that has one. This loader's holds the global RNG
    state from just before its epoch iterator was created (which fixes the shuffling order) and how many of the
    epoch's batches were trained on (counted by :class:`~kd_toolkit.core.RNGStateCallback`). On resume the next
    iterator draws the same order, skips those batches, and hands the RNG back as the checkpoint left it, so the
    rest of the epoch sees exactly the batches and random draws of an uninterrupted run.
    """

    _kd_resume: dict[str, Any] | None = None
    _kd_epoch_rng: dict[str, Any] | None = None
    _kd_done: int = 0

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        resume = self._kd_resume
        self._kd_done = 0
        if not resume:
            self._kd_epoch_rng = rng_state()
            return super().__iter__()
        self._kd_resume = None
        now = rng_state()
        apply_rng_state(resume["epoch_rng"])
        self._kd_epoch_rng = resume["epoch_rng"]
        iterator = super().__iter__()
        for _ in range(int(resume["done"])):  # the batches the checkpoint had trained on
            next(iterator)
        self._kd_done = int(resume["done"])
        apply_rng_state(now)
        return iterator

    def batch_done(self) -> None:
        """Count one trained batch of the current epoch."""
        self._kd_done = self._kd_done + 1

    def state_dict(self) -> dict[str, Any]:
        return {"epoch_rng": self._kd_epoch_rng, "done": self._kd_done}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._kd_resume = state_dict if state_dict.get("epoch_rng") and state_dict.get("done") else None
