"""Files of the FitNets seed API (seed 004): teacher loading, resume, and the seed's checkpoint/log layout
(:class:`SeedOutputs`). Writes go through :mod:`kd_toolkit._io` (atomic, durable),
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
from kd_toolkit.core.checkpoint import last_checkpoint_path
from kd_toolkit.core.module import KDBaseModule
from kd_toolkit.fitnets.models import FITNETS_MODELS, create_fitnets_model

__all__ = ["ARCH_BY_CLASS", "SeedOutputs", "hardware_kwargs", "load_teacher_model", "loader_length",
           "primitive_config", "resume_checkpoint"]

#: model class name -> FITNETS_MODELS name (torchvision's ResNet18/50 share the hint path "layer4")
ARCH_BY_CLASS = {"MultiBranchNet": "MultiBranchNet", "ThinDeepCNN": "ThinDeepCNN", "WideCNN": "WideCNN",
                 "ResNet": "ResNet18"}


# ------------------------------------------------------------------------------------------ teacher
def _read_checkpoint(path: str | os.PathLike, what: str) -> Any:
    if not Path(path).is_file():
        raise FileNotFoundError(f"Expected `{what}` to be an existing checkpoint file, but {str(path)!r} does not exist.")
    return load_torch(Path(path), what=f"`{what}`")


def checkpoint_metadata(obj: Any) -> dict[str, Any]:
    """Architecture/experiment metadata of a checkpoint: a ``.pth`` written by ``train_fitnets`` (``architecture``),
    one written by the seed's ``teacher.py``/``save_checkpoint`` (``model_state_dict`` + ``config``), or a
    Lightning checkpoint of ``train_fitnets``."""
    if not isinstance(obj, Mapping):
        return {}
    if "architecture" in obj:
        return dict(obj)
    config = obj.get("config")
    if "model_state_dict" in obj and isinstance(config, Mapping):  # the seed's own files
        return {"architecture": config.get("model"), "num_classes": config.get("num_classes"),
                "in_channels": config.get("in_channels"), "experiment_name": config.get("experiment_name")}
    for key, state in (obj.get("callbacks") or {}).items():
        if "SeedOutputs" in str(key) and isinstance(state, Mapping):
            return dict(state.get("metadata") or {}, experiment_name=state.get("experiment_name"))
    return {}


#: What :func:`load_teacher_model` reads (named in its error for anything else).
TEACHER_FORMATS = ("a .pth written by train_fitnets or train_teacher", "the seed's teacher.py checkpoint "
                   "{'model_state_dict', 'config': {'model', ...}}", "a Lightning checkpoint (with `architecture=`)",
                   "a bare state dict (with `architecture=`)")


def _state_of(obj: Any, path: Any) -> dict[str, Any]:
    if isinstance(obj, Mapping):
        state = obj.get("model_state_dict", obj.get("state_dict", obj))
        if isinstance(state, Mapping) and state and all(isinstance(v, torch.Tensor) for v in state.values()):
            if any(str(k).startswith("student.") for k in state):
                state = {k[len("student."):]: v for k, v in state.items() if k.startswith("student.")}
            return dict(state)
    raise ValueError(f"Unknown checkpoint format in {str(path)!r} ({type(obj).__name__}); `teacher_path` must be one "
                     f"of: {'; '.join(TEACHER_FORMATS)}.")


def load_teacher_model(teacher_path: str | os.PathLike, num_classes: int, device: str | torch.device = "cpu",
                       architecture: str | None = None, in_channels: int | None = None) -> nn.Module:
    """Rebuild and load a teacher (seed 004's call form ``(teacher_path, num_classes, device)``), safely.

    Files are read with ``weights_only=True``. Understood (:data:`TEACHER_FORMATS`): a ``.pth`` written by
    ``train_fitnets``/``train_teacher`` and the seed's ``teacher.py`` checkpoints (``model_state_dict`` + ``config``,
    whose ``config["model"]`` names the architecture); for a bare state dict or a Lightning checkpoint pass
    ``architecture``.

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
        ValueError: unreadable file, unknown format (the message lists the understood ones), unknown/mismatched
            architecture, or another class count.

    Example:
        >>> load_teacher_model("missing.pth", num_classes=10)
        Traceback (most recent call last):
        ...
        FileNotFoundError: Expected `teacher_path` to be an existing checkpoint file, but 'missing.pth' does not exist.
    """
    obj = _read_checkpoint(teacher_path, "teacher_path")
    state = _state_of(obj, teacher_path)
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
    """The seed's files and progress: ``save_dir/{exp}_best.pth``, ``_final.pth`` and ``_epoch_{N}.pth`` (epoch ``N``
    counted from 0, written when ``N % save_freq == 0`` or the epoch is the best so far, as the seed's
    ``save_checkpoint``), a text log ``log_dir/{exp}.log`` and the per-epoch history (kept in checkpoints, so it
    survives resume); with ``verbose`` the same lines go to stdout (batch lines every ``print_freq`` batches).

    Each ``.pth`` has the seed's keys ``epoch``, ``model_state_dict``, ``optimizer_state_dict``, ``best_acc`` (percent)
    and ``config`` (with ``num_classes``), so the seed's ``load_model`` reads it, plus ``metadata`` keys
    (architecture, num_classes, in_channels, ...), ``accuracy`` and ``lightning_checkpoint``: a Lightning checkpoint of
    the same epoch to resume from (``{exp}_best.ckpt`` / ``{exp}_epoch_{N}.ckpt`` beside it; final: ``last.ckpt``).
    """

    def __init__(self, save_dir: Path, log_dir: Path, experiment_name: str, metadata: Mapping[str, Any],
                 config: Mapping[str, Any], save_freq: int, print_freq: int, verbose: bool = False) -> None:
        self.save_dir, self.log_dir, self.experiment_name = Path(save_dir), Path(log_dir), experiment_name
        self.metadata, self.config = dict(metadata), dict(config)
        self.save_freq, self.print_freq, self.verbose = save_freq, print_freq, verbose
        self.history: list[dict[str, Any]] = []
        self.best_accuracy: float = 0.0
        self.best_epoch: int | None = None
        self._improved, self._fitting = False, False
        self._epoch_start = time.time()
        self._correct, self._seen = 0, 0
        self._logits: torch.Tensor | None = None
        self._hook: Any = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._fitting = stage == "fit"  # Lightning also restores callbacks for `test(ckpt_path=...)`: ignore those

    def path(self, kind: str) -> Path:
        return self.save_dir / f"{self.experiment_name}_{kind}.pth"

    def _write(self, trainer: pl.Trainer, line: str, echo: bool = True) -> None:
        if trainer.is_global_zero:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            with open(self.log_dir / f"{self.experiment_name}.log", "a", encoding="utf-8") as fh:
                fh.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}\n")
            if self.verbose and echo:
                print(f"[FitNets {self.experiment_name}] {line}", flush=True)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._write(trainer, f"start experiment={self.experiment_name} epoch={trainer.current_epoch} "
                          f"max_epochs={trainer.max_epochs} config={json.dumps(self.config, default=str)}", echo=False)
        self._write(trainer, f"training {self.metadata.get('architecture')} for epochs {trainer.current_epoch}.."
                             f"{(trainer.max_epochs or 1) - 1}, {trainer.num_training_batches} batches per epoch")

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epoch_start, self._correct, self._seen = time.time(), 0, 0
        student = getattr(pl_module, "student", None)
        if isinstance(student, nn.Module) and self._hook is None:
            self._hook = student.register_forward_hook(self._keep_logits)  # train accuracy, without another forward

    def _keep_logits(self, module: nn.Module, args: Any, output: Any) -> None:
        if module.training and isinstance(output, torch.Tensor) and output.dim() == 2:
            self._logits = output.detach()  # (B, C)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        y = batch[1] if isinstance(batch, (tuple, list)) and len(batch) > 1 else None
        if self._logits is not None and isinstance(y, torch.Tensor) and len(y) == len(self._logits):
            self._correct += int((self._logits.argmax(-1) == y).sum())
            self._seen += len(y)
        self._logits = None
        if batch_idx % self.print_freq == 0 and isinstance(outputs, Mapping) and "loss" in outputs:
            acc = f" Acc@1 {100 * self._correct / self._seen:.3f}" if self._seen else ""
            self._write(trainer, f"Epoch {trainer.current_epoch} Batch [{batch_idx}/{trainer.num_training_batches}] "
                                 f"Loss {float(outputs['loss']):.4f}{acc}")

    def _record(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch  # from 0, as the seed counts
        if self.history and self.history[-1]["epoch"] == epoch:
            return
        module = cast(KDBaseModule, pl_module)  # train_fitnets trains a kd_toolkit module
        means = module.epoch_component_means() or {}
        metrics = trainer.callback_metrics
        val_acc = 100 * float(metrics["val_acc"]) if "val_acc" in metrics else None
        entry: dict[str, Any] = {
            "epoch": epoch, "train_loss": module.epoch_loss_per_sample(),
            "train_acc": 100 * self._correct / self._seen if self._seen else None,
            "val_loss": float(metrics["val_loss"]) if "val_loss" in metrics else None, "val_acc": val_acc,
            "lr": float(trainer.optimizers[0].param_groups[0]["lr"]) if trainer.optimizers else None,
        }
        # the seed's loss names (epoch means here; the seed kept the last batch's), then kd_toolkit's components
        entry.update(classification_loss=means.get("hard_loss", entry["train_loss"]), kd_loss=means.get("kd_loss", 0.0),
                     feature_loss=means.get("hint_loss", 0.0), total_loss=entry["train_loss"])
        entry.update({"phase": getattr(pl_module, "phase", "plain"), **means,
                      "time_s": round(time.time() - self._epoch_start, 3)})
        self.history.append(entry)
        self._improved = val_acc is not None and (self.best_epoch is None or val_acc > self.best_accuracy)
        if self._improved:
            self.best_accuracy, self.best_epoch = float(val_acc), epoch  # type: ignore[arg-type]

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Runs before ModelCheckpoint's save (checkpoint callbacks run last), so last.ckpt includes this epoch.
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self._record(trainer, pl_module)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._record(trainer, pl_module)  # epochs without validation
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        entry = self.history[-1]
        # ModelCheckpoint saves after this hook, so each .pth gets a Lightning checkpoint of its own epoch.
        if self._improved:
            self._save(trainer, pl_module, "best", self._lightning_checkpoint(trainer, "best"))
        if entry["epoch"] % self.save_freq == 0 or self._improved:
            kind = f"epoch_{entry['epoch']}"
            self._save(trainer, pl_module, kind, self._lightning_checkpoint(trainer, kind))
        self._improved = False

        def show(v: Any) -> str:
            return "None" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)

        self._write(trainer, f"Epoch {entry['epoch']}: Train Loss: {show(entry['train_loss'])}, Train Acc: "
                             f"{show(entry['train_acc'])}, Val Loss: {show(entry['val_loss'])}, Val Acc: "
                             f"{show(entry['val_acc'])}, LR: {show(entry['lr'])} ({entry['time_s']:.1f}s)")
        self._write(trainer, " ".join(f"{k}={show(v)}" for k, v in entry.items()), echo=False)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._save(trainer, pl_module, "final", last_checkpoint_path(trainer))
        self._write(trainer, f"Experiment completed. Best accuracy: {self.best_accuracy:.4f} (epoch {self.best_epoch})")

    def _lightning_checkpoint(self, trainer: pl.Trainer, kind: str) -> str:
        path = self.save_dir / f"{self.experiment_name}_{kind}.ckpt"
        trainer.save_checkpoint(path)  # every rank takes part; written atomically by Lightning's checkpoint IO
        return str(path)

    def _save(self, trainer: pl.Trainer, pl_module: pl.LightningModule, kind: str, lightning_ckpt: str | None) -> None:
        if not trainer.is_global_zero:
            return
        student = getattr(pl_module, "student", pl_module)
        entry = self.history[-1] if self.history else {}
        optimizer = trainer.optimizers[0].state_dict() if trainer.optimizers else {}
        payload = {
            "epoch": trainer.max_epochs if kind == "final" else entry.get("epoch", trainer.current_epoch),
            "model_state_dict": {k: v.detach().cpu() for k, v in student.state_dict().items()},
            "optimizer_state_dict": optimizer, "best_acc": self.best_accuracy,
            "config": {**self.config, "num_classes": self.metadata.get("num_classes")},
            **self.metadata, "experiment_name": self.experiment_name, "kind": kind.split("_")[0],
            "accuracy": entry.get("val_acc"),
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
