"""LightningModules: teacher/student distillation, FitNets and early exits."""

from kd_toolkit.modules.distillation import DistillationModule

__all__ = ["DistillationModule"]
