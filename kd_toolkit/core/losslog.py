"""Per-epoch loss sums on the device, and the logging cadence, in one helper.

Lightning's ``self.log(on_step=True, on_epoch=True)`` costs about 0.1 ms per key per step on CPU (40% of a
small model's step in benchmark protocol 3), and each progress-bar value is a host sync per step on a GPU.
So the loss components are summed per epoch on the device and handed to ``self.log`` only on the
trainer's logging steps and at the epoch's end.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

__all__ = ["EpochLosses", "is_logging_step"]


def _stack(total: Tensor, components: Mapping[str, Tensor], count: int) -> Tensor:
    """``(total, *components)`` detached as one float32 ``(count,)`` tensor on their device."""
    try:
        values: Tensor | None = torch.stack((total, *components.values())).detach().reshape(-1).float()
    except RuntimeError:  # mixed shapes such as () and (1,)
        values = None
    if values is None or values.numel() != count:
        values = torch.stack([v.detach().float().reshape(()) for v in (total, *components.values())])
    return values


def is_logging_step(trainer: Any, batch_idx: int) -> bool:
    """Whether ``trainer`` logs at this training batch: every ``log_every_n_steps`` optimizer steps, on the
    epoch's last batch, and on every step of a ``fast_dev_run``."""
    if trainer is None:
        return False
    if trainer.fast_dev_run or batch_idx + 1 >= trainer.num_training_batches:
        return True
    every = trainer.log_every_n_steps
    return bool(every) and (trainer.global_step + 1) % every == 0


class EpochLosses:
    """Sums of the loss total and components over an epoch, weighted by batch size, kept on the device.

    A step whose components differ from another's (e.g. a loss computed on some steps only) is kept
    under its own key, so each component is averaged over the samples it was computed on.

    Example:
        >>> losses = EpochLosses()
        >>> _ = losses.add(torch.tensor(3.0), {"hard_loss": torch.tensor(1.0)}, batch_size=2)
        >>> _ = losses.add(torch.tensor(1.0), {"hard_loss": torch.tensor(0.5)}, batch_size=2)
        >>> losses.means()
        {'train_loss': 2.0, 'hard_loss': 0.75}
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._sums: dict[tuple[str, ...], list[Any]] = {}  # names -> [(K,) sums of value * batch, samples]
        self.samples = 0

    def add(self, total: Tensor, components: Mapping[str, Tensor], batch_size: int) -> tuple[tuple[str, ...], Tensor]:
        """Add one step; returns ``(names, values)`` with ``train_loss`` first, on the loss's device."""
        names = ("train_loss", *components)
        values = _stack(total, components, len(names))  # (K,) on the loss's device: no host sync
        acc = self._sums.get(names)
        if acc is None:
            self._sums[names] = [values * batch_size, batch_size]
        else:
            acc[0].add_(values, alpha=batch_size)
            acc[1] += batch_size
        self.samples += batch_size
        return names, values

    def _totals(self) -> tuple[dict[str, Tensor], dict[str, int]]:
        sums: dict[str, Tensor] = {}
        counts: dict[str, int] = {}
        for names, (acc, count) in self._sums.items():
            for name, value in zip(names, acc.unbind()):
                sums[name] = sums[name] + value if name in sums else value
                counts[name] = counts.get(name, 0) + count
        return sums, counts

    def counts(self) -> dict[str, int]:
        """Samples each value was averaged over (this rank's), ``train_loss`` first."""
        return self._totals()[1]

    def mean_tensors(self) -> dict[str, Tensor]:
        """Per-sample means on the device (this rank's), ``train_loss`` first."""
        sums, counts = self._totals()
        return {name: sums[name] / max(1, counts[name]) for name in sums}

    def means(self, reduce: Any = None) -> dict[str, float]:
        """Per-sample means as floats; ``reduce(tensor) -> tensor`` sums over DDP ranks when given."""
        sums, counts = self._totals()
        if not sums:
            return {}
        keys = list(sums)
        stacked = torch.stack([sums[k] for k in keys])  # (K,)
        totals = torch.tensor([float(counts[k]) for k in keys], device=stacked.device)
        if reduce is not None:
            stacked, totals = reduce(stacked), reduce(totals)
        return dict(zip(keys, (stacked / totals.clamp_min(1)).tolist()))
