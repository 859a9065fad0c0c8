"""Optimizer presets (seed 002's names) and learning-rate schedules with warm-up.

Schedules are stepped once per optimizer step (not per epoch), so warm-up given in epochs is
converted to steps with the number of optimizer steps per epoch.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Literal, Union

import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

__all__ = [
    "OPTIMIZER_PRESETS",
    "SCHEDULERS",
    "OptimizerSpec",
    "SchedulerName",
    "build_optimizer",
    "build_scheduler",
    "check_optimizer_spec",
    "check_scheduler_name",
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
        raise ValueError(
            "Expected `optimizer` to be a preset name, an optimizer class or an optimizer instance, "
            f"but got {optimizer!r}."
        )


def check_scheduler_name(scheduler: Any) -> str:
    """Return the canonical scheduler name or raise ``ValueError`` listing the allowed ones."""
    if scheduler is None:
        return ""
    if scheduler not in SCHEDULERS:
        raise ValueError(f"Expected `scheduler` to be one of {list(SCHEDULERS)}, but got {scheduler!r}.")
    return "" if scheduler == "none" else scheduler


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
    if isinstance(optimizer, str):
        cls, preset = OPTIMIZER_PRESETS[optimizer]
        return cls(params, lr=lr, **{**preset, **kwargs})
    return optimizer(params, lr=lr, **kwargs)


def _warmup_factor(step: int, warmup_steps: int) -> float:
    # (step + 1) so the very first step does not run with lr = 0.
    return min(1.0, float(step + 1) / float(max(1, warmup_steps)))


class _Schedule:
    """Picklable multiplicative schedule (LambdaLR needs a callable; lambdas don't pickle for DDP spawn)."""

    def __init__(self, name: str, total_steps: int, warmup_steps: int, step_size: int, gamma: float) -> None:
        self.name, self.total, self.warmup = name, max(1, total_steps), max(0, warmup_steps)
        self.step_size, self.gamma = max(1, step_size), gamma

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return _warmup_factor(step, self.warmup)
        if self.name == "linear_decay_with_warm_up":
            return max(0.0, (self.total - step) / max(1, self.total - self.warmup))
        if self.name == "cosine_anneal":
            progress = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        if self.name == "step":
            return self.gamma ** ((step - self.warmup) // self.step_size)
        return 1.0  # "" = constant after warm-up


def build_scheduler(
    scheduler: str,
    optimizer: Optimizer,
    *,
    total_steps: int,
    warmup_steps: int = 0,
    step_size: int = 1,
    gamma: float = 0.1,
) -> LambdaLR | None:
    """Build a per-step schedule with linear warm-up.

    * ``""``: constant learning rate (after warm-up); ``None`` is returned when there is no warm-up.
    * ``"linear_decay_with_warm_up"``: warm-up, then linear decay to 0 at ``total_steps``.
    * ``"cosine_anneal"``: warm-up, then half a cosine down to 0 at ``total_steps``.
    * ``"step"``: warm-up, then multiply by ``gamma`` every ``step_size`` steps (StepLR).

    Example:
        >>> opt = torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), lr=1.0)
        >>> sched = build_scheduler("linear_decay_with_warm_up", opt, total_steps=10, warmup_steps=2)
        >>> [round(sched.lr_lambdas[0](s), 2) for s in (0, 1, 2, 6, 10)]
        [0.5, 1.0, 1.0, 0.5, 0.0]
    """
    name = check_scheduler_name(scheduler)
    if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 0:
        raise ValueError(f"Expected `warmup_steps` to be a non-negative int, but got {warmup_steps!r}.")
    if name == "" and warmup_steps == 0:
        return None
    return LambdaLR(optimizer, _Schedule(name, total_steps, warmup_steps, step_size, gamma))
