"""KnowledgeDistillationTraining: the seed-002 call form, checkpoints, precision, resume, bad input."""

from __future__ import annotations

import csv
import warnings

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from torch.utils.data import DataLoader, TensorDataset

from kd_toolkit import KnowledgeDistillationTraining
from kd_toolkit.models import create_model
from tests.conftest import TinyMLP

FAST = dict(enable_progress_bar=False, quiet=True)


def test_seed_002_call_form(tmp_path, loaders, trained_teacher):
    """Every seed-002 constructor argument, as the seed's README lists them."""
    kd = KnowledgeDistillationTraining(
        teacher_model=trained_teacher, student_model=TinyMLP(), train_data_loader=loaders("train", shuffle=True),
        val_data_loaders={"digits_val": loaders("val")}, inference_pipeline=None, num_gpu_used=0, max_epoch=2,
        optimize_method="adam", scheduler_method="linear_decay_with_warm_up", learning_rate=5e-3,
        num_lr_warm_up_epoch=1, final_loss_coeff_dict={"kd_loss": 0.7, "hard_loss": 0.3}, log_to_comet=False,
        comet_info_path="", comet_exp_name="", temperature=4, seed=32, track_grad_norm=2,
        accumulate_grad_batches=1, accelerator=None, num_nodes=1, precision=32, deterministic=True,
        resume_from_checkpoint="", logging_param={"note": "seed 002", "nested": {"a": 1}},
        default_root_dir=tmp_path, log_every_n_steps=5, **FAST,
    )
    kd.start_kd_training()
    student = kd.get_student_model()
    assert isinstance(student, TinyMLP)
    ckpts = sorted(p.name for p in kd.checkpoint_dir.iterdir())
    assert "last.ckpt" in ckpts and any(n.startswith("best-") for n in ckpts)
    assert kd.best_checkpoint and "best-" in kd.best_checkpoint
    with open(kd.run_dir / "metrics.csv") as fh:
        columns = next(csv.reader(fh))
    for key in ("train_loss_epoch", "kd_loss_epoch", "hard_loss_epoch", "val_acc", "grad_2.0_norm_total", "lr-Adam"):
        assert key in columns, key
    assert "seed 002" in (kd.run_dir / "hparams.yaml").read_text()
    # best checkpoint holds the student only, and loads with weights_only
    state = torch.load(kd.best_checkpoint, weights_only=True)["state_dict"]
    assert all(k.startswith(("student.", "criterion.")) for k in state)
    best = kd.get_student_model(best=True)
    assert isinstance(best, TinyMLP)


def test_modern_arguments_with_datamodule_and_tensorboard(tmp_path):
    from kd_toolkit.data import DigitsDataModule
    from kd_toolkit.distillation import DistillationModule

    kd = KnowledgeDistillationTraining(
        module=DistillationModule(TinyMLP(), None), datamodule=DigitsDataModule(batch_size=128), devices=1,
        strategy="auto", accelerator="cpu", max_epoch=1, tensorboard=True, default_root_dir=tmp_path,
        experiment_name="modern", limit_train_batches=3, **FAST,
    )
    kd.fit()
    assert list(kd.run_dir.glob("events.out.tfevents*")) or list(kd.run_dir.rglob("events.out.tfevents*"))
    assert kd.test(ckpt="best")[0]["test_acc"] >= 0


def test_precision_16_on_cpu_falls_back_with_one_warning(tmp_path, loaders):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        kd = KnowledgeDistillationTraining(student_model=TinyMLP(), train_data_loader=loaders("train"),
                                           num_gpu_used=0, precision=16, max_epoch=1, default_root_dir=tmp_path,
                                           limit_train_batches=2, **FAST)
        kd.fit()
    ours = [w for w in caught if "needs a CUDA GPU" in str(w.message)]
    assert len(ours) == 1 and kd.trainer.precision == "32-true"


def test_bf16_mixed_runs_on_cpu(tmp_path, loaders):
    kd = KnowledgeDistillationTraining(student_model=TinyMLP(), train_data_loader=loaders("train"), num_gpu_used=0,
                                       precision="bf16-mixed", max_epoch=1, default_root_dir=tmp_path,
                                       limit_train_batches=2, **FAST)
    kd.fit()
    assert kd.trainer.precision == "bf16-mixed"


class _CrashAt(Callback):
    """Simulates a crash (e.g. the node dies) part-way through an epoch."""

    def __init__(self, epoch: int, batch: int) -> None:
        self.epoch, self.batch = epoch, batch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            raise RuntimeError("simulated crash")


