"""Seed 002 (Lightning Knowledge Distillation Toolkit) usage on Lightning 2.x.

    python examples/seed002_lightning_kd.py [--max-epoch 10] [--comet-info comet.txt]

Every constructor argument of the seed's ``KnowledgeDistillationTraining`` is accepted with the
seed's meaning; an inference pipeline scores each named validation loader.
"""

from __future__ import annotations

import argparse

import torch

from kd_toolkit import KnowledgeDistillationTraining
from kd_toolkit.data import DigitsDataModule
from kd_toolkit.models import create_model


class AccuracyPipeline:
    """Seed 002's inference-pipeline contract: ``run_inference_pipeline(model, loader) -> {"inference_result": x}``."""

    def run_inference_pipeline(self, model: torch.nn.Module, data_loader) -> dict:
        correct = total = 0
        device = next(model.parameters()).device
        with torch.no_grad():
            for x, y in data_loader:
                correct += int((model(x.to(device)).argmax(-1).cpu() == y).sum())
                total += len(y)
        return {"inference_result": correct / total}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-epoch", type=int, default=10)
    parser.add_argument("--teacher-epochs", type=int, default=5)
    parser.add_argument("--comet-info", default="", help="3-line file: API key, project, workspace")
    parser.add_argument("--num-gpu-used", type=int, default=0)
    args = parser.parse_args()

    data = DigitsDataModule(batch_size=64, seed=0)
    data.setup("fit")
    data.setup("test")
    precision = 16 if args.num_gpu_used else 32  # 16 (mixed) on a GPU; on a CPU it would fall back to 32 with a warning
    teacher = create_model("digits_teacher")
    KnowledgeDistillationTraining(student_model=teacher, train_data_loader=data.train_dataloader(),
                                  val_data_loaders={"val": data.val_dataloader()}, max_epoch=args.teacher_epochs,
                                  num_gpu_used=args.num_gpu_used, learning_rate=1e-2, precision=precision,
                                  default_root_dir="runs/examples",
                                  experiment_name="seed002_teacher", quiet=True).fit()

    kd = KnowledgeDistillationTraining(
        teacher_model=teacher,
        student_model=create_model("digits_student"),
        train_data_loader=data.train_dataloader(),
        val_data_loaders={"digits_val": data.val_dataloader()},
        inference_pipeline=AccuracyPipeline(),
        num_gpu_used=args.num_gpu_used,
        max_epoch=args.max_epoch,
        optimize_method="adam",
        scheduler_method="linear_decay_with_warm_up",
        learning_rate=1e-2,
        num_lr_warm_up_epoch=1,
        final_loss_coeff_dict={"kd_loss": 0.7, "hard_loss": 0.3},
        log_to_comet=bool(args.comet_info),
        comet_info_path=args.comet_info,
        comet_exp_name="seed002_digits",
        temperature=4,
        seed=32,
        track_grad_norm=2,
        accumulate_grad_batches=1,
        accelerator=None,
        num_nodes=1,
        precision=precision,
        deterministic=True,
        resume_from_checkpoint="",
        logging_param={"dataset": "digits", "student": "digits_student"},
        default_root_dir="runs/examples",
    )
    kd.start_kd_training()
    student = kd.get_student_model(best=True)
    print(f"best checkpoint: {kd.best_checkpoint}")
    print(f"metrics: {kd.run_dir / 'metrics.csv'}")
    print(f"validation score (best): {AccuracyPipeline().run_inference_pipeline(student, data.val_dataloader())}")
    test_accuracy = AccuracyPipeline().run_inference_pipeline(student, data.test_dataloader())["inference_result"]
    print(f"final test accuracy: {test_accuracy:.4f}")


if __name__ == "__main__":
    main()
