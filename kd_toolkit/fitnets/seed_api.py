"""Seed 004 (omkar-334/KD ``FitNets/``): its functional API, a thin layer over
:class:`~kd_toolkit.fitnets.module.FitNetsModule`.

``create_fitnets_config(**kw)`` + ``train_fitnets(config, train_loader, val_loader, test_loader)`` train a
student (Romero et al., "FitNets: Hints for Thin Deep Nets", ICLR 2015) through
:class:`~kd_toolkit.training.KnowledgeDistillationTraining` and write the seed's files::

    save_dir/{experiment}_best.pth, _final.pth, _epoch_{N}.pth (+ _epoch_{N}.ckpt to resume from)
    log_dir/{experiment}.log, {experiment}_summary.json
    log_dir/{experiment}/version_<n>/   TensorBoard events (tensorboard/), metrics.csv, checkpoints/last.ckpt

The seed's utility functions (feature extraction, the loss of one batch, one-epoch train/validate loops and
feature-map pictures) work on plain models and compute the loss with the same module; see
:mod:`kd_toolkit.fitnets.seed_utils` for where their hint regressors live (no hidden state).
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from kd_toolkit._io import write_json
from kd_toolkit.core.batch import logits_of, split_batch
from kd_toolkit.fitnets.models import FITNETS_MODELS, create_fitnets_model
from kd_toolkit.fitnets.seed_config import DEFAULT_CONFIG, create_fitnets_config, stage_one_epochs
from kd_toolkit.fitnets.seed_io import (
    SeedOutputs,
    hardware_kwargs,
    image_folder_loaders,
    load_teacher_model,
    loader_length,
    primitive_config,
    resume_checkpoint,
)
from kd_toolkit.fitnets.seed_utils import (
    build_fitnets_module,
    compute_fitnets_loss,
    extract_student_features,
    extract_teacher_features,
    resolve_hint_layers,
    seed_module,
    train_epoch,
    validate,
    visualize_feature_maps,
)

if TYPE_CHECKING:
    from kd_toolkit.training import KnowledgeDistillationTraining

__all__ = [
    "DEFAULT_CONFIG", "build_fitnets_module", "compute_fitnets_loss", "create_fitnets_config",
    "extract_student_features", "extract_teacher_features", "load_teacher_model", "train_epoch", "train_fitnets",
    "validate", "visualize_feature_maps",
]


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
    ckpt_path = _resume(cfg)
    hardware = hardware_kwargs(cfg["device"])
    if cfg["seed"] is not None:
        pl.seed_everything(cfg["seed"], workers=True, verbose=False)  # model initialisation is seeded too
    train_loader, val_loader, test_loader, example = _data(cfg, train_loader, val_loader, test_loader)
    student = create_fitnets_model(cfg["model"], num_classes=cfg["num_classes"], in_channels=cfg["in_channels"])
    teacher = _teacher(cfg, example)
    cfg["hint_layers"] = resolve_hint_layers(cfg, teacher) if teacher is not None else cfg["hint_layers"]
    if cfg["stage"] == "two_stage":
        cfg["hint_epochs"] = stage_one_epochs(cfg)
    module = seed_module(cfg, student, teacher, example)
    meta = {"architecture": cfg["model"], "num_classes": cfg["num_classes"], "in_channels": cfg["in_channels"],
            "image_size": cfg["image_size"], "kd_toolkit_fitnets": 1}
    outputs = SeedOutputs(Path(cfg["save_dir"]), Path(cfg["log_dir"]), cfg["experiment_name"], meta,
                          primitive_config(cfg), cfg["save_freq"], cfg["print_freq"])
    kd = _orchestrator(cfg, module, (train_loader, val_loader, test_loader), outputs, ckpt_path, hardware)
    kd.fit()
    test_results = None
    if test_loader is not None:
        result = kd.test("best")[0]  # loads the best weights into the student
        test_results = {"accuracy": result.get("test_acc"), "loss": result.get("test_loss")}
    elif kd.best_checkpoint:
        kd.get_student_model(best=True)
    if kd.trainer.is_global_zero:
        _write_summary(cfg, kd, outputs, test_results, ckpt_path, time.time() - started)
    return {"model": student, "teacher_model": teacher, "best_accuracy": outputs.best_accuracy,
            "training_history": outputs.history, "test_results": test_results, "config": cfg,
            "experiment_name": cfg["experiment_name"]}


def _resume(cfg: dict[str, Any]) -> str | None:
    """The Lightning checkpoint to resume from (or ``None``), with ``experiment_name`` resolved in ``cfg``."""
    ckpt_path, resumed = resume_checkpoint(cfg)
    if resumed.get("architecture") not in (None, cfg["model"]):
        raise ValueError(f"Expected `resume` to continue a {cfg['model']} run, but it holds a {resumed['architecture']}; "
                         "resume with the config of that run.")
    cfg["experiment_name"] = (cfg["experiment_name"] or resumed.get("experiment_name")
                              or f"fitnets_{cfg['model']}_{time.strftime('%Y%m%d_%H%M%S')}")
    return ckpt_path


def _orchestrator(cfg: dict[str, Any], module: pl.LightningModule, loaders: tuple[Any, Any, Any],
                  outputs: SeedOutputs, ckpt_path: str | None, hardware: dict[str, Any]) -> KnowledgeDistillationTraining:
    from kd_toolkit.training import KnowledgeDistillationTraining

    train, val, test = loaders
    return KnowledgeDistillationTraining(
        module=module, train_data_loader=train, val_data_loaders={"val": val},
        test_data_loaders={"test": test} if test is not None else None, max_epoch=cfg["epochs"],
        seed=cfg["seed"], precision=cfg["precision"], deterministic=cfg["deterministic"],
        resume_from_checkpoint=ckpt_path or "", default_root_dir=cfg["log_dir"], experiment_name=cfg["experiment_name"],
        tensorboard=True, callbacks=[outputs], quiet=not cfg["verbose"], enable_progress_bar=cfg["verbose"],
        log_every_n_steps=max(1, min(cfg["print_freq"], loader_length(train))), **hardware,
    )


def _write_summary(cfg: dict[str, Any], kd: KnowledgeDistillationTraining, outputs: SeedOutputs, test_results: dict[str, Any] | None,
                   ckpt_path: str | None, seconds: float) -> None:
    """``log_dir/{experiment}_summary.json`` (atomic)."""
    exp, history = cfg["experiment_name"], outputs.history
    summary = {
        "experiment_name": exp, "best_accuracy": outputs.best_accuracy, "best_epoch": outputs.best_epoch,
        "final_accuracy": history[-1]["val_acc"] if history else None, "epochs_trained": len(history),
        "test_results": test_results, "resumed_from": ckpt_path, "time_s": round(seconds, 2),
        "config": primitive_config(cfg), "training_history": history,
        "files": {"best": str(outputs.path("best")), "final": str(outputs.path("final")),
                  "log": str(Path(cfg["log_dir"]) / f"{exp}.log"), "run_dir": str(kd.run_dir),
                  "lightning_last": kd.last_checkpoint},
    }
    write_json(summary, Path(cfg["log_dir"]) / f"{exp}_summary.json")


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
    found = len(classes) if classes else len(getattr(train.dataset, "classes", None) or ())
    if cfg["num_classes"] is None:
        if not found:
            raise ValueError("Expected `num_classes` in the config: it cannot be read from the given loaders.")
        cfg["num_classes"] = found
    elif found and found != cfg["num_classes"]:
        raise ValueError(f"Expected the data to have num_classes={cfg['num_classes']} classes, but it has {found}.")
    return train, val, test, example


def _teacher(cfg: dict[str, Any], example: Tensor) -> nn.Module | None:
    """The config's teacher (a module, or loaded from its checkpoint), checked on the data's inputs."""
    spec = cfg["teacher_model"]
    if spec is None:
        return None
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
    return teacher
