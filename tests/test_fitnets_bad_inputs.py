"""Issue 10, FitNets: every bad input fails early with a clear kd_toolkit error naming the argument (one row each)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from kd_toolkit.data import make_loader
from kd_toolkit.fitnets import (
    FitNetsModule,
    create_fitnets_config,
    create_teacher_config,
    load_model,
    load_teacher_model,
    prepare_dataloaders,
    train_fitnets,
    visualize_feature_maps,
)
from kd_toolkit.fitnets.models import ThinDeepCNN, WideCNN

HINTS = {"features.4": "features.2"}
QUIET = {"device": "cpu", "num_workers": 0, "verbose": False, "seed": 0}

# ------------------------------------------------------------------------ create_fitnets_config
CONFIG_ROWS = [
    ({"epoch": 3}, r"Unknown FitNets config key 'epoch'\. Did you mean 'epochs'"),
    ({"lerning_rate": 0.1}, r"Unknown FitNets config key 'lerning_rate'.*Valid keys: model"),
    ({"epochs": 0}, r"Expected `epochs` to be a positive int, but got 0"),
    ({"epochs": "5"}, r"Expected `epochs` to be a positive int, but got '5'"),
    ({"epochs": True}, r"Expected `epochs` to be a positive int"),
    ({"batch_size": 0}, r"Expected `batch_size` to be a positive int"),
    ({"step_size": -1}, r"Expected `step_size` to be a positive int"),
    ({"print_freq": 0}, r"Expected `print_freq` to be a positive int"),
    ({"save_freq": 0}, r"Expected `save_freq` to be a positive int"),
    ({"num_workers": -1}, r"Expected `num_workers` to be a non-negative int"),
    ({"lr": 0}, r"Expected `lr` to be a positive float, but got 0"),
    ({"gamma": -0.1}, r"Expected `gamma` to be a positive float"),
    ({"temperature": 0.0}, r"Expected `temperature` to be a positive float"),
    ({"momentum": -0.9}, r"Expected `momentum` to be a non-negative float"),
    ({"weight_decay": -1e-4}, r"Expected `weight_decay` to be a non-negative float"),
    ({"alpha": -1.0}, r"Expected `alpha` to be a non-negative float, but got -1\.0"),
    ({"beta": float("nan")}, r"Expected `beta` to be a non-negative float"),
    ({"model": "ResNet34"}, r"Expected `model` to be one of \('ResNet18', 'ResNet50', 'MultiBranchNet'"),
    ({"device": "tpu"}, r"Expected `device` to be one of \('auto', 'cpu', 'cuda', 'cuda:N'\)"),
    ({"device": "cuda:x"}, r"Expected `device` to be one of"),
    ({"stage": "both"}, r"Expected `stage` to be one of \('joint', 'two_stage'\)"),
    ({"align": "nearest"}, r"Expected `align` to be one of \('pool', 'interpolate'\)"),
    ({"regressor": "mlp"}, r"Expected `regressor` to be one of \('conv1x1', 'conv3x3'\)"),
    ({"precision": 8}, r"Expected `precision` to be one of"),
    ({"augment": "yes"}, r"Expected `augment` to be a bool"),
    ({"verbose": 1}, r"Expected `verbose` to be a bool"),
    ({"deterministic": None}, r"Expected `deterministic` to be a bool"),
    ({"hint_layers": {}}, r"Expected `hint_layers` to be None or a non-empty dict"),
    ({"hint_layers": ["features.4"]}, r"Expected `hint_layers` to be None or a non-empty dict"),
    ({"hint_layers": {"features.4": 2}}, r"Expected `hint_layers` to be None or a non-empty dict"),
    ({"hint_epochs": 0}, r"Expected `hint_epochs` to be None or a positive int"),
    ({"stage": "two_stage", "epochs": 2, "hint_epochs": 2}, r"Expected `hint_epochs` to be less than `epochs`"),
    ({"stage": "two_stage", "epochs": 1}, r"hint_epochs=1 with epochs=1"),
    ({"num_classes": 0}, r"Expected `num_classes` to be None or a positive int"),
    ({"in_channels": 0}, r"Expected `in_channels` to be None or a positive int"),
    ({"image_size": -8}, r"Expected `image_size` to be None or a positive int"),
    ({"seed": -1}, r"Expected `seed` to be None or a non-negative int"),
    ({"teacher_model": 3}, r"Expected `teacher_model` to be None, a checkpoint path or an nn\.Module"),
    ({"experiment_name": "a/b"}, r"Expected `experiment_name` to be None or a non-empty name without '/'"),
    ({"experiment_name": " "}, r"Expected `experiment_name` to be None or a non-empty name"),
    ({"resume": 5}, r"Expected `resume` to be None, 'last' or a checkpoint path"),
    ({"data_dir": None}, r"Expected `data_dir` to be a folder path"),
    ({"save_dir": 3}, r"Expected `save_dir` to be a folder path"),
    ({"log_dir": b"logs"}, r"Expected `log_dir` to be a folder path"),
]


@pytest.mark.parametrize(("kwargs", "match"), CONFIG_ROWS, ids=[next(iter(k)) + str(i) for i, (k, _) in
                                                                 enumerate(CONFIG_ROWS)])
def test_create_fitnets_config_rejects(kwargs, match):
    with pytest.raises(ValueError, match=match):
        create_fitnets_config(**kwargs)


def test_create_teacher_config_rejects_like_the_fitnets_config():
    with pytest.raises(ValueError, match=r"Unknown FitNets config key 'epoch'"):
        create_teacher_config(epoch=3)


# ------------------------------------------------------------------------------- FitNetsModule
def _module(**kw):
    args = {"student": ThinDeepCNN(num_classes=3, width=4), "teacher": WideCNN(num_classes=3, width=4),
            "hint_layers": HINTS, "input_shape": [1, 16, 16], **kw}
    return FitNetsModule(**args)


MODULE_ROWS = [
    ({"teacher": None}, ValueError, r"Expected a `teacher` nn\.Module for FitNets"),
    ({"alpha": -0.5}, ValueError, r"Expected `alpha`"),
    ({"beta": -1}, ValueError, r"Expected `beta`"),
    ({"alpha": "big"}, ValueError, r"Expected `alpha`"),
    ({"stage": "joint2"}, ValueError, r"Expected `stage` to be one of \('joint', 'two_stage'\)"),
    ({"hint_epochs": 0}, ValueError, r"Expected `hint_epochs`"),
    ({"hint_layers": {}}, ValueError, r"Expected `hint_layers` to be a non-empty dict"),
    ({"hint_layers": "features.4"}, ValueError, r"Expected `hint_layers` to be a non-empty dict"),
    ({"hint_layers": {"features.9": "features.2"}}, ValueError, r"Bad `hint_layers`.*Did you mean"),
    ({"input_shape": None}, ValueError, r"Expected `example_input` .* or `input_shape`"),
    ({"input_shape": "1x16x16"}, ValueError, r"Expected `input_shape` to be a per-sample shape"),
    ({"input_shape": [1, 0, 16]}, ValueError, r"Expected `input_shape` to be a per-sample shape"),
    ({"input_shape": [3, 16, 16]}, ValueError, r"Expected `input_shape` to fit the models, but got \[3, 16, 16\]: "
                                               r"the student \(ThinDeepCNN\) raised RuntimeError"),
    ({"input_shape": [1, 1, 1]}, ValueError, r"Expected `input_shape` to fit the models, but got \[1, 1, 1\]"),
    ({"input_shape": None, "example_input": torch.randn(2, 3, 16, 16)}, ValueError,
     r"Expected `example_input` to fit the models, but got a batch of shape \(2, 3, 16, 16\)"),
    ({"input_shape": None, "example_input": torch.tensor(1.0)}, ValueError, r"Expected `example_input` to be a batch"),
    ({"temperature": 0}, ValueError, r"`temperature`"),
    ({"align": "nearest"}, ValueError, r"`align`|`mode`"),
    ({"regressor": "mlp"}, ValueError, r"`regressor`|`kind`"),
]


@pytest.mark.parametrize(("kwargs", "error", "match"), MODULE_ROWS, ids=[f"{next(iter(k))}{i}" for i, (k, _, _) in
                                                                         enumerate(MODULE_ROWS)])
def test_fitnets_module_rejects(kwargs, error, match):
    with pytest.raises(error, match=match):
        _module(**kwargs)


def test_fitnets_module_refuses_an_optimizer_instance():
    student = ThinDeepCNN(num_classes=3, width=4)
    with pytest.raises(ValueError, match=r"Expected `optimizer` to be a preset name or an optimizer class"):
        _module(student=student, optimizer=torch.optim.SGD(student.parameters(), lr=0.1))


# ---------------------------------------------------------------------------------- seed API
@pytest.fixture(scope="module")
def image_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bad") / "data"
    rng = np.random.default_rng(0)
    for label in range(3):
        (root / f"c{label}").mkdir(parents=True)
        for i in range(10):
            Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(root / f"c{label}" / f"{i}.png")
    return root


def _cfg(tmp_path: Path, **kw) -> dict:
    return create_fitnets_config(**{"model": "ThinDeepCNN", "epochs": 1, "batch_size": 8, "image_size": 8,
                                    "save_dir": str(tmp_path / "c"), "log_dir": str(tmp_path / "l"), **QUIET, **kw})


def _loaders(labels_max: int = 2, n: int = 12):
    x, y = torch.randn(n, 1, 8, 8), torch.arange(n) % (labels_max + 1)
    return make_loader(x, y, batch_size=4), make_loader(x, y, batch_size=4)


def test_labels_outside_num_classes_name_the_argument(tmp_path):
    train, val = _loaders(labels_max=4)
    with pytest.raises(ValueError, match=r"Expected the labels of `train_loader` to be class indices in \[0, 3\) "
                                         r"\(`num_classes`=3\), but they range over \[0, [34]\]; set `num_classes` to at least"):
        train_fitnets(_cfg(tmp_path, num_classes=3), train, val)


def test_num_classes_smaller_than_the_data(tmp_path, image_dir):
    with pytest.raises(ValueError, match=r"Expected `num_classes` to match the data's 3 classes .* but got "
                                         r"num_classes=2"):
        train_fitnets(_cfg(tmp_path, data_dir=str(image_dir), num_classes=2))
    train, val, _ = prepare_dataloaders(str(image_dir), 8, 0, image_size=8, in_channels=1)
    with pytest.raises(ValueError, match=r"Expected `num_classes` to match the data's 3 classes"):
        train_fitnets(_cfg(tmp_path, num_classes=2), train, val)  # a Subset's classes are read too


@pytest.mark.parametrize(("call", "error", "match"), [
    (lambda t: train_fitnets([("epochs", 1)]), ValueError, r"Expected `config` to be a dict"),
    (lambda t: train_fitnets(_cfg(t), *_loaders(), None, "a/b"), ValueError, r"Expected `dataset_name`"),
    (lambda t: train_fitnets(_cfg(t), _loaders()[0]), ValueError, r"Expected a `val_loader` with `train_loader`"),
    (lambda t: train_fitnets(_cfg(t), *_loaders()), ValueError, r"Expected `num_classes` in the config"),
    (lambda t: train_fitnets(_cfg(t, data_dir=str(t / "none"))), FileNotFoundError,
     r"Expected `data_dir` to be a folder in the seed's layout .*does not exist"),
    (lambda t: train_fitnets(_cfg(t, num_classes=3, in_channels=3), *_loaders()), ValueError,
     r"Expected the data's inputs \(1, 8, 8\) to fit `model`='ThinDeepCNN' \(in_channels=3\)"),
    (lambda t: train_fitnets(_cfg(t, num_classes=3, teacher_model=str(t / "no.pth")), *_loaders()),
     FileNotFoundError, r"Expected `teacher_path` to be an existing checkpoint file"),
    (lambda t: train_fitnets(_cfg(t, num_classes=3, teacher_model=WideCNN(num_classes=5)), *_loaders()),
     ValueError, r"Expected the teacher to output 3 classes, but it outputs 5"),
    (lambda t: train_fitnets(_cfg(t, num_classes=3, resume=str(t / "no.ckpt")), *_loaders()), FileNotFoundError,
     r"Expected `resume` to be an existing checkpoint file"),
    (lambda t: prepare_dataloaders(str(t), 8), FileNotFoundError, r"Expected `data_dir` .* but it is neither"),
    (lambda t: visualize_feature_maps(ThinDeepCNN(), torch.randn(1, 1, 8, 8), {}, 9), ValueError,
     r"Expected `layer_idx` in \[0, 6\]"),
    (lambda t: load_model(t / "no.pth"), FileNotFoundError, r"Expected `checkpoint_path` to be an existing"),
], ids=["config", "dataset_name", "val_loader", "num_classes", "data_dir", "in_channels", "teacher_file",
        "teacher_classes", "resume_file", "prepare_dataloaders", "layer_idx", "load_model"])
def test_seed_api_rejects(tmp_path, call, error, match):
    with pytest.raises(error, match=match):
        call(tmp_path)


def test_data_dir_in_neither_layout(tmp_path):
    (tmp_path / "data" / "train").mkdir(parents=True)  # train/ without val/, and no images in class folders
    with pytest.raises(FileNotFoundError, match=r"Expected `data_dir` .* to be in the seed's layout "
                                                r"data_dir/<class>/<image> .* or data_dir/train/<class>/<image> \+ "
                                                r"data_dir/val/<class>/<image> .* but it is neither"):
        train_fitnets(_cfg(tmp_path, data_dir=str(tmp_path / "data")))


@pytest.mark.parametrize(("payload", "match"), [
    ([1, 2, 3], r"Unknown checkpoint format .*\(list\); `teacher_path` must be one of: a \.pth written by "
                r"train_fitnets.*the seed's teacher\.py checkpoint"),
    ({"model_state_dict": {"w": torch.zeros(1)}}, r"Cannot tell the architecture .* pass `architecture=`"),
    ({"model_state_dict": WideCNN(num_classes=3).state_dict(), "config": {"model": "WideCNN", "num_classes": 5}},
     r"Expected a teacher with 3 classes, but .* holds a WideCNN with 5 classes"),
    ({"model_state_dict": WideCNN(num_classes=3).state_dict(), "config": {"model": "ThinDeepCNN"}},
     r"do not fit ThinDeepCNN with 3 classes"),
    ({"notes": "hello"}, r"Unknown checkpoint format"),
])
def test_teacher_checkpoints_of_unknown_or_other_formats(tmp_path, payload, match):
    torch.save(payload, tmp_path / "t.pth")
    with pytest.raises(ValueError, match=match):
        load_teacher_model(tmp_path / "t.pth", 3, "cpu")


def test_load_model_needs_the_seeds_config(tmp_path):
    torch.save({"model_state_dict": WideCNN().state_dict()}, tmp_path / "m.pth")
    with pytest.raises(ValueError, match=r"Expected `checkpoint_path` .* no config with 'model'"):
        load_model(tmp_path / "m.pth")


def test_resume_from_a_checkpoint_of_another_model(tmp_path):
    train, val = _loaders()
    first = train_fitnets(_cfg(tmp_path, num_classes=3, experiment_name="a"), train, val)
    pth = Path(first["config"]["save_dir"]) / "a_final.pth"
    with pytest.raises(ValueError, match=r"Expected `resume` to continue a WideCNN run, but the checkpoint's student "
                                         r"is a ThinDeepCNN"):
        train_fitnets(_cfg(tmp_path, model="WideCNN", num_classes=3, epochs=2, resume=str(pth)), train, val)
    x, y = torch.randn(12, 1, 8, 8), torch.arange(12) % 4
    with pytest.raises(ValueError, match=r"does not match this run's student \(a checkpoint of another model\?\): "
                                         r"different shape: \['student\.classifier\.weight'"):
        train_fitnets(_cfg(tmp_path, num_classes=4, epochs=2, resume=str(pth)), make_loader(x, y, batch_size=4),
                      make_loader(x, y, batch_size=4))


def test_a_bad_label_in_a_later_batch_is_explained(tmp_path):
    class Late(torch.utils.data.Dataset):  # the first batch is fine, the third has label 7
        def __len__(self) -> int:
            return 12

        def __getitem__(self, i: int):
            return torch.randn(1, 8, 8), (i % 3 if i < 8 else 7)

    loader = torch.utils.data.DataLoader(Late(), batch_size=4)
    with pytest.raises(ValueError, match=r"Expected labels in \[0, 3\) in the training data .* got labels from 7"):
        train_fitnets(_cfg(tmp_path, num_classes=3), loader, loader)
