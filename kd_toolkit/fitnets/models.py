"""Models named by the FitNets seed, plus a FitNets-style thin-deep student and wide teacher.

* ``ResNet18`` / ``ResNet50``: torchvision ResNets built with ``weights=None`` (nothing is
  downloaded), any class count, any input channel count.
* ``MultiBranchNet``: seed 004's multi-branch CNN with ECA channel attention (its architecture and
  state-dict keys); ``forward`` returns ``(logits, features)``, two lists of four tensors.
* ``FitNetMNIST``: a deep (10 conv layers), thin (16 channels), BatchNorm-free student, the kind plain
  backprop fails to train and FitNets hints rescue (the paper's MNIST claim); ``FitNetTeacherMNIST`` is
  its shallow BatchNorm teacher.
* ``ThinDeepCNN`` / ``WideCNN``: the FitNets picture (Romero et al., "FitNets: Hints for Thin
  Deep Nets", ICLR 2015) of a thinner, deeper student guided by a wider, shallower teacher, sized
  for 1x28x28 MNIST.

Each registers in THE model registry, :mod:`kd_toolkit.models`, under the seed's name
(``create_model("ResNet18", num_classes=...)``); :data:`FITNETS_MODELS` and
:func:`create_fitnets_model` are views over it. Intermediate features are read by dotted path with
:class:`kd_toolkit.fitnets.taps.FeatureTaps`; :data:`DEFAULT_HINT_LAYERS` names each model's last
feature maps.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import nn

from kd_toolkit._checks import check_float, check_int
from kd_toolkit.fitnets.multibranch import (
    BottleneckBlock,
    Branch,
    ECALayer,
    FinalLogits,
    MultiBranchNet,
    as_logits_model,
    final_logits,
)
from kd_toolkit.models import create_model, model_entrypoint, register_model

__all__ = [
    "DEFAULT_HINT_LAYERS",
    "FITNETS_MODELS",
    "Branch",
    "FitNetMNIST",
    "FitNetTeacherMNIST",
    "BottleneckBlock",
    "ECALayer",
    "FinalLogits",
    "MultiBranchNet",
    "ThinDeepCNN",
    "WideCNN",
    "create_fitnets_model",
    "as_logits_model",
    "default_hint_layers",
    "final_logits",
    "multibranchnet",
    "resnet18",
    "resnet50",
]


@register_model("ResNet18")
def resnet18(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """torchvision ResNet-18, randomly initialised (``weights=None``).

    Hint layers by path: ``"layer1"`` ... ``"layer4"`` (``"layer4"`` gives ``(B, 512, H/32, W/32)``).

    Args:
        num_classes: Number of output logits.
        in_channels: Input channels; the stem convolution is replaced when it is not 3.

    Example:
        >>> import torch
        >>> resnet18(num_classes=5, in_channels=1)(torch.randn(2, 1, 32, 32)).shape
        torch.Size([2, 5])
    """
    return _resnet("resnet18", num_classes, in_channels)


@register_model("ResNet50")
def resnet50(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """torchvision ResNet-50, randomly initialised; arguments and hint paths as for :func:`resnet18`
    (``"layer4"`` gives ``(B, 2048, H/32, W/32)``).

    Example:
        >>> import torch
        >>> resnet50(num_classes=3).eval()(torch.randn(1, 3, 32, 32)).shape
        torch.Size([1, 3])
    """
    return _resnet("resnet50", num_classes, in_channels)


@register_model("MultiBranchNet")
def multibranchnet(num_classes: int = 5, in_channels: int = 3) -> nn.Module:
    """Registry factory for seed 004's :class:`~kd_toolkit.fitnets.multibranch.MultiBranchNet`.

    Example:
        >>> type(multibranchnet(num_classes=3)).__name__
        'MultiBranchNet'
    """
    return MultiBranchNet(input_channels=in_channels, num_classes=num_classes)


@register_model("ThinDeepCNN")
class ThinDeepCNN(nn.Module):
    """FitNets-style thin, deep student (Romero et al., ICLR 2015) for 1x28x28 inputs.

    Seven 3x3 conv-BN-ReLU blocks ``features.0`` .. ``features.6`` of width ``w, w, 2w, 2w, 2w, 2w,
    2w`` (``w = 16``), with 2x2 max pooling at the end of ``features.1`` and ``features.4``, then
    global average pooling and a linear classifier. ``features.4`` (the middle, ``(B, 32, 7, 7)`` on
    28x28) is the FitNets guided layer paired with :class:`WideCNN`'s hint layer ``features.2``
    (``(B, 128, 7, 7)``): both nets pool twice before them, so their spatial sizes match for any
    input size. ``features.6`` holds the last feature maps.

    Args:
        num_classes: Number of output logits.
        in_channels: Input channels.
        width: Base width ``w``.

    Example:
        >>> import torch
        >>> ThinDeepCNN()(torch.randn(2, 1, 28, 28)).shape
        torch.Size([2, 10])
    """

    HINT_LAYER = "features.4"

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 16) -> None:
        super().__init__()
        _check_sizes(num_classes, in_channels)
        check_int("width", width, minimum=1)
        self.features = _conv_stack(in_channels, [width, width] + [2 * width] * 5, pools={1, 4})
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)  # (B, 2w, H/4, W/4)
        return self.classifier(torch.flatten(self.pool(x), 1))  # (B, num_classes)


@register_model("FitNetMNIST")
class FitNetMNIST(nn.Module):
    """A deep, thin, BatchNorm-free student for 1x28x28 inputs (the setting of FitNets' MNIST claim).

    ``depth`` 3x3 conv-ReLU blocks ``features.0`` .. ``features.{depth-1}`` of ``width`` channels: the first
    two have stride 2 (28 -> 14 -> 7), the rest keep 7x7; then global average pooling and a linear
    classifier. With the defaults (``depth=10``, ``width=16``) it has 21,210 parameters and about 1.1M
    multiply-adds per image, so a CPU trains it in seconds per epoch. Without normalisation and with the
    Glorot init (``init="xavier"``, zero biases; ``"default"`` keeps PyTorch's), each block shrinks the
    signal: SGD with momentum on labels alone often stalls at one class, Adam trains it slowly; that is what
    hints are meant to fix.
    :attr:`hint_layer` (``features.{depth // 2}``, ``(B, width, 7, 7)``) is the middle, FitNets' guided
    layer; it pairs with :class:`WideCNN`'s hint layer ``features.2`` (``(B, 2w, 7, 7)``).

    Args:
        num_classes: Number of output logits.
        in_channels: Input channels.
        width: Channels of every conv layer.
        depth: Number of conv layers (``>= 3``).
        init: ``"xavier"`` (Glorot uniform weights, zero biases) or ``"default"`` (PyTorch's).

    Example:
        >>> import torch
        >>> model = FitNetMNIST()
        >>> model(torch.randn(2, 1, 28, 28)).shape, model.hint_layer
        (torch.Size([2, 10]), 'features.5')
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 16, depth: int = 10,
                 init: str = "xavier") -> None:
        super().__init__()
        _check_sizes(num_classes, in_channels)
        check_int("width", width, minimum=1)
        check_int("depth", depth, minimum=3)
        if init not in ("xavier", "default"):
            raise ValueError(f"Expected `init` to be 'xavier' or 'default', but got {init!r}.")
        blocks, cin = [], in_channels
        for i in range(depth):
            blocks.append(nn.Sequential(nn.Conv2d(cin, width, 3, stride=2 if i < 2 else 1, padding=1), nn.ReLU()))
            cin = width
        self.features = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(width, num_classes)
        self.hint_layer = f"features.{depth // 2}"
        if init == "xavier":
            for module in self.modules():
                if isinstance(module, (nn.Conv2d, nn.Linear)) and module.bias is not None:
                    nn.init.xavier_uniform_(module.weight)
                    nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)  # (B, width, H/4, W/4)
        return self.classifier(torch.flatten(self.pool(x), 1))  # (B, num_classes)


@register_model("FitNetTeacherMNIST")
class FitNetTeacherMNIST(nn.Module):
    """A shallow BatchNorm teacher for 1x28x28 inputs that learns MNIST in a few epochs, for :class:`FitNetMNIST`.

    Three 3x3 conv-BN-ReLU blocks ``features.0`` .. ``features.2`` of ``width`` channels (2x2 max pooling
    after the first two: 28 -> 14 -> 7), then dropout and a linear classifier on the flattened 7x7 maps
    (other input sizes are average-pooled to 7x7 first). ``features.2`` (``(B, width, 7, 7)``) is the hint layer for
    any of :class:`FitNetMNIST`'s 7x7 layers ``features.2`` onwards (``(B, width, 7, 7)``), e.g. its guided layer.

    Args:
        num_classes: Number of output logits.
        in_channels: Input channels.
        width: Channels of every conv layer.
        dropout: Dropout probability before the classifier.

    Example:
        >>> import torch
        >>> FitNetTeacherMNIST()(torch.randn(2, 1, 28, 28)).shape
        torch.Size([2, 10])
    """

    HINT_LAYER = "features.2"

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 24, dropout: float = 0.0) -> None:
        super().__init__()
        _check_teacher(num_classes, in_channels, width, dropout)
        self.features = _conv_stack(in_channels, [width] * 3, pools={0, 1})
        self.pool = nn.AdaptiveAvgPool2d(7)  # the identity on 28x28 inputs
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(width * 7 * 7, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x))  # (B, width, 7, 7)
        return self.classifier(self.dropout(torch.flatten(x, 1)))  # (B, num_classes)


@register_model("WideCNN")
class WideCNN(nn.Module):
    """Wide, shallow teacher for 1x28x28 inputs, the FitNets counterpart of :class:`ThinDeepCNN`.

    Four 3x3 conv-BN-ReLU blocks ``features.0`` .. ``features.3`` of width ``w, 2w, 2w, 2w``
    (``w = 64``), with 2x2 max pooling at the end of ``features.0`` and ``features.2``, then global
    average pooling, dropout and a linear classifier. ``features.2`` (``(B, 128, 7, 7)`` on 28x28)
    is the FitNets hint layer for the student's ``features.4``; ``features.3`` holds the last
    feature maps.

    Args:
        num_classes: Number of output logits.
        in_channels: Input channels.
        width: Base width ``w``.
        dropout: Dropout probability before the classifier.

    Example:
        >>> import torch
        >>> WideCNN(num_classes=3)(torch.randn(2, 1, 28, 28)).shape
        torch.Size([2, 3])
    """

    HINT_LAYER = "features.2"

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 64, dropout: float = 0.25) -> None:
        super().__init__()
        _check_teacher(num_classes, in_channels, width, dropout)
        self.features = _conv_stack(in_channels, [width] + [2 * width] * 3, pools={0, 2})
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)  # (B, 2w, H/4, W/4)
        return self.classifier(self.dropout(torch.flatten(self.pool(x), 1)))  # (B, num_classes)


