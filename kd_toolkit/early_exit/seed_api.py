"""Seed 000's early-exit call form of ``knowledge_distillation_train``, over the orchestrator (was
``kd_toolkit.early_exit_api``).

``knowledge_distillation_train(model=..., input_shape=..., thresholds=..., neurons_in_exit_layers=...,
epochs=..., train_dataloader=..., test_dataloader=..., optimizer=torch.optim.SGD,
optimizer_parameters={"lr": 0.001}, criterion=nn.CrossEntropyLoss(), training_method="whole_network")``
dispatches here (see :mod:`kd_toolkit.api`). The original repository's own entry point,
``early_exit.get_early_exit.create_networks`` (eleven positional arguments, used by its ``demo.ipynb``),
is :func:`create_networks`, also importable as ``kd_toolkit.early_exit.get_early_exit.create_networks``.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader

from kd_toolkit.early_exit.module import EarlyExitModule, TrainingMethod
from kd_toolkit.early_exit.network import EarlyExitNetwork, EarlyExitNetworkSegmentor, _blocks_of

__all__ = ["create_networks", "early_exit_train"]

_EXTRA_THRESHOLDS_WARNED = False


class _EpochLosses(pl.Callback):
    """Collects the average training loss per sample of every epoch (module-level: picklable for DDP spawn)."""

    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.losses.append(pl_module.epoch_loss_per_sample())  # type: ignore[operator]


def early_exit_train(
    model: nn.Module,
    input_shape: Sequence[int],
    thresholds: Sequence[float],
    neurons_in_exit_layers: int | Sequence[Sequence[int]],
    epochs: int,
    train_dataloader: DataLoader,
    test_dataloader: DataLoader | None,
    optimizer: Any = torch.optim.Adam,
    optimizer_parameters: Mapping[str, Any] | None = None,
    criterion: nn.Module | None = None,
    training_method: TrainingMethod = "whole_network",
    *,
    confidence: Literal["max_prob", "entropy"] = "max_prob",
    exit_weights: Sequence[float] | None = None,
    self_distillation: bool = False,
    distill_temperature: float = 3.0,
    distill_weight: float = 0.5,
    num_gpu_used: int | None = None,
    precision: Any = 32,
    seed: int | None = None,
    checkpointing: bool = False,
    csv_logging: bool = False,
    default_root_dir: str | Path = "runs",
    quiet: bool = True,
    **trainer_kwargs: Any,
) -> tuple[list[EarlyExitNetworkSegmentor], list[float], list[float]]:
    """Add exits to a split model, train it, and return its segments (seed 000's ``knowledge_distillation_train``).

    Builds an :class:`~kd_toolkit.early_exit.EarlyExitNetwork` (BranchyNet, Teerapittayanon et al. 2016)
    and trains it with :class:`~kd_toolkit.early_exit.EarlyExitModule` through
    :class:`~kd_toolkit.training.KnowledgeDistillationTraining` (CPU, or a GPU when one is available;
    32-bit; no checkpoints, CSV logs or global re-seeding unless asked). Unlike the seed, the exits
    return logits, so ``criterion`` is applied once to logits (no double softmax).

    Args:
        model: The split model: a module whose ``net`` is an ``nn.Sequential`` of blocks (or such an
            ``nn.Sequential``); its last block returns logits. Its blocks are trained in place.
        input_shape: Shape of one input batch, e.g. ``(1, 3, 32, 32)``.
        thresholds: Confidence (max softmax probability by default) above which a sample leaves each
            exit, ``blocks - 1`` values in (0, 1].
        neurons_in_exit_layers: Hidden sizes of each exit, ``blocks - 1`` lists (or one int for all).
        epochs: Number of epochs.
        train_dataloader: Training batches ``(x, y)``.
        test_dataloader: Batches ``(x, y)`` to measure each exit's accuracy on after training, or ``None``.
        optimizer: An optimizer class such as ``torch.optim.SGD`` (or a kd_toolkit preset name). A
            class, not an instance: the exits are created here, so an instance could not cover them.
        optimizer_parameters: Its keyword arguments, e.g. ``{"lr": 0.001, "momentum": 0.9}``;
            ``lr`` defaults to 0.001.
        criterion: Loss on logits, default ``nn.CrossEntropyLoss()``.
        training_method: ``"whole_network"`` (blocks and exits), ``"all_exits"`` (the exits only; the
            blocks, BatchNorm statistics included, stay unchanged) or an exit index ``k`` (that exit
            only; the last index trains the last block).
        confidence: ``"max_prob"`` or ``"entropy"``.
        exit_weights: Loss weight of each exit (final included), normalised; default equal.
        self_distillation: Let the final exit teach the earlier ones (Phuong & Lampert, ICCV 2019).
        distill_temperature: Temperature of self-distillation.
        distill_weight: Share of the distillation term in each early exit's loss.
        num_gpu_used: 0 = CPU, 1 = one GPU, ``None`` = a GPU when available.
        precision: Lightning precision (default 32).
        seed: Seed everything first; ``None`` leaves the RNGs to the caller.
        checkpointing: Write checkpoints under ``default_root_dir``.
        csv_logging: Write ``metrics.csv`` under ``default_root_dir``.
        default_root_dir: Where checkpoints and logs go when enabled.
        quiet: Silence Lightning's info lines.
        **trainer_kwargs: Passed on to ``KnowledgeDistillationTraining`` / ``pytorch_lightning.Trainer``.

    Returns:
        ``(networks, train_losses, test_accuracies)``: one
        :class:`~kd_toolkit.early_exit.EarlyExitNetworkSegmentor` per block (sharing the trained
        modules, in eval mode, ready to chain), the average training loss per sample of each epoch,
        and the accuracy of each exit (final included) on ``test_dataloader`` as fractions in [0, 1]
        (``[]`` without a test loader). The seed documented these as strings; they are floats now.

    Example:
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> blocks = nn.Sequential(nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU()), nn.Linear(32, 10))
        >>> data = DataLoader(TensorDataset(torch.randn(64, 1, 8, 8), torch.randint(0, 10, (64,))), batch_size=32)
        >>> networks, train_losses, test_accuracies = early_exit_train(
        ...     model=blocks, input_shape=(1, 1, 8, 8), thresholds=[0.9], neurons_in_exit_layers=[[16]], epochs=2,
        ...     train_dataloader=data, test_dataloader=data, optimizer=torch.optim.SGD,
        ...     optimizer_parameters={"lr": 0.01}, criterion=nn.CrossEntropyLoss(), training_method="whole_network",
        ...     num_gpu_used=0, enable_progress_bar=False)
        >>> len(networks), len(train_losses), len(test_accuracies)
        (2, 2, 2)
    """
    from kd_toolkit.training import KnowledgeDistillationTraining  # imported here: heavy, and imports this file's peers

    if isinstance(optimizer, torch.optim.Optimizer):
        raise ValueError(
            "Expected `optimizer` to be an optimizer class such as torch.optim.SGD (with `optimizer_parameters`), "
            f"but got an instance of {type(optimizer).__name__}; the exits are created inside, so an instance "
            "built beforehand cannot optimise them."
        )
    if optimizer_parameters is None:
        optimizer_parameters = {}
    if not isinstance(optimizer_parameters, Mapping) or not all(isinstance(k, str) for k in optimizer_parameters):
        raise ValueError(f"Expected `optimizer_parameters` to be a dict of keyword arguments such as {{'lr': 0.001}}, "
                         f"but got {optimizer_parameters!r}.")
    kwargs = dict(optimizer_parameters)
    lr = kwargs.pop("lr", 1e-3)
    thresholds = _drop_extra_thresholds(thresholds, len(_blocks_of(model)) - 1)
    network = EarlyExitNetwork(model, input_shape, neurons_in_exit_layers, thresholds, confidence=confidence)
    module = EarlyExitModule(
        network, training_method=training_method, exit_weights=exit_weights, self_distillation=self_distillation,
        distill_temperature=distill_temperature, distill_weight=distill_weight, criterion=criterion,
        optimizer=optimizer, lr=lr, optimizer_kwargs=kwargs,
    )
    epoch_losses = _EpochLosses()
    trainer_kwargs.setdefault("enable_progress_bar", not quiet)
    trainer_kwargs.setdefault("num_sanity_val_steps", 0)
    kd = KnowledgeDistillationTraining(
        module=module, train_data_loader=train_dataloader, test_data_loaders=test_dataloader, max_epoch=epochs,
        num_gpu_used=num_gpu_used, precision=precision, seed=seed, track_grad_norm=None, deterministic=False,
        checkpointing=checkpointing, csv_logging=csv_logging, default_root_dir=default_root_dir, quiet=quiet,
        callbacks=[epoch_losses, *trainer_kwargs.pop("callbacks", [])], **trainer_kwargs,
    )
    kd.fit()
    test_accuracies: list[float] = []
    if test_dataloader is not None:
        metrics = kd.test(ckpt=None)[0]
        test_accuracies = [float(metrics[f"test_exit_{i}_acc"]) for i in range(network.num_exits)]
    segments = [segment.eval() for segment in network.segments()]  # for inference, like the network
    return segments, epoch_losses.losses, test_accuracies


def _drop_extra_thresholds(thresholds: Any, num_exits: int) -> Any:
    """The seed ignored thresholds beyond the exits (its demo passes 3 for 2 exits): keep that, warn once."""
    global _EXTRA_THRESHOLDS_WARNED
    values = thresholds.tolist() if hasattr(thresholds, "tolist") else thresholds
    if not isinstance(values, Sequence) or isinstance(values, str) or len(values) <= num_exits:
        return thresholds  # too few or malformed: the network's check names the problem
    if not _EXTRA_THRESHOLDS_WARNED:
        _EXTRA_THRESHOLDS_WARNED = True
        warnings.warn(f"Got {len(values)} `thresholds` for {num_exits} exit(s) (one per block but the last); using "
                      f"the first {num_exits} and ignoring {list(values[num_exits:])}, as the seed did.",
                      UserWarning, stacklevel=3)
    return list(values[:num_exits])


def create_networks(
    model: nn.Module,
    input_shape: Sequence[int],
    thresholds: Sequence[float],
    neurons_in_exit_layers: int | Sequence[Sequence[int]],
    epochs: int,
    train_dataloader: DataLoader,
    test_dataloader: DataLoader | None,
    optimizer: Any,
    optimizer_parameters: Mapping[str, Any] | None,
    criterion: nn.Module | None,
    training_method: TrainingMethod,
    scaler: Any = None,
    **kwargs: Any,
) -> tuple[list[EarlyExitNetworkSegmentor], list[float], dict[str, float]]:
    """Seed 000's ``early_exit.get_early_exit.create_networks``, arguments in the original order.

    Trains exactly as :func:`early_exit_train` (which it calls) and returns the original's formats:
    the segments, the training loss of each epoch, and ``{"exit_0": 93.1, ...}``, each exit's test
    accuracy in percent (final exit included; ``{}`` without a test loader). Thresholds beyond the
    number of exits are ignored with a warning (once), as the original ignored them.

    Args:
        model: The split model (``model.net`` an ``nn.Sequential`` of blocks).
        input_shape: Shape of one input batch, e.g. ``(1, 3, 32, 32)``.
        thresholds: One per exit (blocks - 1); extra ones are ignored.
        neurons_in_exit_layers: Hidden sizes of each exit, or one int for all.
        epochs: Number of epochs.
        train_dataloader: Training batches ``(x, y)``.
        test_dataloader: Batches to measure each exit's accuracy on.
        optimizer: An optimizer class, e.g. ``torch.optim.SGD``.
        optimizer_parameters: Its keyword arguments, e.g. ``{"lr": 0.001}``.
        criterion: Loss on logits (the exits return logits: no softmax before it).
        training_method: ``"whole_network"``, ``"all_exits"`` or an exit index.
        scaler: Must be ``None``. The original's confidence function; kd_toolkit computes the
            confidence from logits (``confidence="max_prob"``, the original default's softmax maximum, or
            ``"entropy"``, passed as a keyword).
        **kwargs: Passed on to :func:`early_exit_train` (``confidence``, ``num_gpu_used``, trainer options).

    Example:
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> blocks = nn.Sequential(nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU()), nn.Linear(32, 10))
        >>> data = DataLoader(TensorDataset(torch.randn(64, 1, 8, 8), torch.randint(0, 10, (64,))), batch_size=32)
        >>> networks, train_losses, test_accuracies = create_networks(
        ...     blocks, (1, 1, 8, 8), [0.9], [[16]], 1, data, data, torch.optim.SGD, {"lr": 0.01},
        ...     nn.CrossEntropyLoss(), "whole_network", num_gpu_used=0)
        >>> sorted(test_accuracies), len(train_losses)
        (['exit_0', 'exit_1'], 1)
    """
    if scaler is not None:
        raise ValueError(
            f"Expected `scaler` to be None, but got {scaler!r}: kd_toolkit's exits return logits and the "
            "confidence is computed from them where a decision is made; pass confidence='max_prob' (the softmax "
            "maximum, what the original's default scaler gave) or confidence='entropy' instead."
        )
    networks, train_losses, accuracies = early_exit_train(
        model, input_shape, thresholds, neurons_in_exit_layers, epochs, train_dataloader, test_dataloader,
        optimizer, optimizer_parameters, criterion, training_method, **kwargs)
    return networks, train_losses, {f"exit_{i}": 100.0 * a for i, a in enumerate(accuracies)}
