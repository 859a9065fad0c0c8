"""Choosing early-exit thresholds: calibration on a validation split, sweeps, plots and latency.

Calibrate on a validation split, never on the test split: thresholds are fitted to the data they
are chosen on, so test accuracy measured on the calibration data would be optimistic.
"""

from __future__ import annotations

import math
import numbers
import os
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from kd_toolkit.early_exit import EarlyExitNetwork, _check_input_shape, _eval_mode, _exit_costs, _mac_parts

__all__ = [
    "CalibrationResult",
    "calibrate_thresholds",
    "collect_exit_logits",
    "measure_segment_latency",
    "plot_accuracy_vs_compute",
    "sweep_thresholds",
]

#: Default grid: 0.01 .. 1.00 in steps of 0.01 plus a few values close to 1 for confident networks.
_DEFAULT_CANDIDATES = tuple(sorted({round(k / 100, 2) for k in range(1, 101)} | {0.995, 0.999, 0.9995, 0.9999}))


class _DefaultDrop(float):
    """The default ``max_accuracy_drop`` (0.005): a float, but recognisable, so that giving only
    ``target_exit_share`` switches to that target instead of clashing with the default."""


_DEFAULT_DROP = _DefaultDrop(0.005)


@dataclass
class CalibrationResult:
    """Outcome of :func:`calibrate_thresholds` (accuracies and shares are fractions in [0, 1])."""

    thresholds: list[float]  # one per exit except the final one
    accuracy: float  # early-exit accuracy with these thresholds
    full_accuracy: float  # accuracy of the final exit alone
    exit_shares: list[float]  # fraction of samples leaving at each exit, final included
    average_macs: float  # per sample, see kd_toolkit.early_exit.exit_macs
    relative_compute: float  # average_macs / MACs of the plain network (blocks only)


class _ExitTable:
    """Everything the search needs from one pass over a loader, as tensors on the CPU."""

    def __init__(self, network: EarlyExitNetwork, loader: Iterable, name: str) -> None:
        logits, labels = _collect(network, loader, name)
        self.scores = torch.stack([network.confidence_scores(out) for out in logits[:-1]])  # (E-1, N)
        self.correct = torch.stack([out.argmax(-1) == labels for out in logits])  # (E, N) bool
        self.block_macs, self.head_macs = _mac_parts(network)
        self.full_macs = float(sum(self.block_macs))

    def evaluate(self, thresholds: Sequence[float]) -> dict[str, Any]:
        """Accuracy, exit shares and compute of a threshold setting, as ``predict`` would give."""
        num_exits, n = self.correct.shape
        limits = torch.tensor(list(thresholds), dtype=self.scores.dtype)[:, None]  # (E-1, 1)
        leaves = torch.cat([self.scores > limits, torch.ones(1, n, dtype=torch.bool)])  # (E, N)
        exit_index = leaves.int().argmax(dim=0)  # (N,) first exit whose score is exceeded
        costs = torch.tensor(_exit_costs(self.block_macs, self.head_macs, thresholds), dtype=torch.float64)
        average = float(costs[exit_index].mean())
        return {
            "thresholds": [float(t) for t in thresholds],
            "accuracy": float(self.correct[exit_index, torch.arange(n)].float().mean()),
            "full_accuracy": float(self.correct[-1].float().mean()),
            "exit_shares": (torch.bincount(exit_index, minlength=num_exits).double() / n).tolist(),
            "average_macs": average,
            "relative_compute": average / self.full_macs if self.full_macs else 1.0,
        }


def collect_exit_logits(network: EarlyExitNetwork, loader: Iterable) -> tuple[list[Tensor], Tensor]:
    """Logits of every exit over a loader of ``(x, y)`` batches, in one pass, no grad, eval mode.

    Returns:
        ``num_exits`` CPU tensors ``(N, C)`` and the labels ``(N,)``.

    Example:
        >>> from torch import nn
        >>> net = EarlyExitNetwork(nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 3)), (1, 4), 8, [0.9])
        >>> logits, labels = collect_exit_logits(net, [(torch.randn(5, 4), torch.zeros(5, dtype=torch.long))])
        >>> [tuple(t.shape) for t in logits], tuple(labels.shape)
        ([(5, 3), (5, 3)], (5,))
    """
    return _collect(network, loader, "loader")


