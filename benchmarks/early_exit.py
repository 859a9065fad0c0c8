"""Early-exit benchmark on MNIST (BranchyNet, Teerapittayanon et al. 2016): speed at equal accuracy.

The 10,000 MNIST test images are split stratified 8,000/2,000 with seed 0 (:func:`benchmarks._common.mnist_split`);
a validation part (1,000 images, stratified) is carved from the 8,000 and the rest trains. A LeNet-5 split in
three blocks (:class:`kd_toolkit.models.LeNet`) gets a linear exit after blocks 1 and 2 and is trained whole
(equal exit weights, self-distillation from the final exit) through ``KnowledgeDistillationTraining``. The
thresholds are calibrated on the validation part for at most 0.5 points of accuracy below the final exit
(:func:`kd_toolkit.early_exit.calibration.calibrate_thresholds`); the 2,000 test images are used only for the figures:

* test accuracy of the final exit (the network without early exit) and of batched early exit, exit shares,
  average MACs per sample against the plain network's;
* throughput at batch 256 over the test images: the plain network (blocks only) against batched
  ``EarlyExitNetwork.predict``; arms alternate, the speed-up is the median of the paired ratios;
* latency at batch 1: per-sample wall time of the plain network against ``predict``, alternating per sample
  (median and mean; the machine is shared, so the median is the steadier figure);
* the seed's way: chaining the segments one sample at a time, against batched ``predict``.

Usage (from the repository root)::

    .venv/bin/python -m benchmarks.early_exit            # full run (~1 min on 2 cores), writes results/early_exit.json
    .venv/bin/python -m benchmarks.early_exit --quick    # smoke run (< 30 s)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make `benchmarks` and `kd_toolkit` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pytorch_lightning as pl
import torch
from torch import Tensor

from benchmarks._common import RESULTS_DIR, BenchmarkSkipped, interleave, machine_info, mnist_split, write_json
from kd_toolkit.data import make_loader, stratified_split
from kd_toolkit.early_exit import EarlyExitModule, EarlyExitNetwork, average_macs, exit_macs
from kd_toolkit.early_exit.calibration import calibrate_thresholds, measure_segment_latency
from kd_toolkit.models import LeNet
from kd_toolkit.training import KnowledgeDistillationTraining

NAME = "early_exit"
BRANCHYNET_CPU_SPEEDUP = 5.4  # Teerapittayanon et al. 2016, Table 1, B-LeNet on MNIST, CPU
FULL = {"n_train": None, "n_test": None, "val": 1000, "epochs": 8, "repeats": 15, "latency_samples": 1000,
        "sequential_samples": 2000}
QUICK = {"n_train": 1500, "n_test": 500, "val": 300, "epochs": 1, "repeats": 2, "latency_samples": 100,
         "sequential_samples": 200}
TRAINING = {"exit_hidden": [[], []], "self_distillation": True, "optimizer": "adam", "lr": 2e-3, "batch_size": 64,
            "max_accuracy_drop": 0.005, "seed": 0}
BATCH = 256


def _train(data: Any, settings: dict[str, Any]) -> tuple[EarlyExitNetwork, dict[str, Tensor]]:
    """Carve the validation part from the training images, train the network whole, return it and the parts."""
    y_all = data.y_train.numpy()
    fraction = settings["val"] / len(y_all)
    train_idx, val_idx = (torch.from_numpy(i) for i in stratified_split(y_all, [1 - fraction, fraction], seed=0))
    parts = {"x_train": data.x_train[train_idx], "y_train": data.y_train[train_idx],
             "x_val": data.x_train[val_idx], "y_val": data.y_train[val_idx]}
    pl.seed_everything(TRAINING["seed"], verbose=False)
    network = EarlyExitNetwork(LeNet(), (1, 1, 28, 28), TRAINING["exit_hidden"], [0.9, 0.9])
    module = EarlyExitModule(network, self_distillation=TRAINING["self_distillation"], optimizer=TRAINING["optimizer"],
                             lr=TRAINING["lr"])
    with tempfile.TemporaryDirectory() as tmp:
        KnowledgeDistillationTraining(
            module=module, train_data_loader=make_loader(parts["x_train"], parts["y_train"], TRAINING["batch_size"],
                                                         shuffle=True),
            max_epoch=settings["epochs"], seed=TRAINING["seed"], accelerator="cpu", precision=32, deterministic=False,
            checkpointing=False, csv_logging=False, quiet=True, enable_progress_bar=False, default_root_dir=tmp,
        ).fit()
    return network.eval(), parts


def _throughput(fn: Callable[[Tensor], Any], x: Tensor) -> dict[str, float]:
    """Samples per second of ``fn`` over ``x`` in batches of :data:`BATCH`."""
    start = time.perf_counter()
    for i in range(0, len(x), BATCH):
        fn(x[i : i + BATCH])
    return {"samples_per_s": len(x) / (time.perf_counter() - start)}


def _latencies(fns: dict[str, Callable[[Tensor], Any]], x: Tensor) -> dict[str, list[float]]:
    """Per-sample wall time (ms) of each function at batch 1, alternating functions on every sample."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for i in range(len(x)):
        sample = x[i : i + 1]  # (1, 1, 28, 28)
        for name in names if i % 2 == 0 else reversed(names):
            start = time.perf_counter()
            fns[name](sample)
            times[name].append(1000.0 * (time.perf_counter() - start))
    return times


