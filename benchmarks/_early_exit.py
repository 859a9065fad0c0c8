"""Pieces of the early-exit protocol (benchmarks/early_exit.py): training, per-segment timing, the ideal speed-up,
latency distributions, the calibration promise over re-splits and the smaller static baseline.

Every figure is measured when the protocol runs; timed arms alternate (A B, B A, ...) and medians are reported.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor

from benchmarks._common import interleave
from kd_toolkit.data import make_loader, stratified_split
from kd_toolkit.early_exit import EarlyExitModule, EarlyExitNetwork, exit_macs, runtime
from kd_toolkit.early_exit.calibration import calibrate_thresholds, collect_exit_logits
from kd_toolkit.models import create_model
from kd_toolkit.training import KnowledgeDistillationTraining

#: One recipe for every network of the protocol (early exit or static): Adam, batch 64, whole-network training.
RECIPE = {"self_distillation": True, "optimizer": "adam", "lr": 2e-3, "batch_size": 64, "seed": 0}
BATCH = 256


def train(name: str, kwargs: dict[str, Any], exit_hidden: Any, parts: dict[str, Tensor], epochs: int, *,
          static: bool = False) -> EarlyExitNetwork:
    """Train registry model ``name`` with exits after every block but the last, through ``EarlyExitModule``.

    ``static=True`` trains the same way with every early exit's loss weight 0 (no self-distillation): the blocks
    alone are then an ordinary network trained on labels, the "smaller static network" baseline.
    """
    pl.seed_everything(RECIPE["seed"], verbose=False)
    network = EarlyExitNetwork(create_model(name, **kwargs), (1, 1, 28, 28), exit_hidden, [0.9] * len(exit_hidden))
    weights = [0.0] * len(exit_hidden) + [1.0] if static else None
    module = EarlyExitModule(network, self_distillation=RECIPE["self_distillation"] and not static,
                             exit_weights=weights, optimizer=RECIPE["optimizer"], lr=RECIPE["lr"])
    loader = make_loader(parts["x_train"], parts["y_train"], RECIPE["batch_size"], shuffle=True)
    with tempfile.TemporaryDirectory() as tmp:
        KnowledgeDistillationTraining(
            module=module, train_data_loader=loader, max_epoch=epochs, seed=RECIPE["seed"], accelerator="cpu",
            precision=32, deterministic=False, checkpointing=False, csv_logging=False, quiet=True,
            enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp,
        ).fit()
    return network.eval()


def carve_validation(x: Tensor, y: Tensor, val: int) -> dict[str, Tensor]:
    """A stratified validation part of ``val`` images carved from the training images (seed 0)."""
    fraction = val / len(y)
    train_idx, val_idx = (torch.from_numpy(i) for i in stratified_split(y.numpy(), [1 - fraction, fraction], seed=0))
    return {"x_train": x[train_idx], "y_train": y[train_idx], "x_val": x[val_idx], "y_val": y[val_idx]}


def quality(network: EarlyExitNetwork, x: Tensor, y: Tensor) -> dict[str, Any]:
    """Test accuracy of the final exit and of early exit, exit shares, MACs (plain: blocks only)."""
    with torch.no_grad():
        final = torch.cat([network.blocks(x[i : i + BATCH]) for i in range(0, len(x), BATCH)])  # (N, C)
    results = [network.predict(x[i : i + BATCH]) for i in range(0, len(x), BATCH)]
    predictions = torch.cat([r.predictions for r in results])
    exit_index = torch.cat([r.exit_index for r in results])
    macs, thresholds = exit_macs(network), network.thresholds
    network.thresholds = [1.0] * len(thresholds)
    plain = exit_macs(network)[-1]  # every exit closed: no head runs, the blocks alone
    network.thresholds = thresholds
    average = runtime.average_macs(exit_index, macs)
    return {"full_accuracy": (final.argmax(-1) == y).float().mean().item(),
            "early_exit_accuracy": (predictions == y).float().mean().item(),
            "exit_shares": (torch.bincount(exit_index, minlength=network.num_exits).double() / len(y)).tolist(),
            "exit_macs": macs, "plain_macs": plain, "average_macs": average, "mac_speedup": plain / average,
            "predictions": predictions, "exit_index": exit_index}


# ------------------------------------------------------------------------------------------ timing
def _timed(fn: Callable[[], Any]) -> Callable[[], dict[str, float]]:
    def arm() -> dict[str, float]:
        start = time.perf_counter()
        fn()
        return {"ms": 1000.0 * (time.perf_counter() - start)}

    return arm


def segment_times(network: EarlyExitNetwork, x: Tensor, repeats: int) -> dict[str, Any]:
    """Median wall time (ms) of the plain network and of every segment on a whole batch of its input.

    Segment ``k`` is the network's own work there: block ``k`` and its exit head (a closed exit's head skipped, as
    ``predict`` does); the last segment is the last block. The exit decision is ``predict``'s own overhead, not part
    of a segment: ``decide_us`` times it alone per exit, in microseconds, as ``predict`` makes it at this batch size
    (:func:`runtime.leaves_one` from the logits for one sample, :func:`runtime.decide` for a batch).
    """
    inputs, h = [], x
    with torch.no_grad():
        for block in network.blocks:
            inputs.append(h)
            h = block(h)
        last = network.num_exits - 1
        arms: dict[str, Callable[[], dict[str, float]]] = {"full": _timed(lambda: network.blocks(x))}
        decisions: dict[str, Callable[[], dict[str, float]]] = {}
        for k in range(network.num_exits):
            block, head = network.blocks[k], _segment_head(network, k)
            arms[f"segment_{k}"] = _timed(lambda b=block, e=head, i=inputs[k]: b(i) if e is None else e(b(i)))
            if k < last:
                features = block(inputs[k])
                logits = network.exits[k](features)
                one = x.shape[0] == 1
                decisions[f"decide_{k}"] = _timed(
                    (lambda g=logits: runtime.leaves_one(g, 0.5, network.confidence, g.tolist()[0])) if one else
                    (lambda f=features, g=logits: runtime.decide(f, g, 0.5, network.confidence)))
        times = interleave({**arms, **decisions}, repeats, warmup=3)
    medians = {name: statistics.median(r["ms"] for r in runs) for name, runs in times.items()}
    return {"batch_size": int(x.shape[0]), "full_ms": medians["full"],
            "segment_ms": [medians[f"segment_{k}"] for k in range(network.num_exits)],
            "decide_us": [1000.0 * medians[f"decide_{k}"] for k in range(network.num_exits - 1)]}


def ideal_speedup(times: dict[str, Any], shares: Sequence[float]) -> float:
    """``S* = t_full / sum_k q_k (t_0 + ... + t_k)`` from per-segment times and exit shares (issue 11)."""
    cumulative, expected = 0.0, 0.0
    for share, t in zip(shares, times["segment_ms"]):
        cumulative += t
        expected += share * cumulative
    return times["full_ms"] / expected


def latencies(fns: dict[str, Callable[[Tensor], Any]], x: Tensor,
              network: EarlyExitNetwork | None = None) -> dict[str, list[float]]:
    """Per-sample wall time (ms) of each function at batch 1, alternating functions on every sample.

    With ``network``, the same loop also times its segments on every sample, walking the chain piece by piece
    (``segment_k``: block ``k`` and its exit head, a closed head skipped, on the sample's features from segment
    ``k - 1``): the ideal speed-up at batch 1 then comes from the same samples, load and order as the achieved one.
    """
    times: dict[str, list[float]] = {name: [] for name in fns}
    arms: dict[str, Callable[[Tensor], Any]] = dict(fns)
    if network is not None:
        arms["segments"] = lambda sample: _walk_segments(network, sample, times)
    names = list(arms)
    with torch.no_grad():
        for i in range(len(x)):
            sample = x[i : i + 1]  # (1, 1, 28, 28)
            for name in names if i % 2 == 0 else reversed(names):
                start = time.perf_counter()
                arms[name](sample)
                if name in fns:
                    times[name].append(1000.0 * (time.perf_counter() - start))
    return times


def _walk_segments(network: EarlyExitNetwork, h: Tensor, times: dict[str, list[float]]) -> None:
    for k, block in enumerate(network.blocks):
        head = _segment_head(network, k)
        start = time.perf_counter()
        h = block(h)
        if head is not None:
            head(h)
        times.setdefault(f"segment_{k}", []).append(1000.0 * (time.perf_counter() - start))


def _segment_head(network: EarlyExitNetwork, k: int) -> Any:
    """Exit ``k``'s head as ``predict`` runs it: ``None`` after the last block and for a closed exit (threshold 1)."""
    last = network.num_exits - 1
    return network.exits[k] if k < last and runtime.head_runs(network.thresholds[k]) else None


