"""Checkpoints that are really atomic, carry a digest, and a best/last callback whose paths never point at a
file that was not written.

* :class:`SafeCheckpointIO` writes every checkpoint through a temporary file in the target directory,
  ``fsync``, ``os.replace`` (:func:`kd_toolkit._io.atomic_write`), stores a digest of the saved weights and
  verifies it on load; it always loads with ``weights_only=True``.
* :class:`SafeModelCheckpoint` is Lightning's ``ModelCheckpoint`` whose paths (``best_model_path``,
  ``last_model_path``, ...) are restored when a save fails, so they keep naming the previous, complete files.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.plugins.io import TorchCheckpointIO
from pytorch_lightning.utilities import rank_zero_warn

from kd_toolkit._io import DIGEST_KEY, atomic_link, atomic_write, check_digest, load_torch, state_digest

__all__ = ["InterruptCheckpoint", "LastCheckpoint", "MonitorCheck", "SafeCheckpointIO", "SafeModelCheckpoint",
           "last_checkpoint_path"]


class SafeCheckpointIO(TorchCheckpointIO):
    """Atomic, digested checkpoint files; safe (``weights_only``) loading.

    Example:
        >>> io = SafeCheckpointIO()
        >>> path = getfixture("tmp_path") / "x.ckpt"
        >>> io.save_checkpoint({"state_dict": {"w": torch.ones(2)}}, path)
        >>> io.load_checkpoint(path)["state_dict"]["w"].tolist()
        [1.0, 1.0]
    """

    def __init__(self) -> None:
        super().__init__()
        self._previous: tuple[Any, str, str] | None = None  # (global step, digest, path) of the last file written

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not take `storage_options`, but got {storage_options!r}.")
        digest = state_digest(checkpoint.get("state_dict", {}))
        step, previous = checkpoint.get("global_step"), self._previous
        if previous is not None and previous[:2] == (step, digest) and os.path.isfile(previous[2]):
            atomic_link(previous[2], path)  # the same weights at the same step (best and last): one write, two names
            return
        checkpoint = {**checkpoint, DIGEST_KEY: digest}
        atomic_write(path, lambda tmp: torch.save(checkpoint, tmp))
        self._previous = (step, digest, os.fspath(path))

    def load_checkpoint(self, path: Any, map_location: Callable[..., Any] | Any = None,
                        weights_only: bool | None = None) -> dict[str, Any]:
        if weights_only is False:
            raise ValueError("kd_toolkit loads checkpoints with `weights_only=True` only (no pickled code is run).")
        checkpoint = load_torch(path, what="checkpoint")
        check_digest(checkpoint, path)
        return checkpoint


class SafeModelCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose recorded paths survive a failed write unchanged (the failure still raises).

    With a ``monitor`` and ``save_top_k=1``, the best checkpoint is also copied (atomically) to ``best.ckpt``
    in the same folder, a name to pass to ``kd-toolkit test --ckpt_path`` without knowing the epoch and score
    in ``best-<epoch>-<metric>.ckpt``; ``best_alias=None`` turns that off, a file name changes it.
    """

    def __init__(self, *args: Any, best_alias: str | None = "best.ckpt", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.best_alias = best_alias if self.monitor is not None and self.save_top_k == 1 else None

    def _guarded(self, hook: Callable[..., None], trainer: pl.Trainer, *args: Any) -> None:
        before = {**self.state_dict(), "best_k_models": dict(self.best_k_models)}  # a copy: saving mutates it
        try:
            hook(trainer, *args)
        except BaseException:
            self.load_state_dict(before)  # paths and scores as they were: they name complete files
            raise
        if self.best_model_path != before["best_model_path"]:
            self._copy_to_alias(trainer)

    def _copy_to_alias(self, trainer: pl.Trainer) -> None:
        best = self.best_model_path
        if not self.best_alias or not best or not trainer.is_global_zero or not os.path.isfile(best):
            return
        alias = os.path.join(os.path.dirname(best), self.best_alias)
        if os.path.abspath(alias) != os.path.abspath(best):  # a hard link: no second copy of the file
            atomic_link(best, alias)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        self._guarded(super().on_train_batch_end, trainer, pl_module, *args)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._guarded(super().on_train_epoch_end, trainer, pl_module)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._guarded(super().on_validation_end, trainer, pl_module)


class MonitorCheck(pl.Callback):
    """Fail early, with the names that exist, when the checkpoint ``monitor`` names a metric no loader logs.

    Checked when the first validation (the sanity check included) or, for a ``train_*`` monitor, the first
    training epoch ends; Lightning itself would only fail after a whole epoch with a less helpful message.
    """

    def __init__(self, monitor: str) -> None:
        self.monitor = monitor
        self._checked = False

    def _check(self, trainer: pl.Trainer) -> None:
        logged = sorted(trainer.callback_metrics)
        if self._checked or not logged:  # nothing logged at all: another check says why (e.g. no batches)
            return
        if self.monitor not in logged:
            raise ValueError(f"Expected `monitor` to name a logged metric, but {self.monitor!r} is not logged; the "
                             f"metrics logged are {logged}.")
        self._checked = True

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.monitor.startswith("train"):
            self._check(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.monitor.startswith("train"):
            self._check(trainer)


class InterruptCheckpoint(pl.Callback):
    """Ctrl-C or an exception during ``fit`` writes a resumable checkpoint, and says where it is.

    Not Lightning's ``OnExceptionCheckpoint``: with that callback present, Lightning turns every
    ``fit(ckpt_path=None)`` into ``ckpt_path="last"`` (and warns), i.e. a new run could silently resume.
    """

    def __init__(self, dirpath: str | os.PathLike[str], filename: str = "interrupted") -> None:
        self.ckpt_path = os.path.join(os.fspath(dirpath), f"{filename}.ckpt")

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if trainer.global_step == 0:  # nothing trained yet (e.g. bad input found by a check): nothing to keep
            return
        trainer.save_checkpoint(self.ckpt_path)
        rank_zero_warn(f"Training stopped ({type(exception).__name__}); a resumable checkpoint was written to "
                       f"{self.ckpt_path!r}: pass it as `resume_from_checkpoint` to continue.")


class LastCheckpoint(SafeModelCheckpoint):
    """``last.ckpt`` after every epoch. Lightning's ``save_last`` writes it only when a best checkpoint is written
    in the same step, so after an epoch without improvement "last" would silently be an older epoch."""

    def __init__(self, dirpath: str | os.PathLike[str]) -> None:
        super().__init__(dirpath=dirpath, filename="last", monitor=None, save_top_k=1, enable_version_counter=False,
                         best_alias=None)


def last_checkpoint_path(trainer: pl.Trainer) -> str | None:
    """The newest "last" checkpoint the trainer's checkpoint callbacks wrote (``LastCheckpoint`` or ``save_last``)."""
    for callback in trainer.checkpoint_callbacks:
        if isinstance(callback, LastCheckpoint) and callback.best_model_path:
            return str(callback.best_model_path)
        if isinstance(callback, ModelCheckpoint) and callback.last_model_path:
            return str(callback.last_model_path)
    return None
