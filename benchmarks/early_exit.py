"""Early-exit benchmark on MNIST (BranchyNet, Teerapittayanon et al. 2016): wall-clock savings at equal accuracy.

The 10,000 MNIST test images are split stratified 8,000/2,000 with seed 0 (:func:`benchmarks._common.mnist_split`);
a validation part (1,000 images, stratified) is carved from the 8,000 and the rest trains. Two backbones, side by
side, each with exits after blocks 0 and 1, trained whole (equal exit weights, self-distillation from the final
exit) through ``KnowledgeDistillationTraining``:

* ``lenet``: LeNet-5 (:class:`kd_toolkit.models.LeNet`), whose block 0 (a 5x5 conv and a pool over the full 28x28
  map) is most of its wall time, so leaving after it saves MACs but little time;
* ``b_lenet``: B-LeNet (:class:`kd_toolkit.early_exit.models.BLeNet`), BranchyNet's placement: a cheap strided
  3x3 conv, exit 0 (one Linear on its features: few calls, which is what batch-1 latency pays for), the expensive
  stages later. Exit heads without a hidden layer were chosen over one hidden layer of 32 on validation (same
  thresholds' drop bound, about the same exit-0 share, a higher ideal speed-up at batch 1 from the validation shares).

Thresholds are calibrated on the validation part for at most 0.5 points of accuracy below the final exit, at a 95%
one-sided Clopper-Pearson bound on the drop (``calibrate_thresholds(confidence_level=0.95)``). The 2,000 test images
give the figures: accuracy, exit shares, MACs; per-segment wall time at batch 1 and 256 and the exit decision's
cost; the ideal speed-up ``S* = t_full / sum_k q_k (t_0 + ... + t_k)`` from those times (a segment is a block and
its exit head: the decision, indexing and host syncs are ``predict``'s own overhead, which the achieved figure pays) and the test exit shares,
and the achieved speed-up against it (batch 256: throughput of ``predict`` over the blocks alone, paired median of
alternating runs; batch 1: median latency of the blocks alone over the exit-share-weighted median latency of
``predict`` per exit); latency percentiles at batch 1; time per sample at batch 1, 8, 32 and 256. The calibration's
promise is checked over stratified re-splits of the 3,000 held-out images (validation + test) into 1,000 / 2,000.
A smaller static B-LeNet (no exits, trained the same way, chosen on validation as the cheapest whose accuracy is
within the same 0.5 points of the full network's) is timed beside the early-exit network.

Usage (from the repository root)::

    .venv/bin/python -m benchmarks.early_exit            # full run (< 2.5 min on 2 cores), writes results/early_exit.json
    .venv/bin/python -m benchmarks.early_exit --quick    # smoke run (< 20 s)
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make `benchmarks` and `kd_toolkit` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from benchmarks import _early_exit as ee
from benchmarks._common import RESULTS_DIR, machine_info, mnist_split, script_main, write_json
from kd_toolkit.early_exit import EarlyExitNetwork, exit_macs
from kd_toolkit.early_exit.calibration import calibrate_thresholds

NAME = "early_exit"
BRANCHYNET_CPU_SPEEDUP = 5.4  # Teerapittayanon et al. 2016, Table 1, B-LeNet on MNIST, CPU
FULL = {"n_train": None, "n_test": None, "val": 1000, "epochs": 8, "repeats": 9, "segment_repeats": {1: 300, 256: 15},
        "latency_samples": 1000, "batch_repeats": 5, "splits": 5,
        "static_candidates": [{"channels": (4, 16, 32), "hidden": 64}, {"channels": (8, 16, 32), "hidden": 64}]}
QUICK = {"n_train": 1500, "n_test": 500, "val": 300, "epochs": 1, "repeats": 2, "segment_repeats": {1: 50, 256: 3},
         "latency_samples": 100, "batch_repeats": 1, "splits": 2,
         "static_candidates": [{"channels": (4, 8, 16), "hidden": 32}]}
NETWORKS = {"lenet": {"model": "lenet", "kwargs": {}, "exit_hidden": [[], []]},
            "b_lenet": {"model": "b_lenet", "kwargs": {}, "exit_hidden": [[], []]}}
MAX_DROP, LEVEL = 0.005, 0.95
BATCH_SIZES = (1, 8, 32, 256)
TARGETS = {"latency_batch_1": 3.0, "throughput_batch_256": 2.0, "achieved_over_ideal": 0.85}


def _network(spec: dict[str, Any], parts: dict[str, Any], data: Any, settings: dict[str, Any]) -> tuple[
        EarlyExitNetwork, dict[str, Any]]:
    """Train, calibrate on validation, measure one early-exit network on the test images."""
    started = time.perf_counter()
    network = ee.train(spec["model"], spec["kwargs"], spec["exit_hidden"], parts, settings["epochs"])
    train_s = time.perf_counter() - started
    cal = calibrate_thresholds(network, [(parts["x_val"], parts["y_val"])], max_accuracy_drop=MAX_DROP,
                               confidence_level=LEVEL, apply=True)
    x, y = data.x_test, data.y_test
    quality = ee.quality(network, x, y)
    shares, exit_index = quality["exit_shares"], quality.pop("exit_index")
    quality.pop("predictions")
    segments = {str(b): ee.segment_times(network, x[:b], settings["segment_repeats"][b]) for b in (1, ee.BATCH)}
    ideal = {b: ee.ideal_speedup(t, shares) for b, t in segments.items()}
    fns = {"plain": network.blocks, "early_exit": network.predict}
    rate = ee.throughput(fns, x, settings["repeats"])
    n_lat = settings["latency_samples"]
    lat = ee.latencies(fns, x[:n_lat], network)
    one = segments["1"]  # batch 1: the segments timed on the same samples, in the same loop, as the achieved figure
    one["repeated_sample_ms"] = {"full_ms": one["full_ms"], "segment_ms": one["segment_ms"]}
    one.update(full_ms=statistics.median(lat["plain"]),
               segment_ms=[statistics.median(lat.pop(f"segment_{k}")) for k in range(network.num_exits)])
    by_exit = [[t for t, k in zip(lat["early_exit"], exit_index[:n_lat].tolist()) if k == e]
               for e in range(network.num_exits)]
    timed_shares = {"1": [len(v) / n_lat for v in by_exit], "256": shares}  # batch 1: the timed samples' shares
    ideal["1"] = ee.ideal_speedup(one, timed_shares["1"])
    with_decision = {b: ee.ideal_speedup({"full_ms": t["full_ms"], "segment_ms": [  # the decision counted as work
        ms + (t["decide_us"][k] / 1000.0 if k < len(t["decide_us"]) else 0.0) for k, ms in enumerate(t["segment_ms"])]},
        timed_shares[b]) for b, t in segments.items()}
    weighted = sum(len(v) / n_lat * statistics.median(v) for v in by_exit if v)
    achieved = {"256": rate["speedup"], "1": statistics.median(lat["plain"]) / weighted}
    pool_x, pool_y = torch.cat([parts["x_val"], x]), torch.cat([parts["y_val"], y])
    return network, {
        "model": spec, "train_seconds": train_s, "thresholds": cal.thresholds,
        "validation": {"full_accuracy": cal.full_accuracy, "early_exit_accuracy": cal.accuracy,
                       "exit_shares": cal.exit_shares, "drop_bound": cal.accuracy_drop_bound, "confidence_level": LEVEL},
        "test": {**quality, "drop": quality["full_accuracy"] - quality["early_exit_accuracy"]},
        "segment_time": segments, "ideal_speedup": ideal, "achieved_speedup": achieved,
        "achieved_over_ideal": {b: achieved[b] / ideal[b] for b in ideal},
        "achieved_over_ideal_decision_as_work": {b: achieved[b] / with_decision[b] for b in ideal},
        "throughput_batch_256": rate,
        "latency_batch_1_ms": {name: ee.percentiles(v) for name, v in lat.items()},
        "latency_speedup_median": statistics.median(lat["plain"]) / statistics.median(lat["early_exit"]),
        "latency_by_exit_median_ms": [statistics.median(v) if v else None for v in by_exit],
        "per_sample_us_by_batch": ee.per_sample_by_batch(fns, x, BATCH_SIZES, settings["batch_repeats"]),
        "calibration_promise": ee.resplit_promise(network, pool_x, pool_y, settings["splits"], len(parts["y_val"]),
                                                  MAX_DROP, LEVEL),
    }


def _static(network: EarlyExitNetwork, parts: dict[str, Any], data: Any, settings: dict[str, Any],
            full_val_accuracy: float) -> dict[str, Any]:
    """The cheapest static B-LeNet whose validation accuracy is within MAX_DROP of the early-exit net's final exit."""
    tried = []
    for kwargs in settings["static_candidates"]:
        net = ee.train("b_lenet", kwargs, [[], []], parts, settings["epochs"], static=True)
        with torch.no_grad():
            val_acc = (net.blocks(parts["x_val"]).argmax(-1) == parts["y_val"]).float().mean().item()
        net.thresholds = [1.0, 1.0]
        tried.append({"kwargs": kwargs, "val_accuracy": val_acc, "macs": exit_macs(net)[-1], "net": net})
    ok = [t for t in tried if t["val_accuracy"] >= full_val_accuracy - MAX_DROP - 1e-9]
    chosen = min(ok, key=lambda t: t["macs"]) if ok else max(tried, key=lambda t: t["val_accuracy"])
    static, x, y = chosen["net"].blocks, data.x_test, data.y_test
    with torch.no_grad():
        test_acc = (torch.cat([static(x[i : i + 256]) for i in range(0, len(x), 256)]).argmax(-1) == y)
    fns = {"static": static, "early_exit": network.predict}
    lat = ee.latencies(fns, x[: settings["latency_samples"]])
    return {"candidates": [{k: v for k, v in t.items() if k != "net"} for t in tried], "chosen": chosen["kwargs"],
            "meets_accuracy_rule": bool(ok), "rule": f"cheapest with validation accuracy >= full - {MAX_DROP}",
            "test_accuracy": test_acc.float().mean().item(), "macs": chosen["macs"],
            "latency_batch_1_median_ms": {k: statistics.median(v) for k, v in lat.items()},
            "throughput_batch_256": ee.throughput(fns, x, settings["repeats"])}


