"""Tests for kd_toolkit.fitnets.models: the FitNets seed's models and the thin/wide pair."""

from __future__ import annotations

import functools
import pickle

import pytest
import torch
from torch import nn

from kd_toolkit.fitnets.models import (
    DEFAULT_HINT_LAYERS,
    FITNETS_MODELS,
    ECALayer,
    FinalLogits,
    FitNetMNIST,
    FitNetTeacherMNIST,
    MultiBranchNet,
    ThinDeepCNN,
    WideCNN,
    create_fitnets_model,
    default_hint_layers,
    final_logits,
    resnet18,
    resnet50,
)
from kd_toolkit.fitnets.regressors import build_hint_regressors, hint_key
from kd_toolkit.fitnets.taps import FeatureTaps, feature_shapes

_NAMES = ["ResNet18", "ResNet50", "MultiBranchNet", "ThinDeepCNN", "FitNetMNIST", "FitNetTeacherMNIST", "WideCNN"]


@functools.cache
def _cached(name: str, in_channels: int) -> nn.Module:
    """One eval-mode instance per (name, in_channels) for read-only tests (ResNet-50 is slow to build)."""
    torch.manual_seed(0)
    return FITNETS_MODELS[name](num_classes=7, in_channels=in_channels).eval()


def _natural_channels(name: str) -> int:
    return 1 if name in ("ThinDeepCNN", "FitNetMNIST", "FitNetTeacherMNIST", "WideCNN") else 3


def _logits(output: torch.Tensor | tuple) -> torch.Tensor:
    return final_logits(output)


def test_registries_cover_the_named_models() -> None:
    assert sorted(FITNETS_MODELS) == sorted(_NAMES)
    assert sorted(DEFAULT_HINT_LAYERS) == sorted(_NAMES)


@pytest.mark.parametrize("name", _NAMES)
def test_factories_output_shapes(name: str) -> None:
    in_channels = _natural_channels(name)
    model = _cached(name, in_channels)
    with torch.no_grad():
        out = model(torch.randn(2, in_channels, 32, 32))
    assert _logits(out).shape == (2, 7)


@pytest.mark.parametrize("name", ["MultiBranchNet", "ThinDeepCNN", "WideCNN"])
def test_small_models_other_channel_counts(name: str) -> None:
    in_channels = 4 - _natural_channels(name)  # 1 <-> 3
    model = FITNETS_MODELS[name](num_classes=7, in_channels=in_channels)
    output = model(torch.randn(2, in_channels, 28, 28))
    out = _logits(output)
    assert out.shape == (2, 7)
    every = output[0] if isinstance(output, tuple) else [out]  # MultiBranchNet: one logits tensor per branch
    sum(o.sum() for o in every).backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("name", _NAMES)
def test_default_hint_layers_resolve_with_taps(name: str) -> None:
    in_channels = _natural_channels(name)
    model = _cached(name, in_channels)
    with FeatureTaps(model, DEFAULT_HINT_LAYERS[name]) as taps, torch.no_grad():
        model(torch.randn(2, in_channels, 28, 28))
    feature = taps.features[DEFAULT_HINT_LAYERS[name]]
    assert feature.dim() == 4 and feature.shape[0] == 2


def test_resnet18_with_one_input_channel_trains() -> None:
    model = resnet18(num_classes=10, in_channels=1)
    assert model.conv1.in_channels == 1 and model.fc.out_features == 10
    out = model(torch.randn(2, 1, 28, 28))
    assert out.shape == (2, 10)
    out.sum().backward()
    assert model.conv1.weight.grad is not None


def test_resnet50_with_one_input_channel() -> None:
    model = resnet50(num_classes=10, in_channels=1).eval()
    assert model.conv1.in_channels == 1 and model.fc.out_features == 10
    with torch.no_grad():
        assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_resnet18_layer_shapes() -> None:
    shapes = feature_shapes(resnet18(), ["layer3", "layer4"], torch.randn(2, 3, 64, 64))
    assert shapes == {"layer3": torch.Size([2, 256, 4, 4]), "layer4": torch.Size([2, 512, 2, 2])}


