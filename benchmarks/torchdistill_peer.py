"""Protocol 5: torchdistill side by side with kd_toolkit on protocol 1's Hinton KD.

Both frameworks distil protocol 1's teacher (seed ``s``) into the same 784-800-800-10 student (same initial
weights), on the same data in the same order (same in-memory dataset; torchdistill gets kd_toolkit's
batch collate through its own collate registry), with the same loss, optimizer and schedule: Adam,
per-step cosine decay, ``0.9 * T^2 * KL + 0.1 * CE``. torchdistill's ``KDLoss`` ``alpha`` weights the *hard*
cross-entropy term, so ``alpha = 0.1`` here. torchdistill ships no training loop and does not put the teacher
in eval mode, so the loop below is written as its examples write it, with ``teacher.eval()`` first. Both use
the live teacher (kd_toolkit's cache would make it faster; protocol 4 measures that). Figures: test accuracy
after the last epoch and steady-state seconds per epoch, runs alternating between the frameworks.
"""

from __future__ import annotations

import copy
import logging
import math
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import RandomSampler

from benchmarks import _mnist
from benchmarks._common import (
    RESULTS_DIR,
    BenchmarkSkipped,
    EpochClock,
    Split,
    accuracy,
    mean_std,
    median,
    write_json,
)
from kd_toolkit.data import TensorBatchDataset, passthrough_collate
from kd_toolkit.models import create_model

NAME = "torchdistill"
FULL: dict[str, Any] = {"seeds": [0, 1, 2], "teacher_epochs": _mnist.TEACHER_EPOCHS, "epochs": 8,
                        "temperature": 4.0, "n_train": None, "n_test": None}
QUICK: dict[str, Any] = {"seeds": [0], "teacher_epochs": _mnist.QUICK_TEACHER_EPOCHS, "epochs": 2,
                         "temperature": 4.0, "n_train": 2000, "n_test": 1000}
STUDENT = "mnist_student_800"
_COLLATE_KEY = "kd_toolkit_passthrough_collate"


def _import_torchdistill() -> Any:
    try:
        import torchdistill
        from torchdistill.core.distillation import get_distillation_box
        from torchdistill.datasets.registry import COLLATE_FUNC_DICT, register_collate_func
    except Exception as err:
        raise BenchmarkSkipped(f"torchdistill cannot be imported ({type(err).__name__}: {err}); "
                               "install it with `pip install torchdistill` to run protocol 5.") from err
    if _COLLATE_KEY not in COLLATE_FUNC_DICT:
        register_collate_func(passthrough_collate, key=_COLLATE_KEY)
    for name in ("torchdistill", "torchdistill.core", "torchdistill.models", "torchdistill.common"):
        logging.getLogger(name).setLevel(logging.WARNING)
    return torchdistill, get_distillation_box


def torchdistill_config(epochs: int, steps: int, temperature: float) -> dict[str, Any]:
    """torchdistill's training config for Hinton KD with kd_toolkit's recipe (see the module docstring)."""
    hard = _mnist.KD_WEIGHTS["hard_loss"]
    return {
        "num_epochs": epochs,
        "train_data_loader": {"dataset_id": "train", "requires_supp": False, "collate_fn": _COLLATE_KEY,
                              "sampler": {"class_or_func": RandomSampler, "kwargs": {}},
                              "kwargs": {"batch_size": _mnist.BATCH, "num_workers": 0, "drop_last": False}},
        "teacher": {"forward_proc": "forward_batch_only", "sequential": [], "requires_grad": False},
        "student": {"forward_proc": "forward_batch_only", "sequential": [], "requires_grad": True},
        "optimizer": {"key": "Adam", "kwargs": {"lr": _mnist.LR}},
        "scheduler": {"key": "CosineAnnealingLR", "kwargs": {"T_max": epochs * steps, "eta_min": 0.0},
                      "scheduling_step": 1},
        "criterion": {"key": "WeightedSumLoss", "kwargs": {"sub_terms": {"kd": {"weight": 1.0, "criterion": {
            "key": "KDLoss", "kwargs": {"student_module_path": ".", "student_module_io": "output",
                                        "teacher_module_path": ".", "teacher_module_io": "output",
                                        "temperature": temperature, "alpha": hard, "beta": 1.0 - hard,
                                        "reduction": "batchmean"}}}}}},
    }


