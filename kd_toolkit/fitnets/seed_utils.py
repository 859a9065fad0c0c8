"""Seed 004's utility functions over :class:`~kd_toolkit.fitnets.module.FitNetsModule`: feature extraction, the
loss of one batch, one-epoch train/validate loops and feature-map pictures.

**Where the hint regressors live.** There is no hidden state here: a FitNets loss is always computed by a
module built by :func:`build_fitnets_module` (the module :func:`~kd_toolkit.fitnets.seed_api.train_fitnets`
trains, from the same config), and its regressors are ``module.regressors``. The caller keeps that module
(``module=`` of :func:`compute_fitnets_loss` and :func:`train_epoch`) to reuse them. Without one,
:func:`compute_fitnets_loss` builds a module for that call, and :func:`train_epoch` keeps the regressors in the
one object that trains them and that the caller passes every epoch: the optimizer, as its param group named
:data:`REGRESSOR_GROUP` (added once, with a warning; later epochs take the regressors back from it).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from kd_toolkit.core.batch import split_batch
from kd_toolkit.core.module import KDBaseModule
from kd_toolkit.distillation.module import DistillationModule
from kd_toolkit.fitnets.models import (
    DEFAULT_HINT_LAYERS,
    FITNETS_MODELS,
    FinalLogits,
    as_logits_model,
    default_hint_layers,
    final_logits,
)
from kd_toolkit.fitnets.module import FitNetsModule
from kd_toolkit.fitnets.seed_config import DEFAULT_CONFIG, create_fitnets_config
from kd_toolkit.fitnets.seed_io import ARCH_BY_CLASS
from kd_toolkit.fitnets.taps import tapped_forward

__all__ = [
    "REGRESSOR_GROUP", "build_fitnets_module", "compute_fitnets_loss", "evaluate_loader", "extract_student_features",
    "extract_teacher_features", "seed_module", "resolve_hint_layers", "train_epoch", "validate",
    "visualize_feature_maps",
]

#: Name of the param group :func:`train_epoch` adds to a caller's optimizer for the hint regressors.
REGRESSOR_GROUP = "fitnets_regressors"


def resolve_hint_layers(cfg: Mapping[str, Any], teacher: nn.Module | None) -> dict[str, str]:
    """``cfg["hint_layers"]``, else the default pair of the named student and the teacher's architecture."""
    if cfg.get("hint_layers"):
        return dict(cfg["hint_layers"])
    arch = ARCH_BY_CLASS.get(type(teacher).__name__)
    if arch is None:
        raise ValueError(f"Expected `hint_layers` {{student_path: teacher_path}} for a {type(teacher).__name__} teacher "
                         f"(defaults exist for {sorted(FITNETS_MODELS)}), but got None.")
    return default_hint_layers(cfg["model"], arch)


def seed_module(cfg: Mapping[str, Any], student: nn.Module, teacher: nn.Module | None, example: Tensor) -> KDBaseModule:
    """The module for a checked config: :class:`FitNetsModule` with a teacher, else a labels-only
    :class:`DistillationModule`; SGD with momentum and weight decay and StepLR, as the seed optimises."""
    common: dict[str, Any] = dict(
        temperature=cfg["temperature"], optimizer="sgd", lr=cfg["lr"], scheduler="step",
        optimizer_kwargs={"momentum": cfg["momentum"], "weight_decay": cfg["weight_decay"]},
        scheduler_kwargs={"step_size_epochs": cfg["step_size"], "gamma": cfg["gamma"]})
    if teacher is None:
        return DistillationModule(as_logits_model(student), None, **common)
    hint_layers = resolve_hint_layers(cfg, teacher)
    return FitNetsModule(as_logits_model(student), as_logits_model(teacher), hint_layers, example_input=example,
                         stage=cfg["stage"],
                         hint_epochs=cfg["hint_epochs"] or 1, alpha=cfg["alpha"], beta=cfg["beta"], align=cfg["align"],
                         regressor=cfg["regressor"], **common)


