"""Teacher-cache scaling (issue 15): ``python -m benchmarks.cache_scaling [--quick]``.

* **KL error of the top-k cache**: ``KL(q_T || q~_T)`` per sample (nats; mean, 99th percentile and max) between the
  exact tempered teacher target ``q_T`` and the one rebuilt from the top-k cache ``q~_T``, at ``T`` in {1, 4}, on
  protocol 1's seed-0 MNIST teacher (784-1200-1200-10, :mod:`benchmarks._mnist`; memoised, so a suite run reuses
  it) over its 8,000 training images, and on a 1,000-class synthetic teacher (logits ``N(0, 2^2)`` plus a ``+10`` peak on a label class).
  ``KL * T^2`` is the scale at which the error enters ``kd_loss``.
* **Tail rule**: kd_toolkit's uniform tail against spreading the tail mass like the student's own tail (the
  ``(k + 1)``-bin KL), for five students of the synthetic teacher: the loss error and the cosine between the
  approximate and the exact KD gradient (:func:`tail_rules`).
* **Memory and build time**: measured bytes per sample (tensor bytes in memory, ``.npy`` bytes on disk) and the
  time to build the cache through :class:`~kd_toolkit.distillation.DistillationModule` for the exact and the top-k
  cache (a 1,000-class MLP teacher on synthetic inputs), and for the memory-mapped top-k cache the wall time of a
  one-step fit that builds the file, of one that reuses it, and of the same fit with a live teacher.
* **Temperature sweep**: 5 KD runs (T = 1, 2, 3, 4, 6; same teacher and data), live teacher against the exact
  cache kept in one ``cache_dir`` (the exact cache does not depend on T; a top-k file would be rebuilt per T),
  the arms alternating run by run; wall and process CPU time.

Writes ``<out_dir>/cache_scaling.json`` (default ``benchmarks/results/``) and prints a summary.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from benchmarks import _mnist
from benchmarks._common import RESULTS_DIR, BenchmarkSkipped, machine_info, write_json
from kd_toolkit.distillation.topk import compress_topk, index_dtype, topk_soft_target_log_probs

#: The heading of its section in the suite's README block.
TITLE = "Teacher-output cache scaling: top-k error, memory, temperature sweep"
NAME = "cache_scaling"
FULL = {"mnist_train": None, "mnist_test": None, "mnist_teacher_epochs": _mnist.TEACHER_EPOCHS, "synthetic": 5_000,
        "build": 20_000, "sweep": 20_000, "sweep_epochs": 3, "sweep_temperatures": (1.0, 2.0, 3.0, 4.0, 6.0)}
QUICK = {"mnist_train": 2_000, "mnist_test": 1_000, "mnist_teacher_epochs": _mnist.QUICK_TEACHER_EPOCHS,
         "synthetic": 1_000, "build": 2_000, "sweep": 1_000, "sweep_epochs": 1, "sweep_temperatures": (1.0, 4.0)}
TEMPERATURES = (1.0, 4.0)


def kl_error(logits: Tensor, k: int, temperature: float) -> dict[str, float]:
    """Per-sample ``KL(exact || top-k)`` at ``temperature``: mean, p99, max (nats) and mean ``* T^2``."""
    exact = torch.log_softmax(logits.float() / temperature, dim=-1)
    approx = topk_soft_target_log_probs(*compress_topk(logits, k, temperature), logits.shape[-1], temperature)
    kl = (exact.exp() * (exact - approx)).sum(-1).clamp_min(0)
    return {"mean": float(kl.mean()), "p99": float(kl.quantile(0.99)), "max": float(kl.max()),
            "mean_x_T2": float(kl.mean()) * temperature**2}


def _bucket_target(values: Tensor, indices: Tensor, tail: Tensor, student: Tensor, temperature: float) -> Tensor:
    """The rejected alternative tail rule: the tail mass spread like the student's own tail (so ``KL(q~ || p)`` is
    the KL between the ``(k + 1)``-bin distributions, top-k classes + one tail bucket)."""
    top = values.float() / temperature  # (N, k)
    log_z = torch.logsumexp(torch.cat([top, tail.unsqueeze(-1)], -1), -1, keepdim=True)  # (N, 1)
    log_p = torch.log_softmax(student.float() / temperature, -1)  # (N, C)
    log_p_tail = torch.logsumexp(log_p.scatter(-1, indices.long(), -math.inf), -1, keepdim=True)  # (N, 1)
    dense = tail.unsqueeze(-1) - log_z + log_p - log_p_tail
    return dense.scatter(-1, indices.long(), top - log_z)


def tail_rules(logits: Tensor, k: int = 10, seed: int = 1) -> dict[str, Any]:
    """The uniform tail (kd_toolkit's) against the student-shaped tail, for several students of ``logits``: mean
    ``|KL(q~ || p) - KL(q || p)|`` (the loss error, nats) and the mean cosine between the approximate and the exact
    KD gradient ``p - q`` w.r.t. the student's logits, at ``T`` in {1, 4}."""
    gen = torch.Generator().manual_seed(seed)

    def noise(scale: float) -> Tensor:
        return scale * torch.randn(logits.shape, generator=gen)

    students = {"random N(0, 2^2)": noise(2.0), "near uniform N(0, 0.1^2)": noise(0.1),
                "teacher + N(0, 2^2)": logits + noise(2.0), "teacher + N(0, 1)": logits + noise(1.0),
                "teacher / 2 + N(0, 1)": logits / 2 + noise(1.0)}
    out: dict[str, Any] = {"k": k}
    for name, student in students.items():
        for t in TEMPERATURES:
            exact = torch.log_softmax(logits.float() / t, -1)
            compressed = compress_topk(logits, k, t)
            log_p = torch.log_softmax(student / t, -1)
            p = log_p.exp()

            exact_loss = (exact.exp() * (exact - log_p)).sum(-1)  # (N,) KL(q || p)
            row: dict[str, Any] = {"exact_kl": float(exact_loss.mean())}
            for rule, approx in (("uniform", topk_soft_target_log_probs(*compressed, logits.shape[-1], t)),
                                 ("student_shaped", _bucket_target(*compressed, student, t))):
                approx_loss = (approx.exp() * (approx - log_p)).sum(-1)  # (N,) KL(q~ || p)
                cos = torch.nn.functional.cosine_similarity(p - approx.exp(), p - exact.exp(), dim=-1)
                row[rule] = {"loss_error": float((approx_loss - exact_loss).abs().mean()),
                             "grad_cos": float(cos.mean())}
            out[f"{name}, T={t:g}"] = row
    return out


def synthetic_logits(n: int, classes: int = 1000, seed: int = 0) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    z = 2.0 * torch.randn(n, classes, generator=gen)
    z[torch.arange(n), torch.randint(classes, (n,), generator=gen)] += 10.0
    return z


def mnist_logits(cfg: dict[str, Any]) -> Tensor | None:
    try:
        split = _mnist.hinton_split(cfg["mnist_train"], cfg["mnist_test"])[0]  # protocol 1's fit part and teacher
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
    """Seconds to build each cache through the module for ``n`` samples and a 1,000-class MLP teacher, and its
    measured bytes per sample (the tensors' bytes in memory; the ``.npy`` files' bytes on disk for ``cache_dir``).
    The memory-mapped cache is timed through one-step fits that build the file and reuse it, beside the same
    one-step fit with a live teacher (``live_fit_s``: the fit's own cost, to subtract)."""
    from kd_toolkit import DistillationModule
    from kd_toolkit.data import make_loader, with_sample_indices

    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, classes)).eval()
    student = nn.Sequential(nn.Flatten(), nn.Linear(64, classes))
    loader = with_sample_indices(make_loader(torch.randn(n, 64), torch.randint(classes, (n,)), 256))
    out: dict[str, dict[str, float]] = {}
    for mode, builder in (("exact", "build_teacher_cache"), ("topk_memory", "build_topk_teacher_cache")):
        module = DistillationModule(student, teacher, cache_teacher_outputs=mode.split("_")[0], cache_k=k)
        start = time.perf_counter()
        cache = getattr(module, builder)(loader)
        seconds = time.perf_counter() - start
        parts = [cache] if isinstance(cache, Tensor) else [cache.values, cache.indices, cache.tail]
        out[mode] = {"build_s": seconds, "bytes_per_sample": sum(p.nbytes for p in parts) / n,
                     "formula_bytes_per_sample": bytes_per_sample(classes, None if mode == "exact" else k)}
    memmap: dict[str, float] = {"live_fit_s": _fit(DistillationModule(student, teacher), loader, 1,
                                                   limit_train_batches=1)}
    with tempfile.TemporaryDirectory() as tmp:
        for run_name in ("build", "reuse"):  # the second pass finds the file and skips the teacher
            module = DistillationModule(student, teacher, cache_teacher_outputs="topk", cache_k=k, cache_dir=tmp)
            memmap[f"{run_name}_fit_s"] = _fit(module, loader, 1, limit_train_batches=1)
        memmap["bytes_per_sample"] = sum(f.stat().st_size for f in Path(tmp).glob("*.npy")) / n
    memmap["build_s"] = memmap["build_fit_s"] - memmap["live_fit_s"]
    out["topk_memmap"] = memmap
    return out


