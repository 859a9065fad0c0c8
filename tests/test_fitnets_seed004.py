"""Seed 004 (omkar-334/KD ``FitNets/``): ports of its ``example_usage.py`` and ``teacher.py`` flow, and its call forms.

Each port keeps the original's calls; the only changes are the import line (``kd_toolkit.fitnets``), local data
(digits PNGs written in the original's one-folder-per-class layout), ``device="cpu"``, fewer epochs, and, to run
in seconds on CPU, ``image_size=8`` / ``num_workers=0`` (the original resizes to 128x128 with 4 workers).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits

from kd_toolkit.fitnets import (
    MultiBranchNet,
    compute_fitnets_loss,
    create_fitnets_config,
    create_teacher_config,
    evaluate_model,
    get_teacher_path,
    load_model,
    load_teacher_model,
    prepare_dataloaders,
    train_epoch,
    train_fitnets,
    train_teacher,
    validate,
    visualize_feature_maps,
)

LOCAL = {"device": "cpu", "num_workers": 0, "image_size": 8, "verbose": False}  # CPU, seconds
HISTORY_KEYS = {"epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "classification_loss", "kd_loss",
                "feature_loss", "total_loss"}
RESULT_KEYS = {"model", "teacher_model", "best_accuracy", "training_history", "test_results", "config",
               "experiment_name"}


def write_digits_folder(root: Path, classes: int = 3, per_class: int = 12) -> Path:
    """The original's ``data_dir``: one folder of PNG images per class (real 8x8 digits, RGB as ImageFolder reads)."""
    digits = load_digits()
    for label in range(classes):
        folder = root / f"digit_{label}"
        folder.mkdir(parents=True)
        for i, j in enumerate(np.flatnonzero(digits.target == label)[:per_class]):
            pixels = (digits.images[j] * 255 / 16).astype(np.uint8)
            Image.fromarray(pixels).convert("RGB").save(folder / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return write_digits_folder(tmp_path_factory.mktemp("seed004") / "data")


@pytest.fixture()
def in_tmp(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)  # the original writes checkpoints/ and logs/ under the working directory
    return tmp_path


def _check_result(results: dict, epochs: int) -> None:
    assert set(results) == RESULT_KEYS
    history = results["training_history"]
    assert [h["epoch"] for h in history] == list(range(epochs))  # counted from 0, as the original
    assert all(HISTORY_KEYS <= h.keys() for h in history)
    assert isinstance(results["best_accuracy"], float) and 0 <= results["best_accuracy"] <= 100  # percent
    assert results["best_accuracy"] == max(h["val_acc"] for h in history)


def test_example_basic_training(in_tmp, data_dir, capsys):
    """example_usage.example_basic_training: MultiBranchNet from data_dir, no teacher."""
    config = create_fitnets_config(model="MultiBranchNet", data_dir=str(data_dir), epochs=2, batch_size=16, beta=1e-3,
                                   experiment_name="FitNets_MultiBranchNet_basic", **{**LOCAL, "verbose": True})
    results = train_fitnets(config)
    print(f"Best accuracy: {results['best_accuracy']:.4f}")
    _check_result(results, 2)
    assert isinstance(results["model"], MultiBranchNet) and results["teacher_model"] is None
    logits, features = results["model"](torch.randn(2, 3, 8, 8))  # the original's outputs
    assert len(logits) == len(features) == 4 and logits[-1].shape == (2, 3)
    save, logs = in_tmp / "checkpoints/default/FitNets", in_tmp / "logs/default/FitNets"
    name = "FitNets_MultiBranchNet_basic"
    for file in (f"{name}_best.pth", f"{name}_final.pth", f"{name}_epoch_0.pth"):
        assert (save / file).is_file(), file
    summary = json.loads((logs / f"{name}_summary.json").read_text())
    assert {"experiment_name", "method", "model", "best_accuracy", "total_epochs", "config", "training_history",
            "test_results"} <= summary.keys() and summary["method"] == "FitNets"
    assert list((logs / name).rglob("events.out.tfevents.*")) and (logs / f"{name}.log").is_file()
    out = capsys.readouterr().out
    assert "Epoch 0: Train Loss:" in out and "Epoch 1: Train Loss:" in out  # progress, as the original logs
    best = torch.load(save / f"{name}_best.pth", weights_only=True)
    assert {"epoch", "model_state_dict", "optimizer_state_dict", "best_acc", "config"} <= best.keys()
    assert best["config"]["num_classes"] == 3 and best["best_acc"] == results["best_accuracy"]


def test_teacher_flow_then_example_with_teacher(in_tmp, data_dir):
    """teacher.py's train_teacher, then example_usage.example_with_teacher with the saved teacher."""
    teacher_config = create_teacher_config(model="ResNet18", data_dir=str(data_dir), batch_size=16, epochs=1, **LOCAL)
    teacher_results = train_teacher(teacher_config)
    teacher_path = Path(teacher_results["teacher_path"])
    assert teacher_path == Path("checkpoints/teachers/default/Teacher/ResNet18_teacher_best.pth")
    assert (in_tmp / teacher_path.with_name("ResNet18_teacher_final.pth")).is_file()
    saved = torch.load(teacher_path, weights_only=True)
    assert saved["config"]["model"] == "ResNet18" and "model_state_dict" in saved
    config = create_fitnets_config(model="ResNet18", teacher_model=str(teacher_path), data_dir=str(data_dir), epochs=2,
                                   batch_size=16, temperature=3.0, alpha=0.1, beta=1e-3,
                                   experiment_name="FitNets_ResNet18_with_teacher", **LOCAL)
    results = train_fitnets(config)
    _check_result(results, 2)
    assert results["teacher_model"] is not None
    assert results["training_history"][0]["feature_loss"] > 0 and results["training_history"][0]["kd_loss"] > 0


def test_teacher_written_by_the_original_code(tmp_path, data_dir):
    """A checkpoint exactly as the original's teacher.py saves it (torchvision model, model_state_dict + config)."""
    from torchvision.models import resnet18

    teacher = resnet18(weights=None)
    teacher.fc = torch.nn.Linear(teacher.fc.in_features, 3)
    path = tmp_path / "ResNet18_teacher_best.pth"
    torch.save({"epoch": 3, "model_state_dict": teacher.state_dict(), "optimizer_state_dict": {}, "best_acc": 50.0,
                "config": {"model": "ResNet18", "num_classes": 3, "experiment_name": "t"}}, path)
    loaded = load_teacher_model(str(path), 3, "cpu")  # the original's positional call form
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(loaded(x), teacher.eval()(x))
    config = create_fitnets_config(model="MultiBranchNet", teacher_model=str(path), data_dir=str(data_dir), epochs=1,
                                   batch_size=16, save_dir=str(tmp_path / "c"), log_dir=str(tmp_path / "l"), **LOCAL)
    assert train_fitnets(config)["config"]["hint_layers"] == {"att.3": "layer4"}


def test_example_custom_data_and_evaluation(in_tmp, data_dir):
    """example_custom_data (prepare_dataloaders + positional loaders), example_model_evaluation and
    example_feature_visualization."""
    train_loader, val_loader, test_loader = prepare_dataloaders(str(data_dir), batch_size=16, augment=True,
                                                                image_size=8)
    assert len(train_loader.dataset.dataset.classes) == 3  # a Subset of an ImageFolder, as the original's
    assert [len(loader.dataset) for loader in (train_loader, val_loader, test_loader)] == [26, 7, 3]  # 70/20/10
    config = create_fitnets_config(model="MultiBranchNet", epochs=2, beta=1e-3, experiment_name="FitNets_custom_data",
                                   **LOCAL)
    results = train_fitnets(config, train_loader, val_loader, test_loader)
    _check_result(results, 2)
    assert set(results["test_results"]) == {"test_loss", "test_acc"} and 0 <= results["test_results"]["test_acc"] <= 100
    checkpoint = load_model("checkpoints/default/FitNets/FitNets_custom_data_best.pth")
    model, config = checkpoint["model"], checkpoint["config"]
    assert isinstance(checkpoint["epoch"], int) and checkpoint["best_acc"] == results["best_accuracy"]
    _, _, test_loader = prepare_dataloaders(str(data_dir), batch_size=16, image_size=8)
    test_results = evaluate_model(model, test_loader, config=config)
    assert set(test_results) == {"loss", "accuracy", "total_samples"} and test_results["total_samples"] == 3
    x = torch.randn(1, 3, 8, 8)
    shapes = [visualize_feature_maps(model, x, config, layer_idx).shape for layer_idx in range(4)]
    assert [s[1] for s in shapes] == [64, 128, 256, 512]


def test_seed_split_rule_is_the_originals(data_dir):
    """The same files land in the same split as the original's random_split(..., manual_seed(42))."""
    from torch.utils.data import random_split
    from torchvision.datasets import ImageFolder

    train_loader, val_loader, _ = prepare_dataloaders(str(data_dir), 16, 0, 0.2, 0.1, False, image_size=8)
    full = ImageFolder(str(data_dir))
    expected = random_split(full, [26, 7, 3], generator=torch.Generator().manual_seed(42))
    assert list(train_loader.dataset.indices) == list(expected[0].indices)
    assert list(val_loader.dataset.indices) == list(expected[1].indices)


def test_utility_call_forms_positional(tmp_path, data_dir):
    """The original's positional order and return types of the utilities."""
    train_loader, val_loader, test_loader = prepare_dataloaders(str(data_dir), 16, 0, 0.2, 0.1, False, image_size=8)
    student, teacher = MultiBranchNet(3, 3), MultiBranchNet(3, 3)
    config = create_fitnets_config(model="MultiBranchNet", teacher_model="t.pth", hint_layers={"att.3": "att.3"})
    x, y = next(iter(train_loader))
    total, losses = compute_fitnets_loss(student, teacher, x, y, config)
    assert total.requires_grad and {"classification_loss", "kd_loss", "feature_loss", "total_loss"} <= losses.keys()
    assert all(isinstance(v, float) for v in losses.values())
    optimizer = torch.optim.SGD(student.parameters(), lr=0.01)
    with pytest.warns(UserWarning, match="hint regressors"):
        loss, acc, loss_dict = train_epoch(student, teacher, train_loader, optimizer, "cpu", config)
    assert isinstance(loss, float) and 0 <= acc <= 100 and "total_loss" in loss_dict
    val_loss, val_acc = validate(student, teacher, val_loader, "cpu", config)
    assert isinstance(val_loss, float) and 0 <= val_acc <= 100
    assert visualize_feature_maps(student, x[:1], config, 0).shape == (1, 64, 8, 8)
    assert get_teacher_path("ResNet50", "default") == "checkpoints/default/teachers/ResNet50_teacher_best.pth"
    results = train_fitnets(create_fitnets_config(model="MultiBranchNet", epochs=1, save_dir=str(tmp_path / "c"),
                                                  log_dir=str(tmp_path / "l"), **LOCAL),
                            train_loader, val_loader, test_loader, "digits")  # dataset_name, 5th positional
    assert (tmp_path / "c/digits/FitNets" / f"{results['experiment_name']}_final.pth").is_file()
    assert evaluate_model(results["model"], test_loader, "cpu", results["config"])["total_samples"] == 3
    assert load_model(tmp_path / "c/digits/FitNets" / f"{results['experiment_name']}_final.pth", "cpu")["epoch"] == 1
