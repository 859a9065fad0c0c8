"""Seed 000's call form of knowledge_distillation_train (early exit), exactly as the seed's README shows it."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from kd_toolkit.early_exit import EarlyExitNetwork, EarlyExitNetworkSegmentor

INPUT_SHAPE = (1, 1, 8, 8)
NEURONS = [[32], [16]]


class SplitModel(nn.Module):
    """The seed's step 2: the model split into nn.Sequential sub-blocks inside an nn.Sequential named `net`."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2)),  # (B, 8, 4, 4)
            nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)),  # (B, 16, 2, 2)
            nn.Sequential(nn.Flatten(), nn.Linear(64, 10)),  # (B, 10) logits
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _chain_one_sample_at_a_time(networks, x):
    """The seed's inference: each sample walks the segments until one lets it exit."""
    preds, exits = [], []
    with torch.no_grad():
        for sample in x:
            h = sample.unsqueeze(0)  # (1, ...)
            for index, segment in enumerate(networks):
                logits, exited, features = segment(h)
                if bool(exited[0]):
                    preds.append(int(logits.argmax(-1)))
                    exits.append(index)
                    break
                h = features
    return torch.tensor(preds), torch.tensor(exits)


def _network_of(model, networks) -> EarlyExitNetwork:
    """An EarlyExitNetwork over the same blocks with the trained exits' weights, to compare with predict."""
    net = EarlyExitNetwork(model, INPUT_SHAPE, NEURONS, [s.threshold for s in networks[:-1]])
    for head, segment in zip(net.exits, networks):
        head.load_state_dict(segment.exit_head.state_dict())
    return net


def test_seed_000_call_form_from_both_import_paths(loaders, digits):
    from kd_toolkit import knowledge_distillation_train as same
    from knowledge_distilation import knowledge_distillation_train

    assert knowledge_distillation_train is same
    torch.manual_seed(0)
    model = SplitModel()
    before = copy.deepcopy(model.state_dict())

    networks, train_losses, test_accuracies = knowledge_distillation_train(
        model=model,
        input_shape=INPUT_SHAPE,
        thresholds=[0.8, 0.8],
        neurons_in_exit_layers=NEURONS,
        epochs=2,
        train_dataloader=loaders("train", shuffle=True, batch_size=64),
        test_dataloader=loaders("test"),
        optimizer=torch.optim.SGD,
        optimizer_parameters={"lr": 0.05, "momentum": 0.9},
        criterion=torch.nn.CrossEntropyLoss(),
        training_method="whole_network",
    )
    assert len(networks) == 3 and all(isinstance(n, EarlyExitNetworkSegmentor) for n in networks)
    assert networks[-1].is_last and networks[0].threshold == 0.8 and not any(m.training for n in networks for m in n.modules())
    assert len(train_losses) == 2 and all(isinstance(v, float) for v in train_losses)
    assert train_losses[-1] < train_losses[0]
    assert len(test_accuracies) == 3 and all(0.5 < a <= 1.0 for a in test_accuracies)  # trained, one per exit
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())  # blocks trained in place
    assert networks[0].block is model.net[0]  # segments share the trained modules

    x, y = digits["test"]
    with torch.no_grad():  # each exit's accuracy, recomputed independently from the segments' modules
        h, manual = x, []
        for segment in networks:
            h = segment.block(h)
            logits = h if segment.exit_head is None else segment.exit_head(h)
            manual.append((logits.argmax(-1) == y).float().mean().item())
    assert test_accuracies == pytest.approx(manual, abs=1e-6)

    preds, exits = _chain_one_sample_at_a_time(networks, x[:150])
    batched = _network_of(model, networks).predict(x[:150])
    assert torch.equal(preds, batched.predictions) and torch.equal(exits, batched.exit_index)
    assert 0 < int((exits < 2).sum()) < 150  # some samples leave early, some do not