def _fit(module: Any, loader: Any, epochs: int, limit_train_batches: Any = 1.0) -> float:
    return _timed_fit(module, loader, epochs, limit_train_batches)[0]


def _timed_fit(module: Any, loader: Any, epochs: int, limit_train_batches: Any = 1.0) -> tuple[float, float]:
    """``(wall seconds, process CPU seconds)`` of one fit."""
    import pytorch_lightning as pl

    trainer = pl.Trainer(max_epochs=epochs, limit_train_batches=limit_train_batches, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         accelerator="cpu")
    start, cpu = time.perf_counter(), time.process_time()
    trainer.fit(module, loader)
    return time.perf_counter() - start, time.process_time() - cpu


def temperature_sweep(n: int, epochs: int, temperatures: tuple[float, ...] = (1.0, 2.0, 3.0, 4.0, 6.0)
                      ) -> dict[str, Any]:
    """Wall and CPU time of 5 KD runs (one per temperature, same teacher and data): live teacher against the exact
    cache memory-mapped in one ``cache_dir`` (T-free, so built by the first run and reused by the other four). The
    arms alternate run by run, so a change of the machine's load hits both alike."""
    from kd_toolkit import DistillationModule
    from kd_toolkit.data import make_loader, with_sample_indices

    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(64, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(),
                            nn.Linear(1024, 100)).eval()
    loader = with_sample_indices(make_loader(torch.randn(n, 64), torch.randint(100, (n,)), 128, shuffle=True))
    out: dict[str, Any] = {"samples": n, "epochs": epochs, "temperatures": list(temperatures)}
    times: dict[str, list[tuple[float, float]]] = {"live": [], "persistent_cache": []}
    with tempfile.TemporaryDirectory() as tmp:
        for t in temperatures:
            for arm, runs in times.items():
                student = nn.Sequential(nn.Flatten(), nn.Linear(64, 100))
                kwargs: dict[str, Any] = {"cache_teacher_outputs": "exact", "cache_dir": tmp} if arm != "live" else {}
                runs.append(_timed_fit(DistillationModule(student, teacher, temperature=t, **kwargs), loader, epochs))
    for arm, runs in times.items():
        out[arm] = {"total_s": sum(w for w, _ in runs), "per_run_s": [w for w, _ in runs],
                    "total_cpu_s": sum(c for _, c in runs), "per_run_cpu_s": [c for _, c in runs]}
    out["speedup"] = out["live"]["total_s"] / out["persistent_cache"]["total_s"]
    out["speedup_cpu"] = out["live"]["total_cpu_s"] / out["persistent_cache"]["total_cpu_s"]
    return out


