"""Seed 003 (ranzeet013/knowledge-distillation) on kd_toolkit: ports of its ``main.py`` demo and of its README's
programmatic example, each of its six documented functions called in its positional order, and its output files
loaded the way its ``scripts/`` load them.

The data is a stratified sample of 1,500 of the MNIST test images in ``../shared/data/mnist-test`` written as
IDX files into a temporary folder (with only test files, they are split 70/10/20 % into train/val/test).
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset, Subset

from kd_toolkit.data import load_mnist_idx, stratified_split
from kd_toolkit.models import create_model, list_models
from kd_toolkit.pipeline import loss_weights, run_pipeline
from kd_toolkit.pipeline import seed_api as seed

MNIST_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist-test"
pytestmark = pytest.mark.skipif(not MNIST_DIR.is_dir(), reason=f"MNIST test files not found in {MNIST_DIR}")
SEED_PLOTS = ("teacher_training", "training_curves", "accuracy_comparison", "prediction_examples")
SEED_MODELS = ("teacher_model.pth", "student_regular.pth", "student_distilled.pth")


# --------------------------------------------------- the architectures as seed 003's scripts/ define them
class ScriptTeacherModel(nn.Module):
    """The teacher as seed 003's scripts/model_evaluator.py declares it (written here independently)."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2, self.conv3 = nn.Conv2d(1, 32, 3, 1), nn.Conv2d(32, 64, 3, 1), nn.Conv2d(64, 64, 3, 1)
        self.fc1, self.fc2 = nn.Linear(576, 64), nn.Linear(64, 10)
        self.dropout1, self.dropout2, self.maxpool = nn.Dropout(0.25), nn.Dropout(0.5), nn.MaxPool2d(2)

    def forward(self, x):
        x = self.maxpool(F.relu(self.conv1(x)))
        x = self.maxpool(F.relu(self.conv2(x)))
        x = self.dropout1(torch.flatten(F.relu(self.conv3(x)), 1))
        return self.fc2(self.dropout2(F.relu(self.fc1(x))))


class ScriptStudentModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(784, 32), nn.Linear(32, 10)

    def forward(self, x):
        return self.fc2(F.relu(self.fc1(torch.flatten(x, 1))))


def load_like_the_scripts(model_dir: Path) -> dict[str, nn.Module]:
    """What ModelEvaluator.load_model / DigitPredictor._load_model do: build, torch.load the .pth, load_state_dict."""
    models = {}
    for key, name in zip(("teacher", "student_regular", "student_distilled"), SEED_MODELS):
        model = ScriptTeacherModel() if key == "teacher" else ScriptStudentModel()
        model.load_state_dict(torch.load(model_dir / name, map_location="cpu"))
        models[key] = model.eval()
    return models


def accuracy(model: nn.Module, loader: DataLoader) -> float:
    correct = total = 0
    with torch.no_grad():
        for x, y in loader:
            correct += int((model(x).argmax(1) == y).sum())
            total += len(y)
    return correct / total


# ------------------------------------------------------------------------------------------ fixtures
def _write_idx(path: Path, array: np.ndarray, magic: int) -> None:
    header = np.array([magic, *array.shape], dtype=">u4").tobytes()
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture(scope="module")
def small_mnist(tmp_path_factory) -> Path:
    images, labels = load_mnist_idx(MNIST_DIR)
    keep = stratified_split(labels, [0.15, 0.85], seed=0)[0]  # 1,500 images, every class in proportion
    folder = tmp_path_factory.mktemp("mnist-small")
    _write_idx(folder / "t10k-images-idx3-ubyte.gz", images[keep], 2051)
    _write_idx(folder / "t10k-labels-idx1-ubyte.gz", labels[keep], 2049)
    return folder


@pytest.fixture
def settings(small_mnist, tmp_path, monkeypatch):
    """The seed's config.py edited for a quick CPU run: one epoch, local data, files under tmp_path."""
    for name, value in {"DATA_DIR": small_mnist, "OUTPUT_DIR": tmp_path, "EPOCHS": 1, "PROGRESS_BAR": False}.items():
        monkeypatch.setattr(seed, name, value)
    return tmp_path


