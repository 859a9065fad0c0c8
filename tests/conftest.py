"""Shared fixtures: the embedded digits data as plain DataLoaders, and tiny picklable models."""

from __future__ import annotations

import os
import warnings

import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

os.environ.setdefault("COMET_DISABLE_AUTO_LOGGING", "1")
warnings.filterwarnings("ignore", message=".*does not have many workers.*")
warnings.filterwarnings("ignore", message=".*GPU available but not used.*")
# One intra-op thread: the test models are tiny, and on a busy 2-core machine more threads make them
# several times slower (measured while writing the FitNets tests).
torch.set_num_threads(1)


class TinyMLP(nn.Module):
    """64 → hidden → classes MLP on (B, 1, 8, 8) digits; module-level so it pickles for ddp_spawn."""

    def __init__(self, hidden: int = 32, num_classes: int = 10, dropout: float = 0.0) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, num_classes))

    def forward(self, x):
        return self.net(x)


class DictOutputMLP(TinyMLP):
    """Returns ``{"logits": ...}`` like seed 002's models."""

    def forward(self, x):
        return {"logits": self.net(x)}


def digits_tensors():
    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (N, 1, 8, 8)
    y = torch.tensor(data.target, dtype=torch.long)
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(y), generator=g)
    return x[perm], y[perm]


@pytest.fixture(scope="session")
def digits():
    x, y = digits_tensors()
    return {"train": (x[:1200], y[:1200]), "val": (x[1200:1500], y[1200:1500]), "test": (x[1500:], y[1500:])}


@pytest.fixture
def loaders(digits):
    def make(split, shuffle=False, batch_size=64):
        return DataLoader(TensorDataset(*digits[split]), batch_size=batch_size, shuffle=shuffle)

    return make


@pytest.fixture(scope="session")
def trained_teacher(digits):
    """A teacher trained briefly with plain PyTorch (so distillation has something to transfer)."""
    torch.manual_seed(0)
    teacher = TinyMLP(hidden=128)
    opt = torch.optim.Adam(teacher.parameters(), lr=3e-3)
    x, y = digits["train"]
    for _ in range(15):
        for i in range(0, len(y), 64):
            opt.zero_grad()
            nn.functional.cross_entropy(teacher(x[i : i + 64]), y[i : i + 64]).backward()
            opt.step()
    return teacher.eval()
