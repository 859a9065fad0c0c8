"""Teacher → student distillation: :class:`DistillationModule` and the teacher-output cache (imported lazily)."""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "DistillationModule": "kd_toolkit.distillation.module",
    "IndexedDataset": "kd_toolkit.distillation.cache",
    "build_teacher_cache": "kd_toolkit.distillation.cache",
    "cached_training_loader": "kd_toolkit.distillation.cache",
    "find_random_transform": "kd_toolkit.distillation.cache",
    "with_sample_indices": "kd_toolkit.distillation.cache",
}
__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'kd_toolkit.distillation' has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name]), name)
