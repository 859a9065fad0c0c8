"""Deprecated: moved to :mod:`kd_toolkit.distillation` (``from kd_toolkit import DistillationModule``)."""

import warnings

from kd_toolkit.distillation.module import DistillationModule

warnings.warn("kd_toolkit.modules.distillation is deprecated; import DistillationModule from "
              "kd_toolkit.distillation (or kd_toolkit) instead.", DeprecationWarning, stacklevel=2)
__all__ = ["DistillationModule"]
