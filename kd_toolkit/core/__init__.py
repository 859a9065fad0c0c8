"""What every kd_toolkit method shares: the base LightningModule, batch/output normalisation, loss logging,
exact resume."""

from kd_toolkit.core.batch import logits_of, split_batch
from kd_toolkit.core.losslog import EpochLosses, is_logging_step
from kd_toolkit.core.module import KDBaseModule, ModuleArgs, attached_trainer, check_loss_weights, freeze_teacher
from kd_toolkit.core.resume import RNGStateCallback

__all__ = [
    "EpochLosses",
    "KDBaseModule",
    "ModuleArgs",
    "RNGStateCallback",
    "attached_trainer",
    "check_loss_weights",
    "freeze_teacher",
    "is_logging_step",
    "logits_of",
    "split_batch",
]
