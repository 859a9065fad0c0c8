"""What a model returns and what a loader yields, normalised once for every method."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

__all__ = ["explain_batch_error", "logits_of", "split_batch"]


def logits_of(output: Any) -> Tensor:
    """Normalise a model output to logits: a tensor, a dict with ``"logits"``, or a tuple whose first
    element is the logits (e.g. ``(logits, features)``).

    Example:
        >>> import torch
        >>> logits_of({"logits": torch.zeros(2, 3)}).shape
        torch.Size([2, 3])
    """
    if isinstance(output, Tensor):
        return output
    if isinstance(output, Mapping) and "logits" in output:
        return output["logits"]
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        return output[0]
    raise TypeError(
        "Expected the model to return logits as a tensor, a dict with a 'logits' key, or a tuple whose "
        f"first element is the logits, but got {type(output).__name__}."
    )


def split_batch(batch: Any) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Return ``(x, y, sample_index)`` from ``(x, y)``, ``(x,)``/``x``, a dict with ``"x"`` (and ``"y"``,
    ``"index"``), or ``((x, y), index)`` (the form produced by :func:`kd_toolkit.data.with_sample_indices`)."""
    if isinstance(batch, (tuple, list)):
        if len(batch) == 2 and isinstance(batch[0], (tuple, list)):
            (x, y, *_), index = batch[0], batch[1]
            return x, y, index
        if len(batch) >= 2:
            return batch[0], batch[1], None
        return batch[0], None, None
    if isinstance(batch, Mapping):
        return batch["x"], batch.get("y"), batch.get("index")
    return batch, None, None


def explain_batch_error(logits: Any, y: Any, where: str) -> ValueError | None:
    """A clear error for the usual causes of a loss failing on a batch, or ``None`` if neither applies:
    outputs that are not ``(B, C)`` logits, or labels outside ``[0, C)``. Called on the failure path only,
    so the training step never pays a host sync for it."""
    if not isinstance(logits, Tensor) or logits.dim() != 2:
        shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        return ValueError(f"Expected the model to return logits of shape (batch, num_classes) in {where}, but got "
                          f"{shape}; flatten or pool its output before the classifier.")
    if isinstance(y, Tensor) and not y.is_floating_point() and y.numel():
        low, high, classes = int(y.min()), int(y.max()), logits.shape[-1]
        if low < 0 or high >= classes:
            return ValueError(f"Expected labels in [0, {classes}) in {where} (the model has {classes} outputs), but "
                              f"got labels from {low} to {high}; check the dataset's labels or the model's class count.")
    return None
