"""One-command pipeline (seed 003): teacher → plain student → distilled student → evaluation → files.

All three trainings run through :class:`~kd_toolkit.training.KnowledgeDistillationTraining`; the best
checkpoint on validation accuracy of each is evaluated on the test split. The distilled student reads the
teacher's logits from a cache computed once before its first epoch (seed 003's "distillation data"). Both
students start from the same initial weights and see the same batches: the KD term is the only difference.
Files under ``output_dir`` (default ``runs/pipeline`` for digits, ``runs/pipeline_mnist`` for MNIST; see
:func:`kd_toolkit.pipeline.report.save_and_visualize_results`)::

    models/{teacher_model,student_regular,student_distilled}.pt    state dict + model name, num_classes
    models/{teacher_model,student_regular,student_distilled}.pth   the bare state dict (seed 003's files)
    results/metrics/{teacher,student_regular,student_distilled,summary}.json
    results/plots/*.png     results/predictions/test_predictions.csv     report.md
    lightning_logs/<model>/version_N/    each Lightning run: metrics.csv, checkpoints/

* :mod:`kd_toolkit.pipeline.config`: :data:`DEFAULTS`, :func:`parse_data_spec`, :func:`resolve_config`
* :mod:`kd_toolkit.pipeline.run`: the steps, from :func:`load_and_split_data` to :func:`run_pipeline`
* :mod:`kd_toolkit.pipeline.evaluation`: :func:`evaluate_all_models`, :func:`load_pipeline_model`
* :mod:`kd_toolkit.pipeline.report` and :mod:`kd_toolkit.pipeline.plots`: metrics files, plots, report
* :mod:`kd_toolkit.pipeline.seed_api`: seed 003's ``main.py`` functions with its call forms and returns
* :mod:`kd_toolkit.pipeline.seed_models`: seed 003's ``TeacherModel``/``StudentModel`` (``seed003_teacher``,
  ``seed003_student`` in the registry; the MNIST defaults)

Loading the saved models::

    from kd_toolkit.pipeline import load_pipeline_model
    teacher = load_pipeline_model("runs/pipeline/models/teacher_model.pt")    # any data set, eval mode
    # or seed 003's way, on an MNIST run (its scripts/model_evaluator.py does exactly this):
    student = Seed003Student()            # or the seed's own StudentModel class
    student.load_state_dict(torch.load("runs/pipeline_mnist/models/student_distilled.pth"))

Example:
    >>> summary = run_pipeline("runs/pipeline", epochs=5)  # doctest: +SKIP
    >>> summary["kd_gain"]  # distilled minus regular test accuracy  # doctest: +SKIP
    0.0067
"""

from kd_toolkit.pipeline.config import (
    DEFAULT_NUM_THREADS,
    DEFAULTS,
    PipelineConfig,
    default_output_dir,
    parse_data_spec,
    resolve_config,
)
from kd_toolkit.pipeline.evaluation import evaluate_all_models, load_pipeline_model
from kd_toolkit.pipeline.report import save_and_visualize_results
from kd_toolkit.pipeline.run import (
    DistillationData,
    SplitData,
    TrainedModel,
    load_and_split_data,
    loss_weights,
    prepare_distillation_data,
    run_pipeline,
    torch_threads,
    train_students,
    train_teacher,
)
from kd_toolkit.pipeline.seed_models import Seed003Student, Seed003Teacher

__all__ = [
    "DEFAULTS", "DEFAULT_NUM_THREADS", "DistillationData", "PipelineConfig", "Seed003Student", "Seed003Teacher",
    "SplitData", "TrainedModel", "default_output_dir", "evaluate_all_models", "load_and_split_data",
    "load_pipeline_model", "loss_weights", "parse_data_spec", "prepare_distillation_data", "resolve_config",
    "run_pipeline", "save_and_visualize_results", "torch_threads", "train_students", "train_teacher",
]