def torchdistill_fit(student: nn.Module, teacher: nn.Module, split: Split, epochs: int, seed: int,
                     temperature: float) -> dict[str, Any]:
    """Train ``student`` with torchdistill's ``DistillationBox``; return the epoch clock summary."""
    _, get_distillation_box = _import_torchdistill()
    pl.seed_everything(seed, verbose=False)
    clock = EpochClock()
    teacher.eval()  # torchdistill leaves the teacher's mode alone; dropout must be off
    steps = math.ceil(len(split.y_train) / _mnist.BATCH)
    box = get_distillation_box(teacher, student, {"train": TensorBatchDataset(split.x_train, split.y_train)},
                               torchdistill_config(epochs, steps, temperature), torch.device("cpu"), None, False, 1)
    for epoch in range(epochs):
        box.pre_epoch_process(epoch=epoch)
        loss_sum, count = torch.zeros(()), 0
        for sample_batch, targets in box.train_data_loader:
            loss = box.forward_process(sample_batch, targets, None)
            box.post_forward_process(loss=loss)
            loss_sum += loss.detach() * len(targets)
            count += len(targets)
        box.post_epoch_process()
        clock.losses.append(float(loss_sum / count))
        clock.stamp()
    return clock.summary()


def run(quick: bool = False, out_dir: Path = RESULTS_DIR, config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run protocol 5 and write ``out_dir/torchdistill.json``.

    Raises:
        BenchmarkSkipped: when torchdistill cannot be imported or the MNIST files are absent.
    """
    torchdistill, _ = _import_torchdistill()
    cfg = {**(QUICK if quick else FULL), **(config or {})}
    split = _mnist.hinton_split(cfg["n_train"], cfg["n_test"])[0]  # protocol 1's data and teachers
    temp, epochs = float(cfg["temperature"]), cfg["epochs"]
    per_seed: dict[int, dict[str, Any]] = {}
    for seed in cfg["seeds"]:
        teacher, _ = _mnist.teacher_for(split, seed, cfg["teacher_epochs"])
        pl.seed_everything(seed, verbose=False)
        template = create_model(STUDENT)
        results: dict[str, Any] = {}
        order = ["kd_toolkit", "torchdistill"] if seed % 2 == 0 else ["torchdistill", "kd_toolkit"]
        for framework in order:
            student = copy.deepcopy(template)
            if framework == "kd_toolkit":
                clock = _mnist.fit(student, teacher, _loader(split), epochs, seed, temperature=temp, cached=False)
            else:
                clock = torchdistill_fit(student, teacher, split, epochs, seed, temp)
            results[framework] = {**clock, "acc": accuracy(student, split.x_test, split.y_test)}
        per_seed[seed] = results
    frameworks = ("kd_toolkit", "torchdistill")
    summary = {f: {"acc": mean_std([per_seed[s][f]["acc"] for s in per_seed]),
                   "epoch_s": mean_std([per_seed[s][f]["epoch_s"] for s in per_seed]),
                   "cpu_epoch_s": mean_std([per_seed[s][f]["cpu_epoch_s"] for s in per_seed])} for f in frameworks}
    ratios = [per_seed[s]["kd_toolkit"]["epoch_s"] / per_seed[s]["torchdistill"]["epoch_s"] for s in per_seed]
    n_test = len(split.y_test)
    diff_images = [round((per_seed[s]["kd_toolkit"]["acc"] - per_seed[s]["torchdistill"]["acc"]) * n_test) for s in per_seed]
    data = {
        "protocol": NAME, "quick": quick, "config": cfg, "student": STUDENT, "torchdistill_version": torchdistill.__version__,
        "figure": "test accuracy after the last epoch; steady-state seconds per epoch",
        "frameworks": summary, "epoch_time_ratio_kd_toolkit_vs_torchdistill": median(ratios), "ratio_all": ratios,
        "test_images": n_test, "correct_minus_torchdistill_per_seed": diff_images,
        "per_seed": per_seed, "threads": torch.get_num_threads(),
    }
    write_json(out_dir, NAME, data)
    return data


def _loader(split: Split) -> Any:
    from kd_toolkit.data import make_loader

    return make_loader(split.x_train, split.y_train, _mnist.BATCH, shuffle=True)