def _resume_run(tmp_path, loaders, teacher, name, **kw):
    pl.seed_everything(7, verbose=False)  # the student is built before the orchestrator seeds
    return KnowledgeDistillationTraining(
        teacher_model=teacher, student_model=TinyMLP(dropout=0.2), train_data_loader=loaders("train", shuffle=True),
        val_data_loaders={"val": loaders("val")}, num_gpu_used=0, max_epoch=3, optimize_method="sgd",
        scheduler_method="cosine_anneal", learning_rate=0.05, num_lr_warm_up_epoch=1, temperature=4.0,
        final_loss_coeff_dict={"kd_loss": 0.5, "hard_loss": 0.5}, seed=7, precision=32,
        default_root_dir=tmp_path, experiment_name=name, **FAST, **kw,
    )


def test_resume_after_interruption_reaches_the_same_weights(tmp_path, loaders, trained_teacher):
    reference = _resume_run(tmp_path, loaders, trained_teacher, "full")
    reference.fit()
    expected = reference.get_student_model().state_dict()

    crashed = _resume_run(tmp_path, loaders, trained_teacher, "crashed", callbacks=[_CrashAt(epoch=2, batch=5)])
    with pytest.raises(RuntimeError, match="simulated crash"):
        crashed.fit()
    last = crashed.last_checkpoint
    assert torch.load(last, weights_only=True)["epoch"] == 1  # end of the 2nd epoch (0-based)

    resumed = _resume_run(tmp_path, loaders, trained_teacher, "crashed", resume_from_checkpoint="last")
    assert resumed.ckpt_path == last
    resumed.fit()
    got = resumed.get_student_model().state_dict()
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value, rtol=0, atol=1e-6, msg=key)


def test_failed_checkpoint_write_keeps_the_previous_good_file(tmp_path, loaders, monkeypatch):
    kd = KnowledgeDistillationTraining(student_model=TinyMLP(), train_data_loader=loaders("train"), num_gpu_used=0,
                                       max_epoch=1, default_root_dir=tmp_path, limit_train_batches=2, **FAST)
    kd.fit()
    last = kd.last_checkpoint
    good = open(last, "rb").read()

    real_save = torch.save

    def failing_save(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        raise OSError("disk full (simulated)")

    again = KnowledgeDistillationTraining(student_model=TinyMLP(), train_data_loader=loaders("train"), num_gpu_used=0,
                                          max_epoch=2, default_root_dir=tmp_path, limit_train_batches=2,
                                          resume_from_checkpoint=last, **FAST)
    again.trainer.checkpoint_callback.dirpath = str(kd.checkpoint_dir)
    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        again.fit()
    monkeypatch.undo()
    assert open(last, "rb").read() == good
    assert torch.load(last, weights_only=True)["epoch"] == 0


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"precision": "half"}, ValueError, "Expected `precision` to be one of"),
        ({"resume_from_checkpoint": "/nonexistent/x.ckpt"}, FileNotFoundError, "does not exist"),
        ({"val_data_loaders": [1, 2]}, ValueError, r"non-empty dict \{name: DataLoader\}"),
        ({"val_data_loaders": {"v": [1, 2]}}, ValueError, "Expected `val_data_loaders\\['v'\\]` to be a torch.utils.data.DataLoader"),
        ({"max_epoch": 0}, ValueError, "max_epoch"),
        ({"num_gpu_used": -1}, ValueError, "num_gpu_used"),
        ({"accelerator": "quantum"}, ValueError, "Expected `accelerator`"),
        ({"final_loss_coeff_dict": {"kd_loss": 2.0, "hard_los": 1.0}}, ValueError, "Unknown loss-weight key"),
        ({"temperature": 0}, ValueError, "positive float"),
        ({"optimize_method": "rmsprop"}, ValueError, "adamW_distilBert"),
        ({"scheduler_method": "onecycle"}, ValueError, "linear_decay_with_warm_up"),
        ({"inference_pipeline": "not a pipeline"}, ValueError, "run_inference_pipeline"),
        ({"log_to_comet": True, "comet_info_path": "/nonexistent/comet.txt"}, FileNotFoundError, "comet"),
        ({"monitor_mode": "up"}, ValueError, "monitor_mode"),
    ],
)
def test_bad_input_is_rejected_before_training(tmp_path, loaders, trained_teacher, kwargs, error, match):
    base = dict(teacher_model=trained_teacher, student_model=TinyMLP(), train_data_loader=loaders("train"),
                num_gpu_used=0, default_root_dir=tmp_path, **FAST)
    with pytest.raises(error, match=match):
        KnowledgeDistillationTraining(**{**base, **kwargs})