def run(quick: bool = False, out_dir: Path = RESULTS_DIR, *, threads: int = 1) -> dict[str, Any]:
    """Run the early-exit benchmark and write ``out_dir/early_exit.json``.

    Raises:
        BenchmarkSkipped: when the MNIST test files are absent (the message says where they were looked for).
    """
    settings = QUICK if quick else FULL
    data = mnist_split(seed=0, n_train=settings["n_train"], n_test=settings["n_test"])  # may raise BenchmarkSkipped
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    load_start, started = os.getloadavg(), time.perf_counter()
    try:
        parts = ee.carve_validation(data.x_train, data.y_train, settings["val"])
        networks, results = {}, {}
        for name, spec in NETWORKS.items():
            networks[name], results[name] = _network(spec, parts, data, settings)
        static = _static(networks["b_lenet"], parts, data, settings, results["b_lenet"]["validation"]["full_accuracy"])
    finally:
        torch.set_num_threads(previous_threads)
    result = {
        "protocol": NAME, "command": "python -m benchmarks.early_exit" + (" --quick" if quick else ""), "quick": quick,
        "settings": settings, "recipe": ee.RECIPE, "max_accuracy_drop": MAX_DROP, "confidence_level": LEVEL,
        "split": {"train": len(parts["y_train"]), "val": len(parts["y_val"]), "test": len(data.y_test)},
        "networks": results, "static_baseline": static, "branchynet_cpu_speedup_reported": BRANCHYNET_CPU_SPEEDUP,
        "seconds": time.perf_counter() - started, "load_average_start": load_start, "load_average_end": os.getloadavg(),
        "machine": {**machine_info(), "torch_threads": threads},
    }
    result["targets"] = _targets(result)
    write_json(out_dir, NAME, result)
    return result


