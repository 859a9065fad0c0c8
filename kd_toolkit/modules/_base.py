"""Shared LightningModule base: frozen teacher, loss-weight dict, per-loader metrics, logging.

Subclasses implement :meth:`_KDBaseModule.loss_components`, returning named loss tensors; the base
weights them by ``loss_weights``, logs each under a stable key, guards against non-finite losses,
and handles optimizers, schedules, validation/test metrics and exact-resume RNG state.
"""

from __future__ import annotations

import math
import random
from typing import Any, Iterable, Mapping

import numpy as np
import pytorch_lightning as pl
import torch
import torchmetrics
from pytorch_lightning.utilities import grad_norm
from torch import Tensor, nn

from kd_toolkit.losses import check_temperature
from kd_toolkit.optim import build_optimizer, build_scheduler, check_optimizer_spec, check_scheduler_name

__all__ = ["load_weights", "logits_of", "split_batch"]

_RNG_KEY = "kd_toolkit_rng_state"


def logits_of(output: Any) -> Tensor:
    """Normalise a model output to logits: a tensor, a dict with ``"logits"``, or a tuple whose first
    element is the logits (e.g. ``(logits, features)``)."""
    if isinstance(output, Tensor):
        return output
    if isinstance(output, Mapping) and "logits" in output:
        return output["logits"]
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        return output[0]
    raise TypeError(
        "Expected the model to return logits as a tensor, a dict with a 'logits' key, or a tuple whose "
        f"first element is the logits, but got {type(output).__name__}."
    )