class _RegistryView(Mapping[str, Callable[..., nn.Module]]):
    """A read-only mapping of some names of :mod:`kd_toolkit.models`' registry to their factories."""

    def __init__(self, names: tuple[str, ...]) -> None:
        self._names = names

    def __getitem__(self, name: str) -> Callable[..., nn.Module]:
        if name not in self._names:
            raise KeyError(name)
        return model_entrypoint(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def __repr__(self) -> str:
        return f"{{{', '.join(f'{n!r}: {self[n].__name__}' for n in self._names)}}}"


FITNETS_MODELS: Mapping[str, Callable[..., nn.Module]] = _RegistryView(
    ("ResNet18", "ResNet50", "MultiBranchNet", "ThinDeepCNN", "FitNetMNIST", "FitNetTeacherMNIST", "WideCNN")
)
"""The seed's model names, a read-only view over :mod:`kd_toolkit.models`' registry; each factory takes
``num_classes=`` and ``in_channels=``."""

DEFAULT_HINT_LAYERS: dict[str, str] = {
    "ResNet18": "layer4",
    "ResNet50": "layer4",
    "MultiBranchNet": "att.3",
    "ThinDeepCNN": "features.6",
    "FitNetMNIST": "features.9",
    "FitNetTeacherMNIST": "features.2",
    "WideCNN": "features.3",
}
"""Path of each named model's last feature maps (the seed matches final feature maps)."""


def create_fitnets_model(name: str, num_classes: int = 10, in_channels: int | None = None) -> nn.Module:
    """:func:`kd_toolkit.models.create_model` for the names of :data:`FITNETS_MODELS` (the seed's call form).

    Args:
        name: One of ``"ResNet18"``, ``"ResNet50"``, ``"MultiBranchNet"``, ``"ThinDeepCNN"``,
            ``"FitNetMNIST"``, ``"FitNetTeacherMNIST"``, ``"WideCNN"``.
        num_classes: Number of output logits.
        in_channels: Input channels; ``None`` keeps the model's default (3, or 1 for the
            MNIST-sized models).

    Raises:
        ValueError: For an unknown name (the message lists the known ones).

    Example:
        >>> type(create_fitnets_model("WideCNN", num_classes=10)).__name__
        'WideCNN'
    """
    if name not in FITNETS_MODELS:
        raise ValueError(f"Expected `name` to be one of {sorted(FITNETS_MODELS)}, but got {name!r}.")
    kwargs: dict[str, Any] = {} if in_channels is None else {"in_channels": in_channels}
    return create_model(name, num_classes=num_classes, **kwargs)


def default_hint_layers(student: str, teacher: str) -> dict[str, str]:
    """The default ``{student_path: teacher_path}`` hint pair for two named models.

    Pairs the last feature maps (:data:`DEFAULT_HINT_LAYERS`), as the FitNets seed does; spatial
    sizes may differ and are aligned by the regressor. For the paper's middle-layer pair of
    :class:`ThinDeepCNN` and :class:`WideCNN` use ``{"features.4": "features.2"}``
    (``ThinDeepCNN.HINT_LAYER``, ``WideCNN.HINT_LAYER``).

    Raises:
        ValueError: For an unknown model name.

    Example:
        >>> default_hint_layers("MultiBranchNet", "ResNet50")
        {'att.3': 'layer4'}
    """
    for arg, name in (("student", student), ("teacher", teacher)):
        if name not in DEFAULT_HINT_LAYERS:
            raise ValueError(f"Expected `{arg}` to be one of {sorted(DEFAULT_HINT_LAYERS)}, but got {name!r}.")
    return {DEFAULT_HINT_LAYERS[student]: DEFAULT_HINT_LAYERS[teacher]}


def _resnet(arch: str, num_classes: int, in_channels: int) -> nn.Module:
    from torchvision import models as tv_models  # imported on first use: the registry stays cheap to import

    _check_sizes(num_classes, in_channels)
    model = getattr(tv_models, arch)(weights=None, num_classes=num_classes)
    if in_channels != 3:
        out_channels = model.conv1.out_channels
        model.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=7, stride=2, padding=3, bias=False)
        # Same init as torchvision gives its own stem.
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    return model


