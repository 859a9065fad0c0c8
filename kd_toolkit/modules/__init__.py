"""LightningModules: teacher/student distillation, FitNets and early exits (imported lazily)."""

from __future__ import annotations

from kd_toolkit._lazy import lazy_exports

_LAZY = {
    "DistillationModule": "kd_toolkit.distillation.module",
    "FitNetsModule": "kd_toolkit.fitnets.module",
    "FitNetsStageCallback": "kd_toolkit.fitnets.module",
    "EarlyExitModule": "kd_toolkit.early_exit.module",
}
__all__ = sorted(_LAZY)


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())
