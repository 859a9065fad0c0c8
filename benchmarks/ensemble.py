"""Protocol: distilling an ensemble of 3 teachers (Hinton et al. 2015, section 3) on the Hinton MNIST protocol.

Data: the 10,000 MNIST test images split stratified 8,000 train / 2,000 test (split seed 0, as protocol 1); 10% of
the training part (stratified) is carved off as the validation split, and everything trains on the remaining 7,200.
Teachers: three 784-1200-1200-10 teachers (dropout, ±2-pixel jitter) with seeds 0, 1 and 2. Student: 784-800-800-10
without regularisation or jitter. Arms, each trained for every student seed (init and data order):

* ``plain``: labels alone;
* ``kd_best_single``: KD from the teacher with the best *validation* accuracy;
* ``kd_ensemble``: KD from the equal-weight mixture of the three tempered distributions (``teacher_mixing="probs"``);
* ``kd_ensemble_logits`` (full mode): KD from the softened average of the three teachers' logits.

Every KD arm uses ``0.9 * kd_loss + 0.1 * hard_loss``; its temperature is chosen per arm on the validation split
(mean over seeds), and the arm reports the chosen temperature's test accuracy after the last epoch. The teachers'
own figures and the ensemble's (the mixture at ``T = 1``) are reported beside them: the question is how much of the
ensemble's accuracy one student of the single teachers' cost keeps. Teacher outputs are cached (one cache per
teacher, ``(N, 3, C)``), which is exact here: the students see no jitter.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from benchmarks import _mnist
from benchmarks._common import RESULTS_DIR, Split, machine_info, mean_std, mnist_split, pm, write_json
from benchmarks._selection import carve_validation, main, run_student, select_on_validation, teacher_accuracy
from kd_toolkit.losses import mixture_log_probs

NAME = "ensemble"
FULL: dict[str, Any] = {
    "student_seeds": [0, 1, 2], "teacher_seeds": [0, 1, 2], "temperatures": [2, 4, 8],
    "teacher_epochs": _mnist.TEACHER_EPOCHS, "student": "mnist_student_800", "student_epochs": 12,
    "arms": ["plain", "kd_best_single", "kd_ensemble", "kd_ensemble_logits"], "n_train": None, "n_test": None,
}
QUICK: dict[str, Any] = {
    "student_seeds": [0], "teacher_seeds": [0, 1, 2], "temperatures": [4], "teacher_epochs": 3,
    "student": "mnist_student_800", "student_epochs": 2, "arms": ["plain", "kd_best_single", "kd_ensemble"],
    "n_train": 2000, "n_test": 1000,
}


def ensemble_accuracy(teachers: list[torch.nn.Module], x: torch.Tensor, y: torch.Tensor) -> float:
    """Top-1 accuracy of the equal-weight mixture of the teachers' distributions (at ``T = 1``)."""
    with torch.no_grad():
        stack = torch.stack([t.eval()(x) for t in teachers], dim=1)  # (N, K, C)
        return float((mixture_log_probs(stack, 1.0).argmax(-1) == y).float().mean())