@pytest.fixture(scope="module")
def trained(small_mnist, tmp_path_factory):
    """One run of the seed's steps (1 epoch each), shared by the call-form tests below."""
    patch = pytest.MonkeyPatch()
    out = tmp_path_factory.mktemp("seed003")
    for name, value in {"DATA_DIR": small_mnist, "OUTPUT_DIR": out, "EPOCHS": 1, "PROGRESS_BAR": False}.items():
        patch.setattr(seed, name, value)
    data = seed.load_and_split_data()
    teacher = seed.train_teacher(data[0], data[1])
    distill = seed.prepare_distillation_data(teacher[0], data[0], data[1], data[3], data[4])
    students = seed.train_students(teacher[0], data[0], data[1], *distill)
    yield {"out": out, "data": data, "teacher": teacher, "distill": distill, "students": students}
    patch.undo()


# ------------------------------------------------------------------------------------- the demos
def test_port_of_the_seed_main_writes_the_seed_files(settings, capsys):
    """`python main.py`: the seed's main() with its config edited (1 epoch, local data)."""
    assert seed.main() is None
    printed = capsys.readouterr().out
    assert "Training samples: 1050" in printed and "Test Accuracies:" in printed
    assert "Knowledge distillation pipeline completed successfully!" in printed
    for name in SEED_MODELS:
        assert (settings / "models" / name).is_file()
    for name in SEED_PLOTS:
        assert (settings / "results" / "plots" / f"{name}.png").stat().st_size > 1000
    for folder in ("metrics", "predictions", "plots"):
        assert (settings / "results" / folder).is_dir()
    metrics = json.loads((settings / "results" / "metrics" / "test_metrics.json").read_text())
    assert set(metrics["test_accuracy"]) == {"teacher", "student_regular", "student_distilled"}


def test_port_of_the_seed_readme_programmatic_usage(settings):
    train_loader, val_loader, *_ = seed.load_and_split_data()
    teacher, *_ = seed.train_teacher(train_loader, val_loader)
    assert isinstance(teacher, nn.Module)
    assert (settings / "results" / "plots" / "teacher_training.png").is_file()


# ------------------------------------------------------------------- one test per call form, seed's order
def test_load_and_split_data_returns_the_seed_six_tuple(trained):
    train_loader, val_loader, test_loader, train_subset, val_subset, test_dataset = trained["data"]
    assert all(isinstance(loader, DataLoader) for loader in (train_loader, val_loader, test_loader))
    assert isinstance(train_subset, Subset) and isinstance(val_subset, Subset) and isinstance(test_dataset, Dataset)
    assert (len(train_subset), len(val_subset), len(test_dataset)) == (1050, 150, 300)
    x, y = next(iter(train_loader))
    assert x.shape == (seed.BATCH_SIZE, 1, 28, 28) and y.dtype == torch.int64
    assert abs(float(x.mean())) < 0.5  # normalised with MNIST's mean/std, as the seed's transform
    assert not set(train_subset.indices) & set(val_subset.indices)


def test_train_teacher_returns_the_model_and_four_histories(trained):
    model, train_loss, val_loss, train_acc, val_acc = trained["teacher"]
    assert sorted(k for k, _ in model.named_parameters()) == sorted(k for k, _ in ScriptTeacherModel().named_parameters())
    for values in (train_loss, val_loss, train_acc, val_acc):
        assert isinstance(values, list) and len(values) == seed.EPOCHS == 1
        assert all(isinstance(v, float) for v in values)
    assert 0 < train_acc[0] <= 1 and 0 < val_acc[0] <= 1


def test_prepare_distillation_data_attaches_each_sample_its_own_teacher_logits(trained):
    """The seed took the logits from its shuffled training loader (each sample got another's); here they match."""
    train_distill_loader, val_distill_loader = trained["distill"]
    teacher = trained["teacher"][0].eval()
    for loader in (train_distill_loader, val_distill_loader):
        x, y, logits = next(iter(loader))
        assert logits.shape == (len(x), 10)
        with torch.no_grad():
            torch.testing.assert_close(logits, teacher(x), rtol=1e-4, atol=1e-4)


def test_train_students_returns_the_seed_ten_tuple(trained):
    student_reg, student_dist, *metrics = trained["students"]
    assert isinstance(student_reg, nn.Module) and isinstance(student_dist, nn.Module)
    assert len(metrics) == 8 and all(isinstance(m, list) and len(m) == 1 for m in metrics)
    for student in (student_reg, student_dist):
        ScriptStudentModel().load_state_dict(student.state_dict())  # the seed's StudentModel, same keys


