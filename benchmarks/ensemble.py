"""Protocol: distilling an ensemble of 3 teachers (Hinton et al. 2015, section 3) on the Hinton MNIST protocol.

Data: the 10,000 MNIST test images split stratified 8,000 train / 2,000 test (split seed 0, as protocol 1); 10% of
the training part (stratified) is carved off as the validation split, and every student trains on the other 7,200.
Teachers: protocol 1's three 784-1200-1200-10 teachers (dropout, ±2-pixel jitter; seeds 0, 1 and 2), trained on the
same 7,200 images once per process (a suite run reuses protocol 1's, a run on its own trains them); neither they
nor any student sees the validation images, and only students' validation accuracies take part in a choice.
Student: 784-800-800-10 without regularisation or jitter. Arms, each trained for every student seed (init and data
order):

* ``plain``: labels alone;
* ``kd_single``: KD from one teacher: student seed ``s`` distils teacher seed ``s`` (as in protocol 1), so the mean
  over seeds is the mean over the three single teachers;
* ``kd_ensemble``: KD from the equal-weight mixture of the three tempered distributions (``teacher_mixing="probs"``);
* ``kd_ensemble_logits`` (only when asked for in ``config["arms"]``): KD from the softened average of the logits.

Every KD arm uses ``0.9 * kd_loss + 0.1 * hard_loss``; its temperature is chosen per arm on the validation split
(with the selection seeds, the first one by default), and the arm reports the chosen temperature's test accuracy
after the last epoch over all seeds. The teachers' own test accuracies, the best of them and the ensemble's (the
mixture at ``T = 1``) are reported beside them (reported, never chosen on): how much of the ensemble's accuracy
does one student keep, and does the ensemble teach better than a single teacher? Teacher outputs are cached (one
cache per teacher, ``(N, 3, C)``), which is exact here: the students see no jitter.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from benchmarks import _mnist
from benchmarks._common import RESULTS_DIR, Split, machine_info, mean_std, pm, write_json
from benchmarks._selection import (
    MNIST_STUDENT_EPOCHS,
    main,
    run_student,
    select_on_validation,
    teacher_accuracy,
)
from kd_toolkit.losses import mixture_log_probs

#: The heading of its section in the suite's README block.
TITLE = "Ensemble of three teachers distilled into one student (MNIST)"
NAME = "ensemble"
FULL: dict[str, Any] = {
    "student_seeds": [0, 1, 2], "select_seeds": [0], "teacher_seeds": [0, 1, 2], "temperatures": [4, 8],
    "teacher_epochs": _mnist.TEACHER_EPOCHS, "student": "mnist_student_800", "student_epochs": MNIST_STUDENT_EPOCHS,
    "arms": ["plain", "kd_single", "kd_ensemble"], "n_train": None, "n_test": None,
}
QUICK: dict[str, Any] = {
    "student_seeds": [0], "select_seeds": [0], "teacher_seeds": [0, 1, 2], "temperatures": [4],
    "teacher_epochs": _mnist.QUICK_TEACHER_EPOCHS, "student": "mnist_student_800", "student_epochs": 1,
    "arms": ["plain", "kd_single", "kd_ensemble"], "n_train": 2000, "n_test": 1000,
}


def ensemble_accuracy(teachers: list[torch.nn.Module], x: torch.Tensor, y: torch.Tensor) -> float:
    """Top-1 accuracy of the equal-weight mixture of the teachers' distributions (at ``T = 1``)."""
    with torch.no_grad():
        stack = torch.stack([t.eval()(x) for t in teachers], dim=1)  # (N, K, C)
        return float((mixture_log_probs(stack, 1.0).argmax(-1) == y).float().mean())


def run(quick: bool = False, out_dir: Path = RESULTS_DIR, config: dict[str, Any] | None = None, *,
        threads: int | None = None) -> dict[str, Any]:
    """Run the protocol and write ``out_dir/ensemble.json``.

    Args:
        quick: one student seed, T=4, 1 student epoch (protocol 1's quick teachers) on a 2,000/1,000 subset (a
            smoke run, not a result).
        out_dir: where the JSON goes.
        config: overrides of :data:`FULL` / :data:`QUICK` keys.
        threads: torch intra-op threads (``None``: leave as set).

    Raises:
        BenchmarkSkipped: when the MNIST files are absent.
    """
    cfg = {**(QUICK if quick else FULL), **(config or {})}
    if threads is not None:
        torch.set_num_threads(threads)
    start, machine = time.perf_counter(), machine_info()
    split, val = _mnist.hinton_split(cfg["n_train"], cfg["n_test"])  # protocol 1's data: fit/test and fit/val
    teachers = [_mnist.teacher_for(split, s, cfg["teacher_epochs"])[0] for s in cfg["teacher_seeds"]]  # protocol 1's
    teacher_figs = {str(s): teacher_accuracy(t, split, val) for s, t in zip(cfg["teacher_seeds"], teachers)}
    ens = {"val": ensemble_accuracy(teachers, val.x_test, val.y_test),
           "test": ensemble_accuracy(teachers, split.x_test, split.y_test)}
    arms: dict[str, Any] = {}
    for arm in cfg["arms"]:
        arms[arm] = _arm(arm, split, val, teachers, cfg)
    best = max(teacher_figs, key=lambda s: teacher_figs[s]["test"])
    summary = {"teachers": {f"teacher seed {s}": f"{f['test'] * 100:.2f}" for s, f in teacher_figs.items()}
               | {"ensemble (mixture)": f"{ens['test'] * 100:.2f}"},
               "student": {arm: pm(a["test_acc"], 100) + f" ({a['chosen']})" for arm, a in arms.items()}}
    data = {
        "protocol": NAME, "quick": quick, "config": cfg, "figure": "test accuracy after the last epoch (%)",
        "selection": "temperature per arm by mean validation accuracy over the selection seeds; test never used to "
                     "choose",
        "data": {"fit": len(split.y_train), "val": len(val.y_test), "test": len(split.y_test),
                 "split": "MNIST test images, stratified 80/20 (seed 0); val = 10% of train (stratified, seed 0); "
                          "teachers trained on fit + val (protocol 1's), students on fit"},
        "recipe": {"optimizer": "adam", "lr": _mnist.LR, "schedule": _mnist.SCHEDULER, "batch_size": _mnist.BATCH,
                   "kd_weights": _mnist.KD_WEIGHTS, "threads": torch.get_num_threads()},
        "teachers": teacher_figs, "best_single_teacher_on_test": best, "ensemble": ens,
        "arms": arms, "summary": summary, "targets": _targets(arms, teacher_figs[best], ens),
        "machine": machine, "load_average_end": machine_info()["load_average"],
        "command": f"python -m benchmarks.{NAME}" + (" --quick" if quick else ""),
        "seconds": time.perf_counter() - start,
    }
    write_json(out_dir, NAME, data)
    return data