def _targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    b = result["networks"]["b_lenet"]
    promise = b["calibration_promise"]["fraction_within_target"]["bound"]
    rows = [
        ("B-LeNet test accuracy drop <= 0.5 points (thresholds from validation)", f"{100 * b['test']['drop']:.2f} points",
         b["test"]["drop"] <= MAX_DROP + 1e-9),
        ("B-LeNet median latency at batch 1 >= 3x the network without exits", f"{b['latency_speedup_median']:.2f}x",
         b["latency_speedup_median"] >= TARGETS["latency_batch_1"]),
        ("B-LeNet throughput at batch 256 >= 2x the network without exits",
         f"{b['throughput_batch_256']['speedup']:.2f}x", b["throughput_batch_256"]["speedup"] >= 2.0),
        (f"Calibration promise: B-LeNet test drop <= 0.5 points on every re-split at the {LEVEL:.0%} bound",
         f"{promise:.0%} of {len(b['calibration_promise']['splits'])} splits", promise >= 1.0),
    ]
    for name, label in (("lenet", "LeNet"), ("b_lenet", "B-LeNet")):
        for batch in ("256", "1"):
            ratio = result["networks"][name]["achieved_over_ideal"][batch]
            rows.append((f"{label} early exit achieved / ideal speed-up >= 0.85 at batch {batch}", f"{ratio:.2f}",
                         ratio >= TARGETS["achieved_over_ideal"]))
    return [{"target": t, "measured": m, "met": bool(ok)} for t, m, ok in rows]


