"""FitNets (Romero et al., ICLR 2015): :class:`FitNetsModule`, joint or two-stage hint training, and
:class:`FitNetsStageCallback`, the checkpointed switch from stage 1 (hints) to stage 2 (KD)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal, cast

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_info
from torch import Tensor, nn
from typing_extensions import Unpack

from kd_toolkit._checks import check_float, check_int, is_int
from kd_toolkit.core.batch import logits_of
from kd_toolkit.core.module import ModuleArgs, attached_trainer
from kd_toolkit.distillation.module import DistillationModule
from kd_toolkit.fitnets.regressors import build_hint_regressors, hint_components
from kd_toolkit.fitnets.taps import tapped_forward
from kd_toolkit.losses import kd_loss

__all__ = ["FitNetsModule", "FitNetsStageCallback"]

Stage = Literal["joint", "two_stage"]
Phase = Literal["joint", "hint", "kd"]
_STAGES = ("joint", "two_stage")


def _upstream_parameter_names(model: nn.Module, paths: Sequence[str], example_input: Tensor) -> list[str]:
    """Names of the parameters the features at ``paths`` depend on (found by autograd in a dry run).

    Everything else runs after the guided layers (or not at all) and must not change in stage 1.
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    flags = {name: m.training for name, m in model.named_modules()}
    try:
        model.eval()  # batch-norm statistics stay untouched; the dependency graph is the same
        with torch.enable_grad():
            features, _ = tapped_forward(model, paths, lambda: model(example_input), detach=False, stop=True)
            total = torch.stack([f.float().sum() for f in features.values()]).sum()
            if not named or not total.requires_grad:
                return []
            grads = torch.autograd.grad(total, [p for _, p in named], allow_unused=True)
    finally:
        for name, module in model.named_modules():
            module.training = flags.get(name, module.training)
    return [name for (name, _), grad in zip(named, grads) if grad is not None]


def _check_hint_layers(hint_layers: Any) -> dict[str, str]:
    if (not isinstance(hint_layers, Mapping) or not hint_layers
            or not all(isinstance(k, str) and isinstance(v, str) for k, v in hint_layers.items())):
        raise ValueError("Expected `hint_layers` to be a non-empty dict {student_path: teacher_path} of dotted module "
                         f"paths, but got {hint_layers!r}.")
    return dict(hint_layers)


def _example_batch(example_input: Tensor | None, input_shape: Sequence[int] | None) -> Tensor:
    if example_input is not None:
        if not isinstance(example_input, Tensor) or example_input.dim() < 1 or example_input.shape[0] < 1:
            raise ValueError(f"Expected `example_input` to be a batch tensor (B, ...), but got {example_input!r}.")
        return example_input
    if input_shape is None:
        raise ValueError("Expected `example_input` (a small input batch) or `input_shape` (per-sample shape, e.g. "
                         "[1, 28, 28]) to infer the hint regressors' shapes by a dry run, but got neither.")
    if (isinstance(input_shape, (str, bytes)) or not isinstance(input_shape, Sequence) or not input_shape
            or not all(is_int(s) and s > 0 for s in input_shape)):
        raise ValueError(f"Expected `input_shape` to be a per-sample shape of positive ints such as [1, 28, 28] "
                         f"(no batch dimension), but got {input_shape!r}.")
    return torch.zeros(2, *input_shape)  # (2, *input_shape): eval-mode dry run, batch of 2


def _input_error(student: nn.Module, teacher: nn.Module, example: Tensor, given_batch: bool,
                 input_shape: Sequence[int] | None, err: Exception) -> ValueError:
    """The dry run failed: say which argument and which model (each is run alone to find out)."""
    failing = "the student or the teacher"
    for name, model in (("the student", student), ("the teacher", teacher)):
        flags = {n: m.training for n, m in model.named_modules()}
        try:
            with torch.no_grad():
                model.eval()(example.to(next(model.parameters(), example).device))
        except Exception:  # noqa: BLE001 - any failure names this model
            failing = f"{name} ({type(model).__name__})"
            break
        finally:
            for n, m in model.named_modules():
                m.training = flags.get(n, m.training)
    arg, got = (("example_input", f"a batch of shape {tuple(example.shape)}") if given_batch
                else ("input_shape", repr(list(input_shape or []))))
    return ValueError(f"Expected `{arg}` to fit the models, but got {got}: {failing} raised {type(err).__name__}: "
                      f"{str(err).splitlines()[0] if str(err) else ''}")


