"""Seed 001's call forms of ``knowledge_distillation_train`` (TARDIS KD), over the orchestrator.

* levgiorg/KnowledgeDistillation: ``(teacher_model, student_model, trainloader, criterion, optimizer,
  teacher_percentage=0.5, temperature=2, device=None) -> float``: one epoch with the caller's optimizer
  *instance* (it keeps its state across calls); returns the average loss per sample.
* its predecessor, Ilias-Paralikas/Knowldedge_Distillation: ``(teacher_model, student_model, n_epochs,
  trainloader, criterion, optimizer, optimizer_params, teacher_percentage=0.5, temperature=2)
  -> (model, losses)``: ``n_epochs`` epochs with an optimizer *class* built as
  ``optimizer(student.parameters(), **optimizer_params)``; prints ``Training Loss: x`` per epoch as the
  original does and returns a copy of the trained student with the per-epoch average losses.

Both use Hinton's loss (``KL`` of the tempered distributions, times ``T**2``) weighted by
``teacher_percentage``, not the originals' cross-entropy of raw logits against softened probabilities
(see the README's migration table).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader

from kd_toolkit._checks import check_float, check_int, check_mapping, expected

__all__ = ["distill_epochs", "distill_one_epoch"]


def _device(device: Any) -> torch.device:
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"Expected `device` to be 'cpu', 'cuda', 'cuda:<index>', a torch.device or None, but got "
                         f"{device!r}.") from err
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"Expected `device` to be 'cpu', 'cuda' or None, but got {str(device)!r}.")
    return device


def _orchestrator(teacher: nn.Module, student: nn.Module, loader: DataLoader, criterion: Any, optimizer: Any,
                  teacher_percentage: Any, temperature: Any, *, epochs: int, device: torch.device,
                  lr: float = 1e-3, optimizer_kwargs: Mapping[str, Any] | None = None,
                  callbacks: list[pl.Callback] | None = None) -> Any:
    from kd_toolkit.training import KnowledgeDistillationTraining

    p = check_float("teacher_percentage", teacher_percentage, minimum=0, maximum=1)
    return KnowledgeDistillationTraining(
        teacher_model=teacher, student_model=student, train_data_loader=loader, criterion=criterion,
        optimize_method=optimizer, learning_rate=lr, final_loss_coeff_dict={"kd_loss": p, "hard_loss": 1.0 - p},
        temperature=temperature, max_epoch=epochs, seed=None, track_grad_norm=None, deterministic=False,
        num_gpu_used=0 if device.type == "cpu" else 1, devices=[device.index or 0] if device.type == "cuda" else 1,
        precision=32, checkpointing=False, csv_logging=False, quiet=True, enable_progress_bar=False,
        num_sanity_val_steps=0, callbacks=callbacks,
        module_kwargs={"optimizer_kwargs": dict(optimizer_kwargs or {})} if optimizer_kwargs else None,
    )


def distill_one_epoch(
    teacher_model: nn.Module,
    student_model: nn.Module,
    trainloader: DataLoader,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    teacher_percentage: float = 0.5,
    temperature: float = 2.0,
    device: str | torch.device | None = None,
) -> float:
    """One epoch with the caller's optimizer instance; returns the average loss per sample (seed 001)."""
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise expected("optimizer", "a torch.optim.Optimizer instance (this call form trains one epoch with your "
                       "optimizer; pass n_epochs= and optimizer_params= to give an optimizer class)", optimizer)
    kd = _orchestrator(teacher_model, student_model, trainloader, criterion, optimizer, teacher_percentage,
                       temperature, epochs=1, device=_device(device))
    kd.fit()
    return float(kd.module.epoch_loss_per_sample())


class _EpochLosses(pl.Callback):
    """Average training loss per sample of every epoch, printed as the original prints it."""

    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        loss = float(pl_module.epoch_loss_per_sample())  # type: ignore[operator]
        self.losses.append(loss)
        if trainer.is_global_zero:
            print(f"Training Loss: {loss:.4f}")


def distill_epochs(
    teacher_model: nn.Module,
    student_model: nn.Module,
    n_epochs: int,
    trainloader: DataLoader,
    criterion: nn.Module,
    optimizer: Any,
    optimizer_params: Mapping[str, Any] | None = None,
    teacher_percentage: float = 0.5,
    temperature: float = 2.0,
    device: str | torch.device | None = None,
) -> tuple[nn.Module, list[float]]:
    """``n_epochs`` epochs with ``optimizer(student.parameters(), **optimizer_params)``; returns
    ``(copy of the trained student, per-epoch average losses)`` (seed 001's predecessor)."""
    epochs = check_int("n_epochs", n_epochs, minimum=1)
    if isinstance(optimizer, torch.optim.Optimizer) or not callable(optimizer):
        raise expected("optimizer", "an optimizer class such as torch.optim.Adam (built with `optimizer_params`)",
                       optimizer)
    params = check_mapping("optimizer_params", optimizer_params)
    lr = params.pop("lr", 1e-3)
    losses = _EpochLosses()
    kd = _orchestrator(teacher_model, student_model, trainloader, criterion, optimizer, teacher_percentage,
                       temperature, epochs=epochs, device=_device(device), lr=lr, optimizer_kwargs=params,
                       callbacks=[losses])
    kd.fit()
    return copy.deepcopy(kd.get_student_model()), losses.losses
