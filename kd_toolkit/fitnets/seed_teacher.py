"""Seed 004's teacher and model files: ``teacher.py`` (``TEACHER_CONFIG``, ``create_teacher_config``,
``train_teacher``) and ``shared_utils``' ``load_model`` / ``evaluate_model``, over the one FitNets trainer.

``train_teacher`` trains on labels alone (no teacher) and writes, as the seed does,
``save_dir/{dataset_name}/Teacher/{model}_teacher_best.pth`` and ``_teacher_final.pth`` (keys ``epoch``,
``model_state_dict``, ``optimizer_state_dict``, ``best_acc``, ``config``); pass the returned ``teacher_path`` as
``teacher_model`` of :func:`~kd_toolkit.fitnets.seed_api.create_fitnets_config`.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from kd_toolkit._io import load_torch
from kd_toolkit.fitnets.seed_api import run_seed_training
from kd_toolkit.fitnets.seed_config import create_fitnets_config
from kd_toolkit.fitnets.seed_io import load_teacher_model
from kd_toolkit.fitnets.seed_utils import evaluate_loader

__all__ = ["TEACHER_CONFIG", "create_teacher_config", "evaluate_model", "load_model", "train_teacher"]

TEACHER_CONFIG: dict[str, Any] = {
    "model": "ResNet50", "data_dir": "data", "batch_size": 32, "num_workers": 4, "augment": True, "epochs": 100,
    "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4, "step_size": 30, "gamma": 0.1, "device": "auto",
    "print_freq": 100, "save_freq": 10, "save_dir": "checkpoints/teachers", "log_dir": "logs/teachers",
    "experiment_name": None, "resume": None,
}
"""The seed's teacher defaults (any other key of ``create_fitnets_config`` is accepted too)."""


def create_teacher_config(**kwargs: Any) -> dict[str, Any]:
    """:data:`TEACHER_CONFIG` updated with ``kwargs`` (checked as ``create_fitnets_config`` checks).

    Example:
        >>> create_teacher_config(model="ResNet18", epochs=2)["lr"]
        0.1
    """
    create_fitnets_config(**{**TEACHER_CONFIG, **kwargs})  # raises on an unknown key or a bad value
    return {**TEACHER_CONFIG, **kwargs}


def train_teacher(config: Mapping[str, Any] | None = None, train_loader: DataLoader | None = None,
                  val_loader: DataLoader | None = None, test_loader: DataLoader | None = None,
                  dataset_name: str = "default") -> dict[str, Any]:
    """Seed 004's ``train_teacher``: train ``config["model"]`` on labels and save it where the seed does.

    Returns:
        ``{"model", "best_accuracy", "training_history", "test_results", "config", "experiment_name",
        "teacher_path"}`` (``best_accuracy`` in percent; ``teacher_path`` the ``_teacher_best.pth``).
    """
    cfg = {**TEACHER_CONFIG, **dict(config or {}), "teacher_model": None}
    result = run_seed_training(cfg, train_loader, val_loader, test_loader, dataset_name, method="Teacher")
    save_dir, exp, model = Path(result["config"]["save_dir"]), result["experiment_name"], result["config"]["model"]
    for kind in ("best", "final"):
        shutil.copyfile(save_dir / f"{exp}_{kind}.pth", save_dir / f"{model}_teacher_{kind}.pth")
    result.pop("teacher_model", None)
    return {**result, "teacher_path": str(save_dir / f"{model}_teacher_best.pth")}


def _device(device: str | torch.device) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_model(checkpoint_path: str | os.PathLike, device: str | torch.device = "auto") -> dict[str, Any]:
    """Seed 004's ``load_model``: ``{"model", "config", "epoch", "best_acc"}`` from a ``.pth`` written by
    ``train_fitnets``/``train_teacher`` or by the seed itself (read safely, ``weights_only=True``).

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: a file without the seed's ``config`` (the message says what is needed) or other weights.
    """
    if not Path(checkpoint_path).is_file():
        raise FileNotFoundError(f"Expected `checkpoint_path` to be an existing checkpoint file, but "
                                f"{os.fspath(checkpoint_path)!r} does not exist.")
    checkpoint = load_torch(Path(checkpoint_path), what="`checkpoint_path`")
    config = checkpoint.get("config") if isinstance(checkpoint, Mapping) else None
    if not isinstance(config, Mapping) or "model" not in config:
        raise ValueError(f"Expected `checkpoint_path` {os.fspath(checkpoint_path)!r} to be a checkpoint of the seed's "
                         "format {'model_state_dict', 'config': {'model', 'num_classes'}, 'epoch', 'best_acc'} "
                         "(as train_fitnets writes), but it has no config with 'model'.")
    model = load_teacher_model(checkpoint_path, config.get("num_classes") or 5, _device(device))
    return {"model": model, "config": dict(config), "epoch": checkpoint.get("epoch"),
            "best_acc": checkpoint.get("best_acc")}


def evaluate_model(model: nn.Module, data_loader: DataLoader, device: str | torch.device = "auto",
                   config: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Seed 004's ``evaluate_model``: ``{"loss", "accuracy" (percent), "total_samples"}`` of ``model``.

    ``MultiBranchNet`` is read at its last branch whatever ``config`` says (the seed needed ``config["model"]``).
    """
    loss, accuracy, _ = evaluate_loader(model, data_loader, _device(device))
    return {"loss": loss, "accuracy": accuracy, "total_samples": len(data_loader.dataset)}  # type: ignore[arg-type]
