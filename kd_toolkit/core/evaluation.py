"""Validation and test for every kd_toolkit module: per-loader accuracy and loss, or a user's pipeline.

A dict of named loaders (seed 002) gets one metric key per loader (``val_acc_<name>``; ``val_acc`` is the
first loader's, the orchestrator's checkpoint monitor); a list gets ``val_0``, ``val_1``, ... An
``inference_pipeline`` object replaces the accuracy with its own ``{"inference_result": x}`` per loader.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torchmetrics
from torch import Tensor

from kd_toolkit.core.batch import explain_batch_error, split_batch

__all__ = ["EvaluationMixin"]


class EvaluationMixin:
    """Lightning validation/test/predict hooks over the module's ``forward`` (mixed into ``KDBaseModule``)."""

    _metrics: Any
    _loader_names: dict[str, list[str]]
    inference_pipeline: Any
    criterion: Any
    trainer: Any
    device: Any
    student: Any

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
        _, suffix = self._metric_key(stage, dataloader_idx)
        if x.is_floating_point() and not bool(torch.isfinite(x).all()):
            name = self._names_for(stage)[min(dataloader_idx, len(self._names_for(stage)) - 1)]
            raise ValueError(f"Expected finite {stage} inputs, but the {stage} loader {name!r} yields NaN or inf: the "
                             f"{stage} loss and accuracy (and a checkpoint chosen on them) would be meaningless.")
        logits = self(x)  # type: ignore[operator]  # (B, C)
        clear = explain_batch_error(logits, y, f"the {stage} data") if logits.dim() != 2 else None
        if clear is not None:
            raise clear
        key = f"{stage}_acc{suffix}"
        if key not in self._metrics:
            self._metrics[key] = torchmetrics.classification.MulticlassAccuracy(
                num_classes=logits.shape[-1], average="micro"
            ).to(self.device)
        try:
            self._metrics[key].update(logits.detach(), y)
            loss = self.criterion(logits, y)
        except (IndexError, RuntimeError, ValueError) as err:
            clear = explain_batch_error(logits, y, f"the {stage} data")
            if clear is not None:
                raise clear from err
            raise
        self.log(f"{stage}_loss{suffix}", loss, on_epoch=True, sync_dist=True,  # type: ignore[attr-defined]
                 add_dataloader_idx=False, batch_size=x.shape[0])

    def _eval_epoch_end(self, stage: str) -> None:
        names = self._names_for(stage)
        if self.inference_pipeline is not None:
            self._run_inference_pipeline(stage, names)
            return
        for idx, _ in enumerate(names):
            _, suffix = self._metric_key(stage, idx)
            key = f"{stage}_acc{suffix}"
            metric = self._metrics[key] if key in self._metrics else None
            if metric is None or not metric.update_called:
                continue
            value = metric.compute()  # synced across DDP ranks by torchmetrics: `sync_dist` averages equal values
            self.log(key, value, prog_bar=idx == 0, add_dataloader_idx=False,  # type: ignore[attr-defined]
                     sync_dist=True)
            if idx == 0 and suffix:  # `val_acc` = first loader: the monitor key
                self.log(f"{stage}_acc", value, add_dataloader_idx=False, sync_dist=True)  # type: ignore[attr-defined]
            metric.reset()

    def _run_inference_pipeline(self, stage: str, names: list[str]) -> None:
        loaders = self.trainer.val_dataloaders if stage == "val" else self.trainer.test_dataloaders
        if not isinstance(loaders, Mapping):
            loaders = dict(zip(names, loaders if isinstance(loaders, (list, tuple)) else [loaders]))
        was_training = self.student.training
        self.student.eval()
        for name, loader in loaders.items():
            result = self.inference_pipeline.run_inference_pipeline(self.student, loader)
            if not isinstance(result, Mapping) or "inference_result" not in result:
                raise ValueError(f"Expected `run_inference_pipeline` to return {{'inference_result': value}}, "
                                 f"but got {result!r}.")
            self.log(str(name), float(result["inference_result"]), prog_bar=True,  # type: ignore[attr-defined]
                     add_dataloader_idx=False, sync_dist=True)  # under DDP: the mean of the ranks' results
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
        return self(x).argmax(dim=-1)  # type: ignore[operator]
