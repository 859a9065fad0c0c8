"""Seed 001 (TARDIS Knowledge Distillation) usage, unchanged: one call = one epoch.

    python examples/seed001_tardis_kd.py --epochs 5

The teacher is trained first (kd_toolkit's DistillationModule without a teacher), then the student
is distilled with ``knowledge_distillation_train`` exactly as the seed's README calls it.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn as nn

from kd_toolkit import KnowledgeDistillationTraining
from kd_toolkit.data import DigitsDataModule
from kd_toolkit.models import create_model
from knowledge_distilation import knowledge_distillation_train


def accuracy(model: nn.Module, loader) -> float:
    model.eval()
    with torch.no_grad():
        correct = sum(int((model(x).argmax(-1) == y).sum()) for x, y in loader)
    return correct / len(loader.dataset)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--teacher-epochs", type=int, default=5)
    args = parser.parse_args()

    torch.manual_seed(0)
    data = DigitsDataModule(batch_size=32, seed=0)
    data.setup("fit")
    data.setup("test")

    # 1. a teacher (in the seed this is "your_pretrained_teacher_model")
    teacher_model = create_model("digits_teacher")
    KnowledgeDistillationTraining(student_model=teacher_model, train_data_loader=data.train_dataloader(),
                                  val_data_loaders={"val": data.val_dataloader()}, max_epoch=args.teacher_epochs,
                                  learning_rate=1e-2, precision=32, default_root_dir="runs/examples",
                                  experiment_name="seed001_teacher", quiet=True).fit()
    print(f"teacher test accuracy: {accuracy(teacher_model, data.test_dataloader()):.4f}")

    # 2. the seed-001 call form, one epoch per call; the optimizer keeps its state across calls
    student_model = create_model("digits_student")
    trainloader = data.train_dataloader()
    optimizer = torch.optim.Adam(student_model.parameters(), lr=0.01)  # 0.001 needs ~4x the epochs on digits
    for epoch in range(args.epochs):
        epoch_loss = knowledge_distillation_train(
            teacher_model=teacher_model,
            student_model=student_model,
            trainloader=trainloader,
            criterion=nn.CrossEntropyLoss(),
            optimizer=optimizer,
            teacher_percentage=0.5,  # Balance between teacher signals and hard labels
            temperature=2.0,  # Controls softness of probability distributions
        )
        print(f"epoch {epoch + 1}: average loss per sample {epoch_loss:.4f}")
    print(f"final test accuracy: {accuracy(student_model, data.test_dataloader()):.4f}")  # the distilled student


if __name__ == "__main__":
    main()