def test_multibranchnet_is_the_seeds_architecture() -> None:
    model = MultiBranchNet(3, 5)  # the seed's positional order (input_channels, num_classes)
    logits, features = model(torch.randn(2, 3, 12, 10))
    assert isinstance(logits, list) and isinstance(features, list) and len(logits) == len(features) == 4
    assert all(t.shape == (2, 5) for t in logits)
    assert [tuple(f.shape) for f in features] == [(2, c, 12, 10) for c in (64, 128, 256, 512)]  # no downsampling
    keys = set(model.state_dict())
    assert {"blocks.0.block.0.weight", "blocks.3.block.1.running_mean", "att.2.conv.weight",
            "classifiers.3.fc.weight"} <= keys
    assert sum(isinstance(m, ECALayer) for m in model.modules()) == 4 and model.att[0].conv.kernel_size == (3,)
    with FeatureTaps(model, DEFAULT_HINT_LAYERS["MultiBranchNet"]) as taps:
        _, features = model(torch.randn(2, 3, 8, 8))
    assert taps.features["att.3"] is features[-1]  # the seed's final feature map


def test_final_logits_view_shares_the_model() -> None:
    model = MultiBranchNet(1, 3)
    view = FinalLogits(model)
    x = torch.randn(2, 1, 6, 6)
    torch.testing.assert_close(view.eval()(x), model(x)[0][-1])
    assert not model.training and list(view.parameters()) == list(model.parameters())
    assert view.get_submodule("att.3") is model.att[3]
    view.load_state_dict({k: torch.zeros_like(v) for k, v in model.state_dict().items()})
    assert model.classifiers[3].fc.weight.abs().sum() == 0


def test_eca_gate_scales_channels() -> None:
    eca = ECALayer(16)
    x = torch.rand(2, 16, 4, 4)
    ratio = eca(x) / x  # a per-channel sigmoid gate in (0, 1)
    assert torch.all(ratio > 0) and torch.all(ratio < 1)
    torch.testing.assert_close(ratio, ratio[..., :1, :1].expand_as(ratio))


def _hint_shapes(student: nn.Module, layer: str, teacher: nn.Module, x: torch.Tensor) -> tuple[tuple[int, ...], ...]:
    """The student's ``layer`` output shape and the teacher's ``HINT_LAYER`` output shape on ``x``."""
    hint = teacher.HINT_LAYER  # type: ignore[attr-defined]
    return feature_shapes(student, layer, x)[layer], feature_shapes(teacher, hint, x)[hint]


def test_thin_wide_fitnets_pair_on_mnist_shape() -> None:
    student, teacher = ThinDeepCNN(), WideCNN()
    x = torch.randn(2, 1, 28, 28)
    s_shape, t_shape = _hint_shapes(student, ThinDeepCNN.HINT_LAYER, teacher, x)
    assert s_shape == (2, 32, 7, 7) and t_shape == (2, 128, 7, 7)
    assert len([m for m in student.modules() if isinstance(m, nn.Conv2d)]) == 7
    assert len([m for m in teacher.modules() if isinstance(m, nn.Conv2d)]) == 4
    s_params = sum(p.numel() for p in student.parameters())
    t_params = sum(p.numel() for p in teacher.parameters())
    assert s_params < t_params / 5  # thin and deep vs wide and shallow
    regressors = build_hint_regressors(student, teacher, {"features.4": "features.2"}, x)
    assert regressors[hint_key("features.4")](torch.randn(2, 32, 7, 7)).shape == (2, 128, 7, 7)


