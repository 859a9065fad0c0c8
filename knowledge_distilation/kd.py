"""The original project's module path `knowledge_distilation.kd`; the function is kd_toolkit's."""

from kd_toolkit.api import knowledge_distillation_train

__all__ = ["knowledge_distillation_train"]
