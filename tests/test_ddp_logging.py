"""Epoch-level logs under CPU DDP (2 gloo processes): the epoch loss is the mean over every rank's samples, even
when the ranks see different numbers of samples, and Lightning's ``sync_dist`` warning never fires (nor its
``logger=True`` one: the run has no logger)."""

from __future__ import annotations

import warnings

import pytorch_lightning as pl
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, TensorDataset

from kd_toolkit import DistillationModule
from tests.conftest import TinyMLP

BATCHES = 4
BATCH_SIZE = (32, 8)  # per rank: the ranks average over 128 and 32 samples


class _UnevenBatches:
    """Batch sampler: rank ``r`` yields ``BATCHES`` batches of ``BATCH_SIZE[r]`` from its own index range."""

    def __len__(self) -> int:
        return BATCHES

    def __iter__(self):
        rank = dist.get_rank() if dist.is_initialized() else 0
        size, start = BATCH_SIZE[rank], 512 * rank
        return iter([list(range(start + i * size, start + (i + 1) * size)) for i in range(BATCHES)])


class _GlobalMeanCheck(pl.Callback):
    """In each rank: sums the returned batch losses itself and compares the logged epoch values with the global
    per-sample mean; on rank 0 it fails the run on any warning about kd_toolkit's ``self.log`` calls."""

    def on_fit_start(self, trainer, pl_module):
        self._catcher = warnings.catch_warnings(record=True)
        self._caught = self._catcher.__enter__()
        warnings.simplefilter("always")

    def on_train_epoch_start(self, trainer, pl_module):
        self.sums = torch.zeros(2, dtype=torch.float64)  # (loss * batch size, samples)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.sums += torch.tensor([float(outputs["loss"]) * len(batch[1]), len(batch[1])], dtype=torch.float64)

    def on_train_epoch_end(self, trainer, pl_module):
        own = self.sums.clone()
        dist.all_reduce(self.sums)
        per_rank = pl_module.all_gather(own / own[1])[:, 0]  # each rank's own mean
        global_mean = float(self.sums[0] / self.sums[1])
        if abs(float(per_rank.mean()) - global_mean) < 1e-4:
            raise RuntimeError(f"the test needs ranks with different means: {per_rank.tolist()}")
        for key in ("train_loss_epoch", "train_loss"):
            logged = float(trainer.callback_metrics[key])
            if abs(logged - global_mean) > 1e-5 * max(1.0, abs(global_mean)):
                raise RuntimeError(f"{key}={logged} is not the global mean {global_mean} (mean of the ranks' "
                                   f"means: {float(per_rank.mean())})")

    def on_fit_end(self, trainer, pl_module):
        self._catcher.__exit__(None, None, None)
        # Lightning's hints about kd_toolkit's own `self.log` calls: sync_dist, or logger=True without a logger
        about_logging = [str(w.message) for w in self._caught if "self.log(" in str(w.message)]
        if about_logging:
            raise RuntimeError(f"warnings about kd_toolkit's logging: {about_logging}")


def test_ddp_epoch_loss_is_the_global_mean_and_nothing_warns(digits, trained_teacher, tmp_path):
    x, y = digits["train"]
    # rank 1's samples get a shifted input: a clearly different mean loss than rank 0's
    x = torch.cat([x[:512], x[512:1024] + 0.5])
    train = DataLoader(TensorDataset(x, y[:1024]), batch_sampler=_UnevenBatches())
    val = DataLoader(TensorDataset(*digits["val"]), batch_size=100)
    torch.manual_seed(0)
    module = DistillationModule(TinyMLP(), trained_teacher, temperature=4.0, lr=1e-3,
                                loss_weights={"hard_loss": 0.5, "kd_loss": 0.5})
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn", max_epochs=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         use_distributed_sampler=False, callbacks=[_GlobalMeanCheck()], default_root_dir=tmp_path)
    trainer.fit(module, train, val)  # a failed check in a worker raises here
    assert trainer.world_size == 2 and float(trainer.callback_metrics["train_loss"]) > 0
