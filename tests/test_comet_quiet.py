"""Comet offline is quiet: one warning of ours, none of Comet's console INFO lines (its ~60-line summary)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from kd_toolkit.tracking.comet import build_comet_logger

os.environ.setdefault("COMET_DISABLE_AUTO_LOGGING", "1")


def test_offline_comet_console_is_quiet_until_the_experiment_ends(tmp_path: Path, capfd) -> None:
    info = tmp_path / "comet.txt"
    info.write_text("abcdefghijklmnopqrstuvwxy\nkd-tests\nkd-workspace\n")
    console = logging.getLogger("comet_ml")
    with pytest.warns(UserWarning, match="Comet runs offline"):
        logger = build_comet_logger(info, "quiet", tmp_path, online=False)
    logger.log_hyperparams({"lr": 0.5})
    logger.log_metrics({"val_acc": 0.5}, step=0)  # starts the offline experiment
    assert console.level == logging.ERROR  # Comet's errors still show
    logger.finalize("success")
    assert console.level < logging.ERROR  # restored: an online experiment later in the process logs as usual
    assert list((tmp_path / "comet").glob("*.zip"))  # the archive is still written
    out, err = capfd.readouterr()
    assert "COMET INFO" not in out + err, (out + err)[-2000:]
