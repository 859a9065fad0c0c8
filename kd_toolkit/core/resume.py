"""Exact resume: the global RNG states travel in the checkpoint (Lightning does not store them)."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch

__all__ = ["RNGStateCallback"]

#: where checkpoints written before this callback existed kept the state (read for compatibility)
_LEGACY_KEY = "kd_toolkit_rng_state"


def rng_state() -> dict[str, Any]:
    """The torch, CUDA, numpy and Python RNG states, as plain types (so ``weights_only`` loading works)."""
    np_state: Any = np.random.get_state()
    return {
        "torch": torch.random.get_rng_state(),
        # `is_initialized` first: it is free, while `is_available` can query the driver (milliseconds per checkpoint)
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() and torch.cuda.is_available() else [],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python": random.getstate(),
    }


def apply_rng_state(state: dict[str, Any] | None) -> None:
    """Restore states saved by :func:`rng_state` (``None`` or ``{}``: nothing)."""
    if not state:
        return
    torch.random.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))


class RNGStateCallback(pl.Callback):
    """Save the global RNG states in every checkpoint and restore them on resume, so a resumed run draws
    the same data order and dropout masks as an uninterrupted one.

    The state is applied when the checkpoint is restored, and again when the sanity-check validation ends:
    that check creates a DataLoader iterator, which draws from the global RNG, right before the training
    loop creates its first one. Every kd_toolkit module adds this callback (``configure_callbacks``).

    Example:
        >>> sorted(RNGStateCallback().state_dict())
        ['cuda', 'numpy', 'python', 'torch']
    """

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None

    @property
    def state_key(self) -> str:
        return "RNGStateCallback"

    def state_dict(self) -> dict[str, Any]:
        return rng_state()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        apply_rng_state(state_dict)
        self._pending = state_dict

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        if self._pending is None and checkpoint.get(_LEGACY_KEY):  # a checkpoint from kd_toolkit 0.1
            self.load_state_dict(checkpoint[_LEGACY_KEY])

    def on_sanity_check_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        apply_rng_state(self._pending)
        self._pending = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._pending = None

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        # A checkpoint written after the epoch's last batch resumes at the next epoch: the training loader's state
        # (see ResumableDataLoader) must then not skip a whole epoch's worth of batches of the new one.
        states = checkpoint.get("loops", {}).get("fit_loop", {}).get("state_dict", {}).get("combined_loader") or []
        for state in states:
            if isinstance(state, dict) and (state.get("done") or 0) >= trainer.num_training_batches:
                state["done"] = 0

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        done = getattr(trainer.train_dataloader, "batch_done", None)  # a ResumableDataLoader counts its batches
        if callable(done):
            done()
