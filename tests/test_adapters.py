"""Tests for kd_toolkit.fitnets.regressors: spatial alignment and FitNets hint regressors."""

from __future__ import annotations

import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kd_toolkit.fitnets.regressors import HintRegressor, align_spatial, build_hint_regressors, hint_key, hint_path


@pytest.mark.parametrize("mode", ["pool", "interpolate"])
@pytest.mark.parametrize(("src", "dst"), [((8, 8), (4, 4)), ((4, 4), (7, 7)), ((6, 10), (3, 5))])
def test_align_spatial_shapes(mode: str, src: tuple, dst: tuple) -> None:
    x = torch.randn(2, 3, *src)
    assert align_spatial(x, dst, mode).shape == (2, 3, *dst)  # type: ignore[arg-type]


def test_align_spatial_matches_reference_ops() -> None:
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(align_spatial(x, (4, 4)), F.adaptive_avg_pool2d(x, (4, 4)))
    expected = F.interpolate(x, size=(5, 5), mode="bilinear", align_corners=False)
    torch.testing.assert_close(align_spatial(x, 5, mode="interpolate"), expected)
    assert align_spatial(x, torch.Size([8, 8])) is x  # already aligned: untouched


@pytest.mark.parametrize(
    ("x", "size", "mode", "match"),
    [
        (torch.randn(2, 3, 4, 4), (2, 2), "nearest", "Expected `mode`"),
        (torch.randn(2, 3, 4), (2, 2), "pool", "4-D feature map"),
        (torch.randn(2, 3, 4, 4), (2, 2, 2), "pool", "Expected `size`"),
        (torch.randn(2, 3, 4, 4), 0, "pool", "Expected `size`"),
    ],
)
def test_align_spatial_errors(x: torch.Tensor, size: object, mode: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        align_spatial(x, size, mode)  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", ["conv1x1", "conv3x3"])
@pytest.mark.parametrize("align", ["pool", "interpolate"])
@pytest.mark.parametrize(
    ("student", "teacher"),
    [((16, 8, 8), (64, 8, 8)), ((16, 14, 14), (64, 7, 7)), ((16, 4, 4), (32, 7, 7)), ((8, 6, 6), (8, 3, 3))],
)
def test_conv_regressor_output_matches_teacher_shape(kind: str, align: str, student: tuple, teacher: tuple) -> None:
    regressor = HintRegressor(student, teacher, kind=kind, align=align)  # type: ignore[arg-type]
    out = regressor(torch.randn(2, *student))
    assert out.shape == (2, *teacher)
    assert isinstance(regressor.proj, nn.Conv2d)
    assert regressor.proj.kernel_size == ((1, 1) if kind == "conv1x1" else (3, 3))


def test_regressor_accepts_torch_size_with_batch_dim_stripped() -> None:
    s, t = torch.Size([2, 16, 8, 8]), torch.Size([2, 32, 4, 4])
    assert HintRegressor(s[1:], t[1:])(torch.randn(3, 16, 8, 8)).shape == (3, 32, 4, 4)


def test_size_override_follows_the_teacher() -> None:
    regressor = HintRegressor((16, 8, 8), (32, 4, 4))
    out = regressor(torch.randn(2, 16, 12, 12), size=(6, 6))  # inputs changed size at eval time
    assert out.shape == (2, 32, 6, 6)


def test_linear_regressor() -> None:
    regressor = HintRegressor((64,), (256,))
    assert isinstance(regressor.proj, nn.Linear)
    assert regressor(torch.randn(5, 64)).shape == (5, 256)


@pytest.mark.parametrize("student", [(16, 8, 8), (64,)])
def test_gradients_flow_to_regressor_and_student_feature(student: tuple) -> None:
    teacher = (32, 4, 4) if len(student) == 3 else (128,)
    regressor = HintRegressor(student, teacher, kind="conv3x3")
    feature = torch.randn(2, *student, requires_grad=True)
    target = torch.randn(2, *teacher)
    F.mse_loss(regressor(feature), target).backward()
    assert regressor.proj.weight.grad is not None and regressor.proj.weight.grad.abs().sum() > 0
    assert regressor.proj.bias.grad is not None
    assert feature.grad is not None and feature.grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("student", "teacher"),
    [
        ((16, 8, 8), (64,)),  # map vs vector
        ((64,), (16, 8, 8)),
        ((4, 16), (4, 16)),  # 3-D features (tokens)
        ((2, 3, 4, 4), (2, 3, 4, 4)),  # 5-D features
        ((), ()),
    ],
)
def test_unalignable_shapes_raise(student: tuple, teacher: tuple) -> None:
    with pytest.raises(ValueError, match=r"both \(C, H, W\) feature maps or both \(D,\) vectors") as info:
        HintRegressor(student, teacher)
    assert str(student) in str(info.value) and str(teacher) in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"student_shape": (16, 0, 8), "teacher_shape": (8, 4, 4)}, "Expected `student_shape`"),
        ({"student_shape": (16, 8, 8), "teacher_shape": "128"}, "Expected `teacher_shape`"),
        ({"student_shape": (16, 8, 8), "teacher_shape": (8, 4, 4), "kind": "conv5x5"}, "Expected `kind`"),
        ({"student_shape": (16, 8, 8), "teacher_shape": (8, 4, 4), "align": "bicubic"}, "Expected `align`"),
    ],
)
def test_invalid_arguments_raise(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        HintRegressor(**kwargs)


def test_forward_rejects_wrong_channels() -> None:
    regressor = HintRegressor((16, 8, 8), (32, 4, 4))
    with pytest.raises(ValueError, match=r"Expected `student_feature` to have shape \(B, 16, 8, 8\)"):
        regressor(torch.randn(2, 8, 8, 8))


def test_hint_key_round_trip() -> None:
    for path in ["layer4", "features.4", "stages.2.eca", "a_.b__c"]:
        key = hint_key(path)
        assert "." not in key
        assert hint_path(key) == path
    for bad in ["", "a-b"]:
        with pytest.raises(ValueError, match="Expected `path`"):
            hint_key(bad)


class _Student(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x).mean(dim=(2, 3)))


