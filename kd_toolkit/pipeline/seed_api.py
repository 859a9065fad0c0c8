"""Seed 003's ``main.py`` call forms (ranzeet013/knowledge-distillation) over the kd_toolkit pipeline.

The seed's functions, with its positional arguments and return tuples, each a thin layer over
:mod:`kd_toolkit.pipeline.run` (training through :class:`~kd_toolkit.training.KnowledgeDistillationTraining`):
:func:`initialize_directories`, :func:`load_and_split_data`, :func:`train_teacher`,
:func:`prepare_distillation_data`, :func:`train_students`, :func:`evaluate_all_models`,
:func:`save_and_visualize_results` and :func:`main`. The settings are this module's attributes, named and
valued as in the seed's ``config.py``, and read when a function runs (``seed_api.EPOCHS = 1`` takes effect):
``DEVICE``, ``BATCH_SIZE = 128``, ``TEST_SIZE = 0.1``, ``RANDOM_STATE = 42``, ``EPOCHS = 10``,
``TEMPERATURE = 5``, ``ALPHA = 0.5`` (weight of the label cross-entropy: the loss is
``ALPHA * hard_loss + (1 - ALPHA) * soft_loss``, the seed's ``distillation_loss``), plus ``DATA_DIR``
(``./data``, the seed's torchvision folder: IDX files directly in it or under ``MNIST/raw``), ``OUTPUT_DIR``
(``.``: ``models/`` and ``results/`` go where the seed wrote them), ``LEARNING_RATE`` (Adam's default, as the
seed's ``Adam(params)``), ``TEACHER``/``STUDENT`` (registry names; default the seed's architectures),
``LIMIT_BATCHES``, ``NUM_THREADS`` and ``PROGRESS_BAR``.

Example:
    >>> from kd_toolkit.pipeline import seed_api as main
    >>> main.DATA_DIR, main.EPOCHS = "../shared/data/mnist-test", 1  # doctest: +SKIP
    >>> train_loader, val_loader, *_ = main.load_and_split_data()  # doctest: +SKIP
    >>> teacher, *_ = main.train_teacher(train_loader, val_loader)  # doctest: +SKIP
"""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

from kd_toolkit._io import save_torch, write_json
from kd_toolkit.core import logits_of, split_batch
from kd_toolkit.data import TensorBatchDataset, mnist_tensors, passthrough_collate, stratified_split
from kd_toolkit.pipeline.config import DEFAULT_NUM_THREADS, PipelineConfig, resolve_config
from kd_toolkit.pipeline.evaluation import _predict
from kd_toolkit.pipeline.evaluation import evaluate_all_models as _evaluate_models
from kd_toolkit.pipeline.plots import (
    plot_accuracy_comparison,
    plot_prediction_examples,
    plot_teacher_training,
    plot_training_curves,
)
from kd_toolkit.pipeline.run import _build_model, _train, torch_threads

__all__ = [
    "ALPHA", "BATCH_SIZE", "DEVICE", "EPOCHS", "RANDOM_STATE", "TEMPERATURE", "TEST_SIZE", "DistillDataset",
    "evaluate_all_models", "initialize_directories", "load_and_split_data", "main", "prepare_distillation_data",
    "save_and_visualize_results", "train_students", "train_teacher",
]

# ------------------------------------------------------------------- settings (the seed's config.py)
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
BATCH_SIZE = 128
TEST_SIZE = 0.1  # validation fraction of the training images
RANDOM_STATE = 42
EPOCHS = 10
TEMPERATURE = 5
ALPHA = 0.5  # weight of the hard (label) loss; the soft (KD) loss gets 1 - ALPHA
DATA_DIR: str | Path = "./data"
OUTPUT_DIR: str | Path = "."
LEARNING_RATE = 1e-3
TEACHER, STUDENT = "seed003_teacher", "seed003_student"
LIMIT_BATCHES: int | float | None = None
NUM_THREADS: int | None = DEFAULT_NUM_THREADS
PROGRESS_BAR = True
_TEST_FRACTION = 0.2  # held out for testing when only MNIST's test files exist

