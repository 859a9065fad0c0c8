"""FitNets on MNIST, two ways: the seed-004 functional API and the module API.

1. Seed API: ``create_fitnets_config`` + ``train_fitnets`` train a WideCNN teacher (no teacher: labels only),
   then a ThinDeepCNN student guided by that teacher's checkpoint (``teacher_model=<path>``: the default hint
   pair of the named models is used), writing the seed's checkpoints, log, summary and TensorBoard run.
2. Module API: ``FitNetsModule`` (the paper's two-stage recipe, hint pair ``features.4`` -> ``features.2``)
   trained by ``KnowledgeDistillationTraining`` on ``MNISTDataModule``.

Small and fast by default (a subset, 2 epochs; ``--quick`` for a smoke run); from the repository root::

    .venv/bin/python examples/fitnets_mnist.py --epochs 2
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from kd_toolkit.data import MNIST_MEAN, MNIST_STD, MNISTDataModule, load_mnist_idx, make_loader, stratified_split
from kd_toolkit.fitnets.models import ThinDeepCNN, WideCNN
from kd_toolkit.fitnets.module import FitNetsModule
from kd_toolkit.fitnets.seed_api import create_fitnets_config, train_fitnets
from kd_toolkit.training import KnowledgeDistillationTraining

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist-test"


def mnist_loaders(data_dir: Path, subset: int, batch_size: int = 32):
    """Train/val/test loaders over a stratified subset of the MNIST test file (70/15/15)."""
    images, labels = load_mnist_idx(data_dir, "test")
    x = torch.from_numpy(images).unsqueeze(1).float().div(255.0).sub(MNIST_MEAN).div(MNIST_STD)  # (N, 1, 28, 28)
    y = torch.from_numpy(labels)
    keep = torch.from_numpy(stratified_split(labels, [subset / len(y), 1 - subset / len(y)], seed=0)[0])
    parts = stratified_split(labels[keep.numpy()], [0.7, 0.15, 0.15], seed=0)
    xs, ys = x[keep], y[keep]
    return [make_loader(xs[idx], ys[idx], batch_size, shuffle=i == 0) for i, idx in enumerate(parts)]


def seed_api(args: argparse.Namespace) -> dict[str, float]:
    """The seed's functions; returns the teacher's and the student's test accuracy (percent, the seed's unit)."""
    train, val, test = mnist_loaders(args.data_dir, args.subset, batch_size=16)
    # The seed's defaults (SGD momentum 0.9, weight decay 5e-4, StepLR) apart from these; lr 0.05 and batches of 16
    # so a few epochs on a small subset clearly learn.
    common = dict(epochs=args.epochs, num_classes=10, lr=0.05, batch_size=16, save_freq=1, print_freq=20, num_workers=0, device="cpu",
                  verbose=args.verbose, save_dir=str(args.output_dir / "checkpoints"), log_dir=str(args.output_dir / "logs"))
    teacher = train_fitnets(create_fitnets_config(model="WideCNN", experiment_name="teacher", **common),
                            train, val, test)
    print(f"seed API teacher (WideCNN): best val accuracy {teacher['best_accuracy']:.2f}%, "
          f"final test accuracy {teacher['test_results']['test_acc']:.2f}%")
    # The seed's two-line form: a model name and a teacher checkpoint (its architecture is recorded in the .pth).
    teacher_path = Path(teacher["config"]["save_dir"]) / "teacher_best.pth"  # save_dir/{dataset_name}/FitNets
    config = create_fitnets_config(model="ThinDeepCNN", teacher_model=str(teacher_path), alpha=0.5, beta=0.1,
                                   experiment_name="student", **common)
    student = train_fitnets(config, train, val, test)
    for entry in student["training_history"]:
        print({k: round(v, 4) if isinstance(v, float) else v for k, v in entry.items()})
    print(f"seed API student (ThinDeepCNN, hints {student['config']['hint_layers']}): best val accuracy "
          f"{student['best_accuracy']:.2f}%, final test accuracy {student['test_results']['test_acc']:.2f}%")
    return {"teacher": teacher["test_results"]["test_acc"], "student": student["test_results"]["test_acc"],
            "teacher_path": str(teacher_path)}  # type: ignore[dict-item]


def module_api(args: argparse.Namespace, teacher_path: str) -> float:
    """The paper's two-stage recipe with the module API; returns the student's final validation accuracy (0-1)."""
    module = FitNetsModule(
        ThinDeepCNN(), WideCNN(), {"features.4": "features.2"}, input_shape=[1, 28, 28], stage="two_stage",
        hint_epochs=1, alpha=0.5, temperature=4.0, optimizer="sgd", lr=0.05, optimizer_kwargs={"momentum": 0.9},
        teacher_checkpoint=teacher_path,  # the teacher trained above
    )
    kd = KnowledgeDistillationTraining(
        module=module, datamodule=MNISTDataModule(args.data_dir, batch_size=32), max_epoch=max(2, args.epochs),
        accelerator="cpu", default_root_dir=args.output_dir / "module_api", experiment_name="fitnets_two_stage",
        limit_train_batches=max(1, args.subset // 32), limit_val_batches=max(1, args.subset // 128),
        enable_progress_bar=False, quiet=True,
    )
    kd.fit()
    accuracy = float(kd.trainer.callback_metrics["val_acc"])
    print(f"module API student (two-stage, phase {module.phase}): final val accuracy {100 * accuracy:.2f}% "
          f"(run dir {kd.run_dir})")
    return accuracy


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--subset", type=int, default=2000, help="images of the MNIST file to use")
    parser.add_argument("--data-dir", type=Path, default=DATA)
    parser.add_argument("--output-dir", type=Path, default=Path("runs/fitnets_example"))
    parser.add_argument("--quick", action="store_true", help="a smoke run: 600 images, a few batches")
    parser.add_argument("--verbose", action="store_true", help="print the seed API's per-epoch progress")
    args = parser.parse_args(argv)
    if args.quick:
        args.subset = 600
    results = seed_api(args)
    results["module_api"] = module_api(args, str(results.pop("teacher_path")))
    return results


if __name__ == "__main__":
    main()
