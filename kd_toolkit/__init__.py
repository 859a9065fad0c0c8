"""kd_toolkit: knowledge distillation, FitNets and early-exit networks on PyTorch Lightning.

Public names are imported lazily (PEP 562), so ``import kd_toolkit.early_exit.deploy`` on an edge device does
not pull in Lightning.

Example:
    >>> from kd_toolkit import KnowledgeDistillationTraining, knowledge_distillation_train
"""

from __future__ import annotations

from kd_toolkit._lazy import lazy_exports

__version__ = "0.1.0"

_LAZY = {
    "DistillationModule": "kd_toolkit.distillation.module",
    "FitNetsModule": "kd_toolkit.fitnets.module",
    "EarlyExitModule": "kd_toolkit.early_exit.module",
    "KnowledgeDistillationTraining": "kd_toolkit.training",
    "knowledge_distillation_train": "kd_toolkit.api",
    "train_fitnets": "kd_toolkit.fitnets.seed_api",
    "create_fitnets_config": "kd_toolkit.fitnets.seed_api",
    "create_networks": "kd_toolkit.early_exit.seed_api",
    "EarlyExitNetwork": "kd_toolkit.early_exit.network",
    "EarlyExitNetworkSegmentor": "kd_toolkit.early_exit.network",
    "calibrate_thresholds": "kd_toolkit.early_exit.calibration",
    "export_segments": "kd_toolkit.early_exit.export",
    "load_segments": "kd_toolkit.early_exit.deploy",
    "FeatureTaps": "kd_toolkit.fitnets.taps",
    "kd_loss": "kd_toolkit.losses",
}

__all__ = ["__version__", *sorted(_LAZY)]


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())
