"""Issue 15: under CPU DDP (2 processes, ddp_spawn) every cache mode trains as the live teacher does."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from kd_toolkit import KnowledgeDistillationTraining
from tests.conftest import TinyMLP


def _ddp_student(digits, teacher, cache, tmp_path, **module_kwargs):
    torch.manual_seed(5)  # the same student initialisation in every run
    loader = DataLoader(TensorDataset(*digits["train"]), batch_size=64, shuffle=True)
    kd = KnowledgeDistillationTraining(
        teacher_model=teacher, student_model=TinyMLP(), train_data_loader=loader,
        accelerator="cpu", devices=2, strategy="ddp_spawn", max_epoch=1, learning_rate=5e-3, temperature=4.0,
        precision=32, seed=5, default_root_dir=tmp_path, final_loss_coeff_dict={"kd_loss": 0.8, "hard_loss": 0.2},
        cache_teacher_outputs=cache, enable_progress_bar=False, quiet=True, checkpointing=False,
        module_kwargs=module_kwargs,
    )
    kd.fit()
    assert kd.trainer.world_size == 2
    return kd.get_student_model().state_dict()


@pytest.fixture(scope="module")
def live_state(digits, trained_teacher, tmp_path_factory):
    return _ddp_student(digits, trained_teacher, False, tmp_path_factory.mktemp("live"))


@pytest.mark.parametrize(("cache", "kwargs", "tol"), [
    ("exact", {}, 1e-5),
    ("exact", {"cache_dir": "DIR"}, 1e-5),  # memory-mapped, written by rank 0, read by both ranks
    ("topk", {"cache_k": 9, "cache_dir": "DIR"}, 2e-2),  # an approximation of the target: close, not equal
])
def test_ddp_cached_run_matches_the_live_run(digits, trained_teacher, tmp_path, live_state, cache, kwargs, tol):
    kwargs = {k: (tmp_path / "cache" if v == "DIR" else v) for k, v in kwargs.items()}
    state = _ddp_student(digits, trained_teacher, cache, tmp_path, **kwargs)
    if "cache_dir" in kwargs:
        assert (tmp_path / "cache" / f"teacher_cache_{cache}.json").is_file()
    for key, value in live_state.items():
        torch.testing.assert_close(state[key], value, rtol=tol, atol=tol)
