"""Tests for kd_toolkit.models: reference models and the model registry."""

import pickle

import pytest
import torch
from torch import nn

from kd_toolkit import models
from kd_toolkit.models import MLP, LeNet, SmallCNN, create_model, list_models, register_model

_BUILTIN_INPUTS = {
    "digits_teacher": (1, 8, 8),
    "digits_student": (1, 8, 8),
    "digits_cnn_teacher": (1, 8, 8),
    "digits_cnn_student": (1, 8, 8),
    "mnist_teacher": (1, 28, 28),
    "mnist_student_800": (1, 28, 28),
    "mnist_student_30": (1, 28, 28),
    "mnist_cnn_teacher": (1, 28, 28),
    "lenet": (1, 28, 28),
}


@pytest.fixture
def clean_registry(monkeypatch):
    """A private copy of the registry, so tests never leak registrations."""
    list_models()  # import the method modules first: their models must land in the shared registry, not the copy
    monkeypatch.setattr(models, "_MODEL_REGISTRY", dict(models._MODEL_REGISTRY))


@pytest.mark.parametrize("name", sorted(_BUILTIN_INPUTS))
def test_registered_model_output_shape(name):
    model = create_model(name)
    assert model(torch.randn(3, *_BUILTIN_INPUTS[name])).shape == (3, 10)
    assert create_model(name, num_classes=4)(torch.randn(2, *_BUILTIN_INPUTS[name])).shape == (2, 4)
    pickle.loads(pickle.dumps(model))  # DDP spawn pickles models


def test_builtin_models_are_listed():
    assert set(_BUILTIN_INPUTS) <= set(list_models())
    assert list_models() == sorted(list_models())


def _linear_widths(model: nn.Module) -> list[tuple[int, int]]:
    return [(m.in_features, m.out_features) for m in model.modules() if isinstance(m, nn.Linear)]


def test_hinton_mlp_architectures():
    teacher = create_model("mnist_teacher")
    assert _linear_widths(teacher) == [(784, 1200), (1200, 1200), (1200, 10)]
    assert [m.p for m in teacher.modules() if isinstance(m, nn.Dropout)] == [0.2, 0.5, 0.5]
    assert _linear_widths(create_model("mnist_student_800")) == [(784, 800), (800, 800), (800, 10)]
    assert _linear_widths(create_model("mnist_student_30")) == [(784, 30), (30, 30), (30, 10)]
    assert _linear_widths(create_model("digits_teacher")) == [(64, 256), (256, 256), (256, 10)]
    student = create_model("digits_student")
    assert _linear_widths(student) == [(64, 16), (16, 10)]
    assert not any(isinstance(m, nn.Dropout) for m in student.modules())


def test_mlp_accepts_flat_features_and_empty_hidden():
    assert MLP(5, [7])(torch.randn(4, 5)).shape == (4, 10)
    assert _linear_widths(MLP(5, [], num_classes=3)) == [(5, 3)]


@pytest.mark.parametrize("size", [8, 28, 32])
def test_small_cnn_any_input_size(size):
    assert SmallCNN(in_channels=3, channels=(4, 8, 16))(torch.randn(2, 3, size, size)).shape == (2, 10)


def test_lenet_follows_early_exit_convention():
    model = LeNet(num_classes=7)
    assert isinstance(model.net, nn.Sequential) and len(model.net) == 3
    assert all(isinstance(block, nn.Sequential) for block in model.net)
    assert isinstance(model.net[-1][-1], nn.Linear) and model.net[-1][-1].out_features == 7
    x = torch.randn(2, 1, 28, 28)
    assert torch.equal(model(x), model.net(x))
    h1 = model.net[0](x)  # (B, 6, 14, 14)
    assert h1.shape == (2, 6, 14, 14) and model.net[1](h1).shape == (2, 16, 5, 5)


def test_models_backpropagate():
    model = create_model("digits_cnn_teacher")
    nn.functional.cross_entropy(model(torch.randn(4, 1, 8, 8)), torch.tensor([0, 1, 2, 3])).backward()
    assert all(p.grad is not None for p in model.parameters())


def test_create_model_unknown_name_lists_allowed():
    with pytest.raises(ValueError, match=r"Expected `name` to be one of \[.*'digits_student'.*\], but got 'nope'"):
        create_model("nope")


def test_register_model_and_create(clean_registry):
    @register_model("test_tiny")
    def test_tiny(**kwargs):
        return MLP(4, [3], **kwargs)

    assert "test_tiny" in list_models()
    assert create_model("test_tiny", num_classes=2)(torch.randn(1, 4)).shape == (1, 2)
    register_model("test_tiny")(test_tiny)  # same factory again (module reload): allowed


def test_register_model_name_clash(clean_registry):
    with pytest.raises(ValueError, match="'lenet' is already registered"):

        @register_model("lenet")
        def other_lenet(**kwargs):
            return LeNet(**kwargs)


def test_register_model_bad_name():
    with pytest.raises(ValueError, match="Expected `name` to be a non-empty str"):
        register_model("")


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: MLP(0, [4]), "Expected `in_features` to be a positive int, but got 0"),
        (lambda: MLP(4, [4, -1]), "Expected `hidden_sizes` to be a sequence of positive ints"),
        (lambda: MLP(4, [4], dropout=1.0), r"Expected `dropout` to be a float in \[0, 1\), but got 1.0"),
        (lambda: MLP(4, [4], input_dropout=-0.1), "Expected `input_dropout`"),
        (lambda: MLP(4, [4], num_classes=True), "Expected `num_classes` to be a positive int"),
        (lambda: SmallCNN(channels=()), "Expected `channels` to be a non-empty sequence"),
        (lambda: SmallCNN(hidden=0), "Expected `hidden` to be a positive int"),
        (lambda: LeNet(in_channels=0), "Expected `in_channels` to be a positive int"),
    ],
)
def test_model_argument_errors(build, match):
    with pytest.raises(ValueError, match=match):
        build()
