"""Seed 004's ``MultiBranchNet`` (its ``model.py``: blocks, ECA attention, one classifier branch per block) and the
view kd_toolkit trains it through (:class:`FinalLogits`: its last branch's logits)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from kd_toolkit._checks import check_int
from kd_toolkit.core.batch import logits_of

__all__ = ["BottleneckBlock", "Branch", "ECALayer", "FinalLogits", "MultiBranchNet", "as_logits_model", "final_logits"]


class ECALayer(nn.Module):
    """Efficient Channel Attention (Wang et al., "ECA-Net", CVPR 2020), as in seed 004's ``model.py``.

    Global average pool -> 1-D convolution of kernel ``k_size`` across channels -> sigmoid -> rescale the channels.

    Args:
        channels: Number of channels ``C`` (kept for the seed's call form; the gate works for any ``C``).
        k_size: Odd kernel size of the channel convolution (the seed's default 3).

    Example:
        >>> import torch
        >>> ECALayer(64)(torch.randn(2, 64, 8, 8)).shape
        torch.Size([2, 64, 8, 8])
    """

    def __init__(self, channels: int, k_size: int = 3) -> None:
        super().__init__()
        check_int("channels", channels, minimum=1)
        check_int("k_size", k_size, minimum=1)
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.conv = nn.Conv1d(1, 1, kernel_size=k_size, padding=(k_size - 1) // 2, bias=False)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.avg_pool(x).squeeze(-1).transpose(1, 2)  # (B, 1, C)
        y = self.conv(y).transpose(1, 2).unsqueeze(-1)  # (B, C, 1, 1)
        return x * self.sigmoid(y).expand_as(x)  # (B, C, H, W)


class BottleneckBlock(nn.Module):
    """3x3 conv (padding 1, stride 1) -> batch norm -> ReLU: seed 004's block (H, W kept)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),  # the tapped feature is the ECA output, after this
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class Branch(nn.Module):
    """Global average pool -> linear: one of seed 004's per-block classifiers."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(x).view(x.size(0), -1))  # (B, num_classes)


_MBN_WIDTHS = (64, 128, 256, 512)


class MultiBranchNet(nn.Module):
    """Seed 004's multi-branch CNN with ECA attention (its ``model.py``), same layers and state-dict keys.

    Four blocks (``blocks.i``: 3x3 conv-BN-ReLU, widths 64, 128, 256, 512, no downsampling), each followed by ECA
    attention (``att.i``) and a classifier branch (``classifiers.i``: pool + linear). ``forward`` returns
    ``(logits, features)``: two lists of four tensors, ``logits[i]`` ``(B, num_classes)`` and ``features[i]``
    ``(B, C_i, H, W)``; the prediction is ``logits[-1]`` and the FitNets feature ``features[-1]`` (path ``"att.3"``).
    kd_toolkit's trainers read ``logits[-1]`` through :class:`FinalLogits`.

    Args:
        input_channels: Input channels (the seed's first positional argument).
        num_classes: Number of output logits of every branch.

    Example:
        >>> import torch
        >>> logits, features = MultiBranchNet(3, 4)(torch.randn(2, 3, 8, 8))
        >>> len(logits), logits[-1].shape, [f.shape[1] for f in features]
        (4, torch.Size([2, 4]), [64, 128, 256, 512])
    """

    def __init__(self, input_channels: int = 3, num_classes: int = 5) -> None:
        super().__init__()
        check_int("num_classes", num_classes, minimum=1)
        check_int("input_channels", input_channels, minimum=1)
        widths = (input_channels, *_MBN_WIDTHS)
        self.blocks = nn.ModuleList([BottleneckBlock(widths[i], widths[i + 1]) for i in range(4)])
        self.att = nn.ModuleList([ECALayer(w) for w in _MBN_WIDTHS])
        self.classifiers = nn.ModuleList([Branch(w, num_classes) for w in _MBN_WIDTHS])

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        features, logits = [], []
        for block, att, classifier in zip(self.blocks, self.att, self.classifiers):
            x = att(block(x))  # (B, C_i, H, W)
            features.append(x)
            logits.append(classifier(x))  # (B, num_classes)
        return logits, features


def final_logits(output: Any) -> torch.Tensor:
    """Logits of a model output: ``logits[-1]`` of a seed-004 ``(list_of_logits, features)``, else
    :func:`kd_toolkit.core.batch.logits_of` (a tensor, ``{"logits": ...}`` or ``(logits, ...)``).

    Example:
        >>> import torch
        >>> final_logits(([torch.zeros(2, 3), torch.ones(2, 3)], [])).sum().item()
        6.0
    """
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], (list, tuple)) and output[0]:
        return output[0][-1]
    return logits_of(output)


class FinalLogits(nn.Module):
    """A view of a model whose ``forward`` returns ``(list_of_logits, features)``, returning ``logits[-1]``.

    It shares the model's submodules, parameters and buffers (same dotted paths, same ``state_dict`` keys, no
    copy), so hint layers, checkpoints and optimizers see the model itself; kd_toolkit's modules, which expect
    logits, train it through this view.

    Example:
        >>> import torch
        >>> net = MultiBranchNet(1, 3)
        >>> view = FinalLogits(net)
        >>> view(torch.randn(2, 1, 4, 4)).shape, list(view.state_dict()) == list(net.state_dict())
        (torch.Size([2, 3]), True)
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model: nn.Module
        object.__setattr__(self, "model", model)  # not a child: the children below are the model's own
        self._modules = model._modules
        self._parameters = model._parameters
        self._buffers = model._buffers

    def train(self, mode: bool = True) -> FinalLogits:
        self.model.training = mode
        return super().train(mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return final_logits(self.model(x))  # (B, num_classes)


def as_logits_model(model: nn.Module) -> nn.Module:
    """``model`` itself, or a :class:`FinalLogits` view when it is a seed-004 :class:`MultiBranchNet`."""
    return FinalLogits(model) if isinstance(model, MultiBranchNet) else model
