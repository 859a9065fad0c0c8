"""The progress bar of the pipeline and of ``kd-toolkit fit|validate|test|predict``.

Lightning's bar appends ``v_num``, the logger's version; kd_toolkit's run folders are named
``version_N``, which Lightning cuts to its last four characters (``v_num=on_0``). The run folder is
printed elsewhere, so the bar shows only the logged metrics (loss, validation accuracy).
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import TQDMProgressBar

__all__ = ["MetricsProgressBar"]


class MetricsProgressBar(TQDMProgressBar):
    """``TQDMProgressBar`` without ``v_num``: the bar shows the metrics logged with ``prog_bar=True``.

    Example:
        >>> trainer = pl.Trainer(callbacks=[MetricsProgressBar()], logger=False, enable_checkpointing=False)
        >>> type(trainer.progress_bar_callback).__name__
        'MetricsProgressBar'
    """

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        return items
