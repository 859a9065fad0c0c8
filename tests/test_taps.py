"""Tests for kd_toolkit.fitnets.taps: FeatureTaps and feature_shapes."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from torch import nn

from kd_toolkit.fitnets.taps import FeatureTaps, feature_shapes


class _TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.layer3 = nn.Sequential(nn.Conv2d(4, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.stem(x))  # (B, 8, H/2, W/2)
        return self.head(x.mean(dim=(2, 3)))


class _TupleOut(nn.Module):
    def forward(self, x: torch.Tensor) -> tuple:
        return (None, [x * 2, x * 3])


class _DictOut(nn.Module):
    def forward(self, x: torch.Tensor) -> dict:
        return {"meta": "x", "feat": x + 1}


class _Wrapper(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.tup = _TupleOut()
        self.dic = _DictOut()
        self.unused = nn.Linear(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tup(x)[1][0] + self.dic(x)["feat"]


@pytest.fixture
def net() -> _TinyNet:
    torch.manual_seed(0)
    return _TinyNet().eval()


def test_captures_the_intermediate_outputs(net: _TinyNet) -> None:
    x = torch.randn(2, 3, 16, 16)
    with FeatureTaps(net, ["stem", "layer3", "layer3.1"]) as taps:
        out = net(x)
    expected_stem = net.stem(x)
    expected_bn = net.layer3[1](net.layer3[0](expected_stem))
    torch.testing.assert_close(taps.features["stem"], expected_stem)
    torch.testing.assert_close(taps.features["layer3.1"], expected_bn)
    torch.testing.assert_close(taps.features["layer3"], torch.relu(expected_bn))
    torch.testing.assert_close(out, net.head(taps.features["layer3"].mean(dim=(2, 3))))
    assert set(taps.features) == {"stem", "layer3", "layer3.1"}


def test_single_string_path_and_latest_call_wins(net: _TinyNet) -> None:
    taps = FeatureTaps(net, "stem")
    assert taps.paths == ("stem",)
    net(torch.randn(2, 3, 8, 8))
    x = torch.randn(1, 3, 8, 8)
    net(x)
    torch.testing.assert_close(taps.features["stem"], net.stem(x))
    taps.remove()


def test_hooks_removed_after_context(net: _TinyNet) -> None:
    with FeatureTaps(net, ["stem", "layer3.0"]) as taps:
        assert len(net.stem._forward_hooks) == 1
        assert taps.active
        net(torch.randn(1, 3, 8, 8))
    assert len(net.stem._forward_hooks) == 0
    assert len(net.layer3[0]._forward_hooks) == 0
    assert not taps.active
    assert set(taps.features) == {"stem", "layer3.0"}  # still readable after exit
    taps.clear()
    net(torch.randn(1, 3, 8, 8))
    assert taps.features == {}


def test_remove_is_idempotent(net: _TinyNet) -> None:
    taps = FeatureTaps(net, ["stem"])
    taps.remove()
    taps.remove()
    assert len(net.stem._forward_hooks) == 0


def test_detach_controls_gradient(net: _TinyNet) -> None:
    x = torch.randn(2, 3, 8, 8)
    with FeatureTaps(net, ["stem"]) as live, FeatureTaps(net, ["layer3"], detach=True) as frozen:
        net(x)
    assert live.features["stem"].requires_grad
    assert not frozen.features["layer3"].requires_grad
    live.features["stem"].sum().backward()
    assert net.stem.weight.grad is not None


def test_tuple_and_dict_outputs_take_first_tensor() -> None:
    model = _Wrapper()
    x = torch.randn(2, 2)
    with FeatureTaps(model, ["tup", "dic", ""]) as taps:
        out = model(x)
    torch.testing.assert_close(taps.features["tup"], x * 2)
    torch.testing.assert_close(taps.features["dic"], x + 1)
    torch.testing.assert_close(taps.features[""], out)


def test_non_tensor_output_raises() -> None:
    class _NoTensor(nn.Module):
        def forward(self, x: torch.Tensor) -> str:
            return "nothing"

    model = nn.Sequential(_NoTensor())
    with FeatureTaps(model, ["0"]), pytest.raises(TypeError, match="to return a tensor"):
        model(torch.randn(1))


def test_bad_path_suggests_close_name(net: _TinyNet) -> None:
    with pytest.raises(ValueError, match=r"'layr3'.*Did you mean 'layer3'.*named_modules") as info:
        FeatureTaps(net, ["stem", "layr3"])
    assert len(net.stem._forward_hooks) == 0  # nothing was attached before the failure
    assert "Expected `paths`" in str(info.value)


def test_bad_path_without_close_match_lists_valid_names(net: _TinyNet) -> None:
    with pytest.raises(ValueError, match=r"Valid paths include 'stem'"):
        FeatureTaps(net, "zzzzzzzz")


@pytest.mark.parametrize(
    ("paths", "match"),
    [
        ([], "at least one submodule"),
        (["stem", "stem"], "to be unique"),
        (["stem", 3], "only strings"),
        (None, "a string or a sequence"),
    ],
)
def test_invalid_paths_raise(net: _TinyNet, paths: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        FeatureTaps(net, paths)  # type: ignore[arg-type]


def test_pickles_with_hooks_attached(net: _TinyNet) -> None:
    taps = FeatureTaps(net, ["layer3"])
    net(torch.randn(2, 3, 8, 8))  # stored features hold a graph; they must not block pickling
    pickle.dumps(net)
    copy.deepcopy(net)
    net2, taps2 = pickle.loads(pickle.dumps((net, taps)))
    assert taps2.features == {}
    x = torch.randn(1, 3, 8, 8)
    net2(x)
    torch.testing.assert_close(taps2.features["layer3"], net2.layer3(net2.stem(x)))
    taps2.remove()
    assert len(net2.layer3._forward_hooks) == 0
    assert len(net.layer3._forward_hooks) == 1  # the original is untouched
    taps.remove()


def test_feature_shapes_restores_training_flags(net: _TinyNet) -> None:
    net.train()
    net.layer3[1].eval()  # a mixed state must come back exactly
    running_mean = net.layer3[1].running_mean.clone()
    shapes = feature_shapes(net, ["stem", "layer3"], torch.randn(2, 3, 16, 16))
    assert shapes == {"stem": torch.Size([2, 4, 16, 16]), "layer3": torch.Size([2, 8, 8, 8])}
    assert net.training and net.stem.training and not net.layer3[1].training
    torch.testing.assert_close(net.layer3[1].running_mean, running_mean)
    assert all(len(m._forward_hooks) == 0 for m in net.modules())


def test_feature_shapes_tuple_input_and_unused_module() -> None:
    class _TwoInputs(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(3, 5)

        def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return self.a(x) + y

    assert feature_shapes(_TwoInputs(), "a", (torch.randn(2, 3), torch.randn(2, 5))) == {"a": torch.Size([2, 5])}
    with pytest.raises(ValueError, match=r"\['unused'\].*not called"):
        feature_shapes(_Wrapper(), ["tup", "unused"], torch.randn(2, 2))
