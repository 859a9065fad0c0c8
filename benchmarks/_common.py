"""Shared pieces of the benchmark scripts: data, jitter, timing, statistics, machine facts, JSON output.

Nothing here holds a result: every figure the scripts report is measured when they run.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from kd_toolkit.data import MNIST_MEAN, MNIST_STD, TensorBatchDataset, load_mnist_idx, stratified_split

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"
#: The MNIST test files (10,000 images), read from outside the repository; override with KD_BENCH_MNIST_DIR.
MNIST_DIR = Path(os.environ.get("KD_BENCH_MNIST_DIR", REPO_ROOT.parent / "shared" / "data" / "mnist-test"))

warnings.filterwarnings("ignore", message=".*does not have many workers.*")
warnings.filterwarnings("ignore", message=".*GPU available but not used.*")
warnings.filterwarnings("ignore", message=".*`training_step` returned `None`.*")
warnings.filterwarnings("ignore", message=".*(LightningDataModule|val_dataloader|validation_step).*")


class BenchmarkSkipped(RuntimeError):
    """Raised by a protocol that cannot run here (missing data or package); the message says why."""


# ------------------------------------------------------------------------------------------- data
@dataclass
class Split:
    """A train/test split of in-memory tensors: ``x`` float32 ``(N, 1, H, W)``, ``y`` int64 ``(N,)``."""

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    key: str = ""  # names the split, e.g. for memoising teachers trained on it


def mnist_split(seed: int = 0, n_train: int | None = None, n_test: int | None = None) -> Split:
    """The 10,000 MNIST test images split stratified at random 8,000/2,000 with ``seed``, standardised.

    ``n_train``/``n_test`` take a stratified subset of each part (quick modes and tests).

    Raises:
        BenchmarkSkipped: when the MNIST files are not at :data:`MNIST_DIR`.
    """
    try:
        images, labels = load_mnist_idx(MNIST_DIR, "test")
    except FileNotFoundError as err:
        raise BenchmarkSkipped(f"MNIST test files not found in {str(MNIST_DIR)!r} (set KD_BENCH_MNIST_DIR): {err}") from err
    x = torch.from_numpy(images).unsqueeze(1).float().div_(255.0).sub_(MNIST_MEAN).div_(MNIST_STD)  # (N, 1, 28, 28)
    y = torch.from_numpy(labels)
    train_idx, test_idx = stratified_split(labels, [0.8, 0.2], seed=seed)
    train_idx, test_idx = _subset(labels, train_idx, n_train, seed), _subset(labels, test_idx, n_test, seed)
    return Split(x[train_idx], y[train_idx], x[test_idx], y[test_idx], f"mnist-{seed}-{n_train}-{n_test}")


def digits_split(seed: int = 0) -> tuple[Split, Split]:
    """scikit-learn's 8x8 digits as ``DigitsDataModule(seed=seed)`` splits them: ``(train/test, train/val)``."""
    from kd_toolkit.data import DigitsDataModule

    dm = DigitsDataModule(seed=seed)
    dm.setup()
    tr, va, te = dm.train_dataset, dm.val_dataset, dm.test_dataset
    return Split(tr.x, tr.y, te.x, te.y, f"digits-{seed}-test"), Split(tr.x, tr.y, va.x, va.y, f"digits-{seed}-val")


def _subset(labels: np.ndarray, idx: np.ndarray, n: int | None, seed: int) -> torch.Tensor:
    if n is not None and n < len(idx):
        keep = stratified_split(labels[idx], [n / len(idx), 1 - n / len(idx)], seed=seed)[0]
        idx = idx[keep]
    return torch.from_numpy(idx)


