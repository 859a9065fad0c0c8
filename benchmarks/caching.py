"""Protocol 4: teacher-output caching on protocol 1's KD run (784-800-800-10 student, seed-0 teacher).

The same kd_toolkit run twice: the live teacher forward every step, and ``cache_teacher_outputs=True`` (one
teacher pass over the training set, then a lookup by sample index). Losses must agree up to floating-point
rounding (the cache is built with larger batches, so logits can differ in the last bits); the figure is
the steady-state epoch time (median gap between epoch ends) and its ratio. A FLOP count predicts the
ceiling: a student step costs about 3x its forward, the teacher's forward is saved.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from benchmarks import _mnist
from benchmarks._common import RESULTS_DIR, StepLosses, interleave, median, write_json
from kd_toolkit.data import make_loader
from kd_toolkit.models import create_model

NAME = "caching"
FULL: dict[str, Any] = {"teacher_epochs": _mnist.TEACHER_EPOCHS, "epochs": 3, "repeats": 5, "n_train": None,
                        "temperature": 4.0}
QUICK: dict[str, Any] = {"teacher_epochs": _mnist.QUICK_TEACHER_EPOCHS, "epochs": 2, "repeats": 1, "n_train": 2000,
                         "temperature": 4.0}
STUDENT = "mnist_student_800"


def mlp_forward_flops(model: torch.nn.Module) -> int:
    """Multiply-adds x 2 of the linear layers for one sample (biases and activations ignored)."""
    return sum(2 * m.in_features * m.out_features for m in model.modules() if isinstance(m, torch.nn.Linear))


def run(quick: bool = False, out_dir: Path = RESULTS_DIR, config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run protocol 4 and write ``out_dir/caching.json``.

    Args:
        quick: a 2,000-image subset, 2 epochs, one repeat (a smoke run; the speed-up is rough).
        out_dir: where the JSON goes.
        config: overrides of :data:`FULL` / :data:`QUICK` keys.
    """
    cfg = {**(QUICK if quick else FULL), **(config or {})}
    split = _mnist.hinton_split(cfg["n_train"], None if cfg["n_train"] is None else 1000)[0]  # protocol 1's teachers
    teacher, teacher_info = _mnist.teacher_for(split, 0, cfg["teacher_epochs"])
    pl.seed_everything(0, verbose=False)
    template = create_model(STUDENT)
    loader = make_loader(split.x_train, split.y_train, _mnist.BATCH, shuffle=True)
    temp = cfg["temperature"]

    def arm(cached: bool, epochs: int, callbacks: list[pl.Callback] | None = None) -> dict[str, Any]:
        return _mnist.fit(copy.deepcopy(template), teacher, loader, epochs, 0, temperature=temp, cached=cached,
                          callbacks=callbacks or [])

    steps = {}
    for cached in (False, True):  # loss agreement, step by step, over one epoch (untimed)
        recorder = StepLosses()
        arm(cached, 1, [recorder])
        steps[cached] = recorder.losses
    step_diff = max(abs(a - b) for a, b in zip(steps[False], steps[True]))
    step_rel = max(abs(a - b) / max(abs(a), 1e-12) for a, b in zip(steps[False], steps[True]))
    runs = interleave({"live": lambda: arm(False, cfg["epochs"]), "cached": lambda: arm(True, cfg["epochs"])},
                      cfg["repeats"], warmup=0 if quick else 1)
    epoch_diff = max(abs(a - b) for r_l, r_c in zip(runs["live"], runs["cached"])
                     for a, b in zip(r_l["epoch_losses"], r_c["epoch_losses"]))
    speedups = [lv["epoch_s"] / c["epoch_s"] for lv, c in zip(runs["live"], runs["cached"])]
    cpu_speedups = [lv["cpu_epoch_s"] / c["cpu_epoch_s"] for lv, c in zip(runs["live"], runs["cached"])]
    total_speedups = [lv["total_s"] / c["total_s"] for lv, c in zip(runs["live"], runs["cached"])]
    s_flops, t_flops = mlp_forward_flops(template), mlp_forward_flops(teacher)
    data = {
        "protocol": NAME, "quick": quick, "config": cfg, "student": STUDENT, "teacher_acc": teacher_info["acc"],
        "steps_per_epoch": len(loader), "threads": torch.get_num_threads(),
        "arms": {name: {"epoch_s_median": median([r["epoch_s"] for r in rs]), "epoch_s_all": [r["epoch_s"] for r in rs],
                        "cpu_epoch_s_median": median([r["cpu_epoch_s"] for r in rs]),
                        "total_s_median": median([r["total_s"] for r in rs]), "epoch_losses": rs[0]["epoch_losses"]}
                 for name, rs in runs.items()},
        "speedup": median(speedups), "speedup_all": speedups, "cpu_speedup": median(cpu_speedups),
        "speedup_total_incl_cache_build": median(total_speedups),
        "flop_estimate": {"student_forward": s_flops, "teacher_forward": t_flops,
                          "speedup": (3 * s_flops + t_flops) / (3 * s_flops)},
        "max_step_loss_diff": step_diff, "max_step_loss_rel_diff": step_rel, "max_epoch_loss_diff": epoch_diff,
        "losses_equal_to_rounding": bool(step_rel < 1e-4 and epoch_diff < 1e-4),
        "figure": "steady-state seconds per epoch (median gap between epoch ends), median over repeats",
    }
    write_json(out_dir, NAME, data)
    return data
