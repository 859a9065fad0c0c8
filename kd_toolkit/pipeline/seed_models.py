"""Seed 003's two MNIST architectures, registered as ``seed003_teacher`` and ``seed003_student``.

The layer names (``conv1`` ... ``fc2``) are the original's, so a state dict saved from these models
(``models/*.pth`` of :func:`kd_toolkit.pipeline.run_pipeline` on MNIST, or of
:mod:`kd_toolkit.pipeline.seed_api`) loads with ``load_state_dict`` into the original's ``TeacherModel`` and
``StudentModel`` (what its ``scripts/model_evaluator.py`` and ``scripts/digit_predictor.py`` do), and back.
Both return logits and take ``(B, 1, 28, 28)`` inputs.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from kd_toolkit._checks import check_int
from kd_toolkit.models import register_model

__all__ = ["Seed003Student", "Seed003Teacher"]


class Seed003Teacher(nn.Module):
    """Seed 003's ``TeacherModel``: three 3x3 convolutions (32, 64, 64 channels, the first two max-pooled),
    then 576 → 64 → classes with dropout 0.25 before and 0.5 after the hidden layer (93,322 parameters).

    Args:
        num_classes: Output logits.

    Example:
        >>> Seed003Teacher()(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 10])
    """

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        classes = check_int("num_classes", num_classes, minimum=1)
        self.conv1 = nn.Conv2d(1, 32, 3, 1)
        self.conv2 = nn.Conv2d(32, 64, 3, 1)
        self.conv3 = nn.Conv2d(64, 64, 3, 1)
        self.maxpool = nn.MaxPool2d(2)
        self.dropout1 = nn.Dropout(0.25)
        self.dropout2 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(64 * 3 * 3, 64)
        self.fc2 = nn.Linear(64, classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(F.relu(self.conv1(x)))  # (B, 32, 13, 13)
        x = self.maxpool(F.relu(self.conv2(x)))  # (B, 64, 5, 5)
        x = torch.flatten(F.relu(self.conv3(x)), 1)  # (B, 576)
        x = self.dropout2(F.relu(self.fc1(self.dropout1(x))))  # (B, 64)
        return self.fc2(x)  # (B, C) logits


class Seed003Student(nn.Module):
    """Seed 003's ``StudentModel``: flatten, 784 → 32 → classes with a ReLU (25,450 parameters).

    Args:
        num_classes: Output logits.

    Example:
        >>> sum(p.numel() for p in Seed003Student().parameters())
        25450
    """

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.fc1 = nn.Linear(28 * 28, 32)
        self.fc2 = nn.Linear(32, check_int("num_classes", num_classes, minimum=1))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.relu(self.fc1(torch.flatten(x, 1))))  # (B, C) logits


@register_model("seed003_teacher")
def seed003_teacher(**kwargs: Any) -> nn.Module:
    """Seed 003's MNIST teacher CNN (:class:`Seed003Teacher`)."""
    return Seed003Teacher(**kwargs)


@register_model("seed003_student")
def seed003_student(**kwargs: Any) -> nn.Module:
    """Seed 003's MNIST student MLP 784-32-10 (:class:`Seed003Student`)."""
    return Seed003Student(**kwargs)