def percentiles(values: Sequence[float]) -> dict[str, float]:
    q = statistics.quantiles(values, n=100, method="inclusive")
    return {"p50": statistics.median(values), "p95": q[94], "p99": q[98], "mean": statistics.fmean(values)}


def per_sample_by_batch(fns: dict[str, Callable[[Tensor], Any]], x: Tensor, batch_sizes: Sequence[int],
                        repeats: int) -> dict[str, dict[str, float]]:
    """Median wall time per sample (us) of each function over ``x`` in batches of each size, arms alternating."""
    out: dict[str, dict[str, float]] = {name: {} for name in fns}
    with torch.no_grad():
        for size in batch_sizes:
            n = min(len(x), max(size * 4, 256))
            chunks = [x[i : i + size] for i in range(0, n - n % size, size)]
            arms = {name: _timed(lambda f=fn, cs=chunks: [f(c) for c in cs]) for name, fn in fns.items()}
            for name, runs in interleave(arms, repeats, warmup=1).items():
                out[name][str(size)] = 1000.0 * statistics.median(r["ms"] for r in runs) / (len(chunks) * size)
    return out


def throughput(fns: dict[str, Callable[[Tensor], Any]], x: Tensor, repeats: int) -> dict[str, Any]:
    """Samples/s at batch 256 over ``x`` per arm (alternating) and the paired median speed-up of the 2nd over the 1st."""
    def rate(fn: Callable[[Tensor], Any]) -> Callable[[], dict[str, float]]:
        def arm() -> dict[str, float]:
            start = time.perf_counter()
            for i in range(0, len(x), BATCH):
                fn(x[i : i + BATCH])
            return {"samples_per_s": len(x) / (time.perf_counter() - start)}
        return arm

    with torch.no_grad():
        runs = interleave({name: rate(fn) for name, fn in fns.items()}, repeats, warmup=1)
    rates = {name: [r["samples_per_s"] for r in v] for name, v in runs.items()}
    first, second = list(rates)[:2]
    return {"samples_per_s_median": {k: statistics.median(v) for k, v in rates.items()}, "samples_per_s_all": rates,
            "speedup": statistics.median(b / a for a, b in zip(rates[first], rates[second]))}