def _targets(arms: dict[str, Any], best: dict[str, float], ens: dict[str, float]) -> list[dict[str, Any]]:
    """The suite's target rows: the ensemble-distilled student against the single-teacher one and the plain one."""
    if "kd_ensemble" not in arms:
        return []
    e = arms["kd_ensemble"]["test_acc"]
    rows = []
    for other in ("kd_single", "plain"):
        if other in arms:
            o = arms[other]["test_acc"]
            rows.append({"target": f"ensemble-distilled 800-800 student beats {other} (MNIST, mean of seeds)",
                         "measured": f"{pm(e, 100)}% vs {pm(o, 100)}% (best teacher {best['test'] * 100:.2f}%, "
                                     f"ensemble {ens['test'] * 100:.2f}%)", "met": e["mean"] > o["mean"]})
    return rows


def _arm(arm: str, split: Split, val: Split, teachers: list[torch.nn.Module], cfg: dict[str, Any]) -> dict[str, Any]:
    def train(settings: dict[str, Any], seed: int) -> dict[str, float]:
        teacher = settings["teacher"]
        if teacher == "paired":  # student seed s distils teacher seed s (protocol 1's pairing)
            teacher = teachers[seed % len(teachers)]
        return run_student(split, val, cfg["student"], teacher, seed, cfg["student_epochs"],
                           lr=_mnist.LR, batch_size=_mnist.BATCH, scheduler=_mnist.SCHEDULER,
                           temperature=settings.get("T", 4.0), loss_weights=_mnist.KD_WEIGHTS,
                           module_kwargs=settings.get("module_kwargs"))

    if arm == "plain":
        candidates: dict[str, dict[str, Any]] = {"labels": {"teacher": None}}
    else:
        teacher: Any = "paired" if arm == "kd_single" else list(teachers)
        extra = {"teacher_mixing": "logits"} if arm == "kd_ensemble_logits" else None
        candidates = {f"T={t:g}": {"teacher": teacher, "T": float(t), "module_kwargs": extra}
                      for t in cfg["temperatures"]}
    result = select_on_validation(candidates, cfg["student_seeds"], train, cfg.get("select_seeds"))
    result["settings"] = {k: v for k, v in result["settings"].items() if k != "teacher"}  # JSON: no modules
    return result


def markdown(data: dict[str, Any]) -> str:
    """The README section body of a :func:`run` result."""
    teachers = mean_std([t["test"] for t in data["teachers"].values()])
    best = data["best_single_teacher_on_test"]
    cfg = data["config"]
    rows = [f"MNIST 7,200 fit / 800 validation / 2,000 test; protocol 1's teachers (seeds {', '.join(data['teachers'])}"
            f"), 784-800-800-10 students, {cfg['student_epochs']} epochs, {len(cfg['student_seeds'])} seeds; KD "
            f"{_mnist.KD_WEIGHTS}; T in {cfg['temperatures']} chosen per arm on validation (seeds "
            f"{cfg.get('select_seeds') or cfg['student_seeds']}); test accuracy after the last epoch (%).", "",
            "| model | test accuracy (%) | chosen on validation |", "|---|---|---|",
            f"| teachers 784-1200-1200-10 (mean of 3) | {pm(teachers, 100)} | |",
            f"| best single teacher (seed {best}, by test: reference only) | {data['teachers'][best]['test'] * 100:.2f} | |",
            f"| their ensemble (mixture) | {data['ensemble']['test'] * 100:.2f} | |"]
    rows += [f"| student 800-800, {arm} | {pm(a['test_acc'], 100)} | {a['chosen']} |" for arm, a in data["arms"].items()]
    note = "\n\n(quick: a smoke run, not a result)" if data.get("quick") else ""
    return "\n".join(rows) + note


if __name__ == "__main__":
    raise SystemExit(main(NAME, run, __doc__ or NAME))
