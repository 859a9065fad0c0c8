"""Test-set evaluation of the pipeline's models, and reloading the models it saved."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader
from torchmetrics.functional.classification import multiclass_confusion_matrix

from kd_toolkit._io import load_torch
from kd_toolkit.core import logits_of, split_batch
from kd_toolkit.models import create_model

__all__ = ["evaluate_all_models", "load_pipeline_model"]


@torch.no_grad()
def _predict(model: nn.Module, loader: DataLoader) -> tuple[Tensor, Tensor]:
    """Logits ``(N, C)`` and labels ``(N,)`` of ``model`` over ``loader``, on the CPU."""
    model.eval()
    device = next(model.parameters()).device
    logits, labels = [], []
    for batch in loader:
        x, y, _ = split_batch(batch)
        if y is None:
            raise ValueError("Expected the test loader to yield labelled (x, y) batches, but got inputs only.")
        logits.append(logits_of(model(x.to(device))).float().cpu())  # (B, C)
        labels.append(y.cpu())
    return torch.cat(logits), torch.cat(labels)


def _evaluate(model: nn.Module, loader: DataLoader, num_classes: int | None) -> dict[str, Any]:
    logits, labels = _predict(model, loader)
    classes = num_classes or logits.shape[-1]
    pred = logits.argmax(-1)
    cm = multiclass_confusion_matrix(pred, labels, num_classes=classes)  # (C, C): rows true, columns predicted
    support = cm.sum(1)
    return {
        "test_accuracy": float((pred == labels).float().mean()),
        "test_loss": float(nn.functional.cross_entropy(logits, labels)),
        "per_class_accuracy": [float(cm[c, c] / support[c]) if support[c] else None for c in range(classes)],
        "confusion_matrix": cm.tolist(), "params": sum(p.numel() for p in model.parameters()),
        "num_test_samples": len(labels), "labels": labels.numpy(), "predictions": pred.numpy(),
        "confidence": logits.softmax(-1).max(-1).values.numpy(),
    }


def evaluate_all_models(models: Mapping[str, nn.Module], test_loader: DataLoader,
                        num_classes: int | None = None) -> dict[str, dict[str, Any]]:
    """Test accuracy, loss, per-class accuracy, confusion matrix, parameter count and predictions per model.

    Args:
        models: ``{key: model}``; each is evaluated in eval mode on its own device.
        test_loader: Yields ``(x, y)`` (or ``(x, y, index)``) batches.
        num_classes: Class count of the confusion matrix (default: the models' logit width).

    Returns:
        ``{key: metrics}`` with ``test_accuracy``, ``test_loss``, ``per_class_accuracy`` (``None`` for a
        class absent from the test set), ``confusion_matrix`` (rows: true class), ``params``,
        ``num_test_samples`` and the per-sample ``labels``, ``predictions`` and ``confidence`` arrays.

    Example:
        >>> from kd_toolkit.data import make_loader
        >>> loader = make_loader(torch.randn(20, 4), torch.arange(20) % 2, batch_size=8)
        >>> result = evaluate_all_models({"linear": nn.Linear(4, 2)}, loader)["linear"]
        >>> len(result["confusion_matrix"]), result["params"]
        (2, 10)
    """
    return {key: _evaluate(model, test_loader, num_classes) for key, model in models.items()}


def load_pipeline_model(path: str | Path) -> nn.Module:
    """Rebuild a model saved by the pipeline (``models/*.pt``) from its registry name and weights.

    Beside each ``.pt`` the pipeline writes ``.pth``, the bare state dict as seed 003 saved it: load that with
    ``model.load_state_dict(torch.load(path))`` into the registry model named in ``summary.json``
    (``create_model(name)``), or on MNIST runs into seed 003's own ``TeacherModel``/``StudentModel``.

    Args:
        path: A model file written by the pipeline.

    Returns:
        The model, in eval mode.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: The file is unreadable or was not written by the pipeline.

    Example:
        >>> teacher = load_pipeline_model("runs/pipeline/models/teacher_model.pt")  # doctest: +SKIP
    """
    state = load_torch(path, what="model file")
    if not isinstance(state, Mapping) or "state_dict" not in state or "model_name" not in state:
        raise ValueError(f"Expected {str(path)!r} to be a model file written by the pipeline (a dict with "
                         "'state_dict' and 'model_name'), but it is not.")
    model = create_model(state["model_name"], num_classes=int(state["num_classes"]))
    model.load_state_dict(state["state_dict"])
    return model.eval()
