"""Seed call forms over the orchestrator: ``knowledge_distillation_train`` (seeds 001 and 000)."""

from __future__ import annotations

from typing import Any

from kd_toolkit._checks import is_int

__all__ = ["knowledge_distillation_train"]

#: keywords that only the seed-001 (teacher → student, one epoch) form uses
_SEED001_KEYS = {"teacher_model", "student_model", "trainloader", "teacher_percentage", "temperature", "device"}
#: keywords of seed 001's predecessor (several epochs, an optimizer class): returns ``(model, losses)``
_PREDECESSOR_KEYS = {"n_epochs", "optimizer_params"}
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

    **Seed 001's predecessor** (several epochs, an optimizer class)::

        knowledge_distillation_train(teacher_model, student_model, n_epochs, trainloader, criterion, optimizer,
                                     optimizer_params, teacher_percentage=0.5, temperature=2.0) -> (model, losses)

    chosen when ``n_epochs``/``optimizer_params`` are given or the third positional argument is an int.

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
    from kd_toolkit.distillation.seed_api import distill_epochs, distill_one_epoch

    if _PREDECESSOR_KEYS & kwargs.keys() or (len(args) >= 3 and is_int(args[2])):
        return distill_epochs(*args, **kwargs)
    return distill_one_epoch(*args, **kwargs)
