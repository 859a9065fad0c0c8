"""Early-exit training (BranchyNet) with optional self-distillation, as a LightningModule.

:class:`EarlyExitModule` trains an :class:`~kd_toolkit.early_exit.EarlyExitNetwork`: the whole network,
the exits only, or a single exit, and reports every exit's accuracy, the early-exit accuracy at the
current thresholds, the exit shares and the average compute per sample at validation and test.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any, Literal

import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from kd_toolkit.core.batch import split_batch
from kd_toolkit.core.module import KDBaseModule as _KDBaseModule
from kd_toolkit.early_exit import EarlyExitNetwork, EarlyExitPrediction, _exit_costs, _mac_parts
from kd_toolkit.losses import kd_loss, multi_exit_loss

__all__ = ["EarlyExitModule", "SplitCNN"]

TrainingMethod = Literal["whole_network", "all_exits"] | int
_METHODS = ("whole_network", "all_exits")
_CKPT_KEY = "kd_toolkit_early_exit"


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
        for name, value in (("in_channels", in_channels), ("num_classes", num_classes)):
            if not _is_int(value) or value < 1:
                raise ValueError(f"Expected `{name}` to be a positive int, but got {value!r}.")
        if (isinstance(channels, str) or not isinstance(channels, Sequence) or len(channels) < 2
                or not all(_is_int(c) and c > 0 for c in channels)):
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


class EarlyExitModule(_KDBaseModule):
    """Train an early-exit network: exits after every block, final exit included (BranchyNet).

    Teerapittayanon, McDanel & Kung, "BranchyNet: Fast Inference via Early Exiting from Deep Neural
    Networks" (ICPR 2016): the loss is a weighted sum of the exits' cross-entropies. With
    ``self_distillation=True`` the final exit also teaches the earlier ones (Phuong & Lampert,
    "Distillation-Based Training for Multi-Exit Architectures", ICCV 2019): early exit ``i`` gets
    ``(1 - distill_weight) * CE + distill_weight * KL(final.detach() || exit_i) * T**2`` at
    temperature ``T = distill_temperature`` (see :func:`kd_toolkit.losses.multi_exit_loss`).

    ``training_method``:

    * ``"whole_network"``: blocks and exits, loss over every exit.
    * ``"all_exits"``: the early exits only, loss over them; the blocks are frozen (seed 000: for a
      pretrained body whose accuracy must not change). Frozen blocks run in eval mode, so BatchNorm
      keeps its running statistics and Dropout is off: block weights *and* buffers stay unchanged.
    * an int ``k``: exit ``k`` alone; ``k = num_exits - 1`` trains the last block (the final exit).
      Everything else is frozen the same way.

    Frozen parameters get ``requires_grad=False`` for the duration of ``fit`` (so DDP sees no unused
    parameters) and their flags are restored at the end; they are never in the optimizer.

    Logged: ``exit_{i}_loss`` for every trained exit and their weighted sum ``train_loss``, plus
    ``self_distill_loss`` (the mean distillation term of the trained early exits; logged only, it is
    already inside each ``exit_{i}_loss``). At validation/test (``val_*``/``test_*``, suffixed
    ``_<name>`` for named loaders): ``exit_{i}_acc`` per exit, ``early_exit_acc`` (batched early exit
    at the current thresholds, as :meth:`EarlyExitNetwork.predict` decides), ``exit_{i}_share``
    (fraction of samples leaving at exit ``i``), ``avg_macs`` (per sample, see
    :func:`kd_toolkit.early_exit.exit_macs`) and ``relative_macs`` (over the blocks without exits),
    and ``acc``/``loss`` of the **final exit** (``val_acc`` is the orchestrator's checkpoint monitor).

    The thresholds are saved in the checkpoint and restored on load (they are not in ``state_dict``).

    Args:
        network: The early-exit network (see :meth:`from_model` to build it from the seed's arguments).
        training_method: ``"whole_network"``, ``"all_exits"`` or an exit index ``k``.
        exit_weights: One weight per exit (``num_exits``, final included), normalised over the trained
            exits; default equal. ``"all_exits"`` ignores the final weight, an int ``k`` all but ``k``'s.
        self_distillation: Let the final exit teach the earlier exits.
        distill_temperature: Temperature of self-distillation, ``> 0``.
        distill_weight: Share of the distillation term in each early exit's loss, in ``[0, 1]``.
        criterion: Hard-label loss on logits (default ``nn.CrossEntropyLoss()``).
        optimizer: Preset name, optimizer class or factory (see :mod:`kd_toolkit.optim`).
        lr: Learning rate.
        optimizer_kwargs: Extra optimizer arguments, e.g. ``{"momentum": 0.9}``.
        scheduler: ``""``, ``"linear_decay_with_warm_up"``, ``"cosine_anneal"`` or ``"step"``.
        warmup_epochs: Linear warm-up in epochs (or ``warmup_steps``).
        warmup_steps: Linear warm-up in optimizer steps (takes precedence).
        scheduler_kwargs: Scheduler arguments.
        track_grad_norm: Log gradient norms of this order (None: off).

    Example:
        >>> import pytorch_lightning as pl
        >>> from kd_toolkit.data import DigitsDataModule
        >>> module = EarlyExitModule.from_model(SplitCNN(channels=(8, 16)), (1, 1, 8, 8), [[16]], [0.9],
        ...                                     self_distillation=True)
        >>> trainer = pl.Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1, logger=False,
        ...                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
        >>> trainer.fit(module, datamodule=DigitsDataModule())
        >>> {"exit_0_loss_epoch", "val_exit_0_acc", "val_early_exit_acc", "val_avg_macs"} <= set(trainer.callback_metrics)
        True
    """

    def __init__(
        self,
        network: EarlyExitNetwork,
        *,
        training_method: TrainingMethod = "whole_network",
        exit_weights: Sequence[float] | None = None,
        self_distillation: bool = False,
        distill_temperature: float = 3.0,
        distill_weight: float = 0.5,
        criterion: nn.Module | None = None,
        optimizer: Any = "adam",
        lr: float = 1e-3,
        optimizer_kwargs: dict[str, Any] | None = None,
        scheduler: str = "",
        warmup_epochs: int = 0,
        warmup_steps: int = 0,
        scheduler_kwargs: dict[str, Any] | None = None,
        track_grad_norm: float | None = None,
    ) -> None:
        if not isinstance(network, EarlyExitNetwork):
            raise ValueError("Expected `network` to be a kd_toolkit.early_exit.EarlyExitNetwork (or use "
                             f"EarlyExitModule.from_model), but got {type(network).__name__}.")
        num_exits = network.num_exits
        self.trained_exits: list[int] = _check_method(training_method, num_exits)
        weights = _check_exit_weights(exit_weights, num_exits, self.trained_exits)
        if not isinstance(self_distillation, bool):
            raise ValueError(f"Expected `self_distillation` to be a bool, but got {self_distillation!r}.")
        if not (_is_real(distill_temperature) and 0.0 < distill_temperature < math.inf):
            raise ValueError(f"Expected `distill_temperature` to be a positive float, but got {distill_temperature!r}.")
        if not (_is_real(distill_weight) and 0.0 <= distill_weight <= 1.0):
            raise ValueError(f"Expected `distill_weight` to be a float in [0, 1], but got {distill_weight!r}.")
        self.loss_names = tuple(f"exit_{i}_loss" for i in range(num_exits))  # per instance: depends on the network
        super().__init__(
            network, None, temperature=float(distill_temperature), loss_weights=weights,
            criterion=criterion, optimizer=optimizer, lr=lr, optimizer_kwargs=optimizer_kwargs, scheduler=scheduler,
            warmup_epochs=warmup_epochs, warmup_steps=warmup_steps, scheduler_kwargs=scheduler_kwargs,
            track_grad_norm=track_grad_norm,
        )
        self.training_method = training_method
        self.self_distillation = self_distillation
        self.distill_weight = float(distill_weight)
        self._mac_table: tuple[list[int], list[int]] | None = None  # (block MACs, head MACs), thresholds aside
        self._saved_requires_grad: list[tuple[nn.Parameter, bool]] = []
        self.save_hyperparameters(ignore=["network", "criterion", "optimizer"])
        if isinstance(optimizer, str):  # a preset name rebuilds on `load_from_checkpoint`; a class is named only
            self.hparams["optimizer"] = optimizer
        else:
            self.hparams["optimizer_name"] = getattr(optimizer, "__name__", type(optimizer).__name__)

    @classmethod
    def from_model(cls, model: nn.Module, input_shape: Sequence[int], neurons_in_exit_layers: int | Sequence[Sequence[int]],
                   thresholds: Sequence[float], *, confidence: Literal["max_prob", "entropy"] = "max_prob",
                   **kwargs: Any) -> EarlyExitModule:
        """Build the :class:`EarlyExitNetwork` from the seed's arguments, then the module (``kwargs``)."""
        return cls(EarlyExitNetwork(model, input_shape, neurons_in_exit_layers, thresholds, confidence=confidence),
                   **kwargs)

    @property
    def network(self) -> EarlyExitNetwork:
        """The early-exit network being trained (stored as ``student``, so checkpoint keys start ``student.``)."""
        return self.student  # type: ignore[return-value]

    def forward(self, x: Tensor) -> list[Tensor]:  # type: ignore[override]
        """Logits of every exit, final included: ``num_exits`` tensors ``(B, C)``."""
        return self.network(x)

    # ------------------------------------------------------------------------------ what trains
    def _trained_modules(self) -> list[nn.Module]:
        net, last = self.network, self.network.num_exits - 1
        if self.training_method == "whole_network":
            return [net]
        return [net.blocks[last] if k == last else net.exits[k] for k in self.trained_exits]

    def _frozen_modules(self) -> list[nn.Module]:
        if self.training_method == "whole_network":
            return []
        trained = {id(m) for m in self._trained_modules()}
        net = self.network
        return [m for m in [*net.blocks, *net.exits] if id(m) not in trained]

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for module in self._trained_modules() for p in module.parameters() if p.requires_grad]

    def train(self, mode: bool = True) -> EarlyExitModule:
        """Set the training mode; frozen blocks and exits always stay in eval mode."""
        super().train(mode)
        if mode and hasattr(self, "training_method"):
            for module in self._frozen_modules():
                module.eval()
        return self

    def setup(self, stage: str) -> None:
        if stage == "fit" and not self._saved_requires_grad:
            frozen = [p for module in self._frozen_modules() for p in module.parameters()]
            self._saved_requires_grad = [(p, p.requires_grad) for p in frozen]
            for p in frozen:
                p.requires_grad_(False)

    def teardown(self, stage: str) -> None:
        if stage == "fit":
            for p, flag in self._saved_requires_grad:
                p.requires_grad_(flag)
            self._saved_requires_grad = []

    def configure_callbacks(self) -> list[pl.Callback]:
        return [_RestoreRequiresGrad()]

    def on_fit_start(self) -> None:
        # Lightning 2 keeps the modes it finds (a network returned in eval mode would train in eval mode)
        # and warns about eval-mode modules when training starts: everything trains until that check ...
        super().train(True)

    def on_train_start(self) -> None:
        self.train()  # ... and the frozen blocks and exits switch to eval mode right after it

    # ------------------------------------------------------------------------------ training
    def _distills(self) -> bool:
        """Whether self-distillation applies: on, with weight, and some early exit is trained."""
        last = self.network.num_exits - 1
        return self.self_distillation and self.distill_weight > 0 and any(k < last for k in self.trained_exits)

    def _exit_logits(self, x: Tensor) -> dict[int, Tensor]:
        """Logits ``(B, C)`` of the exits the loss needs; stops after the last block it needs."""
        net, last = self.network, self.network.num_exits - 1
        needed = set(self.trained_exits) | ({last} if self._distills() else set())
        outputs: dict[int, Tensor] = {}
        for index, block in enumerate(net.blocks[: max(needed) + 1]):
            x = block(x)  # (B, ...)
            if index in needed:
                outputs[index] = x if index == last else net.exits[index](x)  # (B, C)
        return outputs

    def loss_components(self, x: Tensor, y: Tensor, index: Tensor | None) -> dict[str, Tensor]:
        outputs = self._exit_logits(x)
        last, trained, distill = self.network.num_exits - 1, self.trained_exits, self._distills()
        # multi_exit_loss takes its teacher from the last list entry: the final exit, weight 0 when frozen
        order = trained + ([last] if distill and last not in trained else [])
        weights = [self.loss_weights[f"exit_{k}_loss"] if k in trained else 0.0 for k in order]
        _, per_exit = multi_exit_loss(
            [outputs[k] for k in order], y, weights, criterion=self.criterion,
            distill_temperature=self.temperature if distill else None,
            distill_weight=self.distill_weight if distill else 0.0,
        )
        components = {f"exit_{k}_loss": loss for k, loss in zip(order, per_exit) if k in trained}
        if distill:  # for the logs only: each early exit's loss already holds its distillation term
            teacher = outputs[last].detach()  # (B, C)
            terms = [kd_loss(outputs[k].detach(), teacher, self.temperature) for k in trained if k < last]
            components["self_distill_loss"] = torch.stack(terms).mean()
        return components

    # ------------------------------------------------------------------------------ evaluation
    def _exit_costs(self) -> list[int]:
        if self._mac_table is None:
            self._mac_table = _mac_parts(self.network)
        return _exit_costs(*self._mac_table, self.network.thresholds)

    def _eval_step(self, stage: str, batch: Any, dataloader_idx: int) -> None:
        x, y, _ = split_batch(batch)
        outputs = self.network(x)  # num_exits x (B, C)
        num_exits, batch_size = len(outputs), x.shape[0]
        scores = [self.network.confidence_scores(out) for out in outputs[:-1]]  # (B,) each
        limits = torch.tensor(self.network.thresholds, device=x.device)  # (E-1,)
        leaves = [s > t for s, t in zip(scores, limits)] + [torch.ones_like(y, dtype=torch.bool)]
        exit_index = torch.stack(leaves).int().argmax(dim=0)  # (B,) first exit whose confidence exceeds
        correct = torch.stack([out.argmax(-1) == y for out in outputs]).float()  # (E, B)
        costs = torch.tensor(self._exit_costs(), dtype=torch.float32, device=x.device)[exit_index]  # (B,)
        shares = torch.bincount(exit_index, minlength=num_exits).float() / batch_size  # (E,)
        full_macs = float(sum(self._mac_table[0])) if self._mac_table else 0.0  # type: ignore[index]
        _, suffix = self._metric_key(stage, dataloader_idx)
        values = {f"{stage}_exit_{i}_acc": correct[i].mean() for i in range(num_exits)}
        values.update({f"{stage}_exit_{i}_share": shares[i] for i in range(num_exits)})
        values[f"{stage}_early_exit_acc"] = correct[exit_index, torch.arange(batch_size, device=x.device)].mean()
        values[f"{stage}_avg_macs"] = costs.mean()
        values[f"{stage}_relative_macs"] = costs.mean() / (full_macs or 1.0)
        values[f"{stage}_loss"] = self.criterion(outputs[-1], y)
        values[f"{stage}_acc"] = correct[-1].mean()
        shown = (f"{stage}_acc", f"{stage}_early_exit_acc")
        kwargs = dict(on_step=False, on_epoch=True, sync_dist=True, add_dataloader_idx=False, batch_size=batch_size)
        for key, value in values.items():  # epoch value = sample-weighted mean over batches (and DDP ranks)
            self.log(f"{key}{suffix}", value, prog_bar=key in shown and not suffix, **kwargs)
        if suffix and dataloader_idx == 0:  # `val_acc` = first loader's final-exit accuracy: the monitor key
            self.log(f"{stage}_acc", values[f"{stage}_acc"], **kwargs)

    def _eval_epoch_end(self, stage: str) -> None:
        pass  # every metric is an epoch mean of `self.log`, reduced by Lightning

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> EarlyExitPrediction:
        """Batched early exit: :meth:`EarlyExitNetwork.predict` (predictions, exit index, logits)."""
        x, _, _ = split_batch(batch)
        return self.network.predict(x)

    # ------------------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint[_CKPT_KEY] = {"thresholds": self.network.thresholds, "confidence": self.network.confidence}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        state = checkpoint.get(_CKPT_KEY)
        if state:
            self.network.thresholds = state["thresholds"]
            self.network.confidence = state["confidence"]
            self._mac_table = None


class _RestoreRequiresGrad(pl.Callback):
    """Give frozen parameters their ``requires_grad`` back when ``fit`` stops with an exception."""

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if isinstance(pl_module, EarlyExitModule):
            pl_module.teardown("fit")


def _check_method(training_method: Any, num_exits: int) -> list[int]:
    """Indices of the exits a training method trains (the final exit is ``num_exits - 1``)."""
    if training_method == "whole_network" and isinstance(training_method, str):
        return list(range(num_exits))
    if training_method == "all_exits" and isinstance(training_method, str):
        return list(range(num_exits - 1))
    if _is_int(training_method) and 0 <= training_method < num_exits:
        return [int(training_method)]
    raise ValueError(
        f"Expected `training_method` to be one of {_METHODS} or an exit index int in [0, {num_exits - 1}] "
        f"({num_exits - 1} is the final exit, i.e. the last block), but got {training_method!r}."
    )


def _check_exit_weights(exit_weights: Sequence[float] | None, num_exits: int, trained: list[int]) -> dict[str, float]:
    """Loss weights ``{exit_k_loss: w_k}`` of the trained exits, normalised to sum to one."""
    if exit_weights is None:
        exit_weights = [1.0] * num_exits
    ok = (isinstance(exit_weights, Sequence) and not isinstance(exit_weights, str) and len(exit_weights) == num_exits
          and all(_is_real(w) and 0.0 <= w < math.inf for w in exit_weights))
    if not ok or sum(exit_weights[k] for k in trained) <= 0:
        raise ValueError(
            f"Expected `exit_weights` to be {num_exits} finite numbers >= 0 (one per exit, final included) with a "
            f"positive sum over the trained exits {trained}, but got {exit_weights!r}."
        )
    total = float(sum(exit_weights[k] for k in trained))
    return {f"exit_{k}_loss": float(exit_weights[k]) / total for k in trained}


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)
