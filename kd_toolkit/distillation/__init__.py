"""Teacher → student distillation: :class:`DistillationModule` and the teacher-output cache, exact or top-k, in
memory or memory-mapped under ``cache_dir`` (imported lazily)."""

from __future__ import annotations

from kd_toolkit._lazy import lazy_exports

_LAZY = {
    "DistillationModule": "kd_toolkit.distillation.module",
    "IndexedDataset": "kd_toolkit.distillation.cache",
    "TopKCache": "kd_toolkit.distillation.cache",
    "build_teacher_cache": "kd_toolkit.distillation.cache",
    "build_topk_teacher_cache": "kd_toolkit.distillation.cache",
    "cache_key": "kd_toolkit.distillation.persist",
    "cached_training_loader": "kd_toolkit.distillation.cache",
    "compress_topk": "kd_toolkit.distillation.topk",
    "dataset_digest": "kd_toolkit.distillation.persist",
    "find_random_transform": "kd_toolkit.distillation.cache",
    "topk_soft_target_log_probs": "kd_toolkit.distillation.topk",
    "with_sample_indices": "kd_toolkit.distillation.cache",
}
__all__ = sorted(_LAZY)


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())
