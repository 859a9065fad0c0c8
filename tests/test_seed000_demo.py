"""Seed 000 (Ilias-Paralikas/early_exit): a port of its demo.ipynb on the embedded digits data, and its call forms.

The original demo imports ``from early_exit.get_early_exit import create_networks``; a user changes only that
line to ``from kd_toolkit.early_exit.get_early_exit import create_networks``. The demo builds a SplitModel from
a pretrained VGG (``features[:14]``, ``features[14:27]``, then ``features[27:]`` + avgpool + classifier), passes
three thresholds for two exits, trains on the test loader with SGD lr 0.001 and reads
``test_accuracies`` as ``{'exit_0': 31.16, ...}`` (percent) and ``train_losses`` as a list of floats.
"""

from __future__ import annotations

import warnings
from copy import deepcopy

import pytest
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

from kd_toolkit.early_exit import EarlyExitNetworkSegmentor, seed_api


class TinyVGG(nn.Module):
    """A stand-in for the demo's ``vgg19_bn()``: ``features``, ``avgpool`` and ``classifier``, sized for 8x8."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),  # (B, 8, 4, 4)
            nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),  # (B, 16, 2, 2)
            nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
        )
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 10))


class SplitModel(nn.Module):
    """The demo's SplitModel, cut points scaled to TinyVGG."""

    def __init__(self, pretrained_model: nn.Module) -> None:
        super().__init__()
        self.device_side_net = deepcopy(pretrained_model.features[:4])
        self.server_side_net = deepcopy(pretrained_model.features[4:8])
        self.cloud_net = nn.Sequential(
            deepcopy(pretrained_model.features[8:]),
            deepcopy(pretrained_model.avgpool),
            nn.Flatten(),
            deepcopy(pretrained_model.classifier),
        )
        self.net = nn.Sequential(self.device_side_net, self.server_side_net, self.cloud_net)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@pytest.fixture(autouse=True)
def _warn_again(monkeypatch):
    monkeypatch.setattr(seed_api, "_EXTRA_THRESHOLDS_WARNED", False)  # "warns once" per process: reset per test


def _exit_accuracies(networks, loader) -> dict[str, float]:
    """The original's test_all_exits_accuracy, recomputed from the returned segments."""
    correct, total = [0] * len(networks), 0
    with torch.no_grad():
        for x, y in loader:
            h = x
            for i, segment in enumerate(networks):
                h = segment.block(h)
                out = h if segment.exit_head is None else segment.exit_head(h)
                correct[i] += int((out.argmax(1) == y).sum())
            total += len(y)
    return {f"exit_{i}": 100 * c / total for i, c in enumerate(correct)}


def test_the_demo_notebook_runs_with_one_import_line_changed(digits):
    from kd_toolkit.early_exit.get_early_exit import create_networks  # was: from early_exit.get_early_exit import ...

    torch.manual_seed(0)
    testloader = DataLoader(TensorDataset(*digits["test"]), batch_size=4, shuffle=False)
    model = SplitModel(TinyVGG())

    # Define the input parameters (the demo's, with 8x8 digits and smaller exits)
    input_shape = (1, 1, 8, 8)
    thresholds = [0.8, 0.9, 0.9]  # three thresholds for two exits, as in the demo
    neurons_in_exit_layers = [[64, 65], [64, 64]]
    epochs = 2
    train_dataloader = testloader
    test_dataloader = testloader
    optimizer = torch.optim.SGD
    optimizer_parameters = {"lr": 0.001}
    criterion = torch.nn.CrossEntropyLoss()
    training_method = "whole_network"

    with pytest.warns(UserWarning, match=r"Got 3 `thresholds` for 2 exit\(s\).*ignoring \[0.9\]"):
        networks, train_losses, test_accuracies = create_networks(
            model,
            input_shape,
            thresholds,
            neurons_in_exit_layers,
            epochs,
            train_dataloader,
            test_dataloader,
            optimizer,
            optimizer_parameters,
            criterion,
            training_method,
        )
    assert isinstance(networks, list) and len(networks) == 3
    assert all(isinstance(n, EarlyExitNetworkSegmentor) for n in networks)
    assert [n.threshold for n in networks] == [0.8, 0.9, None]
    assert isinstance(train_losses, list) and len(train_losses) == epochs and all(isinstance(v, float) for v in train_losses)
    assert isinstance(test_accuracies, dict) and list(test_accuracies) == ["exit_0", "exit_1", "exit_2"]
    assert all(isinstance(v, float) and 0.0 <= v <= 100.0 for v in test_accuracies.values())
    assert test_accuracies == pytest.approx(_exit_accuracies(networks, testloader), abs=1e-6)  # percent, as printed


