"""Teacher-output caching (seed 003's "prepare distillation data"): same losses as the live teacher."""

from __future__ import annotations

import json

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

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


# ------------------------------------------------------------------ issue 15: top-k and memory-mapped caches
def _run_mode(loaders, teacher, cache, tmp_path, **module_kwargs):
    pl.seed_everything(3, verbose=False)
    recorder = _LossRecorder()
    kd = KnowledgeDistillationTraining(
        teacher_model=teacher, student_model=TinyMLP(), train_data_loader=loaders("train", shuffle=True),
        num_gpu_used=0, max_epoch=1, temperature=4.0, final_loss_coeff_dict={"kd_loss": 0.8, "hard_loss": 0.2},
        cache_teacher_outputs=cache, seed=3, precision=32, default_root_dir=tmp_path, callbacks=[recorder],
        enable_progress_bar=False, quiet=True, checkpointing=False, module_kwargs=module_kwargs,
    )
    kd.fit()
    return torch.tensor(recorder.losses)


class _CountingTeacher(torch.nn.Module):
    def __init__(self, teacher):
        super().__init__()
        self.teacher, self.calls = teacher, 0

    def forward(self, x):
        self.calls += 1
        return self.teacher(x)


def test_topk_cache_run_is_close_to_the_live_run(loaders, trained_teacher, tmp_path):
    live = _run_mode(loaders, trained_teacher, False, tmp_path)
    topk = _run_mode(loaders, trained_teacher, "topk", tmp_path, cache_k=9)
    assert len(topk) == len(live) == 19
    torch.testing.assert_close(topk, live, rtol=2e-2, atol=1e-3)


@pytest.mark.parametrize("mode", ["exact", "topk"])
def test_memory_mapped_cache_is_reused_and_equals_the_in_memory_one(loaders, trained_teacher, tmp_path, mode):
    in_memory = _run_mode(loaders, trained_teacher, mode, tmp_path, cache_k=5)
    teacher = _CountingTeacher(trained_teacher)
    first = _run_mode(loaders, teacher, mode, tmp_path, cache_k=5, cache_dir=tmp_path / "cache")
    built_calls = teacher.calls
    assert built_calls > 0 and (tmp_path / "cache" / f"teacher_cache_{mode}.json").is_file()
    second = _run_mode(loaders, teacher, mode, tmp_path, cache_k=5, cache_dir=tmp_path / "cache")
    assert teacher.calls == built_calls  # the second run skips the teacher entirely
    torch.testing.assert_close(first, in_memory)
    torch.testing.assert_close(second, in_memory)


def test_memory_mapped_cache_from_another_teacher_or_dataset_is_rebuilt(loaders, trained_teacher, digits, tmp_path):
    cache_dir = tmp_path / "cache"
    other_teacher = TinyMLP(hidden=128)
    _run_mode(loaders, trained_teacher, "exact", tmp_path, cache_dir=cache_dir)
    with pytest.warns(UserWarning, match="the teacher weights differ"):
        _run_mode(loaders, other_teacher, "exact", tmp_path, cache_dir=cache_dir)
    x, y = digits["train"]

    def reordered(split, shuffle=False):
        return DataLoader(TensorDataset(x.flip(0), y.flip(0)), batch_size=64, shuffle=shuffle)

    with pytest.warns(UserWarning, match="the dataset differs"):
        _run_mode(reordered, other_teacher, "exact", tmp_path, cache_dir=cache_dir)
    _run_mode(loaders, trained_teacher, "topk", tmp_path, cache_dir=cache_dir, cache_k=3)
    meta = cache_dir / "teacher_cache_topk.json"
    data = json.loads(meta.read_text())
    data["key"]["temperature"] = 2.0  # as if built by a run at T=2: the tail bucket is tied to T
    meta.write_text(json.dumps(data))
    with pytest.warns(UserWarning, match="the temperature differs"):
        _run_mode(loaders, trained_teacher, "topk", tmp_path, cache_dir=cache_dir, cache_k=3)


def test_cache_dir_must_be_writable_and_needs_a_cache(tmp_path, trained_teacher):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    with pytest.raises(ValueError, match="Expected `cache_dir` to be a writable directory"):
        DistillationModule(TinyMLP(), trained_teacher, cache_teacher_outputs=True, cache_dir=not_a_dir)
    with pytest.raises(ValueError, match="with `cache_dir`"):
        DistillationModule(TinyMLP(), trained_teacher, cache_dir=tmp_path)
