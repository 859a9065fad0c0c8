"""Multi-process training on CPU: DDP with 2 processes (gloo), the local stand-in for multi-GPU."""

from __future__ import annotations

import csv

import pytorch_lightning as pl
import torch
import torch.distributed as dist

from kd_toolkit import KnowledgeDistillationTraining
from tests.conftest import TinyMLP


class _DDPChecks(pl.Callback):
    """Runs inside each rank; any violated property raises and fails the run."""

    def on_train_start(self, trainer, pl_module):
        assert trainer.world_size == 2 and dist.get_backend() == "gloo"
        wrapped = {id(p) for p in trainer.strategy.model.parameters()}
        teacher = {id(p) for p in pl_module.teacher.parameters()}
        if wrapped & teacher:
            raise RuntimeError("teacher parameters are inside the DDP wrapper")
        if type(trainer.strategy.model).__name__ != "DistributedDataParallel":
            raise RuntimeError(f"expected a DDP-wrapped module, got {type(trainer.strategy.model).__name__}")

    def on_train_epoch_end(self, trainer, pl_module):
        # gradients are all-reduced: the replicas hold identical weights after every epoch
        checksum = torch.stack([p.detach().double().sum() for p in pl_module.student.parameters()]).sum()
        gathered = pl_module.all_gather(checksum)
        if not torch.allclose(gathered[0], gathered[1]):
            raise RuntimeError(f"replicas diverged: {gathered.tolist()}")
        # each rank sees half the data (DistributedSampler)
        if trainer.num_training_batches != 10:  # ceil(ceil(1200 / 2) / 64)
            raise RuntimeError(f"unexpected batches per rank: {trainer.num_training_batches}")


def test_cpu_ddp_two_processes(tmp_path, loaders, trained_teacher):
    kd = KnowledgeDistillationTraining(
        teacher_model=trained_teacher, student_model=TinyMLP(), train_data_loader=loaders("train", shuffle=True),
        val_data_loaders={"val": loaders("val")}, accelerator="cpu", devices=2, strategy="ddp_spawn",
        max_epoch=2, learning_rate=5e-3, temperature=4.0, precision=32, default_root_dir=tmp_path,
        final_loss_coeff_dict={"kd_loss": 0.5, "hard_loss": 0.5}, callbacks=[_DDPChecks()],
        enable_progress_bar=False, quiet=True,
    )
    kd.fit()
    assert kd.trainer.world_size == 2
    # the parent process knows the finished run: both checkpoint paths and the last epoch's loss
    assert kd.last_checkpoint and kd.best_checkpoint and kd.module.epoch_loss_per_sample() > 0
    assert (kd.checkpoint_dir / "last.ckpt").is_file()
    with open(kd.run_dir / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    accs = [float(r["val_acc"]) for r in rows if r.get("val_acc")]
    assert len(accs) == 2 and accs[-1] > 0.5
    # the weights trained in the workers come back to the caller's student
    state = torch.load(kd.checkpoint_dir / "last.ckpt", weights_only=True)["state_dict"]
    for key, value in kd.get_student_model().state_dict().items():
        torch.testing.assert_close(value, state[f"student.{key}"])