def test_empty_loader_is_rejected(tmp_path):
    empty = DataLoader(TensorDataset(torch.zeros(0, 1, 8, 8), torch.zeros(0, dtype=torch.long)), batch_size=4)
    with pytest.raises(ValueError, match="empty"):
        KnowledgeDistillationTraining(student_model=TinyMLP(), train_data_loader=empty, default_root_dir=tmp_path)


def test_corrupt_checkpoint_is_rejected(tmp_path, loaders):
    bad = tmp_path / "corrupt.ckpt"
    bad.write_bytes(b"PK\x03\x04 definitely not a checkpoint")
    with pytest.raises(ValueError, match="corrupt or not a PyTorch checkpoint"):
        KnowledgeDistillationTraining(student_model=TinyMLP(), train_data_loader=loaders("train"),
                                      resume_from_checkpoint=str(bad), default_root_dir=tmp_path)
    weights_only = tmp_path / "weights.pt"
    torch.save(TinyMLP().state_dict(), weights_only)
    with pytest.raises(ValueError, match="not a Lightning training checkpoint"):
        KnowledgeDistillationTraining(student_model=TinyMLP(), train_data_loader=loaders("train"),
                                      resume_from_checkpoint=str(weights_only), default_root_dir=tmp_path)


def test_module_and_student_together_is_an_error(tmp_path, loaders):
    from kd_toolkit.distillation import DistillationModule

    with pytest.raises(ValueError, match="either `module=`"):
        KnowledgeDistillationTraining(student_model=TinyMLP(), module=DistillationModule(TinyMLP()),
                                      train_data_loader=loaders("train"), default_root_dir=tmp_path)


def test_comet_without_network_writes_an_offline_archive_in_the_run_dir(tmp_path, loaders, monkeypatch):
    import time
    import zipfile

    monkeypatch.setenv("COMET_URL_OVERRIDE", "http://127.0.0.1:9/clientlib/")  # nothing listens: refused at once
    info = tmp_path / "comet.txt"
    info.write_text("ABCDEFKEY123\nkd-project\nmy-workspace\n")
    start = time.monotonic()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        kd = KnowledgeDistillationTraining(
            student_model=TinyMLP(), train_data_loader=loaders("train"), val_data_loaders={"val": loaders("val")},
            num_gpu_used=0, max_epoch=1, log_to_comet=True, comet_info_path=str(info), comet_exp_name="offline-run",
            logging_param={"lr": 1e-3}, default_root_dir=tmp_path, limit_train_batches=3, log_every_n_steps=1, **FAST,
        )
        kd.fit()
    assert time.monotonic() - start < 25
    offline = [w for w in caught if "offline" in str(w.message).lower()]
    assert len(offline) == 1 and "ABCDEFKEY123" not in str(offline[0].message)
    archives = list(kd.run_dir.rglob("*.zip"))
    assert len(archives) == 1
    with zipfile.ZipFile(archives[0]) as zf:
        content = b"".join(zf.read(n) for n in zf.namelist())
    assert b"train_loss" in content and b"ABCDEFKEY123" not in content


def test_malformed_comet_info_fails_before_training(tmp_path, loaders):
    info = tmp_path / "comet.txt"
    info.write_text("only-a-key\n")
    with pytest.raises(ValueError, match="three"):
        KnowledgeDistillationTraining(student_model=TinyMLP(), train_data_loader=loaders("train"), log_to_comet=True,
                                      comet_info_path=str(info), default_root_dir=tmp_path)


def test_cached_teacher_with_a_datamodule_still_tests_on_its_test_split(tmp_path):
    """Regression: with `cache_teacher_outputs=True` the datamodule used to be dropped, so `test()` said
    "pass a datamodule with a test split" although one was passed."""
    from kd_toolkit.data import DigitsDataModule

    kd = KnowledgeDistillationTraining(
        teacher_model=create_model("digits_teacher"), student_model=create_model("digits_student"),
        datamodule=DigitsDataModule(batch_size=64), cache_teacher_outputs=True, num_gpu_used=0, max_epoch=1,
        default_root_dir=tmp_path, quiet=True, enable_progress_bar=False, limit_train_batches=2,
    )
    kd.fit()
    results = kd.test()
    assert results and 0.0 <= results[0]["test_acc"] <= 1.0
