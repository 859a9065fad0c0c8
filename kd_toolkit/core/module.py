"""The base LightningModule every kd_toolkit method builds on.

It holds what the methods share, each in one place: the frozen teacher, the loss-weight dict, the
optimizer and schedule (:class:`~kd_toolkit.optim.OptimizerSettings`), per-epoch loss sums and the logging
cadence (:class:`~kd_toolkit.core.losslog.EpochLosses`), per-loader metrics, the non-finite-loss guard,
and exact resume (:class:`~kd_toolkit.core.resume.RNGStateCallback`). A method implements
:meth:`KDBaseModule.loss_components`, returning named loss tensors.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import os
from collections.abc import Iterable, Mapping
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import grad_norm
from torch import Tensor, nn
from typing_extensions import Unpack

from kd_toolkit._checks import check_float, check_module, close_matches, expected, is_real
from kd_toolkit._io import check_digest, load_torch
from kd_toolkit.core.batch import explain_batch_error, logits_of, split_batch
from kd_toolkit.core.evaluation import EvaluationMixin
from kd_toolkit.core.losslog import EpochLosses, is_logging_step
from kd_toolkit.core.resume import RNGStateCallback
from kd_toolkit.core.teachers import (
    SINGLE_TEACHER,
    TeacherArg,
    TeacherCheckpointArg,
    freeze_teacher,
    load_teacher_checkpoints,
    run_teacher,
    teacher_dict,
)
from kd_toolkit.optim import OptimizerArgs, OptimizerSettings, optimizer_name

__all__ = ["KDBaseModule", "ModuleArgs", "attached_trainer", "check_loss_weights", "freeze_teacher"]


class ModuleArgs(OptimizerArgs, total=False):
    """Keyword arguments every kd_toolkit LightningModule accepts (with those of :class:`OptimizerArgs`).

    Args:
        criterion: Hard-label loss module on logits (default ``nn.CrossEntropyLoss()``).
        inference_pipeline: Object with ``run_inference_pipeline(model, loader) -> {"inference_result": x}``,
            used instead of accuracy for validation/test and logged under each loader's name (seed 002).
        teacher_checkpoint: Weights to load into the teacher (a state dict, or a checkpoint of a teacher
            trained with kd_toolkit); lets YAML configs name a pretrained teacher. With several teachers, a list
            (or a dict by teacher name) of paths, ``None`` for a teacher to leave as it is.
    """

    criterion: nn.Module | None
    inference_pipeline: Any
    teacher_checkpoint: TeacherCheckpointArg


_MODULE_KEYS = ("criterion", "inference_pipeline", "teacher_checkpoint")


def attached_trainer(module: pl.LightningModule) -> pl.Trainer | None:
    """The module's Trainer, or ``None`` when it is not attached to one (without Lightning's private fields)."""
    try:
        return module.trainer
    except RuntimeError:
        return None


def check_loss_weights(loss_weights: Any, allowed: Iterable[str]) -> dict[str, float]:
    """Validate a loss-weight dict: known keys, finite weights ``>= 0``, a positive sum."""
    allowed = tuple(allowed)
    if not isinstance(loss_weights, Mapping) or not loss_weights:
        raise expected("loss_weights", f"a non-empty dict with keys from {list(allowed)}", loss_weights)
    out: dict[str, float] = {}
    for key, value in loss_weights.items():
        if key not in allowed:
            hint = close_matches(str(key), allowed)
            raise ValueError(f"Unknown loss-weight key {key!r} in `loss_weights`: expected keys from {list(allowed)}."
                             + (f" Did you mean {hint[0]!r}?" if hint else ""))
        if not is_real(value) or value < 0:
            raise ValueError(f"Expected loss weight `{key}` to be a finite number >= 0, but got {value!r}.")
        out[key] = float(value)
    if sum(out.values()) <= 0:
        raise expected("loss_weights", "a dict with a positive sum", loss_weights)
    return out


class KDBaseModule(EvaluationMixin, pl.LightningModule):
    """Base of every kd_toolkit LightningModule; subclass it to add a method.

    Subclasses set :attr:`loss_names` and implement :meth:`loss_components`. The total loss is
    ``sum(loss_weights[k] * component_k)``; every component is logged under its name, the total as
    ``train_loss`` (``_step``/``_epoch`` suffixed, as Lightning's forked logging names them).

    Args:
        student: The model being trained.
        teacher: A frozen teacher (or ``None``), or several as a list or a dict ``{name: module}``
            (:mod:`kd_toolkit.core.teachers`): eval mode, no gradients, never optimised, never in the student's
            checkpoint, not wrapped by DDP; moved to the input's device lazily.
        temperature: Distillation temperature, a positive float.
        loss_weights: Weights of the components (keys from :attr:`loss_names`); default
            :meth:`default_loss_weights`.
        **kwargs: :class:`ModuleArgs` (``criterion``, ``inference_pipeline``, ``teacher_checkpoint``) and
            :class:`~kd_toolkit.optim.OptimizerArgs` (``optimizer``, ``lr``, ``scheduler``, ...).
    """

    _teacher: nn.Module | None
    _teachers: dict[str, nn.Module]
    #: loss-component names a subclass may weight in ``loss_weights``.
    loss_names: tuple[str, ...] = ("hard_loss",)
    #: constructor arguments that are models or objects, kept out of ``hparams.yaml``.
    hparams_ignore: tuple[str, ...] = ("student", "teacher", "network", "criterion", "inference_pipeline", "optimizer",
                                       "example_input")

    def __init__(
        self,
        student: nn.Module,
        teacher: TeacherArg = None,
        *,
        temperature: float = 1.0,
        loss_weights: Mapping[str, float] | None = None,
        **kwargs: Unpack[ModuleArgs],
    ) -> None:
        super().__init__()
        check_module("student", student)
        extra: dict[str, Any] = dict(kwargs)
        extra.pop("optimizer_name", None)  # recorded in hparams for a class optimizer (not rebuilt on load)
        module_args = {k: extra.pop(k) for k in _MODULE_KEYS if k in extra}
        self.optim_settings = OptimizerSettings.from_kwargs(extra)
        self.temperature = check_float("temperature", temperature, minimum=0, open_low=True)
        inference_pipeline = module_args.get("inference_pipeline")
        if inference_pipeline is not None and not callable(getattr(inference_pipeline, "run_inference_pipeline", None)):
            raise ValueError(
                "Expected `inference_pipeline` to have a method `run_inference_pipeline(model, loader)` returning "
                f"{{'inference_result': value}}, but got {type(inference_pipeline).__name__} without it."
            )
        criterion = module_args.get("criterion")
        if criterion is not None and not callable(criterion):
            raise expected("criterion", "a callable loss such as nn.CrossEntropyLoss()", criterion)
        self.student = student
        # The teachers are kept out of the module's children: not in state_dict (so not in the student's
        # checkpoint), not in parameters() (so never in an optimizer) and not seen by DDP.
        teachers = teacher_dict(teacher)  # {name: frozen teacher}
        load_teacher_checkpoints(teachers, module_args.get("teacher_checkpoint"))
        object.__setattr__(self, "_teachers", teachers)
        object.__setattr__(self, "_teacher", teachers[SINGLE_TEACHER] if SINGLE_TEACHER in teachers else None)
        self.criterion = criterion if criterion is not None else nn.CrossEntropyLoss()
        self.loss_weights = check_loss_weights(loss_weights or self.default_loss_weights(), self.loss_names)
        self.inference_pipeline = inference_pipeline
        self._metrics = nn.ModuleDict()
        self._loader_names: dict[str, list[str]] = {}
        self.epoch_losses = EpochLosses()
        self._epoch_values_logged = False
        self._save_module_hyperparameters(inspect.currentframe())

    def _save_module_hyperparameters(self, frame: Any) -> None:
        # From this frame outwards Lightning collects the arguments of every subclass's `__init__`. Models and
        # objects stay out (`hparams_ignore`); the optimizer is recorded by name: a preset rebuilds on
        # `load_from_checkpoint`, a class is only named (`optimizer_name`): pass `optimizer=` again to rebuild it.
        self.save_hyperparameters(ignore=list(self.hparams_ignore), frame=frame)
        complete = {**self.hparams, **dataclasses.asdict(self.optim_settings)}  # resolved values, defaults included
        spec = complete.pop("optimizer")
        complete["optimizer" if isinstance(spec, str) else "optimizer_name"] = optimizer_name(spec)
        self.save_hyperparameters(complete)  # saved again as a whole, so hparams.yaml and the loggers get it all

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: Any, map_location: Any = None, hparams_file: Any = None,
                             strict: bool | None = None, weights_only: bool | None = True, **kwargs: Any) -> Any:
        """Lightning's ``load_from_checkpoint``, always with ``weights_only=True`` (no pickled code runs, whatever
        torch's default) and with the digest that kd_toolkit stores in its checkpoints verified."""
        if weights_only is False:
            raise ValueError("Expected `weights_only` to be True: kd_toolkit never unpickles code from a checkpoint.")
        if isinstance(checkpoint_path, (str, os.PathLike)):
            check_digest(load_torch(str(checkpoint_path), what="checkpoint"), str(checkpoint_path))
        return super().load_from_checkpoint(checkpoint_path, map_location, hparams_file, strict, weights_only=True,
                                            **kwargs)

    # ----------------------------------------------------------------------------- settings (read-only views)
    @property
    def lr(self) -> float:
        return self.optim_settings.lr

    @property
    def optimizer_spec(self) -> Any:
        return self.optim_settings.optimizer

    @property
    def scheduler_name(self) -> str:
        return self.optim_settings.scheduler

    @property
    def track_grad_norm(self) -> float | None:
        return self.optim_settings.track_grad_norm

    # ----------------------------------------------------------------------------- teacher
    @property
    def teacher(self) -> nn.Module | None:
        """The frozen teacher (or ``None``); with several teachers use :attr:`teachers`."""
        if len(self._teachers) > 1:
            raise RuntimeError(f"This module has {len(self._teachers)} teachers {list(self._teachers)}; use "
                               "`module.teachers[name]`.")
        return self._teacher

    @property
    def teachers(self) -> dict[str, nn.Module]:
        """Every frozen teacher by name (``{"teacher": t}`` for a lone one, ``{}`` without)."""
        return dict(self._teachers)

    def default_loss_weights(self) -> dict[str, float]:
        return {"hard_loss": 1.0}

    def teacher_forward(self, x: Tensor, name: str | None = None) -> Any:
        """Run the frozen teacher (``name``: one of several) on ``x`` in eval mode without gradients, moving it to
        ``x``'s device/dtype first."""
        if not self._teachers:
            raise RuntimeError("This module has no teacher (`teacher=None`).")
        if name is None:
            if len(self._teachers) > 1:
                raise RuntimeError(f"This module has several teachers {list(self._teachers)}: pass `name=`.")
            name = next(iter(self._teachers))
        return run_teacher(self._teachers[name], x)

    # ----------------------------------------------------------------------------- training
    def forward(self, x: Tensor) -> Tensor:
        return logits_of(self.student(x))

    def loss_components(self, x: Tensor, y: Tensor | None, index: Tensor | None) -> dict[str, Tensor]:
        """Return the named loss components for one batch (subclasses override)."""
        return {"hard_loss": self.criterion(self(x), y)}

    def configure_callbacks(self) -> list[pl.Callback]:
        return [RNGStateCallback()]

    # `self.log` runs only on the trainer's logging steps and on the epoch's last batch (see `losslog`), under
    # the names forked logging produces: `<name>_step`, `<name>_epoch`, and `<name>` (the epoch mean, for
    # `ModelCheckpoint(monitor="train_loss")`; mid-epoch, monitor `train_loss_step`). `train_loss` is the total.
    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y, index = split_batch(batch)
        try:
            components = self.loss_components(x, y, index)
        except (IndexError, RuntimeError, ValueError) as err:
            with torch.no_grad():
                clear = explain_batch_error(self(x), y, "the training data")
            if clear is not None:
                raise clear from err
            raise
        weights = self.loss_weights
        total: Tensor = sum(weights[k] * v for k, v in components.items() if k in weights)  # type: ignore[assignment]
        batch_size = x.shape[0]
        names, values = self.epoch_losses.add(total, components, batch_size)
        trainer = attached_trainer(self)
        last = trainer is not None and batch_idx + 1 >= trainer.num_training_batches
        logging_step = is_logging_step(trainer, batch_idx)
        if logging_step and values.device.type != "cpu":
            values = values.cpu()  # the only host transfer: on logging steps
        if values.device.type == "cpu" and not math.isfinite(values[0].item() if logging_step else total.item()):
            self._raise_non_finite(values, names)  # checked every step on CPU (free), on logging steps elsewhere
        if logging_step:
            step_values = dict(zip(names, values.unbind()))  # 0-dim host tensors: no sync when Lightning reads them
            kwargs: dict[str, Any] = {"on_step": True, "on_epoch": False, "batch_size": batch_size}
            self.log("train_loss_step", step_values.pop("train_loss"), prog_bar=True, **kwargs)
            self.log_dict({f"{k}_step": v for k, v in step_values.items()}, **kwargs)
        if last:  # logged here, not at epoch end, so callbacks' `on_train_epoch_end` sees them
            self._log_epoch_values()
        return total

    def _log_epoch_values(self) -> None:
        # Under DDP every epoch value is logged with `sync_dist=True` and this rank's sample count as its batch
        # size: Lightning then reduces value * count and count over the ranks, so the value is the mean over all
        # ranks' samples (not a mean of per-rank means), at one reduction per key per epoch (the steps never sync).
        means = self.epoch_losses.mean_tensors()
        trainer = attached_trainer(self)
        sync = trainer is not None and trainer.world_size > 1
        counts = self.epoch_losses.counts() if sync else dict.fromkeys(means, 1)
        for plain in (False, True):  # `<name>_epoch` for the loggers first, then `<name>` for monitors
            for name, value in means.items():
                self.log(name if plain else f"{name}_epoch", value, prog_bar=not plain and name == "train_loss",
                         logger=False if plain else None,  # None: Lightning's default (no warning without a logger)
                         on_step=False, on_epoch=True, batch_size=counts[name], sync_dist=sync)
        self._epoch_values_logged = True

    def on_train_epoch_start(self) -> None:
        self.reset_epoch_loss()
        for teacher in self._teachers.values():
            teacher.eval()

    def on_train_epoch_end(self) -> None:
        if self.epoch_losses.samples == 0:  # e.g. an IterableDataset that yields nothing (it has no length)
            raise ValueError(f"The training data yielded no batches in epoch {self.current_epoch}: the student did "
                             "not change. Check the training loader (an IterableDataset that yields nothing?).")
        if not self._epoch_values_logged:  # the epoch ended early (max_steps, a stop) or its length is unknown
            self._log_epoch_values()

    def reset_epoch_loss(self) -> None:
        self.epoch_losses.reset()
        self._epoch_values_logged = False

    def _raise_non_finite(self, host: Tensor, names: tuple[str, ...]) -> None:
        listed = host.tolist()  # the step's values, total first, in `names` order
        bad = {k: v for k, v in zip(names[1:], listed[1:]) if not math.isfinite(v)}
        raise FloatingPointError(
            f"Non-finite training loss at epoch {self.current_epoch}, step {self.global_step}: total={listed[0]}, "
            f"non-finite components={bad or 'weighted sum overflowed'}. Lower the learning rate, check the "
            "inputs for NaN/inf, or use precision=32."
        )

    def _reduce_sum(self) -> Any:
        if attached_trainer(self) is not None and self.trainer.world_size > 1:
            return lambda t: self.trainer.strategy.reduce(t.to(self.device), reduce_op="sum")
        return None

    def epoch_loss_per_sample(self) -> float:
        """Average training loss per sample over the last epoch (summed over DDP ranks)."""
        means = self.epoch_losses.means(self._reduce_sum())
        if "train_loss" not in means and attached_trainer(self) is not None:  # e.g. the parent of `ddp_spawn`
            logged = self.trainer.callback_metrics.get("train_loss")
            return float(logged) if logged is not None else 0.0
        return float(means.get("train_loss", 0.0))

    def epoch_component_means(self) -> dict[str, float]:
        """Per-sample mean of every loss component over the current/last training epoch (DDP-summed)."""
        means = self.epoch_losses.means(self._reduce_sum())
        means.pop("train_loss", None)
        return means

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # the logger writes when `(optimizer steps so far + 1) % log_every_n_steps == 0`: log on those steps
        if self.track_grad_norm is None or (self.global_step + 1) % max(1, self.trainer.log_every_n_steps):
            return
        self.log_dict(grad_norm(self.student, norm_type=self.track_grad_norm))

    # ----------------------------------------------------------------------------- optimizers
    def _teacher_parameters(self) -> list[nn.Parameter]:
        return [p for teacher in self._teachers.values() for p in teacher.parameters()]

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters handed to the optimizer: the student's (subclasses add e.g. hint regressors)."""
        return [p for p in self.student.parameters() if p.requires_grad]

    def schedule_steps(self, steps_per_epoch: int, total_steps: int) -> int:
        """How many optimizer steps the current schedule spans (a method with stages overrides it)."""
        return total_steps

    def configure_optimizers(self) -> Any:
        steps = max(1, int(self.trainer.estimated_stepping_batches))
        per_epoch = max(1, steps // max(1, self.trainer.max_epochs or 1))
        configured = self.optim_settings.build(self.trainable_parameters(), steps_per_epoch=per_epoch,
                                               total_steps=self.schedule_steps(per_epoch, steps))
        optimizer = configured["optimizer"] if isinstance(configured, dict) else configured
        if optimizer is self.optim_settings.optimizer:  # a ready instance (seed 001): it must cover the student
            own = {id(p) for p in self.trainable_parameters()}
            held = {id(p) for g in optimizer.param_groups for p in g["params"]}
            if not held & own or held - own - {id(p) for p in self._teacher_parameters()}:
                raise ValueError("Expected the `optimizer` instance to be built over the student's parameters (e.g. "
                                 "torch.optim.SGD(student.parameters(), ...)), but it holds other parameters: the "
                                 "student would never change.")
        if self._teachers:
            teacher_ids = {id(p) for p in self._teacher_parameters()}
            if any(id(p) in teacher_ids for g in optimizer.param_groups for p in g["params"]):
                raise ValueError("The optimizer holds teacher parameters; build it over the student's parameters only.")
        return configured