def _conv_stack(in_channels: int, widths: list[int], pools: set[int]) -> nn.Sequential:
    """3x3 conv-BN-ReLU blocks of ``widths``; block ``i`` ends with 2x2 max pooling when ``i`` is in ``pools``."""
    blocks, cin = [], in_channels
    for i, cout in enumerate(widths):
        blocks.append(_conv_bn_relu(cin, cout, kernel=3, pool=i in pools))
        cin = cout
    return nn.Sequential(*blocks)


def _conv_bn_relu(
    in_channels: int, out_channels: int, *, kernel: int, stride: int = 1, dilation: int = 1, pool: bool = False
) -> nn.Sequential:
    padding = (kernel - 1) // 2  # keeps H, W
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, kernel, padding=padding, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(),  # not in place: a tapped BN output must not change after the hook ran
    ]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


def _check_sizes(num_classes: int, in_channels: int) -> None:
    check_int("num_classes", num_classes, minimum=1)
    check_int("in_channels", in_channels, minimum=1)


def _check_teacher(num_classes: int, in_channels: int, width: int, dropout: float) -> None:
    """The arguments every wide teacher here takes."""
    _check_sizes(num_classes, in_channels)
    check_int("width", width, minimum=1)
    check_float("dropout", dropout, minimum=0, maximum=1, open_high=True)
