"""Deprecated: moved to :mod:`kd_toolkit.fitnets.models` (this module only re-exports it)."""

import warnings

from kd_toolkit.fitnets.models import (
    DEFAULT_HINT_LAYERS,
    FITNETS_MODELS,
    ECALayer,
    MultiBranchNet,
    ThinDeepCNN,
    WideCNN,
    create_fitnets_model,
    default_hint_layers,
    resnet18,
    resnet50,
)

warnings.warn("kd_toolkit.fitnets_models is deprecated; import from kd_toolkit.fitnets.models instead.", DeprecationWarning, stacklevel=2)

__all__ = ["DEFAULT_HINT_LAYERS", "FITNETS_MODELS", "ECALayer", "MultiBranchNet", "ThinDeepCNN", "WideCNN", "create_fitnets_model", "default_hint_layers", "resnet18", "resnet50"]
