"""Optimizers (seed 002's presets) and learning-rate schedules with warm-up, declared once.

:class:`OptimizerArgs` is the one declaration of the optimizer and schedule keyword arguments that every
kd_toolkit LightningModule accepts (``DistillationModule(..., lr=1e-2, scheduler="cosine_anneal")``);
the modules take them as ``**optim: Unpack[OptimizerArgs]``, so LightningCLI/jsonargparse still type-check
them in YAML (a typo such as ``lrr`` or ``scheduler: cosine`` is rejected) and mypy checks calls.
:class:`OptimizerSettings` validates them once and builds the optimizer and its schedule.

Schedules are torch's own (``LinearLR`` warm-up, then ``LinearLR``/``CosineAnnealingLR``/``StepLR`` joined
by ``SequentialLR``), stepped once per optimizer step, so warm-up given in epochs is converted to steps.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal, TypedDict, Union

import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, LRScheduler, SequentialLR, StepLR

from kd_toolkit._checks import check_choice, check_float, check_int, check_keys, check_mapping, expected

__all__ = [
    "OPTIMIZER_DEFAULTS",
    "OPTIMIZER_PRESETS",
    "SCHEDULERS",
    "OptimizerArgs",
    "OptimizerSettings",
    "OptimizerSpec",
    "SchedulerName",
    "build_optimizer",
    "build_scheduler",
    "check_optimizer_spec",
    "check_scheduler_name",
    "optimizer_name",
]

# Seed 002 (georgian-io Knowledge-Distillation-Toolkit) presets, with the seed's settings.
OPTIMIZER_PRESETS: dict[str, tuple[type[Optimizer], dict[str, Any]]] = {
    "adam": (torch.optim.Adam, {}),
    "sgd": (torch.optim.SGD, {}),
    "adam_wav2vec2.0": (torch.optim.Adam, {"betas": (0.9, 0.98), "eps": 1e-6}),
    "adam_distilBert": (torch.optim.Adam, {"eps": 1e-6}),
    "adamW_distilBert": (torch.optim.AdamW, {"betas": (0.9, 0.98), "eps": 1e-6}),
}

SchedulerName = Literal["", "none", "linear_decay_with_warm_up", "cosine_anneal", "step"]
SCHEDULERS: tuple[str, ...] = ("", "none", "linear_decay_with_warm_up", "cosine_anneal", "step")

#: A preset name, an optimizer class (or any callable ``f(params, lr=..., **kw)``), or an
#: already-built optimizer instance (seed 001: the caller's optimizer keeps its state).
OptimizerSpec = Union[str, type, Callable[..., Optimizer], Optimizer]


class OptimizerArgs(TypedDict, total=False):
    """The optimizer and schedule keyword arguments of every kd_toolkit LightningModule.

    Args:
        optimizer: Preset name (``adam``, ``sgd``, ``adam_wav2vec2.0``, ``adam_distilBert``,
            ``adamW_distilBert``), an optimizer class or factory, or an optimizer instance over the
            student's parameters (default ``"adam"``).
        lr: Learning rate, a positive float; ignored for an optimizer instance (default ``1e-3``).
        optimizer_kwargs: Extra optimizer arguments such as ``{"momentum": 0.9}`` (default none).
        scheduler: ``""`` (constant), ``"linear_decay_with_warm_up"``, ``"cosine_anneal"`` or ``"step"``;
            stepped per optimizer step (default ``""``).
        warmup_epochs: Linear warm-up length in epochs (default 0).
        warmup_steps: Linear warm-up length in optimizer steps; takes precedence (default 0).
        scheduler_kwargs: ``{"step_size": steps, "gamma": g}`` (or ``"step_size_epochs"``) for ``"step"``.
        track_grad_norm: Log the student's gradient norms of this order at the logging cadence (default
            ``None``: off; ``-1`` is also off, as in seed 002).
    """

    optimizer: Any
    lr: float
    optimizer_kwargs: dict[str, Any] | None
    scheduler: SchedulerName
    warmup_epochs: int
    warmup_steps: int
    scheduler_kwargs: dict[str, Any] | None
    track_grad_norm: float | None


#: The defaults of :class:`OptimizerArgs` (the one place they are written).
OPTIMIZER_DEFAULTS: dict[str, Any] = {
    "optimizer": "adam", "lr": 1e-3, "optimizer_kwargs": None, "scheduler": "", "warmup_epochs": 0,
    "warmup_steps": 0, "scheduler_kwargs": None, "track_grad_norm": None,
}
_SCHEDULER_KEYS = ("step_size", "step_size_epochs", "gamma")


def check_optimizer_spec(optimizer: Any) -> None:
    """Raise a clear ``ValueError`` for an optimizer spec that can't be built."""
    if isinstance(optimizer, Optimizer):
        return
    if isinstance(optimizer, str):
        if optimizer not in OPTIMIZER_PRESETS:
            raise ValueError(
                f"Expected `optimizer` to be one of {sorted(OPTIMIZER_PRESETS)}, an optimizer class or an "
                f"optimizer instance, but got {optimizer!r}."
            )
        return
    if not callable(optimizer):
        raise expected("optimizer", "a preset name, an optimizer class or an optimizer instance", optimizer)


