"""Import shim with the seeds' spelling.

Example:
    >>> from knowledge_distilation import knowledge_distillation_train
"""

from kd_toolkit.api import knowledge_distillation_train

__all__ = ["knowledge_distillation_train"]
