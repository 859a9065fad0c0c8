"""The pipeline's steps (seed 003): load and split → teacher → distillation data → students → run.

All three trainings run through :class:`~kd_toolkit.training.KnowledgeDistillationTraining`; the best
checkpoint on validation accuracy of each is what the later steps use.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any, NamedTuple

import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from kd_toolkit._checks import check_int
from kd_toolkit.core.progress import MetricsProgressBar
from kd_toolkit.models import create_model
from kd_toolkit.pipeline.config import DEFAULTS, PipelineConfig, default_output_dir, parse_data_spec, resolve_config
from kd_toolkit.pipeline.evaluation import evaluate_all_models
from kd_toolkit.pipeline.report import print_summary, read_history, save_and_visualize_results

__all__ = [
    "DistillationData", "SplitData", "TrainedModel", "load_and_split_data", "loss_weights", "prepare_distillation_data",
    "run_pipeline", "torch_threads", "train_students", "train_teacher",
]


# --------------------------------------------------------------------------------------------- data
class SplitData(NamedTuple):
    """Seed 003's ``(train_loader, val_loader, test_loader, train_subset, val_subset, test_dataset)`` plus
    the dataset's ``num_classes``, ``input_shape`` and ``name``."""

    train_loader: DataLoader
    val_loader: DataLoader
    test_loader: DataLoader
    train_dataset: Dataset
    val_dataset: Dataset
    test_dataset: Dataset
    num_classes: int
    input_shape: tuple[int, ...]
    name: str


def load_and_split_data(data: str = "digits", batch_size: int | None = None, seed: int = 0) -> SplitData:
    """Load the dataset and split it stratified into train/val/test (seed 003's first step).

    Args:
        data: ``"digits"``: scikit-learn's 8x8 digits, 60/15/25 %; ``"mnist:DIR"``: MNIST's IDX files in
            ``DIR`` (with only the test files, their 10,000 images are split 70/10/20 %).
        batch_size: Batch size of every loader (``None``: the dataset's default).
        seed: Seed of the split.

    Returns:
        The loaders, datasets and the dataset's class count, input shape and name.

    Example:
        >>> train_loader, val_loader, test_loader, *_ = load_and_split_data("digits", batch_size=32)
        >>> next(iter(train_loader))[0].shape
        torch.Size([32, 1, 8, 8])
    """
    from kd_toolkit.data import DigitsDataModule, MNISTDataModule

    kind, directory = parse_data_spec(data)
    batch_size = DEFAULTS[kind]["batch_size"] if batch_size is None else check_int("batch_size", batch_size, minimum=1)
    dm: Any = DigitsDataModule(batch_size=batch_size, seed=seed) if kind == "digits" else \
        MNISTDataModule(directory, batch_size=batch_size, seed=seed)  # type: ignore[arg-type]
    dm.setup("fit")
    return SplitData(dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader(), dm.train_dataset,
                     dm.val_dataset, dm.test_dataset, dm.num_classes, tuple(dm.input_shape), kind)


# ----------------------------------------------------------------------------------------- training
class TrainedModel(NamedTuple):
    """A trained model with its best weights loaded, its per-epoch history and where its run lives."""

    model: nn.Module
    history: list[dict[str, float | int | None]]
    train_time_s: float
    best_epoch: int | None
    best_val_accuracy: float | None
    run_dir: Path
    best_checkpoint: str | None
    name: str


def _build_model(name: str, split: Any, seed: int) -> nn.Module:
    """Create a registry model with the split's class count, seeded, and check that it accepts the inputs
    (``split``: a :class:`SplitData`, or anything with ``num_classes``, ``name`` and ``train_dataset``)."""
    pl.seed_everything(seed, verbose=False)
    model = create_model(name, num_classes=split.num_classes)
    x = split.train_dataset[0][0].unsqueeze(0)  # (1, *input_shape)
    try:
        with torch.no_grad():
            model.eval()(x)
    except RuntimeError as err:
        d = DEFAULTS[split.name]
        raise ValueError(f"Model {name!r} does not accept inputs of shape {tuple(x.shape)} from `--data "
                         f"{split.name}`: {str(err).splitlines()[0]}. Choose a model made for this dataset "
                         f"(defaults: {d['teacher']!r} / {d['student']!r}).") from err
    return model.train()


