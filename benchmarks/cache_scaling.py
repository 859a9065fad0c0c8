"""Teacher-cache scaling (issue 15): ``python -m benchmarks.cache_scaling [--quick]``.

* **KL error of the top-k cache**: ``KL(q_T || q~_T)`` per sample (nats; mean, 99th percentile and max) between the
  exact tempered teacher target ``q_T`` and the one rebuilt from the top-k cache ``q~_T``, at ``T`` in {1, 4}, on
  the Hinton MNIST teacher (784-1200-1200-10, :mod:`benchmarks._mnist`'s recipe, few epochs) over its training
  images, and on a 1,000-class synthetic teacher (logits ``N(0, 2^2)`` plus a ``+10`` peak on a label class).
  ``KL * T^2`` is the scale at which the error enters ``kd_loss``.
* **Memory and build time**: bytes per sample and the time to build the cache through
  :class:`~kd_toolkit.distillation.DistillationModule` for the exact and the top-k cache (a 1,000-class MLP
  teacher on synthetic inputs).

Writes ``benchmarks/results/cache_scaling.json`` and prints a summary.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch
from torch import Tensor, nn

from benchmarks._common import RESULTS_DIR, BenchmarkSkipped, mnist_split, write_json
from kd_toolkit.distillation.topk import compress_topk, index_dtype, topk_soft_target_log_probs

NAME = "cache_scaling"
FULL = {"mnist_train": 10_000, "mnist_teacher_epochs": 3, "synthetic": 5_000, "build": 20_000}
QUICK = {"mnist_train": 2_000, "mnist_teacher_epochs": 1, "synthetic": 1_000, "build": 4_000}
TEMPERATURES = (1.0, 4.0)


def kl_error(logits: Tensor, k: int, temperature: float) -> dict[str, float]:
    """Per-sample ``KL(exact || top-k)`` at ``temperature``: mean, p99, max (nats) and mean ``* T^2``."""
    exact = torch.log_softmax(logits.float() / temperature, dim=-1)
    approx = topk_soft_target_log_probs(*compress_topk(logits, k, temperature), logits.shape[-1], temperature)
    kl = (exact.exp() * (exact - approx)).sum(-1).clamp_min(0)
    return {"mean": float(kl.mean()), "p99": float(kl.quantile(0.99)), "max": float(kl.max()),
            "mean_x_T2": float(kl.mean()) * temperature**2}


def synthetic_logits(n: int, classes: int = 1000, seed: int = 0) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    z = 2.0 * torch.randn(n, classes, generator=gen)
    z[torch.arange(n), torch.randint(classes, (n,), generator=gen)] += 10.0
    return z


def mnist_logits(cfg: dict[str, Any]) -> Tensor | None:
    from benchmarks import _mnist

    try:
        split = mnist_split(seed=0, n_train=cfg["mnist_train"], n_test=500)
    except BenchmarkSkipped:
        return None
    teacher = _mnist.teacher_for(split, 0, cfg["mnist_teacher_epochs"])[0].eval()
    with torch.no_grad():
        return torch.cat([teacher(split.x_train[i : i + 2000]) for i in range(0, len(split.y_train), 2000)])


def bytes_per_sample(classes: int, k: int | None) -> int:
    if k is None:
        return 4 * classes
    return 2 * k + k * torch.empty(0, dtype=index_dtype(classes)).element_size() + 4


def build_times(n: int, k: int = 10, classes: int = 1000) -> dict[str, dict[str, float]]:
    """Seconds to build each cache through the module for ``n`` samples and a 1,000-class MLP teacher."""
    from kd_toolkit import DistillationModule
    from kd_toolkit.data import make_loader, with_sample_indices

    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, classes)).eval()
    student = nn.Sequential(nn.Flatten(), nn.Linear(64, classes))
    loader = with_sample_indices(make_loader(torch.randn(n, 64), torch.randint(classes, (n,)), 256))
    out = {}
    for mode, builder in (("exact", "build_teacher_cache"), ("topk_memory", "build_topk_teacher_cache")):
        module = DistillationModule(student, teacher, cache_teacher_outputs=mode.split("_")[0], cache_k=k)
        start = time.perf_counter()
        getattr(module, builder)(loader)
        out[mode] = {"build_s": time.perf_counter() - start,
                     "bytes_per_sample": bytes_per_sample(classes, None if mode == "exact" else k)}
    return out


def run(quick: bool = False) -> dict[str, Any]:
    cfg = QUICK if quick else FULL
    start = time.perf_counter()
    cases: dict[str, Any] = {}
    mnist = mnist_logits(cfg)
    if mnist is not None:
        cases["hinton_mnist_10"] = {f"k{k}_T{t:g}": kl_error(mnist, k, t) for k in (1, 3, 5) for t in TEMPERATURES}
    else:
        cases["hinton_mnist_10"] = "skipped: MNIST files absent"
    synth = synthetic_logits(cfg["synthetic"])
    cases["synthetic_1000"] = {f"k{k}_T{t:g}": kl_error(synth, k, t) for k in (5, 10, 20, 50) for t in TEMPERATURES}
    data = {"protocol": NAME, "quick": quick, "config": cfg, "kl_error_nats": cases,
            "build": build_times(cfg["build"]), "threads": torch.get_num_threads(),
            "seconds": time.perf_counter() - start}
    write_json(RESULTS_DIR, NAME, data)
    return data


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cache_scaling")
    parser.add_argument("--quick", action="store_true")
    data = run(parser.parse_args(argv).quick)
    for case, rows in data["kl_error_nats"].items():
        print(case)
        for key, row in rows.items() if isinstance(rows, dict) else [("", rows)]:
            print(f"  {key}: {row}" if isinstance(row, str) else
                  f"  {key}: KL mean {row['mean']:.2e}  p99 {row['p99']:.2e}  max {row['max']:.2e}  "
                  f"mean*T^2 {row['mean_x_T2']:.2e}")
    for mode, row in data["build"].items():
        print(f"{mode}: {row['bytes_per_sample']} bytes/sample, build {row['build_s']:.2f} s for {data['config']['build']}")


if __name__ == "__main__":
    main()
