"""Seed 004 (omkar-334/KD ``FitNets/``): its functional API, a thin layer over
:class:`~kd_toolkit.fitnets.module.FitNetsModule`.

``create_fitnets_config(**kw)`` + ``train_fitnets(config, train_loader, val_loader, test_loader, dataset_name)``
train a student (Romero et al., "FitNets: Hints for Thin Deep Nets", ICLR 2015) through
:class:`~kd_toolkit.training.KnowledgeDistillationTraining` and write the seed's files, in the seed's folders
``S = save_dir/{dataset_name}/FitNets`` and ``L = log_dir/{dataset_name}/FitNets``::

    S/{experiment}_best.pth, _final.pth, _epoch_{N}.pth (+ .ckpt beside each, to resume from)
    L/{experiment}.log, {experiment}_summary.json
    L/{experiment}/version_<n>/   TensorBoard events (tensorboard/), metrics.csv, checkpoints/last.ckpt

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
from kd_toolkit.core.batch import split_batch
from kd_toolkit.fitnets.models import FITNETS_MODELS, as_logits_model, create_fitnets_model, final_logits
from kd_toolkit.fitnets.seed_config import DEFAULT_CONFIG, create_fitnets_config, stage_one_epochs
from kd_toolkit.fitnets.seed_data import classes_of, image_folder_loaders, prepare_dataloaders, targets_of
from kd_toolkit.fitnets.seed_io import (
    SeedOutputs,
    hardware_kwargs,
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
    "extract_student_features", "extract_teacher_features", "get_teacher_path", "load_teacher_model",
    "prepare_dataloaders", "train_epoch", "train_fitnets", "validate", "visualize_feature_maps",
]


def get_teacher_path(model_name: str, dataset_name: str = "default") -> str:
    """Seed 004's default teacher file: ``checkpoints/{dataset_name}/teachers/{model_name}_teacher_best.pth``.

    ``train_fitnets`` uses it when ``teacher_model`` is ``None`` and the file exists (the seed always loaded it).

    Example:
        >>> get_teacher_path("ResNet50")
        'checkpoints/default/teachers/ResNet50_teacher_best.pth'
    """
    return f"checkpoints/{dataset_name}/teachers/{model_name}_teacher_best.pth"


# --------------------------------------------------------------------------------------------- training
def train_fitnets(config: Mapping[str, Any] | None = None, train_loader: DataLoader | None = None,
                  val_loader: DataLoader | None = None, test_loader: DataLoader | None = None,
                  dataset_name: str = "default") -> dict[str, Any]:
    """Train a student with FitNets hints (and KD) as the seed does; see the module docstring for the files.

    Optimisation follows the seed: SGD with momentum and weight decay, StepLR every ``step_size`` epochs. With a
    teacher the module is a :class:`FitNetsModule` (``stage`` joint or two_stage); without one the student trains
    on labels alone. The teacher is ``teacher_model`` (a path or a module), else the seed's
    :func:`get_teacher_path` file when it exists. Data come from the loaders or from ``data_dir`` (the seed's
    one-folder-per-class layout, split 70/20/10 with seed 42, or ``train/``+``val/``(+``test/``)). ``resume``
    continues a run (optimizer, schedule, stage, epoch, history) from a Lightning ``last.ckpt``, a ``.pth`` written
    here, or ``"last"`` (the newest ``last.ckpt`` of ``experiment_name``). With ``verbose`` (default) each epoch
    prints a line (and every ``print_freq`` batches one), as the seed logs.

    Args:
        config: overrides of :data:`DEFAULT_CONFIG` (``None``: the defaults).
        train_loader: training batches ``(x, y)``; ``None``: built from ``data_dir``.
        val_loader: validation batches (needed with ``train_loader``).
        test_loader: test batches, evaluated with the best weights.
        dataset_name: names the output sub-folders (the seed's argument).

    Returns:
        The seed's dict ``{"model", "teacher_model", "best_accuracy", "training_history", "test_results", "config",
        "experiment_name"}``: ``model`` holds the best-validation weights (``_final.pth`` the last epoch's),
        ``best_accuracy`` is in percent, ``training_history`` one dict per epoch with the seed's keys (``epoch`` from
        0, ``train_loss``, ``train_acc``, ``val_loss``, ``val_acc`` in percent, ``lr``, ``classification_loss``,
        ``kd_loss``, ``feature_loss``, ``total_loss``) plus ``phase``, kd_toolkit's components and ``time_s``;
        ``test_results`` ``{"test_loss", "test_acc"}`` (percent) or ``None``.

    Raises:
        ValueError: bad config, loaders, labels, teacher (another architecture or class count) or hint layers.
        FileNotFoundError: a missing ``data_dir`` (or one in neither layout), teacher or ``resume`` file.
    """
    return run_seed_training(config, train_loader, val_loader, test_loader, dataset_name, method="FitNets")


def run_seed_training(config: Mapping[str, Any] | None, train_loader: DataLoader | None, val_loader: DataLoader | None,
                      test_loader: DataLoader | None, dataset_name: str, method: str) -> dict[str, Any]:
    """:func:`train_fitnets` writing into the folders of ``method`` (``"FitNets"``, or ``"Teacher"`` for
    :func:`~kd_toolkit.fitnets.seed_teacher.train_teacher`, which uses no teacher)."""
    if config is not None and not isinstance(config, Mapping):
        raise ValueError(f"Expected `config` to be a dict (see create_fitnets_config), but got {type(config).__name__}.")
    if not isinstance(dataset_name, str) or not dataset_name.strip() or "/" in dataset_name:
        raise ValueError(f"Expected `dataset_name` to be a non-empty name without '/', but got {dataset_name!r}.")
    started = time.time()
    cfg = create_fitnets_config(**dict(config or {}))
    cfg["save_dir"] = str(Path(cfg["save_dir"]) / dataset_name / method)  # the seed's folders
    cfg["log_dir"] = str(Path(cfg["log_dir"]) / dataset_name / method)
    ckpt_path = _resume(cfg, method)
    hardware = hardware_kwargs(cfg["device"])
    if cfg["seed"] is not None:
        pl.seed_everything(cfg["seed"], workers=True, verbose=False)  # model initialisation is seeded too
    train_loader, val_loader, test_loader, example = _data(cfg, train_loader, val_loader, test_loader)
    student = create_fitnets_model(cfg["model"], num_classes=cfg["num_classes"], in_channels=cfg["in_channels"])
    _check_runs(student, example, f"`model`={cfg['model']!r} (in_channels={cfg['in_channels']})")
    teacher = _teacher(cfg, example, dataset_name if method == "FitNets" else None)
    cfg["hint_layers"] = resolve_hint_layers(cfg, teacher) if teacher is not None else cfg["hint_layers"]
    if cfg["stage"] == "two_stage":
        cfg["hint_epochs"] = stage_one_epochs(cfg)
    module = seed_module(cfg, as_logits_model(student), as_logits_model(teacher) if teacher is not None else None,
                         example)
    meta = {"architecture": cfg["model"], "num_classes": cfg["num_classes"], "in_channels": cfg["in_channels"],
            "image_size": cfg["image_size"], "kd_toolkit_fitnets": 1}
    outputs = SeedOutputs(Path(cfg["save_dir"]), Path(cfg["log_dir"]), cfg["experiment_name"], meta,
                          primitive_config(cfg), cfg["save_freq"], cfg["print_freq"], verbose=cfg["verbose"])
    kd = _orchestrator(cfg, module, (train_loader, val_loader, test_loader), outputs, ckpt_path, hardware)
    kd.fit()
    test_results = None
    if test_loader is not None:
        result = kd.test("best")[0]  # loads the best weights into the student
        test_results = {"test_loss": result.get("test_loss"), "test_acc": 100 * float(result.get("test_acc", 0.0))}
    elif kd.best_checkpoint:
        kd.get_student_model(best=True)
    if kd.trainer.is_global_zero:
        _write_summary(cfg, kd, outputs, test_results, ckpt_path, time.time() - started, method)
    return {"model": student, "teacher_model": teacher, "best_accuracy": outputs.best_accuracy,
            "training_history": outputs.history, "test_results": test_results, "config": cfg,
            "experiment_name": cfg["experiment_name"]}


def _resume(cfg: dict[str, Any], method: str) -> str | None:
    """The Lightning checkpoint to resume from (or ``None``), with ``experiment_name`` resolved in ``cfg``."""
    ckpt_path, resumed = resume_checkpoint(cfg)
    if resumed.get("architecture") not in (None, cfg["model"]):
        raise ValueError(f"Expected `resume` to continue a {cfg['model']} run, but the checkpoint's student is a "
                         f"{resumed['architecture']}; resume with the config of that run.")
    cfg["experiment_name"] = (cfg["experiment_name"] or resumed.get("experiment_name")
                              or f"{cfg['model']}_{method}_{time.strftime('%Y%m%d_%H%M%S')}")
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
                   ckpt_path: str | None, seconds: float, method: str = "FitNets") -> None:
    """``log_dir/{experiment}_summary.json`` (atomic)."""
    exp, history = cfg["experiment_name"], outputs.history
    summary = {  # the seed's keys first
        "experiment_name": exp, "method": method, "model": cfg["model"], "best_accuracy": outputs.best_accuracy,
        "total_epochs": cfg["epochs"], "best_epoch": outputs.best_epoch,
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
    if train is None:
        small = cfg["model"] in ("ThinDeepCNN", "WideCNN")
        cfg["image_size"] = cfg["image_size"] or (28 if small else 128)
        train, val, built_test, _ = image_folder_loaders(cfg["data_dir"], cfg["image_size"], cfg["in_channels"],
                                                         cfg["batch_size"], cfg["num_workers"], cfg["augment"])
        test = test if test is not None else built_test
    elif val is None:
        raise ValueError("Expected a `val_loader` with `train_loader` (the best checkpoint is chosen on it), but got None.")
    x, y, _ = split_batch(next(iter(train)))
    example = x[:2].detach().cpu()  # (2, C, H, W): the dry run that sizes the regressors
    cfg["image_size"] = cfg["image_size"] or int(example.shape[-1])
    classes = classes_of(train)  # ImageFolder, or a Subset of one (the seed's random_split loaders)
    found = len(classes) if classes else 0
    if cfg["num_classes"] is None:
        if not found:
            raise ValueError("Expected `num_classes` in the config: it cannot be read from the given loaders (their "
                             "dataset has no `classes`).")
        cfg["num_classes"] = found
    elif found and found != cfg["num_classes"]:
        raise ValueError(f"Expected `num_classes` to match the data's {found} classes {(classes or [])[:10]}, but got "
                         f"num_classes={cfg['num_classes']}; leave it None to read it from the data.")
    for name, loader in (("train_loader", train), ("val_loader", val), ("test_loader", test)):
        labels = targets_of(loader) if loader is not None else None
        if name == "train_loader" and labels is None and y is not None:
            labels = y
        if labels is not None and labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= cfg["num_classes"]):
            raise ValueError(f"Expected the labels of `{name}` to be class indices in [0, {cfg['num_classes']}) "
                             f"(`num_classes`={cfg['num_classes']}), but they range over [{int(labels.min())}, "
                             f"{int(labels.max())}]; set `num_classes` to at least {int(labels.max()) + 1}.")
    return train, val, test, example


def _teacher(cfg: dict[str, Any], example: Tensor, dataset_name: str | None) -> nn.Module | None:
    """The config's teacher (a module, or loaded from its checkpoint; else the seed's default file when it exists),
    checked on the data's inputs."""
    spec = cfg["teacher_model"]
    if spec is None and dataset_name is not None and Path(get_teacher_path(cfg["model"], dataset_name)).is_file():
        spec = get_teacher_path(cfg["model"], dataset_name)
        if cfg["verbose"]:
            print(f"[FitNets] teacher_model=None: using the seed's teacher file {spec}", flush=True)
    if spec is None:
        return None
    if isinstance(spec, nn.Module):
        teacher = spec
    else:
        teacher = load_teacher_model(spec, cfg["num_classes"], "cpu", in_channels=cfg["in_channels"])
    out = _check_runs(teacher, example, f"the teacher ({type(teacher).__name__})")
    if out.shape[-1] != cfg["num_classes"]:
        raise ValueError(f"Expected the teacher to output {cfg['num_classes']} classes, but it outputs {out.shape[-1]}.")
    return teacher


def _check_runs(model: nn.Module, example: Tensor, what: str) -> Tensor:
    """``model``'s logits on two samples of the data (eval mode, no grad), or a ValueError naming ``what``."""
    was = model.training
    try:
        with torch.no_grad():
            return final_logits(model.eval()(example.to(next(model.parameters(), example).device)))
    except (RuntimeError, TypeError, IndexError) as err:
        raise ValueError(f"Expected the data's inputs {tuple(example.shape[1:])} to fit {what}, but it raised "
                         f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}; set `in_channels`/"
                         "`image_size` or use another model.") from err
    finally:
        model.train(was)
