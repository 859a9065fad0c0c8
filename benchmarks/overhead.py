"""Protocol 3: what kd_toolkit costs over a plain PyTorch loop for the same KD training.

The same KD training (model, initial weights, data order, seed, Adam, loss) runs three ways:

* ``plain``: a hand-written PyTorch loop (below), the reference;
* ``lightning``: a minimal LightningModule with no logging, run by a bare ``Trainer``: Lightning's floor;
* ``kd_toolkit``: ``KnowledgeDistillationTraining`` with its default logging (CSV every 50 steps),
  without progress bar, checkpoints and grad-norm tracking (work the plain loop does not do).

Both cases use the same in-memory loader (:func:`kd_toolkit.data.make_loader`), so the figures compare the
training loops, not the data pipelines. Cases: the Hinton MNIST pair (784-1200-1200-10 teacher live,
784-800-800-10 student) and the worst case, the 784-30-30-10 student on cached teacher logits, where a
step costs about a millisecond. Arms alternate (A B C, C B A, ...) and the medians are reported.

The **whole-run** case times what a user gets by default from one ``KnowledgeDistillationTraining(...).fit()``
(construction, sanity check, model summary, validation every epoch, best/last checkpoints, ``metrics.csv``)
from the constructor call to ``fit``'s return, against a plain loop that does the same work: it builds its
optimizer, trains, validates every epoch (loss and accuracy), ``torch.save``\\ s a checkpoint (weights,
optimizer, epoch) and writes a CSV row each epoch. Both arms are timed end to end (wall and process CPU);
each phase is timed too, so the fixed costs per run and per epoch are reported one by one.
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from benchmarks._common import (
    RESULTS_DIR,
    EpochClock,
    StepLosses,
    interleave,
    machine_info,
    median,
    mnist_split,
    quiet_trainer_kwargs,
    write_json,
)
from benchmarks._overhead_run import BATCH, LR, TEMPERATURE, WEIGHTS, WHOLE_RUN, kd_loss, plain_step, run_whole
from kd_toolkit import KnowledgeDistillationTraining
from kd_toolkit.data import make_loader, with_sample_indices
from kd_toolkit.models import create_model

NAME = "overhead"

CASES: dict[str, dict[str, Any]] = {
    "mnist_800_live": {"student": "mnist_student_800", "cached": False, "epochs": 3, "repeats": 4},
    "tiny_30_cached": {"student": "mnist_student_30", "cached": True, "epochs": 8, "repeats": 9},
}
QUICK = {"n_train": 2000, "epochs": 3, "repeats": 2}
QUICK_WHOLE = {"n_train": 1200, "epochs": 2, "repeats": 1}
TARGET_RATIO = 1.05


# ------------------------------------------------------------------------------------------- arms
def plain_loop(student: nn.Module, teacher: nn.Module, loader: Any, epochs: int, cache: Tensor | None,
               seed: int, step_losses: list[float] | None = None) -> dict[str, Any]:
    """The reference: the KD step written out in PyTorch (same ops as kd_toolkit.losses.kd_loss)."""
    pl.seed_everything(seed, verbose=False)
    optimizer = torch.optim.Adam(student.parameters(), lr=LR)
    teacher.eval()
    clock = EpochClock()
    if cache is not None:  # the teacher's logits for every training sample, built once
        with torch.no_grad():
            cache = torch.cat([teacher(xb) for xb in cache.split(256)]).float()  # (N, C)
    for _ in range(epochs):
        student.train()
        loss_sum, count = torch.zeros(()), 0
        for batch in loader:
            if cache is not None:
                (x, y), index = batch
                t_logits = cache[index]  # (B, C)
            else:
                x, y = batch
                with torch.no_grad():
                    t_logits = teacher(x)  # (B, C)
            loss = plain_step(student, optimizer, x, t_logits, y)
            loss_sum += loss * len(y)
            count += len(y)
            if step_losses is not None:
                step_losses.append(float(loss))
        clock.losses.append(float(loss_sum / count))
        clock.stamp()
    return clock.summary()


class _BareKD(pl.LightningModule):
    """The same KD step as a minimal LightningModule: no logging, no checks (Lightning's own floor)."""

    def __init__(self, student: nn.Module, teacher: nn.Module, cache: Tensor | None) -> None:
        super().__init__()
        self.student = student
        object.__setattr__(self, "teacher", teacher.eval())
        self.cache_inputs = cache
        self.cache: Tensor | None = None
        self.loss_sum, self.count = torch.zeros(()), 0

    def on_train_start(self) -> None:
        if self.cache_inputs is not None:
            with torch.no_grad():
                self.cache = torch.cat([self.teacher(xb) for xb in self.cache_inputs.split(256)]).float()

    def on_train_epoch_start(self) -> None:
        self.loss_sum, self.count = torch.zeros(()), 0

    def epoch_loss_per_sample(self) -> float:
        return float(self.loss_sum / self.count)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        if self.cache is not None:
            (x, y), index = batch
            t_logits = self.cache[index]
        else:
            x, y = batch
            with torch.no_grad():
                t_logits = self.teacher(x)
        loss = kd_loss(self.student(x), t_logits, y)
        self.loss_sum += loss.detach() * len(y)
        self.count += len(y)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.student.parameters(), lr=LR)


