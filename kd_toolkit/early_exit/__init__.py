"""Early exit (BranchyNet): exits after every block, batched early-exit inference, calibration, deployment.

One home for the method:

* :mod:`~kd_toolkit.early_exit.runtime`: the exit rule, the batched chain and the cost counters (torch only),
* :mod:`~kd_toolkit.early_exit.network`: :class:`EarlyExitNetwork` and its segments,
* :mod:`~kd_toolkit.early_exit.module`: :class:`EarlyExitModule`, the LightningModule that trains it,
* :mod:`~kd_toolkit.early_exit.models`: :class:`SplitCNN` (registered as ``"split_cnn"``),
* :mod:`~kd_toolkit.early_exit.calibration` and :mod:`~kd_toolkit.early_exit.cost`: thresholds, MACs, latency,
* :mod:`~kd_toolkit.early_exit.export`, :mod:`~kd_toolkit.early_exit.graph` and :mod:`~kd_toolkit.early_exit.deploy`:
  segment files, the one-graph program with per-sample exits, and the standalone loader (``deploy.py`` +
  ``runtime.py`` + ``manifest.py`` run on a device without kd_toolkit),
* :mod:`~kd_toolkit.early_exit.seed_api`: seed 000's call form.

The torch-only names are imported here; the others load on first use (PEP 562), so that
``import kd_toolkit.early_exit.deploy`` on an edge device does not pull in Lightning.

Example:
    >>> from kd_toolkit.early_exit import EarlyExitNetwork, confidence_scores
"""

from __future__ import annotations

from kd_toolkit._lazy import lazy_exports
from kd_toolkit.early_exit.cost import exit_macs
from kd_toolkit.early_exit.network import EarlyExitNetwork, EarlyExitNetworkSegmentor, EarlyExitPrediction
from kd_toolkit.early_exit.runtime import ConfidenceRule, average_macs, confidence_scores

_LAZY = {
    "EarlyExitModule": "kd_toolkit.early_exit.module",
    "TrainingMethod": "kd_toolkit.early_exit.module",
    "SplitCNN": "kd_toolkit.early_exit.models",
    "CalibrationResult": "kd_toolkit.early_exit.calibration",
    "calibrate_thresholds": "kd_toolkit.early_exit.calibration",
    "collect_exit_logits": "kd_toolkit.early_exit.calibration",
    "plot_accuracy_vs_compute": "kd_toolkit.early_exit.calibration",
    "sweep_thresholds": "kd_toolkit.early_exit.calibration",
    "mac_parts": "kd_toolkit.early_exit.cost",
    "measure_segment_latency": "kd_toolkit.early_exit.cost",
    "export_segments": "kd_toolkit.early_exit.export",
    "export_network": "kd_toolkit.early_exit.graph",
    "NetworkProgram": "kd_toolkit.early_exit.deploy",
    "load_network": "kd_toolkit.early_exit.deploy",
    "boundary_payloads": "kd_toolkit.early_exit.cost",
    "cost_report": "kd_toolkit.early_exit.cost",
    "SegmentChain": "kd_toolkit.early_exit.deploy",
    "SegmentChainPrediction": "kd_toolkit.early_exit.deploy",
    "load_segments": "kd_toolkit.early_exit.deploy",
    "early_exit_train": "kd_toolkit.early_exit.seed_api",
    "create_networks": "kd_toolkit.early_exit.seed_api",
}

__all__ = [
    "CalibrationResult",
    "ConfidenceRule",
    "EarlyExitModule",
    "EarlyExitNetwork",
    "EarlyExitNetworkSegmentor",
    "EarlyExitPrediction",
    "NetworkProgram",
    "SegmentChain",
    "SegmentChainPrediction",
    "SplitCNN",
    "TrainingMethod",
    "average_macs",
    "boundary_payloads",
    "calibrate_thresholds",
    "collect_exit_logits",
    "confidence_scores",
    "create_networks",
    "cost_report",
    "early_exit_train",
    "exit_macs",
    "export_network",
    "export_segments",
    "load_network",
    "load_segments",
    "mac_parts",
    "measure_segment_latency",
    "plot_accuracy_vs_compute",
    "sweep_thresholds",
]


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())
