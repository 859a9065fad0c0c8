"""Faults: corrupt files are detected, failed writes leave the previous files and paths as they were, no load path
runs pickled code, resumed runs continue their history, hyperparameters and gradient norms reach the logs."""

from __future__ import annotations

import csv
import os
import signal
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import yaml

from kd_toolkit import DistillationModule, KnowledgeDistillationTraining
from kd_toolkit._io import load_weights
from tests.conftest import TinyMLP

FAST = dict(enable_progress_bar=False, quiet=True, num_gpu_used=0)


def _run(tmp_path, loaders, **kwargs):
    base = dict(student_model=TinyMLP(), train_data_loader=loaders("train"), val_data_loaders={"val": loaders("val")},
                max_epoch=1, default_root_dir=tmp_path, limit_train_batches=3, learning_rate=1e-2, **FAST)
    return KnowledgeDistillationTraining(**{**base, **kwargs})


def _flip_tensor_bytes(path: Path, count: int = 64) -> None:
    """Overwrite ``count`` bytes in the middle of the largest tensor record of a torch zip file."""
    import zipfile

    with zipfile.ZipFile(path) as archive:
        info = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    with open(path, "r+b") as handle:
        handle.seek(info.header_offset)
        header = handle.read(30)
        start = info.header_offset + 30 + int.from_bytes(header[26:28], "little") + int.from_bytes(header[28:30], "little")
        handle.seek(start + info.file_size // 2)
        handle.write(bytes(255 - b for b in handle.read(count)[:count]) if False else os.urandom(count))


def test_flipped_bytes_in_a_checkpoint_are_detected_on_every_load_path(tmp_path, loaders):
    kd = _run(tmp_path, loaders)
    kd.fit()
    last = Path(kd.last_checkpoint)
    torch.load(last, weights_only=True)  # still a readable torch file ...
    _flip_tensor_bytes(last)
    torch.load(last, weights_only=True)  # ... even after the damage: only the digest can tell
    with pytest.raises(ValueError, match=r"last\.ckpt.*is corrupt.*digest"):
        _run(tmp_path, loaders, resume_from_checkpoint=str(last))
    with pytest.raises(ValueError, match=r"last\.ckpt.*is corrupt.*digest"):
        load_weights(TinyMLP(), last)
    with pytest.raises(ValueError, match=r"last\.ckpt.*is corrupt.*digest"):
        DistillationModule.load_from_checkpoint(last, student=TinyMLP())


def test_a_write_that_fails_half_way_leaves_files_and_paths_as_they_were(tmp_path, loaders, monkeypatch):
    kd = _run(tmp_path, loaders, max_epoch=2)
    real_save = torch.save
    calls = {"n": 0}

    def save_then_fail(obj, f, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 1:  # epoch 0 (best, and last as its hard link) succeeds; epoch 1's first write fails
            real_save(obj, f, *args, **kwargs)
            with open(f, "r+b") as handle:
                handle.truncate(4096)  # a half-written file, as on a full disk
            raise OSError("No space left on device (simulated)")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_then_fail)
    with pytest.raises(OSError, match="No space left"):
        kd.fit()
    monkeypatch.undo()
    best, last = kd.best_checkpoint, kd.last_checkpoint
    assert best and last and Path(best).is_file() and Path(last).is_file()
    for path in (best, last):  # both complete and loadable, from epoch 0
        assert torch.load(path, weights_only=True)["epoch"] == 0
    assert not [p.name for p in kd.checkpoint_dir.iterdir() if p.name.endswith(".tmp")]


class _Payload:
    """Unpickling this runs code: it creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _crafted_checkpoint(path: Path, marker: Path, template: Path) -> None:
    checkpoint = torch.load(template, weights_only=True)
    checkpoint["hyper_parameters"] = {"evil": _Payload(marker)}
    torch.save(checkpoint, path)


def test_no_load_path_runs_a_pickled_payload_even_when_torch_is_told_to(tmp_path, loaders, monkeypatch):
    kd = _run(tmp_path, loaders)
    kd.fit()
    marker = tmp_path / "pwned"
    evil, clean = tmp_path / "evil.ckpt", tmp_path / "clean.ckpt"
    clean.write_bytes(Path(kd.last_checkpoint).read_bytes())
    _crafted_checkpoint(evil, marker, clean)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # torch.load's default would now unpickle code
    with pytest.raises(ValueError):  # 1. the constructor's resume check
        _run(tmp_path, loaders, resume_from_checkpoint=str(evil))
    resumed = _run(tmp_path, loaders, resume_from_checkpoint=kd.last_checkpoint, max_epoch=2)
    _crafted_checkpoint(Path(resumed.ckpt_path), marker, clean)  # 2. replaced after the check
    with pytest.raises(ValueError):
        resumed.fit()
    _crafted_checkpoint(Path(kd.best_checkpoint), marker, clean)  # 3. test("best")
    with pytest.raises(ValueError):
        kd.test("best")
    with pytest.raises(ValueError):  # 4. load_from_checkpoint, even without weights_only=
        DistillationModule.load_from_checkpoint(evil, student=TinyMLP())
    with pytest.raises(ValueError):  # 5. the weights loader
        load_weights(TinyMLP(), evil)
    assert not marker.exists()


def test_resuming_continues_the_runs_own_history(tmp_path, loaders):
    first = _run(tmp_path, loaders, max_epoch=1)
    first.fit()
    resumed = _run(tmp_path, loaders, max_epoch=3, resume_from_checkpoint="last")
    resumed.fit()
    assert resumed.run_dir == first.run_dir  # the same version_N folder, one metrics.csv
    with open(resumed.run_dir / "metrics.csv") as handle:
        epochs = sorted({int(r["epoch"]) for r in csv.DictReader(handle) if r.get("val_acc")})
    assert epochs == [0, 1, 2]


def test_hparams_hold_every_argument_that_changes_the_result(tmp_path, loaders):
    kd = _run(tmp_path, loaders, optimize_method="sgd", learning_rate=0.05, seed=7, accumulate_grad_batches=2,
              teacher_model=TinyMLP(), temperature=3.0)
    kd.fit()
    saved = yaml.safe_load((kd.run_dir / "hparams.yaml").read_text())
    flat = {**saved, **{k.split("/", 1)[1]: v for k, v in saved.items() if k.startswith("run/")}}
    for key, value in {"optimizer": "sgd", "lr": 0.05, "seed": 7, "max_epoch": 1, "batch_size": 64,
                       "accumulate_grad_batches": 2, "precision": "32-true", "temperature": 3.0}.items():
        assert flat.get(key) == value, (key, flat.get(key))


def test_gradient_norms_reach_the_csv_on_every_logging_step(tmp_path, loaders):
    kd = _run(tmp_path, loaders, limit_train_batches=9, log_every_n_steps=3, track_grad_norm=2, max_epoch=2)
    kd.fit()
    with open(kd.run_dir / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    step_rows = [r for r in rows if r.get("train_loss_step")]
    norm_key = next(k for k in rows[0] if k.startswith("grad_2.0_norm"))
    assert len(step_rows) == 6  # steps 2, 5, 8 of two epochs
    assert all(r.get(norm_key) for r in step_rows), [(r["step"], r.get(norm_key)) for r in step_rows]


class _CtrlCAt(pl.Callback):
    """Sends this process a real SIGINT part-way through an epoch (what Ctrl-C does)."""

    def __init__(self, epoch: int, batch: int) -> None:
        self.epoch, self.batch = epoch, batch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            os.kill(os.getpid(), signal.SIGINT)


def test_ctrl_c_writes_a_checkpoint_that_resumes_to_the_same_weights(tmp_path, loaders, trained_teacher):
    from tests.test_training import _resume_run

    reference = _resume_run(tmp_path, loaders, trained_teacher, "full")
    reference.fit()
    expected = reference.get_student_model().state_dict()
    interrupted = _resume_run(tmp_path, loaders, trained_teacher, "ctrl_c", callbacks=[_CtrlCAt(epoch=1, batch=5)])
    try:
        with pytest.raises(SystemExit), pytest.warns(UserWarning, match=r"interrupted\.ckpt"):
            interrupted.fit()  # Lightning shuts down gracefully and exits with status 1
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)  # Lightning ignores SIGINT while shutting down
    saved = interrupted.checkpoint_dir / "interrupted.ckpt"
    assert torch.load(saved, weights_only=True)["loops"]["fit_loop"]["epoch_loop.batch_progress"]["current"][
        "completed"] == 5  # mid-epoch: the partial epoch is kept
    resumed = _resume_run(tmp_path, loaders, trained_teacher, "ctrl_c", resume_from_checkpoint=str(saved))
    resumed.fit()
    got = resumed.get_student_model().state_dict()
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value, rtol=0, atol=0, msg=key)


def test_a_constructor_that_fails_leaves_no_empty_run_folder(tmp_path, loaders):
    with pytest.raises(ValueError, match="strategy"):
        _run(tmp_path, loaders, strategy="no-such-strategy", tensorboard=True)
    assert not list(tmp_path.rglob("*"))
