"""Early-exit training (BranchyNet) with optional self-distillation, as a LightningModule.

:class:`EarlyExitModule` trains an :class:`~kd_toolkit.early_exit.EarlyExitNetwork`: the whole network,
the exits only, or a single exit, and reports every exit's accuracy, the early-exit accuracy at the
current thresholds, the exit shares and the average compute per sample at validation and test.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from typing_extensions import Unpack

from kd_toolkit._checks import check_float, expected, is_int, is_real
from kd_toolkit.core import KDBaseModule, ModuleArgs, logits_of, split_batch
from kd_toolkit.core.teachers import TeacherArg
from kd_toolkit.early_exit import runtime
from kd_toolkit.early_exit.cost import mac_parts
from kd_toolkit.early_exit.network import EarlyExitNetwork, EarlyExitPrediction
from kd_toolkit.early_exit.runtime import ConfidenceRule
from kd_toolkit.losses import kd_loss, mixture_log_probs, multi_exit_loss

__all__ = ["EarlyExitModule", "TrainingMethod"]

TrainingMethod = Literal["whole_network", "all_exits"] | int
_METHODS = ("whole_network", "all_exits")
_CKPT_KEY = "kd_toolkit_early_exit"


class EarlyExitModule(KDBaseModule):
    """Train an early-exit network: exits after every block, final exit included (BranchyNet).

    Teerapittayanon, McDanel & Kung, "BranchyNet: Fast Inference via Early Exiting from Deep Neural
    Networks" (ICPR 2016): the loss is a weighted sum of the exits' cross-entropies. With
    ``self_distillation=True`` the final exit also teaches the earlier ones (Phuong & Lampert,
    "Distillation-Based Training for Multi-Exit Architectures", ICCV 2019): early exit ``i`` gets
    ``(1 - distill_weight) * CE + distill_weight * KL(final.detach() || exit_i) * T**2`` at
    temperature ``T = distill_temperature`` (see :func:`kd_toolkit.losses.multi_exit_loss`). An external
    ``teacher`` distills into every exit, final included, alone or with self-distillation: exit ``i`` gets
    ``(1 - s - t_i) * CE + s * KL(final || exit_i) * T**2 + t_i * KL(teacher || exit_i) * T_t**2`` with
    ``s = distill_weight`` (0 on the final exit or without self-distillation), ``t_i = teacher_weight[i]`` and
    ``T_t = teacher_temperature``; several teachers teach through their equal mixture
    (:func:`kd_toolkit.losses.mixture_log_probs`).

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
    already inside each ``exit_{i}_loss``) and, with a teacher, ``teacher_distill_loss`` (the mean teacher term of
    the trained exits, logged only too). At validation/test (``val_*``/``test_*``, suffixed
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
        teacher: A teacher for every exit (or several, as a list or dict), frozen by
            :class:`~kd_toolkit.core.KDBaseModule`; it must output the exits' number of classes.
        teacher_weight: Share of the teacher term in each exit's loss, in ``[0, 1]``: one float, or one per exit
            (``num_exits``, final included). With self-distillation ``distill_weight + teacher_weight <= 1``.
        teacher_temperature: Temperature of the teacher term, ``> 0``.
        **kwargs: :class:`~kd_toolkit.core.ModuleArgs`: ``criterion`` (hard-label loss on logits, default
            ``nn.CrossEntropyLoss()``), ``inference_pipeline``, and :class:`~kd_toolkit.optim.OptimizerArgs`:
            ``optimizer`` (preset name, optimizer class or factory), ``lr``, ``optimizer_kwargs``, ``scheduler``,
            ``warmup_epochs``, ``warmup_steps``, ``scheduler_kwargs``, ``track_grad_norm``. A preset name is
            saved in the hyperparameters and rebuilt on load; a class is recorded as ``optimizer_name`` only.

    Example:
        >>> import pytorch_lightning as pl
        >>> from kd_toolkit.data import DigitsDataModule
        >>> from kd_toolkit.early_exit.models import SplitCNN
        >>> module = EarlyExitModule.from_model(SplitCNN(channels=(8, 16)), (1, 1, 8, 8), [[16]], [0.9],
        ...                                     self_distillation=True)
        >>> trainer = pl.Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1, logger=False,
        ...                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
        >>> trainer.fit(module, datamodule=DigitsDataModule())
        >>> {"exit_0_loss_epoch", "val_exit_0_acc", "val_early_exit_acc", "val_avg_macs"} <= set(trainer.callback_metrics)
        True
    """

    #: ``temperature`` and ``loss_weights`` are derived from ``distill_temperature`` and ``exit_weights``.
    hparams_ignore = (*KDBaseModule.hparams_ignore, "temperature", "loss_weights")

    def __init__(
        self,
        network: EarlyExitNetwork,
        *,
        training_method: TrainingMethod = "whole_network",
        exit_weights: Sequence[float] | None = None,
        self_distillation: bool = False,
        distill_temperature: float = 3.0,
        distill_weight: float = 0.5,
        teacher: TeacherArg = None,
        teacher_weight: float | Sequence[float] = 0.5,
        teacher_temperature: float = 3.0,
        **kwargs: Unpack[ModuleArgs],
    ) -> None:
        if not isinstance(network, EarlyExitNetwork):
            raise ValueError("Expected `network` to be a kd_toolkit.early_exit.EarlyExitNetwork (or use "
                             f"EarlyExitModule.from_model), but got {type(network).__name__}.")
        num_exits = network.num_exits
        self.trained_exits: list[int] = _check_method(training_method, num_exits)
        weights = _check_exit_weights(exit_weights, num_exits, self.trained_exits)
        if not isinstance(self_distillation, bool):
            raise ValueError(f"Expected `self_distillation` to be a bool, but got {self_distillation!r}.")
        temperature = check_float("distill_temperature", distill_temperature, minimum=0, open_low=True)
        weight = check_float("distill_weight", distill_weight, minimum=0, maximum=1)
        self.loss_names = tuple(f"exit_{i}_loss" for i in range(num_exits))  # per instance: depends on the network
        teacher_weights = _check_teacher_weight(teacher_weight, num_exits,
                                               weight if self_distillation and teacher is not None else None)
        self.teacher_temperature = check_float("teacher_temperature", teacher_temperature, minimum=0, open_low=True)
        super().__init__(network, teacher, temperature=temperature, loss_weights=weights, **kwargs)
        self.teacher_weight = teacher_weights if self._teachers else [0.0] * num_exits
        _check_teacher_classes(self, network)
        self.training_method = training_method
        self.self_distillation = self_distillation
        self.distill_weight = weight
        self._mac_table: tuple[list[int], list[int]] | None = None  # (block MACs, head MACs), thresholds aside
        self._saved_requires_grad: list[tuple[nn.Parameter, bool]] = []
        self._shape_checked = False  # the first batch is checked against the network's input_shape

    @classmethod
    def from_model(cls, model: nn.Module, input_shape: Sequence[int], neurons_in_exit_layers: int | Sequence[Sequence[int]],
                   thresholds: Sequence[float], *, confidence: ConfidenceRule = "max_prob",
                   **kwargs: Any) -> EarlyExitModule:
        """Build the :class:`EarlyExitNetwork` from the seed's arguments, then the module (``kwargs``)."""
        return cls(EarlyExitNetwork(model, input_shape, neurons_in_exit_layers, thresholds, confidence=confidence),
                   **kwargs)

    @property
    def network(self) -> EarlyExitNetwork:
        """The early-exit network being trained (stored as ``student``, so checkpoint keys start ``student.``)."""
        return self.student

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
        return [*super().configure_callbacks(), _RestoreRequiresGrad()]

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

    def _teacher_logits(self, x: Tensor) -> list[Tensor] | None:
        """Every teacher's logits ``(B, C)`` (frozen, no grad), or ``None`` when no trained exit has a teacher term."""
        if not any(self.teacher_weight[k] > 0 for k in self.trained_exits):
            return None
        return [logits_of(self.teacher_forward(x, name)).detach() for name in self._teachers]

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

    def loss_components(self, x: Tensor, y: Tensor | None, index: Tensor | None) -> dict[str, Tensor]:
        if y is None:
            raise ValueError("Expected training batches of (x, y) for early-exit training, but got no labels.")
        self._check_first_batch(x)
        outputs, teacher_out = self._exit_logits(x), self._teacher_logits(x)
        last, trained, distill = self.network.num_exits - 1, self.trained_exits, self._distills()
        # multi_exit_loss takes its teacher from the last list entry: the final exit, weight 0 when frozen
        order = trained + ([last] if distill and last not in trained else [])
        weights = [self.loss_weights[f"exit_{k}_loss"] if k in trained else 0.0 for k in order]
        _, per_exit = multi_exit_loss(
            [outputs[k] for k in order], y, weights, criterion=self.criterion,
            distill_temperature=self.temperature if distill else None,
            distill_weight=self.distill_weight if distill else 0.0, teacher_logits=teacher_out,
            teacher_weight=[self.teacher_weight[k] for k in order], teacher_temperature=self.teacher_temperature,
        )
        components = {f"exit_{k}_loss": loss for k, loss in zip(order, per_exit) if k in trained}
        if distill:  # for the logs only: each early exit's loss already holds its distillation term
            teacher = outputs[last].detach()  # (B, C)
            terms = [kd_loss(outputs[k].detach(), teacher, self.temperature) for k in trained if k < last]
            components["self_distill_loss"] = torch.stack(terms).mean()
        if teacher_out is not None:  # for the logs only, as above
            log_t = mixture_log_probs(teacher_out, self.teacher_temperature)  # (B, C)
            terms = [kd_loss(outputs[k].detach(), log_t, self.teacher_temperature, log_target=True)
                     for k in trained if self.teacher_weight[k] > 0]
            components["teacher_distill_loss"] = torch.stack(terms).mean()
        return components

    def _check_first_batch(self, x: Tensor) -> None:
        """An ``input_shape`` may fit the model (adaptive pooling) but not the data: say so on the first batch."""
        if self._shape_checked:
            return
        want = tuple(self.network.input_shape[1:])
        if tuple(x.shape[1:]) != want:
            raise ValueError(
                f"Expected the batches to match `input_shape` {self.network.input_shape} (samples of shape {want}), "
                f"but the first batch has samples of shape {tuple(x.shape[1:])}; build the network with "
                f"input_shape=(1, {', '.join(map(str, x.shape[1:]))}) so that the exits are sized for the data."
            )
        self._shape_checked = True

    # ------------------------------------------------------------------------------ evaluation
    def _mac_parts(self) -> tuple[list[int], list[int]]:
        """(block MACs, head MACs), counted once per network (thresholds change only which heads are paid)."""
        if self._mac_table is None:
            self._mac_table = mac_parts(self.network)
        return self._mac_table

    def _exit_metrics(self, outputs: Sequence[Tensor], y: Tensor) -> dict[str, Tensor]:
        """Per-batch evaluation metrics from the logits of every exit, as ``predict`` would decide.

        Returns ``exit_{i}_acc``, ``exit_{i}_share``, ``early_exit_acc``, ``avg_macs``, ``relative_macs``,
        ``loss`` and ``acc`` (the last two of the final exit) as 0-dim tensors.
        """
        num_exits, batch_size = len(outputs), y.shape[0]
        scores = [self.network.confidence_scores(out) for out in outputs[:-1]]  # (B,) each
        exit_index = runtime.exit_indices(scores, self.network.thresholds)  # (B,)
        correct = torch.stack([out.argmax(-1) == y for out in outputs]).float()  # (E, B)
        block_macs, head_macs = self._mac_parts()
        costs = runtime.exit_costs(block_macs, head_macs, self.network.thresholds)
        macs = runtime.per_sample_macs(exit_index, costs, dtype=torch.float32).mean()
        shares = torch.bincount(exit_index, minlength=num_exits).float() / batch_size  # (E,)
        values = {f"exit_{i}_acc": correct[i].mean() for i in range(num_exits)}
        values.update({f"exit_{i}_share": shares[i] for i in range(num_exits)})
        values["early_exit_acc"] = correct[exit_index, torch.arange(batch_size, device=y.device)].mean()
        values["avg_macs"] = macs
        values["relative_macs"] = macs / (float(sum(block_macs)) or 1.0)
        values["loss"] = self.criterion(outputs[-1], y)
        values["acc"] = correct[-1].mean()
        return values

    def _eval_step(self, stage: str, batch: Any, dataloader_idx: int) -> None:
        x, y, _ = split_batch(batch)
        self._check_first_batch(x)
        values = self._exit_metrics(self.network(x), y)  # type: ignore[arg-type]
        _, suffix = self._metric_key(stage, dataloader_idx)
        kwargs: dict[str, Any] = dict(on_step=False, on_epoch=True, sync_dist=True, add_dataloader_idx=False,
                                      batch_size=x.shape[0])
        for key, value in values.items():  # epoch value = sample-weighted mean over batches (and DDP ranks)
            self.log(f"{stage}_{key}{suffix}", value, prog_bar=key in ("acc", "early_exit_acc") and not suffix,
                     **kwargs)
        if suffix and dataloader_idx == 0:  # `val_acc` = first loader's final-exit accuracy: the monitor key
            self.log(f"{stage}_acc", values["acc"], **kwargs)

    def _eval_epoch_end(self, stage: str) -> None:
        pass  # every metric is an epoch mean of `self.log`, reduced by Lightning

    def predict_step(self, batch: Any, batch_idx: int,  # type: ignore[override]
                     dataloader_idx: int = 0) -> EarlyExitPrediction:
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
    if is_int(training_method) and 0 <= training_method < num_exits:
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
          and all(is_real(w) and w >= 0.0 for w in exit_weights))
    if not ok or sum(exit_weights[k] for k in trained) <= 0:
        raise ValueError(
            f"Expected `exit_weights` to be {num_exits} finite numbers >= 0 (one per exit, final included) with a "
            f"positive sum over the trained exits {trained}, but got {exit_weights!r}."
        )
    total = float(sum(exit_weights[k] for k in trained))
    return {f"exit_{k}_loss": float(exit_weights[k]) / total for k in trained}