class RandomShift:
    """Shift each image by up to ``pixels`` in x and y (zero fill), drawn per sample from torch's global RNG.

    Batched: ``(B, C, H, W) -> (B, C, H, W)``. Its class name starts with ``Random`` so kd_toolkit's
    ``find_random_transform`` recognises it and refuses to cache teacher outputs over it.
    """

    def __init__(self, pixels: int = 2) -> None:
        self.pixels = pixels

    def __call__(self, x: Tensor) -> Tensor:
        p = self.pixels
        b, _, h, w = x.shape
        padded = nn.functional.pad(x, (p, p, p, p))  # (B, C, H + 2p, W + 2p)
        dy, dx = torch.randint(0, 2 * p + 1, (2, b, 1, 1, 1))  # (B, 1, 1, 1) each
        rows = torch.arange(h).view(1, 1, h, 1) + dy  # (B, 1, H, 1)
        cols = torch.arange(w).view(1, 1, 1, w) + dx  # (B, 1, 1, W)
        batch = torch.arange(b).view(b, 1, 1, 1)
        chan = torch.arange(x.shape[1]).view(1, -1, 1, 1)
        return padded[batch, chan, rows, cols]

    def __repr__(self) -> str:
        return f"RandomShift(pixels={self.pixels})"


class JitteredDataset(TensorBatchDataset):
    """:class:`TensorBatchDataset` whose batches are shifted at random by ``transform`` (±2 pixels)."""

    def __init__(self, x: Tensor, y: Tensor, pixels: int = 2) -> None:
        super().__init__(x, y)
        self.transform = RandomShift(pixels)

    def __getitems__(self, indices: Sequence[int]) -> Any:
        batch = super().__getitems__(indices)  # an already-collated (x, y) marker tuple
        x, y = batch
        return batch.__class__((self.transform(x), y))


def accuracy(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 2000) -> float:
    """Top-1 accuracy of ``model`` in eval mode (restores its mode)."""
    was_training = model.training
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(y), batch_size):
            correct += int((model(x[i : i + batch_size]).argmax(-1) == y[i : i + batch_size]).sum())
    model.train(was_training)
    return correct / len(y)


# ------------------------------------------------------------------------------------------ timing
class EpochClock(pl.Callback):
    """Timestamps each training epoch's end, in wall-clock and process CPU time, from its construction.

    Also records the module's mean loss per sample each epoch. No per-step work, so it does not change
    what it measures. CPU time is robust to other processes on a shared machine (one torch thread).
    """

    def __init__(self) -> None:
        self.start, self.start_cpu = time.perf_counter(), time.process_time()
        self.ends: list[float] = []
        self.ends_cpu: list[float] = []
        self.losses: list[float] = []

    def stamp(self) -> None:
        self.ends.append(time.perf_counter())
        self.ends_cpu.append(time.process_time())

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.stamp()
        if hasattr(pl_module, "epoch_loss_per_sample"):
            self.losses.append(pl_module.epoch_loss_per_sample())

    def summary(self) -> dict[str, Any]:
        """Steady-state seconds per epoch (wall and CPU), first epoch, total, and the epoch losses."""
        wall, cpu = epoch_seconds(self.start, self.ends), epoch_seconds(self.start_cpu, self.ends_cpu)
        return {**wall, "cpu_epoch_s": cpu["epoch_s"], "epoch_losses": list(self.losses)}


class StepLosses(pl.Callback):
    """Records every training step's loss (for loss-agreement checks, not for timed runs)."""

    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.losses.append(float(loss))


def epoch_seconds(start: float, ends: Sequence[float]) -> dict[str, float]:
    """Steady-state seconds per epoch (median gap between consecutive epoch ends) and the first epoch's time.

    The first epoch also pays the start-up (Trainer set-up, cache building), reported as ``first_epoch_s``.
    """
    gaps = [b - a for a, b in zip(ends, ends[1:])]
    return {
        "epoch_s": statistics.median(gaps) if gaps else (ends[0] - start if ends else float("nan")),
        "first_epoch_s": ends[0] - start if ends else float("nan"),
        "total_s": ends[-1] - start if ends else float("nan"),
    }


def mean_std(values: Sequence[float]) -> dict[str, Any]:
    """``{"mean", "std", "n", "values"}`` with the sample standard deviation (0 for one value)."""
    vals = [float(v) for v in values]
    return {"mean": statistics.fmean(vals) if vals else float("nan"),
            "std": statistics.stdev(vals) if len(vals) > 1 else 0.0, "n": len(vals), "values": vals}