def _best_epoch(history: list[dict[str, Any]]) -> tuple[float | None, int | None]:
    """``(best val_acc, first epoch reaching it)``, or ``(None, None)`` without validation."""
    scored = [(row["val_acc"], -row["epoch"]) for row in history if row.get("val_acc") is not None]
    if not scored:
        return None, None
    acc, neg_epoch = max(scored)
    return acc, -neg_epoch


def loss_weights(alpha: float, distilled: bool = True) -> dict[str, float]:
    """The loss weights of a pipeline student: seed 003's ``alpha * hard + (1 - alpha) * soft``
    (``alpha`` weighs the label cross-entropy, ``1 - alpha`` the ``T**2``-scaled KD term).

    Example:
        >>> loss_weights(0.3), loss_weights(0.3, distilled=False)
        ({'hard_loss': 0.3, 'kd_loss': 0.7}, {'hard_loss': 1.0})
    """
    return {"hard_loss": alpha, "kd_loss": 1.0 - alpha} if distilled else {"hard_loss": 1.0}


def _train(name: str, role: str, model: nn.Module, teacher: nn.Module | None, loaders: tuple[DataLoader, DataLoader],
           cfg: PipelineConfig, epochs: int, lr: float, root: Path, progress_bar: bool,
           callbacks: tuple[pl.Callback, ...] = ()) -> TrainedModel:
    """Train ``model`` on ``loaders = (train, val)`` (KD from ``teacher`` when given, its logits cached once)."""
    from kd_toolkit.training import KnowledgeDistillationTraining

    limits: dict[str, Any] = {} if cfg.limit_batches is None else {"limit_train_batches": cfg.limit_batches,
                                                    "limit_val_batches": cfg.limit_batches}
    bar = (MetricsProgressBar(),) if progress_bar else ()
    kd = KnowledgeDistillationTraining(
        teacher_model=teacher, student_model=model, train_data_loader=loaders[0],
        val_data_loaders={"val": loaders[1]}, max_epoch=epochs, learning_rate=lr,
        temperature=cfg.temperature, final_loss_coeff_dict=loss_weights(cfg.alpha, teacher is not None),
        cache_teacher_outputs=teacher is not None, seed=cfg.seed,
        num_gpu_used=None, precision=None,  # a GPU when there is one, 16-mixed on it
        default_root_dir=root / "lightning_logs",
        experiment_name=role, quiet=True, enable_progress_bar=progress_bar, log_every_n_steps=10,
        callbacks=[*bar, *callbacks], **limits,
    )
    start = time.perf_counter()
    kd.fit()
    elapsed = time.perf_counter() - start
    best = kd.get_student_model(best=True).eval()  # the checkpoint with the best val_acc
    history = read_history(kd.run_dir / "metrics.csv")
    best_acc, best_epoch = _best_epoch(history)
    return TrainedModel(best, history, elapsed, best_epoch, best_acc, kd.run_dir, kd.best_checkpoint, name)


def train_teacher(split: SplitData, cfg: PipelineConfig, output_dir: str | Path = "runs/pipeline",
                  progress_bar: bool = True) -> TrainedModel:
    """Train the teacher on the labels alone (``teacher_model=None``); returns it with its best weights.

    Args:
        split: From :func:`load_and_split_data`.
        cfg: From :func:`~kd_toolkit.pipeline.resolve_config` (``teacher``, ``teacher_epochs``, ``teacher_lr``).
        output_dir: Root of the run; Lightning logs go to ``output_dir/lightning_logs/teacher``.
        progress_bar: Show Lightning's progress bar.

    Returns:
        The trained teacher.
    """
    model = _build_model(cfg.teacher, split, cfg.seed)
    return _train(cfg.teacher, "teacher", model, None, (split.train_loader, split.val_loader), cfg,
                  cfg.teacher_epochs, cfg.teacher_lr, Path(output_dir), progress_bar)


