"""Multi-GPU / multi-node distillation with Lightning's DDP (launched by SLURM, torchrun or directly).

    # one machine, 4 GPUs
    python examples/multinode_train.py --gpus 4
    # SLURM, 2 nodes x 4 GPUs: see examples/slurm_multinode.sh
    # CPU stand-in for a quick check (2 processes, gloo):
    python examples/multinode_train.py --gpus 0 --cpu-processes 2

Lightning detects SLURM (SLURM_NTASKS, SLURM_PROCID, ...) and torchrun environment variables by
itself; the script only states how many devices per node and how many nodes.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from kd_toolkit import KnowledgeDistillationTraining
from kd_toolkit.data import DigitsDataModule
from kd_toolkit.models import create_model


def train_teacher(data: DigitsDataModule, epochs: int) -> torch.nn.Module:
    """A digits teacher in a plain loop, before any process group exists (every rank gets the same one: seeded).
    With your own teacher, load it here instead (or pass ``module_kwargs={"teacher_checkpoint": path}``)."""
    torch.manual_seed(0)
    teacher = create_model("digits_teacher")
    optimizer = torch.optim.Adam(teacher.parameters(), lr=1e-2)
    data.setup("fit")
    for _ in range(epochs):
        for x, y in data.train_dataloader():
            optimizer.zero_grad()
            F.cross_entropy(teacher(x), y).backward()
            optimizer.step()
    return teacher.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpus", type=int, default=1, help="GPUs per node (0 = CPU)")
    parser.add_argument("--num-nodes", type=int, default=1)
    parser.add_argument("--cpu-processes", type=int, default=2, help="processes when --gpus 0")
    parser.add_argument("--max-epoch", type=int, default=10)
    parser.add_argument("--teacher-epochs", type=int, default=5)
    parser.add_argument("--precision", default=None, help="16 (mixed), 32, bf16-mixed ... (default: 16 on GPUs, 32 on CPUs)")
    parser.add_argument("--root", default="runs/multinode")
    args = parser.parse_args()

    data = DigitsDataModule(batch_size=64, seed=0)  # every rank builds the same split (seeded)
    hardware = (dict(num_gpu_used=args.gpus) if args.gpus > 0 else
                dict(accelerator="cpu", devices=args.cpu_processes, strategy="ddp"))
    precision = args.precision or ("16" if args.gpus > 0 else "32")
    kd = KnowledgeDistillationTraining(
        teacher_model=train_teacher(data, args.teacher_epochs),
        student_model=create_model("digits_student"),
        datamodule=data,
        num_nodes=args.num_nodes,
        max_epoch=args.max_epoch,
        precision=int(precision) if precision.isdigit() else precision,
        learning_rate=1e-2,
        temperature=4.0,
        final_loss_coeff_dict={"kd_loss": 0.7, "hard_loss": 0.3},
        default_root_dir=args.root,
        **hardware,
    )
    kd.fit()
    if kd.trainer.is_global_zero:  # tested on one process: a DistributedSampler would pad the test split
        print(f"world size {kd.trainer.world_size}; best checkpoint: {kd.best_checkpoint}")
        student = kd.get_student_model(best=True).cpu().eval()
        data.setup("test")
        with torch.no_grad():
            correct = sum(int((student(x).argmax(-1) == y).sum()) for x, y in data.test_dataloader())
        print(f"final test accuracy: {correct / len(data.test_dataloader().dataset):.4f}")


if __name__ == "__main__":  # required: DDP re-launches this script in each process
    main()
