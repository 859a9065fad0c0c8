"""The FitNets seed API (seed 004): config, train_fitnets on a tiny ImageFolder, files, resume, utilities."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from kd_toolkit.data import make_loader
from kd_toolkit.fitnets.models import ThinDeepCNN, WideCNN
from kd_toolkit.fitnets.seed_api import (
    DEFAULT_CONFIG,
    compute_fitnets_loss,
    create_fitnets_config,
    extract_student_features,
    extract_teacher_features,
    load_teacher_model,
    train_epoch,
    train_fitnets,
    validate,
    visualize_feature_maps,
)

CKPT, LOGS = "ckpt/default/FitNets", "logs/default/FitNets"  # save_dir/{dataset_name}/FitNets, as the seed
SEED_DEFAULTS = {
    "model": "MultiBranchNet", "teacher_model": None, "data_dir": "data", "batch_size": 32, "num_workers": 4,
    "augment": False, "epochs": 50, "lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4, "step_size": 10, "gamma": 0.1,
    "temperature": 3.0, "alpha": 0.1, "beta": 1e-3, "device": "auto", "print_freq": 100, "save_freq": 10,
    "save_dir": "checkpoints", "log_dir": "logs", "experiment_name": None, "resume": None,
}


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    """2 classes x 8 PNGs (32x32) per split; class 1 is brighter, so it can be learnt."""
    root = tmp_path_factory.mktemp("imagefolder")
    rng = np.random.default_rng(0)
    for split in ("train", "val", "test"):
        for label, name in enumerate(("dark", "light")):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(8):
                pixels = rng.integers(0, 120, (32, 32, 3)) + 120 * label
                Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i}.png")
    return root


def _config(tmp_path: Path, data: Path, **kw) -> dict:
    base = dict(model="ThinDeepCNN", data_dir=str(data), image_size=32, batch_size=8, num_workers=0, epochs=2,
                lr=0.05, save_freq=1, print_freq=1, save_dir=str(tmp_path / "ckpt"), log_dir=str(tmp_path / "logs"),
                device="cpu", verbose=False, seed=0)
    return create_fitnets_config(**{**base, **kw})


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory, image_folder):
    """A WideCNN teacher trained on labels alone by train_fitnets (teacher_model=None)."""
    tmp = tmp_path_factory.mktemp("teacher")
    return tmp, train_fitnets(_config(tmp, image_folder, model="WideCNN", experiment_name="teacher"))


def test_default_config_has_the_seed_keys_and_values():
    assert {k: DEFAULT_CONFIG[k] for k in SEED_DEFAULTS} == SEED_DEFAULTS
    assert create_fitnets_config() == DEFAULT_CONFIG and create_fitnets_config() is not DEFAULT_CONFIG


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"epoch": 3}, r"Unknown FitNets config key 'epoch'\. Did you mean 'epochs'"),
    ({"hint_layer": {"a": "b"}}, r"Did you mean 'hint_layers'"),
    ({"alpha": -1.0}, r"Expected `alpha` to be a non-negative float, but got -1\.0"),
    ({"beta": -1e-3}, r"Expected `beta` to be a non-negative float"),
    ({"model": "ResNet34"}, r"Expected `model` to be one of"),
    ({"device": "tpu"}, r"Expected `device` to be one of \('auto', 'cpu', 'cuda', 'cuda:N'\)"),
    ({"stage": "two", "epochs": 3}, r"Expected `stage` to be one of \('joint', 'two_stage'\)"),
    ({"stage": "two_stage", "epochs": 3, "hint_epochs": 3}, r"hint_epochs=3 with epochs=3"),
    ({"stage": "two_stage", "epochs": 1}, r"Expected `hint_epochs` to be less than `epochs`"),
])
def test_bad_config_fails_clearly(kwargs, match):
    with pytest.raises(ValueError, match=match):
        create_fitnets_config(**kwargs)


def test_teacher_run_writes_the_seed_layout(teacher_run):
    tmp, result = teacher_run
    assert set(result) == {"model", "teacher_model", "best_accuracy", "training_history", "test_results", "config",
                           "experiment_name"}
    assert result["teacher_model"] is None and isinstance(result["model"], WideCNN)
    for name in ("teacher_best.pth", "teacher_final.pth", "teacher_epoch_0.pth", "teacher_epoch_1.pth"):
        assert (tmp / CKPT / name).is_file(), name
    assert (tmp / LOGS / "teacher.log").read_text().count("val_acc=") == 2
    summary = json.loads((tmp / LOGS / "teacher_summary.json").read_text())
    assert summary["best_accuracy"] == result["best_accuracy"] and len(summary["training_history"]) == 2
    assert list((tmp / LOGS / "teacher").rglob("events.out.tfevents.*")), "no TensorBoard events"
    history = result["training_history"]
    assert [h["epoch"] for h in history] == [0, 1] and {"train_loss", "hard_loss", "val_acc", "lr"} <= history[0].keys()
    assert result["test_results"] is not None and 0 <= result["test_results"]["test_acc"] <= 100
    saved = torch.load(tmp / CKPT / "teacher_best.pth", weights_only=True)
    assert saved["architecture"] == "WideCNN" and saved["num_classes"] == 2 and saved["in_channels"] == 1
    assert Path(saved["lightning_checkpoint"]).is_file()


def test_student_with_teacher_checkpoint_then_resume(tmp_path, image_folder, teacher_run):
    teacher_path = str(teacher_run[0] / CKPT / "teacher_best.pth")
    cfg = _config(tmp_path, image_folder, teacher_model=teacher_path, beta=1.0, alpha=0.5, experiment_name="student")
    result = train_fitnets(cfg)
    assert isinstance(result["teacher_model"], WideCNN)
    assert result["config"]["hint_layers"] == {"features.6": "features.3"}  # the named models' last feature maps
    first = result["training_history"]
    assert {"hint_loss", "hint_loss/features.6", "kd_loss", "hard_loss", "val_acc"} <= first[0].keys()
    # resume from the periodic .pth of epoch 2 (it records its Lightning checkpoint) and train one more epoch
    more = train_fitnets({**cfg, "epochs": 3, "experiment_name": None,
                          "resume": str(tmp_path / CKPT / "student_epoch_1.pth")})
    assert more["experiment_name"] == "student"  # taken from the checkpoint
    assert [h["epoch"] for h in more["training_history"]] == [0, 1, 2]
    assert more["training_history"][:2] == first
    assert (tmp_path / CKPT / "student_epoch_2.pth").is_file()
    last = train_fitnets({**cfg, "epochs": 4, "resume": "last"})  # the newest last.ckpt of this experiment
    assert [h["epoch"] for h in last["training_history"]] == [0, 1, 2, 3]
    with pytest.raises(FileNotFoundError, match=r"Expected `resume` to be an existing checkpoint file"):
        train_fitnets({**cfg, "resume": str(tmp_path / "nothing.pth")})


def test_two_stage_through_the_api_with_caller_loaders(tmp_path):
    torch.manual_seed(0)
    x, y = torch.randn(48, 1, 16, 16), torch.arange(48) % 3
    loader = make_loader(x, y, batch_size=16, shuffle=True)
    cfg = _config(tmp_path, tmp_path, model="ThinDeepCNN", teacher_model=WideCNN(num_classes=3), stage="two_stage",
                  epochs=3, hint_epochs=1, hint_layers={"features.4": "features.2"}, num_classes=3,
                  experiment_name="two")
    result = train_fitnets(cfg, loader, make_loader(x, y, batch_size=16), None)
    assert [h["phase"] for h in result["training_history"]] == ["hint", "kd", "kd"]
    assert "hint_loss" in result["training_history"][0] and "kd_loss" in result["training_history"][1]
    assert result["test_results"] is None
    with pytest.raises(ValueError, match=r"Expected `num_classes` in the config"):
        train_fitnets({**cfg, "num_classes": None}, loader, loader)
    with pytest.raises(ValueError, match=r"Expected a `val_loader` with `train_loader`"):
        train_fitnets(cfg, loader)


def test_augmented_image_folder_and_cuda_without_gpu(tmp_path, image_folder):
    from kd_toolkit.fitnets.seed_data import image_folder_loaders

    train, val, test, classes = image_folder_loaders(image_folder, 24, 1, batch_size=4, num_workers=0, augment=True)
    assert classes == ["dark", "light"] and next(iter(train))[0].shape == (4, 1, 24, 24) and test is not None
    assert "RandomRotation" in repr(train.dataset.transform) and "Random" not in repr(val.dataset.transform)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"Expected a CUDA device for device='cuda', but CUDA is not available"):
            train_fitnets(_config(tmp_path, image_folder, device="cuda"))


def test_data_dir_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"Expected `data_dir` to be a folder in the seed's layout .* does not exist"):
        train_fitnets(_config(tmp_path, tmp_path / "missing"))
    (tmp_path / "data" / "val").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"to be in the seed's layout .* but it is neither \(sub-folders \['val'\]"):
        train_fitnets(_config(tmp_path, tmp_path / "data"))


def test_teacher_mismatch_errors(tmp_path, image_folder, teacher_run):
    teacher_path = teacher_run[0] / CKPT / "teacher_best.pth"
    with pytest.raises(ValueError, match=r"Expected a teacher with 10 classes, but .* WideCNN with 2 classes"):
        load_teacher_model(teacher_path, num_classes=10, device="cpu")
    with pytest.raises(ValueError, match=r"Expected a ResNet18 checkpoint, but .* holds a WideCNN"):
        load_teacher_model(teacher_path, num_classes=2, architecture="ResNet18")
    torch.save(WideCNN(num_classes=2).state_dict(), tmp_path / "bare.pt")
    with pytest.raises(ValueError, match=r"Cannot tell the architecture .* pass `architecture=`"):
        load_teacher_model(tmp_path / "bare.pt", num_classes=2)
    with pytest.raises(ValueError, match=r"do not fit ThinDeepCNN with 2 classes"):
        load_teacher_model(tmp_path / "bare.pt", num_classes=2, architecture="ThinDeepCNN")
    assert isinstance(load_teacher_model(tmp_path / "bare.pt", num_classes=2, architecture="WideCNN"), WideCNN)
    loader = make_loader(torch.randn(6, 1, 32, 32), torch.arange(6) % 3, batch_size=3)
    with pytest.raises(ValueError, match=r"Expected a teacher with 3 classes, but .* WideCNN with 2 classes"):
        train_fitnets(_config(tmp_path, image_folder, teacher_model=str(teacher_path), num_classes=3), loader, loader)


def test_seed_utilities_and_feature_map_png(tmp_path):
    torch.manual_seed(0)
    student, teacher = ThinDeepCNN(num_classes=3), WideCNN(num_classes=3)
    cfg = create_fitnets_config(model="ThinDeepCNN", hint_layers={"features.4": "features.2"}, beta=1.0)
    x, y = torch.randn(8, 1, 28, 28), torch.arange(8) % 3
    assert extract_teacher_features(teacher, x, cfg).shape == (8, 128, 7, 7)
    assert extract_student_features(student, x, cfg).requires_grad
    total, parts = compute_fitnets_loss(student, teacher, x, y, cfg)
    assert total.item() == pytest.approx(parts["hard_loss"] + 0.1 * parts["kd_loss"] + 1.0 * parts["hint_loss"], rel=1e-5)
    loader = make_loader(x, y, batch_size=4)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.1)
    loss, acc, stats = train_epoch(student, teacher, loader, optimizer, "cpu", cfg)
    assert {"total_loss", "hard_loss", "kd_loss", "hint_loss"} <= stats.keys() and len(optimizer.param_groups) == 2
    assert isinstance(loss, float) and 0 <= acc <= 100
    val_loss, val_acc = validate(student, teacher, loader, "cpu", cfg)
    assert isinstance(val_loss, float) and 0 <= val_acc <= 100
    fmap = visualize_feature_maps(student, x[:2], cfg, layer_idx=4, save_path=tmp_path / "maps.png")
    assert fmap.shape == (2, 32, 7, 7) and (tmp_path / "maps.png").stat().st_size > 1000
    with pytest.raises(ValueError, match=r"Expected `layer_idx` in \[0, 6\]"):
        visualize_feature_maps(student, x[:2], cfg, layer_idx=7)
