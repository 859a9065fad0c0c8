"""What `KnowledgeDistillationTraining` checks before it builds its module: which inputs may go together, and the
keyword arguments of the :class:`~kd_toolkit.distillation.DistillationModule` it builds (the first-class teacher
arguments merged into ``module_kwargs``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kd_toolkit._checks import check_choice, check_mapping
from kd_toolkit.losses import MIXING_MODES


def check_exclusive(module: Any, student: Any, teacher: Any, datamodule: Any, train_loader: Any) -> None:
    """A ready ``module`` or a student (and teachers); a ``datamodule`` or a training loader; never both."""
    if module is not None and (student is not None or teacher is not None):
        raise ValueError("Pass either `module=` or `student_model=`/`teacher_model=`, not both.")
    if module is None and student is None:
        raise ValueError("Expected a `student_model` (nn.Module) or a ready `module=` LightningModule, but got neither.")
    if datamodule is not None and train_loader is not None:
        raise ValueError("Pass either `datamodule=` or `train_data_loader=`, not both.")
    if datamodule is None and train_loader is None:
        raise ValueError("Expected a `train_data_loader` (DataLoader) or a `datamodule=`, but got neither.")


def distillation_kwargs(module_kwargs: Mapping[str, Any] | None, *, module: Any, teacher_weights: Any,
                        teacher_mixing: str | None) -> dict[str, Any]:
    """``module_kwargs`` with ``teacher_weights``/``teacher_mixing`` added (the module validates their values).

    Each may be given once: as the orchestrator's argument or in ``module_kwargs``; neither goes with a ready
    ``module=`` (it was configured when it was built).
    """
    kwargs = check_mapping("module_kwargs", module_kwargs)
    given = {"teacher_weights": teacher_weights, "teacher_mixing": teacher_mixing}
    given = {k: v for k, v in given.items() if v is not None}
    if module is not None and given:
        raise ValueError(f"Expected no {' or '.join(f'`{k}`' for k in given)} with a ready `module=` (set "
                         f"{'them' if len(given) > 1 else 'it'} on that module), but got {given!r}.")
    for name, value in given.items():
        if name in kwargs:
            raise ValueError(f"`{name}` was given twice: as an argument ({value!r}) and in `module_kwargs` "
                             f"({kwargs[name]!r}); pass it once.")
    if "teacher_mixing" in given:
        check_choice("teacher_mixing", teacher_mixing, MIXING_MODES)
    return {**kwargs, **given}