def test_extra_thresholds_warn_once(loaders):
    common = (SplitModel(TinyVGG()), (1, 1, 8, 8), [0.8, 0.9, 0.9], 8, 1, loaders("val"), None, torch.optim.SGD,
              {"lr": 0.01}, nn.CrossEntropyLoss(), "all_exits")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        seed_api.create_networks(*common, num_gpu_used=0)
        _, _, accuracies = seed_api.create_networks(*common, num_gpu_used=0)
    assert [str(w.message) for w in caught if "`thresholds`" in str(w.message)] == [
        "Got 3 `thresholds` for 2 exit(s) (one per block but the last); using the first 2 and ignoring [0.9], as the "
        "seed did."]
    assert accuracies == {}


def test_early_exit_train_positional_in_the_original_order(loaders):
    networks, losses, accuracies = seed_api.early_exit_train(
        SplitModel(TinyVGG()), (1, 1, 8, 8), [0.9, 0.9], [[16], [16]], 1, loaders("val"), loaders("val"),
        torch.optim.Adam, {"lr": 0.01}, nn.CrossEntropyLoss(), "whole_network", num_gpu_used=0)
    assert len(networks) == 3 and len(losses) == 1 and len(accuracies) == 3  # kd_toolkit's form: fractions


def test_create_networks_with_the_original_keywords(loaders):
    networks, losses, accuracies = seed_api.create_networks(
        model=SplitModel(TinyVGG()), input_shape=(1, 1, 8, 8), thresholds=[0.9, 0.9], neurons_in_exit_layers=16,
        epochs=1, train_dataloader=loaders("val"), test_dataloader=loaders("val"), optimizer=torch.optim.SGD,
        optimizer_parameters={"lr": 0.01}, criterion=nn.CrossEntropyLoss(), training_method=1, scaler=None,
        num_gpu_used=0)
    assert len(networks) == 3 and sorted(accuracies) == ["exit_0", "exit_1", "exit_2"]


@pytest.mark.parametrize(("change", "message"), [
    ({"thresholds": [0.9]}, r"Expected `thresholds` to be 2 number\(s\) in \(0, 1\]"),
    ({"scaler": lambda t: torch.softmax(t, 0)}, r"Expected `scaler` to be None.*confidence='max_prob'"),
    ({"training_method": 5}, r"Expected `training_method` to be one of"),
])
def test_bad_seed_arguments_are_named(loaders, change, message):
    kwargs = dict(model=SplitModel(TinyVGG()), input_shape=(1, 1, 8, 8), thresholds=[0.9, 0.9],
                  neurons_in_exit_layers=16, epochs=1, train_dataloader=loaders("val"), test_dataloader=None,
                  optimizer=torch.optim.SGD, optimizer_parameters={"lr": 0.01}, criterion=nn.CrossEntropyLoss(),
                  training_method="whole_network")
    with pytest.raises(ValueError, match=message):
        seed_api.create_networks(**{**kwargs, **change})


def test_the_lazy_exports():
    import kd_toolkit
    from kd_toolkit import early_exit

    assert kd_toolkit.create_networks is early_exit.create_networks is seed_api.create_networks
