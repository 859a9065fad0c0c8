"""Deprecated: moved to :mod:`kd_toolkit.fitnets.seed_api` (this module only re-exports it)."""

import warnings

from kd_toolkit.fitnets.seed_api import (
    DEFAULT_CONFIG,
    compute_fitnets_loss,
    create_fitnets_config,
    extract_student_features,
    extract_teacher_features,
    load_teacher_model,
    train_epoch,
    train_fitnets,
    validate,
    visualize_feature_maps,
)

warnings.warn("kd_toolkit.fitnets_api is deprecated; import from kd_toolkit.fitnets.seed_api instead.", DeprecationWarning, stacklevel=2)

__all__ = ["DEFAULT_CONFIG", "compute_fitnets_loss", "create_fitnets_config", "extract_student_features", "extract_teacher_features", "load_teacher_model", "train_epoch", "train_fitnets", "validate", "visualize_feature_maps"]
