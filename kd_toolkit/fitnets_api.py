"""The FitNets seed's functional API (seed 004) over :class:`~kd_toolkit.modules.fitnets.FitNetsModule`.

``create_fitnets_config(**kw)`` + ``train_fitnets(config, train_loader, val_loader, test_loader)`` train a
student (Romero et al., "FitNets: Hints for Thin Deep Nets", ICLR 2015) through
:class:`~kd_toolkit.training.KnowledgeDistillationTraining` and write the seed's files::

    save_dir/{experiment}_best.pth, _final.pth, _epoch_{N}.pth (+ _epoch_{N}.ckpt to resume from)
    log_dir/{experiment}.log, {experiment}_summary.json
    log_dir/{experiment}/version_<n>/   TensorBoard events (tensorboard/), metrics.csv, checkpoints/last.ckpt

The seed's utility functions (feature extraction, loss, one-epoch train/validate loops and feature-map
visualisation) work on plain models; their hint regressors are kept per student.
"""

from __future__ import annotations

import difflib
import inspect
import os
import time
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from kd_toolkit._fitnets_io import (
    ARCH_BY_CLASS,
    SeedOutputs,
    hardware_kwargs,
    image_folder_loaders,
    load_teacher_model,
    loader_length,
    primitive_config,
    resume_checkpoint,
    save_json,
    visualize_feature_maps,
)
from kd_toolkit.adapters import build_hint_regressors
from kd_toolkit.core.batch import logits_of, split_batch
from kd_toolkit.distillation.module import DistillationModule
from kd_toolkit.fitnets_models import DEFAULT_HINT_LAYERS, FITNETS_MODELS, create_fitnets_model, default_hint_layers
from kd_toolkit.losses import kd_loss
from kd_toolkit.modules.fitnets import FitNetsModule, _hint_components, _tapped_forward

__all__ = [
    "DEFAULT_CONFIG", "compute_fitnets_loss", "create_fitnets_config", "extract_student_features",
    "extract_teacher_features", "load_teacher_model", "train_epoch", "train_fitnets", "validate",
    "visualize_feature_maps",
]

DEFAULT_CONFIG: dict[str, Any] = {
    # --- the seed's keys and defaults
    "model": "MultiBranchNet", "teacher_model": None, "data_dir": "data", "batch_size": 32, "num_workers": 4,
    "augment": False, "epochs": 50, "lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4, "step_size": 10,
    "gamma": 0.1, "temperature": 3.0, "alpha": 0.1, "beta": 1e-3, "device": "auto", "print_freq": 100,
    "save_freq": 10, "save_dir": "checkpoints", "log_dir": "logs", "experiment_name": None, "resume": None,
    # --- kd_toolkit's additions
    "stage": "joint",          # "joint" (the seed's one-stage sum) or "two_stage" (the paper)
    "hint_layers": None,       # {student_path: teacher_path}; None: the named models' last feature maps
    "hint_epochs": None,       # two_stage: epochs of stage 1; None: max(1, epochs // 4)
    "num_classes": None,       # None: read from the data (ImageFolder classes)
    "in_channels": None,       # None: the model's default (3; 1 for ThinDeepCNN/WideCNN)
    "image_size": None,        # None: 128 (the seed's), 28 for the MNIST-sized ThinDeepCNN/WideCNN
    "seed": 42, "align": "pool", "regressor": "conv1x1", "precision": 32, "deterministic": False, "verbose": True,
}
"""Every key :func:`create_fitnets_config` accepts, with its default (the seed's first 22, then ours)."""

_PATH = (str, os.PathLike)
_CHOICES: dict[str, tuple[Any, ...]] = {
    "model": tuple(FITNETS_MODELS), "stage": ("joint", "two_stage"), "align": ("pool", "interpolate"),
    "regressor": ("conv1x1", "conv3x3"), "device": ("auto", "cpu", "cuda", "cuda:N"),
    "precision": (16, 32, 64, "16-mixed", "bf16-mixed", "32-true", "64-true", "bf16-true"),
}


def _number(v: Any, lo: float, strict: bool = False, integer: bool = False, optional: bool = False) -> bool:
    if v is None:
        return optional
    kinds = int if integer else (int, float)
    return isinstance(v, kinds) and not isinstance(v, bool) and (v > lo if strict else v >= lo) and v < float("inf")