def split_batch(batch: Any) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Return ``(x, y, sample_index)`` from ``(x, y)``, ``(x,)``/``x``, or ``((x, y), index)``
    (the form produced by :func:`kd_toolkit.data.with_sample_indices`)."""
    if isinstance(batch, (tuple, list)):
        if len(batch) == 2 and isinstance(batch[0], (tuple, list)):
            (x, y, *_), index = batch[0], batch[1]
            return x, y, index
        if len(batch) >= 2:
            return batch[0], batch[1], None
        return batch[0], None, None
    if isinstance(batch, Mapping):
        return batch["x"], batch.get("y"), batch.get("index")
    return batch, None, None


def load_weights(model: nn.Module, path: str) -> nn.Module:
    """Load weights into ``model`` from a state-dict file, a ``{"state_dict": ...}`` file or a kd_toolkit /
    Lightning checkpoint (keys prefixed ``student.`` are taken), safely (``weights_only=True``)."""
    from pathlib import Path

    if not Path(path).is_file():
        raise FileNotFoundError(f"Expected a weights file, but {str(path)!r} does not exist.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001
        raise ValueError(f"Could not read weights from {str(path)!r}: {type(err).__name__}: {err}"[:500]) from err
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise ValueError(f"Expected {str(path)!r} to hold a state dict, but got {type(state).__name__}.")
    if any(k.startswith("student.") for k in state):
        state = {k[len("student."):]: v for k, v in state.items() if k.startswith("student.")}
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(
            f"The weights in {str(path)!r} do not fit {type(model).__name__} (different architecture or class "
            f"count): {str(err).splitlines()[0]} ..."
        ) from err
    return model


def _stack_values(total: Tensor, components: Mapping[str, Tensor], count: int) -> Tensor:
    """``(total, *components)`` detached as one float32 ``(count,)`` tensor on their device."""
    try:
        values = torch.stack((total, *components.values())).detach().reshape(-1).float()
    except RuntimeError:  # mixed shapes such as () and (1,)
        values = None
    if values is None or values.numel() != count:
        values = torch.stack([v.detach().float().reshape(()) for v in (total, *components.values())])
    return values


def _check_weights(loss_weights: Mapping[str, float], allowed: Iterable[str]) -> dict[str, float]:
    allowed = tuple(allowed)
    if not isinstance(loss_weights, Mapping) or not loss_weights:
        raise ValueError(f"Expected `loss_weights` to be a non-empty dict with keys from {list(allowed)}, "
                         f"but got {loss_weights!r}.")
    out: dict[str, float] = {}
    for key, value in loss_weights.items():
        if key not in allowed:
            raise ValueError(f"Unknown loss-weight key {key!r}: expected keys from {list(allowed)}.")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 <= float(value) < float("inf")):
            raise ValueError(f"Expected loss weight `{key}` to be a finite number >= 0, but got {value!r}.")
        out[key] = float(value)
    if sum(out.values()) <= 0:
        raise ValueError(f"Expected `loss_weights` to have a positive sum, but got {loss_weights!r}.")
    return out


class _KDBaseModule(pl.LightningModule):
    """Base for every kd_toolkit LightningModule (not public: subclass one of the modules instead)."""

    #: loss-component names a subclass may weight in ``loss_weights``.
    loss_names: tuple[str, ...] = ("hard_loss",)

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | None = None,
        *,
        temperature: float = 1.0,
        loss_weights: Mapping[str, float] | None = None,
        criterion: nn.Module | None = None,
        optimizer: Any = "adam",
        lr: float = 1e-3,
        optimizer_kwargs: Mapping[str, Any] | None = None,
        scheduler: str = "",
        warmup_epochs: int = 0,
        warmup_steps: int = 0,
        scheduler_kwargs: Mapping[str, Any] | None = None,
        track_grad_norm: float | None = None,
        inference_pipeline: Any = None,
        teacher_checkpoint: str | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(student, nn.Module):
            raise ValueError(f"Expected `student` to be an nn.Module, but got {type(student).__name__}.")
        if teacher is not None and not isinstance(teacher, nn.Module):
            raise ValueError(f"Expected `teacher` to be an nn.Module or None, but got {type(teacher).__name__}.")
        self.temperature = check_temperature(temperature)
        check_optimizer_spec(optimizer)
        self.scheduler_name = check_scheduler_name(scheduler)
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
            raise ValueError(f"Expected `lr` to be a positive float, but got {lr!r}.")
        for name, value in (("warmup_epochs", warmup_epochs), ("warmup_steps", warmup_steps)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"Expected `{name}` to be a non-negative int, but got {value!r}.")
        if track_grad_norm is not None and (isinstance(track_grad_norm, bool) or not isinstance(track_grad_norm, (int, float)) or (track_grad_norm <= 0 and track_grad_norm != -1)):
            raise ValueError(f"Expected `track_grad_norm` to be a positive norm type, -1 or None, but got {track_grad_norm!r}.")
        if inference_pipeline is not None and not callable(getattr(inference_pipeline, "run_inference_pipeline", None)):
            raise ValueError(
                "Expected `inference_pipeline` to have a method `run_inference_pipeline(model, loader)` returning "
                f"{{'inference_result': value}}, but got {type(inference_pipeline).__name__} without it."
            )
        self.student = student
        # The teacher is frozen here, in one place, and kept out of the module's children: it is not in
        # state_dict (so not in the student's checkpoint), not in parameters() (so never in an optimizer)
        # and not seen by DDP. It is moved to the input's device/dtype lazily in `teacher_forward`.
        object.__setattr__(self, "_teacher", None)
        if teacher_checkpoint:
            if teacher is None:
                raise ValueError("Expected a `teacher` architecture to load `teacher_checkpoint` into, but got None.")
            load_weights(teacher, teacher_checkpoint)
        if teacher is not None:
            teacher.requires_grad_(False).eval()
            object.__setattr__(self, "_teacher", teacher)
        self.criterion = criterion if criterion is not None else nn.CrossEntropyLoss()
        self.loss_weights = _check_weights(loss_weights or self.default_loss_weights(), self.loss_names)
        self.optimizer_spec = optimizer
        self.lr = float(lr)
        self.optimizer_kwargs = dict(optimizer_kwargs or {})
        self.warmup_epochs, self.warmup_steps = warmup_epochs, warmup_steps
        self.scheduler_kwargs = dict(scheduler_kwargs or {})
        self.track_grad_norm = None if track_grad_norm in (None, -1) else float(track_grad_norm)
        self.inference_pipeline = inference_pipeline
        self._metrics = nn.ModuleDict()
        self._loader_names: dict[str, list[str]] = {}
        self._nonfinite_steps = 0
        self.reset_epoch_loss()

    # ----------------------------------------------------------------------------- teacher
    @property
    def teacher(self) -> nn.Module | None:
        """The frozen teacher (or ``None``)."""
        return self._teacher

    def default_loss_weights(self) -> dict[str, float]:
        return {"hard_loss": 1.0}

    @torch.no_grad()
    def teacher_forward(self, x: Tensor) -> Any:
        """Run the frozen teacher on ``x`` in eval mode, moving it to ``x``'s device/dtype first."""
        teacher = self._teacher
        param = next(teacher.parameters(), None)
        if param is not None and (param.device != x.device or (x.is_floating_point() and param.dtype != x.dtype)):
            teacher.to(device=x.device, dtype=x.dtype if x.is_floating_point() else None)
        if teacher.training:
            teacher.eval()
        return teacher(x)

    # ----------------------------------------------------------------------------- training
    def forward(self, x: Tensor) -> Tensor:
        return logits_of(self.student(x))

    def loss_components(self, x: Tensor, y: Tensor, index: Tensor | None) -> dict[str, Tensor]:
        """Return the named loss components for one batch (subclasses override)."""
        return {"hard_loss": self.criterion(self(x), y)}

    # Lightning's `self.log(on_step=True, on_epoch=True)` costs ~0.1 ms per key per step on CPU, and progress-bar
    # values cost a host sync per step on GPU. So the loss components are summed per epoch on the device, and
    # `self.log` runs only on the trainer's logging steps and on the epoch's last batch, under the names forked
    # logging produces: `<name>_step`, `<name>_epoch`, and `<name>` (the epoch mean, for callbacks such as
    # `ModelCheckpoint(monitor="train_loss")`; mid-epoch, monitor `train_loss_step`). `train_loss` is the total.
    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y, index = split_batch(batch)
        components = self.loss_components(x, y, index)
        total = sum(self.loss_weights[k] * v for k, v in components.items() if k in self.loss_weights)
        batch_size, names = x.shape[0], ("train_loss", *components)
        values = _stack_values(total, components, len(names))  # (K,) on the loss's device: no host sync
        acc = self._epoch_sums.get(names)  # keyed by names: a component on some steps only is averaged over those
        if acc is None:
            self._epoch_sums[names] = [values * batch_size, batch_size]
        else:
            acc[0].add_(values, alpha=batch_size)
            acc[1] += batch_size
        self._epoch_count += batch_size
        trainer = self._trainer
        last = trainer is not None and batch_idx + 1 >= trainer.num_training_batches
        logging_step = last or (trainer is not None and (trainer.fast_dev_run or self._trainer_logs_this_step()))
        if logging_step and values.device.type != "cpu":
            values = values.cpu()  # the only host transfer: on logging steps
        if values.device.type == "cpu" and not math.isfinite(values[0].item() if logging_step else total.item()):
            self._raise_non_finite(values, names)  # checked every step on CPU (free), on logging steps elsewhere
        if logging_step:
            step_values = dict(zip(names, values.unbind()))  # 0-dim host tensors: no sync when Lightning reads them
            kwargs: dict[str, Any] = {"on_step": True, "on_epoch": False, "batch_size": batch_size}
            self.log("train_loss_step", step_values.pop("train_loss"), prog_bar=True, **kwargs)
            self.log_dict({f"{k}_step": v for k, v in step_values.items()}, **kwargs)
        if last:  # logged here, not at epoch end, so callbacks' `on_train_epoch_end` sees them (as before)
            self._log_epoch_values()
        return total

    def _trainer_logs_this_step(self) -> bool:
        connector = getattr(self.trainer, "_logger_connector", None)
        if connector is not None and hasattr(type(connector), "should_update_logs"):
            return bool(connector.should_update_logs)
        every = self.trainer.log_every_n_steps
        return bool(every) and (self.global_step + 1) % every == 0

    def _log_epoch_values(self) -> None:
        sums: dict[str, Tensor] = {}
        counts: dict[str, int] = {}
        for names, (acc, count) in self._epoch_sums.items():
            for name, value in zip(names, acc.unbind()):
                sums[name] = sums[name] + value if name in sums else value
                counts[name] = counts.get(name, 0) + count
        means = {name: sums[name] / max(1, counts[name]) for name in sums}  # this rank's, as Lightning's were
        if means:
            kwargs: dict[str, Any] = {"on_step": False, "on_epoch": True, "batch_size": 1}
            self.log("train_loss_epoch", means["train_loss"], prog_bar=True, **kwargs)
            self.log_dict({f"{k}_epoch": v for k, v in means.items() if k != "train_loss"}, **kwargs)
            self.log_dict(means, logger=False, **kwargs)
        self._epoch_values_logged = True

    def on_train_epoch_end(self) -> None:
        if not self._epoch_values_logged:  # the epoch ended early (max_steps, a stop) or its length is unknown
            self._log_epoch_values()

    def _raise_non_finite(self, host: Tensor, names: tuple[str, ...]) -> None:
        listed = host.tolist()  # the step's values, total first, in `names` order
        bad = {k: v for k, v in zip(names[1:], listed[1:]) if not math.isfinite(v)}
        raise FloatingPointError(
            f"Non-finite training loss at epoch {self.current_epoch}, step {self.global_step}: total={listed[0]}, "
            f"non-finite components={bad or 'weighted sum overflowed'}. Lower the learning rate, check the "
            "inputs for NaN/inf, or use precision=32."
        )

    def reset_epoch_loss(self) -> None:
        self._epoch_sums: dict[tuple[str, ...], list[Any]] = {}  # names -> [(K,) sums of value * batch, samples]
        self._epoch_count = 0
        self._epoch_values_logged = False

    def on_train_epoch_start(self) -> None:
        self.reset_epoch_loss()
        if self._teacher is not None:
            self._teacher.eval()

    def epoch_loss_per_sample(self) -> float:
        """Average training loss per sample over the last epoch (summed over DDP ranks)."""
        total = sum((acc[0].to(self.device) for acc, _ in self._epoch_sums.values()),  # `train_loss` comes first
                    torch.zeros((), device=self.device))
        count = torch.tensor(float(self._epoch_count), device=self.device)
        if self._trainer is not None and self.trainer.world_size > 1:
            total = self.trainer.strategy.reduce(total, reduce_op="sum")
            count = self.trainer.strategy.reduce(count, reduce_op="sum")
        return float(total / count.clamp_min(1))

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.track_grad_norm is None or self.global_step % max(1, self.trainer.log_every_n_steps):
            return
        self.log_dict(grad_norm(self.student, norm_type=self.track_grad_norm))

    # ----------------------------------------------------------------------------- optimizers
    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters handed to the optimizer: the student's (subclasses add e.g. hint regressors)."""
        return [p for p in self.student.parameters() if p.requires_grad]

    def configure_optimizers(self) -> Any:
        params = self.trainable_parameters()
        optimizer = build_optimizer(self.optimizer_spec, params, self.lr, **self.optimizer_kwargs)
        if self._teacher is not None:
            teacher_ids = {id(p) for p in self._teacher.parameters()}
            if any(id(p) in teacher_ids for g in optimizer.param_groups for p in g["params"]):
                raise ValueError("The optimizer holds teacher parameters; build it over the student's parameters only.")
        steps = max(1, int(self.trainer.estimated_stepping_batches))
        per_epoch = max(1, steps // max(1, self.trainer.max_epochs or 1))
        warmup = self.warmup_steps or self.warmup_epochs * per_epoch
        kwargs = dict(self.scheduler_kwargs)
        if "step_size_epochs" in kwargs:  # StepLR given in epochs, as the FitNets seed does
            kwargs["step_size"] = kwargs.pop("step_size_epochs") * per_epoch
        scheduler = build_scheduler(self.scheduler_name, optimizer, total_steps=steps, warmup_steps=warmup, **kwargs)
        if scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ----------------------------------------------------------------------------- evaluation
    def _names_for(self, stage: str) -> list[str]:
        if stage not in self._loader_names:
            loaders = self.trainer.val_dataloaders if stage == "val" else self.trainer.test_dataloaders
            if isinstance(loaders, Mapping):
                names = [str(k) for k in loaders]
            elif isinstance(loaders, (list, tuple)) and len(loaders) > 1:
                names = [f"{stage}_{i}" for i in range(len(loaders))]
            else:
                names = [stage]
            self._loader_names[stage] = names
        return self._loader_names[stage]

    def _metric_key(self, stage: str, idx: int) -> tuple[str, str]:
        names = self._names_for(stage)
        name = names[idx] if idx < len(names) else f"{stage}_{idx}"
        suffix = "" if names == [stage] else f"_{name}"
        return name, suffix

    def _eval_step(self, stage: str, batch: Any, dataloader_idx: int) -> None:
        if self.inference_pipeline is not None:
            return  # the user's pipeline evaluates whole loaders at epoch end
        x, y, _ = split_batch(batch)
        logits = self(x)  # (B, C)
        _, suffix = self._metric_key(stage, dataloader_idx)
        key = f"{stage}_acc{suffix}"
        if key not in self._metrics:
            self._metrics[key] = torchmetrics.classification.MulticlassAccuracy(
                num_classes=logits.shape[-1], average="micro"
            ).to(self.device)
        self._metrics[key].update(logits.detach(), y)
        loss = self.criterion(logits, y)
        self.log(f"{stage}_loss{suffix}", loss, on_epoch=True, sync_dist=True, add_dataloader_idx=False, batch_size=x.shape[0])

    def _eval_epoch_end(self, stage: str) -> None:
        names = self._names_for(stage)
        if self.inference_pipeline is not None:
            self._run_inference_pipeline(stage, names)
            return
        for idx, _ in enumerate(names):
            _, suffix = self._metric_key(stage, idx)
            metric = self._metrics[f"{stage}_acc{suffix}"] if f"{stage}_acc{suffix}" in self._metrics else None
            if metric is None or not metric.update_called:
                continue
            value = metric.compute()  # synced across DDP ranks by torchmetrics
            self.log(f"{stage}_acc{suffix}", value, prog_bar=idx == 0, add_dataloader_idx=False)
            if idx == 0 and suffix:
                self.log(f"{stage}_acc", value, add_dataloader_idx=False)  # `val_acc` = first loader: monitor key
            metric.reset()

    def _run_inference_pipeline(self, stage: str, names: list[str]) -> None:
        loaders = self.trainer.val_dataloaders if stage == "val" else self.trainer.test_dataloaders
        loaders = loaders if isinstance(loaders, Mapping) else dict(zip(names, loaders if isinstance(loaders, (list, tuple)) else [loaders]))
        was_training = self.student.training
        self.student.eval()
        for name, loader in loaders.items():
            result = self.inference_pipeline.run_inference_pipeline(self.student, loader)
            if not isinstance(result, Mapping) or "inference_result" not in result:
                raise ValueError(f"Expected `run_inference_pipeline` to return {{'inference_result': value}}, but got {result!r}.")
            self.log(str(name), float(result["inference_result"]), prog_bar=True, add_dataloader_idx=False)
        self.student.train(was_training)

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step("val", batch, dataloader_idx)

    def test_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step("test", batch, dataloader_idx)

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Tensor:
        x, _, _ = split_batch(batch)
        return self(x).argmax(dim=-1)

    # ----------------------------------------------------------------------------- exact resume
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Lightning does not checkpoint the global RNGs; without them a resumed run shuffles its data
        # differently from an uninterrupted one. Stored as plain types so `weights_only` loading works.
        np_state = np.random.get_state()
        checkpoint[_RNG_KEY] = {
            "torch": torch.random.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else [],
            "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
            "python": random.getstate(),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get(_RNG_KEY)
        self._apply_rng_state(state)
        # The sanity-check validation that Lightning runs after restoring creates a DataLoader iterator,
        # which draws from the global RNG; the state is applied again when it ends (`on_validation_end`),
        # right before the training loop creates its first iterator.
        self._pending_rng_state = state

    def on_validation_end(self) -> None:
        if self.trainer.sanity_checking:
            self._apply_rng_state(getattr(self, "_pending_rng_state", None))
        self._pending_rng_state = None

    @staticmethod
    def _apply_rng_state(state: dict[str, Any] | None) -> None:
        if not state:
            return
        torch.random.set_rng_state(state["torch"])
        if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["cuda"])
        kind, keys, pos, has_gauss, gauss = state["numpy"]
        np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
        version, internal, gauss_next = state["python"]
        random.setstate((version, tuple(internal), gauss_next))