def run(quick: bool = False, out_dir: Path = RESULTS_DIR, config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run the protocol and write ``out_dir/ensemble.json``.

    Args:
        quick: one student seed, T=4, 2 student epochs (3 teacher epochs) on a 2,000/1,000 subset (a smoke run, not a result).
        out_dir: where the JSON goes.
        config: overrides of :data:`FULL` / :data:`QUICK` keys.

    Raises:
        BenchmarkSkipped: when the MNIST files are absent.
    """
    cfg = {**(QUICK if quick else FULL), **(config or {})}
    start = time.perf_counter()
    split, val = carve_validation(mnist_split(seed=0, n_train=cfg["n_train"], n_test=cfg["n_test"]))
    teachers = [_mnist.teacher_for(split, s, cfg["teacher_epochs"])[0] for s in cfg["teacher_seeds"]]
    teacher_figs = {str(s): teacher_accuracy(t, split, val) for s, t in zip(cfg["teacher_seeds"], teachers)}
    best = max(range(len(teachers)), key=lambda i: teacher_figs[str(cfg["teacher_seeds"][i])]["val"])
    ens = {"val": ensemble_accuracy(teachers, val.x_test, val.y_test),
           "test": ensemble_accuracy(teachers, split.x_test, split.y_test)}
    arms: dict[str, Any] = {}
    for arm in cfg["arms"]:
        arms[arm] = _arm(arm, split, val, teachers, best, cfg)
    summary = {"teachers": {f"teacher seed {s}": f"{f['test'] * 100:.2f}" for s, f in teacher_figs.items()}
               | {"ensemble (mixture)": f"{ens['test'] * 100:.2f}"},
               "student": {arm: pm(a["test_acc"], 100) + f" ({a['chosen']})" for arm, a in arms.items()}}
    data = {
        "protocol": NAME, "quick": quick, "config": cfg, "figure": "test accuracy after the last epoch (%)",
        "selection": "temperature per arm by mean validation accuracy over seeds; test never used to choose",
        "data": {"fit": len(split.y_train), "val": len(val.y_test), "test": len(split.y_test),
                 "split": "MNIST test images, stratified 80/20 (seed 0); val = 10% of train (stratified, seed 0)"},
        "recipe": {"optimizer": "adam", "lr": _mnist.LR, "schedule": _mnist.SCHEDULER, "batch_size": _mnist.BATCH,
                   "kd_weights": _mnist.KD_WEIGHTS, "threads": torch.get_num_threads()},
        "teachers": teacher_figs, "best_single_teacher": str(cfg["teacher_seeds"][best]), "ensemble": ens,
        "arms": arms, "summary": summary, "machine": machine_info(), "seconds": time.perf_counter() - start,
    }
    write_json(out_dir, NAME, data)
    return data


def _arm(arm: str, split: Split, val: Split, teachers: list[torch.nn.Module], best: int,
         cfg: dict[str, Any]) -> dict[str, Any]:
    def train(settings: dict[str, Any], seed: int) -> dict[str, float]:
        return run_student(split, val, cfg["student"], settings["teacher"], seed, cfg["student_epochs"],
                           lr=_mnist.LR, batch_size=_mnist.BATCH, scheduler=_mnist.SCHEDULER,
                           temperature=settings.get("T", 4.0), loss_weights=_mnist.KD_WEIGHTS,
                           module_kwargs=settings.get("module_kwargs"))

    if arm == "plain":
        candidates: dict[str, dict[str, Any]] = {"labels": {"teacher": None}}
    else:
        teacher: Any = teachers[best] if arm == "kd_best_single" else list(teachers)
        extra = {"teacher_mixing": "logits"} if arm == "kd_ensemble_logits" else None
        candidates = {f"T={t:g}": {"teacher": teacher, "T": float(t), "module_kwargs": extra}
                      for t in cfg["temperatures"]}
    result = select_on_validation(candidates, cfg["student_seeds"], train)
    result["settings"] = {k: v for k, v in result["settings"].items() if k != "teacher"}  # JSON: no modules
    return result


def markdown(data: dict[str, Any]) -> str:
    """A Markdown table of the result (for ``benchmarks/report.py``'s ``SECTIONS``)."""
    teachers = mean_std([t["test"] for t in data["teachers"].values()])
    rows = ["| model | test accuracy (%) | chosen on validation |", "|---|---|---|",
            f"| teachers 784-1200-1200-10 (seeds {', '.join(data['teachers'])}) | {pm(teachers, 100)} | |",
            f"| their ensemble (mixture) | {data['ensemble']['test'] * 100:.2f} | |"]
    rows += [f"| student 800-800, {arm} | {pm(a['test_acc'], 100)} | {a['chosen']} |" for arm, a in data["arms"].items()]
    note = " (quick: a smoke run, not a result)" if data.get("quick") else ""
    return "\n".join(rows) + f"\n\nBest single teacher on validation: seed {data['best_single_teacher']}.{note}"


if __name__ == "__main__":
    raise SystemExit(main(NAME, run, __doc__ or NAME))
