"""Plots of the teacher → student → distilled-student pipeline (seed 003).

Plot functions take plain data (dicts, lists, arrays) and a path, draw on a standalone
``matplotlib.figure.Figure`` (no pyplot state, no GUI backend) and write the PNG atomically
(:func:`kd_toolkit._io.atomic_write`). A training history is a list of per-epoch dicts (see
:func:`kd_toolkit.pipeline.report.read_history`), e.g.
``{"epoch": 0, "train_loss": 0.9, "train_hard_loss": 0.9, "train_kd_loss": None, "val_loss": 0.5, "val_acc": 0.86}``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from kd_toolkit._io import atomic_write

__all__ = [
    "MODEL_LABELS", "model_label", "plot_accuracy_comparison", "plot_confusion_matrices", "plot_prediction_examples",
    "plot_teacher_training", "plot_training_curves",
]

#: display names of the pipeline's three models (keys are also their file names)
MODEL_LABELS = {"teacher": "Teacher", "student_regular": "Student (regular)", "student_distilled": "Student (distilled)"}
_COLORS = {"teacher": "#4c72b0", "student_regular": "#dd8452", "student_distilled": "#55a868"}


def _save_figure(fig: Figure, path: str | Path) -> Path:
    for ax in fig.axes:
        if ax.get_xlabel() == "epoch":
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))


def model_label(key: str) -> str:
    """Display name of a model key (:data:`MODEL_LABELS`), or the key itself.

    Example:
        >>> model_label("student_distilled"), model_label("other")
        ('Student (distilled)', 'other')
    """
    return MODEL_LABELS.get(key, key)


def _series(history: Sequence[Mapping[str, Any]], key: str) -> tuple[list[int], list[float]]:
    """Epochs and values of ``key`` where it was logged (``None`` entries are skipped)."""
    points = [(int(row.get("epoch", i)), float(row[key])) for i, row in enumerate(history) if row.get(key) is not None]
    return [p[0] + 1 for p in points], [p[1] for p in points]  # epochs shown 1-based


def _log_scale_if_positive(ax: Any) -> None:
    """Log y axis when every plotted value is positive: losses fall by orders of magnitude in the first
    epochs, and on a linear axis the later epochs, where the models differ, are a flat line."""
    values = np.concatenate([np.asarray(line.get_ydata(), dtype=float) for line in ax.get_lines()] or [np.ones(1)])
    if values.size and np.all(values > 0) and values.max() / values.min() > 3:
        ax.set_yscale("log")


def _zoom_on_later_epochs(ax: Any, series: Sequence[Sequence[float]], top: float = 1.0) -> None:
    """Accuracy axis from a little below the lowest value after the first quarter of the epochs (of each
    series) up to ``top`` (never above 100 %), when earlier points lie lower: those are cut off, which the axis
    label says. Short runs (under 4 epochs) keep the full axis."""
    later = [v for values in series if len(values) >= 4 for v in values[len(values) // 4:]]
    if not later:
        return
    low = max(0.0, min(later) - 0.05 * (top - min(later)) - 0.005)
    if min(v for values in series for v in values) < low:
        ax.set_ylim(low, top)
        ax.set_ylabel(ax.get_ylabel() + " (early epochs below the axis)")


# ------------------------------------------------------------------------------------------ plots
def plot_teacher_training(history: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Teacher's training and validation loss (log scale when it spans a wide range) and its training (where
    recorded) and validation accuracy, per epoch.

    Example:
        >>> history = [{"epoch": 0, "train_loss": 1.0, "val_loss": 0.9, "val_acc": 0.7}]
        >>> plot_teacher_training(history, getfixture("tmp_path") / "t.png").name
        't.png'
    """
    fig = Figure(figsize=(10, 4))
    loss_ax, acc_ax = fig.subplots(1, 2)
    for key, name in (("train_loss", "train"), ("val_loss", "validation")):
        epochs, values = _series(history, key)
        loss_ax.plot(epochs, values, marker="o", markersize=3, label=name)
    loss_ax.set(title="Teacher: loss", xlabel="epoch", ylabel="cross-entropy")
    _log_scale_if_positive(loss_ax)
    loss_ax.legend()
    for key, name, style in (("train_acc", "train", "--"), ("val_acc", "validation", "-")):
        epochs, values = _series(history, key)
        if values:
            acc_ax.plot(epochs, values, style, marker="o", markersize=3, color=_COLORS["teacher"], label=name)
    acc_ax.set(title="Teacher: accuracy", xlabel="epoch", ylabel="accuracy")
    _zoom_on_later_epochs(acc_ax, [_series(history, "val_acc")[1]])
    acc_ax.legend()
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3, which="both")
    return _save_figure(fig, path)