def calibrate_thresholds(
    network: EarlyExitNetwork,
    val_loader: Iterable,
    *,
    max_accuracy_drop: float | None = _DEFAULT_DROP,
    target_exit_share: float | None = None,
    candidates: Sequence[float] | None = None,
    apply: bool = False,
) -> CalibrationResult:
    """Pick exit thresholds on a validation split (never the test split).

    Exactly one target is used: ``max_accuracy_drop`` (0.005 by default) or, when given,
    ``target_exit_share`` (giving both explicitly is an error):

    - ``max_accuracy_drop``: early-exit accuracy at most this much (absolute, 0.005 = 0.5 points)
      below the final exit's accuracy, with as little average compute as the search finds. The
      search is greedy from the first exit: with later exits closed (threshold 1.0), each exit
      in turn gets the candidate with the least average compute that keeps the constraint.
    - ``target_exit_share``: at least this fraction of samples leaves before the final exit. The
      search uses one threshold for all exits, the largest candidate that reaches the share.

    Everything is computed from one pass over ``val_loader`` (see :func:`collect_exit_logits`).

    Args:
        network: The early-exit network; its thresholds are changed only when ``apply``.
        val_loader: Validation batches ``(x, y)``.
        max_accuracy_drop: Allowed accuracy drop in [0, 1], or ``None``; the default 0.005 applies
            only when ``target_exit_share`` is not given.
        target_exit_share: Share of early exits in (0, 1], or ``None``.
        candidates: Thresholds to try, in (0, 1]; default 0.01..1.00 by 0.01 plus 0.995..0.9999.
        apply: Set the chosen thresholds on ``network``.

    Example:
        >>> from torch import nn
        >>> net = EarlyExitNetwork(nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 3)), (1, 4), 8, [0.9])
        >>> data = [(torch.randn(16, 4), torch.randint(0, 3, (16,)))]
        >>> result = calibrate_thresholds(net, data, target_exit_share=0.5)
        >>> result.exit_shares[0] >= 0.5
        True
    """
    if max_accuracy_drop is _DEFAULT_DROP:
        max_accuracy_drop = None if target_exit_share is not None else float(_DEFAULT_DROP)
    if (max_accuracy_drop is None) == (target_exit_share is None):
        raise ValueError(
            "Expected exactly one of `max_accuracy_drop` and `target_exit_share`, but got "
            f"max_accuracy_drop={max_accuracy_drop!r} and target_exit_share={target_exit_share!r}; "
            "give only one of them."
        )
    if max_accuracy_drop is not None and not (_is_real(max_accuracy_drop) and 0.0 <= max_accuracy_drop <= 1.0):
        raise ValueError(f"Expected `max_accuracy_drop` to be a number in [0, 1], but got {max_accuracy_drop!r}.")
    if target_exit_share is not None and not (_is_real(target_exit_share) and 0.0 < target_exit_share <= 1.0):
        raise ValueError(f"Expected `target_exit_share` to be a number in (0, 1], but got {target_exit_share!r}.")
    grid = _check_candidates(_DEFAULT_CANDIDATES if candidates is None else candidates)
    table = _ExitTable(network, val_loader, "val_loader")
    if max_accuracy_drop is not None:
        chosen = _greedy_for_accuracy(table, grid, float(max_accuracy_drop))
    else:
        chosen = _shared_for_share(table, grid, float(target_exit_share))  # type: ignore[arg-type]
    if apply:
        network.thresholds = chosen["thresholds"]
    fields = ("thresholds", "accuracy", "full_accuracy", "exit_shares", "average_macs", "relative_compute")
    return CalibrationResult(**{key: chosen[key] for key in fields})


