"""Old import paths and YAML class_paths of early exit keep working, through shims that warn."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl

import kd_toolkit
import kd_toolkit.early_exit as early_exit
from kd_toolkit.models import create_model, list_models

ROOT = Path(__file__).resolve().parents[1]

SHIMS = {
    "kd_toolkit.deploy": ["kd_toolkit.early_exit.deploy", "kd_toolkit.early_exit.export"],
    "kd_toolkit.calibration": ["kd_toolkit.early_exit.calibration"],
    "kd_toolkit.early_exit_api": ["kd_toolkit.early_exit.seed_api"],
    "kd_toolkit.modules.early_exit": ["kd_toolkit.early_exit.module", "kd_toolkit.early_exit.models"],
}
OLD_NAMES = {
    "kd_toolkit.deploy": {"SegmentChain", "SegmentChainPrediction", "export_segments", "load_segments"},
    "kd_toolkit.calibration": {"CalibrationResult", "calibrate_thresholds", "collect_exit_logits",
                               "measure_segment_latency", "plot_accuracy_vs_compute", "sweep_thresholds"},
    "kd_toolkit.early_exit_api": {"early_exit_train"},
    "kd_toolkit.modules.early_exit": {"EarlyExitModule", "SplitCNN"},
}


def _fresh_import(name: str, monkeypatch):
    monkeypatch.delitem(sys.modules, name, raising=False)  # a shim warns when it is first imported
    return importlib.import_module(name)


@pytest.mark.parametrize("old", sorted(SHIMS))
def test_old_module_paths_warn_and_give_the_same_objects(old, monkeypatch):
    with pytest.warns(DeprecationWarning, match=f"{old} is deprecated; import .*{SHIMS[old][0]}"):
        shim = _fresh_import(old, monkeypatch)
    assert OLD_NAMES[old] <= set(shim.__all__)
    new = [importlib.import_module(path) for path in SHIMS[old]]
    for name in shim.__all__:
        homes = [getattr(module, name) for module in new if hasattr(module, name)]
        assert homes and getattr(shim, name) is homes[0], name


def test_the_package_keeps_the_names_the_old_module_had():
    old = {"EarlyExitNetwork", "EarlyExitNetworkSegmentor", "EarlyExitPrediction", "average_macs",
           "confidence_scores", "exit_macs"}
    assert old <= set(early_exit.__all__)
    for name in early_exit.__all__:
        assert getattr(early_exit, name) is not None
    assert kd_toolkit.EarlyExitModule is early_exit.EarlyExitModule
    assert kd_toolkit.load_segments is early_exit.load_segments and kd_toolkit.export_segments is early_exit.export_segments
    assert kd_toolkit.calibrate_thresholds is early_exit.calibrate_thresholds
    from kd_toolkit.modules import EarlyExitModule

    assert EarlyExitModule is early_exit.EarlyExitModule


def test_split_cnn_is_in_the_model_registry():
    split_cnn = early_exit.SplitCNN  # importing kd_toolkit.early_exit.models registers it
    assert "split_cnn" in list_models()
    assert isinstance(create_model("split_cnn", channels=(8, 16)), split_cnn)


def test_old_yaml_class_paths_still_instantiate(monkeypatch, tmp_path):
    from pytorch_lightning.cli import LightningCLI

    config = (ROOT / "configs" / "early_exit_digits.yaml").read_text()
    assert "kd_toolkit.modules.early_exit" not in config  # the shipped config uses the new paths
    old = (config.replace("kd_toolkit.early_exit.EarlyExitModule", "kd_toolkit.modules.early_exit.EarlyExitModule")
                 .replace("kd_toolkit.early_exit.SplitCNN", "kd_toolkit.modules.early_exit.SplitCNN"))
    assert old.count("kd_toolkit.modules.early_exit.") == 2
    (tmp_path / "old.yaml").write_text(old)
    monkeypatch.setattr(sys, "argv", ["kd-toolkit"])
    monkeypatch.delitem(sys.modules, "kd_toolkit.modules.early_exit", raising=False)
    with pytest.warns(DeprecationWarning, match="kd_toolkit.modules.early_exit is deprecated"):
        cli = LightningCLI(pl.LightningModule, pl.LightningDataModule, subclass_mode_model=True,
                           subclass_mode_data=True, args=["--config", str(tmp_path / "old.yaml")], run=False)
    assert isinstance(cli.model, early_exit.EarlyExitModule)
    assert isinstance(cli.model.network, early_exit.EarlyExitNetwork)
    assert cli.model.network.thresholds == [0.95, 0.95] and cli.model.self_distillation
