"""Protocol 3's whole-run case: one ``KnowledgeDistillationTraining(...).fit()`` end to end, phase by phase,
against a plain PyTorch loop that does the same work (see :mod:`benchmarks.overhead`)."""

from __future__ import annotations

import copy
import csv
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchmarks._common import interleave, median, mnist_split
from kd_toolkit import KnowledgeDistillationTraining
from kd_toolkit.data import make_loader, stratified_split
from kd_toolkit.models import create_model

TEMPERATURE, WEIGHTS, LR, BATCH = 4.0, {"hard_loss": 0.5, "kd_loss": 0.5}, 1e-3, 128
#: The whole run of the issue: 800-800 student, live 1200-1200 teacher, 8 epochs, 2 torch threads; the validation
#: part (1/8) is carved from the 8,000 training images.
WHOLE_RUN: dict[str, Any] = {"student": "mnist_student_800", "epochs": 8, "repeats": 5, "threads": 2,
                             "val_fraction": 0.125, "val_batch": 256}


def kd_loss(s_logits: Tensor, t_logits: Tensor, y: Tensor) -> Tensor:
    """The KD loss of every arm, written out in PyTorch (the same ops as ``kd_toolkit.losses.kd_loss``):
    ``(B, C)`` student and teacher logits, ``(B,)`` labels -> a scalar."""
    soft = F.kl_div(F.log_softmax(s_logits / TEMPERATURE, dim=-1), F.log_softmax(t_logits / TEMPERATURE, dim=-1),
                    reduction="batchmean", log_target=True) * TEMPERATURE**2
    return WEIGHTS["hard_loss"] * F.cross_entropy(s_logits, y) + WEIGHTS["kd_loss"] * soft


