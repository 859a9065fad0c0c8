"""The progress bar of kd_toolkit's runs: Lightning's own, without the ``v_num`` column (the run folder's
version number, shown as ``v_num: on_0`` for ``version_0`` folders: noise, not progress)."""

from __future__ import annotations

import importlib.util
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ProgressBar, RichProgressBar, TQDMProgressBar

__all__ = ["progress_bar"]


def _without_version(metrics: dict[str, Any]) -> dict[str, Any]:
    metrics.pop("v_num", None)
    return metrics


class _RichBar(RichProgressBar):
    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        return _without_version(super().get_metrics(trainer, pl_module))


class _TQDMBar(TQDMProgressBar):
    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        return _without_version(super().get_metrics(trainer, pl_module))


def progress_bar() -> ProgressBar:
    """The bar Lightning would pick (rich when it is installed, else tqdm), showing the losses and metrics only."""
    return _RichBar() if importlib.util.find_spec("rich") is not None else _TQDMBar()