def build_fitnets_module(student_model: nn.Module, teacher_model: nn.Module | None, config: Mapping[str, Any],
                         example_input: Tensor) -> KDBaseModule:
    """The module that computes the seed's one-stage loss ``hard + alpha * kd + beta * hint`` for ``config``.

    It is what :func:`~kd_toolkit.fitnets.seed_api.train_fitnets` trains (``stage`` is ``"joint"`` here: the
    utilities have no epochs to switch stages at). Its hint regressors (``module.regressors``) are new; build the
    optimizer over ``module.trainable_parameters()`` (student and regressors) and pass ``module=`` to
    :func:`compute_fitnets_loss` / :func:`train_epoch` to train them.

    Args:
        student_model: The student.
        teacher_model: The teacher, or ``None`` (labels alone: a :class:`DistillationModule`).
        config: Settings for :func:`~kd_toolkit.fitnets.seed_api.create_fitnets_config`.
        example_input: A batch the models accept (its first two samples size the regressors by a dry run).

    Example:
        >>> from kd_toolkit.fitnets.models import ThinDeepCNN, WideCNN
        >>> cfg = {"model": "ThinDeepCNN", "hint_layers": {"features.4": "features.2"}}
        >>> module = build_fitnets_module(ThinDeepCNN(), WideCNN(), cfg, torch.randn(2, 1, 28, 28))
        >>> list(module.regressors), module.loss_weights
        (['features-4'], {'hard_loss': 1.0, 'kd_loss': 0.1, 'hint_loss': 0.001})
    """
    cfg = {**create_fitnets_config(**dict(config)), "stage": "joint"}
    module = seed_module(cfg, student_model, teacher_model, example_input[:2])
    return module.to(example_input.device)


def _single(features: dict[str, Tensor]) -> Tensor | dict[str, Tensor]:
    return next(iter(features.values())) if len(features) == 1 else features


def extract_teacher_features(teacher_model: nn.Module, x: Tensor, config: Mapping[str, Any]) -> Tensor | dict[str, Tensor]:
    """The teacher's hint feature(s) for ``x`` (no grad, eval mode): one tensor, or ``{teacher_path: tensor}``."""
    paths = list(dict.fromkeys(resolve_hint_layers({**DEFAULT_CONFIG, **config}, teacher_model).values()))
    teacher_model.eval()  # a teacher is frozen: batch-norm statistics must not move
    with torch.no_grad():
        return _single(tapped_forward(teacher_model, paths, lambda: teacher_model(x), detach=True, stop=True)[0])


def extract_student_features(student_model: nn.Module, x: Tensor, config: Mapping[str, Any],
                             teacher_model: nn.Module | None = None) -> Tensor | dict[str, Tensor]:
    """The student's guided feature(s) for ``x``, with gradients: the keys of ``config["hint_layers"]``, else the
    default pair for ``teacher_model``, else the model's last feature maps (the seed's ``features[-1]``)."""
    config = {**DEFAULT_CONFIG, **config}
    if config["hint_layers"] or teacher_model is not None:
        paths = list(resolve_hint_layers(config, teacher_model))
    else:
        paths = [DEFAULT_HINT_LAYERS[config["model"]]]
    return _single(tapped_forward(student_model, paths, lambda: student_model(x), detach=False, stop=True)[0])


def _unwrapped(model: Any) -> Any:
    return model.model if isinstance(model, FinalLogits) else model


def _check_module(module: KDBaseModule, student: nn.Module, teacher: nn.Module | None) -> None:
    if _unwrapped(module.student) is not student or _unwrapped(module.teacher) is not teacher:
        raise ValueError("Expected `module` to be built for these `student_model` and `teacher_model` (by "
                         "build_fitnets_module), but it holds other models.")


def compute_fitnets_loss(student_model: nn.Module, teacher_model: nn.Module | None, x: Tensor, y: Tensor,
                         config: Mapping[str, Any], module: KDBaseModule | None = None) -> tuple[Tensor, dict[str, float]]:
    """The seed's one-stage loss ``hard + alpha * kd + beta * hint`` for one batch: ``(total, losses)``.

    ``total`` is the tensor to back-propagate; ``losses`` the seed's floats ``classification_loss``, ``kd_loss``,
    ``feature_loss`` and ``total_loss``, then kd_toolkit's component names (``hard_loss``, ``hint_loss``, ...).

    The components come from the module's own ``loss_components`` (the code that trains in
    :func:`~kd_toolkit.fitnets.seed_api.train_fitnets`), weighted by its ``loss_weights``: the config's
    ``alpha``/``beta``, at its ``temperature``. A component whose weight is 0 is not computed. Without a teacher
    only ``hard_loss``.

    Args:
        student_model: The student.
        teacher_model: The teacher, or ``None``.
        x: Input batch ``(B, ...)``.
        y: Labels ``(B,)``.
        config: Settings for :func:`~kd_toolkit.fitnets.seed_api.create_fitnets_config`.
        module: A module from :func:`build_fitnets_module` for these models, whose regressors are used; ``None``:
            one is built for this call (new regressors: keep a module to train them across calls).

    Example:
        >>> from kd_toolkit.fitnets.models import ThinDeepCNN, WideCNN
        >>> cfg = create_fitnets_config(model="ThinDeepCNN", hint_layers={"features.4": "features.2"}, beta=1.0)
        >>> total, parts = compute_fitnets_loss(ThinDeepCNN(), WideCNN(), torch.randn(4, 1, 28, 28),
        ...                                     torch.tensor([0, 1, 2, 3]), cfg)
        >>> list(parts)[:4]
        ['classification_loss', 'kd_loss', 'feature_loss', 'total_loss']
        >>> sorted(parts)[-3:]
        ['hint_loss/features.4', 'kd_loss', 'total_loss']
    """
    if module is None:
        module = build_fitnets_module(student_model, teacher_model, config, x)
    _check_module(module, student_model, teacher_model)
    parts = module.loss_components(x, y, None)
    weights = module.loss_weights
    total: Tensor = sum(weights[k] * v for k, v in parts.items() if k in weights)  # type: ignore[assignment]
    floats = {k: float(v.detach()) for k, v in parts.items()}
    seed = {"classification_loss": floats.get("hard_loss", 0.0), "kd_loss": floats.get("kd_loss", 0.0),
            "feature_loss": floats.get("hint_loss", 0.0), "total_loss": float(total.detach())}
    return total, {**seed, **floats}