MODEL_FILES = {"teacher": "teacher_model.pth", "student_regular": "student_regular.pth",
               "student_distilled": "student_distilled.pth"}


def _config() -> PipelineConfig:
    """The settings above, checked (a bad value raises ``ValueError`` naming it)."""
    return resolve_config(f"mnist:{DATA_DIR}", seed=RANDOM_STATE, teacher=TEACHER, student=STUDENT,
                          limit_batches=LIMIT_BATCHES, epochs=EPOCHS, teacher_epochs=EPOCHS,
                          temperature=TEMPERATURE, alpha=ALPHA, batch_size=BATCH_SIZE, lr=LEARNING_RATE,
                          teacher_lr=LEARNING_RATE)


def _path(*parts: str) -> Path:
    return Path(OUTPUT_DIR, *parts)


def initialize_directories() -> None:
    """Create ``models/`` and ``results/{metrics,predictions,plots}`` under ``OUTPUT_DIR``."""
    for folder in ("models", "results/metrics", "results/predictions", "results/plots"):
        os.makedirs(_path(folder), exist_ok=True)


# ---------------------------------------------------------------------------------------- data
def load_and_split_data() -> tuple[DataLoader, DataLoader, DataLoader, Subset, Subset, Dataset]:
    """MNIST from ``DATA_DIR``, split stratified at random; prints the split sizes.

    With the training files, ``TEST_SIZE`` of the 60,000 training images (stratified, ``RANDOM_STATE``, as the
    seed's ``train_test_split``) are the validation set and the test file is the test set. With only the test
    files, their 10,000 images are split 70/10/20 % into train/val/test (stratified at random: the first 5,000
    are easier than the last 5,000).

    Returns:
        ``(train_loader, val_loader, test_loader, train_subset, val_subset, test_dataset)``; the loaders yield
        ``(x (B, 1, 28, 28) normalised with MNIST's mean/std, y (B,))``, the training loader shuffled.

    Raises:
        FileNotFoundError: when ``DATA_DIR`` holds no MNIST test files.
    """
    try:
        x, y = mnist_tensors(DATA_DIR, "train")
        test_dataset: Dataset = TensorBatchDataset(*mnist_tensors(DATA_DIR, "test"))
        from sklearn.model_selection import train_test_split

        train_idx, val_idx = train_test_split(np.arange(len(y)), test_size=TEST_SIZE, random_state=RANDOM_STATE,
                                              shuffle=True, stratify=y.numpy())
    except FileNotFoundError:
        x, y = mnist_tensors(DATA_DIR, "test")
        train_idx, val_idx, test_idx = stratified_split(y, [1 - TEST_SIZE - _TEST_FRACTION, TEST_SIZE,
                                                            _TEST_FRACTION], RANDOM_STATE)
        test_dataset = Subset(TensorBatchDataset(x, y), test_idx.tolist())
    full = TensorBatchDataset(x, y)
    train_subset, val_subset = Subset(full, train_idx.tolist()), Subset(full, val_idx.tolist())
    train_loader = _loader(train_subset, shuffle=True)
    val_loader, test_loader = _loader(val_subset), _loader(test_dataset)
    print("\nDataset sizes:")
    print(f"Training samples: {len(train_subset)}")
    print(f"Validation samples: {len(val_subset)}")
    print(f"Test samples: {len(test_dataset)}")  # type: ignore[arg-type]
    return train_loader, val_loader, test_loader, train_subset, val_subset, test_dataset


def _loader(dataset: Dataset, shuffle: bool = False) -> DataLoader:
    return DataLoader(dataset, batch_size=BATCH_SIZE, shuffle=shuffle, collate_fn=passthrough_collate)


