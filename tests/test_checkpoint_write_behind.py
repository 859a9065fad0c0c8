"""Checkpoints made durable behind training (``SafeCheckpointIO(write_behind=True)``, what
``KnowledgeDistillationTraining`` uses): the files go through the states of a synchronous save in the same order,
every reader waits for them, and a step that fails in the worker leaves complete files and paths naming them."""

from __future__ import annotations

import hashlib
import os
import pickle
import threading
from pathlib import Path

import pytest
import torch

from kd_toolkit import KnowledgeDistillationTraining
from kd_toolkit._io import state_digest
from kd_toolkit.core import checkpoint as ckpt_module
from kd_toolkit.core.checkpoint import SafeCheckpointIO
from tests.conftest import TinyMLP

FAST = dict(enable_progress_bar=False, quiet=True, num_gpu_used=0, precision=32)


def _run(tmp_path, loaders, **kwargs):
    base = dict(student_model=TinyMLP(), train_data_loader=loaders("train"), val_data_loaders={"val": loaders("val")},
                max_epoch=2, default_root_dir=tmp_path, limit_train_batches=3, learning_rate=1e-2, **FAST)
    return KnowledgeDistillationTraining(**{**base, **kwargs})


def test_the_orchestrator_writes_behind_and_every_file_is_in_place_when_fit_returns(tmp_path, loaders, monkeypatch):
    real_commit, threads = ckpt_module.commit_staged, []

    def commit(tmp, path):
        threads.append(threading.current_thread().name)
        return real_commit(tmp, path)

    monkeypatch.setattr(ckpt_module, "commit_staged", commit)
    kd = _run(tmp_path, loaders)
    io = kd.trainer.strategy.checkpoint_io
    assert isinstance(io, SafeCheckpointIO) and io.write_behind
    kd.fit()
    assert threads and all(name.startswith("kd_toolkit-checkpoint") for name in threads)  # fsync off the trainer's thread
    names = sorted(p.name for p in kd.checkpoint_dir.iterdir())
    assert "last.ckpt" in names and "best.ckpt" in names and not [n for n in names if n.endswith(".tmp")]
    assert io._executor is None  # the worker thread ended with fit
    for path in (kd.best_checkpoint, kd.last_checkpoint, str(kd.checkpoint_dir / "best.ckpt")):
        assert io.load_checkpoint(path)["epoch"] in (0, 1)  # complete, digest checked
    assert torch.load(kd.last_checkpoint, weights_only=True)["epoch"] == 1
    manual = tmp_path / "manual.ckpt"
    kd.trainer.save_checkpoint(manual)  # outside a fit a save is synchronous: the file is there at once
    assert manual.is_file() and io.load_checkpoint(manual)["epoch"] == 1


def test_queued_steps_keep_their_order_and_loads_wait_for_them(tmp_path):
    io = SafeCheckpointIO(write_behind=True)
    io.begin_fit()
    a, b = tmp_path / "a.ckpt", tmp_path / "b.ckpt"
    state = {"state_dict": {"w": torch.arange(4.0)}, "global_step": 3}
    io.save_checkpoint(state, a)
    io.save_checkpoint(state, b)  # the same weights at the same step: a hard link to a, queued behind its rename
    assert io.load_checkpoint(b)["state_dict"]["w"].tolist() == [0.0, 1.0, 2.0, 3.0]
    assert os.path.samefile(a, b)
    io.remove_checkpoint(a)
    io.settle()
    assert not a.exists() and b.is_file() and not list(tmp_path.glob("*.tmp"))
    clone = pickle.loads(pickle.dumps(io))  # spawned DDP workers get a copy, without the thread
    assert clone.write_behind and clone._executor is None and not clone._active


def test_a_durability_step_that_fails_behind_training_leaves_complete_files_and_paths(tmp_path, loaders, monkeypatch):
    real_commit = ckpt_module.commit_staged
    calls = {"n": 0}

    def commit_then_fail(tmp, path):
        calls["n"] += 1
        if calls["n"] > 1:  # epoch 0's write succeeds; epoch 1's fsync fails (as on a failing disk)
            Path(tmp).unlink()
            raise OSError("Input/output error (simulated fsync failure)")
        return real_commit(tmp, path)

    monkeypatch.setattr(ckpt_module, "commit_staged", commit_then_fail)
    kd = _run(tmp_path, loaders, monitor="val_loss")
    with pytest.warns(UserWarning, match="could not be written"), pytest.raises(OSError, match="simulated fsync"):
        kd.fit()
    assert calls["n"] >= 2  # the failure happened behind training, not in the first write
    best, last = kd.best_checkpoint, kd.last_checkpoint
    assert best and last and Path(best).is_file() and Path(last).is_file()
    for path in (best, last):  # both complete and loadable, from epoch 0: nothing queued after the failure ran
        assert torch.load(path, weights_only=True)["epoch"] == 0
    assert not [p.name for p in kd.checkpoint_dir.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("tensor", [torch.randn(3, 4), torch.ones(5, dtype=torch.bfloat16), torch.tensor(7),
                                    torch.zeros(0), torch.tensor([True, False]), torch.randn(4, 6).t()])
def test_the_digest_is_the_one_stored_in_earlier_checkpoints(tensor):
    """The digest hashes the tensor bytes in place now (no copy): the value must not change."""
    expected = hashlib.sha256()
    for key, value in sorted({"b": tensor, "a": 1.5}.items()):
        expected.update(key.encode())
        if isinstance(value, torch.Tensor):
            t = value.detach().cpu().contiguous()
            expected.update(f"{t.dtype}{tuple(t.shape)}".encode())
            expected.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        else:
            expected.update(repr(value).encode())
    assert state_digest({"b": tensor, "a": 1.5}) == "sha256:" + expected.hexdigest()
