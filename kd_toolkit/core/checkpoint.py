"""Checkpoints that are really atomic, carry a digest, and a best/last callback whose paths never point at a
file that was not written.

* :class:`SafeCheckpointIO` writes every checkpoint through a temporary file in the target directory,
  ``fsync``, ``os.replace`` (:func:`kd_toolkit._io.atomic_write`), stores a digest of the saved weights and
  verifies it on load; it always loads with ``weights_only=True``.
* :class:`SafeModelCheckpoint` is Lightning's ``ModelCheckpoint`` whose paths (``best_model_path``,
  ``last_model_path``, ...) are restored when a save fails, so they keep naming the previous, complete files.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.plugins.io import TorchCheckpointIO
from pytorch_lightning.utilities import rank_zero_warn

from kd_toolkit._io import DIGEST_KEY, atomic_link, check_digest, commit_staged, load_torch, stage_write, state_digest

__all__ = ["InterruptCheckpoint", "LastCheckpoint", "MonitorCheck", "SafeCheckpointIO", "SafeModelCheckpoint",
           "last_checkpoint_path"]


class SafeCheckpointIO(TorchCheckpointIO):
    """Atomic, digested checkpoint files; safe (``weights_only``) loading.

    With ``write_behind=True`` (what :class:`~kd_toolkit.KnowledgeDistillationTraining` uses), during a ``fit`` with a
    :class:`SafeModelCheckpoint` (saves outside a fit stay synchronous), a save serialises
    the checkpoint into its temporary file at once, and a worker thread then makes it durable (``fsync``) and
    renames it into place while training goes on; links and removals queue behind it, so the files on disk go
    through exactly the states of a synchronous save, in the same order, just later. Every load, the end of
    ``fit`` (``teardown``) and :meth:`settle` wait for the queue. A step that fails there (e.g. ``fsync`` on a
    full disk) cancels the steps queued after it, puts the paths of the :class:`SafeModelCheckpoint` callbacks
    back on the files that are complete, and is raised by the next checkpoint hook or at the end of ``fit``.

    Example:
        >>> io = SafeCheckpointIO()
        >>> path = getfixture("tmp_path") / "x.ckpt"
        >>> io.save_checkpoint({"state_dict": {"w": torch.ones(2)}}, path)
        >>> io.load_checkpoint(path)["state_dict"]["w"].tolist()
        [1.0, 1.0]
    """

    def __init__(self, *, write_behind: bool = False) -> None:
        super().__init__()
        self.write_behind = write_behind
        self._previous: tuple[Any, str, str] | None = None  # (global step, digest, path) of the last file written
        self._reset_queue()

    def _reset_queue(self) -> None:
        self._active = False  # deferring only while a `fit` runs (see `begin_fit`): a save outside one is synchronous
        self._executor: ThreadPoolExecutor | None = None
        self._pending: list[Future[None]] = []
        self._failure: BaseException | None = None
        self._undo: dict[int, tuple[ModelCheckpoint, dict[str, Any]]] = {}  # states that name only durable files

    def __getstate__(self) -> dict[str, Any]:  # spawned DDP workers get a copy: without the thread and queue
        state = dict(self.__dict__)
        for key in ("_active", "_executor", "_pending", "_failure", "_undo"):
            state.pop(key, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset_queue()

    def _submit(self, step: Callable[[], Any], cleanup: Callable[[], Any] | None = None) -> None:
        if not (self.write_behind and self._active):
            step()
            return
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kd_toolkit-checkpoint")
        self._pending = [f for f in self._pending if not f.done()]
        self._pending.append(self._executor.submit(self._run_step, step, cleanup))

    def _run_step(self, step: Callable[[], Any], cleanup: Callable[[], Any] | None) -> None:
        try:
            if self._failure is None:  # after a failed step, none of the later ones may change the files
                step()
                return
        except BaseException as err:  # noqa: BLE001  # kept, and raised in the trainer's thread by `settle`
            self._failure = err
        if cleanup is not None:
            cleanup()

    def begin_fit(self) -> None:
        """Defer the durability steps from now until ``teardown`` (called when a fit starts, by SafeModelCheckpoint)."""
        self._active = self.write_behind

    def remember_state(self, callback: ModelCheckpoint, state: dict[str, Any]) -> None:
        """Keep ``state`` (taken before ``callback`` queued its saves) to restore if a queued step fails."""
        if not any(not f.done() for f in self._pending) and self._failure is None:
            self._undo.clear()  # everything queued so far is on disk: older states are no longer needed
        self._undo.setdefault(id(callback), (callback, state))

    def settle(self, wait: bool = True) -> None:
        """Wait for the queued steps (``wait=False``: only look); raise the first that failed, after putting every
        :class:`SafeModelCheckpoint` that queued steps since back on the paths of complete files."""
        if wait:
            for future in self._pending:
                future.result()
            self._pending = []
        failure = self._failure
        if failure is None:
            return
        for callback, state in self._undo.values():
            callback.load_state_dict(state)
        self._undo.clear()
        self._failure, self._previous = None, None
        raise failure

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not take `storage_options`, but got {storage_options!r}.")
        digest = state_digest(checkpoint.get("state_dict", {}))
        step, previous, target = checkpoint.get("global_step"), self._previous, os.fspath(path)
        if previous is not None and previous[:2] == (step, digest) and (self.write_behind or os.path.isfile(previous[2])):
            self._submit(lambda: atomic_link(previous[2], target))  # the same weights at the same step: one file
            return
        checkpoint = {**checkpoint, DIGEST_KEY: digest}
        tmp = stage_write(target, lambda name: torch.save(checkpoint, name))  # the weights as they are now
        self._submit(lambda: commit_staged(tmp, target), cleanup=lambda: Path(tmp).unlink(missing_ok=True))
        self._previous = (step, digest, target)

    def link(self, source: str, path: str) -> None:
        """``path`` becomes another name of ``source`` (queued behind the writes; nothing when ``source`` is absent)."""
        self._submit(lambda: atomic_link(source, path) if os.path.isfile(source) else None)

    def remove_checkpoint(self, path: Any) -> None:
        if self._previous is not None and self._previous[2] == os.fspath(path):
            self._previous = None
        self._submit(lambda: super(SafeCheckpointIO, self).remove_checkpoint(path))

    def load_checkpoint(self, path: Any, map_location: Callable[..., Any] | Any = None,
                        weights_only: bool | None = None) -> dict[str, Any]:
        if weights_only is False:
            raise ValueError("kd_toolkit loads checkpoints with `weights_only=True` only (no pickled code is run).")
        self.settle()
        checkpoint = load_torch(path, what="checkpoint")
        check_digest(checkpoint, path)
        return checkpoint

    def teardown(self) -> None:
        executor, self._executor, self._active = self._executor, None, False  # the worker thread ends with the fit
        try:
            self.settle()
        finally:
            if executor is not None:
                executor.shutdown(wait=True)
        super().teardown()


def _safe_io(trainer: pl.Trainer) -> SafeCheckpointIO | None:
    io = trainer.strategy.checkpoint_io
    return io if isinstance(io, SafeCheckpointIO) else None


class SafeModelCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose recorded paths survive a failed write unchanged (the failure still raises).

    With a ``monitor`` and ``save_top_k=1``, the best checkpoint is also copied (atomically) to ``best.ckpt``
    in the same folder, a name to pass to ``kd-toolkit test --ckpt_path`` without knowing the epoch and score
    in ``best-<epoch>-<metric>.ckpt``; ``best_alias=None`` turns that off, a file name changes it.
    """

    def __init__(self, *args: Any, best_alias: str | None = "best.ckpt", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.best_alias = best_alias if self.monitor is not None and self.save_top_k == 1 else None
        given = inspect.signature(ModelCheckpoint.__init__).bind_partial(self, *args, **kwargs).arguments
        self._saves_on_batches = bool(given.get("every_n_train_steps")) or given.get("train_time_interval") is not None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        io = _safe_io(trainer)
        if io is not None and stage == "fit":
            io.begin_fit()

    def _guarded(self, hook: Callable[..., None], trainer: pl.Trainer, *args: Any) -> None:
        io = _safe_io(trainer)
        if io is not None:
            io.settle(wait=False)  # a queued write that failed since: raised here, paths already put back
        before = {**self.state_dict(), "best_k_models": dict(self.best_k_models)}  # a copy: saving mutates it
        try:
            hook(trainer, *args)
        except BaseException:
            self.load_state_dict(before)  # paths and scores as they were: they name complete files
            raise
        if io is not None:
            io.remember_state(self, before)
        if self.best_model_path != before["best_model_path"]:
            self._copy_to_alias(trainer, io)

    def _copy_to_alias(self, trainer: pl.Trainer, io: SafeCheckpointIO | None) -> None:
        best = self.best_model_path
        if not self.best_alias or not best or not trainer.is_global_zero:
            return
        alias = os.path.join(os.path.dirname(best), self.best_alias)
        if os.path.abspath(alias) == os.path.abspath(best):
            return
        if io is not None:  # a hard link, no second copy, once the best file is in place
            io.link(best, alias)
        elif os.path.isfile(best):
            atomic_link(best, alias)

    def file_exists(self, filepath: Any, trainer: pl.Trainer) -> bool:
        io = _safe_io(trainer)
        if io is not None:  # a queued file counts once it is in place (Lightning adds "-v1" to a name in use)
            io.settle()
        return bool(super().file_exists(filepath, trainer))

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if self._saves_on_batches:  # otherwise Lightning's hook saves nothing: no guard needed on every step
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
        io = _safe_io(trainer)
        try:  # a failing disk: say so, and let the exception that stopped training propagate
            trainer.save_checkpoint(self.ckpt_path)
            if io is not None:
                io.settle()  # say "written" only once it is on disk
        except OSError as err:
            rank_zero_warn(f"Training stopped ({type(exception).__name__}); the resumable checkpoint "
                           f"{self.ckpt_path!r} could not be written ({err}).")
            return
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