class DistillDataset(Dataset):
    """The seed's ``DistillDataset``: ``dataset[i]`` with the teacher's logits for sample ``i`` appended.

    Args:
        dataset: Yields ``(x, y)``.
        teacher_logits: ``(len(dataset), C)``, row ``i`` for sample ``i``.

    Example:
        >>> ds = DistillDataset(TensorBatchDataset(torch.zeros(3, 2), torch.arange(3)), torch.eye(3))
        >>> [t.tolist() for t in ds[1]]
        [[0.0, 0.0], 1, [0.0, 1.0, 0.0]]
    """

    def __init__(self, dataset: Dataset, teacher_logits: Tensor) -> None:
        if len(dataset) != len(teacher_logits):  # type: ignore[arg-type]
            raise ValueError(f"Expected one row of `teacher_logits` per sample ({len(dataset)}), but got "  # type: ignore[arg-type]
                             f"{len(teacher_logits)}.")
        self.dataset, self.teacher_logits = dataset, teacher_logits

    def __len__(self) -> int:
        return len(self.teacher_logits)

    def __getitem__(self, index: int) -> tuple[Any, Any, Tensor]:
        x, y = self.dataset[index][:2]
        return x, y, self.teacher_logits[index]


# ------------------------------------------------------------------------------------ training
class _TrainAccuracy(pl.Callback):
    """Running training accuracy per epoch (the seed's ``train_acc``): the student's outputs on each
    training batch, in train mode, against its labels."""

    def __init__(self) -> None:
        self.per_epoch: list[float] = []
        self._counts = [0, 0]
        self._output: Any = None
        self._hook: Any = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        student = getattr(pl_module, "student", pl_module)
        self._hook = student.register_forward_hook(lambda _m, _i, output: setattr(self, "_output", output))

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._counts = [0, 0]

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        _, y, _ = split_batch(batch)
        if self._output is not None and y is not None:
            pred = logits_of(self._output).detach().argmax(-1)  # (B,)
            self._counts[0] += int((pred == y.to(pred.device)).sum())
            self._counts[1] += len(y)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.per_epoch.append(self._counts[0] / max(1, self._counts[1]))

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._hook is not None:
            self._hook.remove()


def _fit(name: str, role: str, teacher: nn.Module | None, train_loader: DataLoader, val_loader: DataLoader,
         cfg: PipelineConfig) -> tuple[nn.Module, list[float], list[float], list[float], list[float]]:
    """One training; ``(model on DEVICE, train_loss, val_loss, train_acc, val_acc)`` per epoch."""
    info = SimpleNamespace(num_classes=10, name="mnist", train_dataset=train_loader.dataset)
    accuracy = _TrainAccuracy()
    with torch_threads(NUM_THREADS):
        model = _build_model(name, info, cfg.seed)
        run = _train(name, role, model, teacher, (train_loader, val_loader), cfg, cfg.epochs, cfg.lr,
                     Path(OUTPUT_DIR), PROGRESS_BAR, callbacks=(accuracy,))
    rows: list[dict[str, Any]] = run.history
    for row, acc in zip(rows, accuracy.per_epoch):
        print(f"{role} epoch {int(row['epoch']) + 1}/{len(rows)}: Train Loss: {row['train_loss']:.4f}, Train Acc: "
              f"{acc:.4f}, Val Loss: {row['val_loss']:.4f}, Val Acc: {row['val_acc']:.4f}")
    return (run.model.to(DEVICE), [float(r["train_loss"]) for r in rows], [float(r["val_loss"]) for r in rows],
            accuracy.per_epoch[: len(rows)], [float(r["val_acc"]) for r in rows])


def _history(train_loss: list, val_loss: list, train_acc: list, val_acc: list) -> list[dict[str, Any]]:
    return [{"epoch": i, "train_loss": tl, "val_loss": vl, "train_acc": ta, "val_acc": va}
            for i, (tl, vl, ta, va) in enumerate(zip(train_loss, val_loss, train_acc, val_acc))]


