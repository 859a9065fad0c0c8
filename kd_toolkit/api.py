"""Seed call forms over the orchestrator: ``knowledge_distillation_train`` (seeds 001 and 000)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

__all__ = ["knowledge_distillation_train"]

#: keywords that only the seed-001 (teacher → student, one epoch) form uses
_SEED001_KEYS = {"teacher_model", "student_model", "trainloader", "teacher_percentage", "temperature", "device"}
#: keywords that only the seed-000 (early-exit) form uses
_SEED000_KEYS = {"model", "input_shape", "thresholds", "neurons_in_exit_layers", "epochs", "train_dataloader",
                 "test_dataloader", "optimizer_parameters", "training_method"}


def knowledge_distillation_train(*args: Any, **kwargs: Any) -> Any:
    """The seeds' single entry point; which form is meant is decided from the keywords.

    **Seed 001** (teacher → student, one epoch per call)::

        knowledge_distillation_train(teacher_model, student_model, trainloader, criterion, optimizer,
                                     teacher_percentage=0.5, temperature=2.0, device=None) -> float

    trains ``student_model`` for one epoch with ``loss = (1 - p) * criterion + p * kd_loss`` (Hinton's
    loss with the ``T**2`` factor, ``p = teacher_percentage``) using the caller's ``optimizer`` instance,
    which keeps its state across calls, and returns the average loss per sample.

    **Seed 000** (early exit): ``knowledge_distillation_train(model=..., input_shape=..., thresholds=...,
    neurons_in_exit_layers=..., epochs=..., train_dataloader=..., test_dataloader=..., optimizer=...,
    optimizer_parameters=..., criterion=..., training_method=...)`` returns
    ``(networks, train_losses, test_accuracies)``.

    Both forms run through :class:`~kd_toolkit.training.KnowledgeDistillationTraining`.

    Raises:
        ValueError: when keywords of both forms are mixed, or an argument is invalid.
    """
    seed001 = _SEED001_KEYS & kwargs.keys()
    seed000 = _SEED000_KEYS & kwargs.keys()
    if seed001 and seed000:
        raise ValueError(
            f"knowledge_distillation_train got keywords of two call forms: {sorted(seed001)} (seed 001, "
            f"teacher → student) and {sorted(seed000)} (seed 000, early exit). Use one form."
        )
    if seed000 and not args:
        from kd_toolkit.early_exit.seed_api import early_exit_train

        return early_exit_train(**kwargs)
    return _distill_one_epoch(*args, **kwargs)


def _distill_one_epoch(
    teacher_model: nn.Module,
    student_model: nn.Module,
    trainloader: DataLoader,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    teacher_percentage: float = 0.5,
    temperature: float = 2.0,
    device: str | torch.device | None = None,
) -> float:
    from kd_toolkit.training import KnowledgeDistillationTraining

    if isinstance(teacher_percentage, bool) or not isinstance(teacher_percentage, (int, float)) or not 0 <= teacher_percentage <= 1:
        raise ValueError(f"Expected `teacher_percentage` to be a float in [0, 1], but got {teacher_percentage!r}.")
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise ValueError(f"Expected `optimizer` to be a torch.optim.Optimizer instance, but got {optimizer!r}.")
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"Expected `device` to be 'cpu', 'cuda', 'cuda:<index>', a torch.device or None, but got "
                         f"{device!r}.") from err
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"Expected `device` to be 'cpu', 'cuda' or None, but got {str(device)!r}.")
    p = float(teacher_percentage)
    kd = KnowledgeDistillationTraining(
        teacher_model=teacher_model, student_model=student_model, train_data_loader=trainloader,
        criterion=criterion, optimize_method=optimizer, final_loss_coeff_dict={"kd_loss": p, "hard_loss": 1.0 - p},
        temperature=temperature, max_epoch=1, seed=None, track_grad_norm=None, deterministic=False,
        num_gpu_used=0 if device.type == "cpu" else 1, devices=[device.index or 0] if device.type == "cuda" else 1,
        precision=32, checkpointing=False, csv_logging=False, quiet=True, enable_progress_bar=False,
        num_sanity_val_steps=0,
    )
    kd.fit()
    return float(kd.module.epoch_loss_per_sample())  # type: ignore[operator]
