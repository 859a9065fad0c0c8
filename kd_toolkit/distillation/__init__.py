"""Teacher → student distillation: :class:`DistillationModule` and the teacher-output cache (imported lazily)."""

from __future__ import annotations

from kd_toolkit._lazy import lazy_exports

_LAZY = {
    "DistillationModule": "kd_toolkit.distillation.module",
    "IndexedDataset": "kd_toolkit.distillation.cache",
    "build_teacher_cache": "kd_toolkit.distillation.cache",
    "cached_training_loader": "kd_toolkit.distillation.cache",
    "find_random_transform": "kd_toolkit.distillation.cache",
    "with_sample_indices": "kd_toolkit.distillation.cache",
}
__all__ = sorted(_LAZY)


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())