def test_evaluate_all_models_returns_the_seed_seven_tuple(trained, capsys):
    test_loader = trained["data"][2]
    student_reg, student_dist = trained["students"][:2]
    result = seed.evaluate_all_models(trained["teacher"][0], student_reg, student_dist, test_loader)
    teacher_acc, reg_acc, dist_acc, teacher_preds, reg_preds, dist_preds, targets = result
    assert all(isinstance(a, float) and 0 <= a <= 1 for a in (teacher_acc, reg_acc, dist_acc))
    for array in (teacher_preds, reg_preds, dist_preds, targets):
        assert isinstance(array, np.ndarray) and array.shape == (300,)
    assert reg_acc == pytest.approx(float((reg_preds == targets).mean()))
    assert "Regular Student:" in capsys.readouterr().out


def test_save_and_visualize_results_writes_files_the_seed_scripts_load(trained):
    out, test_loader = trained["out"], trained["data"][2]
    teacher = trained["teacher"][0]
    student_reg, student_dist, *student_metrics = trained["students"]
    test_metrics = seed.evaluate_all_models(teacher, student_reg, student_dist, test_loader)
    train_metrics = (*trained["teacher"][1:], *student_metrics)
    assert seed.save_and_visualize_results(teacher, student_reg, student_dist, train_metrics, test_metrics,
                                           test_loader) is None
    for name in SEED_PLOTS[1:]:
        assert (out / "results" / "plots" / f"{name}.png").is_file()
    # scripts/model_evaluator.py: torch.load + load_state_dict into its own classes, same test accuracy
    loaded = load_like_the_scripts(out / "models")
    for key, expected in zip(("teacher", "student_regular", "student_distilled"), test_metrics[:3]):
        assert accuracy(loaded[key], test_loader) == pytest.approx(expected)
    assert isinstance(torch.load(out / "models" / "teacher_model.pth", weights_only=True), dict)


def test_save_and_visualize_results_checks_the_metric_tuples(trained):
    teacher = trained["teacher"][0]
    with pytest.raises(ValueError, match=r"Expected `train_metrics` of 12 lists and `test_metrics` of 7 values"):
        seed.save_and_visualize_results(teacher, teacher, teacher, (), (), trained["data"][2])


# ------------------------------------------------------------------------------- meaning of ALPHA
def test_alpha_weighs_the_hard_loss_as_in_the_seed():
    """seed 003's distillation_loss: alpha * hard_loss + (1 - alpha) * soft_loss."""
    assert loss_weights(0.8) == {"hard_loss": 0.8, "kd_loss": pytest.approx(0.2)}
    assert loss_weights(0.8, distilled=False) == {"hard_loss": 1.0}


def test_seed_architectures_are_registered():
    assert {"seed003_teacher", "seed003_student"} <= set(list_models())
    assert sum(p.numel() for p in create_model("seed003_teacher").parameters()) == 93_322
    ScriptTeacherModel().load_state_dict(create_model("seed003_teacher").state_dict())


# ------------------------------------------------------------------- the kd_toolkit pipeline on MNIST
def test_pipeline_on_mnist_writes_pth_files_the_seed_scripts_load(small_mnist, tmp_path):
    summary = run_pipeline(tmp_path, data=f"mnist:{small_mnist}", epochs=1, teacher_epochs=1, alpha=0.3,
                           progress_bar=False, print_results=False, save_predictions=False)
    assert (summary["config"]["teacher"], summary["config"]["student"]) == ("seed003_teacher", "seed003_student")
    assert summary["files"]["state_dicts"]["teacher"] == "models/teacher_model.pth"
    loaded = load_like_the_scripts(tmp_path / "models")
    for key, model in loaded.items():
        assert model.fc2.out_features == 10
        assert summary["models"][key]["params"] == sum(p.numel() for p in model.parameters())
    history = json.loads((tmp_path / "results" / "metrics" / "student_distilled.json").read_text())["history"]
    row = history[-1]  # the distilled total is 0.3 * label CE + 0.7 * KD
    assert row["train_loss"] == pytest.approx(0.3 * row["train_hard_loss"] + 0.7 * row["train_kd_loss"], rel=1e-3)
