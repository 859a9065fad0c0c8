"""Deprecated: moved to :mod:`kd_toolkit.fitnets.module` (this module only re-exports it)."""

import warnings

from kd_toolkit.fitnets.module import (
    FitNetsModule,
    FitNetsStageCallback,
)

warnings.warn("kd_toolkit.modules.fitnets is deprecated; import from kd_toolkit.fitnets.module instead.", DeprecationWarning, stacklevel=2)

__all__ = ["FitNetsModule", "FitNetsStageCallback"]