def _choice(key: str, v: Any) -> bool:
    if key == "device" and isinstance(v, str) and v.startswith("cuda:"):
        return v[5:].isdigit()
    return isinstance(v, (str, int)) and not isinstance(v, bool) and v in _CHOICES[key]


_RULES: dict[str, tuple[Any, str]] = {
    **{k: (lambda v: _number(v, 1, integer=True), "a positive int")
       for k in ("batch_size", "epochs", "step_size", "print_freq", "save_freq")},
    **{k: (lambda v: _number(v, 1, integer=True, optional=True), "None or a positive int")
       for k in ("hint_epochs", "num_classes", "in_channels", "image_size")},
    **{k: (lambda v: _number(v, 0, strict=True), "a positive float") for k in ("lr", "gamma", "temperature")},
    **{k: (lambda v: _number(v, 0), "a non-negative float") for k in ("momentum", "weight_decay", "alpha", "beta")},
    **{k: (lambda v: isinstance(v, bool), "a bool") for k in ("augment", "deterministic", "verbose")},
    **{k: (lambda v, k=k: _choice(k, v), f"one of {choices}") for k, choices in _CHOICES.items()},
    **{k: (lambda v: isinstance(v, _PATH), "a folder path") for k in ("data_dir", "save_dir", "log_dir")},
    "num_workers": (lambda v: _number(v, 0, integer=True), "a non-negative int"),
    "seed": (lambda v: _number(v, 0, integer=True, optional=True), "None or a non-negative int"),
    "teacher_model": (lambda v: v is None or isinstance(v, (*_PATH, nn.Module)), "None, a checkpoint path or an nn.Module"),
    "experiment_name": (lambda v: v is None or (isinstance(v, str) and v.strip() and "/" not in v and os.sep not in v),
                        "None or a non-empty name without '/'"),
    "resume": (lambda v: v is None or isinstance(v, _PATH), "None, 'last' or a checkpoint path"),
    "hint_layers": (lambda v: v is None or (isinstance(v, Mapping) and v and all(isinstance(k, str) and isinstance(t, str)
                    for k, t in v.items())), "None or a non-empty dict {student_path: teacher_path}"),
}


