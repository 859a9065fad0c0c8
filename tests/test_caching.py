"""Teacher-output caching (seed 003's "prepare distillation data"): same losses as the live teacher."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from kd_toolkit import DistillationModule, KnowledgeDistillationTraining
from kd_toolkit.data import with_sample_indices
from tests.conftest import TinyMLP


class _LossRecorder(pl.Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))


def _run(loaders, teacher, cache: bool, tmp_path):
    pl.seed_everything(3, verbose=False)
    recorder = _LossRecorder()
    kd = KnowledgeDistillationTraining(
        teacher_model=teacher, student_model=TinyMLP(), train_data_loader=loaders("train", shuffle=True),
        num_gpu_used=0, max_epoch=2, temperature=4.0, final_loss_coeff_dict={"kd_loss": 0.8, "hard_loss": 0.2},
        cache_teacher_outputs=cache, seed=3, precision=32, default_root_dir=tmp_path, callbacks=[recorder],
        enable_progress_bar=False, quiet=True, checkpointing=False,
    )
    kd.fit()
    return recorder.losses, kd.get_student_model().state_dict()


def test_cached_teacher_gives_the_live_teacher_losses(loaders, trained_teacher, tmp_path):
    live_losses, live_state = _run(loaders, trained_teacher, False, tmp_path)
    cached_losses, cached_state = _run(loaders, trained_teacher, True, tmp_path)
    assert len(live_losses) == len(cached_losses) == 2 * 19
    torch.testing.assert_close(torch.tensor(cached_losses), torch.tensor(live_losses), rtol=1e-5, atol=1e-6)
    for key in live_state:
        torch.testing.assert_close(cached_state[key], live_state[key], rtol=1e-4, atol=1e-5)


def test_cache_works_with_the_callers_own_shuffled_loader(loaders, trained_teacher, digits):
    """Module API: the caller wraps their loader; indices map each sample to its cached logits."""
    module = DistillationModule(TinyMLP(), trained_teacher, cache_teacher_outputs=True, loss_weights={"kd_loss": 1.0})
    loader = with_sample_indices(loaders("train", shuffle=True))
    trainer = pl.Trainer(max_epochs=1, limit_train_batches=3, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, loader)
    module._teacher_cache = module.build_teacher_cache(loader)
    x, y = digits["train"]
    (bx, by), idx = next(iter(loader))
    torch.testing.assert_close(module.teacher_logits(bx, idx), trained_teacher(bx), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(bx, x[idx])


class _AugmentedDigits(Dataset):
    def __init__(self, x, y):
        from torchvision import transforms

        self.x, self.y = x, y
        self.transform = transforms.Compose([transforms.RandomCrop(8, padding=1)])

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.transform(self.x[i]), self.y[i]


def test_cache_refuses_random_augmentation(digits, trained_teacher, tmp_path):
    loader = DataLoader(_AugmentedDigits(*digits["train"]), batch_size=64, shuffle=True)
    with pytest.raises(ValueError, match="random transform RandomCrop"):
        KnowledgeDistillationTraining(teacher_model=trained_teacher, student_model=TinyMLP(), train_data_loader=loader,
                                      cache_teacher_outputs=True, default_root_dir=tmp_path)


def test_cache_without_indices_is_a_clear_error(loaders, trained_teacher):
    module = DistillationModule(TinyMLP(), trained_teacher, cache_teacher_outputs=True)
    trainer = pl.Trainer(max_epochs=1, limit_train_batches=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    with pytest.raises(ValueError, match="with_sample_indices"):
        trainer.fit(module, loaders("train"))


def test_cache_needs_a_teacher():
    with pytest.raises(ValueError, match="teacher"):
        DistillationModule(TinyMLP(), None, cache_teacher_outputs=True)
