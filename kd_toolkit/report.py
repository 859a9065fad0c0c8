"""Deprecated: moved to :mod:`kd_toolkit.pipeline.report` (plots in :mod:`kd_toolkit.pipeline.plots`).

Importing this module warns once with a ``DeprecationWarning``; every name it exported is the same object
as in its new home.
"""

import warnings

from kd_toolkit.pipeline.report import (
    MODEL_LABELS,
    comparison_rows,
    plot_accuracy_comparison,
    plot_confusion_matrices,
    plot_prediction_examples,
    plot_teacher_training,
    plot_training_curves,
    print_summary,
    read_history,
    render_report,
    save_and_visualize_results,
    write_json,
)

__all__ = [
    "MODEL_LABELS", "comparison_rows", "plot_accuracy_comparison", "plot_confusion_matrices",
    "plot_prediction_examples", "plot_teacher_training", "plot_training_curves", "print_summary", "read_history",
    "render_report", "save_and_visualize_results", "write_json",
]

warnings.warn("kd_toolkit.report is deprecated; import from kd_toolkit.pipeline.report", DeprecationWarning,
              stacklevel=2)