def plain_step(student: nn.Module, optimizer: torch.optim.Optimizer, x: Tensor, t_logits: Tensor, y: Tensor) -> Tensor:
    """One optimisation step of the plain loops; returns the step's loss, detached."""
    loss = kd_loss(student(x), t_logits, y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.detach()


class _Phases(pl.Callback):
    """Wall and CPU stamps at the hooks that bound each phase of a run (no per-step work)."""

    def __init__(self) -> None:
        self.marks: list[tuple[str, float, float]] = []

    def mark(self, name: str) -> None:
        self.marks.append((name, time.perf_counter(), time.process_time()))

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.mark("fit")

    def on_sanity_check_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.mark("sanity")

    def on_sanity_check_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.mark("start")

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.mark("train")

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.mark("val")

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.mark("epoch_end")

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.mark("teardown")


def _timed(owner: Any, method: str, into: list[float]) -> None:
    """Wrap ``owner.method`` so each call's wall time is appended to ``into`` (the instance only)."""
    inner = getattr(owner, method)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            into.append(time.perf_counter() - start)

    setattr(owner, method, wrapper)


def _phase_totals(marks: list[tuple[str, float, float]], end: tuple[float, float]) -> dict[str, dict[str, float]]:
    """Seconds (wall, CPU) from each mark to the next, summed by the phase the mark opens."""
    totals: dict[str, dict[str, float]] = {}
    for (name, wall, cpu), (_, wall_next, cpu_next) in zip(marks, [*marks[1:], ("", *end)]):
        slot = totals.setdefault(name, {"wall_s": 0.0, "cpu_s": 0.0})
        slot["wall_s"] += wall_next - wall
        slot["cpu_s"] += cpu_next - cpu
    return totals


def whole_plain(student: nn.Module, teacher: nn.Module, loaders: tuple[Any, Any], epochs: int, seed: int,
                run_dir: Path) -> dict[str, Any]:
    """The plain loop doing the whole run's work: train, validate, ``torch.save`` and a CSV row each epoch."""
    phases = _Phases()
    start = (time.perf_counter(), time.process_time())
    phases.marks.append(("construct", *start))
    train_loader, val_loader = loaders
    pl.seed_everything(seed, verbose=False)
    optimizer = torch.optim.Adam(student.parameters(), lr=LR)
    teacher.eval()
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    val_acc = float("nan")
    with open(run_dir / "metrics.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["epoch", "step", "train_loss", "val_loss", "val_acc"])
        for epoch in range(epochs):
            phases.mark("train")
            student.train()
            loss_sum, count = torch.zeros(()), 0
            for x, y in train_loader:
                with torch.no_grad():
                    t_logits = teacher(x)  # (B, C)
                loss_sum += plain_step(student, optimizer, x, t_logits, y) * len(y)
                count += len(y)
            phases.mark("val")
            student.eval()
            val_loss, correct, seen = torch.zeros(()), 0, 0
            with torch.no_grad():
                for x, y in val_loader:
                    logits = student(x)  # (B, C)
                    val_loss += F.cross_entropy(logits, y) * len(y)
                    correct += int((logits.argmax(-1) == y).sum())
                    seen += len(y)
            val_acc = correct / seen
            phases.mark("epoch_end")
            torch.save({"epoch": epoch, "state_dict": student.state_dict(), "optimizer": optimizer.state_dict()},
                       run_dir / "checkpoints" / "last.pt")
            writer.writerow([epoch, (epoch + 1) * len(train_loader), float(loss_sum / count),
                             float(val_loss / seen), val_acc])
            handle.flush()
    end = (time.perf_counter(), time.process_time())
    return {"wall_s": end[0] - start[0], "cpu_s": end[1] - start[1], "phases": _phase_totals(phases.marks, end),
            "checkpoint_write_s": [], "val_acc": val_acc}


def whole_kd_toolkit(student: nn.Module, teacher: nn.Module, loaders: tuple[Any, Any], epochs: int, seed: int,
                     run_dir: Path) -> dict[str, Any]:
    """One ``KnowledgeDistillationTraining(...).fit()`` as a user runs it: validation every epoch, best and last
    checkpoints, ``metrics.csv``, model summary and sanity check (only the progress bar is off, and the log
    lines are quiet; ``track_grad_norm=None``: the plain loop computes no gradient norms)."""
    phases = _Phases()
    start = (time.perf_counter(), time.process_time())
    phases.marks.append(("construct", *start))
    kd = KnowledgeDistillationTraining(
        teacher_model=teacher, student_model=student, train_data_loader=loaders[0], val_data_loaders=loaders[1],
        num_gpu_used=0, max_epoch=epochs, learning_rate=LR, temperature=TEMPERATURE,
        final_loss_coeff_dict=dict(WEIGHTS), seed=seed, precision=32, track_grad_norm=None,
        default_root_dir=run_dir, callbacks=[phases], enable_progress_bar=False, quiet=True,
        enable_model_summary=True,
    )
    writes: list[float] = []
    _timed(kd.trainer.strategy.checkpoint_io, "save_checkpoint", writes)
    phases.mark("trainer_ready")
    kd.fit()
    end = (time.perf_counter(), time.process_time())
    return {"wall_s": end[0] - start[0], "cpu_s": end[1] - start[1], "phases": _phase_totals(phases.marks, end),
            "checkpoint_write_s": writes, "val_acc": float(kd.trainer.callback_metrics.get("val_acc", float("nan")))}


#: phase -> what it holds, for the breakdown (per run, or per epoch)
PHASES = {
    "construct": "KnowledgeDistillationTraining(...) / the plain loop's optimizer and files",
    "trainer_ready": "from the constructor's return to fit's first hook (fit entry, loggers' hparams)",
    "fit": "fit set-up: strategy, optimizer, model summary (on_fit_start)",
    "sanity": "sanity-check validation",
    "start": "from the sanity check to the first epoch",
    "train": "training batches (per epoch)",
    "val": "validation (per epoch)",
    "epoch_end": "after validation: checkpoints (best, last), CSV, callbacks (per epoch)",
    "teardown": "after the last epoch until fit returns",
}


def run_whole(epochs: int, repeats: int, n_train: int | None, threads: int, seed: int = 0, warmup: int = 1
              ) -> dict[str, Any]:
    """Time the whole run through kd_toolkit against the plain loop doing the same work (arms interleaved)."""
    data = mnist_split(seed=0, n_train=n_train)
    fit_idx, val_idx = stratified_split(data.y_train.numpy(), [1 - WHOLE_RUN["val_fraction"], WHOLE_RUN["val_fraction"]],
                                        seed=0)
    loaders = (make_loader(data.x_train[fit_idx], data.y_train[fit_idx], BATCH, shuffle=True),
               make_loader(data.x_train[val_idx], data.y_train[val_idx], WHOLE_RUN["val_batch"]))
    torch.manual_seed(seed)
    teacher = create_model("mnist_teacher").eval()
    template = create_model(WHOLE_RUN["student"])
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    counter = iter(range(10**6))
    try:
        with tempfile.TemporaryDirectory() as root:
            def arm(fn: Callable[..., dict[str, Any]]) -> Callable[[], dict[str, Any]]:
                return lambda: fn(copy.deepcopy(template), teacher, loaders, epochs, seed, Path(root) / f"r{next(counter)}")

            runs = interleave({"plain": arm(whole_plain), "kd_toolkit": arm(whole_kd_toolkit)}, repeats, warmup=warmup)
    finally:
        torch.set_num_threads(previous_threads)
    out: dict[str, Any] = {"student": WHOLE_RUN["student"], "teacher": "mnist_teacher (random init, eval, live)",
                           "n_train": len(fit_idx), "n_val": len(val_idx), "batch_size": BATCH,
                           "val_batch_size": WHOLE_RUN["val_batch"], "steps_per_epoch": len(loaders[0]),
                           "epochs": epochs, "repeats": repeats, "warmup_rounds": warmup, "threads": threads, "arms": {}}
    for name, results in runs.items():
        phases = {p: {k: median([r["phases"].get(p, {}).get(k, 0.0) for r in results]) for k in ("wall_s", "cpu_s")}
                  for p in PHASES if any(p in r["phases"] for r in results)}
        writes = [w for r in results for w in r["checkpoint_write_s"]]
        out["arms"][name] = {"wall_s_median": median([r["wall_s"] for r in results]),
                             "cpu_s_median": median([r["cpu_s"] for r in results]),
                             "wall_s_all": [r["wall_s"] for r in results], "cpu_s_all": [r["cpu_s"] for r in results],
                             "phases": phases, "checkpoint_writes_per_run": len(writes) / len(results),
                             "checkpoint_write_s_median": median(writes), "val_acc": results[0]["val_acc"]}
    kd, plain = runs["kd_toolkit"], runs["plain"]
    out["ratio"] = median([k["wall_s"] / p["wall_s"] for k, p in zip(kd, plain)])
    out["cpu_ratio"] = median([k["cpu_s"] / p["cpu_s"] for k, p in zip(kd, plain)])
    out["ratio_all"] = [k["wall_s"] / p["wall_s"] for k, p in zip(kd, plain)]
    a_kd, a_plain = out["arms"]["kd_toolkit"]["phases"], out["arms"]["plain"]["phases"]
    per_epoch = {"train", "val", "epoch_end"}
    out["fixed_costs"] = {
        p: {"what": PHASES[p], "per": "epoch" if p in per_epoch else "run",
            **{k: (a_kd.get(p, {}).get(k, 0.0) - a_plain.get(p, {}).get(k, 0.0)) / (epochs if p in per_epoch else 1)
               for k in ("wall_s", "cpu_s")}}
        for p in PHASES if p in a_kd or p in a_plain}
    return out
