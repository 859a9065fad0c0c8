"""Deprecated: moved to :mod:`kd_toolkit.early_exit.seed_api`."""

import warnings

from kd_toolkit.early_exit.seed_api import early_exit_train

warnings.warn("kd_toolkit.early_exit_api is deprecated; import from kd_toolkit.early_exit.seed_api instead.",
              DeprecationWarning, stacklevel=2)
__all__ = ["early_exit_train"]