def create_fitnets_config(**kwargs: Any) -> dict[str, Any]:
    """:data:`DEFAULT_CONFIG` updated with ``kwargs``, every value checked.

    Raises:
        ValueError: for an unknown key (close matches are listed) or a bad value; for ``stage="two_stage"``
            when ``hint_epochs`` is not less than ``epochs``.

    Example:
        >>> config = create_fitnets_config(model="ThinDeepCNN", epochs=5, beta=0.5)
        >>> config["model"], config["epochs"], config["batch_size"]
        ('ThinDeepCNN', 5, 32)
        >>> create_fitnets_config(epoch=5)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: Unknown FitNets config key 'epoch'. Did you mean 'epochs', 'hint_epochs'? Valid keys: model, ...
    """
    for key in kwargs:
        if key not in DEFAULT_CONFIG:
            close = difflib.get_close_matches(key, DEFAULT_CONFIG, n=3, cutoff=0.6)
            hint = f"Did you mean {', '.join(repr(c) for c in close)}? " if close else ""
            raise ValueError(f"Unknown FitNets config key {key!r}. {hint}Valid keys: {', '.join(DEFAULT_CONFIG)}.")
    config = {**DEFAULT_CONFIG, **kwargs}
    for key, (ok, what) in _RULES.items():
        if not ok(config[key]):
            raise ValueError(f"Expected `{key}` to be {what}, but got {config[key]!r}.")
    if config["stage"] == "two_stage":
        hint_epochs = config["hint_epochs"] if config["hint_epochs"] is not None else max(1, config["epochs"] // 4)
        if hint_epochs >= config["epochs"]:
            raise ValueError(f"Expected `hint_epochs` to be less than `epochs` so stage 2 can run, but got "
                             f"hint_epochs={hint_epochs} with epochs={config['epochs']}.")
    return config


# --------------------------------------------------------------------------------------------- training
def train_fitnets(config: Mapping[str, Any] | None = None, train_loader: DataLoader | None = None,
                  val_loader: DataLoader | None = None, test_loader: DataLoader | None = None) -> dict[str, Any]:
    """Train a student with FitNets hints (and KD) as the seed does; see the module docstring for the files.

    Optimisation follows the seed: SGD with momentum and weight decay, StepLR every ``step_size`` epochs. With a
    teacher the module is a :class:`FitNetsModule` (``stage`` joint or two_stage); without one the student trains
    on labels alone (:class:`DistillationModule`). Data come from ``data_dir`` (ImageFolder ``train/``, ``val/``,
    optional ``test/``) or from the loaders. ``resume`` continues a run (optimizer, schedule, stage, epoch, history)
    from a Lightning ``last.ckpt``, a ``.pth`` written here, or ``"last"`` (the newest ``last.ckpt`` of
    ``experiment_name``).

    Args:
        config: overrides of :data:`DEFAULT_CONFIG` (``None``: the defaults).
        train_loader: training batches ``(x, y)``; ``None``: built from ``data_dir``.
        val_loader: validation batches (needed with ``train_loader``).
        test_loader: test batches, evaluated with the best weights.

    Returns:
        ``{"model", "teacher_model", "best_accuracy", "training_history", "test_results", "config",
        "experiment_name"}``: ``model`` holds the best-validation weights (``_final.pth`` the last epoch's),
        ``training_history`` one dict per epoch (phase, lr, every loss component, ``val_loss``, ``val_acc``),
        ``test_results`` ``{"accuracy", "loss"}`` or ``None``.

    Raises:
        ValueError: bad config, loaders, teacher (another architecture or class count) or hint layers.
        FileNotFoundError: a missing ``data_dir`` (or one without ``train/``/``val/``), teacher or ``resume`` file.
    """
    if config is not None and not isinstance(config, Mapping):
        raise ValueError(f"Expected `config` to be a dict (see create_fitnets_config), but got {type(config).__name__}.")
    started = time.time()
    cfg = create_fitnets_config(**dict(config or {}))
    ckpt_path, resumed = resume_checkpoint(cfg)
    if resumed.get("architecture") not in (None, cfg["model"]):
        raise ValueError(f"Expected `resume` to continue a {cfg['model']} run, but it holds a {resumed['architecture']}; "
                         "resume with the config of that run.")
    exp = cfg["experiment_name"] = (cfg["experiment_name"] or resumed.get("experiment_name")
                                    or f"fitnets_{cfg['model']}_{time.strftime('%Y%m%d_%H%M%S')}")
    hardware = hardware_kwargs(cfg["device"])
    if cfg["seed"] is not None:
        pl.seed_everything(cfg["seed"], workers=True, verbose=False)  # model initialisation is seeded too
    train_loader, val_loader, test_loader, example = _data(cfg, train_loader, val_loader, test_loader)
    student = create_fitnets_model(cfg["model"], num_classes=cfg["num_classes"], in_channels=cfg["in_channels"])
    teacher, hint_layers = _teacher(cfg, example)
    cfg["hint_layers"] = hint_layers
    if cfg["stage"] == "two_stage" and cfg["hint_epochs"] is None:
        cfg["hint_epochs"] = max(1, cfg["epochs"] // 4)
    module = _module(cfg, student, teacher, example)
    meta = {"architecture": cfg["model"], "num_classes": cfg["num_classes"], "in_channels": cfg["in_channels"],
            "image_size": cfg["image_size"], "kd_toolkit_fitnets": 1}
    outputs = SeedOutputs(Path(cfg["save_dir"]), Path(cfg["log_dir"]), exp, meta, primitive_config(cfg), cfg["save_freq"],
                          cfg["print_freq"])
    from kd_toolkit.training import KnowledgeDistillationTraining

    kd = KnowledgeDistillationTraining(
        module=module, train_data_loader=train_loader, val_data_loaders={"val": val_loader},
        test_data_loaders={"test": test_loader} if test_loader is not None else None, max_epoch=cfg["epochs"],
        seed=cfg["seed"], precision=cfg["precision"], deterministic=cfg["deterministic"],
        resume_from_checkpoint=ckpt_path or "", default_root_dir=cfg["log_dir"], experiment_name=exp, tensorboard=True,
        callbacks=[outputs], quiet=not cfg["verbose"], enable_progress_bar=cfg["verbose"],
        log_every_n_steps=max(1, min(cfg["print_freq"], loader_length(train_loader))), **hardware,
    )
    kd.fit()
    test_results = None
    if test_loader is not None:
        result = kd.test("best")[0]  # loads the best weights into the student
        test_results = {"accuracy": result.get("test_acc"), "loss": result.get("test_loss")}
    elif kd.best_checkpoint:
        kd.get_student_model(best=True)
    summary = {
        "experiment_name": exp, "best_accuracy": outputs.best_accuracy, "best_epoch": outputs.best_epoch,
        "final_accuracy": outputs.history[-1]["val_acc"] if outputs.history else None,
        "epochs_trained": len(outputs.history), "test_results": test_results, "resumed_from": ckpt_path,
        "time_s": round(time.time() - started, 2), "config": primitive_config(cfg), "training_history": outputs.history,
        "files": {"best": str(outputs.path("best")), "final": str(outputs.path("final")),
                  "log": str(Path(cfg["log_dir"]) / f"{exp}.log"), "run_dir": str(kd.run_dir),
                  "lightning_last": kd.last_checkpoint},
    }
    if kd.trainer.is_global_zero:
        save_json(summary, Path(cfg["log_dir"]) / f"{exp}_summary.json")
    return {"model": student, "teacher_model": teacher, "best_accuracy": outputs.best_accuracy,
            "training_history": outputs.history, "test_results": test_results, "config": cfg, "experiment_name": exp}


def _data(cfg: dict[str, Any], train: DataLoader | None, val: DataLoader | None,
          test: DataLoader | None) -> tuple[DataLoader, DataLoader, DataLoader | None, Tensor]:
    """Loaders, with ``num_classes``, ``in_channels`` and ``image_size`` resolved in ``cfg``; plus a 2-sample batch."""
    factory = FITNETS_MODELS[cfg["model"]]
    cfg["in_channels"] = cfg["in_channels"] or inspect.signature(factory).parameters["in_channels"].default
    classes = None
    if train is None:
        small = cfg["model"] in ("ThinDeepCNN", "WideCNN")
        cfg["image_size"] = cfg["image_size"] or (28 if small else 128)
        train, val, built_test, classes = image_folder_loaders(cfg["data_dir"], cfg["image_size"], cfg["in_channels"],
                                                               cfg["batch_size"], cfg["num_workers"], cfg["augment"])
        test = test if test is not None else built_test
    elif val is None:
        raise ValueError("Expected a `val_loader` with `train_loader` (the best checkpoint is chosen on it), but got None.")
    x, _, _ = split_batch(next(iter(train)))
    example = x[:2].detach().cpu()  # (2, C, H, W): the dry run that sizes the regressors
    cfg["image_size"] = cfg["image_size"] or int(example.shape[-1])
    found = len(classes) if classes else getattr(train.dataset, "classes", None) and len(train.dataset.classes)
    if cfg["num_classes"] is None:
        if not found:
            raise ValueError("Expected `num_classes` in the config: it cannot be read from the given loaders.")
        cfg["num_classes"] = found
    elif found and found != cfg["num_classes"]:
        raise ValueError(f"Expected the data to have num_classes={cfg['num_classes']} classes, but it has {found}.")
    return train, val, test, example


def _teacher(cfg: dict[str, Any], example: Tensor) -> tuple[nn.Module | None, dict[str, str] | None]:
    spec = cfg["teacher_model"]
    if spec is None:
        return None, cfg["hint_layers"]
    if isinstance(spec, nn.Module):
        teacher = spec
    else:
        teacher = load_teacher_model(spec, cfg["num_classes"], "cpu", in_channels=cfg["in_channels"])
    try:
        with torch.no_grad():  # a frozen teacher runs in eval mode
            out = logits_of(teacher.eval()(example.to(next(teacher.parameters(), example).device)))
    except RuntimeError as err:
        raise ValueError(f"The teacher {type(teacher).__name__} cannot run on the data's inputs {tuple(example.shape)}: "
                         f"{str(err).splitlines()[0]}") from err
    if out.shape[-1] != cfg["num_classes"]:
        raise ValueError(f"Expected the teacher to output {cfg['num_classes']} classes, but it outputs {out.shape[-1]}.")
    return teacher, _hint_layers(cfg, teacher)


def _hint_layers(cfg: Mapping[str, Any], teacher: nn.Module) -> dict[str, str]:
    if cfg.get("hint_layers"):
        return dict(cfg["hint_layers"])
    arch = ARCH_BY_CLASS.get(type(teacher).__name__)
    if arch is None:
        raise ValueError(f"Expected `hint_layers` {{student_path: teacher_path}} for a {type(teacher).__name__} teacher "
                         f"(defaults exist for {sorted(FITNETS_MODELS)}), but got None.")
    return default_hint_layers(cfg["model"], arch)


def _module(cfg: dict[str, Any], student: nn.Module, teacher: nn.Module | None, example: Tensor) -> pl.LightningModule:
    common = dict(temperature=cfg["temperature"], optimizer="sgd", lr=cfg["lr"], scheduler="step",
                  optimizer_kwargs={"momentum": cfg["momentum"], "weight_decay": cfg["weight_decay"]},
                  scheduler_kwargs={"step_size_epochs": cfg["step_size"], "gamma": cfg["gamma"]})
    if teacher is None:
        return DistillationModule(student, None, **common)
    return FitNetsModule(student, teacher, cfg["hint_layers"], example_input=example, stage=cfg["stage"],
                         hint_epochs=cfg["hint_epochs"] or 1, alpha=cfg["alpha"], beta=cfg["beta"], align=cfg["align"],
                         regressor=cfg["regressor"], **common)


# --------------------------------------------------------------------------------------- seed utilities
_REGRESSORS: weakref.WeakKeyDictionary[nn.Module, tuple[int, dict[str, str], nn.ModuleDict]] = weakref.WeakKeyDictionary()


def _regressors_for(student: nn.Module, teacher: nn.Module, x: Tensor, config: Mapping[str, Any]) -> tuple[dict[str, str], nn.ModuleDict]:
    """Hint regressors of ``student`` (built on first use from ``x``, then kept while the student lives)."""
    cached = _REGRESSORS.get(student)
    hint_layers = _hint_layers(config, teacher)
    if cached is None or cached[0] != id(teacher) or cached[1] != hint_layers:
        regressors = build_hint_regressors(student, teacher, hint_layers, x[:2], kind=config.get("regressor", "conv1x1"),
                                           align=config.get("align", "pool")).to(x.device)
        cached = _REGRESSORS[student] = (id(teacher), hint_layers, regressors)
    return cached[1], cached[2]


def _single(features: dict[str, Tensor]) -> Tensor | dict[str, Tensor]:
    return next(iter(features.values())) if len(features) == 1 else features


def extract_teacher_features(teacher_model: nn.Module, x: Tensor, config: Mapping[str, Any]) -> Tensor | dict[str, Tensor]:
    """The teacher's hint feature(s) for ``x`` (no grad, eval mode): one tensor, or ``{teacher_path: tensor}``."""
    paths = list(dict.fromkeys(_hint_layers({**DEFAULT_CONFIG, **config}, teacher_model).values()))
    teacher_model.eval()  # a teacher is frozen: batch-norm statistics must not move
    with torch.no_grad():
        return _single(_tapped_forward(teacher_model, paths, lambda: teacher_model(x), detach=True, stop=True)[0])


def extract_student_features(student_model: nn.Module, x: Tensor, config: Mapping[str, Any],
                             teacher_model: nn.Module | None = None) -> Tensor | dict[str, Tensor]:
    """The student's guided feature(s) for ``x``, with gradients: the keys of ``config["hint_layers"]``, else the
    default pair for ``teacher_model``, else the model's last feature maps (the seed's ``features[-1]``)."""
    config = {**DEFAULT_CONFIG, **config}
    if config["hint_layers"] or teacher_model is not None:
        paths = list(_hint_layers(config, teacher_model))
    else:
        paths = [DEFAULT_HINT_LAYERS[config["model"]]]
    return _single(_tapped_forward(student_model, paths, lambda: student_model(x), detach=False, stop=True)[0])


def compute_fitnets_loss(student_model: nn.Module, teacher_model: nn.Module | None, x: Tensor, y: Tensor,
                         config: Mapping[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
    """The seed's one-stage loss ``hard + alpha * kd + beta * hint`` for one batch: ``(total, components)``.

    The regressors are built on first use for this student and kept (see :func:`train_epoch`); without a teacher
    only ``hard_loss``.

    Example:
        >>> from kd_toolkit.fitnets_models import ThinDeepCNN, WideCNN
        >>> cfg = create_fitnets_config(model="ThinDeepCNN", hint_layers={"features.4": "features.2"}, beta=1.0)
        >>> total, parts = compute_fitnets_loss(ThinDeepCNN(), WideCNN(), torch.randn(4, 1, 28, 28),
        ...                                     torch.tensor([0, 1, 2, 3]), cfg)
        >>> sorted(parts)
        ['hard_loss', 'hint_loss', 'hint_loss/features.4', 'kd_loss']
    """
    cfg = create_fitnets_config(**dict(config))
    if teacher_model is None:
        hard = nn.functional.cross_entropy(logits_of(student_model(x)), y)
        return hard, {"hard_loss": hard}
    teacher_model.requires_grad_(False).eval()
    hint_layers, regressors = _regressors_for(student_model, teacher_model, x, cfg)
    s_feats, s_out = _tapped_forward(student_model, list(hint_layers), lambda: student_model(x), detach=False, stop=False)
    with torch.no_grad():
        t_feats, t_out = _tapped_forward(teacher_model, list(dict.fromkeys(hint_layers.values())),
                                         lambda: teacher_model(x), detach=True, stop=False)
    s_logits, t_logits = logits_of(s_out), logits_of(t_out)  # (B, C) each
    parts = {"hard_loss": nn.functional.cross_entropy(s_logits, y),
             "kd_loss": kd_loss(s_logits, t_logits, cfg["temperature"]),
             **_hint_components(regressors, hint_layers, s_feats, t_feats)}
    return parts["hard_loss"] + cfg["alpha"] * parts["kd_loss"] + cfg["beta"] * parts["hint_loss"], parts


def train_epoch(student_model: nn.Module, teacher_model: nn.Module | None, train_loader: DataLoader,
                optimizer: torch.optim.Optimizer, device: str | torch.device, config: Mapping[str, Any]) -> dict[str, float]:
    """One epoch of :func:`compute_fitnets_loss` with the caller's optimizer (the student's hint regressors are added
    to it as a param group the first time). Returns per-sample means of ``loss`` and every component."""
    student_model.to(device).train()
    sums: dict[str, float] = {}
    count = 0
    for batch in train_loader:
        x, y, _ = split_batch(batch)
        x, y = x.to(device), y.to(device)
        teacher = teacher_model.to(device) if teacher_model is not None else None
        total, parts = compute_fitnets_loss(student_model, teacher, x, y, config)
        if teacher_model is not None:
            _add_param_group(optimizer, _REGRESSORS[student_model][2])
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        for key, value in {"loss": total, **parts}.items():
            sums[key] = sums.get(key, 0.0) + float(value.detach()) * len(y)
        count += len(y)
    return {k: v / max(1, count) for k, v in sums.items()}


def _add_param_group(optimizer: torch.optim.Optimizer, regressors: nn.Module) -> None:
    have = {id(p) for group in optimizer.param_groups for p in group["params"]}
    params = [p for p in regressors.parameters() if id(p) not in have]
    if params:
        optimizer.add_param_group({"params": params})


@torch.no_grad()
def validate(student_model: nn.Module, teacher_model: nn.Module | None, val_loader: DataLoader,
             device: str | torch.device, config: Mapping[str, Any]) -> dict[str, float]:
    """Cross-entropy ``loss`` and ``accuracy`` of the student on ``val_loader`` (eval mode; ``teacher_model`` and
    ``config`` are accepted for the seed's signature)."""
    was = student_model.training
    student_model.to(device).eval()
    loss, correct, count = 0.0, 0, 0
    for batch in val_loader:
        x, y, _ = split_batch(batch)
        logits = logits_of(student_model(x.to(device)))  # (B, C)
        loss += float(nn.functional.cross_entropy(logits, y.to(device), reduction="sum"))
        correct += int((logits.argmax(-1).cpu() == y.cpu()).sum())
        count += len(y)
    student_model.train(was)
    return {"loss": loss / max(1, count), "accuracy": correct / max(1, count)}
