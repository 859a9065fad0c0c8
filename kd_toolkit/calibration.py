"""Deprecated: moved to :mod:`kd_toolkit.early_exit.calibration`."""

import warnings

from kd_toolkit.early_exit.calibration import (
    CalibrationResult,
    calibrate_thresholds,
    collect_exit_logits,
    measure_segment_latency,
    plot_accuracy_vs_compute,
    sweep_thresholds,
)

warnings.warn("kd_toolkit.calibration is deprecated; import from kd_toolkit.early_exit.calibration instead.",
              DeprecationWarning, stacklevel=2)
__all__ = ["CalibrationResult", "calibrate_thresholds", "collect_exit_logits", "measure_segment_latency",
           "plot_accuracy_vs_compute", "sweep_thresholds"]