class FitNetsModule(DistillationModule):
    """Hint ("FitNets") training: a student's guided layers regress a frozen teacher's hint layers.

    Romero, Ballas, Kahou, Chassang, Gatta & Bengio, "FitNets: Hints for Thin Deep Nets", ICLR 2015.
    For each pair ``{student_path: teacher_path}`` of ``hint_layers`` a :class:`~kd_toolkit.fitnets.regressors.HintRegressor`
    (1x1 conv for maps, linear for vectors; spatial sizes aligned by adaptive average pooling or
    interpolation) maps the student feature to the teacher's shape, and ``hint_loss`` is the MSE to the
    teacher feature. Components, each logged under its name: ``hard_loss`` (cross-entropy), ``kd_loss``
    (Hinton, ``T**2``-scaled), ``hint_loss/<student_path>`` per pair and their sum ``hint_loss``.

    * ``stage="joint"``: every step minimises ``hard_loss + alpha * kd_loss + beta * hint_loss``
      (``alpha=0`` turns KD off, ``beta=0`` the hints).
    * ``stage="two_stage"`` (the paper): for the first ``hint_epochs`` epochs (phase ``"hint"``) the
      loss is ``hint_loss`` alone (unweighted; ``beta`` applies to the joint sum only) and only the
      student's parameters *upstream* of the guided layers (found by autograd in a dry run) and the
      regressors are optimised; the student's forward pass stops right after the guided layers, so the
      later layers, their batch-norm statistics included, do not change. Then (phase ``"kd"``) the
      whole student trains on ``hard_loss + alpha * kd_loss``. The switch is a callback,
      :class:`FitNetsStageCallback`, returned by :meth:`configure_callbacks` (so any Trainer, YAML
      config or CLI gets it) and checkpointed with the phase.

    **Optimizer choice**: each phase has its own optimizer and schedule, rebuilt at the switch with
    ``trainer.strategy.setup_optimizers(trainer)``: stage 1's holds only the upstream parameters and the
    regressors (no weight decay or momentum can touch the later layers), stage 2's the whole student, with
    fresh momentum and the full learning rate; schedules span their phase. With DDP use
    ``strategy="ddp_find_unused_parameters_true"`` for ``two_stage`` (some parameters are unused per phase).

    The regressors are children of the module (optimised, in ``state_dict``, moved with it). The teacher stays
    frozen and outside the children (see :class:`DistillationModule`); features are read under ``no_grad`` by
    hooks that live for one forward pass (none is left on the user's models).

    Args:
        student: the thin student; returns logits, ``{"logits": ...}`` or ``(logits, ...)``.
        teacher: the frozen teacher (required).
        hint_layers: ``{student_path: teacher_path}`` dotted module paths (as in ``named_modules()``).
        example_input: a small input batch ``(B, ...)`` used for a dry run that infers the regressors'
            shapes (and, for ``two_stage``, the upstream parameters); not stored.
        input_shape: per-sample input shape such as ``[1, 28, 28]``, used instead of ``example_input``
            (a zero batch of 2 is run); handy in YAML configs.
        stage: ``"joint"`` or ``"two_stage"``.
        hint_epochs: length of stage 1 in epochs (``two_stage`` only); must be less than ``max_epochs``.
        alpha: weight of ``kd_loss`` (``>= 0``).
        beta: weight of ``hint_loss`` in the joint sum (``>= 0``).
        temperature: KD temperature ``T > 0``.
        align: spatial alignment of student maps, ``"pool"`` (adaptive average pooling, the seed's) or
            ``"interpolate"`` (bilinear).
        regressor: ``"conv1x1"`` or ``"conv3x3"`` for feature maps.
        **kwargs: :class:`~kd_toolkit.core.ModuleArgs`, as for :class:`DistillationModule`: ``optimizer`` (a
            preset name, an optimizer class or factory; an optimizer *instance* cannot cover the regressors and
            is refused), ``lr``, ``optimizer_kwargs``, ``scheduler``, ``warmup_epochs``, ``warmup_steps``,
            ``scheduler_kwargs`` (e.g. the seed's StepLR ``{"step_size_epochs": 10, "gamma": 0.1}``),
            ``criterion``, ``track_grad_norm``, ``inference_pipeline``, ``teacher_checkpoint``. Warm-up and
            schedules apply per phase; the optimizer is built by the base module's ``configure_optimizers``
            (which refuses one holding teacher parameters) over :meth:`trainable_parameters`.

    Raises:
        ValueError: without a teacher, for a negative ``alpha``/``beta``, an unknown ``stage``, a bad
            ``hint_epochs``, neither ``example_input`` nor ``input_shape``, a hint path that does not exist
            (the message lists close names), or features that cannot be aligned (e.g. a map with a vector).

    Example:
        >>> import pytorch_lightning as pl
        >>> from kd_toolkit.data import DigitsDataModule
        >>> from kd_toolkit.fitnets.models import ThinDeepCNN, WideCNN
        >>> module = FitNetsModule(ThinDeepCNN(width=4), WideCNN(width=8), {"features.4": "features.2"},
        ...                        input_shape=[1, 8, 8], alpha=0.5, beta=1.0)
        >>> trainer = pl.Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1, logger=False,
        ...                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
        >>> trainer.fit(module, datamodule=DigitsDataModule())
        >>> sorted(k for k in trainer.logged_metrics if k.startswith("hint_loss") and k.endswith("epoch"))
        ['hint_loss/features.4_epoch', 'hint_loss_epoch']
    """

    loss_names = ("hard_loss", "kd_loss", "hint_loss")
    #: the parent's arguments FitNets sets itself (from ``alpha``/``beta``) are not hyperparameters of its own, so
    #: ``load_from_checkpoint`` can pass the saved ones back to ``__init__``.
    hparams_ignore = (*DistillationModule.hparams_ignore, "loss_weights", "cache_teacher_outputs")

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        hint_layers: dict[str, str],
        *,
        example_input: Tensor | None = None,
        input_shape: Sequence[int] | None = None,
        stage: Stage = "joint",
        hint_epochs: int = 1,
        alpha: float = 0.1,
        beta: float = 1e-3,
        temperature: float = 3.0,
        align: Literal["pool", "interpolate"] = "pool",
        regressor: Literal["conv1x1", "conv3x3"] = "conv1x1",
        **kwargs: Unpack[ModuleArgs],
    ) -> None:
        if teacher is None:
            raise ValueError("Expected a `teacher` nn.Module for FitNets (its hint layers guide the student), but got "
                             "None; train without a teacher with DistillationModule(student, None).")
        alpha = check_float("alpha", alpha, minimum=0)
        beta = check_float("beta", beta, minimum=0)
        if stage not in _STAGES:
            raise ValueError(f"Expected `stage` to be one of {_STAGES}, but got {stage!r}.")
        hint_epochs = check_int("hint_epochs", hint_epochs, minimum=1)
        if isinstance(kwargs.get("optimizer"), torch.optim.Optimizer):
            raise ValueError("Expected `optimizer` to be a preset name or an optimizer class: an optimizer instance "
                             "cannot include the hint regressors (or be rebuilt between FitNets stages).")
        hint_layers = _check_hint_layers(hint_layers)
        example = _example_batch(example_input, input_shape)
        param = next(student.parameters(), None)
        example = example.to(param.device) if param is not None and example_input is None else example
        self.stage, self.hint_epochs, self.alpha, self.beta = stage, hint_epochs, alpha, beta
        self._phase: Phase = "hint" if stage == "two_stage" else "joint"
        weights = {"hard_loss": 1.0, "kd_loss": alpha, "hint_loss": beta}
        super().__init__(student, teacher, temperature=temperature, loss_weights=weights, **kwargs)
        self.hint_layers = hint_layers
        try:
            self.regressors = build_hint_regressors(student, teacher, hint_layers, example, kind=regressor, align=align)
        except ValueError as err:
            raise ValueError(f"Bad `hint_layers` {hint_layers!r}: {err}") from err
        except (RuntimeError, TypeError, IndexError) as err:
            raise _input_error(student, teacher, example, example_input is not None, input_shape, err) from err
        # Stage 1 optimises only what the guided features depend on; everything else stays as it is.
        self._upstream = (_upstream_parameter_names(student, list(hint_layers), example)
                          if stage == "two_stage" else [])

    # ----------------------------------------------------------------------------- phases
    @property
    def phase(self) -> Phase:
        """``"joint"``, or for ``two_stage`` ``"hint"`` (stage 1) then ``"kd"`` (stage 2)."""
        return self._phase

    def set_phase(self, phase: Literal["hint", "kd"]) -> None:
        """Switch a ``two_stage`` module between stage 1 (``"hint"``) and stage 2 (``"kd"``)."""
        if self.stage != "two_stage" or phase not in ("hint", "kd"):
            raise ValueError(f"Expected `phase` 'hint' or 'kd' on a two_stage module, but got {phase!r} "
                             f"(stage={self.stage!r}).")
        self._phase = phase

    @property
    def loss_weights(self) -> dict[str, float]:
        """The weights of the current phase (the base module sums ``loss_weights[k] * component_k``)."""
        phase = getattr(self, "_phase", "joint")
        if phase == "hint":
            return {"hint_loss": 1.0}
        if phase == "kd":
            return {"hard_loss": 1.0, "kd_loss": self.alpha}
        return self._joint_weights

    @loss_weights.setter
    def loss_weights(self, value: Mapping[str, float]) -> None:
        self._joint_weights = dict(value)

    def configure_callbacks(self) -> list[pl.Callback]:
        return [*super().configure_callbacks(), *([FitNetsStageCallback()] if self.stage == "two_stage" else [])]

    # ----------------------------------------------------------------------------- losses
    def teacher_features(self, x: Tensor, *, logits: bool = True) -> tuple[dict[str, Tensor], Tensor | None]:
        """Teacher hint features ``{teacher_path: (B, ...)}`` (no grad) and, when ``logits``, its logits."""
        teacher = cast(nn.Module, self.teacher)  # required by __init__
        features, out = tapped_forward(teacher, list(dict.fromkeys(self.hint_layers.values())),
                                       lambda: self.teacher_forward(x), detach=True, stop=not logits)
        return features, (logits_of(out) if logits else None)

    def student_features(self, x: Tensor, *, logits: bool = True) -> tuple[dict[str, Tensor], Tensor | None]:
        """Student guided features ``{student_path: (B, ...)}`` (with grad) and, when ``logits``, its logits."""
        features, out = tapped_forward(self.student, list(self.hint_layers), lambda: self.student(x), detach=False,
                                       stop=not logits)
        return features, (logits_of(out) if logits else None)

    def loss_components(self, x: Tensor, y: Tensor | None, index: Tensor | None) -> dict[str, Tensor]:
        phase = self.phase
        if phase == "hint":  # stage 1: both forward passes stop at the hint/guided layers
            components = hint_components(self.regressors, self.hint_layers, self.student_features(x, logits=False)[0],
                                         self.teacher_features(x, logits=False)[0])
        elif phase == "kd" or self.beta == 0:
            components = super().loss_components(x, y, index)  # hard + alpha * KD
        else:
            want_kd = self.alpha > 0
            s_feats, s_out = self.student_features(x)
            s_logits = cast(Tensor, s_out)  # (B, C): logits=True
            t_feats, t_logits = self.teacher_features(x, logits=want_kd)
            components = {"hard_loss": self.criterion(s_logits, y)}
            if t_logits is not None:  # want_kd
                components["kd_loss"] = kd_loss(s_logits, t_logits.to(s_logits.dtype), self.temperature)
            components.update(hint_components(self.regressors, self.hint_layers, s_feats, t_feats))
        return components

    # ----------------------------------------------------------------------------- optimizers
    def trainable_parameters(self) -> list[nn.Parameter]:
        """Joint: student + regressors; stage 1: upstream student parameters + regressors; stage 2: student."""
        if self.phase == "kd":
            return super().trainable_parameters()
        if self.phase == "hint":
            upstream = set(self._upstream)
            student = [p for n, p in self.student.named_parameters() if n in upstream and p.requires_grad]
        else:
            student = super().trainable_parameters()
        return student + [p for p in self.regressors.parameters() if p.requires_grad]

    def schedule_steps(self, steps_per_epoch: int, total_steps: int) -> int:
        """Each phase's schedule spans that phase: ``hint_epochs`` for stage 1, the rest for stage 2."""
        max_epochs = max(1, self.trainer.max_epochs or 1)
        epochs = {"hint": self.hint_epochs, "kd": max(1, max_epochs - self.hint_epochs)}.get(self.phase, max_epochs)
        return steps_per_epoch * epochs