@pytest.mark.parametrize(("student", "teacher"), [("MultiBranchNet", "ResNet18"), ("ThinDeepCNN", "ResNet50")])
def test_default_pairs_build_regressors(student: str, teacher: str) -> None:
    x = torch.randn(2, 3, 32, 32)
    s_model, t_model = _cached(student, 3), _cached(teacher, 3)
    hint_layers = default_hint_layers(student, teacher)
    regressors = build_hint_regressors(s_model, t_model, hint_layers, x)
    (s_path, t_path), = hint_layers.items()
    shapes_s = feature_shapes(s_model, s_path, x)[s_path]
    shapes_t = feature_shapes(t_model, t_path, x)[t_path]
    assert regressors[hint_key(s_path)](torch.randn(*shapes_s)).shape == shapes_t


def test_create_fitnets_model_and_errors() -> None:
    assert isinstance(create_fitnets_model("ThinDeepCNN"), ThinDeepCNN)
    assert create_fitnets_model("ThinDeepCNN").features[0][0].in_channels == 1
    with pytest.raises(ValueError, match=r"Expected `name` to be one of \['FitNetMNIST', 'FitNetTeacherMNIST', 'MultiBranchNet'"):
        create_fitnets_model("ResNet34")
    with pytest.raises(ValueError, match="Expected `teacher` to be one of"):
        default_hint_layers("ThinDeepCNN", "VGG")
    with pytest.raises(ValueError, match="Expected `num_classes` to be a positive int"):
        resnet18(num_classes=0)
    with pytest.raises(ValueError, match="Expected `input_channels` to be a positive int"):
        MultiBranchNet(input_channels=0)
    with pytest.raises(ValueError, match="Expected `dropout`"):
        WideCNN(dropout=1.0)


@pytest.mark.parametrize("name", ["MultiBranchNet", "ThinDeepCNN"])
def test_models_pickle_with_taps_attached(name: str) -> None:
    model = create_fitnets_model(name, in_channels=3).eval()
    taps = FeatureTaps(model, DEFAULT_HINT_LAYERS[name])
    x = torch.randn(2, 3, 32, 32)
    model(x)
    model2, taps2 = pickle.loads(pickle.dumps((model, taps)))
    with torch.no_grad():
        torch.testing.assert_close(_logits(model2(x)), _logits(model(x)))
    torch.testing.assert_close(taps2.features[DEFAULT_HINT_LAYERS[name]], taps.features[DEFAULT_HINT_LAYERS[name]])
    taps.remove()
    taps2.remove()


def test_fitnet_mnist_is_deep_thin_and_batchnorm_free() -> None:
    torch.manual_seed(0)
    model = FitNetMNIST()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 10 and all(c.out_channels == 16 for c in convs)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert sum(p.numel() for p in model.parameters()) == 21_210
    assert all(float(c.bias.abs().sum()) == 0.0 for c in convs)  # Glorot init: zero biases
    assert float(FitNetMNIST(init="default").features[0][0].bias.abs().sum()) > 0  # PyTorch's init kept
    shapes = feature_shapes(model, [model.hint_layer, "features.9"], torch.randn(2, 1, 28, 28))
    assert shapes[model.hint_layer] == (2, 16, 7, 7) and model.hint_layer == "features.5"
    with pytest.raises(ValueError, match="init"):
        FitNetMNIST(init="he")
    with pytest.raises(ValueError, match="depth"):
        FitNetMNIST(depth=2)


def test_fitnet_mnist_pairs_with_its_teacher() -> None:
    student, teacher = FitNetMNIST(), FitNetTeacherMNIST()
    x = torch.randn(3, 1, 28, 28)
    s_shape, t_shape = _hint_shapes(student, student.hint_layer, teacher, x)
    assert s_shape == (3, 16, 7, 7) and t_shape == (3, 24, 7, 7)
    regressors = build_hint_regressors(student, teacher, {student.hint_layer: teacher.HINT_LAYER}, x)
    out = regressors[hint_key(student.hint_layer)](torch.randn(s_shape))
    assert out.shape == t_shape
    assert teacher(torch.randn(2, 1, 32, 32)).shape == (2, 10)  # other sizes are pooled to 7x7
