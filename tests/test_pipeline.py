"""The seed-003 pipeline end to end: ``run_pipeline`` and ``kd-toolkit pipeline`` on digits (and MNIST if present)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from kd_toolkit._io import load_weights
from kd_toolkit.cli import main
from kd_toolkit.models import create_model
from kd_toolkit.pipeline import (
    DEFAULTS,
    evaluate_all_models,
    load_and_split_data,
    load_pipeline_model,
    parse_data_spec,
    resolve_config,
    run_pipeline,
)

MNIST_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist-test"
KEYS = ("teacher", "student_regular", "student_distilled")
MODEL_FILES = ("teacher_model.pt", "student_regular.pt", "student_distilled.pt")
PLOTS = ("teacher_training", "training_curves", "accuracy_comparison", "prediction_examples", "confusion_matrices")


def _check_outputs(out: Path, summary: dict, num_classes: int = 10) -> None:
    for name in MODEL_FILES:
        assert (out / "models" / name).is_file()
    for key in KEYS:
        metrics = json.loads((out / "results" / "metrics" / f"{key}.json").read_text())
        assert 0.0 <= metrics["test_accuracy"] <= 1.0 and metrics["test_loss"] > 0
        assert len(metrics["per_class_accuracy"]) == num_classes
        assert len(metrics["confusion_matrix"]) == num_classes
        assert sum(map(sum, metrics["confusion_matrix"])) == summary["splits"]["test"]
        assert metrics["params"] > 0 and metrics["train_time_s"] > 0
        assert [row["epoch"] for row in metrics["history"]] == list(range(len(metrics["history"])))
        assert all(row["val_acc"] is not None and row["train_loss"] is not None for row in metrics["history"])
    assert json.loads((out / "results" / "metrics" / "summary.json").read_text()) == json.loads(json.dumps(summary))
    for name in PLOTS:
        with Image.open(out / "results" / "plots" / f"{name}.png") as image:
            image.verify()
    lines = (out / "results" / "predictions" / "test_predictions.csv").read_text().splitlines()
    assert len(lines) == summary["splits"]["test"] + 1
    report = (out / "report.md").read_text()
    assert "| model | params | test accuracy | test loss | train time |" in report
    assert "| Student (distilled) |" in report
    assert not list(out.rglob("*.tmp"))  # atomic writes leave nothing behind


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("pipeline")
    summary = run_pipeline(out, epochs=2, teacher_epochs=2, alpha=0.3, temperature=3.0, progress_bar=False,
                           print_results=False)
    return out, summary


def test_run_pipeline_writes_every_output(digits_run):
    out, summary = digits_run
    _check_outputs(out, summary)
    assert set(summary["models"]) == set(KEYS)
    assert summary["splits"] == {"train": 1078, "val": 270, "test": 449}
    assert summary["config"]["alpha"] == 0.3 and summary["config"]["temperature"] == 3.0
    assert summary["config"]["teacher"] == DEFAULTS["digits"]["teacher"]
    assert summary["models"]["teacher"]["params"] > summary["models"]["student_regular"]["params"]
    assert summary["kd_gain"] == pytest.approx(summary["models"]["student_distilled"]["test_accuracy"]
                                               - summary["models"]["student_regular"]["test_accuracy"])
    for key in KEYS:
        assert summary["models"][key]["epochs_trained"] == 2
        assert Path(summary["models"][key]["model_file"]).name in MODEL_FILES
    # each model kept its best checkpoint (on val accuracy) from its own Lightning run
    for key in KEYS:
        metrics = json.loads((out / "results" / "metrics" / f"{key}.json").read_text())
        assert Path(metrics["best_checkpoint"]).is_file()
        assert metrics["best_val_accuracy"] == max(row["val_acc"] for row in metrics["history"])


def test_saved_models_reproduce_the_reported_test_accuracy(digits_run):
    out, summary = digits_run
    split = load_and_split_data("digits", seed=0)
    models = {key: load_pipeline_model(out / "models" / name) for key, name in zip(KEYS, MODEL_FILES)}
    results = evaluate_all_models(models, split.test_loader)
    for key in KEYS:
        assert results[key]["test_accuracy"] == pytest.approx(summary["models"][key]["test_accuracy"])


def test_alpha_weighs_the_label_loss_as_in_seed_003(digits_run):
    """seed 003: loss = alpha * hard_loss + (1 - alpha) * soft_loss; the distilled total is logged per epoch."""
    out, _ = digits_run
    history = json.loads((out / "results" / "metrics" / "student_distilled.json").read_text())["history"]
    for row in history:
        assert row["train_loss"] == pytest.approx(0.3 * row["train_hard_loss"] + 0.7 * row["train_kd_loss"], rel=1e-3)


def test_saved_pth_files_are_bare_state_dicts(digits_run):
    """models/*.pth as seed 003 saved them: `torch.save(model.state_dict())`, loadable with load_state_dict."""
    out, summary = digits_run
    for key, name in zip(KEYS, MODEL_FILES):
        state = torch.load(out / "models" / name.replace(".pt", ".pth"), map_location="cpu")
        model = create_model(summary["models"][key]["name"])
        model.load_state_dict(state)
        reference = load_pipeline_model(out / "models" / name)
        assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), reference.state_dict().values()))
    assert summary["files"]["state_dicts"]["student_distilled"] == "models/student_distilled.pth"


def test_saved_teacher_loads_as_a_teacher_checkpoint(digits_run):
    """`configs/distill_digits.yaml` can point `teacher_checkpoint` at the pipeline's teacher file."""
    out, summary = digits_run
    teacher = load_weights(create_model(summary["config"]["teacher"]), str(out / "models" / "teacher_model.pt"))
    reference = load_pipeline_model(out / "models" / "teacher_model.pt")
    assert all(torch.equal(a, b) for a, b in zip(teacher.state_dict().values(), reference.state_dict().values()))


def test_cli_pipeline_runs_end_to_end(tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["pipeline", "--output-dir", str(out), "--epochs", "1", "--teacher-epochs", "1",
                 "--limit-batches", "3", "--no-progress-bar", "--seed", "1", "--batch-size", "32"]) == 0
    summary = json.loads((out / "results" / "metrics" / "summary.json").read_text())
    _check_outputs(out, summary)
    assert summary["config"]["seed"] == 1 and summary["config"]["batch_size"] == 32
    printed = capsys.readouterr().out
    assert "test-set comparison" in printed and "Student (distilled)" in printed


def test_pipeline_restores_torch_threads(tmp_path):
    before = torch.get_num_threads()
    with pytest.raises(ValueError):
        run_pipeline(tmp_path, student="mnist_student_30", print_results=False)
    assert torch.get_num_threads() == before


@pytest.mark.skipif(not MNIST_DIR.is_dir(), reason=f"MNIST test files not found in {MNIST_DIR}")
def test_pipeline_on_mnist_test_files(tmp_path):
    """The `--data mnist:DIR` path with only the 10,000 test images (split 70/10/20); small MLPs keep it fast
    (the cached teacher pass covers all 7,000 training images whatever `limit_batches` is)."""
    summary = run_pipeline(tmp_path, data=f"mnist:{MNIST_DIR}", epochs=1, teacher_epochs=1, limit_batches=2,
                           teacher="mnist_student_30", progress_bar=False, print_results=False, save_predictions=False)
    assert DEFAULTS["mnist"]["student"] == "seed003_student"  # seed 003's architectures on MNIST
    assert summary["config"]["student"] == DEFAULTS["mnist"]["student"]
    assert summary["splits"] == {"train": 7000, "val": 1000, "test": 2000}
    assert summary["data"]["input_shape"] == [1, 28, 28]
    assert summary["files"]["predictions"] is None
    for name in MODEL_FILES:
        assert (tmp_path / "models" / name).is_file()
    for name in PLOTS:
        assert (tmp_path / "results" / "plots" / f"{name}.png").is_file()


# ------------------------------------------------------------------------------------ validation
def test_parse_data_spec():
    assert parse_data_spec("digits") == ("digits", None)
    assert parse_data_spec("mnist:/data/x") == ("mnist", Path("/data/x"))
    with pytest.raises(ValueError, match=r"Expected `--data` to be 'digits' or 'mnist:DIR', but got 'mnist'\."):
        parse_data_spec("mnist")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"epochs": 0}, r"Expected `epochs` to be a positive int, but got 0\."),
        ({"teacher_epochs": 2.5}, r"Expected `teacher_epochs` to be a positive int, but got 2\.5\."),
        ({"temperature": -1.0}, r"Expected `temperature` to be a positive float, but got -1\.0\."),
        ({"alpha": 1.2}, r"Expected `alpha` to be a float in \[0, 1\], but got 1\.2\."),
        ({"lr": float("inf")}, r"Expected `lr` to be a positive float, but got inf\."),
        ({"seed": -3}, r"Expected `seed` to be an int >= 0, but got -3\."),
        ({"batch_size": True}, r"Expected `batch_size` to be a positive int, but got True\."),
        ({"teacher": "gpt"}, r"Expected `teacher` to be one of \["),
        ({"limit_batches": 0}, r"Expected `limit_batches` to be a positive int, but got 0\."),
        ({"limit_batches": 2.0}, r"Expected `limit_batches` to be a float in \(0, 1\], but got 2\.0\."),
        ({"num_threads": 0}, r"Expected `num_threads` to be a positive int, but got 0\."),
    ],
)
def test_resolve_config_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        resolve_config("digits", **kwargs)


def test_resolve_config_missing_mnist_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_config(f"mnist:{tmp_path / 'missing'}")


def test_resolve_config_defaults_per_dataset(tmp_path):
    cfg = resolve_config("digits")
    assert (cfg.teacher, cfg.student, cfg.epochs) == (DEFAULTS["digits"]["teacher"], DEFAULTS["digits"]["student"],
                                                      DEFAULTS["digits"]["epochs"])
    cfg = resolve_config(f"mnist:{tmp_path}", epochs=3, alpha=0.0)
    assert (cfg.teacher, cfg.epochs, cfg.alpha) == (DEFAULTS["mnist"]["teacher"], 3, 0.0)