def plot_training_curves(histories: Mapping[str, Sequence[Mapping[str, Any]]], path: str | Path) -> Path:
    """Every training-loss component and the validation accuracy per epoch, one colour per model.

    Left: each model's label cross-entropy (``train_hard_loss``, solid), and for a distilled model also its
    KD term (``train_kd_loss``, ``T**2``-scaled, dotted) and the weighted total it optimises (``train_loss``,
    dash-dot); a history with only ``train_loss`` plots that as the total. The axis is logarithmic when the
    losses span a wide range, so that the later epochs stay visible. Right: validation accuracy.

    Example:
        >>> history = [{"epoch": 0, "train_hard_loss": 1.0, "val_acc": 0.8}, {"epoch": 1, "train_hard_loss": 0.5}]
        >>> plot_training_curves({"teacher": history}, getfixture("tmp_path") / "c.png").exists()
        True
    """
    fig = Figure(figsize=(12, 4.5))
    loss_ax, acc_ax = fig.subplots(1, 2)
    for key, history in histories.items():
        color, label = _COLORS.get(key), model_label(key)
        hard, kd, total = (_series(history, k) for k in ("train_hard_loss", "train_kd_loss", "train_loss"))
        if hard[1]:
            loss_ax.plot(*hard, "-", color=color, label=f"{label}: label cross-entropy")
        if kd[1]:
            loss_ax.plot(*kd, ":", color=color, linewidth=2, label=f"{label}: KD term (T²-scaled)")
        if total[1] and (kd[1] or not hard[1]):
            loss_ax.plot(*total, "-." if hard[1] else "-", color=color,
                         label=f"{label}: {'weighted total' if kd[1] else 'training loss'}")
        epochs, values = _series(history, "val_acc")
        acc_ax.plot(epochs, values, color=color, marker="o", markersize=2, label=label)
    loss_ax.set(title="Training loss components", xlabel="epoch", ylabel="loss")
    _log_scale_if_positive(loss_ax)
    acc_ax.set(title="Validation accuracy", xlabel="epoch", ylabel="accuracy")
    _zoom_on_later_epochs(acc_ax, [_series(h, "val_acc")[1] for h in histories.values()])
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    return _save_figure(fig, path)


def plot_accuracy_comparison(accuracies: Mapping[str, float], path: str | Path,
                             params: Mapping[str, int] | None = None) -> Path:
    """Bar chart of test accuracy per model on a 0-100 % axis (a cut axis would make a one-point gap look
    large), with the value (and parameter count) on each bar and the distilled-minus-regular gap in the title.

    Example:
        >>> accuracies = {"teacher": 0.98, "student_regular": 0.9}
        >>> plot_accuracy_comparison(accuracies, getfixture("tmp_path") / "a.png").exists()
        True
    """
    keys = list(accuracies)
    values = [100.0 * float(accuracies[k]) for k in keys]
    fig = Figure(figsize=(1.8 * len(keys) + 2.5, 4))
    ax = fig.subplots()
    bars = ax.bar([model_label(k) for k in keys], values, color=[_COLORS.get(k, "#8172b3") for k in keys])
    for bar, key, value in zip(bars, keys, values):
        text = f"{value:.2f}%" + (f"\n{params[key]:,} params" if params and key in params else "")
        inside = value > 25  # the label goes inside tall bars, so nothing rises above 100 %
        ax.annotate(text, (bar.get_x() + bar.get_width() / 2, value), ha="center", va="top" if inside else "bottom",
                    fontsize=8, xytext=(0, -4 if inside else 2), textcoords="offset points",
                    color="white" if inside else "black", fontweight="bold" if inside else "normal")
    ax.set_ylim(0.0, 100.0)
    title = "Test accuracy"
    if "student_regular" in accuracies and "student_distilled" in accuracies:
        gap = 100.0 * (float(accuracies["student_distilled"]) - float(accuracies["student_regular"]))
        title += f" (distilled - regular: {gap:+.2f} points)"
    ax.set(title=title, ylabel="accuracy (%)")
    ax.grid(axis="y", alpha=0.3)
    return _save_figure(fig, path)


