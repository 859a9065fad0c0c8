"""One-command pipeline (seed 003): teacher → plain student → distilled student → evaluation → files.

All three trainings run through :class:`~kd_toolkit.training.KnowledgeDistillationTraining`; the best
checkpoint on validation accuracy of each is evaluated on the test split. The distilled student reads the
teacher's logits from a cache computed once before its first epoch (seed 003's "distillation data"). Both
students start from the same initial weights and see the same batches: the KD term is the only difference.
Files under ``output_dir`` (see :func:`kd_toolkit.pipeline.report.save_and_visualize_results`)::

    models/{teacher_model,student_regular,student_distilled}.pt    state dict + model name, num_classes
    results/metrics/{teacher,student_regular,student_distilled,summary}.json
    results/plots/*.png     results/predictions/test_predictions.csv     report.md
    lightning_logs/<model>/version_N/    each Lightning run: metrics.csv, checkpoints/

* :mod:`kd_toolkit.pipeline.config`: :data:`DEFAULTS`, :func:`parse_data_spec`, :func:`resolve_config`
* :mod:`kd_toolkit.pipeline.run`: the steps, from :func:`load_and_split_data` to :func:`run_pipeline`
* :mod:`kd_toolkit.pipeline.evaluation`: :func:`evaluate_all_models`, :func:`load_pipeline_model`
* :mod:`kd_toolkit.pipeline.report` and :mod:`kd_toolkit.pipeline.plots`: metrics files, plots, report

Example:
    >>> summary = run_pipeline("runs/pipeline", epochs=5)  # doctest: +SKIP
    >>> summary["kd_gain"]  # distilled minus regular test accuracy  # doctest: +SKIP
    0.0067
"""

from kd_toolkit.pipeline.config import DEFAULTS, PipelineConfig, parse_data_spec, resolve_config
from kd_toolkit.pipeline.evaluation import evaluate_all_models, load_pipeline_model
from kd_toolkit.pipeline.report import save_and_visualize_results
from kd_toolkit.pipeline.run import (
    DistillationData,
    SplitData,
    TrainedModel,
    load_and_split_data,
    prepare_distillation_data,
    run_pipeline,
    train_students,
    train_teacher,
)

__all__ = [
    "DEFAULTS", "DistillationData", "PipelineConfig", "SplitData", "TrainedModel", "evaluate_all_models",
    "load_and_split_data", "load_pipeline_model", "parse_data_spec", "prepare_distillation_data", "resolve_config",
    "run_pipeline", "save_and_visualize_results", "train_students", "train_teacher",
]