def pm(stats: dict[str, Any], scale: float = 1.0, digits: int = 2) -> str:
    """Format ``mean_std`` output as ``"mean ± std"`` (times ``scale``)."""
    return f"{stats['mean'] * scale:.{digits}f} ± {stats['std'] * scale:.{digits}f}"


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def interleave(arms: dict[str, Callable[[], dict[str, Any]]], repeats: int, warmup: int = 0
               ) -> dict[str, list[dict[str, Any]]]:
    """Run each arm ``repeats`` times, alternating arms and their order (A B, B A, ...) to spread load noise.

    ``warmup`` untimed rounds of every arm come first (lazy initialisation, allocator and cache warm-up).
    """
    for _ in range(warmup):
        for arm in arms.values():
            arm()
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in arms}
    names = list(arms)
    for r in range(repeats):
        for name in names if r % 2 == 0 else reversed(names):
            results[name].append(arms[name]())
    return results


def quiet_trainer_kwargs() -> dict[str, Any]:
    """Trainer settings every benchmark run shares: no progress bar, no model summary, quiet logs."""
    return {"enable_progress_bar": False, "quiet": True, "enable_model_summary": False}


def fit_kd_toolkit(student: nn.Module, teacher: nn.Module | None, loader: Any, epochs: int, seed: int, *, lr: float,
                   scheduler: str = "", temperature: float = 4.0, weights: dict[str, float] | None = None,
                   cached: bool = False, callbacks: Sequence[pl.Callback] = ()) -> dict[str, Any]:
    """Train ``student`` through ``KnowledgeDistillationTraining`` (labels alone when ``teacher`` is None).

    No checkpoints, no metric files, no progress bar: the run's output is the trained ``student`` and the
    :class:`EpochClock` summary returned.
    """
    import tempfile

    from kd_toolkit import KnowledgeDistillationTraining

    clock = EpochClock()
    with tempfile.TemporaryDirectory() as root:
        kd = KnowledgeDistillationTraining(
            teacher_model=teacher, student_model=student, train_data_loader=loader, num_gpu_used=0,
            max_epoch=epochs, learning_rate=lr, scheduler_method=scheduler, temperature=temperature,
            final_loss_coeff_dict=weights if teacher is not None else None, seed=seed, precision=32,
            track_grad_norm=None, cache_teacher_outputs=cached, checkpointing=False, csv_logging=False,
            default_root_dir=root, callbacks=[clock, *callbacks], **quiet_trainer_kwargs(),
        )
        kd.fit()
    return clock.summary()


# ---------------------------------------------------------------------------------------- machine
def machine_info() -> dict[str, Any]:
    """The facts a reader needs to compare figures: CPU, cores, thread count, versions, date, load."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {"python": platform.python_version(), "torch": torch.__version__, "pytorch_lightning": pl.__version__}
    try:
        import torchdistill

        versions["torchdistill"] = torchdistill.__version__
    except Exception:
        versions["torchdistill"] = None
    import kd_toolkit

    versions["kd_toolkit"] = kd_toolkit.__version__
    return {
        "cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "os": platform.platform(),
        "versions": versions, "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "load_average": _load(),
    }


def _load() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


# -------------------------------------------------------------------------------------------- output
def write_json(out_dir: Path, name: str, data: dict[str, Any]) -> Path:
    """Write ``data`` to ``out_dir/name.json`` atomically and return the path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=_jsonable) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, Tensor):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    return repr(obj)


def script_main(doc: str | None, run: Callable[..., dict[str, Any]], markdown: Callable[[dict[str, Any]], str],
                label: str, quick_help: str = "smoke run") -> tuple[dict[str, Any], Path] | None:
    """The command line of a benchmark script: ``--quick``, ``--out-dir``, ``--threads``; runs it and prints its
    section. Returns ``(result, out_dir)`` for the script's own last lines, or None when the benchmark skipped."""
    import argparse

    parser = argparse.ArgumentParser(description=(doc or label).splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    try:
        result = run(quick=args.quick, out_dir=args.out_dir, threads=args.threads)
    except BenchmarkSkipped as skipped:
        print(f"{label} benchmark skipped: {skipped}")
        return None
    print(markdown(result))
    return result, args.out_dir
