"""Deprecated: moved to :mod:`kd_toolkit.fitnets.regressors` (this module only re-exports it)."""

import warnings

from kd_toolkit.fitnets.regressors import (
    HintRegressor,
    align_spatial,
    build_hint_regressors,
    hint_key,
    hint_path,
)

warnings.warn("kd_toolkit.adapters is deprecated; import from kd_toolkit.fitnets.regressors instead.", DeprecationWarning, stacklevel=2)

__all__ = ["HintRegressor", "align_spatial", "build_hint_regressors", "hint_key", "hint_path"]