def _chain_one_by_one(segments: list[Any], x: Tensor) -> Tensor:
    """The seed's inference: each sample walks the segments until one lets it exit."""
    predictions = []
    for i in range(len(x)):
        h = x[i : i + 1]
        for segment in segments:
            logits, exited, h = segment(h)
            if bool(exited[0]):
                predictions.append(int(logits.argmax(-1)))
                break
    return torch.tensor(predictions)


def _accuracy_and_exits(network: EarlyExitNetwork, x: Tensor, y: Tensor) -> dict[str, Any]:
    with torch.no_grad():
        final = torch.cat([network.blocks(x[i : i + BATCH]) for i in range(0, len(x), BATCH)])  # (N, C)
    results = [network.predict(x[i : i + BATCH]) for i in range(0, len(x), BATCH)]
    predictions = torch.cat([r.predictions for r in results])
    exit_index = torch.cat([r.exit_index for r in results])
    macs = exit_macs(network)
    plain = exit_macs(_closed(network))[-1]  # blocks only: no exit head runs when every threshold is 1.0
    avg = average_macs(exit_index, macs)
    return {
        "full_accuracy": (final.argmax(-1) == y).float().mean().item(),
        "early_exit_accuracy": (predictions == y).float().mean().item(),
        "exit_shares": (torch.bincount(exit_index, minlength=network.num_exits).double() / len(y)).tolist(),
        "exit_macs": macs, "plain_macs": plain, "average_macs": avg, "mac_speedup": plain / avg,
        "predictions": predictions,
    }


def _closed(network: EarlyExitNetwork) -> EarlyExitNetwork:
    """The same network object with every exit closed, for counting the plain network's MACs."""
    closed = type(network).__new__(type(network))
    closed.__dict__.update(network.__dict__)
    closed._thresholds = [1.0] * (network.num_exits - 1)
    return closed


