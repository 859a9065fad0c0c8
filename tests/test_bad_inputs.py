"""Bad input across the entry points: one row per case, each asserting the error type and that the message names
the argument (and, where it helps, the value or what is allowed). Other test files add rows for their methods."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

from kd_toolkit import DistillationModule, KnowledgeDistillationTraining, knowledge_distillation_train
from kd_toolkit.optim import OptimizerSettings, build_optimizer
from tests.conftest import TinyMLP

FAST = dict(enable_progress_bar=False, quiet=True, max_epoch=1, num_gpu_used=0)


def _loader(n: int = 32, classes: int = 10, *, labels: torch.Tensor | None = None, x: torch.Tensor | None = None):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 1, 8, 8, generator=g) if x is None else x
    y = torch.randint(0, classes, (n,), generator=g) if labels is None else labels
    return DataLoader(TensorDataset(x, y), batch_size=16)


# ----------------------------------------------------------------------------------- orchestrator, at construction
ORCHESTRATOR = [
    ("seed float", {"seed": 1.5}, ValueError, "`seed`"),
    ("seed too large", {"seed": 2**40}, ValueError, "`seed`"),
    ("seed negative", {"seed": -1}, ValueError, "`seed`"),
    ("logging_param list", {"logging_param": [1, 2]}, ValueError, "`logging_param`"),
    ("unknown trainer keyword", {"max_epochs_": 3}, ValueError, "max_epochs"),
    ("typo of a trainer keyword", {"limit_train_batch": 2}, ValueError, "limit_train_batches"),
    ("criterion not callable", {"criterion": 3}, ValueError, "`criterion`"),
    ("lr nan", {"learning_rate": math.nan}, ValueError, "`lr`"),
    ("lr inf", {"learning_rate": math.inf}, ValueError, "`lr`"),
    ("lr zero", {"learning_rate": 0.0}, ValueError, "`lr`"),
    ("GPUs the machine lacks", {"num_gpu_used": 64, "accelerator": "gpu"}, ValueError, "num_gpu_used"),
    ("max_epoch zero", {"max_epoch": 0}, ValueError, "`max_epoch`"),
    ("accumulate bool", {"accumulate_grad_batches": True}, ValueError, "`accumulate_grad_batches`"),
    ("monitor_mode", {"monitor_mode": "largest"}, ValueError, "`monitor_mode`"),
    ("optimizer kwargs it does not take", {"module_kwargs": {"optimizer_kwargs": {"momentum": 0.9}}}, ValueError,
     "`optimizer_kwargs`"),
    ("scheduler typo", {"scheduler_method": "cosine"}, ValueError, "cosine_anneal"),
    ("temperature negative", {"temperature": -1.0}, ValueError, "`temperature`"),
    ("loss weight negative", {"final_loss_coeff_dict": {"kd_loss": -1.0}}, ValueError, "kd_loss"),
    ("loss weight nan", {"final_loss_coeff_dict": {"kd_loss": math.nan}}, ValueError, "kd_loss"),
    ("track_grad_norm zero", {"track_grad_norm": 0}, ValueError, "`track_grad_norm`"),
]


@pytest.mark.parametrize(("case", "kwargs", "error", "names"), ORCHESTRATOR, ids=[r[0] for r in ORCHESTRATOR])
def test_orchestrator_rejects_bad_input(tmp_path, case, kwargs, error, names):
    base = dict(teacher_model=TinyMLP(), student_model=TinyMLP(), train_data_loader=_loader(),
                default_root_dir=tmp_path, **FAST)
    with pytest.raises(error, match=names):
        KnowledgeDistillationTraining(**{**base, **kwargs})


def test_root_dir_that_is_a_file_is_refused(tmp_path):
    file = tmp_path / "runs"
    file.write_text("not a folder")
    with pytest.raises(ValueError, match="`default_root_dir`"):
        KnowledgeDistillationTraining(student_model=TinyMLP(), train_data_loader=_loader(), default_root_dir=file, **FAST)


def test_resume_from_a_checkpoint_of_another_model_names_the_keys(tmp_path):
    kd = KnowledgeDistillationTraining(student_model=TinyMLP(hidden=16), train_data_loader=_loader(),
                                       default_root_dir=tmp_path, limit_train_batches=1, **FAST)
    kd.fit()
    with pytest.raises(ValueError, match=r"does not match this run's student.*student\.net\.1\.weight"):
        KnowledgeDistillationTraining(student_model=TinyMLP(hidden=32), train_data_loader=_loader(),
                                      default_root_dir=tmp_path, resume_from_checkpoint=kd.last_checkpoint, **FAST)


# ----------------------------------------------------------------------------------- data-dependent, at fit
def _fit(tmp_path, **kwargs):
    base = dict(student_model=TinyMLP(), train_data_loader=_loader(), default_root_dir=tmp_path,
                limit_train_batches=2, **FAST)
    kd = KnowledgeDistillationTraining(**{**base, **kwargs})
    kd.fit()
    return kd


def test_training_labels_outside_the_class_range(tmp_path):
    with pytest.raises(ValueError, match=r"labels in \[0, 10\).*the training data.*from 0 to 12"):
        _fit(tmp_path, train_data_loader=_loader(labels=torch.arange(32) % 13))


def test_validation_labels_outside_the_class_range(tmp_path):
    with pytest.raises(ValueError, match=r"labels in \[0, 10\).*the val data"):
        _fit(tmp_path, val_data_loaders={"val": _loader(labels=torch.full((32,), 11))})


class _FlatOut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 10, 3)

    def forward(self, x):
        return self.conv(x)  # (B, 10, 6, 6): not (B, C)


def test_a_student_whose_output_is_not_batch_by_classes(tmp_path):
    with pytest.raises(ValueError, match=r"logits of shape \(batch, num_classes\).*\(16, 10, 6, 6\)"):
        _fit(tmp_path, student_model=_FlatOut())


def test_nan_in_validation_inputs_is_refused_before_a_checkpoint_is_chosen_on_it(tmp_path):
    x = torch.rand(32, 1, 8, 8)
    x[3, 0, 0, 0] = math.nan
    with pytest.raises(ValueError, match="finite val inputs.*'val'.*NaN or inf"):
        _fit(tmp_path, val_data_loaders={"val": _loader(x=x)})


class _Nothing(IterableDataset):
    def __iter__(self):
        return iter(())


def test_a_training_loader_that_yields_nothing(tmp_path):
    with pytest.raises(ValueError, match="yielded no batches"):
        _fit(tmp_path, train_data_loader=DataLoader(_Nothing(), batch_size=4))


def test_monitor_naming_a_metric_no_loader_logs_lists_the_logged_ones(tmp_path):
    with pytest.raises(ValueError, match=r"`monitor`.*'val_accuracy' is not logged.*'val_acc'"):
        _fit(tmp_path, val_data_loaders={"val": _loader()}, monitor="val_accuracy")


# ----------------------------------------------------------------------------------- seed 001 and the module
def test_seed_001_optimizer_over_other_parameters_is_refused():
    student, teacher, other = TinyMLP(), TinyMLP(), TinyMLP()
    with pytest.raises(ValueError, match="`optimizer` instance.*student's parameters"):
        knowledge_distillation_train(teacher, student, _loader(), nn.CrossEntropyLoss(),
                                     torch.optim.SGD(other.parameters(), lr=0.1))


@pytest.mark.parametrize("device", ["cude", "gpu:0", 3.5])
def test_seed_001_device_outside_cpu_cuda(device):
    student = TinyMLP()
    with pytest.raises(ValueError, match="`device`"):
        knowledge_distillation_train(TinyMLP(), student, _loader(), nn.CrossEntropyLoss(),
                                     torch.optim.SGD(student.parameters(), lr=0.1), device=device)


MODULE = [
    ("student not a module", {"student": "mlp"}, ValueError, "`student`"),
    ("teacher not a module", {"teacher": 3}, ValueError, "`teacher`"),
    ("unknown optimizer keyword", {"lrr": 0.1}, ValueError, "'lrr'.*Did you mean 'lr'"),
    ("optimizer preset typo", {"optimizer": "adamw"}, ValueError, "`optimizer`"),
    ("scheduler_kwargs key", {"scheduler_kwargs": {"stepsize": 3}}, ValueError, "scheduler_kwargs"),
    ("warmup negative", {"warmup_epochs": -1}, ValueError, "`warmup_epochs`"),
    ("cache not bool", {"cache_teacher_outputs": "yes"}, ValueError, "`cache_teacher_outputs`"),
    ("loss key needs teacher", {"teacher": None, "loss_weights": {"kd_loss": 1.0}}, ValueError, "need a teacher"),
]


@pytest.mark.parametrize(("case", "kwargs", "error", "names"), MODULE, ids=[r[0] for r in MODULE])
def test_distillation_module_rejects_bad_input(case, kwargs, error, names):
    base = dict(student=TinyMLP(), teacher=TinyMLP())
    with pytest.raises(error, match=names):
        DistillationModule(**{**base, **kwargs})


def test_optimizer_kwargs_are_checked_against_the_optimizer_class():
    with pytest.raises(ValueError, match=r"`optimizer_kwargs`.*Adam.*\['momentum'\]"):
        build_optimizer("adam", TinyMLP().parameters(), lr=0.1, momentum=0.9)
    assert OptimizerSettings.from_kwargs({"optimizer": torch.optim.SGD, "optimizer_kwargs": {"momentum": 0.9}})


def test_numpy_ints_are_accepted_where_ints_are(tmp_path):
    kd = KnowledgeDistillationTraining(student_model=TinyMLP(), train_data_loader=_loader(), default_root_dir=tmp_path,
                                       seed=np.int64(3), **{**FAST, "max_epoch": np.int64(1)})
    assert kd.seed == 3 and isinstance(Path(kd.root_dir), Path)
