"""Teacher → student knowledge distillation (Hinton, Vinyals & Dean, 2015)."""

from __future__ import annotations

from typing import Any, Mapping

import torch
from pytorch_lightning.utilities import rank_zero_info
from torch import Tensor, nn
from torch.utils.data import DataLoader

from kd_toolkit.losses import cosine_logit_loss, kd_loss
from kd_toolkit.modules._base import _KDBaseModule, logits_of, split_batch

__all__ = ["DistillationModule"]


class DistillationModule(_KDBaseModule):
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
        criterion: hard-label loss module (default ``nn.CrossEntropyLoss()``).
        optimizer: preset name (``adam``, ``sgd``, ``adam_wav2vec2.0``, ``adam_distilBert``,
            ``adamW_distilBert``), an optimizer class, or an optimizer instance over the student's parameters.
        lr: learning rate (ignored for an optimizer instance).
        optimizer_kwargs: extra optimizer arguments (e.g. ``{"momentum": 0.9}``).
        scheduler: ``""``, ``"linear_decay_with_warm_up"``, ``"cosine_anneal"`` or ``"step"``; stepped per
            optimizer step.
        warmup_epochs: linear warm-up length in epochs (or give ``warmup_steps``).
        warmup_steps: linear warm-up length in optimizer steps (takes precedence).
        scheduler_kwargs: e.g. ``{"step_size": 100, "gamma": 0.1}`` for ``"step"``.
        track_grad_norm: log the student's gradient norms of this order at the logging cadence (None/-1: off).
        inference_pipeline: object with ``run_inference_pipeline(model, loader) -> {"inference_result": x}``
            used instead of accuracy for validation/test; logged under each loader's name (seed 002).
        cache_teacher_outputs: compute the teacher's logits once per training sample and reuse them every
            epoch (seed 003). Only valid when the training data is not augmented at random.
        teacher_checkpoint: weights to load into ``teacher`` (a state dict, or a checkpoint of a teacher trained
            with this class and ``teacher=None``); lets YAML configs name a pretrained teacher.

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
        criterion: nn.Module | None = None,
        optimizer: Any = "adam",
        lr: float = 1e-3,
        optimizer_kwargs: Mapping[str, Any] | None = None,
        scheduler: str = "",
        warmup_epochs: int = 0,
        warmup_steps: int = 0,
        scheduler_kwargs: Mapping[str, Any] | None = None,
        track_grad_norm: float | None = None,
        inference_pipeline: Any = None,
        cache_teacher_outputs: bool = False,
        teacher_checkpoint: str | None = None,
    ) -> None:
        super().__init__(
            student, teacher, temperature=temperature, loss_weights=loss_weights, criterion=criterion,
            optimizer=optimizer, lr=lr, optimizer_kwargs=optimizer_kwargs, scheduler=scheduler,
            warmup_epochs=warmup_epochs, warmup_steps=warmup_steps, scheduler_kwargs=scheduler_kwargs,
            track_grad_norm=track_grad_norm, inference_pipeline=inference_pipeline,
            teacher_checkpoint=teacher_checkpoint,
        )
        needs_teacher = [k for k in ("kd_loss", "cos_embed_loss") if self.loss_weights.get(k, 0) > 0]
        if teacher is None and needs_teacher:
            raise ValueError(f"Loss weights {needs_teacher} need a teacher, but `teacher` is None.")
        if cache_teacher_outputs and teacher is None:
            raise ValueError("Expected a `teacher` when `cache_teacher_outputs=True`, but got None.")
        self.cache_teacher_outputs = bool(cache_teacher_outputs)
        self._teacher_cache: Tensor | None = None  # (N, C) logits, row i = training sample i
        self.save_hyperparameters(ignore=["student", "teacher", "criterion", "inference_pipeline", "optimizer"])
        spec = self.optimizer_spec  # a preset name, a class, or an instance: stored as a plain string
        self.hparams["optimizer"] = spec if isinstance(spec, str) else getattr(spec, "__name__", type(spec).__name__)

    def default_loss_weights(self) -> dict[str, float]:
        return {"hard_loss": 0.5, "kd_loss": 0.5} if self._teacher is not None else {"hard_loss": 1.0}

    def _needs_teacher(self) -> bool:
        return self._teacher is not None and any(
            self.loss_weights.get(k, 0) > 0 for k in ("kd_loss", "cos_embed_loss")
        )

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

    def loss_components(self, x: Tensor, y: Tensor, index: Tensor | None) -> dict[str, Tensor]:
        student_logits = self(x)  # (B, C)
        components = {"hard_loss": self.criterion(student_logits, y)}
        if self._needs_teacher():
            teacher_logits = self.teacher_logits(x, index).to(student_logits.dtype)  # (B, C)
            if self.loss_weights.get("kd_loss", 0) > 0:
                components["kd_loss"] = kd_loss(student_logits, teacher_logits, self.temperature)
            if self.loss_weights.get("cos_embed_loss", 0) > 0:
                components["cos_embed_loss"] = cosine_logit_loss(student_logits, teacher_logits)
        return components

    # ----------------------------------------------------------------------------- caching
    def on_train_start(self) -> None:
        if self.cache_teacher_outputs and self._teacher_cache is None:
            self._teacher_cache = self.build_teacher_cache(self.trainer.train_dataloader)

    def on_fit_end(self) -> None:
        self._teacher_cache = None  # free memory; rebuilt by the next fit

    @torch.no_grad()
    def build_teacher_cache(self, train_loader: Any) -> Tensor:
        """Compute the teacher's logits for every training sample, in dataset order.

        The loader must yield ``((x, y), index)`` batches (see :func:`kd_toolkit.data.with_sample_indices`);
        the cache is filled with a sequential pass over the same dataset and collate function.
        """
        from kd_toolkit.data import IndexedDataset, find_random_transform

        loader = train_loader
        dataset = getattr(loader, "dataset", None)
        if not isinstance(dataset, IndexedDataset):
            raise ValueError(
                "Expected the training loader to yield sample indices for `cache_teacher_outputs=True`; wrap it "
                "with kd_toolkit.data.with_sample_indices(loader) or train through KnowledgeDistillationTraining."
            )
        random_transform = find_random_transform(dataset)
        if random_transform is not None:
            raise ValueError(
                f"Cannot cache teacher outputs: the training data uses the random transform {random_transform}, so "
                "the teacher would see a different input every epoch. Set `cache_teacher_outputs=False`."
            )
        sequential = DataLoader(dataset, batch_size=max(256, loader.batch_size or 1), shuffle=False,
                                collate_fn=loader.collate_fn, num_workers=0)
        cache: Tensor | None = None
        rank_zero_info(f"Caching teacher outputs for {len(dataset)} training samples...")
        # Forked RNG: building the cache must not shift the random stream (data order, dropout) of training,
        # so a cached run sees exactly the batches a live-teacher run sees.
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            for batch in sequential:
                x, _, index = split_batch(self.trainer.strategy.batch_to_device(batch))
                logits = logits_of(self.teacher_forward(x)).float()  # (B, C)
                if cache is None:
                    cache = torch.empty(len(dataset), logits.shape[-1], device=self.device)
                cache[index.to(cache.device)] = logits.to(cache.device)
        if cache is None:
            raise ValueError("Expected a non-empty training set to cache teacher outputs, but got 0 samples.")
        return cache
