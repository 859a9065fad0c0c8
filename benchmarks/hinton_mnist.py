"""Protocol 1: Hinton et al. (2015) on MNIST, small: does the distilled student really get better?

Data: the 10,000 MNIST test images, split stratified at random 8,000 train / 2,000 test (split seed 0).
Teacher: 784-1200-1200-10 with dropout (0.2 input, 0.5 hidden) and ±2-pixel jitter. Students: 784-800-800-10
and 784-30-30-10 without regularisation or jitter, trained on labels alone ("plain") or with KD
(``0.9 * kd_loss + 0.1 * hard_loss``) at each temperature. Seeds vary initialisation and data order; student
seed ``s`` distils teacher seed ``s``. Every figure is the test accuracy after the last epoch (no early
stopping, no model selection on the test set). The share of the gap closed is
``(kd - plain) / (teacher - plain)`` per seed, then averaged. Students distil cached teacher logits (they see
no jitter, so the cache is exact); the teacher's own jittered data is never cached.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from benchmarks import _mnist
from benchmarks._common import RESULTS_DIR, mean_std, mnist_split, write_json

NAME = "hinton_mnist"
FULL: dict[str, Any] = {
    "seeds": [0, 1, 2], "temperatures": [1, 2, 4, 8, 20], "teacher_epochs": _mnist.TEACHER_EPOCHS,
    "students": {"mnist_student_800": 12, "mnist_student_30": 50}, "n_train": None, "n_test": None,
}
QUICK: dict[str, Any] = {
    "seeds": [0], "temperatures": [4], "teacher_epochs": _mnist.QUICK_TEACHER_EPOCHS,
    "students": {"mnist_student_800": 1, "mnist_student_30": 2}, "n_train": 2000, "n_test": 1000,
}
PAPER = {"source": "Hinton, Vinyals & Dean (2015), full MNIST (60k train)", "test_errors": {
    "teacher": 67, "student_plain": 146, "student_kd": 74}, "gap_closed": (146 - 74) / (146 - 67)}


def gap_closed(teacher: float, plain: float, kd: float) -> float | None:
    """Share of the teacher-student gap that KD closes; ``None`` when the teacher is not better."""
    return (kd - plain) / (teacher - plain) if teacher > plain else None


def run(quick: bool = False, out_dir: Path = RESULTS_DIR, config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run protocol 1 and write ``out_dir/hinton_mnist.json``.

    Args:
        quick: one seed, T=4, a few epochs on a 2,000/1,000 subset (a smoke run, not a result).
        out_dir: where the JSON goes.
        config: overrides of :data:`FULL` / :data:`QUICK` keys.

    Raises:
        BenchmarkSkipped: when the MNIST files are absent.
    """
    cfg = {**(QUICK if quick else FULL), **(config or {})}
    start = time.perf_counter()
    split = mnist_split(seed=0, n_train=cfg["n_train"], n_test=cfg["n_test"])
    teachers = {seed: _mnist.teacher_for(split, seed, cfg["teacher_epochs"])[1] for seed in cfg["seeds"]}
    students: dict[str, Any] = {}
    for name, epochs in cfg["students"].items():
        runs: dict[str, dict[int, dict[str, Any]]] = {"plain": {}}
        for seed in cfg["seeds"]:
            teacher = _mnist.teacher_for(split, seed, cfg["teacher_epochs"])[0]
            runs["plain"][seed] = _mnist.train_student(split, name, None, seed, epochs)
            for temp in cfg["temperatures"]:
                runs.setdefault(f"kd_T{temp:g}", {})[seed] = _mnist.train_student(
                    split, name, teacher, seed, epochs, temperature=float(temp))
        students[name] = _summarise(runs, teachers, cfg, epochs)
    data = {
        "protocol": NAME, "quick": quick, "config": cfg, "figure": "test accuracy after the last epoch",
        "data": {"train": len(split.y_train), "test": len(split.y_test), "split": "stratified at random, seed 0"},
        "recipe": {"optimizer": "adam", "lr": _mnist.LR, "schedule": _mnist.SCHEDULER, "batch_size": _mnist.BATCH,
                   "kd_weights": _mnist.KD_WEIGHTS, "threads": torch.get_num_threads()},
        "teacher": {"acc": mean_std([t["acc"] for t in teachers.values()]), "per_seed": teachers},
        "students": students, "paper": PAPER, "seconds": time.perf_counter() - start,
    }
    write_json(out_dir, NAME, data)
    return data


def _summarise(runs: dict[str, dict[int, dict[str, Any]]], teachers: dict[int, dict[str, Any]], cfg: dict[str, Any],
               epochs: int) -> dict[str, Any]:
    plain = runs["plain"]
    arms: dict[str, Any] = {}
    for arm, per_seed in runs.items():
        entry: dict[str, Any] = {"acc": mean_std([r["acc"] for r in per_seed.values()]),
                                 "epoch_s": mean_std([r["epoch_s"] for r in per_seed.values()])}
        if arm != "plain":
            closed = [gap_closed(teachers[s]["acc"], plain[s]["acc"], r["acc"]) for s, r in per_seed.items()]
            entry["gap_closed"] = mean_std([c for c in closed if c is not None]) if all(
                c is not None for c in closed) else None
        arms[arm] = entry
    kd_arms = [a for a in arms if a != "plain"]
    best = max(kd_arms, key=lambda a: arms[a]["acc"]["mean"]) if kd_arms else None
    return {"epochs": epochs, "arms": arms, "best_temperature": best,
            "gap_closed_at_best": arms[best].get("gap_closed") if best else None}
