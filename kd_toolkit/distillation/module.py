"""Teacher(s) → student knowledge distillation (Hinton, Vinyals & Dean, 2015) and logit-based successors."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import torch
import torchmetrics
from torch import Tensor, nn
from typing_extensions import Unpack

from kd_toolkit._checks import check_choice, check_float, check_int, check_keys, expected
from kd_toolkit.core.batch import logits_of, split_batch
from kd_toolkit.core.module import KDBaseModule, ModuleArgs, attached_trainer
from kd_toolkit.core.teachers import SINGLE_TEACHER
from kd_toolkit.distillation.cache import TopKCache, build_teacher_cache, build_topk_teacher_cache
from kd_toolkit.distillation.persist import cache_key, check_cache_dir, load_or_build
from kd_toolkit.distillation.topk import check_cache_k, topk_soft_target_log_probs
from kd_toolkit.losses import (
    MIXING_MODES,
    MixingMode,
    cosine_logit_loss,
    dist_loss,
    dkd_loss,
    dkd_warmup_factor,
    kd_loss,
    ls_kd_loss,
    mixture_log_probs,
    normalize_teacher_weights,
)

__all__ = ["TEACHER_LOSSES", "DistillationModule"]

#: loss components that need the teachers' outputs
TEACHER_LOSSES = ("kd_loss", "cos_embed_loss", "ls_kd_loss", "dkd_loss", "dist_loss")
#: losses that need the teachers' full logits, which a top-k cache does not keep
_FULL_LOGIT_LOSSES = ("cos_embed_loss", "ls_kd_loss", "dkd_loss", "dist_loss")
CacheMode = Literal["exact", "topk"]
_ENSEMBLE = " ensemble"  # key of the mixture's accuracy (a space: no teacher can be named so)


class DistillationModule(KDBaseModule):
    """Train a student on hard labels and on one or several frozen teachers' softened outputs.

    Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network" (2015). The total loss is
    ``sum(loss_weights[k] * component_k)`` over the components (the math is in :mod:`kd_toolkit.losses`)

    * ``hard_loss``: ``criterion(student_logits, y)`` (cross-entropy by default),
    * ``kd_loss``: ``KL(q_T || softmax(s/T)) * T**2`` (Hinton et al. 2015),
    * ``cos_embed_loss``: ``1 - cos(student_logits, teacher_logits)`` (seed 002; with several teachers the
      ``teacher_weights``-weighted mean over teachers),
    * ``ls_kd_loss``: KD on standardised logits (Sun et al., CVPR 2024),
    * ``dkd_loss``: decoupled KD, ``alpha * TCKD + beta * NCKD`` (Zhao et al., CVPR 2022), times the linear warm-up
      ``min((epoch + 1) / dkd_warmup_epochs, 1)``,
    * ``dist_loss``: DIST's inter- and intra-class Pearson correlation (Huang et al., NeurIPS 2022),

    each logged under its name, and the total as ``train_loss``; a component whose weight is 0 or absent is not
    computed. ``q_T`` is the teacher's distribution at ``T``; with several teachers, the ``teacher_weights``
    mixture of their tempered distributions, in log space (:func:`~kd_toolkit.losses.mixture_log_probs`), or with
    ``teacher_mixing="logits"`` the softened average of their logits. ``loss_weights`` is seed 002's
    ``final_loss_coeff_dict``; seed 001's ``teacher_percentage=p`` is ``{"kd_loss": p, "hard_loss": 1 - p}``. With
    ``teacher=None`` the student trains on labels alone, so the same class trains teachers and baselines. On the
    first validation epoch of each fit, each teacher's accuracy on the (first) validation loader is logged once, as
    ``val_teacher_acc`` (one teacher) or ``val_teacher_<name>_acc`` and ``val_teacher_ensemble_acc`` (several).

    Args:
        student: the model being trained; returns logits, a dict with ``"logits"``, or ``(logits, ...)``.
        teacher: frozen teacher, a list of them, or a dict ``{name: teacher}`` (never optimised, never checkpointed
            with the student, not wrapped by DDP; all must output the student's classes).
        temperature: softening temperature ``T > 0`` (of every tempered loss).
        loss_weights: weights of the components; default ``{"hard_loss": 0.5, "kd_loss": 0.5}`` with a teacher,
            ``{"hard_loss": 1.0}`` without.
        cache_teacher_outputs: compute the teachers' logits once per training sample and reuse them every epoch
            (seed 003). Only valid when the training data is not augmented at random. With several teachers the
            cache keeps **each teacher's logits** ``(N, K, C)``, not the mixture: ``temperature``,
            ``teacher_weights``, ``teacher_mixing`` and the losses (standardised ones need raw logits, the cosine
            loss compares raw logits per teacher) stay free, at ``K`` times the memory of one teacher's cache.
            ``True`` or ``"exact"``: the full float32 logits (``4 C`` bytes per sample and teacher).
            ``"topk"``: per sample and teacher the ``cache_k`` largest logits (float16), their indices (int16/int32)
            and one tail bucket, the log-sum-exp of the other logits at ``temperature``
            (:mod:`kd_toolkit.distillation.topk`): the target's tail mass is exact, spread uniformly over the tail
            classes; the cache is tied to ``temperature``. Only ``kd_loss`` (and ``hard_loss``) can use it, with
            ``teacher_mixing="probs"`` and no ``logit_standardization``.
        cache_k: ``k`` of the top-k cache, a positive int smaller than the class count (default 10).
        cache_dir: keep the cache in memory-mapped files in this (writable) directory, written once per node by its
            rank 0 and read by every rank; a later run with the same teacher weights and dataset (and for top-k the
            same ``cache_k`` and ``temperature``) skips the teacher; any difference rebuilds it with a warning that
            says why (:mod:`kd_toolkit.distillation.persist`).
        teacher_weights: one weight ``>= 0`` per teacher (a list in the teachers' order, or a dict by name), with a
            positive sum; normalised. ``None``: equal weights.
        teacher_mixing: ``"probs"`` (mixture of the tempered distributions) or ``"logits"`` (average the logits).
        logit_standardization: standardise the logits before softening in ``kd_loss``, ``dkd_loss`` and
            ``dist_loss`` too (the paper's plug-in; ``ls_kd_loss`` always standardises).
        dkd_alpha, dkd_beta: DKD's weights of TCKD and NCKD (``>= 0``; the paper's CIFAR-100 values 1 and 8).
        dkd_warmup_epochs: epochs of DKD's linear warm-up (``>= 0``; the paper uses 20; 0 = none).
        dist_beta, dist_gamma: DIST's weights of the inter- and intra-class terms (``>= 0``).
        dist_tau_squared: multiply DIST by ``T**2`` as the authors' code does (their paper's equation does not).
        **kwargs: :class:`~kd_toolkit.core.ModuleArgs`: ``criterion`` (hard-label loss, default
            ``nn.CrossEntropyLoss()``), ``inference_pipeline`` (seed 002), ``teacher_checkpoint`` (weights to load
            into the teacher(s)), and :class:`~kd_toolkit.optim.OptimizerArgs`: ``optimizer`` (a preset name, an
            optimizer class, or an optimizer instance over the student's parameters), ``lr``,
            ``optimizer_kwargs``, ``scheduler``, ``warmup_epochs``, ``warmup_steps``, ``scheduler_kwargs``,
            ``track_grad_norm``.

    Example:
        >>> import pytorch_lightning as pl
        >>> from kd_toolkit.data import DigitsDataModule
        >>> from kd_toolkit.models import create_model
        >>> module = DistillationModule(create_model("digits_student"),
        ...                             [create_model("digits_teacher"), create_model("digits_teacher")],
        ...                             teacher_weights=[0.5, 0.5], temperature=4.0,
        ...                             loss_weights={"kd_loss": 0.7, "hard_loss": 0.3})
        >>> trainer = pl.Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1, logger=False,
        ...                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
        >>> trainer.fit(module, datamodule=DigitsDataModule())
        >>> {"val_acc", "val_loss", "val_teacher_0_acc", "val_teacher_1_acc"} <= set(trainer.callback_metrics)
        True
    """

    loss_names: tuple[str, ...] = ("hard_loss", *TEACHER_LOSSES)

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | list[nn.Module] | dict[str, nn.Module] | None = None,
        *,
        temperature: float = 4.0,
        loss_weights: Mapping[str, float] | None = None,
        cache_teacher_outputs: bool | CacheMode = False,
        cache_k: int = 10,
        cache_dir: str | Path | None = None,
        teacher_weights: list[float] | dict[str, float] | None = None,
        teacher_mixing: MixingMode = "probs",
        logit_standardization: bool = False,
        dkd_alpha: float = 1.0,
        dkd_beta: float = 8.0,
        dkd_warmup_epochs: int = 20,
        dist_beta: float = 1.0,
        dist_gamma: float = 1.0,
        dist_tau_squared: bool = True,
        **kwargs: Unpack[ModuleArgs],
    ) -> None:
        self.cache_mode: CacheMode | None = _check_cache_mode(cache_teacher_outputs)
        self.cache_k = check_cache_k(cache_k)
        self.cache_dir = check_cache_dir(cache_dir)
        if self.cache_dir is not None and self.cache_mode is None:
            raise ValueError("Expected `cache_teacher_outputs` to be True, 'exact' or 'topk' with `cache_dir`, but got "
                             f"{cache_teacher_outputs!r}.")
        for name, flag in (("logit_standardization", logit_standardization), ("dist_tau_squared", dist_tau_squared)):
            if not isinstance(flag, bool):
                raise expected(name, "a bool", flag)
        self.teacher_mixing: MixingMode = check_choice("teacher_mixing", teacher_mixing, MIXING_MODES)
        self.dkd_alpha = check_float("dkd_alpha", dkd_alpha, minimum=0)
        self.dkd_beta = check_float("dkd_beta", dkd_beta, minimum=0)
        self.dkd_warmup_epochs = check_int("dkd_warmup_epochs", dkd_warmup_epochs, minimum=0)
        self.dist_beta = check_float("dist_beta", dist_beta, minimum=0)
        self.dist_gamma = check_float("dist_gamma", dist_gamma, minimum=0)
        self.dist_tau_squared = dist_tau_squared
        self.logit_standardization = logit_standardization
        super().__init__(student, teacher, temperature=temperature, loss_weights=loss_weights, **kwargs)
        needs_teacher = [k for k in TEACHER_LOSSES if self.loss_weights.get(k, 0) > 0]
        if not self._teachers and needs_teacher:
            raise ValueError(f"Loss weights {needs_teacher} need a teacher, but `teacher` is None.")
        if self.cache_mode is not None and not self._teachers:
            raise ValueError("Expected a `teacher` when `cache_teacher_outputs=True`, but got None.")
        if self.cache_mode == "topk":
            self._check_topk_compatible()
        self.teacher_weights = self._check_teacher_weights(teacher_weights)
        self.cache_teacher_outputs = self.cache_mode is not None
        self._teacher_cache: Tensor | None = None  # (N, C) logits of one teacher, (N, K, C) of several; row i = sample i
        self._topk_cache: TopKCache | None = None  # cache_teacher_outputs="topk"
        self._teacher_acc: dict[str, torchmetrics.Metric] = {}  # per teacher, first validation epoch only
        self._teacher_acc_done = False

    def _check_teacher_weights(self, weights: Any) -> list[float]:
        names = list(self._teachers)
        if weights is None:
            return normalize_teacher_weights(None, len(names)) if names else []
        if not names:
            raise ValueError(f"Expected a `teacher` for `teacher_weights`, but got teacher=None and {weights!r}.")
        if isinstance(weights, Mapping):
            check_keys("teacher_weights", weights, names)
            if set(weights) != set(names):
                raise expected("teacher_weights", f"a dict with one weight per teacher {names}", weights)
            weights = [weights[n] for n in names]
        return normalize_teacher_weights(weights, len(names))

    def _check_topk_compatible(self) -> None:
        full = [k for k in _FULL_LOGIT_LOSSES if self.loss_weights.get(k, 0) > 0]
        if full:
            raise ValueError(f"cache_teacher_outputs='topk' keeps only the teachers' top-k logits, but the losses "
                             f"{full} need the full logits; use cache_teacher_outputs='exact' (or True).")
        if self.logit_standardization:
            raise ValueError("cache_teacher_outputs='topk' cannot standardise the teachers' logits (it keeps only the "
                             "top-k); use cache_teacher_outputs='exact' with `logit_standardization=True`.")
        if self.teacher_mixing == "logits" and len(self._teachers) > 1:
            raise ValueError("cache_teacher_outputs='topk' cannot average several teachers' logits "
                             "(teacher_mixing='logits'); use teacher_mixing='probs' or cache_teacher_outputs='exact'.")

    def topk_soft_target(self, index: Tensor) -> Tensor:
        """The teachers' tempered log-probabilities ``(B, C)`` rebuilt from the top-k cache (their ``teacher_weights``
        mixture for several)."""
        assert self._topk_cache is not None
        cache = self._topk_cache
        values, indices, tail = cache.rows(index)
        log_q = topk_soft_target_log_probs(values, indices, tail, cache.num_classes, self.temperature)
        if log_q.dim() == 2:
            return log_q
        log_w = torch.log(torch.tensor(self.teacher_weights, device=log_q.device)).view(1, -1, 1)
        return torch.logsumexp(log_q + log_w, dim=1)  # (B, K, C) -> (B, C)

    def default_loss_weights(self) -> dict[str, float]:
        return {"hard_loss": 0.5, "kd_loss": 0.5} if self._teachers else {"hard_loss": 1.0}

    def _needs_teacher(self) -> bool:
        return bool(self._teachers) and any(self.loss_weights.get(k, 0) > 0 for k in TEACHER_LOSSES)

    # ----------------------------------------------------------------------------- teacher outputs
    def live_teacher_logits(self, x: Tensor) -> Tensor:
        """Every teacher's logits on ``x``: ``(B, C)`` for one teacher, ``(B, K, C)`` for several (in order)."""
        if len(self._teachers) == 1:
            return logits_of(self.teacher_forward(x, next(iter(self._teachers))))
        outs = {name: logits_of(self.teacher_forward(x, name)) for name in self._teachers}
        shapes = {name: tuple(out.shape) for name, out in outs.items()}
        if len(set(shapes.values())) > 1:
            raise ValueError(f"Expected every teacher to output the same number of classes, but got logits of shapes "
                             f"{shapes}.")
        first = next(iter(outs.values()))
        return torch.stack([out.to(first.dtype) for out in outs.values()], dim=1)

    def teacher_logits(self, x: Tensor, index: Tensor | None) -> Tensor:
        """Teacher logits for a batch (``(B, C)``, or ``(B, K, C)`` for several teachers): from the cache by sample
        index, or a live forward pass."""
        if self._teacher_cache is not None:
            if index is None:
                raise RuntimeError(
                    "cache_teacher_outputs=True needs batches that carry sample indices; wrap the training "
                    "loader with kd_toolkit.data.with_sample_indices (the orchestrator does this for you)."
                )
            # index_select: several times faster than advanced indexing on CPU
            return self._teacher_cache.index_select(0, index.to(self._teacher_cache.device)).to(x.device)
        return self.live_teacher_logits(x)

    def _soft_target(self, stack: Tensor, standardize: bool, memo: dict[bool, Tensor]) -> Tensor:
        """The teachers' log-probabilities ``(B, C)`` at ``T`` (their mixture for several), once per step."""
        if standardize not in memo:
            weights = self.teacher_weights if stack.shape[1] > 1 else None
            memo[standardize] = mixture_log_probs(stack, self.temperature, weights,
                                                  mode=self.teacher_mixing, standardize=standardize)
        return memo[standardize]

    # ----------------------------------------------------------------------------- training
    def loss_components(self, x: Tensor, y: Tensor | None, index: Tensor | None) -> dict[str, Tensor]:
        weights = self.loss_weights
        student_logits = self(x)  # (B, C)
        components: dict[str, Tensor] = {}
        if weights.get("hard_loss", 0) > 0:  # a component whose weight is 0 or absent is not computed
            components["hard_loss"] = self.criterion(student_logits, y)
        if self._needs_teacher() and self._topk_cache is not None:
            if index is None:
                raise RuntimeError("cache_teacher_outputs='topk' needs batches that carry sample indices; wrap the "
                                   "training loader with kd_toolkit.data.with_sample_indices.")
            target = self.topk_soft_target(index).to(student_logits.device)
            if target.shape[-1] != student_logits.shape[-1]:
                raise ValueError(f"Expected the teachers to output the student's {student_logits.shape[-1]} classes, "
                                 f"but they output {target.shape[-1]}.")
            components["kd_loss"] = kd_loss(student_logits, target, self.temperature, log_target=True)
        elif self._needs_teacher():
            teacher = self.teacher_logits(x, index)
            stack = teacher.unsqueeze(1) if teacher.dim() == 2 else teacher  # (B, K, C)
            if stack.shape[-1] != student_logits.shape[-1]:
                raise ValueError(f"Expected the teachers {list(self._teachers)} to output the student's "
                                 f"{student_logits.shape[-1]} classes (student and teachers must output the same "
                                 f"number of classes), but they output {stack.shape[-1]}.")
            components.update(self.teacher_loss_components(student_logits, stack, y))
        return components

    def teacher_loss_components(self, student_logits: Tensor, stack: Tensor, y: Tensor | None) -> dict[str, Tensor]:
        """The teacher-based components with a positive weight, from the teachers' logits ``stack`` ``(B, K, C)``."""
        w, temp, flag = self.loss_weights, self.temperature, self.logit_standardization
        memo: dict[bool, Tensor] = {}
        out: dict[str, Tensor] = {}
        if w.get("kd_loss", 0) > 0:
            out["kd_loss"] = kd_loss(student_logits, self._soft_target(stack, flag, memo), temp, log_target=True,
                                     standardize=flag)
        if w.get("ls_kd_loss", 0) > 0:
            out["ls_kd_loss"] = ls_kd_loss(student_logits, self._soft_target(stack, True, memo), temp, log_target=True)
        if w.get("dkd_loss", 0) > 0:
            if y is None:
                raise ValueError("`dkd_loss` needs class labels: the training batches carry none.")
            out["dkd_loss"] = dkd_warmup_factor(self.current_epoch, self.dkd_warmup_epochs) * dkd_loss(
                student_logits, self._soft_target(stack, flag, memo), y, temp, self.dkd_alpha, self.dkd_beta,
                log_target=True, standardize=flag)
        if w.get("dist_loss", 0) > 0:
            out["dist_loss"] = dist_loss(student_logits, self._soft_target(stack, flag, memo), temp, self.dist_beta,
                                         self.dist_gamma, tau_squared=self.dist_tau_squared, log_target=True,
                                         standardize=flag)
        if w.get("cos_embed_loss", 0) > 0:
            out["cos_embed_loss"] = cosine_logit_loss(student_logits, stack if stack.shape[1] > 1 else stack[:, 0],
                                                      self.teacher_weights)
        return out

    # ----------------------------------------------------------------------------- teacher agreement
    def on_fit_start(self) -> None:
        super().on_fit_start()
        self._teacher_acc_done = False  # once per run

    def _teacher_metric_key(self, name: str) -> str:
        return "val_teacher_acc" if list(self._teachers) == [SINGLE_TEACHER] else f"val_teacher_{name}_acc"

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        super().validation_step(batch, batch_idx, dataloader_idx)
        trainer = attached_trainer(self)
        if (self._teacher_acc_done or not self._teachers or dataloader_idx != 0 or self.inference_pipeline is not None
                or (trainer is not None and trainer.sanity_checking)):
            return
        x, y, _ = split_batch(batch)
        if y is None:
            return
        logits = self.live_teacher_logits(x)
        stack = logits.unsqueeze(1) if logits.dim() == 2 else logits  # (B, K, C)
        preds = {name: stack[:, k] for k, name in enumerate(self._teachers)}
        if stack.shape[1] > 1:
            preds[_ENSEMBLE] = mixture_log_probs(stack, 1.0, self.teacher_weights, mode=self.teacher_mixing)
        for name, pred in preds.items():
            if name not in self._teacher_acc:
                self._teacher_acc[name] = torchmetrics.classification.MulticlassAccuracy(
                    num_classes=pred.shape[-1], average="micro").to(pred.device)
            self._teacher_acc[name].update(pred.detach(), y.to(pred.device))

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        if self._teacher_acc and not self._teacher_acc_done:
            for name, metric in self._teacher_acc.items():
                key = "val_teacher_ensemble_acc" if name == _ENSEMBLE else self._teacher_metric_key(name)
                # torchmetrics has synced it already: `sync_dist` averages equal values (and spares the DDP warning)
                self.log(key, metric.compute(), add_dataloader_idx=False, sync_dist=True)
                metric.reset()
            self._teacher_acc_done = True

    # ----------------------------------------------------------------------------- caching
    def on_train_start(self) -> None:
        if self.cache_mode is None or self._topk_cache is not None or self._teacher_cache is not None:
            return
        if self.cache_dir is not None:
            self._load_persistent_cache(self.trainer.train_dataloader)
        elif self.cache_mode == "topk":
            self._topk_cache = self.build_topk_teacher_cache(self.trainer.train_dataloader)
        else:
            self._teacher_cache = self.build_teacher_cache(self.trainer.train_dataloader)

    def on_fit_end(self) -> None:
        self._teacher_cache = self._topk_cache = None  # free memory; rebuilt by the next fit

    def build_teacher_cache(self, train_loader: Any) -> Tensor:
        """Compute every teacher's logits for every training sample, in dataset order: ``(N, C)``, or ``(N, K, C)``
        for several teachers (see :func:`kd_toolkit.distillation.cache.build_teacher_cache`)."""
        trainer = attached_trainer(self)
        return build_teacher_cache(self.live_teacher_logits, train_loader, device=self.device,
                                   to_device=trainer.strategy.batch_to_device if trainer is not None else lambda b: b)

    def build_topk_teacher_cache(self, train_loader: Any) -> TopKCache:
        """The top-``cache_k`` cache at ``temperature`` (see
        :func:`kd_toolkit.distillation.cache.build_topk_teacher_cache`)."""
        trainer = attached_trainer(self)
        return build_topk_teacher_cache(self.live_teacher_logits, train_loader, k=self.cache_k,
                                        temperature=self.temperature, device=self.device,
                                        to_device=trainer.strategy.batch_to_device if trainer is not None else lambda b: b)


    def _load_persistent_cache(self, loader: Any) -> None:
        from pytorch_lightning.utilities import rank_zero_info

        assert self.cache_dir is not None and self.cache_mode is not None
        trainer = self.trainer
        key = cache_key(self.teachers, loader.dataset, self.cache_mode, self.cache_k, self.temperature)

        def build() -> tuple[dict[str, Tensor], dict[str, Any]]:
            if self.cache_mode == "topk":
                c = self.build_topk_teacher_cache(loader)
                return {"values": c.values, "indices": c.indices, "tail": c.tail}, {"num_classes": c.num_classes}
            return {"logits": self.build_teacher_cache(loader)}, {}

        parts, meta = load_or_build(self.cache_dir, key, build, writer=trainer.local_rank == 0,
                                    barrier=trainer.strategy.barrier, log=rank_zero_info)
        if self.cache_mode == "topk":
            self._topk_cache = TopKCache(parts["values"], parts["indices"], parts["tail"], int(meta["num_classes"]),
                                         self.temperature)
        else:
            self._teacher_cache = parts["logits"]


def _check_cache_mode(value: Any) -> CacheMode | None:
    if value is True or value == "exact":
        return "exact"
    if value is False:
        return None
    if value == "topk":
        return "topk"
    raise expected("cache_teacher_outputs", "a bool, 'exact' or 'topk'", value)

