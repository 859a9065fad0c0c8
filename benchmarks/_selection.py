"""Shared by the ensemble and logit-loss protocols: a validation split carved from the training part, one
student run evaluated on validation and test, and hyperparameter selection on validation only.

Selection: every candidate configuration of an arm is trained on the fit part for each *selection* seed (all seeds,
or the first one to save time); the configuration with the best *mean validation* accuracy over those seeds is
chosen and trained for the remaining seeds, and the arm reports that configuration's *test* accuracies (mean ± std
over all seeds). The test split never takes part in a choice. Identical student runs (same data, teacher objects,
seed and settings; deterministic) are computed once per process, so protocols that share an arm share its runs.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn

from benchmarks._common import RESULTS_DIR, Split, accuracy, machine_info, mean_std, quiet_trainer_kwargs, write_json
from kd_toolkit.data import make_loader, stratified_split
from kd_toolkit.models import create_model

#: Epochs of the 784-800-800-10 students of the ensemble and logit-loss protocols (equal, so that in a suite the two
#: share their ``plain`` and single-teacher KD runs).
MNIST_STUDENT_EPOCHS = 10
_RUNS: dict[tuple[Any, ...], tuple[dict[str, float], Any]] = {}  # run_student's memo (the value keeps the teachers alive)


def carve_validation(split: Split, fraction: float = 0.1, seed: int = 0) -> tuple[Split, Split]:
    """``(fit/test, fit/val)``: ``fraction`` of the training part (stratified) becomes the validation split."""
    fit_idx, val_idx = stratified_split(split.y_train.numpy(), [1 - fraction, fraction], seed=seed)
    fit_i, val_i = torch.from_numpy(fit_idx), torch.from_numpy(val_idx)
    x_fit, y_fit = split.x_train[fit_i], split.y_train[fit_i]
    key = f"{split.key}-fit{fraction:g}"
    return (Split(x_fit, y_fit, split.x_test, split.y_test, key),
            Split(x_fit, y_fit, split.x_train[val_i], split.y_train[val_i], key + "-val"))


def run_student(test: Split, val: Split, student_name: str, teacher: Any, seed: int, epochs: int, *,
                lr: float, batch_size: int, scheduler: str, temperature: float = 4.0,
                loss_weights: dict[str, float] | None = None, module_kwargs: dict[str, Any] | None = None,
                ) -> dict[str, float]:
    """Train a fresh ``student_name`` on ``test.x_train`` (labels alone when ``teacher`` is None; teacher logits
    cached: students see no augmentation) and return its validation and test accuracy after the last epoch."""
    from kd_toolkit import KnowledgeDistillationTraining

    teachers = tuple(teacher.values() if isinstance(teacher, dict) else teacher if isinstance(teacher, list) else
                     [teacher])
    key = (test.key, val.key, student_name, tuple(id(t) for t in teachers), seed, epochs, lr, batch_size, scheduler,
           temperature if teacher is not None else None, repr(loss_weights if teacher is not None else None),
           repr(module_kwargs if teacher is not None else None), torch.get_num_threads())
    if test.key and val.key and key in _RUNS:
        return dict(_RUNS[key][0])
    pl.seed_everything(seed, verbose=False)
    student = create_model(student_name)
    loader = make_loader(test.x_train, test.y_train, batch_size, shuffle=True)
    with tempfile.TemporaryDirectory() as root:
        kd = KnowledgeDistillationTraining(
            teacher_model=teacher, student_model=student, train_data_loader=loader, num_gpu_used=0,
            max_epoch=epochs, learning_rate=lr, scheduler_method=scheduler, temperature=temperature,
            final_loss_coeff_dict=loss_weights if teacher is not None else None, seed=seed, precision=32,
            track_grad_norm=None, cache_teacher_outputs=teacher is not None, checkpointing=False,
            csv_logging=False, default_root_dir=root, module_kwargs=module_kwargs if teacher is not None else None,
            **quiet_trainer_kwargs(),
        )
        kd.fit()
    result = {"val": accuracy(student, val.x_test, val.y_test), "test": accuracy(student, test.x_test, test.y_test)}
    _RUNS[key] = (result, teachers)
    return dict(result)


def select_on_validation(candidates: dict[str, dict[str, Any]], seeds: Sequence[int],
                         train: Callable[[dict[str, Any], int], dict[str, float]],
                         select_seeds: Sequence[int] | None = None) -> dict[str, Any]:
    """Train every candidate for the selection seeds; choose by mean validation accuracy over them; train the choice
    for the other ``seeds`` and report its test figures over all ``seeds``.

    Args:
        candidates: ``{label: settings}``; ``train(settings, seed)`` returns ``{"val": acc, "test": acc}``.
        select_seeds: the seeds the choice is made on (default: all ``seeds``).
    """
    chooser = [s for s in seeds if select_seeds is None or s in select_seeds] or list(seeds)
    runs = {label: {seed: train(settings, seed) for seed in chooser} for label, settings in candidates.items()}
    val_means = {label: mean_std([r["val"] for r in per_seed.values()])["mean"] for label, per_seed in runs.items()}
    chosen = max(val_means, key=lambda label: val_means[label])
    final = {seed: runs[chosen][seed] if seed in runs[chosen] else train(candidates[chosen], seed) for seed in seeds}
    return {"chosen": chosen, "settings": candidates[chosen], "selection_seeds": chooser,
            "test_acc": mean_std([r["test"] for r in final.values()]),
            "val_acc": mean_std([r["val"] for r in final.values()]),
            "per_seed_test": {s: r["test"] for s, r in final.items()},
            "candidates": {label: {"val_mean": val_means[label],
                                   "test_mean": mean_std([r["test"] for r in per_seed.values()])["mean"]}
                           for label, per_seed in runs.items()}}


def teacher_accuracy(teacher: nn.Module, split: Split, val: Split) -> dict[str, float]:
    return {"val": accuracy(teacher, val.x_test, val.y_test), "test": accuracy(teacher, split.x_test, split.y_test)}


def main(name: str, run: Callable[..., dict[str, Any]], doc: str, argv: list[str] | None = None) -> int:
    """``python -m benchmarks.<name> [--quick] [--out-dir DIR] [--threads N]``: run, record the command, print."""
    parser = argparse.ArgumentParser(prog=f"python -m benchmarks.{name}", description=doc.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke mode (~1-2 min): checks the script, not a result")
    parser.add_argument("--out-dir", type=Path, default=None,
                        help="default: benchmarks/results (full) or benchmarks/results/quick (--quick)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    out_dir = args.out_dir or (RESULTS_DIR / "quick" if args.quick else RESULTS_DIR)
    command = f"python -m benchmarks.{name} " + " ".join(argv if argv is not None else sys.argv[1:])
    machine = machine_info()
    data = run(quick=args.quick, out_dir=out_dir)
    data.update(command=command.strip(), machine=machine, load_average_end=machine_info()["load_average"],
                threads=args.threads)
    path = write_json(out_dir, name, data)
    print(f"[benchmarks.{name}] wrote {path} in {data.get('seconds', 0):.0f} s")
    print(summary_lines(data))
    return 0


def summary_lines(data: dict[str, Any]) -> str:
    """A short text table of every arm's chosen test accuracy (for the terminal)."""
    lines = []
    for section, arms in data.get("summary", {}).items():
        for arm, text in arms.items():
            lines.append(f"  {section:>12} | {arm:<24} | {text}")
    return "\n".join(lines)
