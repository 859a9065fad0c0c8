"""Import shim with the seeds' spelling: ``from knowledge_distilation import knowledge_distillation_train``.

The original projects' own module paths work too: ``knowledge_distilation.knowledge_distilation``,
``knowledge_distilation.kd`` (Ilias-Paralikas/Knowldedge_Distillation) and
``knowledge_distilation.knowledge_distilation_train_function`` (levgiorg/KnowledgeDistillation).

Example:
    >>> from knowledge_distilation import knowledge_distillation_train
    >>> from knowledge_distilation.kd import knowledge_distillation_train as same
    >>> same is knowledge_distillation_train
    True
"""

from kd_toolkit.api import knowledge_distillation_train

__all__ = ["knowledge_distillation_train"]