class DistillationData(NamedTuple):
    """The frozen teacher and the loaders the distilled student trains from. The teacher's logits on the
    training split are computed once, in one sequential pass, when that training starts
    (``cache_teacher_outputs=True``), and looked up by sample index in every epoch."""

    teacher: nn.Module
    train_loader: DataLoader
    val_loader: DataLoader


def prepare_distillation_data(teacher: nn.Module, train_loader: DataLoader, val_loader: DataLoader) -> DistillationData:
    """Freeze the teacher (eval mode, no gradients) for cached-logit distillation (seed 003's step 4).

    Args:
        teacher: The trained teacher.
        train_loader: Loader of the distilled student's training split.
        val_loader: Loader of its validation split.

    Returns:
        The frozen teacher with the two loaders.

    Example:
        >>> setup = prepare_distillation_data(nn.Linear(2, 2), None, None)
        >>> setup.teacher.training, setup.teacher.weight.requires_grad
        (False, False)
    """
    return DistillationData(teacher.eval().requires_grad_(False), train_loader, val_loader)


def train_students(distill: DistillationData, split: SplitData, cfg: PipelineConfig,
                   output_dir: str | Path = "runs/pipeline",
                   progress_bar: bool = True) -> tuple[TrainedModel, TrainedModel]:
    """Train the regular student (labels only) and the distilled student (``cfg.alpha`` times the label
    cross-entropy plus ``1 - cfg.alpha`` times KD at ``cfg.temperature``, seed 003's loss) from the same initial
    weights and on the same batches.

    Args:
        distill: From :func:`prepare_distillation_data`.
        split: From :func:`load_and_split_data` (its loaders are replaced by ``distill``'s).
        cfg: From :func:`~kd_toolkit.pipeline.resolve_config`.
        output_dir: Root of the run.
        progress_bar: Show Lightning's progress bars.

    Returns:
        ``(regular, distilled)``.
    """
    runs = []
    for role, teacher in (("student_regular", None), ("student_distilled", distill.teacher)):
        model = _build_model(cfg.student, split, cfg.seed)
        runs.append(_train(cfg.student, role, model, teacher, (distill.train_loader, distill.val_loader), cfg,
                           cfg.epochs, cfg.lr, Path(output_dir), progress_bar))
    return runs[0], runs[1]


# ------------------------------------------------------------------------------------------ running
def run_pipeline(output_dir: str | Path | None = None, data: str = "digits", *, epochs: int | None = None,
                 teacher_epochs: int | None = None, temperature: float | None = None, alpha: float | None = None,
                 seed: int = 0, batch_size: int | None = None, lr: float | None = None,
                 teacher_lr: float | None = None, teacher: str | None = None, student: str | None = None,
                 limit_batches: int | float | None = None, num_threads: int | None = None,
                 progress_bar: bool = True, save_predictions: bool = True, print_results: bool = True) -> dict[str, Any]:
    """Teacher → regular student → distilled student → test evaluation → models, metrics, plots, report.

    Args:
        output_dir: where everything is written (see :mod:`kd_toolkit.pipeline`); ``None``: one folder per
            data set, ``runs/pipeline`` for digits and ``runs/pipeline_mnist`` for MNIST
            (:func:`~kd_toolkit.pipeline.default_output_dir`).
        data: ``"digits"`` (embedded 8x8 digits) or ``"mnist:DIR"`` (MNIST IDX files in ``DIR``).
        epochs: epochs of each student. ``None`` arguments take the dataset's :data:`DEFAULTS`.
        teacher_epochs: epochs of the teacher.
        temperature: distillation temperature ``T``.
        alpha: weight of the label cross-entropy; the KD term gets ``1 - alpha`` (seed 003's
            ``alpha * hard_loss + (1 - alpha) * soft_loss``).
        seed: seed of the data split, the initial weights and the batch order.
        batch_size: batch size of every loader.
        lr: Adam learning rate of both students.
        teacher_lr: Adam learning rate of the teacher.
        teacher: registry name of the teacher (:func:`kd_toolkit.models.list_models`).
        student: registry name of both students.
        limit_batches: Lightning's ``limit_train_batches``/``limit_val_batches`` (int: batches, float: fraction).
        num_threads: torch CPU threads during the run (restored afterwards). Default
            :data:`~kd_toolkit.pipeline.DEFAULT_NUM_THREADS` (1): on a CPU shared with other jobs, torch's spinning
            worker threads made these small models 5-30x slower with 2 threads.
        progress_bar: show Lightning's progress bars.
        save_predictions: write ``results/predictions/test_predictions.csv``.
        print_results: print stage headers and the comparison table.

    Returns:
        The summary (also ``results/metrics/summary.json``): config, splits, per-model test accuracy, loss,
        params, train time, best epoch, ``kd_gain`` (distilled minus regular test accuracy) and the files.

    The saved models load back with :func:`~kd_toolkit.pipeline.load_pipeline_model` (``models/*.pt``), or as
    plain state dicts (``models/*.pth``, seed 003's files) into the registry model named in the summary::

        teacher = load_pipeline_model("runs/pipeline/models/teacher_model.pt")
        student = create_model("seed003_student")  # MNIST runs: seed 003's own StudentModel loads it as well
        student.load_state_dict(torch.load("runs/pipeline_mnist/models/student_distilled.pth"))
    """
    cfg = resolve_config(data, seed=seed, teacher=teacher, student=student, limit_batches=limit_batches,
                         epochs=epochs, teacher_epochs=teacher_epochs, temperature=temperature, alpha=alpha,
                         batch_size=batch_size, lr=lr, teacher_lr=teacher_lr, num_threads=num_threads)
    out = default_output_dir(data) if output_dir is None else Path(output_dir)
    with torch_threads(cfg.num_threads):
        return _run(cfg, out, progress_bar, save_predictions, print_results)


@contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """Set torch's intra-op CPU threads to ``count`` (``None``: leave them) for the block, then restore them.

    Example:
        >>> before = torch.get_num_threads()
        >>> with torch_threads(1):
        ...     torch.get_num_threads()
        1
        >>> torch.get_num_threads() == before
        True
    """
    previous = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _run(cfg: PipelineConfig, out: Path, progress_bar: bool, save_predictions: bool,
         print_results: bool) -> dict[str, Any]:
    say = _printer(print_results)
    start = time.perf_counter()
    say(f"[1/5] Loading data: {cfg.data}")
    split = load_and_split_data(cfg.data, cfg.batch_size, cfg.seed)
    _build_model(cfg.student, split, cfg.seed)  # a student that can't take these inputs fails before any training
    say(f"[2/5] Training the teacher {cfg.teacher!r} for {cfg.teacher_epochs} epochs")
    teacher_run = train_teacher(split, cfg, out, progress_bar)
    say(_result_line("teacher", teacher_run))
    distill = prepare_distillation_data(teacher_run.model, split.train_loader, split.val_loader)
    say(f"[3/5] Training the regular and the distilled student {cfg.student!r} for {cfg.epochs} epochs each "
        f"(T={cfg.temperature:g}, alpha={cfg.alpha:g})")
    regular, distilled = train_students(distill, split, cfg, out, progress_bar)
    say(_result_line("regular student", regular) + "\n" + _result_line("distilled student", distilled))
    runs = {"teacher": teacher_run, "student_regular": regular, "student_distilled": distilled}
    say("[4/5] Evaluating the best checkpoints on the test split")
    results = evaluate_all_models({k: r.model for k, r in runs.items()}, split.test_loader, split.num_classes)
    say(f"[5/5] Writing models, metrics, plots and the report to {str(out)!r}")
    summary = save_and_visualize_results(out, runs, results, split, config=asdict(cfg), start_time=start,
                                         save_predictions=save_predictions)
    if print_results:
        print_summary(summary)
    return summary


def _result_line(label: str, run: TrainedModel) -> str:
    best = "no validation" if run.best_val_accuracy is None else \
        f"best val acc {100 * run.best_val_accuracy:.2f}% at epoch {run.best_epoch}"
    return f"      {label}: {best}, {run.train_time_s:.1f} s"


def _printer(enabled: bool) -> Callable[[str], None]:
    if not enabled:
        return lambda message: None
    from rich.console import Console

    console = Console()
    return lambda message: console.print(f"[bold cyan]{message}[/]")
