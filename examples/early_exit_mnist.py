"""Early exit on MNIST: train a LeNet with exits, calibrate, export the segments, reload and run them.

    python examples/early_exit_mnist.py --epochs 2 [--data-dir ../shared/data/mnist-test] [--out runs/early_exit_mnist]
    python examples/early_exit_mnist.py --epochs 1 --quick    # smoke run on a 2,000-image subset

The 10,000 MNIST test images are split stratified 70/10/20 into train/validation/test. The
thresholds are calibrated on the validation part (at most 0.5 points below the final exit's
accuracy there), never on the test part. The segments are exported as ``torch.export`` programs
(``.pt2``, with the payload each device hands to the next in the manifest), loaded back with
``load_segments`` (no model classes needed) and evaluated on the test part; the whole network is
also exported as one ONNX graph that decides per sample inside the graph (``export_network``).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from kd_toolkit import KnowledgeDistillationTraining
from kd_toolkit.data import MNIST_MEAN, MNIST_STD, load_mnist_idx, make_loader, stratified_split
from kd_toolkit.early_exit import EarlyExitModule, EarlyExitNetwork, cost_report, export_network
from kd_toolkit.early_exit.calibration import calibrate_thresholds
from kd_toolkit.early_exit.deploy import load_network, load_segments
from kd_toolkit.early_exit.export import export_segments
from kd_toolkit.models import LeNet

DEFAULT_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "mnist-test"


def _splits(data_dir: Path, quick: bool, seed: int = 0) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    images, labels = load_mnist_idx(data_dir, "test")
    if quick:  # a stratified fifth of the images
        keep = stratified_split(labels, [0.2, 0.8], seed=seed)[0]
        images, labels = images[keep], labels[keep]
    x = torch.from_numpy(images).unsqueeze(1).float().div_(255.0).sub_(MNIST_MEAN).div_(MNIST_STD)  # (N, 1, 28, 28)
    y = torch.from_numpy(labels)
    parts = stratified_split(labels, [0.7, 0.1, 0.2], seed=seed)
    return {name: (x[idx], y[idx]) for name, idx in zip(("train", "val", "test"), parts)}


def _seconds(fn, x: torch.Tensor, batch: int = 256, repeats: int = 3) -> float:
    """Best of ``repeats`` wall times of running ``fn`` over ``x`` in batches."""
    best = float("inf")
    with torch.no_grad():
        for _ in range(repeats):
            start = time.perf_counter()
            for i in range(0, len(x), batch):
                fn(x[i : i + batch])
            best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=Path("runs/early_exit_mnist"))
    parser.add_argument("--quick", action="store_true", help="smoke run: 2,000 images, one timing pass")
    args = parser.parse_args()

    torch.manual_seed(0)
    data = _splits(args.data_dir, args.quick)
    network = EarlyExitNetwork(LeNet(), (1, 1, 28, 28), [[64], [64]], [0.9, 0.9])
    module = EarlyExitModule(network, self_distillation=True, optimizer="adam", lr=2e-3)
    val_loader = make_loader(*data["val"], batch_size=500)
    KnowledgeDistillationTraining(
        module=module, train_data_loader=make_loader(*data["train"], batch_size=64, shuffle=True),
        val_data_loaders=val_loader, max_epoch=args.epochs, num_gpu_used=0, seed=0, checkpointing=False,
        csv_logging=False, quiet=True, enable_progress_bar=False, deterministic=False,
    ).fit()
    network.cpu().eval()

    result = calibrate_thresholds(network, val_loader, max_accuracy_drop=0.005, apply=True)
    print(f"calibrated thresholds on the validation split: {[round(t, 4) for t in result.thresholds]}")

    args.out.mkdir(parents=True, exist_ok=True)
    export_dir = export_segments(network, args.out / "segments", format="export", exit_shares=result,
                                 overwrite=True)
    chain = load_segments(export_dir)
    print(f"exported {len(chain)} segments to {export_dir}")
    print(cost_report(network, exit_shares=result.exit_shares, repeats=3 if args.quick else 20))
    program = load_network(export_network(network, args.out / "network.onnx", format="onnx", overwrite=True))

    x, y = data["test"]
    with torch.no_grad():
        per_exit = [(logits.argmax(-1) == y).float().mean().item() for logits in network(x)]
    prediction = torch.cat([chain.predict(x[i : i + 256]).exit_index for i in range(0, len(x), 256)])
    predicted = torch.cat([chain.predict(x[i : i + 256]).predictions for i in range(0, len(x), 256)])
    shares = torch.bincount(prediction, minlength=len(chain)).float() / len(y)
    print(f"test accuracy of each exit (all {len(y)} test images): " + ", ".join(f"{100 * a:.2f}%" for a in per_exit))
    print(f"early-exit test accuracy (reloaded segments): {100 * (predicted == y).float().mean().item():.2f}%")
    print("share of test images leaving at each exit: " + ", ".join(f"{100 * s:.1f}%" for s in shares.tolist()))
    one_graph = torch.cat([program.predict(x[i : i + 256]).exit_index for i in range(0, len(x), 256)])
    print(f"one-graph ONNX program agrees with the chain on every exit: {bool(torch.equal(one_graph, prediction))}")

    repeats = 1 if args.quick else 3
    full = _seconds(network.blocks, x, repeats=repeats)
    early = _seconds(network.predict, x, repeats=repeats)
    chained = _seconds(chain.predict, x, repeats=repeats)
    print(f"wall time over the test split at batch 256: full network {1000 * full:.1f} ms, "
          f"early exit {1000 * early:.1f} ms ({full / early:.2f}x), reloaded segments {1000 * chained:.1f} ms "
          f"({full / chained:.2f}x)")


if __name__ == "__main__":
    main()
