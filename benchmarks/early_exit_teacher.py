"""Early exit with a teacher for every exit on MNIST (issue 13): does an external teacher help the early exits?

Same data as :mod:`benchmarks.early_exit`: the 10,000 MNIST test images split stratified 8,000/2,000 with seed 0,
a stratified validation part (1,000 images) carved from the 8,000 and the rest trains. The teacher is protocol 1's
seed-0 784-1200-1200-10 MLP (dropout, ±2-pixel jitter, :mod:`benchmarks._mnist`), trained once per process on
protocol 1's 7,200 fit images (a suite run reuses protocol 1's); the early-exit networks never train on their
validation part, and the thresholds are calibrated on the networks' own validation outputs. Then, per seed, the same LeNet-5 early-exit network (linear exits after blocks 1 and 2) is
trained whole four ways through ``KnowledgeDistillationTraining``:

* ``plain``: cross-entropy on every exit (BranchyNet);
* ``self_distillation``: the final exit teaches the early exits (``distill_weight=0.5``, ``T=3``), as in
  :mod:`benchmarks.early_exit`;
* ``teacher``: the external teacher teaches every exit (``teacher_weight=0.5``, ``T=4``);
* ``teacher_and_self_distillation``: both (``distill_weight=0.25``, ``teacher_weight=0.5``).

The arms' weights and temperatures are fixed in advance (not tuned, on validation or on test). Each network's
thresholds are calibrated on the validation part for at most 0.5 points of accuracy below its final
exit (:func:`kd_toolkit.early_exit.calibrate_thresholds`); the 2,000 test images give the figures: early-exit
accuracy at those thresholds, the share of samples leaving at exit 0, the final exit's accuracy, and the MAC
speed-up over the plain network.

Usage (from the repository root)::

    .venv/bin/python -m benchmarks.early_exit_teacher           # full run, writes results/early_exit_teacher.json
    .venv/bin/python -m benchmarks.early_exit_teacher --quick   # smoke run (< 1 min)
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make `benchmarks` and `kd_toolkit` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from benchmarks._common import RESULTS_DIR, Split, machine_info, mnist_split, script_main, write_json
from benchmarks._early_exit import quality
from benchmarks._mnist import QUICK_TEACHER_EPOCHS, TEACHER_EPOCHS, hinton_split, teacher_for
from kd_toolkit.data import make_loader, stratified_split
from kd_toolkit.early_exit import EarlyExitModule, EarlyExitNetwork, calibrate_thresholds
from kd_toolkit.models import LeNet
from kd_toolkit.training import KnowledgeDistillationTraining

#: The heading of its section in the suite's README block.
TITLE = "Early exit with an external teacher for every exit (MNIST)"
NAME = "early_exit_teacher"
FULL = {"n_train": None, "n_test": None, "val": 1000, "epochs": 5, "teacher_epochs": TEACHER_EPOCHS,
        "seeds": [0, 1, 2]}
QUICK = {"n_train": 1500, "n_test": 500, "val": 300, "epochs": 1, "teacher_epochs": QUICK_TEACHER_EPOCHS,
         "seeds": [0]}
TRAINING = {"exit_hidden": [[], []], "optimizer": "adam", "lr": 2e-3, "batch_size": 64, "max_accuracy_drop": 0.005,
            "distill_temperature": 3.0, "teacher_temperature": 4.0}
#: EarlyExitModule arguments of each arm (besides TRAINING's).
ARMS: dict[str, dict[str, Any]] = {
    "plain": {},
    "self_distillation": {"self_distillation": True, "distill_weight": 0.5},
    "teacher": {"teacher_weight": 0.5},
    "teacher_and_self_distillation": {"self_distillation": True, "distill_weight": 0.25, "teacher_weight": 0.5},
}


def _parts(data: Split, val: int) -> dict[str, Tensor]:
    """Carve a stratified validation part of ``val`` images from the training images."""
    y_all = data.y_train.numpy()
    fraction = val / len(y_all)
    train_idx, val_idx = (torch.from_numpy(i) for i in stratified_split(y_all, [1 - fraction, fraction], seed=0))
    return {"x_train": data.x_train[train_idx], "y_train": data.y_train[train_idx],
            "x_val": data.x_train[val_idx], "y_val": data.y_train[val_idx]}


def _train(parts: dict[str, Tensor], arm: dict[str, Any], teacher: nn.Module | None, seed: int,
           epochs: int) -> EarlyExitNetwork:
    pl.seed_everything(seed, verbose=False)
    network = EarlyExitNetwork(LeNet(), (1, 1, 28, 28), TRAINING["exit_hidden"], [0.9, 0.9])
    module = EarlyExitModule(network, teacher=teacher if "teacher_weight" in arm else None,
                             distill_temperature=TRAINING["distill_temperature"],
                             teacher_temperature=TRAINING["teacher_temperature"], optimizer=TRAINING["optimizer"],
                             lr=TRAINING["lr"], **arm)
    with tempfile.TemporaryDirectory() as tmp:
        KnowledgeDistillationTraining(
            module=module, train_data_loader=make_loader(parts["x_train"], parts["y_train"], TRAINING["batch_size"],
                                                         shuffle=True),
            max_epoch=epochs, seed=seed, accelerator="cpu", precision=32, deterministic=False, checkpointing=False,
            csv_logging=False, quiet=True, enable_progress_bar=False, default_root_dir=tmp,
        ).fit()
    return network.eval()


def _evaluate(network: EarlyExitNetwork, parts: dict[str, Tensor], x: Tensor, y: Tensor) -> dict[str, Any]:
    """Calibrate the thresholds on the validation part, then measure on the test images."""
    calibration = calibrate_thresholds(network, make_loader(parts["x_val"], parts["y_val"], 500),
                                       max_accuracy_drop=TRAINING["max_accuracy_drop"], apply=True)
    test = quality(network, x, y)
    return {"thresholds": calibration.thresholds, "val_early_exit_accuracy": calibration.accuracy,
            "val_exit_shares": calibration.exit_shares, "accuracy_drop_bound": calibration.accuracy_drop_bound,
            "early_exit_accuracy": test["early_exit_accuracy"],
            "exit_0_share": test["exit_shares"][0], "exit_shares": test["exit_shares"],
            "final_exit_accuracy": test["full_accuracy"], "mac_speedup": test["mac_speedup"]}


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    keys = ("early_exit_accuracy", "exit_0_share", "final_exit_accuracy", "mac_speedup")
    return {k: {"mean": statistics.fmean(r[k] for r in runs),
                "std": statistics.stdev([r[k] for r in runs]) if len(runs) > 1 else 0.0} for k in keys}


def _targets(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows for the suite's targets table: does the external teacher raise the early-exit accuracy (alone, and on
    top of self-distillation) at the calibrated thresholds? The exit-0 shares are shown beside."""
    rows = []
    for arm, base in (("teacher", "plain"), ("teacher_and_self_distillation", "self_distillation")):
        if arm in summary and base in summary:
            a, b = summary[arm], summary[base]
            rows.append({"target": f"early exit, external teacher raises early-exit accuracy ({arm} vs {base})",
                         "measured": f"{100 * a['early_exit_accuracy']['mean']:.2f}% vs "
                                     f"{100 * b['early_exit_accuracy']['mean']:.2f}%; exit-0 share "
                                     f"{100 * a['exit_0_share']['mean']:.0f}% vs {100 * b['exit_0_share']['mean']:.0f}%",
                         "met": a["early_exit_accuracy"]["mean"] > b["early_exit_accuracy"]["mean"]})
    return rows