class _Teacher(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 32, 3, stride=2, padding=1), nn.ReLU())
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x).mean(dim=(2, 3)))


def test_build_hint_regressors() -> None:
    student, teacher = _Student().train(), _Teacher().eval()
    x = torch.randn(2, 1, 28, 28)
    hint_layers = {"body.2": "body.1", "body.0": "body.1", "fc": "fc"}
    regressors = build_hint_regressors(student, teacher, hint_layers, x, kind="conv3x3", align="interpolate")
    assert isinstance(regressors, nn.ModuleDict)
    assert list(regressors.keys()) == ["body-2", "body-0", "fc"]
    assert [hint_path(k) for k in regressors] == list(hint_layers)
    assert regressors["body-2"](torch.randn(2, 8, 28, 28)).shape == (2, 32, 14, 14)
    assert regressors["body-2"].align == "interpolate" and regressors["body-2"].kind == "conv3x3"
    assert regressors["fc"](torch.randn(2, 10)).shape == (2, 10)
    assert student.training and not teacher.training  # flags restored after the dry runs
    assert all(len(m._forward_hooks) == 0 for m in [*student.modules(), *teacher.modules()])
    pickle.loads(pickle.dumps(regressors))


def test_build_hint_regressors_errors() -> None:
    student, teacher = _Student(), _Teacher()
    x = torch.randn(2, 1, 28, 28)
    with pytest.raises(ValueError, match="Expected `hint_layers`"):
        build_hint_regressors(student, teacher, {}, x)
    with pytest.raises(ValueError, match=r"Did you mean 'body"):
        build_hint_regressors(student, teacher, {"bdy": "body.1"}, x)
    with pytest.raises(ValueError, match=r"Cannot pair student 'body.2' with teacher 'fc'"):
        build_hint_regressors(student, teacher, {"body.2": "fc"}, x)
