"""Protocol: modern logit losses against plain KD, on the Hinton MNIST protocol and on the embedded digits.

Losses (all from ``kd_toolkit.losses``, used by name in ``loss_weights``):

* ``kd``: Hinton et al. (2015), ``0.9 * kd_loss + 0.1 * hard_loss``, T in {4, 8};
* ``ls_kd``: KD on standardised logits (Sun et al., CVPR 2024), ``0.9 * ls_kd_loss + 0.1 * hard_loss``,
  base temperature in {2, 4};
* ``dkd``: decoupled KD (Zhao et al., CVPR 2022), ``dkd_loss + hard_loss``, T = 4, alpha = 1, beta in {1, 8},
  linear warm-up over ``max(1, round(epochs / 12))`` epochs (the paper's 20 of 240);
* ``dist``: DIST (Huang et al., NeurIPS 2022), ``dist_loss + hard_loss``, beta = gamma = 1, T in {1, 4}, with the
  authors' code's ``T**2`` factor;
* ``plain``: labels alone.

MNIST: the 10,000 MNIST test images split stratified 8,000 / 2,000 (seed 0) with 10% of the training part carved off
for validation; teachers: protocol 1's 784-1200-1200-10 (dropout, jitter; trained once per process on the
7,200 images outside the validation part, so a suite run reuses them), students 784-800-800-10 trained
on the other 7,200; student seed ``s`` distils teacher seed ``s``; ``plain`` and ``kd`` are the same runs as
:mod:`benchmarks.ensemble`'s ``plain`` and ``kd_single`` (computed once in a suite). Digits:
``DigitsDataModule(seed=s)`` (60% train, 15% validation, 25% test), teacher 64-256-256-10, student 64-16-10. For
each loss the hyperparameter is chosen on the validation split (mean over the selection seeds: the first seed by
default, to stay within the time budget); the chosen setting is then trained for the other seeds and the loss
reports its test accuracy after the last epoch over all seeds. A loss that does not beat plain KD here is reported
as such: these are small MLPs on easy data, far from the CIFAR/ImageNet CNNs of the papers.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from benchmarks import _mnist
from benchmarks._common import (
    RESULTS_DIR,
    Split,
    digits_split,
    fit_kd_toolkit,
    machine_info,
    mean_std,
    pm,
    write_json,
)
from benchmarks._selection import (
    MNIST_STUDENT_EPOCHS,
    main,
    run_student,
    select_on_validation,
    teacher_accuracy,
)
from kd_toolkit.data import make_loader
from kd_toolkit.models import create_model

#: The heading of its section in the suite's README block.
TITLE = "Modern logit losses (LS-KD, DKD, DIST) against plain KD"
NAME = "logit_losses"
GRIDS: dict[str, list[dict[str, Any]]] = {
    "kd": [{"T": t} for t in (4.0, 8.0)],
    "ls_kd": [{"T": t} for t in (2.0, 4.0)],
    "dkd": [{"T": 4.0, "dkd_beta": b} for b in (1.0, 8.0)],
    "dist": [{"T": t} for t in (1.0, 4.0)],
}
QUICK_GRIDS: dict[str, list[dict[str, Any]]] = {
    "kd": [{"T": 4.0}], "ls_kd": [{"T": 2.0}], "dkd": [{"T": 4.0, "dkd_beta": 8.0}], "dist": [{"T": 4.0}]}
WEIGHTS = {"kd": {"kd_loss": 0.9, "hard_loss": 0.1}, "ls_kd": {"ls_kd_loss": 0.9, "hard_loss": 0.1},
           "dkd": {"dkd_loss": 1.0, "hard_loss": 1.0}, "dist": {"dist_loss": 1.0, "hard_loss": 1.0}}
DATASETS: dict[str, dict[str, Any]] = {
    "mnist": {"teacher": "mnist_teacher", "student": "mnist_student_800", "teacher_epochs": _mnist.TEACHER_EPOCHS,
              "student_epochs": MNIST_STUDENT_EPOCHS, "lr": _mnist.LR, "batch_size": _mnist.BATCH,
              "scheduler": _mnist.SCHEDULER},
    "digits": {"teacher": "digits_teacher", "student": "digits_student", "teacher_epochs": 20, "student_epochs": 40,
               "lr": 1e-2, "batch_size": 32, "scheduler": "cosine_anneal"},
}
FULL: dict[str, Any] = {"seeds": [0, 1, 2], "select_seeds": [0], "datasets": ["mnist", "digits"],
                        "losses": ["plain", *GRIDS], "grids": GRIDS, "n_train": None, "n_test": None, "overrides": {}}
QUICK: dict[str, Any] = {"seeds": [0], "select_seeds": [0], "datasets": ["mnist", "digits"],
                         "losses": ["plain", *GRIDS], "grids": QUICK_GRIDS, "n_train": 2000, "n_test": 1000,
                         "overrides": {"mnist": {"teacher_epochs": _mnist.QUICK_TEACHER_EPOCHS, "student_epochs": 1},
                                       "digits": {"teacher_epochs": 3, "student_epochs": 3}}}


def _splits(dataset: str, seed: int, cfg: dict[str, Any]) -> tuple[Split, Split]:
    if dataset == "mnist":  # one split for every seed (protocol 1's), seeds vary init and data order
        return _mnist.hinton_split(cfg["n_train"], cfg["n_test"])
    return digits_split(seed)  # (train/test, train/val)


def _teacher(dataset: str, split: Split, seed: int, ds: dict[str, Any], cfg: dict[str, Any]) -> torch.nn.Module:
    if dataset == "mnist":  # protocol 1's teacher (memoised: shared with protocol 1 and `ensemble`)
        return _mnist.teacher_for(_mnist.hinton_split(cfg["n_train"], cfg["n_test"])[0], seed, ds["teacher_epochs"])[0]
    pl.seed_everything(seed, verbose=False)
    teacher = create_model(ds["teacher"])
    fit_kd_toolkit(teacher, None, make_loader(split.x_train, split.y_train, ds["batch_size"], shuffle=True),
                   ds["teacher_epochs"], seed, lr=ds["lr"], scheduler=ds["scheduler"])
    return teacher.eval()


def run(quick: bool = False, out_dir: Path = RESULTS_DIR, config: dict[str, Any] | None = None, *,
        threads: int | None = None) -> dict[str, Any]:
    """Run the protocol and write ``out_dir/logit_losses.json``.

    Args:
        quick: one seed, one setting per loss, 2-3 epochs, MNIST on a 2,000/1,000 subset (a smoke run).
        out_dir: where the JSON goes.
        config: overrides of :data:`FULL` / :data:`QUICK` keys.
        threads: torch intra-op threads (``None``: leave as set).
    """
    cfg = {**(QUICK if quick else FULL), **(config or {})}
    if threads is not None:
        torch.set_num_threads(threads)
    start, machine = time.perf_counter(), machine_info()
    results: dict[str, Any] = {}
    summary: dict[str, dict[str, str]] = {}
    for dataset in cfg["datasets"]:
        ds = {**DATASETS[dataset], **cfg["overrides"].get(dataset, {})}
        splits = {seed: _splits(dataset, seed, cfg) for seed in cfg["seeds"]}
        teachers = {seed: _teacher(dataset, splits[seed][0], seed, ds, cfg) for seed in cfg["seeds"]}
        entry: dict[str, Any] = {"recipe": ds, "teachers": {
            s: teacher_accuracy(t, splits[s][0], splits[s][1]) for s, t in teachers.items()}, "losses": {}}
        for loss in cfg["losses"]:
            entry["losses"][loss] = _select(loss, dataset, ds, splits, teachers, cfg)
        kd = entry["losses"].get("kd", {}).get("per_seed_test")
        for loss, res in entry["losses"].items():
            if kd and loss != "kd":
                res["minus_kd"] = {s: res["per_seed_test"][s] - kd[s] for s in kd}
        results[dataset] = entry
        summary[dataset] = {loss: pm(r["test_acc"], 100) + f" ({r['chosen']})" for loss, r in entry["losses"].items()}
    data = {"protocol": NAME, "quick": quick, "config": cfg, "figure": "test accuracy after the last epoch (%)",
            "selection": "per loss, the setting with the best mean validation accuracy over the selection seeds, then "
                         "trained for the other seeds; test never used",
            "results": results, "summary": summary, "targets": _targets(results), "machine": machine,
            "load_average_end": machine_info()["load_average"],
            "command": f"python -m benchmarks.{NAME}" + (" --quick" if quick else ""),
            "seconds": time.perf_counter() - start}
    write_json(out_dir, NAME, data)
    return data


def _targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per dataset and modern loss: does it beat plain KD here (mean of the per-seed differences)?"""
    rows = []
    for dataset, entry in results.items():
        for loss, r in entry["losses"].items():
            if loss in ("plain", "kd") or "minus_kd" not in r:
                continue
            diff = mean_std(list(r["minus_kd"].values()))
            rows.append({"target": f"{loss} beats plain KD ({dataset}, mean of seeds)",
                         "measured": f"{diff['mean'] * 100:+.2f} ± {diff['std'] * 100:.2f} points ({r['chosen']})",
                         "met": diff["mean"] > 0})
    return rows