def run(quick: bool = False, out_dir: Path = RESULTS_DIR, *, threads: int = 1,
        config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run the protocol and write ``out_dir/early_exit_teacher.json`` (``BenchmarkSkipped`` without MNIST);
    ``config`` overrides keys of :data:`FULL` / :data:`QUICK`."""
    settings = {**(QUICK if quick else FULL), **(config or {})}
    data = mnist_split(seed=0, n_train=settings["n_train"], n_test=settings["n_test"])  # may raise BenchmarkSkipped
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        started, machine = time.perf_counter(), {**machine_info(), "torch_threads": threads}
        parts = _parts(data, settings["val"])
        teacher, teacher_info = teacher_for(hinton_split(settings["n_train"], settings["n_test"])[0], 0,
                                            settings["teacher_epochs"])  # protocol 1's (memoised, on its fit part)
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in ARMS}
        for seed in settings["seeds"]:
            for name, arm in ARMS.items():
                network = _train(parts, arm, teacher, seed, settings["epochs"])
                runs[name].append({"seed": seed, **_evaluate(network, parts, data.x_test, data.y_test)})
        result = {
            "protocol": NAME, "quick": quick, "settings": settings, "training": TRAINING, "arms": ARMS,
            "command": f"python -m benchmarks.{NAME}" + (" --quick" if quick else ""),
            "split": {"train": len(parts["y_train"]), "val": len(parts["y_val"]), "test": len(data.y_test)},
            "teacher": teacher_info, "summary": {name: _summary(r) for name, r in runs.items()}, "runs": runs,
            "seconds": time.perf_counter() - started, "machine": machine,
            "load_average_end": machine_info()["load_average"],
        }
        result["targets"] = _targets(result["summary"])
    finally:
        torch.set_num_threads(previous_threads)
    write_json(out_dir, NAME, result)
    return result


def markdown(result: dict[str, Any]) -> str:
    """The README table of a :func:`run` result (mean ± std over seeds)."""
    def cell(stats: dict[str, float], scale: float = 100.0, unit: str = "%") -> str:
        return f"{scale * stats['mean']:.2f}{unit} ± {scale * stats['std']:.2f}"

    st, sp = result["settings"], result["split"]
    lines = [f"LeNet-5 with exits after blocks 1 and 2, {st['epochs']} epochs, {len(st['seeds'])} seeds (mean ± std); "
             f"{sp['train']} train / {sp['val']} validation (thresholds: at most "
             f"{100 * TRAINING['max_accuracy_drop']:g} points below the final exit) / {sp['test']} test images; teacher "
             f"784-1200-1200-10 at {100 * result['teacher']['acc']:.2f}% test accuracy; arms' weights fixed in advance "
             "(not tuned).", "",
             "| Training | Early-exit test accuracy | Exit-0 share | Final-exit accuracy | MAC speed-up |",
             "|---|---|---|---|---|"]
    for name, s in result["summary"].items():
        lines.append(f"| {name} | {cell(s['early_exit_accuracy'])} | {cell(s['exit_0_share'])} | "
                     f"{cell(s['final_exit_accuracy'])} | {cell(s['mac_speedup'], 1.0, 'x')} |")
    return "\n".join(lines)


def main() -> None:
    ran = script_main(__doc__, run, markdown, "Early-exit teacher", "smoke run (< 1 min)")
    if ran is None:
        return
    result, out_dir = ran
    machine = result["machine"]
    print(f"\nteacher test accuracy {100 * result['teacher']['acc']:.2f}%; machine: {machine['cpu']}, "
          f"{machine['cores']} cores, load {machine['load_average']}, {machine['torch_threads']} torch thread(s); "
          f"{result['seconds']:.0f} s; written to {out_dir / (NAME + '.json')}")

if __name__ == "__main__":
    main()