def _pick_examples(labels: np.ndarray, predictions: Mapping[str, np.ndarray], count: int) -> np.ndarray:
    """Up to half the examples where the models disagree or err (most informative), the rest in order."""
    wrong = np.zeros(len(labels), dtype=bool)
    for pred in predictions.values():
        wrong |= np.asarray(pred) != labels
    chosen = set(np.flatnonzero(wrong)[: count // 2].tolist())
    chosen |= set([i for i in range(len(labels)) if i not in chosen][: count - len(chosen)])
    return np.asarray(sorted(chosen), dtype=np.int64)


def plot_prediction_examples(images: Any, labels: Any, predictions: Mapping[str, Any], path: str | Path,
                             count: int = 10) -> Path:
    """Grid of test images: one column per image (true label on top), one row per model (its prediction,
    green when right, red when wrong). Half the columns, where possible, are images some model gets wrong.

    Args:
        images: ``(N, H, W)`` or ``(N, C, H, W)`` array or tensor (C = 1 or 3).
        labels: true labels ``(N,)``.
        predictions: ``{model_key: predicted labels (N,)}``.
        path: output PNG.
        count: number of images shown.

    Example:
        >>> images = np.random.default_rng(0).random((6, 1, 8, 8))
        >>> path = getfixture("tmp_path") / "p.png"
        >>> plot_prediction_examples(images, np.arange(6), {"teacher": np.arange(6)}, path, count=4).exists()
        True
    """
    images, labels = np.asarray(images, dtype=np.float32), np.asarray(labels)
    if images.ndim == 4 and images.shape[1] in (1, 3):
        images = images.transpose(0, 2, 3, 1)  # (N, H, W, C)
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    if images.ndim not in (3, 4) or len(images) != len(labels):
        raise ValueError(f"Expected `images` of shape (N, H, W) or (N, C, H, W) with N = {len(labels)}, "
                         f"but got {images.shape}.")
    images = (images - images.min()) / max(float(images.max() - images.min()), 1e-8)  # normalised inputs -> [0, 1]
    preds = {k: np.asarray(v) for k, v in predictions.items()}
    idx = _pick_examples(labels, preds, min(count, len(labels)))
    rows = max(1, len(preds))
    fig = Figure(figsize=(1.1 * len(idx) + 1.4, 1.25 * rows + 0.4))
    axes = np.asarray(fig.subplots(rows, len(idx), squeeze=False))
    for col, i in enumerate(idx):
        for row, (key, pred) in enumerate(preds.items() or [("", labels)]):
            ax = axes[row, col]
            ax.imshow(images[i], cmap="gray_r" if images.ndim == 3 else None)
            ax.set_xticks([])
            ax.set_yticks([])
            right = bool(pred[i] == labels[i])
            ax.set_xlabel(f"pred {int(pred[i])}", color="green" if right else "red", fontsize=8, labelpad=1)
            if row == 0:
                ax.set_title(f"true {int(labels[i])}", fontsize=8)
            if col == 0:
                ax.set_ylabel(model_label(key).replace(" (", "\n("), fontsize=8)
    return _save_figure(fig, path)


def plot_confusion_matrices(matrices: Mapping[str, Any], path: str | Path) -> Path:
    """One confusion-matrix heat map per model (rows: true class, columns: predicted class), counts in cells.

    Example:
        >>> plot_confusion_matrices({"teacher": [[5, 1], [0, 4]]}, getfixture("tmp_path") / "c.png").exists()
        True
    """
    fig = Figure(figsize=(4.2 * max(1, len(matrices)), 4.2))
    axes = np.atleast_1d(fig.subplots(1, max(1, len(matrices)), squeeze=False)[0])
    for ax, (key, matrix) in zip(axes, matrices.items()):
        cm = np.asarray(matrix)
        ax.imshow(cm, cmap="Blues")
        n = cm.shape[0]
        ax.set_xticks(range(n))
        ax.set_yticks(range(n))
        threshold = cm.max() / 2 if cm.size else 0
        if n <= 20:
            for (r, c), value in np.ndenumerate(cm):
                ax.text(c, r, str(int(value)), ha="center", va="center", fontsize=7,
                        color="white" if value > threshold else "black")
        accuracy = np.trace(cm) / max(1, cm.sum())
        ax.set(title=f"{model_label(key)}: {100 * accuracy:.2f}%", xlabel="predicted", ylabel="true")
    return _save_figure(fig, path)
