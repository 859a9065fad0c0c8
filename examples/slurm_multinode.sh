#!/usr/bin/env bash
# Distillation on 2 nodes x 4 GPUs with Lightning's DDP under SLURM.
#   sbatch examples/slurm_multinode.sh
# Lightning reads SLURM's variables (SLURM_NTASKS, SLURM_PROCID, SLURM_LOCALID, node list) itself:
# one task per GPU, and --ntasks-per-node must equal the GPUs per node given to the script.
#SBATCH --job-name=kd-toolkit
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=4
#SBATCH --gres=gpu:4
#SBATCH --cpus-per-task=8
#SBATCH --time=02:00:00
#SBATCH --output=kd-%j.out

set -euo pipefail
source .venv/bin/activate   # created by `make demo` / `make test`
export NCCL_DEBUG=WARN

srun python examples/multinode_train.py --gpus 4 --num-nodes "${SLURM_JOB_NUM_NODES}" --precision 16 --max-epoch 20