def _adopt_group(regressors: nn.Module, params: list[nn.Parameter]) -> None:
    """Make ``regressors`` use ``params`` (the optimizer's group, from an earlier epoch), in order."""
    named = list(regressors.named_parameters())
    if len(named) != len(params) or any(p.shape != q.shape for (_, p), q in zip(named, params)):
        raise ValueError(f"Expected the {REGRESSOR_GROUP!r} param group of `optimizer` to hold the hint regressors of "
                         "these models and hint layers, but it holds others; use a new optimizer.")
    for (name, _), param in zip(named, params):
        owner, _, leaf = name.rpartition(".")
        setattr(regressors.get_submodule(owner), leaf, param)


def _include_regressors(optimizer: torch.optim.Optimizer, module: KDBaseModule, built_here: bool) -> None:
    """Make ``optimizer`` train the module's regressors: they are in it already, or (``built_here``) its
    :data:`REGRESSOR_GROUP` group holds them from an earlier epoch, or that group is added, with a warning."""
    regressors = getattr(module, "regressors", None)
    if not isinstance(regressors, nn.Module):
        return
    params = list(regressors.parameters())
    held = {id(p) for g in optimizer.param_groups for p in g["params"]}
    if all(id(p) in held for p in params):
        return
    group = next((g for g in optimizer.param_groups if g.get("name") == REGRESSOR_GROUP), None)
    if group is not None and built_here:
        _adopt_group(regressors, group["params"])
        return
    if group is not None:
        raise ValueError(f"Expected `optimizer` to train the regressors of `module`, but its {REGRESSOR_GROUP!r} group "
                         "holds other ones; build the optimizer over module.trainable_parameters().")
    warnings.warn(f"train_epoch added the FitNets hint regressors ({sum(p.numel() for p in params)} parameters) to "
                  f"`optimizer` as a param group named {REGRESSOR_GROUP!r}; it keeps them for later epochs. To include "
                  "them yourself, build the optimizer over build_fitnets_module(...).trainable_parameters() and pass "
                  "`module=`.", UserWarning, stacklevel=3)
    optimizer.add_param_group({"params": params, "name": REGRESSOR_GROUP})


def train_epoch(student_model: nn.Module, teacher_model: nn.Module | None, train_loader: DataLoader,
                optimizer: torch.optim.Optimizer, device: str | torch.device, config: Mapping[str, Any],
                module: KDBaseModule | None = None) -> tuple[float, float, dict[str, float]]:
    """One epoch of :func:`compute_fitnets_loss` with the caller's optimizer (seed 004's ``train_epoch``).

    The hint regressors must be trained by ``optimizer`` too. With ``module`` (from :func:`build_fitnets_module`)
    and an optimizer over ``module.trainable_parameters()`` nothing is added. Otherwise the regressors are added to
    ``optimizer`` once, as a param group named :data:`REGRESSOR_GROUP`, with a ``UserWarning`` saying so; later
    calls with that optimizer train the same regressors (taken back from that group).

    Returns:
        The seed's ``(loss, accuracy, losses)``: the per-sample mean loss, the training accuracy in percent (of the
        predictions made during the steps) and the last batch's ``losses`` from :func:`compute_fitnets_loss`.
    """
    student_model.to(device).train()
    teacher = teacher_model.to(device) if teacher_model is not None else None
    total_loss, correct, count = 0.0, 0, 0
    parts: dict[str, float] = {}
    seen: list[Tensor] = []
    for batch in train_loader:
        x, y, _ = split_batch(batch)
        x, y = x.to(device), y.to(device)  # type: ignore[union-attr]
        if count == 0:  # the first batch sizes the regressors
            built_here = module is None
            if module is None:
                module = build_fitnets_module(student_model, teacher, config, x)
            _include_regressors(optimizer, module, built_here)
        seen.clear()
        assert module is not None  # built on the first batch
        handle = module.student.register_forward_hook(lambda _m, _a, out: seen.append(final_logits(out).detach()))
        try:
            total, parts = compute_fitnets_loss(student_model, teacher, x, y, config, module)
        finally:
            handle.remove()
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        if seen:
            correct += int((seen[0].argmax(-1) == y).sum())
        total_loss += float(total.detach()) * len(y)
        count += len(y)
    return total_loss / max(1, count), 100.0 * correct / max(1, count), parts


