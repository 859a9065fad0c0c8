"""Choosing early-exit thresholds: calibration on a validation split, sweeps, plots and latency.

Every threshold setting is scored with the runtime's exit rule and cost counters
(:mod:`kd_toolkit.early_exit.runtime`), so the numbers are what ``predict`` would give;
:func:`measure_segment_latency` lives in :mod:`kd_toolkit.early_exit.cost` and is re-exported here.

Calibrate on a validation split, never on the test split: thresholds are fitted to the data they
are chosen on, so test accuracy measured on the calibration data would be optimistic. For the same
reason :func:`calibrate_thresholds` bounds the accuracy drop from above at a confidence level
(``confidence_level=0.95`` by default, :func:`accuracy_drop_bound`) instead of trusting the drop
observed on the validation sample, which the greedy search would otherwise push to the edge.
"""

from __future__ import annotations

import functools
import math
import os
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from kd_toolkit._checks import check_float, check_int, expected, is_real
from kd_toolkit.early_exit import runtime
from kd_toolkit.early_exit.cost import mac_parts, measure_segment_latency
from kd_toolkit.early_exit.network import EarlyExitNetwork
from kd_toolkit.early_exit.runtime import eval_mode

__all__ = [
    "CalibrationResult",
    "accuracy_drop_bound",
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
    #: One-sided upper confidence bound on the accuracy drop (``None`` when ``confidence_level=None``).
    accuracy_drop_bound: float | None = None
    confidence_level: float | None = None  # the level of that bound


class _ExitTable:
    """Everything the search needs from one pass over a loader, as tensors on the CPU."""

    def __init__(self, network: EarlyExitNetwork, loader: Iterable, name: str) -> None:
        logits, labels = _collect(network, loader, name)
        self.scores = torch.stack([network.confidence_scores(out) for out in logits[:-1]])  # (E-1, N)
        self.correct = torch.stack([out.argmax(-1) == labels for out in logits])  # (E, N) bool
        self.block_macs, self.head_macs = mac_parts(network)
        self.full_macs = float(sum(self.block_macs))

    def evaluate(self, thresholds: Sequence[float]) -> dict[str, Any]:
        """Accuracy, exit shares and compute of a threshold setting, as ``predict`` would give."""
        num_exits, n = self.correct.shape
        exit_index = runtime.exit_indices(self.scores, thresholds)  # (N,)
        average = runtime.average_macs(exit_index, runtime.exit_costs(self.block_macs, self.head_macs, thresholds))
        correct = self.correct[exit_index, torch.arange(n)]  # (N,) bool, early exit
        return {
            "thresholds": [float(t) for t in thresholds],
            "losses": int((self.correct[-1] & ~correct).sum()),  # right at the final exit, wrong where it left
            "early": int((exit_index < num_exits - 1).sum()), "n": n,
            "accuracy": float(correct.float().mean()),
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
    confidence_level: float | None = 0.95,
) -> CalibrationResult:
    """Pick exit thresholds on a validation split (never the test split).

    Exactly one target is used: ``max_accuracy_drop`` (0.005 by default) or, when given,
    ``target_exit_share`` (giving both explicitly is an error):

    - ``max_accuracy_drop``: early-exit accuracy at most this much (absolute, 0.005 = 0.5 points)
      below the final exit's accuracy, with as little average compute as the search finds. With
      ``confidence_level`` (0.95 by default) the constraint is on the one-sided upper confidence
      bound of the drop (:func:`accuracy_drop_bound`), so that it holds beyond the validation
      sample at that level; with ``confidence_level=None`` on the drop observed on validation
      (the behaviour before the bound, optimistic off the validation set). The search is greedy
      from the first exit: with later exits closed (threshold 1.0), each exit in turn gets the
      candidate with the least average compute that keeps the constraint.
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
        confidence_level: Level in (0, 1) of the bound on the accuracy drop, or ``None`` to use the
            observed drop; reported as ``accuracy_drop_bound`` with the thresholds. 0.95 by default:
            the usual one-sided level; higher levels are safer but let fewer samples leave early. Even
            with no sample lost the bound is ``1 - (1 - level) ** (1 / n)`` (about ``3 / n`` at 0.95), so
            ``n`` validation samples support ``max_accuracy_drop`` down to about ``3 / n``; below that every
            exit stays closed and a warning says so.

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
    if max_accuracy_drop is not None and not (is_real(max_accuracy_drop) and 0.0 <= max_accuracy_drop <= 1.0):
        raise expected("max_accuracy_drop", "a number in [0, 1]", max_accuracy_drop)
    if target_exit_share is not None and not runtime.is_threshold(target_exit_share):
        raise expected("target_exit_share", "a number in (0, 1]", target_exit_share)
    if confidence_level is not None:
        confidence_level = check_float("confidence_level", confidence_level, minimum=0, maximum=1,
                                       open_low=True, open_high=True)
    grid = _check_candidates(_DEFAULT_CANDIDATES if candidates is None else candidates)
    table = _ExitTable(network, val_loader, "val_loader")
    n = int(table.correct.shape[1])
    if max_accuracy_drop is not None and confidence_level is not None and \
            accuracy_drop_bound(0, n, confidence_level) > max_accuracy_drop:
        warnings.warn(f"calibrate_thresholds: {n} validation samples cannot show a drop <= {max_accuracy_drop:g} at "
                      f"confidence_level={confidence_level:g} even with no sample lost (the bound is "
                      f"{accuracy_drop_bound(0, n, confidence_level):.4f}), so every exit stays closed; use "
                      + (f"about {math.ceil(-math.log(1 - confidence_level) / max_accuracy_drop)} or more validation "
                         "samples, " if max_accuracy_drop > 0 else "")
                      + "a larger max_accuracy_drop, a lower confidence_level, or confidence_level=None.", stacklevel=2)
    if max_accuracy_drop is not None:
        chosen = _greedy_for_accuracy(table, grid, float(max_accuracy_drop), confidence_level)
    else:
        chosen = _shared_for_share(table, grid, float(target_exit_share))  # type: ignore[arg-type]
    if apply:
        network.thresholds = chosen["thresholds"]
    fields = ("thresholds", "accuracy", "full_accuracy", "exit_shares", "average_macs", "relative_compute")
    bound = None if confidence_level is None else _bound(chosen, confidence_level)
    return CalibrationResult(**{key: chosen[key] for key in fields}, accuracy_drop_bound=bound,
                             confidence_level=confidence_level)


def accuracy_drop_bound(losses: int, n: int, confidence_level: float = 0.95, *, early: int | None = None) -> float:
    """One-sided upper confidence bound on an early-exit network's accuracy drop, from paired correctness.

    On ``n`` validation samples, ``losses`` are those the final exit classifies correctly and the
    early-exit network (each sample at the exit it leaves) does not. The drop in accuracy is the
    loss rate minus the gain rate (wrong at the final exit, right where it left), so it is at most
    the loss rate; the bound is the exact (Clopper-Pearson) upper bound of that binomial rate at
    ``confidence_level``: the drop stays below it with at least that probability on data from the
    same distribution. Ignoring the gains makes it conservative. ``early=0`` (no sample leaves
    early: the predictions are the final exit's) gives 0.

    Example:
        >>> round(accuracy_drop_bound(0, 1000, 0.95), 5), round(accuracy_drop_bound(2, 1000, 0.95), 5)
        (0.00299, 0.00628)
    """
    n = check_int("n", n, minimum=1)
    losses = check_int("losses", losses, minimum=0, maximum=n)
    level = check_float("confidence_level", confidence_level, minimum=0, maximum=1, open_low=True,
                        open_high=True)
    if early is not None and check_int("early", early, minimum=0, maximum=n) == 0:
        return 0.0
    return _clopper_pearson_upper(losses, n, level)


@functools.lru_cache(maxsize=4096)
def _clopper_pearson_upper(k: int, n: int, level: float) -> float:
    """The ``p`` with ``P(Binomial(n, p) <= k) = 1 - level`` (bisection on the CDF; 1.0 when ``k == n``)."""
    if k >= n:
        return 1.0
    alpha, low, high = 1.0 - level, k / n, 1.0
    for _ in range(60):  # the CDF falls as p grows
        mid = (low + high) / 2
        low, high = (mid, high) if _binomial_cdf(k, n, mid) > alpha else (low, mid)
    return high


def _binomial_cdf(k: int, n: int, p: float) -> float:
    if p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 0.0
    log_p, log_q = math.log(p), math.log1p(-p)
    terms = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * log_p + (n - i) * log_q
             for i in range(k + 1)]
    top = max(terms)
    return math.exp(top) * sum(math.exp(t - top) for t in terms)


def _bound(trial: dict[str, Any], level: float) -> float:
    return accuracy_drop_bound(trial["losses"], trial["n"], level, early=trial["early"])


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


def _collect(network: EarlyExitNetwork, loader: Iterable, name: str) -> tuple[list[Tensor], Tensor]:
    reference = next(network.parameters(), None)
    device = None if reference is None else reference.device
    outputs: list[list[Tensor]] = [[] for _ in range(network.num_exits)]
    labels = []
    with torch.no_grad(), eval_mode(network):
        for batch in loader:
            if not isinstance(batch, (tuple, list)) or len(batch) < 2:
                raise ValueError(f"Expected `{name}` to yield (x, y) batches, but got a {type(batch).__name__}.")
            for store, logits in zip(outputs, network(batch[0].to(device))):
                store.append(logits.float().cpu())  # (B, C)
            labels.append(torch.as_tensor(batch[1]).long().cpu())  # (B,)
    if not labels:
        raise ValueError(f"Expected `{name}` to yield at least one (x, y) batch, but got an empty loader {loader!r}.")
    return [torch.cat(store) for store in outputs], torch.cat(labels)


def _greedy_for_accuracy(table: _ExitTable, grid: list[float], max_drop: float,
                         level: float | None) -> dict[str, Any]:
    """Greedy from the first exit: least compute whose drop (or its upper bound at ``level``) is <= max_drop."""
    num_thresholds = table.scores.shape[0]
    thresholds = [1.0] * num_thresholds  # all closed: exactly the final exit's accuracy
    best = table.evaluate(thresholds)
    floor = best["full_accuracy"] - max_drop - 1e-9  # tolerance for float rounding of counts
    for index in range(num_thresholds):
        for candidate in grid:
            trial = table.evaluate(thresholds[:index] + [candidate] + thresholds[index + 1 :])
            better = (trial["average_macs"], -trial["accuracy"]) < (best["average_macs"], -best["accuracy"])
            within = trial["accuracy"] >= floor and (level is None or _bound(trial, level) <= max_drop + 1e-9)
            if within and better:
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
    ok = isinstance(values, Sequence) and len(values) > 0 and all(runtime.is_threshold(v) for v in values)
    if not ok:
        raise expected(name, "a non-empty sequence of numbers in (0, 1]", values)
    return sorted({float(v) for v in values}) if sort else [float(v) for v in values]

