"""Deprecated: moved to :mod:`kd_toolkit.fitnets.taps` (this module only re-exports it)."""

import warnings

from kd_toolkit.fitnets.taps import (
    FeatureTaps,
    feature_shapes,
)

warnings.warn("kd_toolkit.taps is deprecated; import from kd_toolkit.fitnets.taps instead.", DeprecationWarning, stacklevel=2)

__all__ = ["FeatureTaps", "feature_shapes"]