def sweep_thresholds(network: EarlyExitNetwork, loader: Iterable, values: Sequence[float]) -> list[dict[str, Any]]:
    """Accuracy, compute and exit shares with one threshold shared by all exits, per value.

    Returns:
        One dict per value with ``threshold``, ``thresholds``, ``accuracy``, ``full_accuracy``,
        ``exit_shares``, ``average_macs`` and ``relative_compute``.
    """
    values = _check_candidates(values, name="values", sort=False)
    table = _ExitTable(network, loader, "loader")
    return [{"threshold": v, **table.evaluate([v] * (network.num_exits - 1))} for v in values]


def plot_accuracy_vs_compute(sweep: Sequence[dict[str, Any]], path: str | os.PathLike) -> Path:
    """Plot a :func:`sweep_thresholds` result (accuracy against relative compute) to a PNG.

    Uses matplotlib's object API with the Agg canvas, so no global backend is changed.
    """
    if not sweep or not all({"accuracy", "relative_compute"} <= set(point) for point in sweep):
        raise ValueError(f"Expected `sweep` to be a non-empty result of sweep_thresholds, but got {sweep!r}.")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    xs = [p["relative_compute"] for p in sweep]
    ys = [100 * p["accuracy"] for p in sweep]
    ax.plot(xs, ys, marker="o")
    for point, x, y in zip(sweep, xs, ys):
        if "threshold" in point:
            ax.annotate(f"{point['threshold']:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    if "full_accuracy" in sweep[0]:
        ax.axhline(100 * sweep[0]["full_accuracy"], linestyle="--", color="gray", label="final exit only")
        ax.legend(loc="lower right")
    ax.set_xlabel("average compute relative to the network without exits")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("Early exit: accuracy vs compute")
    ax.grid(alpha=0.3)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", bbox_inches="tight")
    return out


def measure_segment_latency(
    network: EarlyExitNetwork,
    input_shape: Sequence[int] | None = None,
    batch_sizes: Sequence[int] = (1, 256),
    repeats: int = 20,
    warmup: int = 3,
) -> list[dict[str, Any]]:
    """Wall time of every segment and of the plain network, per batch size, on the network's device.

    Each segment is timed on a full batch of its input (block, exit head and exit decision);
    ``"full"`` rows time the blocks alone, i.e. the network without exits. Runs under no grad in
    eval mode, with ``torch.cuda.synchronize`` around each run on CUDA.

    Args:
        network: The early-exit network.
        input_shape: Shape of one input batch; defaults to ``network.input_shape``; the batch
            dimension is replaced by each of ``batch_sizes``.
        batch_sizes: Batch sizes to time.
        repeats: Timed runs per measurement.
        warmup: Untimed runs first.

    Returns:
        Dicts with ``segment`` (index or ``"full"``), ``batch_size``, ``mean_ms``, ``std_ms``,
        ``min_ms`` and ``device``.
    """
    shape = _check_input_shape(network.input_shape if input_shape is None else input_shape)
    if not all(isinstance(b, numbers.Integral) and b > 0 for b in batch_sizes) or not batch_sizes:
        raise ValueError(f"Expected `batch_sizes` to be positive ints, but got {batch_sizes!r}.")
    if not (isinstance(repeats, numbers.Integral) and repeats > 0):
        raise ValueError(f"Expected `repeats` to be a positive int, but got {repeats!r}.")
    if not (isinstance(warmup, numbers.Integral) and warmup >= 0):
        raise ValueError(f"Expected `warmup` to be a non-negative int, but got {warmup!r}.")
    reference = next(network.parameters(), None)
    device = torch.device("cpu") if reference is None else reference.device
    dtype = torch.get_default_dtype() if reference is None else reference.dtype
    rows = []
    with torch.no_grad(), _eval_mode(network):
        for batch in batch_sizes:
            x = torch.randn((int(batch), *shape[1:]), generator=torch.Generator().manual_seed(0))
            h = x.to(device=device, dtype=dtype)  # (B, ...)
            for index, segment in enumerate(network.segments()):
                times = _time(segment, h, repeats, warmup, device)
                rows.append(_row(index, batch, times, device))
                h = segment.block(h)  # the next segment is timed on the whole batch too
            rows.append(_row("full", batch, _time(network.blocks, x.to(device=device, dtype=dtype), repeats,
                                                   warmup, device), device))
    return rows


def _time(fn: Callable[[Tensor], Any], x: Tensor, repeats: int, warmup: int, device: torch.device) -> list[float]:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        fn(x)
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(x)
        sync()
        times.append(time.perf_counter() - start)
    return times


def _row(segment: int | str, batch: int, times: list[float], device: torch.device) -> dict[str, Any]:
    ms = [1000.0 * t for t in times]
    return {"segment": segment, "batch_size": int(batch), "mean_ms": statistics.fmean(ms),
            "std_ms": statistics.pstdev(ms), "min_ms": min(ms), "device": str(device)}


def _collect(network: EarlyExitNetwork, loader: Iterable, name: str) -> tuple[list[Tensor], Tensor]:
    reference = next(network.parameters(), None)
    device = None if reference is None else reference.device
    outputs: list[list[Tensor]] = [[] for _ in range(network.num_exits)]
    labels = []
    with torch.no_grad(), _eval_mode(network):
        for batch in loader:
            if not isinstance(batch, (tuple, list)) or len(batch) < 2:
                raise ValueError(f"Expected `{name}` to yield (x, y) batches, but got a {type(batch).__name__}.")
            for store, logits in zip(outputs, network(batch[0].to(device))):
                store.append(logits.float().cpu())  # (B, C)
            labels.append(torch.as_tensor(batch[1]).long().cpu())  # (B,)
    if not labels:
        raise ValueError(f"Expected `{name}` to yield at least one (x, y) batch, but got an empty loader {loader!r}.")
    return [torch.cat(store) for store in outputs], torch.cat(labels)


def _greedy_for_accuracy(table: _ExitTable, grid: list[float], max_drop: float) -> dict[str, Any]:
    """Greedy from the first exit: least compute that keeps accuracy >= full - max_drop."""
    num_thresholds = table.scores.shape[0]
    thresholds = [1.0] * num_thresholds  # all closed: exactly the final exit's accuracy
    best = table.evaluate(thresholds)
    floor = best["full_accuracy"] - max_drop - 1e-9  # tolerance for float rounding of counts
    for index in range(num_thresholds):
        for candidate in grid:
            trial = table.evaluate(thresholds[:index] + [candidate] + thresholds[index + 1 :])
            better = (trial["average_macs"], -trial["accuracy"]) < (best["average_macs"], -best["accuracy"])
            if trial["accuracy"] >= floor and better:
                best = trial
        thresholds = best["thresholds"]
    return best


def _shared_for_share(table: _ExitTable, grid: list[float], share: float) -> dict[str, Any]:
    """The largest shared threshold with at least ``share`` of samples leaving before the final exit."""
    num_thresholds = table.scores.shape[0]
    reached = []
    for candidate in reversed(grid):  # largest first: the most conservative setting wins
        trial = table.evaluate([candidate] * num_thresholds)
        early = 1.0 - trial["exit_shares"][-1]
        if early >= share - 1e-9:
            return trial
        reached.append(early)
    raise ValueError(
        f"Expected `target_exit_share` to be reachable with the candidate thresholds, but got {share!r}; "
        f"at most {max(reached):.3f} of the samples leave early. Add lower `candidates` or lower the target."
    )


def _check_candidates(values: Sequence[float], name: str = "candidates", sort: bool = True) -> list[float]:
    ok = isinstance(values, Sequence) and len(values) > 0 and all(_is_real(v) and 0.0 < v <= 1.0 for v in values)
    if not ok:
        raise ValueError(f"Expected `{name}` to be a non-empty sequence of numbers in (0, 1], but got {values!r}.")
    return sorted({float(v) for v in values}) if sort else [float(v) for v in values]


def _is_real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