def run(quick: bool = False, out_dir: Path = RESULTS_DIR, *, threads: int = 1) -> dict[str, Any]:
    """Run the three measurements and write ``out_dir/cache_scaling.json`` (the suite's module contract)."""
    cfg = QUICK if quick else FULL
    torch.set_num_threads(threads)
    start, machine = time.perf_counter(), machine_info()
    cases: dict[str, Any] = {}
    mnist = mnist_logits(cfg)
    if mnist is not None:
        cases["hinton_mnist_10"] = {f"k{k}_T{t:g}": kl_error(mnist, k, t) for k in (1, 3, 5) for t in TEMPERATURES}
    else:
        cases["hinton_mnist_10"] = "skipped: MNIST files absent"
    synth = synthetic_logits(cfg["synthetic"])
    cases["synthetic_1000"] = {f"k{k}_T{t:g}": kl_error(synth, k, t) for k in (5, 10, 20, 50) for t in TEMPERATURES}
    data = {"protocol": NAME, "quick": quick, "config": cfg, "kl_error_nats": cases, "tail_rules": tail_rules(synth),
            "build": build_times(cfg["build"]),
            "temperature_sweep": temperature_sweep(cfg["sweep"], cfg["sweep_epochs"], tuple(cfg["sweep_temperatures"])),
            "threads": torch.get_num_threads(), "machine": machine, "load_average_end": machine_info()["load_average"],
            "command": f"python -m benchmarks.{NAME}" + (" --quick" if quick else ""),
            "seconds": time.perf_counter() - start}
    write_json(out_dir, NAME, data)
    return data


