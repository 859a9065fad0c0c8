"""FitNets benchmark on MNIST: plain vs KD vs one-stage FitNets vs two-stage FitNets (Romero et al., ICLR 2015).

The 10,000 MNIST test images (torchvision's raw files in ``../shared/data/mnist-test``) are split stratified
8,000 train / 2,000 test with a fixed seed. A wide CNN teacher (:class:`~kd_toolkit.fitnets.models.WideCNN`) is
trained once per run and shared by every arm; a thin, deeper student (:class:`~kd_toolkit.fitnets.models.ThinDeepCNN`)
is trained in four arms, each with the same seeds (so every arm starts from the same student weights):

* ``plain``: labels only;
* ``kd``: ``hard + alpha * kd`` (Hinton, T**2-scaled);
* ``fitnets_joint``: ``hard + alpha * kd + beta * hint`` every step (the common one-stage sum);
* ``fitnets_two_stage``: the paper: ``hint_epochs`` of hints alone on the layers up to the guided one, then KD.

Reported: test error (%) of the **last** epoch (there is no validation split, so no model selection), mean ± std
over the seeds. Every figure is measured here; only the paper's reference numbers are quoted.

Usage (from the repository root)::

    .venv/bin/python benchmarks/fitnets.py            # full run, writes results/fitnets.json and the README section
    .venv/bin/python benchmarks/fitnets.py --quick    # smoke run (1 seed, 1 epoch, a subset)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
MNIST_DIR = Path(os.environ.get("KD_BENCH_MNIST_DIR", ROOT.parent / "shared" / "data" / "mnist-test"))
RESULTS_DIR = Path(__file__).resolve().parent / "results"
README = Path(__file__).resolve().parent / "README.md"
ARMS = ("plain", "kd", "fitnets_joint", "fitnets_two_stage")
PAPER_ERROR_PCT = {"plain": 1.90, "kd": 0.65, "fitnets": 0.51}  # Romero et al. 2015, MNIST table (thin student)
HINTS = {"features.4": "features.2"}  # the guided/hint pair in the middle of both nets
FULL = {"seeds": (0, 1, 2), "epochs": 3, "teacher_epochs": 5, "hint_epochs": 1, "train": None, "test": None}
QUICK = {"seeds": (0,), "epochs": 1, "teacher_epochs": 1, "hint_epochs": 1, "train": 1024, "test": 512}
HPARAMS = {"batch_size": 128, "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4, "scheduler": "cosine_anneal",
           "temperature": 4.0, "alpha": 1.0, "beta": 0.5}


def _data(train_limit: int | None, test_limit: int | None) -> dict[str, torch.Tensor]:
    from kd_toolkit.data import MNIST_MEAN, MNIST_STD, load_mnist_idx, stratified_split

    images, labels = load_mnist_idx(MNIST_DIR, "test")
    x = torch.from_numpy(images).unsqueeze(1).float().div_(255.0).sub_(MNIST_MEAN).div_(MNIST_STD)  # (N, 1, 28, 28)
    y = torch.from_numpy(labels)
    train_idx, test_idx = (torch.from_numpy(i) for i in stratified_split(labels, [0.8, 0.2], seed=0))
    train_idx, test_idx = train_idx[:train_limit], test_idx[:test_limit]
    return {"x_train": x[train_idx], "y_train": y[train_idx], "x_test": x[test_idx], "y_test": y[test_idx]}


def _fit(module: Any, data: dict[str, torch.Tensor], epochs: int, seed: int, cache: bool = False) -> dict[str, float]:
    """Train ``module`` through KnowledgeDistillationTraining; last-epoch test error (%) and wall time."""
    from kd_toolkit.data import make_loader
    from kd_toolkit.training import KnowledgeDistillationTraining

    bs = HPARAMS["batch_size"]
    with tempfile.TemporaryDirectory() as tmp:
        kd = KnowledgeDistillationTraining(
            module=module, train_data_loader=make_loader(data["x_train"], data["y_train"], bs, shuffle=True),
            test_data_loaders={"test": make_loader(data["x_test"], data["y_test"], 512)}, max_epoch=epochs, seed=seed,
            cache_teacher_outputs=cache, accelerator="cpu", precision=32, deterministic=False, checkpointing=False,
            csv_logging=False, quiet=True, enable_progress_bar=False, num_sanity_val_steps=0, default_root_dir=tmp,
        )
        start = time.time()
        kd.fit()
        seconds = time.time() - start
        accuracy = kd.test(ckpt=None)[0]["test_acc"]
    return {"test_error_pct": round(100.0 * (1.0 - accuracy), 3), "time_s": round(seconds, 1)}


def _module(arm: str, teacher: torch.nn.Module | None, hint_epochs: int) -> Any:
    import pytorch_lightning as pl  # noqa: F401  (imported for its side effects on warnings filters)

    from kd_toolkit.distillation import DistillationModule
    from kd_toolkit.fitnets.models import ThinDeepCNN
    from kd_toolkit.fitnets.module import FitNetsModule

    h = HPARAMS
    common = dict(optimizer="sgd", lr=h["lr"], optimizer_kwargs={"momentum": h["momentum"], "weight_decay": h["weight_decay"]},
                  scheduler=h["scheduler"], temperature=h["temperature"])
    student = ThinDeepCNN()
    if arm == "plain":
        return DistillationModule(student, None, **common)
    if arm == "kd":
        return DistillationModule(student, teacher, loss_weights={"hard_loss": 1.0, "kd_loss": h["alpha"]},
                                  cache_teacher_outputs=True, **common)
    stage = "joint" if arm == "fitnets_joint" else "two_stage"
    return FitNetsModule(student, teacher, dict(HINTS), input_shape=[1, 28, 28], stage=stage, hint_epochs=hint_epochs,
                         alpha=h["alpha"], beta=h["beta"], **common)


def _summary(values: list[float]) -> dict[str, float]:
    return {"mean": round(statistics.fmean(values), 3), "std": round(statistics.stdev(values), 3) if len(values) > 1 else 0.0}


def _machine(threads: int) -> dict[str, Any]:
    cpu = platform.processor() or "unknown"
    try:
        found = re.search(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text())
        cpu = found.group(1).strip() if found else cpu
    except OSError:
        pass
    import pytorch_lightning as pl

    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": threads, "torch": torch.__version__,
            "pytorch_lightning": pl.__version__, "python": platform.python_version(),
            "load_average_at_start": [round(v, 2) for v in os.getloadavg()]}


def run(quick: bool = False, out_dir: Path = RESULTS_DIR, *, threads: int = 1, **overrides: Any) -> dict[str, Any]:
    """Run the benchmark and write ``out_dir/fitnets.json``; returns the results.

    Args:
        quick: a smoke run (1 seed, 1 epoch, 1,024/512 images; two-stage gets 1 + 1 epochs, its minimum).
        out_dir: where ``fitnets.json`` goes.
        threads: torch intra-op threads (1 is faster than 2 on the shared 2-core machine).
        **overrides: ``seeds``, ``epochs``, ``teacher_epochs``, ``hint_epochs``, ``train``, ``test``.

    Returns:
        The results dict, or ``{"skipped": reason}`` when the MNIST files are absent.
    """
    if not any((MNIST_DIR / f"t10k-images-idx3-ubyte{ext}").is_file() for ext in ("", ".gz")):
        message = f"FitNets benchmark skipped: MNIST test files not found in {MNIST_DIR}."
        print(message)
        return {"skipped": message}
    import pytorch_lightning as pl

    from kd_toolkit.distillation import DistillationModule
    from kd_toolkit.fitnets.models import WideCNN

    settings = {**(QUICK if quick else FULL), **overrides}
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    started, machine = time.time(), _machine(threads)
    try:
        data = _data(settings["train"], settings["test"])
        pl.seed_everything(1234, verbose=False)
        teacher = WideCNN()
        h = HPARAMS
        teacher_module = DistillationModule(teacher, None, optimizer="sgd", lr=h["lr"], scheduler=h["scheduler"],
                                            optimizer_kwargs={"momentum": h["momentum"], "weight_decay": h["weight_decay"]})
        teacher_result = _fit(teacher_module, data, settings["teacher_epochs"], seed=1234)
        teacher.eval()
        print(f"teacher WideCNN: {teacher_result}", flush=True)
        runs: dict[str, list[dict[str, float]]] = {arm: [] for arm in ARMS}
        for seed in settings["seeds"]:
            for arm in ARMS:
                epochs = settings["epochs"] + (settings["hint_epochs"] if arm == "fitnets_two_stage" and quick else 0)
                pl.seed_everything(seed, verbose=False)  # the same student initialisation in every arm
                result = _fit(_module(arm, teacher, settings["hint_epochs"]), data, epochs, seed, cache=arm == "kd")
                runs[arm].append({"seed": seed, "epochs": epochs, **result})
                print(f"seed {seed} {arm}: {result}", flush=True)
    finally:
        torch.set_num_threads(previous_threads)
    arms = {arm: {**_summary([r["test_error_pct"] for r in rs]), "runs": rs} for arm, rs in runs.items()}
    results = {
        "benchmark": "fitnets_mnist", "quick": quick, "settings": {k: list(v) if isinstance(v, tuple) else v
                                                                    for k, v in settings.items()},
        "hparams": HPARAMS, "hint_layers": HINTS, "n_train": len(data["y_train"]), "n_test": len(data["y_test"]),
        "teacher": teacher_result, "arms": arms, "paper_error_pct": PAPER_ERROR_PCT, "machine": machine,
        "total_time_s": round(time.time() - started, 1), "metric": "test error % at the last epoch, mean ± std over seeds",
        "command": ".venv/bin/python benchmarks/fitnets.py" + (" --quick" if quick else ""),
    }
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / ".fitnets.json.tmp"
    tmp.write_text(json.dumps(results, indent=2))
    os.replace(tmp, out_dir / "fitnets.json")
    return results


def readme_section(results: dict[str, Any]) -> str:
    """The ``## FitNets`` section of benchmarks/README.md, generated from ``results``."""
    s, m, arms = results["settings"], results["machine"], results["arms"]
    names = {"plain": "plain (labels only)", "kd": "KD (Hinton)", "fitnets_joint": "FitNets, one-stage (joint sum)",
             "fitnets_two_stage": f"FitNets, two-stage ({s['hint_epochs']} hint + "
                                  f"{arms['fitnets_two_stage']['runs'][0]['epochs'] - s['hint_epochs']} KD epochs)"}
    paper = {"plain": "1.90", "kd": "0.65", "fitnets_joint": "0.51 (hints)", "fitnets_two_stage": "0.51 (hints)"}
    rows = []
    for a in ARMS:
        per_seed = ", ".join(f"{r['test_error_pct']:.2f}" for r in arms[a]["runs"])
        seconds = statistics.fmean(r["time_s"] for r in arms[a]["runs"])
        rows.append(f"| {names[a]} | {arms[a]['mean']:.2f} ± {arms[a]['std']:.2f} | {per_seed} | {seconds:.0f} | {paper[a]} |")
    two, one = arms["fitnets_two_stage"], arms["fitnets_joint"]
    diff = one["mean"] - two["mean"]
    spread = "more" if abs(diff) > max(one["std"], two["std"]) else "less"
    verdict = (f"two-stage beats one-stage by {diff:.2f} points" if diff > 0 else
               f"two-stage does not beat one-stage here: it is {-diff:.2f} points worse") + (
               f" on the mean ({spread} than one standard deviation across seeds)")
    best = min(ARMS, key=lambda a: arms[a]["mean"])
    kd_epochs = arms["fitnets_two_stage"]["runs"][0]["epochs"] - s["hint_epochs"]
    h = results["hparams"]
    lines = [
        "## FitNets",
        "",
        f"Thin, deeper student `ThinDeepCNN` (w=16, 7 conv layers) guided by a wide teacher `WideCNN` (w=64, 4 conv "
        f"layers) on MNIST: the {results['n_train'] + results['n_test']:,} images of `../shared/data/mnist-test` split "
        f"stratified {results['n_train']:,} train / {results['n_test']:,} test (seed 0). Hint pair `features.4` → "
        f"`features.2` with a 1x1-conv regressor. Teacher: {s['teacher_epochs']} epochs, test error "
        f"{results['teacher']['test_error_pct']:.2f}% (trained once per run and shared). Students: {s['epochs']} epochs "
        f"per arm, seeds {s['seeds']} (same student initialisation in every arm); SGD lr {h['lr']}, momentum "
        f"{h['momentum']}, weight decay {h['weight_decay']}, cosine schedule per phase, batch {h['batch_size']}, "
        f"T = {h['temperature']}, alpha = {h['alpha']}, beta = {h['beta']} (not tuned).",
        "",
        "Test error (%) at the **last** epoch (no validation split, so no best-epoch selection), mean ± std:",
        "",
        "| arm | test error % | per seed | s / run | paper (Romero et al. 2015) |",
        "|---|---|---|---|---|",
        *rows,
        "",
        f"Result: {verdict}. At equal total epochs two-stage spends {s['hint_epochs']} epoch(s) on hints alone, so it "
        f"trains on labels and soft targets for {kd_epochs} epoch(s) only. Lowest mean error: {names[best]} "
        f"({arms[best]['mean']:.2f}%); teacher {results['teacher']['test_error_pct']:.2f}%. The paper's numbers come "
        "from maxout networks trained to convergence on the full 60,000 training images; ours are short runs on "
        "8,000, so only the ordering of the arms can be compared. Times are wall-clock seconds per run on a shared "
        "machine.",
        "",
        f"Command (from the repository root): `{results['command']}` (total {results['total_time_s'] / 60:.1f} min). "
        f"Machine: {m['cpu']}, {m['cores']} cores (shared; load average {m['load_average_at_start']} at start), "
        f"torch {m['torch']} with {m['torch_threads']} intra-op thread(s), pytorch-lightning {m['pytorch_lightning']}, "
        f"Python {m['python']}. Raw numbers: `benchmarks/results/fitnets.json`.",
        "",
    ]
    # prose wrapped at 100 columns like the rest of the README; table rows stay on one line
    return "\n".join(line if line.startswith("|") else textwrap.fill(line, 100, break_on_hyphens=False)
                     for line in lines)


def write_readme(results: dict[str, Any], path: Path = README) -> None:
    """Replace (or add) the ``## FitNets`` section of ``path``, leaving every other section as it is."""
    text = path.read_text() if path.is_file() else "# Benchmarks\n\n"
    section = readme_section(results)
    pattern = re.compile(r"^## FitNets\n.*?(?=^## |\Z)", re.S | re.M)
    text = pattern.sub(lambda _: section + "\n", text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + section
    path.write_text(text.rstrip("\n") + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 seed, 1 epoch, a subset")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-readme", action="store_true", help="do not update benchmarks/README.md")
    parser.add_argument("--readme-only", action="store_true",
                        help="rewrite the README section from the existing results JSON, without training")
    args = parser.parse_args(argv)
    if args.readme_only:
        write_readme(json.loads((args.out_dir / "fitnets.json").read_text()))
        return 0
    results = run(quick=args.quick, out_dir=args.out_dir, threads=args.threads)
    if "skipped" in results:
        return 0
    if not args.quick and not args.no_readme:
        write_readme(results)
    print(readme_section(results))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
