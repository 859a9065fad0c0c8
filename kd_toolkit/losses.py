"""Distillation losses as pure functions: no Lightning, no state.

Every function takes logits (or features) and returns a scalar tensor, averaged over the batch.
Modules only call these and log the named components.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch  # noqa: F401  (the doctests use it)
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "check_temperature",
    "cosine_logit_loss",
    "hint_loss",
    "kd_loss",
    "multi_exit_loss",
    "soft_target_loss",
]


def check_temperature(temperature: float) -> float:
    """Validate a distillation temperature and return it as a float.

    Raises:
        ValueError: if ``temperature`` is not a finite, positive number.
    """
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not (
        0 < float(temperature) < float("inf")
    ):
        raise ValueError(f"Expected `temperature` to be a positive float, but got {temperature!r}.")
    return float(temperature)


def _check_logit_pair(student_logits: Tensor, teacher_logits: Tensor) -> None:
    if student_logits.dim() != 2 or teacher_logits.dim() != 2:
        raise ValueError(
            "Expected student and teacher logits of shape (batch, num_classes), but got "
            f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}."
        )
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"Teacher and student disagree: student logits {tuple(student_logits.shape)} vs teacher "
            f"logits {tuple(teacher_logits.shape)}. Both models must output the same number of "
            "classes for the same batch."
        )


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Hinton et al. (2015) distillation loss.

    ``KL(softmax(t / T) || softmax(s / T)) * T**2``, averaged over the batch. The ``T**2`` factor keeps
    the gradient magnitude comparable to the hard-label loss when ``T`` changes.

    Args:
        student_logits: ``(B, C)`` raw student outputs.
        teacher_logits: ``(B, C)`` raw teacher outputs (no softmax applied).
        temperature: softening temperature ``T > 0``.

    Raises:
        ValueError: on a non-positive temperature or mismatched shapes.

    Example:
        >>> s = torch.tensor([[2.0, 0.0]]); t = torch.tensor([[2.0, 0.0]])
        >>> float(kd_loss(s, t, temperature=4.0))
        0.0
    """
    temperature = check_temperature(temperature)
    _check_logit_pair(student_logits, teacher_logits)
    log_p_student = F.log_softmax(student_logits / temperature, dim=-1)  # (B, C)
    log_p_teacher = F.log_softmax(teacher_logits.detach() / temperature, dim=-1)  # (B, C)
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return kl * (temperature**2)


def soft_target_loss(student_logits: Tensor, teacher_probs: Tensor, temperature: float = 1.0) -> Tensor:
    """Cross-entropy of the student's softened distribution against given soft targets, times ``T**2``.

    Use it when the teacher's *probabilities* are stored (e.g. an ensemble's averaged outputs) rather
    than its logits. It differs from :func:`kd_loss` by the teacher's entropy, a constant.

    Example:
        >>> s = torch.zeros(1, 4); p = torch.full((1, 4), 0.25)
        >>> round(float(soft_target_loss(s, p)), 4)  # log(4)
        1.3863
    """
    temperature = check_temperature(temperature)
    _check_logit_pair(student_logits, teacher_probs)
    log_p_student = F.log_softmax(student_logits / temperature, dim=-1)  # (B, C)
    return -(teacher_probs.detach() * log_p_student).sum(dim=-1).mean() * (temperature**2)


def cosine_logit_loss(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """``1 - cos(student, teacher)`` averaged over the batch (seed 002's ``cos_embed_loss``).

    Example:
        >>> round(float(cosine_logit_loss(torch.tensor([[1.0, 2.0]]), torch.tensor([[2.0, 4.0]]))), 6)
        0.0
    """
    _check_logit_pair(student_logits, teacher_logits)
    return (1.0 - F.cosine_similarity(student_logits, teacher_logits.detach(), dim=-1)).mean()


def hint_loss(student_feature: Tensor, teacher_feature: Tensor) -> Tensor:
    """FitNets hint loss (Romero et al., 2015): mean squared error between the regressed student
    feature and the teacher's hint feature, averaged over every element.

    The student feature must already be mapped to the teacher's shape (see ``kd_toolkit.fitnets.regressors``).

    Example:
        >>> float(hint_loss(torch.ones(2, 3), torch.zeros(2, 3)))
        1.0
    """
    if student_feature.shape != teacher_feature.shape:
        raise ValueError(
            f"Expected the regressed student feature to have the teacher's shape "
            f"{tuple(teacher_feature.shape)}, but got {tuple(student_feature.shape)}."
        )
    return F.mse_loss(student_feature, teacher_feature.detach())


def multi_exit_loss(
    exit_logits: Sequence[Tensor],
    target: Tensor,
    weights: Sequence[float] | None = None,
    *,
    criterion=F.cross_entropy,
    distill_temperature: float | None = None,
    distill_weight: float = 0.0,
) -> tuple[Tensor, list[Tensor]]:
    """Weighted sum of per-exit losses for an early-exit network (BranchyNet, Teerapittayanon et al. 2016).

    With ``distill_weight > 0`` each early exit also learns from the final exit's softened outputs
    (self-distillation, Phuong & Lampert, ICCV 2019): exit ``i`` gets
    ``(1 - w) * CE + w * kd_loss(exit_i, final.detach(), T)``.

    Args:
        exit_logits: one ``(B, C)`` tensor per exit, final exit last.
        target: ``(B,)`` class labels.
        weights: one weight per exit (normalised to sum to one); ``None`` means equal.
        criterion: hard-label loss ``criterion(logits, target)``.
        distill_temperature: temperature of the self-distillation term.
        distill_weight: weight ``w`` in ``[0, 1]`` of the self-distillation term on early exits.

    Returns:
        ``(total, per_exit)``: the weighted total and each exit's loss.

    Example:
        >>> logits = [torch.zeros(2, 3), torch.zeros(2, 3)]
        >>> total, parts = multi_exit_loss(logits, torch.tensor([0, 1]))
        >>> round(float(total), 4)  # log(3)
        1.0986
    """
    n = len(exit_logits)
    if weights is None:
        weights = [1.0] * n
    if len(weights) != n or any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(
            f"Expected `weights` to be {n} non-negative numbers with a positive sum, but got {list(weights)!r}."
        )
    total_weight = float(sum(weights))
    final = exit_logits[-1]
    per_exit: list[Tensor] = []
    for i, logits in enumerate(exit_logits):
        loss = criterion(logits, target)
        if distill_weight > 0 and i < n - 1:
            soft = kd_loss(logits, final.detach(), distill_temperature or 1.0)
            loss = (1.0 - distill_weight) * loss + distill_weight * soft
        per_exit.append(loss)
    total = sum(w / total_weight * loss for w, loss in zip(weights, per_exit))
    return total, per_exit
