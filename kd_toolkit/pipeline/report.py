"""Files, tables and the report of the teacher → student → distilled-student pipeline (seed 003).

:func:`save_and_visualize_results` writes models, metrics, plots (:mod:`kd_toolkit.pipeline.plots`) and
``report.md``; ``render_report`` turns the pipeline's summary into Markdown and ``print_summary`` prints
it with ``rich``. Every file is written atomically (:mod:`kd_toolkit._io`). A training history is a list
of per-epoch dicts (see :func:`read_history`), e.g.
``{"epoch": 0, "train_loss": 0.9, "train_hard_loss": 0.9, "train_kd_loss": None, "val_loss": 0.5, "val_acc": 0.86}``.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from kd_toolkit._io import save_torch, write_json, write_text
from kd_toolkit.pipeline.plots import (
    MODEL_LABELS,
    model_label,
    plot_accuracy_comparison,
    plot_confusion_matrices,
    plot_prediction_examples,
    plot_teacher_training,
    plot_training_curves,
)

__all__ = [
    "MODEL_LABELS", "comparison_rows", "plot_accuracy_comparison", "plot_confusion_matrices",
    "plot_prediction_examples", "plot_teacher_training", "plot_training_curves", "print_summary", "read_history",
    "render_report", "save_and_visualize_results", "write_json",
]

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


# ------------------------------------------------------------------------------------------ tables
def comparison_rows(summary: Mapping[str, Any]) -> list[dict[str, str]]:
    """Rows of the comparison table (model, params, test accuracy, test loss, train time) from a summary.

    Example:
        >>> summary = {"models": {"teacher": {"params": 1200, "test_accuracy": 0.975, "test_loss": 0.081,
        ...                                   "train_time_s": 12.34}}}
        >>> comparison_rows(summary)
        [{'model': 'Teacher', 'params': '1,200', 'test accuracy': '97.50%', 'test loss': '0.0810', 'train time': '12.3 s'}]
    """
    return [{"model": model_label(key), "params": f"{int(m['params']):,}",
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
    """``path`` (``.pt``): state dict + registry name, class count, input shape (:func:`load_pipeline_model`);
    beside it ``.pth``: the bare state dict, as seed 003 saved it (``torch.save(model.state_dict(), ...)``)."""
    from kd_toolkit import __version__

    state = {k: v.detach().cpu() for k, v in run.model.state_dict().items()}
    payload = {"state_dict": state, "model_name": run.name,
               "num_classes": int(split.num_classes), "input_shape": [int(s) for s in split.input_shape],
               "role": key, "kd_toolkit_version": __version__}
    save_torch(state, path.with_suffix(".pth"))
    return save_torch(payload, path)


def _write_predictions(path: Path, results: Mapping[str, Mapping[str, Any]]) -> Path:
    labels = next(iter(results.values()))["labels"]
    lines = [",".join(["index", "label"] + [f"{k}_{c}" for k in results for c in ("pred", "confidence")])]
    for i, label in enumerate(labels):
        cells = [f"{int(r['predictions'][i])},{float(r['confidence'][i]):.4f}" for r in results.values()]
        lines.append(",".join([str(i), str(int(label)), *cells]))
    return write_text("\n".join(lines) + "\n", path)


def _model_record(key: str, run: Any, res: Mapping[str, Any], model_file: str) -> dict[str, Any]:
    return {"name": run.name, "params": int(res["params"]), "test_accuracy": res["test_accuracy"],
            "test_loss": res["test_loss"], "train_time_s": round(float(run.train_time_s), 3),
            "epochs_trained": len(run.history), "best_epoch": run.best_epoch,
            "best_val_accuracy": run.best_val_accuracy, "model_file": model_file,
            "state_dict_file": str(Path(model_file).with_suffix(".pth")), "metrics_file": f"results/metrics/{key}.json"}


def _save_models(out: Path, runs: Mapping[str, Any], results: Mapping[str, Mapping[str, Any]],
                 split: Any) -> dict[str, dict[str, Any]]:
    """Write ``models/*.pt`` and ``results/metrics/<key>.json``; return each model's summary record."""
    models: dict[str, dict[str, Any]] = {}
    for key, run in runs.items():
        model_file = _save_model(run, key, split, out / "models" / _MODEL_FILES.get(key, f"{key}.pt"))
        models[key] = _model_record(key, run, results[key], str(model_file.relative_to(out)))
        write_json({"model": key, **models[key], **{k: results[key][k] for k in (
                        "num_test_samples", "per_class_accuracy", "confusion_matrix")},
                    "history": run.history, "run_dir": str(run.run_dir), "best_checkpoint": run.best_checkpoint},
                   out / models[key]["metrics_file"])
    return models


def _test_images(test: Any) -> torch.Tensor:
    """The test inputs ``(N, ...)``: a :class:`~kd_toolkit.data.TensorBatchDataset`'s tensor, or stacked."""
    return test.x if isinstance(getattr(test, "x", None), torch.Tensor) else torch.stack([s[0] for s in test])


def _save_plots(plots_dir: Path, runs: Mapping[str, Any], results: Mapping[str, Mapping[str, Any]],
                models: Mapping[str, Mapping[str, Any]], split: Any) -> dict[str, Path]:
    """Draw every plot into ``plots_dir``; return ``{plot name: path}`` (the teacher's plot needs a teacher)."""
    plots = {name: plots_dir / f"{name}.png" for name in _PLOTS}
    if "teacher" in runs:
        plot_teacher_training(runs["teacher"].history, plots["teacher_training"])
    plot_training_curves({k: r.history for k, r in runs.items()}, plots["training_curves"])
    plot_accuracy_comparison({k: m["test_accuracy"] for k, m in models.items()}, plots["accuracy_comparison"],
                             params={k: m["params"] for k, m in models.items()})
    plot_prediction_examples(_test_images(split.test_dataset), next(iter(results.values()))["labels"],
                             {k: r["predictions"] for k, r in results.items()}, plots["prediction_examples"])
    plot_confusion_matrices({k: r["confusion_matrix"] for k, r in results.items()}, plots["confusion_matrices"])
    return plots


def _summary(out: Path, models: dict[str, dict[str, Any]], split: Any, config: Mapping[str, Any] | None,
             plots: Mapping[str, Path], predictions: Path | None) -> dict[str, Any]:
    from kd_toolkit import __version__

    summary: dict[str, Any] = {
        "kd_toolkit_version": __version__, "config": dict(config or {}),
        "data": {"name": split.name, "num_classes": int(split.num_classes), "input_shape": list(split.input_shape)},
        "splits": {"train": len(split.train_dataset), "val": len(split.val_dataset), "test": len(split.test_dataset)},
        "models": models,
    }
    if "student_regular" in models and "student_distilled" in models:
        summary["kd_gain"] = models["student_distilled"]["test_accuracy"] - models["student_regular"]["test_accuracy"]
    summary["files"] = {
        "report": "report.md", "summary": "results/metrics/summary.json",
        "models": {k: m["model_file"] for k, m in models.items()},
        "state_dicts": {k: m["state_dict_file"] for k, m in models.items()},
        "metrics": {k: m["metrics_file"] for k, m in models.items()},
        "plots": {name: str(p.relative_to(out)) for name, p in plots.items() if p.exists()},
        "predictions": None if predictions is None else str(predictions.relative_to(out)),
    }
    return summary


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

    Returns:
        The summary, also written to ``results/metrics/summary.json``.
    """
    out = Path(output_dir)
    models = _save_models(out, runs, results, split)
    plots = _save_plots(out / "results" / "plots", runs, results, models, split)
    predictions = out / "results" / "predictions" / "test_predictions.csv" if save_predictions else None
    if predictions is not None:
        _write_predictions(predictions, results)
    summary = _summary(out, models, split, config, plots, predictions)
    summary["total_time_s"] = round(time.perf_counter() - start_time, 2) if start_time is not None else None
    write_json(summary, out / summary["files"]["summary"])
    write_text(render_report(summary), out / "report.md")
    return summary
