"""Plots, tables and files of the teacher → student → distilled-student pipeline (seed 003).

Plot functions take plain data (dicts, lists, arrays) and a path, draw on a standalone
``matplotlib.figure.Figure`` (no pyplot state, no GUI backend) and write the PNG atomically;
``render_report`` turns the pipeline's summary into Markdown and ``print_summary`` prints it with ``rich``.
A training history is a list of per-epoch dicts (see :func:`read_history`), e.g.
``{"epoch": 0, "train_loss": 0.9, "train_hard_loss": 0.9, "train_kd_loss": None, "val_loss": 0.5, "val_acc": 0.86}``.
"""

from __future__ import annotations

import csv
import json
import os
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

__all__ = [
    "MODEL_LABELS", "comparison_rows", "plot_accuracy_comparison", "plot_confusion_matrices",
    "plot_prediction_examples", "plot_teacher_training", "plot_training_curves", "print_summary", "read_history",
    "render_report", "save_and_visualize_results", "write_json",
]

#: display names of the pipeline's three models (keys are also their file names)
MODEL_LABELS = {"teacher": "Teacher", "student_regular": "Student (regular)", "student_distilled": "Student (distilled)"}
_COLORS = {"teacher": "#4c72b0", "student_regular": "#dd8452", "student_distilled": "#55a868"}
_HISTORY_COLUMNS = {"train_loss_epoch": "train_loss", "hard_loss_epoch": "train_hard_loss",
                    "kd_loss_epoch": "train_kd_loss", "val_loss": "val_loss", "val_acc": "val_acc"}


def read_history(metrics_csv: str | Path) -> list[dict[str, Any]]:
    """Per-epoch ``train_loss`` (total), ``train_hard_loss``, ``train_kd_loss``, ``val_loss`` and ``val_acc``
    from a Lightning ``metrics.csv`` (the rows of one epoch are merged; missing values are ``None``).

    Example:
        >>> path = getfixture("tmp_path") / "metrics.csv"
        >>> _ = path.write_text("epoch,step,train_loss_epoch,val_acc\\n0,9,,0.8\\n0,9,1.5,\\n")
        >>> read_history(path)[0]["train_loss"], read_history(path)[0]["val_acc"]
        (1.5, 0.8)
    """
    epochs: dict[int, dict[str, Any]] = {}
    if not Path(metrics_csv).is_file():
        return []
    with open(metrics_csv, newline="") as f:
        for row in csv.DictReader(f):
            if row.get("epoch"):
                entry = epochs.setdefault(int(row["epoch"]), {})
                entry.update({key: float(row[col]) for col, key in _HISTORY_COLUMNS.items() if row.get(col)})
    return [{"epoch": e, **{k: epochs[e].get(k) for k in _HISTORY_COLUMNS.values()}} for e in sorted(epochs)]


# ------------------------------------------------------------------------------------------ files
def _atomic_write(path: str | Path, write: Any) -> Path:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then move it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(obj: Any, path: str | Path) -> Path:
    """Write ``obj`` as indented JSON, atomically (numpy scalars and arrays become plain values).

    Example:
        >>> json.loads(write_json({"acc": np.float32(0.5)}, getfixture("tmp_path") / "m.json").read_text())
        {'acc': 0.5}
    """
    text = json.dumps(obj, indent=2, default=_to_builtin) + "\n"
    return _atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def _to_builtin(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        return value.item()
    if hasattr(value, "tolist"):  # numpy arrays, torch tensors
        return value.tolist()
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable.")


def _save_figure(fig: Figure, path: str | Path) -> Path:
    for ax in fig.axes:
        if ax.get_xlabel() == "epoch":
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    return _atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))


def _label(key: str) -> str:
    return MODEL_LABELS.get(key, key)


def _series(history: Sequence[Mapping[str, Any]], key: str) -> tuple[list[int], list[float]]:
    """Epochs and values of ``key`` where it was logged (``None`` entries are skipped)."""
    points = [(int(row.get("epoch", i)), float(row[key])) for i, row in enumerate(history) if row.get(key) is not None]
    return [p[0] + 1 for p in points], [p[1] for p in points]  # epochs shown 1-based


