"""Teacher → student knowledge distillation (Hinton, Vinyals & Dean, 2015)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn
from typing_extensions import Unpack

from kd_toolkit.core.batch import logits_of
from kd_toolkit.core.module import KDBaseModule, ModuleArgs
from kd_toolkit.distillation.cache import build_teacher_cache
from kd_toolkit.losses import cosine_logit_loss, kd_loss

__all__ = ["DistillationModule"]

#: loss components that need the teacher's logits
TEACHER_LOSSES = ("kd_loss", "cos_embed_loss")


class DistillationModule(KDBaseModule):
    """Train a student on hard labels and on a frozen teacher's softened outputs.

    Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network" (2015). The total loss is
    ``sum(loss_weights[k] * component_k)`` over the components

    * ``hard_loss``: ``criterion(student_logits, y)`` (cross-entropy by default),
    * ``kd_loss``: ``KL(softmax(t/T) || softmax(s/T)) * T**2``,
    * ``cos_embed_loss``: ``1 - cos(student_logits, teacher_logits)`` (seed 002),

    each logged under its name, and the total as ``train_loss``. ``loss_weights`` is seed 002's
    ``final_loss_coeff_dict``; seed 001's ``teacher_percentage=p`` is ``{"kd_loss": p, "hard_loss": 1 - p}``.
    With ``teacher=None`` the student trains on labels alone, so the same class trains teachers and baselines.

    Args:
        student: the model being trained; returns logits, a dict with ``"logits"``, or ``(logits, ...)``.
        teacher: frozen teacher (never optimised, never checkpointed with the student, not wrapped by DDP).
        temperature: softening temperature ``T > 0``.
        loss_weights: weights of the components; default ``{"hard_loss": 0.5, "kd_loss": 0.5}`` with a
            teacher, ``{"hard_loss": 1.0}`` without.
        cache_teacher_outputs: compute the teacher's logits once per training sample and reuse them every
            epoch (seed 003). Only valid when the training data is not augmented at random.
        **kwargs: :class:`~kd_toolkit.core.ModuleArgs`: ``criterion`` (hard-label loss, default
            ``nn.CrossEntropyLoss()``), ``inference_pipeline`` (seed 002), ``teacher_checkpoint`` (weights to load
            into ``teacher``), and :class:`~kd_toolkit.optim.OptimizerArgs`: ``optimizer`` (a preset name, an
            optimizer class, or an optimizer instance over the student's parameters), ``lr``,
            ``optimizer_kwargs``, ``scheduler``, ``warmup_epochs``, ``warmup_steps``, ``scheduler_kwargs``,
            ``track_grad_norm``.

    Example:
        >>> import pytorch_lightning as pl
        >>> from kd_toolkit.data import DigitsDataModule
        >>> from kd_toolkit.models import create_model
        >>> module = DistillationModule(create_model("digits_student"), create_model("digits_teacher"),
        ...                             temperature=4.0, loss_weights={"kd_loss": 0.7, "hard_loss": 0.3})
        >>> trainer = pl.Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1, logger=False,
        ...                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
        >>> trainer.fit(module, datamodule=DigitsDataModule())
        >>> {"val_acc", "val_loss"} <= set(trainer.callback_metrics)
        True
    """

    loss_names = ("hard_loss", "kd_loss", "cos_embed_loss")

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | None = None,
        *,
        temperature: float = 4.0,
        loss_weights: Mapping[str, float] | None = None,
        cache_teacher_outputs: bool = False,
        **kwargs: Unpack[ModuleArgs],
    ) -> None:
        super().__init__(student, teacher, temperature=temperature, loss_weights=loss_weights, **kwargs)
        needs_teacher = [k for k in TEACHER_LOSSES if self.loss_weights.get(k, 0) > 0]
        if teacher is None and needs_teacher:
            raise ValueError(f"Loss weights {needs_teacher} need a teacher, but `teacher` is None.")
        if not isinstance(cache_teacher_outputs, bool):
            raise ValueError(f"Expected `cache_teacher_outputs` to be a bool, but got {cache_teacher_outputs!r}.")
        if cache_teacher_outputs and teacher is None:
            raise ValueError("Expected a `teacher` when `cache_teacher_outputs=True`, but got None.")
        self.cache_teacher_outputs = cache_teacher_outputs
        self._teacher_cache: Tensor | None = None  # (N, C) logits, row i = training sample i

    def default_loss_weights(self) -> dict[str, float]:
        return {"hard_loss": 0.5, "kd_loss": 0.5} if self._teacher is not None else {"hard_loss": 1.0}

    def _needs_teacher(self) -> bool:
        return self._teacher is not None and any(self.loss_weights.get(k, 0) > 0 for k in TEACHER_LOSSES)

    def teacher_logits(self, x: Tensor, index: Tensor | None) -> Tensor:
        """Teacher logits for a batch: from the cache by sample index, or a live forward pass."""
        if self._teacher_cache is not None:
            if index is None:
                raise RuntimeError(
                    "cache_teacher_outputs=True needs batches that carry sample indices; wrap the training "
                    "loader with kd_toolkit.data.with_sample_indices (the orchestrator does this for you)."
                )
            # index_select: several times faster than advanced indexing on CPU
            return self._teacher_cache.index_select(0, index.to(self._teacher_cache.device)).to(x.device)
        return logits_of(self.teacher_forward(x))

    def loss_components(self, x: Tensor, y: Tensor | None, index: Tensor | None) -> dict[str, Tensor]:
        weights = self.loss_weights
        student_logits = self(x)  # (B, C)
        components: dict[str, Tensor] = {}
        if weights.get("hard_loss", 0) > 0:  # a component whose weight is 0 or absent is not computed
            components["hard_loss"] = self.criterion(student_logits, y)
        if self._needs_teacher():
            teacher_logits = self.teacher_logits(x, index).to(student_logits.dtype)  # (B, C)
            if weights.get("kd_loss", 0) > 0:
                components["kd_loss"] = kd_loss(student_logits, teacher_logits, self.temperature)
            if weights.get("cos_embed_loss", 0) > 0:
                components["cos_embed_loss"] = cosine_logit_loss(student_logits, teacher_logits)
        return components

    # ----------------------------------------------------------------------------- caching
    def on_train_start(self) -> None:
        if self.cache_teacher_outputs and self._teacher_cache is None:
            self._teacher_cache = self.build_teacher_cache(self.trainer.train_dataloader)

    def on_fit_end(self) -> None:
        self._teacher_cache = None  # free memory; rebuilt by the next fit

    def build_teacher_cache(self, train_loader: Any) -> Tensor:
        """Compute the teacher's logits for every training sample, in dataset order (see
        :func:`kd_toolkit.distillation.cache.build_teacher_cache`)."""
        return build_teacher_cache(self.teacher_forward, train_loader, device=self.device,
                                   to_device=self.trainer.strategy.batch_to_device)
