"""Files of the FitNets seed API (seed 004): ImageFolder loaders, teacher loading, resume, and the seed's
checkpoint/log layout (:class:`SeedOutputs`). Writes go through :mod:`kd_toolkit._io` (atomic, durable),
reads are safe (``weights_only=True``). ``load_teacher_model`` is public in :mod:`kd_toolkit.fitnets.seed_api`.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader

from kd_toolkit._io import load_torch, save_torch
from kd_toolkit.core.module import KDBaseModule
from kd_toolkit.fitnets.models import FITNETS_MODELS, create_fitnets_model

__all__ = ["ARCH_BY_CLASS", "SeedOutputs", "hardware_kwargs", "image_folder_loaders", "load_teacher_model",
           "loader_length", "primitive_config", "resume_checkpoint"]

_RGB_MEAN, _RGB_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
#: model class name -> FITNETS_MODELS name (torchvision's ResNet18/50 share the hint path "layer4")
ARCH_BY_CLASS = {"MultiBranchNet": "MultiBranchNet", "ThinDeepCNN": "ThinDeepCNN", "WideCNN": "WideCNN",
                 "ResNet": "ResNet18"}


# ------------------------------------------------------------------------------------------- data
def image_folder_loaders(data_dir: str | os.PathLike, image_size: int, in_channels: int, batch_size: int,
                         num_workers: int, augment: bool) -> tuple[DataLoader, DataLoader, DataLoader | None, list[str]]:
    """Train/val(/test) loaders over ``data_dir/{train,val,test}`` in ImageFolder layout, resized to ``image_size``.

    Augmentation (train only): random crop (padding ``image_size // 8``), horizontal flip, rotation (15°) and
    colour jitter, as the seed lists them. Images are converted to ``in_channels`` (1: grayscale) and normalised
    (ImageNet statistics for RGB, 0.5/0.5 for grayscale).
    """
    from torchvision import datasets
    from torchvision import transforms as T

    root = Path(data_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"Expected `data_dir` to be a folder with train/ and val/ (ImageFolder layout: "
                                f"train/<class>/<image>), but {str(root)!r} does not exist.")
    missing = [split for split in ("train", "val") if not (root / split).is_dir()]
    if missing:
        raise FileNotFoundError(f"Expected `data_dir` {str(root)!r} to hold train/ and val/ folders in ImageFolder layout "
                                f"(train/<class>/<image>, optional test/), but {missing} are missing; or pass loaders.")
    mean, std = (_RGB_MEAN, _RGB_STD) if in_channels == 3 else ((0.5,) * in_channels, (0.5,) * in_channels)
    tail = ([T.Grayscale(num_output_channels=1)] if in_channels == 1 else []) + [T.ToTensor(), T.Normalize(mean, std)]
    plain = T.Compose([T.Resize((image_size, image_size)), *tail])
    augmented = T.Compose([
        T.Resize((image_size, image_size)), T.RandomCrop(image_size, padding=max(1, image_size // 8)),
        T.RandomHorizontalFlip(), T.RandomRotation(15), T.ColorJitter(0.2, 0.2, 0.2), *tail,
    ]) if augment else plain
    train = datasets.ImageFolder(str(root / "train"), transform=augmented)
    splits = {"val": datasets.ImageFolder(str(root / "val"), transform=plain)}
    if (root / "test").is_dir():
        splits["test"] = datasets.ImageFolder(str(root / "test"), transform=plain)
    for name, dataset in splits.items():
        if dataset.classes != train.classes:
            raise ValueError(f"Expected {name}/ to have the classes of train/ {train.classes}, but got {dataset.classes}.")

    def loader(dataset: Any, shuffle: bool) -> DataLoader:
        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers,
                          pin_memory=torch.cuda.is_available(), persistent_workers=num_workers > 0)

    test = loader(splits["test"], False) if "test" in splits else None
    return loader(train, True), loader(splits["val"], False), test, list(train.classes)


# ------------------------------------------------------------------------------------------ teacher
def _read_checkpoint(path: str | os.PathLike, what: str) -> Any:
    if not Path(path).is_file():
        raise FileNotFoundError(f"Expected `{what}` to be an existing checkpoint file, but {str(path)!r} does not exist.")
    return load_torch(Path(path), what=f"`{what}`")


def checkpoint_metadata(obj: Any) -> dict[str, Any]:
    """Architecture/experiment metadata of a ``.pth`` written by ``train_fitnets`` or of its Lightning checkpoint."""
    if not isinstance(obj, Mapping):
        return {}
    if "architecture" in obj:
        return dict(obj)
    for key, state in (obj.get("callbacks") or {}).items():
        if "SeedOutputs" in str(key) and isinstance(state, Mapping):
            return dict(state.get("metadata") or {}, experiment_name=state.get("experiment_name"))
    return {}


def load_teacher_model(teacher_path: str | os.PathLike, num_classes: int, device: str | torch.device = "cpu",
                       architecture: str | None = None, in_channels: int | None = None) -> nn.Module:
    """Rebuild and load a model saved by ``train_fitnets`` (or a state dict of a named model), safely.

    Files are read with ``weights_only=True``. A ``.pth`` written by ``train_fitnets`` records its architecture,
    class count and input channels; for a bare state dict (or Lightning checkpoint) pass ``architecture``.

    Args:
        teacher_path: ``.pth`` from ``train_fitnets``, a state dict, or a Lightning checkpoint.
        num_classes: class count the model must have.
        device: where to put the model (``"auto"``: CUDA when available).
        architecture: a :data:`~kd_toolkit.fitnets.models.FITNETS_MODELS` name; checked against the file's.
        in_channels: input channels when the file does not record them.

    Returns:
        The model, in eval mode, on ``device``.

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: unreadable file, unknown/mismatched architecture, or another class count.

    Example:
        >>> load_teacher_model("missing.pth", num_classes=10)
        Traceback (most recent call last):
        ...
        FileNotFoundError: Expected `teacher_path` to be an existing checkpoint file, but 'missing.pth' does not exist.
    """
    obj = _read_checkpoint(teacher_path, "teacher_path")
    meta = checkpoint_metadata(obj)
    recorded = meta.get("architecture")
    if architecture is not None and recorded is not None and architecture != recorded:
        raise ValueError(f"Expected a {architecture} checkpoint, but {str(teacher_path)!r} holds a {recorded}.")
    arch = recorded or architecture
    if arch not in FITNETS_MODELS:
        raise ValueError(f"Cannot tell the architecture of {str(teacher_path)!r} (it records {arch!r}); pass "
                         f"`architecture=` one of {sorted(FITNETS_MODELS)}.")
    if meta.get("num_classes") is not None and meta["num_classes"] != num_classes:
        raise ValueError(f"Expected a teacher with {num_classes} classes, but {str(teacher_path)!r} holds a {arch} with "
                         f"{meta['num_classes']} classes.")
    state = obj.get("state_dict", obj) if isinstance(obj, Mapping) else obj
    if any(str(k).startswith("student.") for k in state):
        state = {k[len("student."):]: v for k, v in state.items() if k.startswith("student.")}
    model = create_fitnets_model(str(arch), num_classes=num_classes, in_channels=meta.get("in_channels") or in_channels)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(f"The weights in {str(teacher_path)!r} do not fit {arch} with {num_classes} classes (another "
                         f"architecture or class count): {str(err).splitlines()[0]}") from err
    if str(device) == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return model.to(device).eval()


def resolve_resume(resume: Any) -> tuple[str | None, dict[str, Any]]:
    """``(Lightning checkpoint path, metadata)`` for ``resume``: a Lightning ``.ckpt`` or a ``.pth`` from
    ``train_fitnets`` (which records where its Lightning checkpoint is)."""
    if resume in (None, ""):
        return None, {}
    obj = _read_checkpoint(resume, "resume")
    meta = checkpoint_metadata(obj)
    if isinstance(obj, Mapping) and "loops" in obj and "state_dict" in obj:
        return str(resume), meta
    target = meta.get("lightning_checkpoint")
    if not target:
        raise ValueError(f"Expected `resume` to be a Lightning checkpoint (last.ckpt) or a .pth written by train_fitnets, "
                         f"but {str(resume)!r} is neither.")
    if not Path(target).is_file():
        raise FileNotFoundError(f"{str(resume)!r} records the Lightning checkpoint {target!r}, which does not exist.")
    return str(target), meta


def resume_checkpoint(cfg: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """:func:`resolve_resume` of ``cfg["resume"]``; ``"last"`` is the newest ``last.ckpt`` of ``experiment_name``."""
    if cfg["resume"] == "last":
        from kd_toolkit._trainer_args import find_last_checkpoint

        if not cfg["experiment_name"]:
            raise ValueError("Expected `experiment_name` with resume='last' (it names the run to continue), but got None.")
        return find_last_checkpoint(Path(cfg["log_dir"]), cfg["experiment_name"]), {}
    return resolve_resume(cfg["resume"])


def hardware_kwargs(device: str) -> dict[str, Any]:
    """The seed's ``device`` (``auto``/``cpu``/``cuda``/``cuda:N``) as the orchestrator's accelerator arguments."""
    if device == "auto":
        return {"accelerator": "auto"}
    if device == "cpu":
        return {"accelerator": "cpu"}
    if not torch.cuda.is_available():
        raise ValueError(f"Expected a CUDA device for device={device!r}, but CUDA is not available; use 'auto' or 'cpu'.")
    return {"accelerator": "gpu", "devices": [int(device[5:])] if ":" in device else 1}


def loader_length(loader: DataLoader) -> int:
    """``len(loader)``, or a very large number for an iterable dataset without a length."""
    try:
        return len(loader)
    except TypeError:  # an iterable dataset without a length
        return 10**9


def primitive_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The config with plain values only (for the .pth files, the log and the summary JSON)."""
    def prim(v: Any) -> Any:
        if isinstance(v, nn.Module):
            return f"<{type(v).__name__} instance>"
        if isinstance(v, os.PathLike):
            return os.fspath(v)
        return dict(v) if isinstance(v, Mapping) else v

    return {k: prim(v) for k, v in cfg.items()}


# ------------------------------------------------------------------------------------------ outputs
class SeedOutputs(pl.Callback):
    """The seed's files: ``save_dir/{exp}_best.pth``, ``_final.pth``, ``_epoch_{N}.pth`` every ``save_freq`` epochs,
    a text log ``log_dir/{exp}.log``, and the per-epoch history (kept in checkpoints, so it survives resume).

    Each ``.pth`` holds the student's ``state_dict`` plus ``metadata`` (architecture, num_classes, in_channels, ...),
    ``epoch``, ``accuracy``, ``best_accuracy``, ``config`` and ``lightning_checkpoint``: a Lightning checkpoint of the
    same epoch to resume from (``{exp}_best.ckpt`` / ``{exp}_epoch_{N}.ckpt`` beside it; final: the run's ``last.ckpt``).
    """

    def __init__(self, save_dir: Path, log_dir: Path, experiment_name: str, metadata: Mapping[str, Any],
                 config: Mapping[str, Any], save_freq: int, print_freq: int) -> None:
        self.save_dir, self.log_dir, self.experiment_name = Path(save_dir), Path(log_dir), experiment_name
        self.metadata, self.config = dict(metadata), dict(config)
        self.save_freq, self.print_freq = save_freq, print_freq
        self.history: list[dict[str, Any]] = []
        self.best_accuracy: float = 0.0
        self.best_epoch: int | None = None
        self._improved, self._fitting = False, False
        self._epoch_start = time.time()

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._fitting = stage == "fit"  # Lightning also restores callbacks for `test(ckpt_path=...)`: ignore those

    def path(self, kind: str) -> Path:
        return self.save_dir / f"{self.experiment_name}_{kind}.pth"

    def _write(self, trainer: pl.Trainer, line: str) -> None:
        if trainer.is_global_zero:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            with open(self.log_dir / f"{self.experiment_name}.log", "a", encoding="utf-8") as fh:
                fh.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}\n")

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._write(trainer, f"start experiment={self.experiment_name} epoch={trainer.current_epoch} "
                          f"max_epochs={trainer.max_epochs} config={json.dumps(self.config, default=str)}")

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epoch_start = time.time()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if (batch_idx + 1) % self.print_freq == 0 and isinstance(outputs, Mapping) and "loss" in outputs:
            self._write(trainer, f"epoch {trainer.current_epoch + 1} batch {batch_idx + 1}/{trainer.num_training_batches} "
                              f"loss={float(outputs['loss']):.4f}")

    def _record(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch + 1
        if self.history and self.history[-1]["epoch"] == epoch:
            return
        entry: dict[str, Any] = {"epoch": epoch, "phase": getattr(pl_module, "phase", "plain")}
        entry["lr"] = float(trainer.optimizers[0].param_groups[0]["lr"]) if trainer.optimizers else None
        module = cast(KDBaseModule, pl_module)  # train_fitnets trains a kd_toolkit module
        entry["train_loss"] = module.epoch_loss_per_sample()
        means = module.epoch_component_means()
        entry.update(means or {"hard_loss": entry["train_loss"]})
        metrics = trainer.callback_metrics
        for key in ("val_loss", "val_acc"):
            entry[key] = float(metrics[key]) if key in metrics else None
        entry["time_s"] = round(time.time() - self._epoch_start, 3)
        self.history.append(entry)
        self._improved = entry["val_acc"] is not None and (self.best_epoch is None or entry["val_acc"] > self.best_accuracy)
        if self._improved:
            self.best_accuracy, self.best_epoch = entry["val_acc"], epoch

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Runs before ModelCheckpoint's save (checkpoint callbacks run last), so last.ckpt includes this epoch.
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self._record(trainer, pl_module)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._record(trainer, pl_module)  # epochs without validation
        entry = self.history[-1]
        # ModelCheckpoint saves after this hook, so each .pth gets a Lightning checkpoint of its own epoch.
        if self._improved:
            self._save(trainer, pl_module, "best", self._lightning_checkpoint(trainer, "best"))
        if entry["epoch"] % self.save_freq == 0:
            kind = f"epoch_{entry['epoch']}"
            self._save(trainer, pl_module, kind, self._lightning_checkpoint(trainer, kind))
        self._improved = False
        shown = " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in entry.items())
        self._write(trainer, shown)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        ckpt = trainer.checkpoint_callback
        self._save(trainer, pl_module, "final", getattr(ckpt, "last_model_path", None) or None)
        self._write(trainer, f"end best_accuracy={self.best_accuracy:.4f} best_epoch={self.best_epoch}")

    def _lightning_checkpoint(self, trainer: pl.Trainer, kind: str) -> str:
        path = self.save_dir / f"{self.experiment_name}_{kind}.ckpt"
        trainer.save_checkpoint(path)  # every rank takes part; written atomically by Lightning's checkpoint IO
        return str(path)

    def _save(self, trainer: pl.Trainer, pl_module: pl.LightningModule, kind: str, lightning_ckpt: str | None) -> None:
        if not trainer.is_global_zero:
            return
        student = getattr(pl_module, "student", pl_module)
        entry = self.history[-1] if self.history else {}
        payload = {
            "state_dict": {k: v.detach().cpu() for k, v in student.state_dict().items()},
            **self.metadata, "experiment_name": self.experiment_name, "kind": kind.split("_")[0],
            "epoch": entry.get("epoch", trainer.current_epoch), "accuracy": entry.get("val_acc"),
            "best_accuracy": self.best_accuracy, "config": self.config,
            "lightning_checkpoint": str(Path(lightning_ckpt).resolve()) if lightning_ckpt else None,
        }
        save_torch(payload, self.path(kind))

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history, "best_accuracy": self.best_accuracy, "best_epoch": self.best_epoch,
                "experiment_name": self.experiment_name, "metadata": self.metadata}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not self._fitting:
            return
        self.history = list(state_dict.get("history", []))
        self.best_accuracy = float(state_dict.get("best_accuracy", 0.0))
        self.best_epoch = state_dict.get("best_epoch")
