"""Reference backbones for early exit, split into blocks (``self.net``), registered in :mod:`kd_toolkit.models`.

Example:
    >>> from kd_toolkit.models import create_model
    >>> create_model("split_cnn", channels=(8, 16))(torch.zeros(2, 1, 8, 8)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch  # noqa: F401  (the doctests use it)
from torch import Tensor, nn

from kd_toolkit._checks import check_int, is_int
from kd_toolkit.models import register_model

__all__ = ["BLeNet", "SplitCNN"]


class SplitCNN(nn.Module):
    """Small CNN split into blocks for early exits (seed-000 convention: blocks in ``self.net``).

    Block ``i`` is ``conv3x3 -> BatchNorm -> ReLU``, followed by ``maxpool2`` (``ceil_mode``) except in
    the last block, which ends with global average pooling and the classifier, so ``self.net(x)``
    returns logits. Sized for 8x8 digits; works for 28x28 MNIST too.

    Args:
        in_channels: Input channels.
        num_classes: Number of output logits.
        channels: Output channels of each block (at least 2 blocks, one exit needs two).

    Example:
        >>> model = SplitCNN(channels=(8, 16, 32))
        >>> len(model.net), model(torch.zeros(2, 1, 8, 8)).shape
        (3, torch.Size([2, 10]))
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, channels: Sequence[int] = (16, 32, 64)) -> None:
        super().__init__()
        check_int("in_channels", in_channels, minimum=1)
        check_int("num_classes", num_classes, minimum=1)
        if (isinstance(channels, str) or not isinstance(channels, Sequence) or len(channels) < 2
                or not all(is_int(c) and c > 0 for c in channels)):
            raise ValueError(f"Expected `channels` to be at least 2 positive ints, but got {channels!r}.")
        blocks, previous = [], in_channels
        for index, width in enumerate(channels):
            layers: list[nn.Module] = [nn.Conv2d(previous, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
            if index < len(channels) - 1:  # (B, C, H, W) -> (B, width, ceil(H/2), ceil(W/2))
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
            else:  # (B, C, H, W) -> (B, num_classes)
                layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes)]
            blocks.append(nn.Sequential(*layers))
            previous = width
        self.net = nn.Sequential(*blocks)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


@register_model("split_cnn")
def _split_cnn(**kwargs: Any) -> nn.Module:
    """SplitCNN with blocks of 16, 32 and 64 channels for 8x8 digits (three blocks: two exits)."""
    return SplitCNN(**kwargs)


class BLeNet(nn.Module):
    """B-LeNet: a LeNet-style CNN with BranchyNet's exit placement (Teerapittayanon et al., 2016).

    The first block is deliberately cheap, so that an exit right after it saves wall-clock time and
    not only MACs: a strided 3x3 conv with few channels (28x28 -> 14x14, no pooling pass over the
    full-size map). The expensive stages come later. ``self.net`` holds three blocks:

    * block 0: ``conv3x3(stride 2, channels[0]) -> ReLU``: ``(B, 1, 28, 28) -> (B, c0, 14, 14)``;
    * block 1: ``conv5x5(channels[1]) -> ReLU -> maxpool2``: ``-> (B, c1, 7, 7)``;
    * block 2: ``conv3x3(channels[2]) -> ReLU -> maxpool2 -> Linear(hidden) -> ReLU -> Linear``: logits.

    At batch 1 an eager network pays per module call, not per MAC, so exit 0 should be cheap in calls too: a
    head without a hidden layer (``neurons_in_exit_layers=[[], []]``: ``Flatten -> Linear``) is what the early-exit
    benchmark uses, chosen on validation over a hidden layer of 32.

    Without exits it is an ordinary classifier (``forward(x) = self.net(x)``), so narrower widths give
    the "smaller static network" baseline of the same family.

    Args:
        in_channels: Input channels.
        num_classes: Number of output logits.
        channels: Output channels of the three convolutions.
        hidden: Width of the hidden fully connected layer.
        image_size: Height (= width) of the input images.

    Example:
        >>> model = BLeNet()
        >>> len(model.net), model(torch.zeros(2, 1, 28, 28)).shape
        (3, torch.Size([2, 10]))
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, channels: Sequence[int] = (8, 32, 64),
                 hidden: int = 128, image_size: int = 28) -> None:
        super().__init__()
        check_int("in_channels", in_channels, minimum=1)
        check_int("num_classes", num_classes, minimum=1)
        check_int("hidden", hidden, minimum=1)
        if (isinstance(channels, str) or not isinstance(channels, Sequence) or len(channels) != 3
                or not all(is_int(c) and c > 0 for c in channels)):
            raise ValueError(f"Expected `channels` to be 3 positive ints, but got {channels!r}.")
        check_int("image_size", image_size, minimum=8)
        c0, c1, c2 = (int(c) for c in channels)
        side = ((image_size - 1) // 2 + 1) // 4  # after the strided conv and two 2x2 poolings
        self.net = nn.Sequential(
            nn.Sequential(nn.Conv2d(in_channels, c0, 3, stride=2, padding=1), nn.ReLU()),  # -> (B, c0, H/2, W/2)
            nn.Sequential(nn.Conv2d(c0, c1, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2)),  # -> (B, c1, H/4, W/4)
            nn.Sequential(nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # -> (B, c2, H/8, W/8)
                          nn.Flatten(), nn.Linear(c2 * side * side, hidden), nn.ReLU(), nn.Linear(hidden, num_classes)),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


@register_model("b_lenet")
def _b_lenet(**kwargs: Any) -> nn.Module:
    """B-LeNet for 28x28 MNIST: cheap first block (exit 0 after it), expensive later blocks."""
    return BLeNet(**kwargs)
