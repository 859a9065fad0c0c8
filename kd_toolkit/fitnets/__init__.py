"""FitNets (Romero et al., "FitNets: Hints for Thin Deep Nets", ICLR 2015): hint matching, in one package.

* :mod:`~kd_toolkit.fitnets.taps`: :class:`FeatureTaps`, reading intermediate features by module path;
* :mod:`~kd_toolkit.fitnets.regressors`: :class:`HintRegressor`, :func:`build_hint_regressors`;
* :mod:`~kd_toolkit.fitnets.module`: :class:`FitNetsModule` (joint or two-stage) and :class:`FitNetsStageCallback`;
* :mod:`~kd_toolkit.fitnets.models`: the seed's models, registered in :mod:`kd_toolkit.models`;
* :mod:`~kd_toolkit.fitnets.seed_api`: seed 004's functions (``create_fitnets_config``, ``train_fitnets``, ...),
  a thin layer over :class:`FitNetsModule`; :mod:`~kd_toolkit.fitnets.seed_data` its ``prepare_dataloaders``;
  :mod:`~kd_toolkit.fitnets.seed_teacher` its ``train_teacher``, ``load_model`` and ``evaluate_model``.

Names are imported lazily (PEP 562): ``import kd_toolkit.fitnets`` loads neither Lightning nor torchvision.

Example:
    >>> from kd_toolkit.fitnets import FitNetsModule, create_fitnets_config
    >>> create_fitnets_config(model="ThinDeepCNN")["model"]
    'ThinDeepCNN'
"""

from __future__ import annotations

from kd_toolkit._lazy import lazy_exports

_SEED = "kd_toolkit.fitnets.seed_api"
_LAZY = {
    "FeatureTaps": "kd_toolkit.fitnets.taps",
    "feature_shapes": "kd_toolkit.fitnets.taps",
    "HintRegressor": "kd_toolkit.fitnets.regressors",
    "build_hint_regressors": "kd_toolkit.fitnets.regressors",
    "FitNetsModule": "kd_toolkit.fitnets.module",
    "FitNetsStageCallback": "kd_toolkit.fitnets.module",
    "DEFAULT_HINT_LAYERS": "kd_toolkit.fitnets.models",
    "FITNETS_MODELS": "kd_toolkit.fitnets.models",
    "create_fitnets_model": "kd_toolkit.fitnets.models",
    "default_hint_layers": "kd_toolkit.fitnets.models",
    **{name: _SEED for name in (
        "DEFAULT_CONFIG", "build_fitnets_module", "compute_fitnets_loss", "create_fitnets_config",
        "extract_student_features", "extract_teacher_features", "load_teacher_model", "train_epoch",
        "train_fitnets", "validate", "visualize_feature_maps", "get_teacher_path", "prepare_dataloaders",
    )},
    **{name: "kd_toolkit.fitnets.seed_teacher" for name in (
        "TEACHER_CONFIG", "create_teacher_config", "evaluate_model", "load_model", "train_teacher",
    )},
    "MultiBranchNet": "kd_toolkit.fitnets.multibranch",
    "FinalLogits": "kd_toolkit.fitnets.multibranch",
}
__all__ = sorted(_LAZY)


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())