def optimizer_name(optimizer: Any) -> str:
    """A plain-string name for an optimizer spec (for hyperparameter files): the preset, or the class name."""
    if isinstance(optimizer, str):
        return optimizer
    return str(getattr(optimizer, "__name__", type(optimizer).__name__))


def check_scheduler_name(scheduler: Any) -> str:
    """Return the canonical scheduler name or raise ``ValueError`` listing the allowed ones."""
    if scheduler is None:
        return ""
    name = check_choice("scheduler", scheduler, SCHEDULERS)
    return "" if name == "none" else name


def build_optimizer(
    optimizer: OptimizerSpec, params: Iterable[torch.nn.Parameter], lr: float, **kwargs: Any
) -> Optimizer:
    """Build an optimizer from a preset name, a class/factory, or return the given instance.

    Args:
        optimizer: ``"adam"``, ``"sgd"``, ``"adam_wav2vec2.0"``, ``"adam_distilBert"``,
            ``"adamW_distilBert"``; or a class such as ``torch.optim.SGD``; or an instance.
        params: the parameters to optimise (ignored for an instance).
        lr: learning rate (ignored for an instance, which keeps its own).
        **kwargs: extra constructor arguments, overriding the preset's.

    Example:
        >>> opt = build_optimizer("sgd", torch.nn.Linear(2, 2).parameters(), lr=0.1, momentum=0.9)
        >>> type(opt).__name__, opt.defaults["momentum"]
        ('SGD', 0.9)
    """
    check_optimizer_spec(optimizer)
    if isinstance(optimizer, Optimizer):
        return optimizer
    factory, preset = OPTIMIZER_PRESETS[optimizer] if isinstance(optimizer, str) else (optimizer, {})
    _check_optimizer_kwargs(factory, kwargs)
    return factory(params, lr=lr, **{**preset, **kwargs})


def _check_optimizer_kwargs(factory: Any, kwargs: Mapping[str, Any]) -> None:
    """Name the keyword arguments an optimizer class does not take (instead of torch's raw ``TypeError``)."""
    import inspect

    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # a builtin or C callable: let it raise its own error
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    allowed = [name for name in parameters if name not in ("self", "params")]
    unknown = [key for key in kwargs if key not in allowed]
    if unknown:
        name = getattr(factory, "__name__", repr(factory))
        raise ValueError(f"Expected `optimizer_kwargs` to hold arguments of {name} ({allowed}), but got {unknown}.")


def build_scheduler(
    scheduler: str,
    optimizer: Optimizer,
    *,
    total_steps: int,
    warmup_steps: int = 0,
    step_size: int = 1,
    gamma: float = 0.1,
) -> LRScheduler | None:
    """Build a per-step schedule with linear warm-up from torch's schedulers.

    * ``""``: constant learning rate after warm-up; ``None`` is returned when there is no warm-up.
    * ``"linear_decay_with_warm_up"``: warm-up, then linear decay to 0 at ``total_steps``.
    * ``"cosine_anneal"``: warm-up, then half a cosine down to 0 at ``total_steps``.
    * ``"step"``: warm-up, then multiply by ``gamma`` every ``step_size`` steps (StepLR).

    Warm-up multiplies the learning rate by ``(step + 1) / warmup_steps`` (so the first step does not
    run with ``lr = 0``).

    Example:
        >>> opt = torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), lr=1.0)
        >>> sched = build_scheduler("linear_decay_with_warm_up", opt, total_steps=10, warmup_steps=2)
        >>> lrs = []
        >>> for _ in range(10):
        ...     lrs.append(round(opt.param_groups[0]["lr"], 2)); opt.step(); sched.step()
        >>> lrs
        [0.5, 1.0, 1.0, 0.88, 0.75, 0.62, 0.5, 0.38, 0.25, 0.12]
    """
    name = check_scheduler_name(scheduler)
    warmup = check_int("warmup_steps", warmup_steps, minimum=0)
    total = max(1, int(total_steps))
    warmup = warmup if warmup >= 2 else 0  # a warm-up of one step multiplies by (0 + 1) / 1: no change
    main: LRScheduler | None = None
    rest = max(1, total - warmup)
    if name == "linear_decay_with_warm_up":
        main = LinearLR(optimizer, start_factor=1.0, end_factor=0.0, total_iters=rest)
    elif name == "cosine_anneal":
        main = CosineAnnealingLR(optimizer, T_max=rest, eta_min=0.0)
    elif name == "step":
        main = StepLR(optimizer, step_size=max(1, int(step_size)), gamma=float(gamma))
    if not warmup:
        return main
    ramp = LinearLR(optimizer, start_factor=1.0 / warmup, end_factor=1.0, total_iters=warmup - 1)
    if main is None:
        return ramp
    return SequentialLR(optimizer, [ramp, main], milestones=[warmup])