def markdown(result: dict[str, Any]) -> str:
    """The README section body of a :func:`run` result."""
    nets = result["networks"]
    names = [("lenet", "LeNet"), ("b_lenet", "B-LeNet")]

    def row(label: str, fn: Any) -> str:
        return f"| {label} | " + " | ".join(fn(nets[n]) for n, _ in names) + " |"

    def pct(v: float) -> str:
        return f"{100 * v:.2f}%"

    lines = ["| Measure | " + " | ".join(label for _, label in names) + " |", "|---|---|---|",
             row("Test accuracy: final exit / early exit", lambda r: f"{pct(r['test']['full_accuracy'])} / "
                 f"{pct(r['test']['early_exit_accuracy'])}"),
             row(f"Thresholds (validation, drop bound at {LEVEL:.0%})", lambda r: ", ".join(f"{t:g}" for t in r["thresholds"])
                 + f" (bound {100 * r['validation']['drop_bound']:.2f} pts)"),
             row("Exit shares on test (0 / 1 / final)", lambda r: " / ".join(f"{100 * s:.1f}%" for s in r["test"]["exit_shares"])),
             row("MACs per sample: plain / early exit", lambda r: f"{r['test']['plain_macs']:,} / "
                 f"{r['test']['average_macs']:,.0f} ({r['test']['mac_speedup']:.2f}x)")]
    for b in ("1", "256"):
        lines.append(row(f"Segment time (block + head) at batch {b}, ms (seg 0 / 1 / 2; no exits)", lambda r, b=b: " / ".join(
            f"{t:.3f}" for t in r["segment_time"][b]["segment_ms"]) + f"; {r['segment_time'][b]['full_ms']:.3f}"))
        lines.append(row(f"Exit decision at batch {b}, us (exit 0 / 1)", lambda r, b=b: " / ".join(
            f"{t:.1f}" for t in r["segment_time"][b]["decide_us"])))
    for b in ("256", "1"):
        lines.append(row(f"Speed-up at batch {b}: achieved / ideal S* (ratio)", lambda r, b=b: (
            f"{r['achieved_speedup'][b]:.2f}x / {r['ideal_speedup'][b]:.2f}x (**{r['achieved_over_ideal'][b]:.2f}**; "
            f"{r['achieved_over_ideal_decision_as_work'][b]:.2f} with the decision counted as work)")))
    lines += [
        row("Throughput at batch 256: plain / early exit (paired)", lambda r: "{:,.0f} / {:,.0f} /s (**{:.2f}x**)".format(
            *r["throughput_batch_256"]["samples_per_s_median"].values(), r["throughput_batch_256"]["speedup"])),
        row("Latency at batch 1, ms p50/p95/p99: plain", lambda r: "{p50:.3f} / {p95:.3f} / {p99:.3f}".format(
            **r["latency_batch_1_ms"]["plain"])),
        row("Latency at batch 1, ms p50/p95/p99: early exit", lambda r: "{p50:.3f} / {p95:.3f} / {p99:.3f}".format(
            **r["latency_batch_1_ms"]["early_exit"]) + f" (**{r['latency_speedup_median']:.2f}x** median)"),
    ]
    for size in (str(s) for s in BATCH_SIZES):
        lines.append(row(f"Time per sample at batch {size}, us: plain / early exit", lambda r, s=size: (
            f"{r['per_sample_us_by_batch']['plain'][s]:.1f} / {r['per_sample_us_by_batch']['early_exit'][s]:.1f}")))
    lines.append(row(f"Re-splits with test drop <= 0.5 pts: {LEVEL:.0%} bound / observed drop", lambda r: (
        "{bound:.0%} / {observed:.0%}".format(**r["calibration_promise"]["fraction_within_target"]))))
    lines += ["", "Ideal S* = t_full / sum_k q_k (t_0 + ... + t_k): a segment is a block and its exit head, the network's "
              "own work; the exit decision, indexing and host syncs are `predict`'s overhead, which the achieved figure "
              "pays. At batch 1 the segments are timed piece by piece on the same samples, in the same loop, as the "
              "latencies (achieved: exit-share-weighted median latency of `predict` per exit)."]
    s = result["static_baseline"]
    lat, thr = s["latency_batch_1_median_ms"], s["throughput_batch_256"]["samples_per_s_median"]
    lines += ["", f"Smaller static network (no exits, chosen on validation: {s['rule']}): B-LeNet {s['chosen']}, "
              f"{'meets' if s['meets_accuracy_rule'] else 'no candidate met'} the rule; test accuracy "
              f"{pct(s['test_accuracy'])}, {s['macs']:,} MACs.", "",
              "| | static | B-LeNet early exit |", "|---|---|---|",
              f"| Median latency at batch 1, ms | {lat['static']:.3f} | {lat['early_exit']:.3f} |",
              f"| Throughput at batch 256, samples/s | {thr['static']:,.0f} | {thr['early_exit']:,.0f} |"]
    return "\n".join(lines)


def main() -> None:
    ran = script_main(__doc__, run, markdown, "Early-exit", "smoke run (< 20 s)")
    if ran is None:
        return
    result, out_dir = ran
    print("\n" + "\n".join(f"- {t['target']}: {t['measured']} ({'met' if t['met'] else 'NOT met'})"
                           for t in result["targets"]))
    print(f"\n{result['seconds']:.0f} s; load average {result['load_average_start']} -> {result['load_average_end']}; "
          f"written to {out_dir / (NAME + '.json')}")

if __name__ == "__main__":
    main()
