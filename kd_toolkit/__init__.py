"""kd_toolkit: knowledge distillation, FitNets and early-exit networks on PyTorch Lightning."""

__version__ = "0.1.0"

from kd_toolkit.api import knowledge_distillation_train
from kd_toolkit.modules.distillation import DistillationModule
from kd_toolkit.training import KnowledgeDistillationTraining

__all__ = [
    "DistillationModule",
    "KnowledgeDistillationTraining",
    "__version__",
    "knowledge_distillation_train",
]