def markdown(data: dict[str, Any]) -> str:
    """The README section body: KL error of the top-k cache, cache sizes and build times, the temperature sweep."""
    lines = ["Per-sample KL(exact || top-k) of the tempered teacher target, in nats (mean / 99th percentile / max):", "",
             "| teacher | k | T | mean | p99 | max | mean × T² |", "|---|---|---|---|---|---|---|"]
    for case, rows in data["kl_error_nats"].items():
        if isinstance(rows, str):
            lines.append(f"| {case} | {rows} | | | | | |")
            continue
        for key, r in rows.items():
            k, t = key[1:].split("_T")
            lines.append(f"| {case} | {k} | {t} | {r['mean']:.2e} | {r['p99']:.2e} | {r['max']:.2e} | "
                         f"{r['mean_x_T2']:.2e} |")
    lines += ["", f"Cache of {data['config']['build']:,} samples of a 1,000-class teacher:", "",
              "| cache | bytes/sample | build (s) |", "|---|---|---|"]
    for mode, r in data["build"].items():
        built = f"{r['build_s']:.2f}" if "build_s" in r else (f"fit that builds it {r.get('build_fit_s', 0):.2f}, "
                                                              f"fit that reuses it {r.get('reuse_fit_s', 0):.2f}")
        lines.append(f"| {mode} | {r['bytes_per_sample']:,} | {built} |")
    sw = data["temperature_sweep"]
    lines += ["", f"Temperature sweep ({len(sw['temperatures'])} KD runs, {sw['samples']:,} samples, {sw['epochs']} "
              f"epochs each): live teacher {sw['live']['total_s']:.1f} s, exact cache kept in one `cache_dir` "
              f"{sw['persistent_cache']['total_s']:.1f} s (**{sw['speedup']:.2f}x**)."]
    return "\n".join(lines) + ("\n\n(quick: a smoke run, not a result)" if data.get("quick") else "")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cache_scaling")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    data = run(args.quick, args.out_dir, threads=args.threads)
    for case, rows in data["kl_error_nats"].items():
        print(case)
        for key, row in rows.items() if isinstance(rows, dict) else [("", rows)]:
            print(f"  {key}: {row}" if isinstance(row, str) else
                  f"  {key}: KL mean {row['mean']:.2e}  p99 {row['p99']:.2e}  max {row['max']:.2e}  "
                  f"mean*T^2 {row['mean_x_T2']:.2e}")
    for mode, row in data["build"].items():
        print(f"{mode}: {row}")
    sweep = data["temperature_sweep"]
    print(f"temperature sweep (5 runs): live {sweep['live']['total_s']:.1f} s, persistent cache "
          f"{sweep['persistent_cache']['total_s']:.1f} s, speed-up {sweep['speedup']:.2f}x")


if __name__ == "__main__":
    main()