class FitNetsStageCallback(pl.Callback):
    """Switches a ``two_stage`` :class:`FitNetsModule` from stage 1 (hints) to stage 2 (KD) after ``hint_epochs``.

    Romero et al. (ICLR 2015) train in two stages; this callback makes the switch at the start of epoch
    ``hint_epochs`` and rebuilds the optimizer and schedule for the whole student
    (``trainer.strategy.setup_optimizers``). Its state (the phase) is saved in every checkpoint and restored
    before the optimizer is built, so a run resumed in stage 2 stays in stage 2 with its optimizer state,
    and a run resumed from a stage-1 checkpoint finishes stage 1 first. :meth:`FitNetsModule.configure_callbacks`
    adds it for you. For ``stage="joint"`` it does nothing.

    Raises:
        ValueError: at ``fit`` when ``hint_epochs`` is not less than ``max_epochs`` (not checked under
            ``fast_dev_run``, a smoke test that runs stage 1 only), or the module is not a
            :class:`FitNetsModule`.

    Example:
        >>> FitNetsStageCallback().state_dict()
        {'phase': 'hint', 'switched_at_epoch': None}
    """

    def __init__(self) -> None:
        self.phase: Literal["hint", "kd"] = "hint"
        self.switched_at_epoch: int | None = None
        self._module: FitNetsModule | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if not isinstance(pl_module, FitNetsModule):
            raise ValueError(f"Expected FitNetsStageCallback to run with a FitNetsModule, but got {type(pl_module).__name__}.")
        if stage != "fit" or pl_module.stage != "two_stage":
            return
        max_epochs = trainer.max_epochs
        if not getattr(trainer, "fast_dev_run", False) and max_epochs is not None and max_epochs >= 0 and pl_module.hint_epochs >= max_epochs:
            raise ValueError(f"Expected `hint_epochs` to be less than the number of epochs so stage 2 can run, but got "
                             f"hint_epochs={pl_module.hint_epochs} with max_epochs={max_epochs}.")
        self._module = pl_module
        pl_module.set_phase(self.phase)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        module = self._module
        if module is None or self.phase != "hint" or trainer.current_epoch < module.hint_epochs:
            return
        self.phase, self.switched_at_epoch = "kd", trainer.current_epoch
        module.set_phase("kd")
        trainer.strategy.setup_optimizers(trainer)  # stage 2: a fresh optimizer and schedule over the whole student
        rank_zero_info(f"FitNets: stage 1 (hints) done after {module.hint_epochs} epoch(s); stage 2 (KD) starts at "
                       f"epoch {trainer.current_epoch}.")

    def state_dict(self) -> dict[str, Any]:
        return {"phase": self.phase, "switched_at_epoch": self.switched_at_epoch}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.phase = state_dict.get("phase", "hint")
        self.switched_at_epoch = state_dict.get("switched_at_epoch")
        if self._module is not None:  # restored after `setup` and before the optimizer is built
            self._module.set_phase(self.phase)
            trainer = attached_trainer(self._module)
            if trainer is not None and trainer.strategy.restore_checkpoint_after_setup and trainer.optimizers:
                trainer.strategy.setup_optimizers(trainer)  # strategies that restore after building optimizers
