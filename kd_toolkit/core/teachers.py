"""A module's teachers: one ``nn.Module``, a list or a dict of them, normalised to ``{name: module}``.

Every teacher goes through the one freezing path (:func:`freeze_teacher`: no gradients, eval mode); the module
keeps the dict out of its children, so no teacher is in an optimizer, in the student's checkpoint or in a DDP
wrapper. Names: a single teacher is ``"teacher"``, a list's are ``"0"``, ``"1"``, ..., a dict's are its keys
(used in metric names such as ``val_teacher_<name>_acc``).

Example:
    >>> from torch import nn
    >>> teachers = teacher_dict({"wide": nn.Linear(4, 3), "deep": nn.Linear(4, 3)})
    >>> list(teachers), teachers["wide"].training, teachers["wide"].weight.requires_grad
    (['wide', 'deep'], False, False)
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, Union

import torch
from torch import Tensor, nn

from kd_toolkit._checks import expected
from kd_toolkit._io import load_weights

__all__ = ["SINGLE_TEACHER", "TeacherArg", "TeacherCheckpointArg", "freeze_teacher", "load_teacher_checkpoints",
           "run_teacher", "teacher_dict"]

#: the name of a lone teacher (``teacher=module``)
SINGLE_TEACHER = "teacher"
#: what ``teacher=`` accepts (LightningCLI: ``teacher: {class_path: ...}`` or a list / dict of them)
TeacherArg = Union[nn.Module, Sequence[nn.Module], Mapping[str, nn.Module], None]
#: weights to load: one path for a lone teacher, or one path (or ``None``) per teacher
TeacherCheckpointArg = Union[str, Sequence[Union[str, None]], Mapping[str, Union[str, None]], None]
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


def freeze_teacher(teacher: nn.Module) -> nn.Module:
    """The one freezing path: no gradients, eval mode (the module keeps it out of its children, so it is never
    in an optimizer, a checkpoint of the student or a DDP wrapper)."""
    return teacher.requires_grad_(False).eval()


def teacher_dict(teacher: Any) -> dict[str, nn.Module]:
    """``{name: frozen teacher}`` from ``None``, one module, a list (or ``nn.ModuleList``) or a dict (or
    ``nn.ModuleDict``) of modules.

    Raises:
        ValueError: for an empty list/dict, a non-module entry, or a dict key unusable in a metric name.
    """
    if teacher is None:
        return {}
    if isinstance(teacher, nn.ModuleDict):
        teacher = dict(teacher.items())
    elif isinstance(teacher, nn.ModuleList):
        teacher = list(teacher)
    if isinstance(teacher, nn.Module):
        return {SINGLE_TEACHER: freeze_teacher(teacher)}
    allowed = "an nn.Module, a non-empty list of nn.Modules, a non-empty dict {name: nn.Module}, or None"
    if isinstance(teacher, Mapping):
        items = list(teacher.items())
    elif isinstance(teacher, Sequence) and not isinstance(teacher, (str, bytes)):
        items = [(str(i), t) for i, t in enumerate(teacher)]
    else:
        raise ValueError(f"Expected `teacher` to be {allowed}, but got {type(teacher).__name__}.")
    if not items:
        raise expected("teacher", allowed, teacher)
    out: dict[str, nn.Module] = {}
    for name, module in items:
        if not isinstance(name, str) or not _NAME.match(name):
            raise expected("teacher", "a dict whose keys are names of letters, digits, '_', '.' or '-' (they name "
                           "the teachers' metrics)", name)
        if not isinstance(module, nn.Module):
            raise ValueError(f"Expected `teacher[{name!r}]` to be an nn.Module, but got {type(module).__name__}.")
        out[name] = freeze_teacher(module)
    return out


def load_teacher_checkpoints(teachers: Mapping[str, nn.Module], checkpoint: TeacherCheckpointArg) -> None:
    """Load ``checkpoint`` into the teachers: a path for a lone teacher, or a list/dict of paths (``None`` skips)."""
    if not checkpoint:
        return
    if not teachers:
        raise ValueError("Expected a `teacher` architecture to load `teacher_checkpoint` into, but got None.")
    names = list(teachers)
    if isinstance(checkpoint, str):
        if len(names) != 1:
            raise expected("teacher_checkpoint", f"one path per teacher (a list of {len(names)} or a dict with keys "
                           f"{names}) for several teachers", checkpoint)
        paths: dict[str, str | None] = {names[0]: checkpoint}
    elif isinstance(checkpoint, Mapping):
        unknown = [k for k in checkpoint if k not in teachers]
        if unknown:
            raise expected("teacher_checkpoint", f"a dict with keys from {names}", checkpoint)
        paths = dict(checkpoint)
    elif isinstance(checkpoint, Sequence) and len(checkpoint) == len(names):
        paths = dict(zip(names, checkpoint))
    else:
        raise expected("teacher_checkpoint", f"a path, or {len(names)} paths (one per teacher)", checkpoint)
    for name, path in paths.items():
        if path:
            load_weights(teachers[name], path)
            freeze_teacher(teachers[name])


@torch.no_grad()
def run_teacher(teacher: nn.Module, x: Tensor) -> Any:
    """Run a frozen teacher on ``x`` in eval mode without gradients, moving it to ``x``'s device/dtype first."""
    param = next(teacher.parameters(), None)
    if param is not None and (param.device != x.device or (x.is_floating_point() and param.dtype != x.dtype)):
        teacher.to(device=x.device, dtype=x.dtype if x.is_floating_point() else None)
    if teacher.training:
        teacher.eval()
    return teacher(x)
