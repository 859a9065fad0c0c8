"""Protocol 2: the embedded 8x8 digits, 10 seeds: teacher, plain student, KD student.

Cheap and stable enough to catch regressions. Seed ``s`` sets the stratified split
(``DigitsDataModule(seed=s)``: 60% train, 15% val unused, 25% test), the initialisation and the data order.
Teacher: ``digits_teacher`` (64-256-256-10, dropout 0.2); student: ``digits_student`` (64-16-10). The KD
student distils that seed's teacher from cached logits. Figures: test accuracy after the last epoch.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from benchmarks._common import RESULTS_DIR, accuracy, digits_split, fit_kd_toolkit, mean_std, write_json
from benchmarks.hinton_mnist import gap_closed
from kd_toolkit.data import make_loader
from kd_toolkit.models import create_model

NAME = "digits"
FULL: dict[str, Any] = {"seeds": list(range(10)), "teacher_epochs": 20, "student_epochs": 40}
QUICK: dict[str, Any] = {"seeds": [0, 1, 2], "teacher_epochs": 8, "student_epochs": 8}
BATCH, LR, SCHEDULER, TEMPERATURE = 32, 1e-2, "cosine_anneal", 4.0
KD_WEIGHTS = {"kd_loss": 0.9, "hard_loss": 0.1}


def _train(model_name: str, teacher: torch.nn.Module | None, split: Any, seed: int, epochs: int) -> tuple[Any, float]:
    pl.seed_everything(seed, verbose=False)
    model = create_model(model_name)
    loader = make_loader(split.x_train, split.y_train, BATCH, shuffle=True)
    fit_kd_toolkit(model, teacher, loader, epochs, seed, lr=LR, scheduler=SCHEDULER, temperature=TEMPERATURE,
                   weights=KD_WEIGHTS, cached=teacher is not None)
    return model.eval(), accuracy(model, split.x_test, split.y_test)


def run(quick: bool = False, out_dir: Path = RESULTS_DIR, config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run protocol 2 and write ``out_dir/digits.json``.

    Args:
        quick: 3 seeds, 10 epochs.
        out_dir: where the JSON goes.
        config: overrides of :data:`FULL` / :data:`QUICK` keys (``seeds``, ``teacher_epochs``, ``student_epochs``).
    """
    cfg = {**(QUICK if quick else FULL), **(config or {})}
    start = time.perf_counter()
    per_seed: dict[int, dict[str, float]] = {}
    for seed in cfg["seeds"]:
        split, _ = digits_split(seed)
        teacher, t_acc = _train("digits_teacher", None, split, seed, cfg["teacher_epochs"])
        _, plain_acc = _train("digits_student", None, split, seed, cfg["student_epochs"])
        _, kd_acc = _train("digits_student", teacher, split, seed, cfg["student_epochs"])
        per_seed[seed] = {"teacher": t_acc, "plain": plain_acc, "kd": kd_acc,
                          "gap_closed": gap_closed(t_acc, plain_acc, kd_acc)}
    closed = [r["gap_closed"] for r in per_seed.values() if r["gap_closed"] is not None]
    data = {
        "protocol": NAME, "quick": quick, "config": cfg, "figure": "test accuracy after the last epoch",
        "recipe": {"optimizer": "adam", "lr": LR, "schedule": SCHEDULER, "batch_size": BATCH,
                   "temperature": TEMPERATURE, "kd_weights": KD_WEIGHTS, "threads": torch.get_num_threads()},
        "acc": {arm: mean_std([r[arm] for r in per_seed.values()]) for arm in ("teacher", "plain", "kd")},
        "kd_minus_plain": mean_std([r["kd"] - r["plain"] for r in per_seed.values()]),
        "gap_closed": mean_std(closed) if closed else None, "seeds_kd_better": sum(
            r["kd"] > r["plain"] for r in per_seed.values()),
        "per_seed": per_seed, "seconds": time.perf_counter() - start,
    }
    write_json(out_dir, NAME, data)
    return data
