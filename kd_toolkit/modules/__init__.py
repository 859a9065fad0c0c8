"""LightningModules: teacher/student distillation, FitNets and early exits (imported lazily)."""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "DistillationModule": "kd_toolkit.distillation.module",
    "FitNetsModule": "kd_toolkit.fitnets.module",
    "FitNetsStageCallback": "kd_toolkit.fitnets.module",
    "EarlyExitModule": "kd_toolkit.early_exit.module",
}
__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'kd_toolkit.modules' has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name]), name)