@dataclasses.dataclass(frozen=True)
class OptimizerSettings:
    """Validated :class:`OptimizerArgs`; builds the optimizer and its per-step schedule.

    Example:
        >>> settings = OptimizerSettings.from_kwargs({"lr": 0.1, "scheduler": "cosine_anneal"})
        >>> settings.lr, settings.scheduler, settings.optimizer
        (0.1, 'cosine_anneal', 'adam')
        >>> OptimizerSettings.from_kwargs({"lrr": 0.1})
        Traceback (most recent call last):
        ...
        ValueError: Unknown key 'lrr' in `optimizer arguments`: expected keys from [...]. Did you mean 'lr'?
    """

    optimizer: Any = "adam"
    lr: float = 1e-3
    optimizer_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    scheduler: str = ""
    warmup_epochs: int = 0
    warmup_steps: int = 0
    scheduler_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    track_grad_norm: float | None = None

    @classmethod
    def from_kwargs(cls, kwargs: Mapping[str, Any]) -> OptimizerSettings:
        """Validate keyword arguments (the keys of :class:`OptimizerArgs`), filling in the defaults."""
        check_keys("optimizer arguments", kwargs, OPTIMIZER_DEFAULTS)
        args = {**OPTIMIZER_DEFAULTS, **kwargs}
        check_optimizer_spec(args["optimizer"])
        grad_norm = args["track_grad_norm"]
        if grad_norm is not None and grad_norm != -1:
            grad_norm = check_float("track_grad_norm", grad_norm, minimum=0, open_low=True)
        scheduler_kwargs = check_mapping("scheduler_kwargs", args["scheduler_kwargs"])
        check_keys("scheduler_kwargs", scheduler_kwargs, _SCHEDULER_KEYS)
        optimizer_kwargs = check_mapping("optimizer_kwargs", args["optimizer_kwargs"])
        spec = args["optimizer"]
        if not isinstance(spec, Optimizer):  # checked now, not when training starts
            _check_optimizer_kwargs(OPTIMIZER_PRESETS[spec][0] if isinstance(spec, str) else spec, optimizer_kwargs)
        return cls(
            optimizer=spec,
            lr=check_float("lr", args["lr"], minimum=0, open_low=True),
            optimizer_kwargs=optimizer_kwargs,
            scheduler=check_scheduler_name(args["scheduler"]),
            warmup_epochs=check_int("warmup_epochs", args["warmup_epochs"], minimum=0),
            warmup_steps=check_int("warmup_steps", args["warmup_steps"], minimum=0),
            scheduler_kwargs=scheduler_kwargs,
            track_grad_norm=None if grad_norm in (None, -1) else float(grad_norm),
        )

    @property
    def has_schedule(self) -> bool:
        """Whether the learning rate changes during training (a schedule or a warm-up)."""
        return bool(self.scheduler) or bool(self.warmup_epochs or self.warmup_steps)

    def build(self, params: Iterable[torch.nn.Parameter], *, steps_per_epoch: int, total_steps: int) -> Any:
        """The optimizer over ``params`` and its schedule over ``total_steps`` optimizer steps, in Lightning's
        ``configure_optimizers`` form (the optimizer alone when the learning rate is constant)."""
        optimizer = build_optimizer(self.optimizer, params, self.lr, **self.optimizer_kwargs)
        per_epoch = max(1, steps_per_epoch)
        kwargs = dict(self.scheduler_kwargs)
        if "step_size_epochs" in kwargs:  # StepLR given in epochs, as the FitNets seed does
            kwargs["step_size"] = kwargs.pop("step_size_epochs") * per_epoch
        warmup = self.warmup_steps or self.warmup_epochs * per_epoch
        scheduler = build_scheduler(self.scheduler, optimizer, total_steps=total_steps,
                                    warmup_steps=warmup, **kwargs)
        if scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
