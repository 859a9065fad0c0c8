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

__all__ = ["SplitCNN"]


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