def train_teacher(train_loader: DataLoader, val_loader: DataLoader) -> tuple[nn.Module, list, list, list, list]:
    """Train ``TEACHER`` (the seed's CNN) for ``EPOCHS`` with Adam on the labels; writes
    ``results/plots/teacher_training.png``. The weights of the epoch with the best validation accuracy are kept.

    Returns:
        ``(model, train_loss, val_loss, train_acc, val_acc)``, one float per epoch in each list.
    """
    print("\nTraining Teacher Model...")
    teacher, *metrics = _fit(TEACHER, "teacher", None, train_loader, val_loader, _config())
    plot_teacher_training(_history(*metrics), _path("results", "plots", "teacher_training.png"))
    return (teacher, *metrics)  # type: ignore[return-value]


@torch.no_grad()
def prepare_distillation_data(teacher: nn.Module, train_loader: DataLoader, val_loader: DataLoader,
                              train_subset: Dataset, val_subset: Dataset) -> tuple[DataLoader, DataLoader]:
    """The teacher's logits on both subsets, attached per sample (:class:`DistillDataset`).

    The logits are computed over each subset in order (the seed took them from the *shuffled* training
    loader, so each sample got another sample's logits); the loaders' batch size is reused.

    Returns:
        ``(train_distill_loader, val_distill_loader)`` yielding ``(x, y, teacher_logits)``; the first shuffled.
    """
    print("\nPreparing distillation data...")
    loaders = []
    for subset, source, shuffle in ((train_subset, train_loader, True), (val_subset, val_loader, False)):
        ordered = DataLoader(subset, batch_size=source.batch_size or BATCH_SIZE, collate_fn=passthrough_collate)
        logits, _ = _predict(teacher, ordered)  # (N, C), row i = sample i
        loaders.append(DataLoader(DistillDataset(subset, logits), batch_size=BATCH_SIZE, shuffle=shuffle))
    return loaders[0], loaders[1]


def train_students(teacher: nn.Module, train_loader: DataLoader, val_loader: DataLoader,
                   train_distill_loader: DataLoader, val_distill_loader: DataLoader) -> tuple[Any, ...]:
    """Train the regular student on ``train_loader`` and the distilled one on ``train_distill_loader`` with
    ``ALPHA * hard + (1 - ALPHA) * KD`` at ``TEMPERATURE``, from the same initial weights. The KD targets are
    ``teacher``'s logits, computed once per sample (the values the distill loaders carry).

    Returns:
        ``(student_reg, student_dist, reg_train_loss, reg_val_loss, reg_train_acc, reg_val_acc,
        dist_train_loss, dist_val_loss, dist_train_acc, dist_val_acc)``.
    """
    print("\nTraining Student Models...")
    cfg = _config()
    print("\nTraining Regular Student...")
    regular = _fit(STUDENT, "student_regular", None, train_loader, val_loader, cfg)
    print("\nTraining Distilled Student...")
    distilled = _fit(STUDENT, "student_distilled", teacher.eval().requires_grad_(False), train_distill_loader,
                     val_distill_loader, cfg)
    return (regular[0], distilled[0], *regular[1:], *distilled[1:])


# ---------------------------------------------------------------------------- evaluation, files
def evaluate_all_models(teacher: nn.Module, student_reg: nn.Module, student_dist: nn.Module,
                        test_loader: DataLoader) -> tuple[Any, ...]:
    """Test accuracy and predictions of the three models; prints the accuracies.

    Returns:
        ``(teacher_acc, reg_acc, dist_acc, teacher_preds, reg_preds, dist_preds, teacher_targets)``: accuracies
        as fractions in [0, 1], predictions and targets as int64 numpy arrays in the loader's order.
    """
    print("\nEvaluating Models on Test Set...")
    res = _evaluate_models({"teacher": teacher, "student_regular": student_reg, "student_distilled": student_dist},
                           test_loader)
    print("\nTest Accuracies:")
    for label, key in (("Teacher", "teacher"), ("Regular Student", "student_regular"),
                       ("Distilled Student", "student_distilled")):
        print(f"{label}: {res[key]['test_accuracy']:.4f}")
    keys = ("teacher", "student_regular", "student_distilled")
    return (*(res[k]["test_accuracy"] for k in keys), *(res[k]["predictions"] for k in keys),
            res["teacher"]["labels"])