def test_all_exits_keeps_the_body_and_int_method_trains_one_exit(loaders):
    from kd_toolkit import knowledge_distillation_train

    torch.manual_seed(0)
    model = SplitModel()
    before = copy.deepcopy(model.state_dict())
    common = dict(input_shape=INPUT_SHAPE, thresholds=[0.9, 0.9], neurons_in_exit_layers=NEURONS, epochs=1,
                  train_dataloader=loaders("val", shuffle=True), test_dataloader=loaders("val"),
                  optimizer=torch.optim.Adam, optimizer_parameters={"lr": 0.01}, criterion=nn.CrossEntropyLoss())
    networks, losses, accuracies = knowledge_distillation_train(model=model, training_method="all_exits", **common)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and BatchNorm statistics
    assert len(losses) == 1 and len(accuracies) == 3
    networks, _, _ = knowledge_distillation_train(model=model, training_method=2, **common)  # the last block
    assert not torch.equal(before["net.2.1.weight"], model.state_dict()["net.2.1.weight"])
    assert all(torch.equal(before[k], model.state_dict()[k]) for k in before if not k.startswith("net.2."))


def test_train_loss_is_the_average_per_sample(loaders, digits):
    """With a negligible learning rate the returned loss can be recomputed by hand (last batch weighs less)."""
    from kd_toolkit.early_exit.seed_api import early_exit_train

    torch.manual_seed(0)
    model = SplitModel()
    loader = loaders("val", batch_size=64)  # 300 samples: 4 x 64 + 44
    networks, losses, accuracies = early_exit_train(
        model=model, input_shape=INPUT_SHAPE, thresholds=[0.9, 0.9], neurons_in_exit_layers=NEURONS, epochs=1,
        train_dataloader=loader, test_dataloader=None, optimizer=torch.optim.SGD,
        optimizer_parameters={"lr": 1e-12}, criterion=nn.CrossEntropyLoss(), exit_weights=[1.0, 1.0, 2.0])
    assert accuracies == []
    total, count = 0.0, 0
    for segment in networks:
        segment.train()  # as during training: BatchNorm on batch statistics
    with torch.no_grad():
        for x, y in loader:
            h, losses_i = x, []
            for segment in networks:
                h = segment.block(h)
                logits = h if segment.exit_head is None else segment.exit_head(h)
                losses_i.append(nn.functional.cross_entropy(logits, y))
            total += float((losses_i[0] + losses_i[1] + 2 * losses_i[2]) / 4) * len(y)
            count += len(y)
    assert losses[0] == pytest.approx(total / count, rel=1e-5)


def test_bad_seed_arguments(loaders):
    from knowledge_distilation import knowledge_distillation_train

    model = SplitModel()
    common = dict(model=model, input_shape=INPUT_SHAPE, thresholds=[0.9, 0.9], neurons_in_exit_layers=NEURONS,
                  epochs=1, train_dataloader=loaders("val"), test_dataloader=loaders("val"),
                  criterion=nn.CrossEntropyLoss())
    with pytest.raises(ValueError, match="Expected `training_method` to be one of"):
        knowledge_distillation_train(optimizer=torch.optim.SGD, optimizer_parameters={"lr": 0.1},
                                     training_method="exits", **common)
    with pytest.raises(ValueError, match="Expected `training_method` to be one of"):
        knowledge_distillation_train(optimizer=torch.optim.SGD, optimizer_parameters={"lr": 0.1}, training_method=3,
                                     **common)
    with pytest.raises(ValueError, match="Expected `optimizer` to be an optimizer class such as torch.optim.SGD"):
        knowledge_distillation_train(optimizer=torch.optim.SGD(model.parameters(), lr=0.1), **common)
    with pytest.raises(ValueError, match="Expected `optimizer_parameters` to be a dict"):
        knowledge_distillation_train(optimizer=torch.optim.SGD, optimizer_parameters=[0.1], **common)
    with pytest.raises(ValueError, match="Expected `thresholds` to be 2 number"):
        knowledge_distillation_train(**{**common, "thresholds": [0.9]})
