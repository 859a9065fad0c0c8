"""The progress bar of kd_toolkit's runs (the orchestrator, the pipeline and ``kd-toolkit fit|...``).

Lightning's bar appends ``v_num``, the logger's version; kd_toolkit's run folders are named ``version_N``,
which Lightning cuts to its last four characters (``v_num=on_0``): noise, not progress. The run folder is
printed elsewhere, so the bar shows only the metrics logged with ``prog_bar=True`` (losses, accuracy).
"""

from __future__ import annotations

import importlib.util
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ProgressBar, RichProgressBar, TQDMProgressBar

__all__ = ["MetricsProgressBar", "RichMetricsProgressBar", "progress_bar"]


class _WithoutVersion:
    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        items: dict[str, Any] = super().get_metrics(trainer, pl_module)  # type: ignore[misc]
        items.pop("v_num", None)
        return items


class MetricsProgressBar(_WithoutVersion, TQDMProgressBar):
    """``TQDMProgressBar`` without ``v_num``.

    Example:
        >>> trainer = pl.Trainer(callbacks=[MetricsProgressBar()], logger=False, enable_checkpointing=False)
        >>> type(trainer.progress_bar_callback).__name__
        'MetricsProgressBar'
    """


class RichMetricsProgressBar(_WithoutVersion, RichProgressBar):
    """``RichProgressBar`` without ``v_num``."""


def progress_bar() -> ProgressBar:
    """The bar Lightning would pick (rich when it is installed, else tqdm), without ``v_num``."""
    return RichMetricsProgressBar() if importlib.util.find_spec("rich") is not None else MetricsProgressBar()