@torch.no_grad()
def evaluate_loader(model: nn.Module, loader: DataLoader, device: str | torch.device) -> tuple[float, float, int]:
    """``(mean cross-entropy, accuracy in percent, samples)`` of ``model`` on labelled batches, in eval mode."""
    was = model.training
    model.to(device).eval()
    loss, correct, count = 0.0, 0, 0
    try:
        for batch in loader:
            x, y, _ = split_batch(batch)
            if y is None:
                raise ValueError("Expected the loader to yield labelled batches (x, y), but a batch has no labels.")
            logits = final_logits(model(x.to(device)))  # (B, C)
            loss += float(nn.functional.cross_entropy(logits, y.to(device), reduction="sum"))
            correct += int((logits.argmax(-1).cpu() == y.cpu()).sum())
            count += len(y)
    finally:
        model.train(was)
    return loss / max(1, count), 100.0 * correct / max(1, count), count


def validate(student_model: nn.Module, teacher_model: nn.Module | None, val_loader: DataLoader,
             device: str | torch.device, config: Mapping[str, Any]) -> tuple[float, float]:
    """The seed's ``(loss, accuracy)`` of the student on ``val_loader``: mean cross-entropy and accuracy in percent
    (eval mode; ``teacher_model`` and ``config`` are accepted for the seed's signature)."""
    loss, accuracy, _ = evaluate_loader(student_model, val_loader, device)
    return loss, accuracy


def visualize_feature_maps(model: nn.Module, x: Tensor, config: Mapping[str, Any], layer_idx: int = 0,
                           save_path: str | os.PathLike | None = None, max_channels: int = 16) -> Tensor:
    """The feature map of the ``layer_idx``-th stage of ``model`` for ``x``; optionally a PNG grid of its channels.

    Stages: ``att.*`` (MultiBranchNet: its ``features[layer_idx]``), ``layer1..4`` (ResNets), ``features.*`` (ThinDeepCNN/WideCNN), else the
    top-level children whose output is a 4-D map. The grid shows the first sample's first ``max_channels`` channels.

    Raises:
        ValueError: if ``layer_idx`` is out of range (the message lists the layers).
    """
    paths = _stage_paths(model, x)
    if isinstance(layer_idx, bool) or not isinstance(layer_idx, int) or not 0 <= layer_idx < len(paths):
        raise ValueError(f"Expected `layer_idx` in [0, {len(paths) - 1}] (layers {paths}), but got {layer_idx!r}.")
    flags = {name: m.training for name, m in model.named_modules()}
    try:
        with torch.no_grad():
            feats = tapped_forward(model.eval(), [paths[layer_idx]], lambda: model(x), detach=True, stop=True)[0]
    finally:
        for name, m in model.named_modules():
            m.training = flags[name]
    fmap = feats[paths[layer_idx]].cpu()  # (B, C, H, W)
    if save_path is not None:
        _save_grid(fmap[0, :max_channels], Path(save_path), f"{type(model).__name__} {paths[layer_idx]}")
    return fmap


def _stage_paths(model: nn.Module, x: Tensor) -> list[str]:
    names = dict(model.named_modules())
    for prefix, count in (("att.", 4), ("layer", 8), ("features.", 64)):
        found = [f"{prefix}{i}" if prefix != "layer" else f"layer{i + 1}" for i in range(count)]
        found = [p for p in found if p in names]
        if found:
            return found
    children = [n for n, _ in model.named_children()]
    with torch.no_grad():
        feats = tapped_forward(model, children, lambda: model(x), detach=True, stop=False)[0] if children else {}
    return [n for n in children if n in feats and feats[n].dim() == 4]


def _save_grid(maps: Tensor, path: Path, title: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure  # no pyplot: the caller's backend (e.g. a notebook's) is left alone

    cols = min(4, len(maps))
    rows = -(-len(maps) // cols)
    fig = Figure(figsize=(2 * cols, 2 * rows))
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < len(maps):
            ax.imshow(maps[i].numpy(), cmap="viridis")
            ax.set_title(f"ch {i}", fontsize=8)
    fig.suptitle(title, fontsize=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80, bbox_inches="tight")