# ------------------------------------------------------------------------------- calibration promise
def resplit_promise(network: EarlyExitNetwork, x: Tensor, y: Tensor, splits: int, val: int, max_drop: float,
                    level: float) -> dict[str, Any]:
    """Re-split the held-out images (validation + test) stratified ``splits`` times into ``val`` / the rest;
    calibrate on each validation part (with the bound at ``level`` and with the observed drop), measure the test drop.
    """
    logits, labels = collect_exit_logits(network, [(x[i : i + BATCH], y[i : i + BATCH]) for i in range(0, len(y), BATCH)])
    scores = torch.stack([network.confidence_scores(out) for out in logits[:-1]])  # (E-1, N)
    correct = torch.stack([out.argmax(-1) == labels for out in logits])  # (E, N)
    rows, saved = [], network.thresholds
    for seed in range(1, splits + 1):
        val_idx, test_idx = (torch.from_numpy(i) for i in stratified_split(y.numpy(), [val / len(y), 1 - val / len(y)],
                                                                           seed=seed))
        row: dict[str, Any] = {"seed": seed}
        for key, conf in (("bound", level), ("observed", None)):
            cal = calibrate_thresholds(network, [(x[val_idx], y[val_idx])], max_accuracy_drop=max_drop,
                                       confidence_level=conf)
            exits = runtime.exit_indices(scores[:, test_idx], cal.thresholds)  # (T,)
            test_correct = correct[:, test_idx][exits, torch.arange(len(test_idx))]
            drop = float(correct[-1, test_idx].float().mean() - test_correct.float().mean())
            row[key] = {"thresholds": cal.thresholds, "val_drop": cal.full_accuracy - cal.accuracy,
                        "drop_bound": cal.accuracy_drop_bound, "test_drop": drop,
                        "test_early_share": 1.0 - float((exits == network.num_exits - 1).float().mean())}
        rows.append(row)
    network.thresholds = saved
    within = {key: sum(r[key]["test_drop"] <= max_drop + 1e-9 for r in rows) / len(rows) for key in ("bound", "observed")}
    return {"splits": rows, "fraction_within_target": within, "val": val, "test": len(y) - val,
            "max_accuracy_drop": max_drop, "confidence_level": level}
