"""The MNIST recipe shared by protocols 1, 4 and 5: hyperparameters, the jittered teacher, kd_toolkit runs.

Everything trains through kd_toolkit's public API (:class:`KnowledgeDistillationTraining`); teachers are
memoised per process so that protocols 4 and 5 reuse protocol 1's teachers in a suite run.
"""

from __future__ import annotations

import functools
import hashlib
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from torch import nn
from torch.utils.data import DataLoader

from benchmarks._common import JitteredDataset, Split, accuracy, fit_kd_toolkit, mnist_split
from benchmarks._selection import carve_validation
from kd_toolkit._io import load_torch, save_torch
from kd_toolkit.data import make_loader, passthrough_collate
from kd_toolkit.models import create_model

#: One recipe for every MNIST run: Adam, per-step cosine decay to 0, batch 128, fp32.
BATCH, LR, SCHEDULER = 128, 1e-3, "cosine_anneal"
#: Teacher epochs in the full and quick suites (protocols 1, 4 and 5 share the teachers).
TEACHER_EPOCHS, QUICK_TEACHER_EPOCHS = 20, 2
#: Hinton et al. put most of the weight on the soft targets.
KD_WEIGHTS = {"kd_loss": 0.9, "hard_loss": 0.1}

#: Share of the 8,000 training images carved off (stratified, seed 0) as the validation split.
VAL_FRACTION = 0.1

_TEACHERS: dict[tuple[Any, ...], tuple[nn.Module, dict[str, Any]]] = {}
#: A folder shared by the suite's worker processes (``python -m benchmarks`` sets it): the first process to need a
#: teacher trains it and saves it there, under a lock; the others wait and load it (bit-identical weights).
TEACHER_DIR_ENV = "KD_BENCH_TEACHER_DIR"


def fit(student: nn.Module, teacher: nn.Module | None, loader: DataLoader, epochs: int, seed: int, *,
        temperature: float = 4.0, weights: dict[str, float] | None = None, cached: bool = False,
        callbacks: Sequence[pl.Callback] = ()) -> dict[str, Any]:
    """:func:`benchmarks._common.fit_kd_toolkit` with this recipe."""
    return fit_kd_toolkit(student, teacher, loader, epochs, seed, lr=LR, scheduler=SCHEDULER, temperature=temperature,
                          weights=(weights or KD_WEIGHTS), cached=cached, callbacks=callbacks)


def hinton_split(n_train: int | None = None, n_test: int | None = None) -> tuple[Split, Split]:
    """``(fit/test, fit/val)``: protocol 1's data, the 8,000/2,000 split with 10% of the 8,000 held out for choices.

    Teachers and students train on the fit part (7,200 images); protocols that use the same split share the
    memoised teachers (the split's key names it).
    """
    return carve_validation(mnist_split(seed=0, n_train=n_train, n_test=n_test), VAL_FRACTION, seed=0)


def teacher_for(split: Split, seed: int, epochs: int) -> tuple[nn.Module, dict[str, Any]]:
    """The 784-1200-1200-10 teacher (dropout, ±2-pixel jitter) for ``seed``, trained once per process (once per
    suite run when :data:`TEACHER_DIR_ENV` names a shared folder).

    Jitter is random augmentation, so kd_toolkit refuses to cache teacher outputs over this loader; the
    teacher trains on labels alone, so nothing is cached here anyway.
    """
    key = (split.key, seed, epochs)
    if key not in _TEACHERS:
        shared = os.environ.get(TEACHER_DIR_ENV)
        train = functools.partial(_train_teacher, split, seed, epochs)
        _TEACHERS[key] = _shared(Path(shared), key, train) if shared else train()
    return _TEACHERS[key]


def _train_teacher(split: Split, seed: int, epochs: int) -> tuple[nn.Module, dict[str, Any]]:
    start = time.perf_counter()
    pl.seed_everything(seed, verbose=False)
    teacher = create_model("mnist_teacher")
    loader = DataLoader(JitteredDataset(split.x_train, split.y_train), batch_size=BATCH, shuffle=True,
                        collate_fn=passthrough_collate)
    clock = fit(teacher, None, loader, epochs, seed)
    teacher.eval()
    info = {"acc": accuracy(teacher, split.x_test, split.y_test), "epochs": epochs,
            "epoch_s": clock["epoch_s"], "train_s": time.perf_counter() - start}
    return teacher, info


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` across processes (POSIX ``flock``; elsewhere no lock: a teacher may then be
    trained twice, never half-read, as the file is written atomically)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    with open(path, "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _shared(folder: Path, key: tuple[Any, ...], train: Callable[[], tuple[nn.Module, dict[str, Any]]]
            ) -> tuple[nn.Module, dict[str, Any]]:
    """The teacher for ``key`` from ``folder``, trained (by this process, holding the lock) if no process has."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"mnist_teacher-{hashlib.sha1(repr(key).encode()).hexdigest()[:16]}.pt"
    with _locked(path.with_suffix(".lock")):
        if path.is_file():
            saved = load_torch(path, what="shared teacher")
            teacher = create_model("mnist_teacher")
            teacher.load_state_dict(saved["state_dict"])
            return teacher.eval(), {**saved["info"], "loaded_from_shared_folder": True}
        teacher, info = train()
        save_torch({"state_dict": teacher.state_dict(), "info": info}, path)
        return teacher, info


def train_student(split: Split, name: str, teacher: nn.Module | None, seed: int, epochs: int, *,
                  temperature: float = 4.0, weights: dict[str, float] | None = None, cached: bool = True,
                  val: Split | None = None) -> dict[str, Any]:
    """Train a fresh ``name`` student (no regularisation, no jitter); ``teacher=None`` = plain training.

    Returns the test accuracy after the last epoch (``acc``), the validation accuracy (``val``, on
    ``val.x_test`` when ``val`` is given) and the epoch timings.
    """
    pl.seed_everything(seed, verbose=False)
    student = create_model(name)
    loader = make_loader(split.x_train, split.y_train, BATCH, shuffle=True)
    clock = fit(student, teacher, loader, epochs, seed, temperature=temperature, weights=weights,
                cached=cached and teacher is not None)
    out = {"acc": accuracy(student, split.x_test, split.y_test), "epoch_s": clock["epoch_s"],
           "cpu_epoch_s": clock["cpu_epoch_s"], "total_s": clock["total_s"]}
    if val is not None:
        out["val"] = accuracy(student, val.x_test, val.y_test)
    return out