def save_and_visualize_results(teacher: nn.Module, student_reg: nn.Module, student_dist: nn.Module,
                               train_metrics: tuple, test_metrics: tuple, test_loader: DataLoader) -> None:
    """Write ``models/{teacher_model,student_regular,student_distilled}.pth`` (bare state dicts, as the seed's
    ``torch.save(model.state_dict(), ...)``), ``results/plots/{training_curves,accuracy_comparison,
    prediction_examples}.png`` and ``results/metrics/test_metrics.json`` under ``OUTPUT_DIR``.

    Args:
        teacher: The teacher.
        student_reg: The regular student.
        student_dist: The distilled student.
        train_metrics: The 12 per-epoch lists: teacher, regular, distilled, each
            ``(train_loss, val_loss, train_acc, val_acc)``.
        test_metrics: :func:`evaluate_all_models`'s tuple.
        test_loader: The test loader (its first batch is shown in ``prediction_examples.png``).
    """
    print("\nSaving models and results...")
    models = {"teacher": teacher, "student_regular": student_reg, "student_distilled": student_dist}
    for key, model in models.items():
        save_torch({k: v.detach().cpu() for k, v in model.state_dict().items()}, _path("models", MODEL_FILES[key]))
    if len(train_metrics) != 12 or len(test_metrics) != 7:
        raise ValueError(f"Expected `train_metrics` of 12 lists and `test_metrics` of 7 values (the seed's tuples),"
                         f" but got {len(train_metrics)} and {len(test_metrics)}.")
    histories = {key: _history(*train_metrics[4 * i: 4 * i + 4]) for i, key in enumerate(models)}
    plots = _path("results", "plots")
    plot_training_curves(histories, plots / "training_curves.png")
    accuracies = dict(zip(models, test_metrics[:3]))
    params = {k: sum(p.numel() for p in m.parameters()) for k, m in models.items()}
    plot_accuracy_comparison(accuracies, plots / "accuracy_comparison.png", params=params)
    images = next(iter(test_loader))[0]  # (B, 1, 28, 28), the seed's first test batch
    count = len(images)
    plot_prediction_examples(images, np.asarray(test_metrics[6])[:count],
                             {k: np.asarray(p)[:count] for k, p in zip(models, test_metrics[3:6])},
                             plots / "prediction_examples.png")
    write_json({"test_accuracy": accuracies, "params": params, "kd_gain": accuracies["student_distilled"]
                - accuracies["student_regular"]}, _path("results", "metrics", "test_metrics.json"))


def main() -> None:
    """The seed's ``main()``: every step in order, files under ``OUTPUT_DIR``."""
    initialize_directories()
    train_loader, val_loader, test_loader, train_subset, val_subset, _ = load_and_split_data()
    teacher, *teacher_metrics = train_teacher(train_loader, val_loader)
    train_distill_loader, val_distill_loader = prepare_distillation_data(teacher, train_loader, val_loader,
                                                                         train_subset, val_subset)
    student_reg, student_dist, *student_metrics = train_students(teacher, train_loader, val_loader,
                                                                 train_distill_loader, val_distill_loader)
    test_metrics = evaluate_all_models(teacher, student_reg, student_dist, test_loader)
    save_and_visualize_results(teacher, student_reg, student_dist, (*teacher_metrics, *student_metrics),
                               test_metrics, test_loader)
    print("\nKnowledge distillation pipeline completed successfully!")