def lightning_bare(student: nn.Module, teacher: nn.Module, loader: Any, epochs: int, cache: Tensor | None,
                   seed: int) -> dict[str, Any]:
    pl.seed_everything(seed, verbose=False)
    clock = EpochClock()
    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[clock])
    trainer.fit(_BareKD(student, teacher, cache), loader)
    return clock.summary()


def kd_toolkit_run(student: nn.Module, teacher: nn.Module, loader: Any, epochs: int, cached: bool, seed: int,
                   root: str, callbacks: list[pl.Callback] | None = None) -> dict[str, Any]:
    clock = EpochClock()
    kd = KnowledgeDistillationTraining(
        teacher_model=teacher, student_model=student, train_data_loader=loader, num_gpu_used=0, max_epoch=epochs,
        learning_rate=LR, temperature=TEMPERATURE, final_loss_coeff_dict=dict(WEIGHTS), seed=seed, precision=32,
        track_grad_norm=None, cache_teacher_outputs=cached, checkpointing=False, default_root_dir=root,
        callbacks=[clock, *(callbacks or [])], **quiet_trainer_kwargs(),
    )
    kd.fit()
    return clock.summary()


# ------------------------------------------------------------------------------------------ case
def run_case(name: str, student_name: str, cached: bool, epochs: int, repeats: int, n_train: int | None,
             seed: int = 0) -> dict[str, Any]:
    """Time the three arms on one case and check that kd_toolkit's losses equal the plain loop's."""
    data = mnist_split(seed=0, n_train=n_train)
    torch.manual_seed(seed)
    teacher = create_model("mnist_teacher").eval()  # fixed random weights: speed and loss equality only
    template = create_model(student_name)
    loader = make_loader(data.x_train, data.y_train, BATCH, shuffle=True)
    plain_data = with_sample_indices(loader) if cached else loader
    cache_inputs = data.x_train if cached else None

    with tempfile.TemporaryDirectory() as root:
        # 1) loss agreement, step by step, over one epoch (untimed)
        plain_steps: list[float] = []
        plain_loop(copy.deepcopy(template), teacher, plain_data, 1, cache_inputs, seed, plain_steps)
        recorder = StepLosses()
        kd_toolkit_run(copy.deepcopy(template), teacher, loader, 1, cached, seed, root, [recorder])
        step_diff = max(abs(a - b) for a, b in zip(plain_steps, recorder.losses))
        # 2) timing, interleaved
        arms: dict[str, Callable[[], dict[str, Any]]] = {
            "plain": lambda: plain_loop(copy.deepcopy(template), teacher, plain_data, epochs, cache_inputs, seed),
            "lightning": lambda: lightning_bare(copy.deepcopy(template), teacher, plain_data, epochs, cache_inputs, seed),
            "kd_toolkit": lambda: kd_toolkit_run(copy.deepcopy(template), teacher, loader, epochs, cached, seed, root),
        }
        runs = interleave(arms, repeats, warmup=1)

    steps = len(loader)
    out: dict[str, Any] = {"case": name, "student": student_name, "teacher": "mnist_teacher (random init, eval)",
                           "cached_teacher": cached, "n_train": len(data.y_train), "batch_size": BATCH,
                           "steps_per_epoch": steps, "epochs": epochs, "repeats": repeats, "arms": {}}
    for arm, results in runs.items():
        epoch_s = [r["epoch_s"] for r in results]
        cpu_s = [r["cpu_epoch_s"] for r in results]
        out["arms"][arm] = {"epoch_s_median": median(epoch_s), "epoch_s_all": epoch_s,
                            "cpu_epoch_s_median": median(cpu_s), "cpu_epoch_s_all": cpu_s,
                            "ms_per_step": median(epoch_s) / steps * 1e3,
                            "first_epoch_s_median": median([r["first_epoch_s"] for r in results]),
                            "epoch_losses": results[0]["epoch_losses"]}
    ratios = [k["epoch_s"] / p["epoch_s"] for k, p in zip(runs["kd_toolkit"], runs["plain"])]
    cpu_ratios = [k["cpu_epoch_s"] / p["cpu_epoch_s"] for k, p in zip(runs["kd_toolkit"], runs["plain"])]
    floor = [b["epoch_s"] / p["epoch_s"] for b, p in zip(runs["lightning"], runs["plain"])]
    epoch_diff = max(abs(a - b) for r_k, r_p in zip(runs["kd_toolkit"], runs["plain"])
                     for a, b in zip(r_k["epoch_losses"], r_p["epoch_losses"]))
    out.update({
        "ratio_kd_toolkit_vs_plain": median(ratios), "ratio_all": ratios,
        "cpu_ratio_kd_toolkit_vs_plain": median(cpu_ratios), "cpu_ratio_all": cpu_ratios,
        "ratio_lightning_vs_plain": median(floor),
        "overhead_s_per_epoch": out["arms"]["kd_toolkit"]["epoch_s_median"] - out["arms"]["plain"]["epoch_s_median"],
        "max_step_loss_diff": step_diff, "max_epoch_loss_diff": epoch_diff,
        "losses_agree_5dp": bool(step_diff < 5e-6 and epoch_diff < 5e-6),
    })
    return out


def targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's target rows: the whole run, and each steady-state case, <= 1.05x the plain loop."""
    rows = []
    whole = result.get("whole_run")
    if whole:
        rows.append({"target": f"whole KD run through KnowledgeDistillationTraining <= {TARGET_RATIO:.2f}x a plain loop "
                               f"doing the same work ({whole['epochs']} epochs, {whole['threads']} threads)",
                     "measured": f"{whole['ratio']:.3f}x wall, {whole['cpu_ratio']:.3f}x CPU",
                     "met": bool(whole["ratio"] <= TARGET_RATIO)})
    for c in result.get("cases", []):
        rows.append({"target": f"kd_toolkit epoch <= {TARGET_RATIO:.2f}x plain loop, same losses ({c['case']})",
                     "measured": f"{c['ratio_kd_toolkit_vs_plain']:.3f}x wall, {c['cpu_ratio_kd_toolkit_vs_plain']:.3f}x "
                                 f"CPU; losses agree: {c['losses_agree_5dp']}",
                     "met": bool(c["ratio_kd_toolkit_vs_plain"] <= TARGET_RATIO and c["losses_agree_5dp"])})
    return rows


def run(quick: bool = False, out_dir: Path = RESULTS_DIR, cases: list[str] | None = None, *,
        whole_run: bool = True) -> dict[str, Any]:
    """Run protocol 3 and write ``out_dir/overhead.json``.

    Args:
        quick: a 2,000-image subset, fewer epochs and repeats (a smoke run; timings are rough).
        out_dir: where the JSON goes.
        cases: names from :data:`CASES` (default: all).
        whole_run: also time the whole run (:func:`benchmarks._overhead_run.run_whole`).
    """
    machine = machine_info()
    results = []
    for name in cases or list(CASES):
        cfg = dict(CASES[name])
        epochs, repeats, n_train = cfg["epochs"], cfg["repeats"], None
        if quick:
            epochs, repeats, n_train = QUICK["epochs"], QUICK["repeats"], QUICK["n_train"]
        results.append(run_case(name, cfg["student"], cfg["cached"], epochs, repeats, n_train))
    data: dict[str, Any] = {
        "protocol": NAME, "quick": quick, "threads": torch.get_num_threads(), "machine": machine,
        "command": f"python -m benchmarks --suite {'quick' if quick else 'full'} --only {NAME}", "cases": results,
        "figure": "steady-state seconds per epoch (median gap between epoch ends), median over repeats"}
    if whole_run:
        if quick:  # a smoke run: one thread (the quick suite's), no warm-up round
            data["whole_run"] = run_whole(QUICK_WHOLE["epochs"], QUICK_WHOLE["repeats"], QUICK_WHOLE["n_train"],
                                          torch.get_num_threads(), warmup=0)
        else:
            # the per-epoch cases above already warmed this process up (lazy imports, allocator): no warm-up round then
            data["whole_run"] = run_whole(WHOLE_RUN["epochs"], WHOLE_RUN["repeats"], None, WHOLE_RUN["threads"],
                                          warmup=0 if results else 1)
    data["targets"] = targets(data)
    data["load_average_end"] = machine_info()["load_average"]
    write_json(out_dir, NAME, data)
    return data


if __name__ == "__main__":
    import json

    print(json.dumps(run(quick=True, out_dir=Path(tempfile.mkdtemp())), indent=1)[:3000])
