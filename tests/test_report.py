"""Plot, table and report helpers of ``kd_toolkit.pipeline.report`` on small fake inputs (no training)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from rich.console import Console

from kd_toolkit.data import make_loader
from kd_toolkit.models import create_model
from kd_toolkit.pipeline import evaluate_all_models, load_pipeline_model
from kd_toolkit.pipeline.plots import _pick_examples
from kd_toolkit.pipeline.report import (
    comparison_rows,
    plot_accuracy_comparison,
    plot_confusion_matrices,
    plot_prediction_examples,
    plot_teacher_training,
    plot_training_curves,
    print_summary,
    render_report,
    save_and_visualize_results,
    write_json,
)

KEYS = ("teacher", "student_regular", "student_distilled")


def _history(epochs: int = 3, kd: bool = False) -> list[dict]:
    rows = []
    for e in range(epochs):
        row = {"epoch": e, "train_loss": 1.0 / (e + 1), "train_hard_loss": 0.9 / (e + 1), "val_loss": 0.8 / (e + 1),
               "val_acc": 0.5 + 0.1 * e, "train_kd_loss": 0.3 / (e + 1) if kd else None}
        rows.append(row)
    return rows


def _summary() -> dict:
    models = {k: {"params": p, "test_accuracy": a, "test_loss": loss, "train_time_s": t}
              for k, p, a, loss, t in zip(KEYS, (53002, 1210, 1210), (0.985, 0.95, 0.962), (0.05, 0.2, 0.15), (3, 2, 2.5))}
    return {"config": {"data": "digits", "temperature": 4.0}, "models": models, "splits": {"train": 10, "test": 5},
            "total_time_s": 12.0, "files": {"plots": {"accuracy_comparison": "results/plots/accuracy_comparison.png"}}}


def _assert_png(path: Path) -> None:
    assert path.is_file() and path.stat().st_size > 1000
    with Image.open(path) as image:
        image.verify()
        assert image.format == "PNG"
    assert not list(path.parent.glob(f".{path.name}.*"))  # no temporary file left behind


def test_write_json_handles_numpy_and_tensors(tmp_path):
    path = write_json({"a": np.float32(0.25), "b": np.arange(3), "c": torch.tensor([1, 2]), "d": tmp_path}, tmp_path / "x.json")
    assert json.loads(path.read_text()) == {"a": 0.25, "b": [0, 1, 2], "c": [1, 2], "d": str(tmp_path)}


def test_write_json_rejects_unknown_objects(tmp_path):
    with pytest.raises(TypeError, match="not JSON serializable"):
        write_json({"a": object()}, tmp_path / "x.json")
    assert not (tmp_path / "x.json").exists()


def test_plots_are_valid_pngs(tmp_path):
    histories = {"teacher": _history(), "student_regular": _history(), "student_distilled": _history(kd=True)}
    _assert_png(plot_teacher_training(histories["teacher"], tmp_path / "teacher_training.png"))
    _assert_png(plot_training_curves(histories, tmp_path / "training_curves.png"))
    _assert_png(plot_accuracy_comparison({"teacher": 0.98, "student_regular": 0.9, "student_distilled": 0.93},
                                         tmp_path / "accuracy.png", params={"teacher": 100, "student_regular": 10}))
    _assert_png(plot_confusion_matrices({k: np.eye(10, dtype=int) * 5 for k in KEYS}, tmp_path / "cm.png"))


def test_training_curves_tolerate_missing_values(tmp_path):
    history = [{"epoch": 0, "train_loss": 1.0, "val_acc": None}, {"epoch": 1, "train_loss": 0.5, "val_acc": 0.7}]
    _assert_png(plot_training_curves({"custom_model": history}, tmp_path / "curves.png"))


@pytest.mark.parametrize("shape", [(12, 8, 8), (12, 1, 8, 8), (12, 3, 8, 8)])
def test_prediction_examples_accept_image_layouts(tmp_path, shape):
    rng = np.random.default_rng(0)
    labels = np.arange(12) % 10
    preds = {k: labels.copy() for k in KEYS}
    preds["student_regular"][[1, 5]] = 0
    _assert_png(plot_prediction_examples(rng.random(shape), labels, preds, tmp_path / "p.png", count=6))


def test_prediction_examples_reject_mismatched_images(tmp_path):
    with pytest.raises(ValueError, match=r"Expected `images` of shape \(N, H, W\) or \(N, C, H, W\) with N = 3"):
        plot_prediction_examples(np.zeros((5, 8, 8)), np.arange(3), {"teacher": np.arange(3)}, tmp_path / "p.png")


def test_pick_examples_prefers_mistakes_then_fills_in_order():
    labels = np.arange(20) % 10
    wrong = labels.copy()
    wrong[[7, 13, 17]] = 9 - labels[[7, 13, 17]]
    picked = _pick_examples(labels, {"a": labels, "b": wrong}, count=6)
    assert len(picked) == 6 and {7, 13, 17} <= set(picked.tolist())
    assert list(picked) == sorted(picked)
    assert _pick_examples(labels[:3], {"a": labels[:3]}, count=6).tolist() == [0, 1, 2]


def test_comparison_rows_and_report():
    summary = _summary()
    rows = comparison_rows(summary)
    assert [r["model"] for r in rows] == ["Teacher", "Student (regular)", "Student (distilled)"]
    assert rows[0] == {"model": "Teacher", "params": "53,002", "test accuracy": "98.50%", "test loss": "0.0500",
                       "train time": "3.0 s"}
    text = render_report(summary)
    assert "| model | params | test accuracy | test loss | train time |" in text
    assert "| Student (distilled) | 1,210 | 96.20% | 0.1500 | 2.5 s |" in text
    assert "better than the regular student by 1.20 percentage points" in text
    assert "![accuracy_comparison](results/plots/accuracy_comparison.png)" in text
    assert "- `temperature`: 4.0" in text


def test_report_says_when_distillation_hurts():
    summary = _summary()
    summary["models"]["student_distilled"]["test_accuracy"] = 0.94
    assert "worse than the regular student by 1.00 percentage points" in render_report(summary)


def test_print_summary_prints_a_rich_table():
    buffer = io.StringIO()
    print_summary(_summary(), console=Console(file=buffer, width=120, color_system=None))
    text = buffer.getvalue()
    assert "Student (distilled)" in text and "96.20%" in text and "better than the regular student" in text


def test_save_and_visualize_results_writes_every_file(tmp_path):
    """The whole writing step on untrained registry models and a fake split."""
    torch.manual_seed(0)
    x, y = torch.rand(30, 1, 8, 8), torch.arange(30) % 10
    loader = make_loader(x, y, batch_size=8)
    models = {"teacher": create_model("digits_teacher"), "student_regular": create_model("digits_student"),
              "student_distilled": create_model("digits_student")}
    results = evaluate_all_models(models, loader, num_classes=10)
    runs = {k: SimpleNamespace(model=m, name="digits_teacher" if k == "teacher" else "digits_student",
                               history=_history(kd=k == "student_distilled"), train_time_s=1.5, best_epoch=2,
                               best_val_accuracy=0.7, run_dir=tmp_path / "runs" / k, best_checkpoint=None)
            for k, m in models.items()}
    dataset = loader.dataset
    split = SimpleNamespace(num_classes=10, input_shape=(1, 8, 8), name="digits", train_dataset=dataset,
                            val_dataset=dataset, test_dataset=dataset)
    summary = save_and_visualize_results(tmp_path, runs, results, split, config={"seed": 0}, start_time=0.0)

    for name in ("teacher_model", "student_regular", "student_distilled"):
        assert (tmp_path / "models" / f"{name}.pt").is_file()
    teacher = load_pipeline_model(tmp_path / "models" / "teacher_model.pt")
    assert all(torch.equal(a, b) for a, b in zip(teacher.state_dict().values(), models["teacher"].state_dict().values()))
    for key in (*KEYS, "summary"):
        data = json.loads((tmp_path / "results" / "metrics" / f"{key}.json").read_text())
        if key != "summary":
            assert len(data["confusion_matrix"]) == 10 and len(data["history"]) == 3
            assert data["test_accuracy"] == pytest.approx(results[key]["test_accuracy"])
    for name in ("teacher_training", "training_curves", "accuracy_comparison", "prediction_examples",
                 "confusion_matrices"):
        _assert_png(tmp_path / "results" / "plots" / f"{name}.png")
    lines = (tmp_path / "results" / "predictions" / "test_predictions.csv").read_text().splitlines()
    assert lines[0].startswith("index,label,teacher_pred,teacher_confidence") and len(lines) == 31
    assert summary["splits"] == {"train": 30, "val": 30, "test": 30}
    assert summary["kd_gain"] == pytest.approx(results["student_distilled"]["test_accuracy"]
                                               - results["student_regular"]["test_accuracy"])
    assert "| Teacher |" in (tmp_path / "report.md").read_text()


def test_evaluate_all_models_matches_a_hand_computation():
    torch.manual_seed(0)
    x, y = torch.randn(40, 4), torch.arange(40) % 3
    model = torch.nn.Linear(4, 3)
    result = evaluate_all_models({"m": model}, make_loader(x, y, batch_size=16))["m"]
    with torch.no_grad():
        logits = model(x)
    pred = logits.argmax(1)
    assert result["test_accuracy"] == pytest.approx(float((pred == y).float().mean()))
    assert result["test_loss"] == pytest.approx(float(torch.nn.functional.cross_entropy(logits, y)), rel=1e-5)
    cm = np.zeros((3, 3), dtype=int)
    for t, p in zip(y.tolist(), pred.tolist()):
        cm[t, p] += 1
    assert result["confusion_matrix"] == cm.tolist()
    assert result["per_class_accuracy"] == pytest.approx([cm[c, c] / cm[c].sum() for c in range(3)])
    assert result["params"] == 15


def test_kd_toolkit_report_is_a_deprecated_alias_of_pipeline_report():
    import importlib
    import sys

    import kd_toolkit.pipeline.report as new

    sys.modules.pop("kd_toolkit.report", None)  # the warning comes with the first import
    with pytest.warns(DeprecationWarning, match=r"kd_toolkit\.report is deprecated; import from kd_toolkit\.pipeline\.report"):
        old = importlib.import_module("kd_toolkit.report")
    assert old.__all__ == new.__all__
    for name in old.__all__:
        assert getattr(old, name) is getattr(new, name), name


# ------------------------------------------------------------------ what the plots show (issue 14)
@pytest.fixture
def figures(monkeypatch):
    """The Figure each plot function draws, captured instead of written."""
    import kd_toolkit.pipeline.plots as plots

    drawn = []
    monkeypatch.setattr(plots, "_save_figure", lambda fig, path: drawn.append(fig) or Path(path))
    return drawn


def _falling(epochs: int, start: float, end: float) -> list[float]:
    return list(np.geomspace(start, end, epochs))


def test_loss_plot_shows_every_component_on_a_log_scale(figures):
    epochs = 40
    hard, kd = _falling(epochs, 2.3, 0.01), _falling(epochs, 20.0, 0.5)
    distilled = [{"epoch": e, "train_hard_loss": hard[e], "train_kd_loss": kd[e], "train_loss": 0.5 * hard[e] + 0.5 * kd[e],
                  "val_acc": min(0.99, 0.3 + e / 50)} for e in range(epochs)]
    regular = [{"epoch": e, "train_hard_loss": hard[e], "train_loss": hard[e], "val_acc": 0.3 + e / 60}
               for e in range(epochs)]
    plot_training_curves({"student_regular": regular, "student_distilled": distilled}, "unused.png")
    loss_ax, acc_ax = figures[-1].axes
    labels = [line.get_label() for line in loss_ax.get_lines()]
    assert labels == ["Student (regular): label cross-entropy", "Student (distilled): label cross-entropy",
                      "Student (distilled): KD term (T²-scaled)", "Student (distilled): weighted total"]
    assert loss_ax.get_yscale() == "log"  # the later epochs, 100x below the first, stay readable
    low, high = acc_ax.get_ylim()
    assert high == 1.0 and low > 0.3  # zoomed on the later epochs, never above 100 %
    assert "early epochs below the axis" in acc_ax.get_ylabel()


def test_short_runs_keep_a_linear_full_axis(figures):
    plot_training_curves({"teacher": _history(3)}, "unused.png")
    loss_ax, acc_ax = figures[-1].axes
    assert loss_ax.get_yscale() == "linear" and "below the axis" not in acc_ax.get_ylabel()


def test_accuracy_bars_start_at_zero_and_stop_at_100(figures):
    plot_accuracy_comparison({"teacher": 1.0, "student_regular": 0.9612, "student_distilled": 0.9688}, "unused.png")
    ax = figures[-1].axes[0]
    assert ax.get_ylim() == (0.0, 100.0)
    assert "distilled - regular: +0.76 points" in ax.get_title()
    assert all(text.xyann[1] < 0 for text in ax.texts)  # value labels inside the bars, below 100 %


def test_teacher_plot_shows_train_accuracy_when_recorded(figures):
    history = [{"epoch": e, "train_loss": 1 / (e + 1), "val_loss": 1 / (e + 1), "train_acc": 0.8, "val_acc": 0.7}
               for e in range(2)]
    plot_teacher_training(history, "unused.png")
    assert [line.get_label() for line in figures[-1].axes[1].get_lines()] == ["train", "validation"]