# ------------------------------------------------------------------------------------------ plots
def plot_teacher_training(history: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Teacher's training and validation loss, and validation accuracy, per epoch.

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
    loss_ax.legend()
    epochs, values = _series(history, "val_acc")
    acc_ax.plot(epochs, values, marker="o", markersize=3, color=_COLORS["teacher"])
    acc_ax.set(title="Teacher: validation accuracy", xlabel="epoch", ylabel="accuracy")
    acc_ax.grid(alpha=0.3)
    return _save_figure(fig, path)


def plot_training_curves(histories: Mapping[str, Sequence[Mapping[str, Any]]], path: str | Path) -> Path:
    """Training cross-entropy on the labels and validation accuracy per epoch, one line per model.

    The distilled student's total loss also contains the KD term (``T**2``-scaled), so the left panel plots
    every model's ``train_hard_loss`` (the label cross-entropy; ``train_loss`` when absent), which is
    comparable across models.

    Example:
        >>> history = [{"epoch": 0, "train_hard_loss": 1.0, "val_acc": 0.8}, {"epoch": 1, "train_hard_loss": 0.5}]
        >>> plot_training_curves({"teacher": history}, getfixture("tmp_path") / "c.png").exists()
        True
    """
    fig = Figure(figsize=(11, 4))
    loss_ax, acc_ax = fig.subplots(1, 2)
    for key, history in histories.items():
        color = _COLORS.get(key)
        epochs, values = _series(history, "train_hard_loss")
        if not values:
            epochs, values = _series(history, "train_loss")
        loss_ax.plot(epochs, values, color=color, label=_label(key))
        epochs, values = _series(history, "val_acc")
        acc_ax.plot(epochs, values, color=color, marker="o", markersize=2, label=_label(key))
    loss_ax.set(title="Training loss (cross-entropy on labels)", xlabel="epoch", ylabel="loss")
    acc_ax.set(title="Validation accuracy", xlabel="epoch", ylabel="accuracy")
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save_figure(fig, path)


def plot_accuracy_comparison(accuracies: Mapping[str, float], path: str | Path,
                             params: Mapping[str, int] | None = None) -> Path:
    """Bar chart of test accuracy per model, with the value (and parameter count) on each bar.

    Example:
        >>> accuracies = {"teacher": 0.98, "student_regular": 0.9}
        >>> plot_accuracy_comparison(accuracies, getfixture("tmp_path") / "a.png").exists()
        True
    """
    keys = list(accuracies)
    values = [100.0 * float(accuracies[k]) for k in keys]
    fig = Figure(figsize=(1.8 * len(keys) + 2.5, 4))
    ax = fig.subplots()
    bars = ax.bar([_label(k) for k in keys], values, color=[_COLORS.get(k, "#8172b3") for k in keys])
    for bar, key, value in zip(bars, keys, values):
        text = f"{value:.2f}%" + (f"\n{params[key]:,} params" if params and key in params else "")
        ax.annotate(text, (bar.get_x() + bar.get_width() / 2, value), ha="center", va="bottom", fontsize=8,
                    xytext=(0, 2), textcoords="offset points")
    low = min(values) if values else 0.0
    ax.set_ylim(max(0.0, low - 10.0), 100.0 + 3.0)
    ax.set(title="Test accuracy", ylabel="accuracy (%)")
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
                ax.set_ylabel(_label(key).replace(" (", "\n("), fontsize=8)
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
        ax.set(title=f"{_label(key)}: {100 * accuracy:.2f}%", xlabel="predicted", ylabel="true")
    return _save_figure(fig, path)


# ------------------------------------------------------------------------------------------ tables
def comparison_rows(summary: Mapping[str, Any]) -> list[dict[str, str]]:
    """Rows of the comparison table (model, params, test accuracy, test loss, train time) from a summary.

    Example:
        >>> summary = {"models": {"teacher": {"params": 1200, "test_accuracy": 0.975, "test_loss": 0.081,
        ...                                   "train_time_s": 12.34}}}
        >>> comparison_rows(summary)
        [{'model': 'Teacher', 'params': '1,200', 'test accuracy': '97.50%', 'test loss': '0.0810', 'train time': '12.3 s'}]
    """
    return [{"model": _label(key), "params": f"{int(m['params']):,}",
             "test accuracy": f"{100 * float(m['test_accuracy']):.2f}%", "test loss": f"{float(m['test_loss']):.4f}",
             "train time": f"{float(m['train_time_s']):.1f} s"} for key, m in summary["models"].items()]


def _gain_line(summary: Mapping[str, Any]) -> str | None:
    models = summary["models"]
    if "student_regular" not in models or "student_distilled" not in models:
        return None
    regular, distilled = models["student_regular"], models["student_distilled"]
    gain = 100 * (float(distilled["test_accuracy"]) - float(regular["test_accuracy"]))
    verdict = "better" if gain > 0 else "worse" if gain < 0 else "the same"
    return (f"Distillation effect: the distilled student is {verdict} than the regular student by "
            f"{abs(gain):.2f} percentage points of test accuracy (one seed: the difference varies from seed to "
            "seed, so compare several `--seed` values before drawing conclusions).")


def render_report(summary: Mapping[str, Any]) -> str:
    """Markdown report: configuration, comparison table, distillation effect and the plots.

    Example:
        >>> summary = {"models": {"teacher": {"params": 10, "test_accuracy": 0.9, "test_loss": 0.3,
        ...                                   "train_time_s": 1.0}}, "config": {"data": "digits"}}
        >>> print(render_report(summary).splitlines()[0])
        # Knowledge distillation pipeline report
    """
    rows = comparison_rows(summary)
    header = list(rows[0]) if rows else ["model"]
    lines = ["# Knowledge distillation pipeline report", ""]
    config = summary.get("config", {})
    if config:
        lines += ["## Configuration", ""] + [f"- `{k}`: {v}" for k, v in config.items()] + [""]
    lines += ["## Test-set comparison", "", "| " + " | ".join(header) + " |",
              "|" + "|".join("---" if h == "model" else "---:" for h in header) + "|"]
    lines += ["| " + " | ".join(row[h] for h in header) + " |" for row in rows]
    gain = _gain_line(summary)
    if gain:
        lines += ["", gain]
    if summary.get("splits"):
        lines += ["", "Samples per split: " + ", ".join(f"{k} {v}" for k, v in summary["splits"].items()) + "."]
    if summary.get("total_time_s") is not None:
        lines += [f"Total pipeline time: {float(summary['total_time_s']):.1f} s."]
    plots = summary.get("files", {}).get("plots", {})
    if plots:
        lines += ["", "## Plots", ""] + [f"![{name}]({rel})" for name, rel in plots.items()]
    return "\n".join(lines) + "\n"


def print_summary(summary: Mapping[str, Any], console: Any = None) -> None:
    """Print the comparison table (and the distillation effect) with ``rich``."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    rows = comparison_rows(summary)
    table = Table(title="Knowledge distillation pipeline: test-set comparison")
    for name in rows[0] if rows else ["model"]:
        table.add_column(name, justify="left" if name == "model" else "right")
    for row in rows:
        table.add_row(*row.values())
    console.print(table)
    gain = _gain_line(summary)
    if gain:
        console.print(gain)


# ------------------------------------------------------------------------------------------ saving
_MODEL_FILES = {"teacher": "teacher_model.pt", "student_regular": "student_regular.pt",
                "student_distilled": "student_distilled.pt"}
_PLOTS = ("teacher_training", "training_curves", "accuracy_comparison", "prediction_examples", "confusion_matrices")


def _save_model(run: Any, key: str, split: Any, path: Path) -> Path:
    from kd_toolkit import __version__

    payload = {"state_dict": {k: v.detach().cpu() for k, v in run.model.state_dict().items()}, "model_name": run.name,
               "num_classes": int(split.num_classes), "input_shape": [int(s) for s in split.input_shape],
               "role": key, "kd_toolkit_version": __version__}
    return _atomic_write(path, lambda tmp: torch.save(payload, tmp))


def _write_predictions(path: Path, results: Mapping[str, Mapping[str, Any]]) -> Path:
    labels = next(iter(results.values()))["labels"]
    lines = [",".join(["index", "label"] + [f"{k}_{c}" for k in results for c in ("pred", "confidence")])]
    for i, label in enumerate(labels):
        cells = [f"{int(r['predictions'][i])},{float(r['confidence'][i]):.4f}" for r in results.values()]
        lines.append(",".join([str(i), str(int(label)), *cells]))
    return _atomic_write(path, lambda tmp: Path(tmp).write_text("\n".join(lines) + "\n", encoding="utf-8"))


def _model_record(key: str, run: Any, res: Mapping[str, Any], model_file: str) -> dict[str, Any]:
    return {"name": run.name, "params": int(res["params"]), "test_accuracy": res["test_accuracy"],
            "test_loss": res["test_loss"], "train_time_s": round(float(run.train_time_s), 3),
            "epochs_trained": len(run.history), "best_epoch": run.best_epoch,
            "best_val_accuracy": run.best_val_accuracy, "model_file": model_file,
            "metrics_file": f"results/metrics/{key}.json"}


def save_and_visualize_results(output_dir: str | Path, runs: Mapping[str, Any], results: Mapping[str, Mapping[str, Any]],
                               split: Any, config: Mapping[str, Any] | None = None, start_time: float | None = None,
                               save_predictions: bool = True) -> dict[str, Any]:
    """Write models, metrics, plots, predictions and ``report.md``; return the summary (seed 003's last step).

    Args:
        output_dir: root of the outputs.
        runs: ``{"teacher" | "student_regular" | "student_distilled": TrainedModel}`` (``model``, ``name``,
            ``history``, ``train_time_s``, ``best_epoch``, ``best_val_accuracy``, ``run_dir``, ``best_checkpoint``).
        results: :func:`kd_toolkit.pipeline.evaluate_all_models` output for the same keys.
        split: the :class:`kd_toolkit.pipeline.SplitData` used (class count, input shape, split sizes, test images).
        config: settings recorded in the summary and the report.
        start_time: ``time.perf_counter()`` at the start of the run, for the total wall time.
        save_predictions: also write ``results/predictions/test_predictions.csv``.
    """
    from kd_toolkit import __version__

    out = Path(output_dir)
    metrics_dir, plots_dir = out / "results" / "metrics", out / "results" / "plots"
    models: dict[str, dict[str, Any]] = {}
    for key, run in runs.items():
        model_file = _save_model(run, key, split, out / "models" / _MODEL_FILES.get(key, f"{key}.pt"))
        models[key] = _model_record(key, run, results[key], str(model_file.relative_to(out)))
        write_json({"model": key, **models[key], **{k: results[key][k] for k in (
                        "num_test_samples", "per_class_accuracy", "confusion_matrix")},
                    "history": run.history, "run_dir": str(run.run_dir), "best_checkpoint": run.best_checkpoint},
                   metrics_dir / f"{key}.json")

    plots = {name: plots_dir / f"{name}.png" for name in _PLOTS}
    if "teacher" in runs:
        plot_teacher_training(runs["teacher"].history, plots["teacher_training"])
    plot_training_curves({k: r.history for k, r in runs.items()}, plots["training_curves"])
    plot_accuracy_comparison({k: m["test_accuracy"] for k, m in models.items()}, plots["accuracy_comparison"],
                             params={k: m["params"] for k, m in models.items()})
    test = split.test_dataset
    images = test.x if isinstance(getattr(test, "x", None), torch.Tensor) else torch.stack([s[0] for s in test])
    plot_prediction_examples(images, next(iter(results.values()))["labels"],
                             {k: r["predictions"] for k, r in results.items()}, plots["prediction_examples"])
    plot_confusion_matrices({k: r["confusion_matrix"] for k, r in results.items()}, plots["confusion_matrices"])
    predictions = out / "results" / "predictions" / "test_predictions.csv"
    if save_predictions:
        _write_predictions(predictions, results)

    summary: dict[str, Any] = {
        "kd_toolkit_version": __version__, "config": dict(config or {}),
        "data": {"name": split.name, "num_classes": int(split.num_classes), "input_shape": list(split.input_shape)},
        "splits": {"train": len(split.train_dataset), "val": len(split.val_dataset), "test": len(test)},
        "models": models,
    }
    if "student_regular" in models and "student_distilled" in models:
        summary["kd_gain"] = models["student_distilled"]["test_accuracy"] - models["student_regular"]["test_accuracy"]
    summary["files"] = {
        "report": "report.md", "summary": "results/metrics/summary.json",
        "models": {k: m["model_file"] for k, m in models.items()},
        "metrics": {k: m["metrics_file"] for k, m in models.items()},
        "plots": {name: str(p.relative_to(out)) for name, p in plots.items() if p.exists()},
        "predictions": str(predictions.relative_to(out)) if save_predictions else None,
    }
    summary["total_time_s"] = round(time.perf_counter() - start_time, 2) if start_time is not None else None
    write_json(summary, metrics_dir / "summary.json")
    _atomic_write(out / "report.md", lambda tmp: Path(tmp).write_text(render_report(summary), encoding="utf-8"))
    return summary