def _segment_0_share(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Wall time of segment 0 (block 0, exit 0 and its decision) over the plain network's, per batch size.

    A sample leaving at exit 0 still pays this share, so ``1 / share`` bounds the speed-up from below.
    """
    out = {}
    for batch in sorted({r["batch_size"] for r in rows}):
        by = {r["segment"]: r["min_ms"] for r in rows if r["batch_size"] == batch}
        out[f"batch_{batch}"] = by[0] / by["full"]
    return out


def run(quick: bool = False, out_dir: Path = RESULTS_DIR, *, threads: int = 1) -> dict[str, Any]:
    """Run the early-exit benchmark and write ``out_dir/early_exit.json``.

    Args:
        quick: a smoke run (1,500 training images, 1 epoch, 500 test images, few repeats; < 30 s).
        out_dir: where ``early_exit.json`` goes.
        threads: torch intra-op threads during the timings (1 is steadier on the shared 2-core machine).

    Returns:
        The results dict (also written as JSON).

    Raises:
        BenchmarkSkipped: when the MNIST test files are absent (the message says where they were looked for).
    """
    settings = QUICK if quick else FULL
    data = mnist_split(seed=0, n_train=settings["n_train"], n_test=settings["n_test"])  # may raise BenchmarkSkipped
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        started = time.perf_counter()
        network, parts = _train(data, settings)
        train_s = time.perf_counter() - started
        val_loader = make_loader(parts["x_val"], parts["y_val"], 500)
        calibration = calibrate_thresholds(network, val_loader, max_accuracy_drop=TRAINING["max_accuracy_drop"],
                                           apply=True)
        x, y = data.x_test, data.y_test
        quality = _accuracy_and_exits(network, x, y)
        with torch.no_grad():
            arms = {"plain_network": lambda: _throughput(network.blocks, x),
                    "early_exit_predict": lambda: _throughput(network.predict, x)}
            arms["plain_network"](), arms["early_exit_predict"]()  # warm-up
            rates = {k: [r["samples_per_s"] for r in v] for k, v in interleave(arms, settings["repeats"]).items()}
            latency = _latencies({"plain_network": network.blocks, "early_exit_predict": network.predict},
                                 x[: settings["latency_samples"]])
            segment_rows = measure_segment_latency(network, batch_sizes=(1, BATCH), repeats=settings["repeats"] * 10)
            segments = [s.eval() for s in network.segments()]
            n_seq = settings["sequential_samples"]
            start = time.perf_counter()
            chained = _chain_one_by_one(segments, x[:n_seq])
            sequential_rate = n_seq / (time.perf_counter() - start)
        predictions = quality.pop("predictions")
        throughput = {k: statistics.median(v) for k, v in rates.items()}
        result = {
            "protocol": NAME, "quick": quick, "settings": settings, "training": TRAINING, "train_seconds": train_s,
            "split": {"train": len(parts["y_train"]), "val": len(parts["y_val"]), "test": len(y)},
            "thresholds": calibration.thresholds,
            "validation": {"full_accuracy": calibration.full_accuracy, "early_exit_accuracy": calibration.accuracy,
                           "exit_shares": calibration.exit_shares, "relative_compute": calibration.relative_compute},
            "test": quality,
            "throughput_batch_256": {"samples_per_s_median": throughput, "samples_per_s_all": rates,
                                     "speedup": statistics.median(e / p for e, p in zip(rates["early_exit_predict"],
                                                                                         rates["plain_network"]))},
            "latency_batch_1_ms": {
                name: {"mean": statistics.fmean(v), "median": statistics.median(v),
                       "p90": statistics.quantiles(v, n=10)[-1]} for name, v in latency.items()},
            "sequential_segments": {"samples_per_s": sequential_rate, "samples": n_seq,
                                    "agrees_with_predict": bool(torch.equal(chained, predictions[:n_seq])),
                                    "batched_predict_speedup": throughput["early_exit_predict"] / sequential_rate},
            "segment_time_ms": segment_rows,
            "segment_0_share_of_plain_time": _segment_0_share(segment_rows),
            "branchynet_cpu_speedup_reported": BRANCHYNET_CPU_SPEEDUP,
            "machine": {**machine_info(), "torch_threads": threads},
        }
        lat = result["latency_batch_1_ms"]
        lat["speedup_median"] = lat["plain_network"]["median"] / lat["early_exit_predict"]["median"]
        lat["speedup_mean"] = lat["plain_network"]["mean"] / lat["early_exit_predict"]["mean"]
    finally:
        torch.set_num_threads(previous_threads)
    write_json(out_dir, NAME, result)
    return result


def markdown(result: dict[str, Any]) -> str:
    """The README table of a :func:`run` result."""
    t, thr, lat, seq = result["test"], result["throughput_batch_256"], result["latency_batch_1_ms"], result["sequential_segments"]
    rate = thr["samples_per_s_median"]
    shares = " / ".join(f"{100 * s:.1f}%" for s in t["exit_shares"])
    rows = [
        ("Test accuracy, final exit (no early exit)", f"{100 * t['full_accuracy']:.2f}%"),
        ("Test accuracy, early exit", f"{100 * t['early_exit_accuracy']:.2f}%"),
        ("Thresholds (calibrated on validation)", ", ".join(f"{v:g}" for v in result["thresholds"])),
        ("Exit shares on test (exit 0 / 1 / final)", shares),
        ("MACs per sample: plain / early exit (average)", f"{t['plain_macs']:,} / {t['average_macs']:,.0f} "
                                                           f"({t['mac_speedup']:.2f}x fewer)"),
        ("Throughput at batch 256, median: plain / early exit", f"{rate['plain_network']:,.0f} / "
                                                                f"{rate['early_exit_predict']:,.0f} samples/s "
                                                                f"(**{thr['speedup']:.2f}x**, paired)"),
        ("Latency at batch 1, median: plain / early exit", f"{lat['plain_network']['median']:.3f} / "
                                                           f"{lat['early_exit_predict']['median']:.3f} ms "
                                                           f"(**{lat['speedup_median']:.2f}x**)"),
        ("Latency at batch 1, mean: plain / early exit", f"{lat['plain_network']['mean']:.3f} / "
                                                         f"{lat['early_exit_predict']['mean']:.3f} ms "
                                                         f"({lat['speedup_mean']:.2f}x)"),
        ("Segment 0 (block 0 + exit 0) wall time / plain network's, batch 1 / 256",
         " / ".join(f"{100 * v:.0f}%" for v in result["segment_0_share_of_plain_time"].values())),
        ("Seed's way (segments one sample at a time) / batched predict",
         f"{seq['samples_per_s']:,.0f} / {rate['early_exit_predict']:,.0f} samples/s "
         f"({seq['batched_predict_speedup']:.1f}x; same predictions: {seq['agrees_with_predict']})"),
    ]
    lines = ["| Measure | Value |", "|---|---|", *(f"| {a} | {b} |" for a, b in rows)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run (< 30 s)")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    try:
        result = run(quick=args.quick, out_dir=args.out_dir, threads=args.threads)
    except BenchmarkSkipped as skipped:
        print(f"Early-exit benchmark skipped: {skipped}")
        return
    machine = result["machine"]
    print(markdown(result))
    print(f"\nmachine: {machine['cpu']}, {machine['cores']} cores, {result['machine']['torch_threads']} torch thread(s), "
          f"torch {machine['versions']['torch']}; training {result['train_seconds']:.0f} s; "
          f"written to {args.out_dir / (NAME + '.json')}")


if __name__ == "__main__":
    main()