def _select(loss: str, dataset: str, ds: dict[str, Any], splits: dict[int, tuple[Split, Split]],
            teachers: dict[int, torch.nn.Module], cfg: dict[str, Any]) -> dict[str, Any]:
    def train(settings: dict[str, Any], seed: int) -> dict[str, float]:
        test, val = splits[seed]
        kwargs = {k: v for k, v in settings.items() if k.startswith(("dkd_", "dist_"))}
        if loss == "dkd":
            kwargs["dkd_warmup_epochs"] = max(1, round(ds["student_epochs"] / 12))
        return run_student(test, val, ds["student"], None if loss == "plain" else teachers[seed], seed,
                           ds["student_epochs"], lr=ds["lr"], batch_size=ds["batch_size"], scheduler=ds["scheduler"],
                           temperature=settings.get("T", 4.0), loss_weights=WEIGHTS.get(loss),
                           module_kwargs=kwargs or None)

    grid = [{}] if loss == "plain" else cfg["grids"][loss]
    candidates = {", ".join(f"{k}={v:g}" for k, v in s.items()) or "labels": s for s in grid}
    return select_on_validation(candidates, cfg["seeds"], train, cfg.get("select_seeds"))


def markdown(data: dict[str, Any]) -> str:
    """A Markdown table of the result (for ``benchmarks/report.py``'s ``SECTIONS``)."""
    datasets = list(data["results"])
    rows = ["| loss | " + " | ".join(f"{d}: test acc. (%) | {d}: minus KD (points) | {d}: chosen" for d in datasets)
            + " |", "|---|" + "---|---|---|" * len(datasets)]
    cfg = data["config"]
    head = (f"Test accuracy after the last epoch (%), {len(cfg['seeds'])} seeds; each loss's setting chosen on "
            f"validation (seeds {cfg.get('select_seeds') or cfg['seeds']}); minus KD = per-seed difference to plain "
            f"KD's chosen setting. MNIST: protocol 1's teachers, 784-800-800-10 student, "
            f"{data['results'].get('mnist', {}).get('recipe', {}).get('student_epochs', '?')} epochs; "
            f"digits: 64-256-256-10 teacher, 64-16-10 student.")
    rows = [head, "", *rows]
    losses = list(next(iter(data["results"].values()))["losses"]) if datasets else []
    for loss in losses:
        cells = []
        for d in datasets:
            r = data["results"][d]["losses"][loss]
            diff = mean_std(list(r["minus_kd"].values())) if "minus_kd" in r else None
            cells += [pm(r["test_acc"], 100), pm(diff, 100) if diff else "", r["chosen"]]
        rows.append(f"| {loss} | " + " | ".join(cells) + " |")
    return "\n".join(rows) + ("\n\n(quick: a smoke run, not a result)" if data.get("quick") else "")


if __name__ == "__main__":
    raise SystemExit(main(NAME, run, __doc__ or NAME))
