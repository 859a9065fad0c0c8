"""Deprecated: moved to :mod:`kd_toolkit.early_exit.module` (``EarlyExitModule``) and
:mod:`kd_toolkit.early_exit.models` (``SplitCNN``)."""

import warnings

from kd_toolkit.early_exit.models import SplitCNN
from kd_toolkit.early_exit.module import EarlyExitModule, TrainingMethod

warnings.warn("kd_toolkit.modules.early_exit is deprecated; import EarlyExitModule from kd_toolkit.early_exit.module "
              "and SplitCNN from kd_toolkit.early_exit.models instead.", DeprecationWarning, stacklevel=2)
__all__ = ["EarlyExitModule", "SplitCNN", "TrainingMethod"]