def _check_teacher_weight(teacher_weight: Any, num_exits: int, distill_weight: float | None) -> list[float]:
    """One teacher weight per exit (final included), each in ``[0, 1]``; with self-distillation (``distill_weight``)
    the early exits' ``distill_weight + teacher_weight`` must not exceed 1."""
    values = [teacher_weight] * num_exits if is_real(teacher_weight) else teacher_weight
    if (isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or len(values) != num_exits
            or not all(is_real(w) and 0 <= w <= 1 for w in values)):
        raise expected("teacher_weight", f"a float in [0, 1] or {num_exits} of them (one per exit, final included)",
                       teacher_weight)
    if distill_weight is not None and any(distill_weight + w > 1 + 1e-9 for w in values[:-1]):
        raise expected("teacher_weight", f"at most 1 - distill_weight = {1 - distill_weight:g} on the early exits "
                       "(self-distillation is on: `distill_weight` + `teacher_weight` must not exceed 1)",
                       teacher_weight)
    return [float(w) for w in values]


def _check_teacher_classes(module: EarlyExitModule, network: EarlyExitNetwork) -> None:
    """Run every teacher once on zeros of the network's input shape: it must output the exits' classes."""
    for name, teacher in module.teachers.items():
        param = next(teacher.parameters(), None)
        x = torch.zeros(network.input_shape, device=param.device if param is not None else None,
                        dtype=param.dtype if param is not None and param.is_floating_point() else None)
        try:
            classes = logits_of(module.teacher_forward(x, name)).shape[-1]
        except (RuntimeError, ValueError, TypeError) as err:
            raise ValueError(f"Expected `teacher` {name!r} to accept the network's input shape "
                             f"{network.input_shape}, but it raised {type(err).__name__}: {err}") from err
        if classes != network.num_classes:
            raise ValueError(f"Expected `teacher` {name!r} to output the exits' {network.num_classes} classes, but "
                             f"got {classes}.")
