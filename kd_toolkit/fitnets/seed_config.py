"""Seed 004's configuration: :data:`DEFAULT_CONFIG` (the seed's keys, then kd_toolkit's) and
:func:`create_fitnets_config`, every value checked with the one error template."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from kd_toolkit._checks import close_matches, expected, is_int, is_real

__all__ = ["DEFAULT_CONFIG", "FITNETS_MODEL_NAMES", "create_fitnets_config", "stage_one_epochs"]

#: The seed's model names (those of :data:`kd_toolkit.fitnets.models.FITNETS_MODELS`, without importing it).
FITNETS_MODEL_NAMES = ("ResNet18", "ResNet50", "MultiBranchNet", "ThinDeepCNN", "WideCNN")

DEFAULT_CONFIG: dict[str, Any] = {
    # --- the seed's keys and defaults
    "model": "MultiBranchNet", "teacher_model": None, "data_dir": "data", "batch_size": 32, "num_workers": 4,
    "augment": False, "epochs": 50, "lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4, "step_size": 10,
    "gamma": 0.1, "temperature": 3.0, "alpha": 0.1, "beta": 1e-3, "device": "auto", "print_freq": 100,
    "save_freq": 10, "save_dir": "checkpoints", "log_dir": "logs", "experiment_name": None, "resume": None,
    # --- kd_toolkit's additions
    "stage": "joint",          # "joint" (the seed's one-stage sum) or "two_stage" (the paper)
    "hint_layers": None,       # {student_path: teacher_path}; None: the named models' last feature maps
    "hint_epochs": None,       # two_stage: epochs of stage 1; None: max(1, epochs // 4)
    "num_classes": None,       # None: read from the data (ImageFolder classes)
    "in_channels": None,       # None: the model's default (3; 1 for ThinDeepCNN/WideCNN)
    "image_size": None,        # None: 128 (the seed's), 28 for the MNIST-sized ThinDeepCNN/WideCNN
    "seed": 42, "align": "pool", "regressor": "conv1x1", "precision": 32, "deterministic": False, "verbose": True,
}
"""Every key :func:`create_fitnets_config` accepts, with its default (the seed's first 22, then ours)."""

_PATH = (str, os.PathLike)
_CHOICES: dict[str, tuple[Any, ...]] = {
    "model": FITNETS_MODEL_NAMES, "stage": ("joint", "two_stage"), "align": ("pool", "interpolate"),
    "regressor": ("conv1x1", "conv3x3"), "device": ("auto", "cpu", "cuda", "cuda:N"),
    "precision": (16, 32, 64, "16-mixed", "bf16-mixed", "32-true", "64-true", "bf16-true"),
}


def _at_least(low: float, *, integer: bool = False, strict: bool = False, optional: bool = False) -> Callable[[Any], bool]:
    def ok(v: Any) -> bool:
        if v is None:
            return optional
        return (is_int(v) if integer else is_real(v)) and (v > low if strict else v >= low)

    return ok


def _choice(key: str) -> Callable[[Any], bool]:
    def ok(v: Any) -> bool:
        if key == "device" and isinstance(v, str) and v.startswith("cuda:"):
            return v[5:].isdigit()
        return isinstance(v, (str, int)) and not isinstance(v, bool) and v in _CHOICES[key]

    return ok


def _hint_layers_ok(v: Any) -> bool:
    return v is None or (isinstance(v, Mapping) and bool(v) and all(isinstance(k, str) and isinstance(t, str)
                                                                    for k, t in v.items()))


def _name_ok(v: Any) -> bool:
    return v is None or (isinstance(v, str) and bool(v.strip()) and "/" not in v and os.sep not in v)


_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    **{k: (_at_least(1, integer=True), "a positive int")
       for k in ("batch_size", "epochs", "step_size", "print_freq", "save_freq")},
    **{k: (_at_least(1, integer=True, optional=True), "None or a positive int")
       for k in ("hint_epochs", "num_classes", "in_channels", "image_size")},
    **{k: (_at_least(0, strict=True), "a positive float") for k in ("lr", "gamma", "temperature")},
    **{k: (_at_least(0), "a non-negative float") for k in ("momentum", "weight_decay", "alpha", "beta")},
    **{k: (lambda v: isinstance(v, bool), "a bool") for k in ("augment", "deterministic", "verbose")},
    **{k: (_choice(k), f"one of {choices}") for k, choices in _CHOICES.items()},
    **{k: (lambda v: isinstance(v, _PATH), "a folder path") for k in ("data_dir", "save_dir", "log_dir")},
    "num_workers": (_at_least(0, integer=True), "a non-negative int"),
    "seed": (_at_least(0, integer=True, optional=True), "None or a non-negative int"),
    "teacher_model": (lambda v: v is None or isinstance(v, (*_PATH, nn.Module)), "None, a checkpoint path or an nn.Module"),
    "experiment_name": (_name_ok, "None or a non-empty name without '/'"),
    "resume": (lambda v: v is None or isinstance(v, _PATH), "None, 'last' or a checkpoint path"),
    "hint_layers": (_hint_layers_ok, "None or a non-empty dict {student_path: teacher_path}"),
}


def stage_one_epochs(config: Mapping[str, Any]) -> int:
    """Length of stage 1 for ``stage="two_stage"``: ``hint_epochs``, by default ``max(1, epochs // 4)``."""
    return config["hint_epochs"] if config["hint_epochs"] is not None else max(1, config["epochs"] // 4)


def create_fitnets_config(**kwargs: Any) -> dict[str, Any]:
    """:data:`DEFAULT_CONFIG` updated with ``kwargs``, every value checked.

    Raises:
        ValueError: for an unknown key (close matches are listed) or a bad value; for ``stage="two_stage"``
            when ``hint_epochs`` is not less than ``epochs``.

    Example:
        >>> config = create_fitnets_config(model="ThinDeepCNN", epochs=5, beta=0.5)
        >>> config["model"], config["epochs"], config["batch_size"]
        ('ThinDeepCNN', 5, 32)
        >>> create_fitnets_config(epoch=5)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: Unknown FitNets config key 'epoch'. Did you mean 'epochs', 'hint_epochs'? Valid keys: model, ...
    """
    for key in kwargs:
        if key not in DEFAULT_CONFIG:
            close = close_matches(key, DEFAULT_CONFIG)
            hint = f"Did you mean {', '.join(repr(c) for c in close)}? " if close else ""
            raise ValueError(f"Unknown FitNets config key {key!r}. {hint}Valid keys: {', '.join(DEFAULT_CONFIG)}.")
    config = {**DEFAULT_CONFIG, **kwargs}
    for key, (ok, what) in _RULES.items():
        if not ok(config[key]):
            raise expected(key, what, config[key])
    if config["stage"] == "two_stage" and stage_one_epochs(config) >= config["epochs"]:
        raise ValueError(f"Expected `hint_epochs` to be less than `epochs` so stage 2 can run, but got "
                         f"hint_epochs={stage_one_epochs(config)} with epochs={config['epochs']}.")
    return config
