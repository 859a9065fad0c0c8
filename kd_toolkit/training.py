"""`KnowledgeDistillationTraining`: builds the module, data and Lightning Trainer, then delegates."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback, LearningRateMonitor, ModelCheckpoint, ProgressBar
from torch import nn
from torch.utils.data import DataLoader

from kd_toolkit import _trainer_args as targs
from kd_toolkit._checks import check_choice, check_int, check_mapping
from kd_toolkit._io import load_weights
from kd_toolkit._module_args import check_exclusive, distillation_kwargs
from kd_toolkit.core.checkpoint import (
    InterruptCheckpoint,
    LastCheckpoint,
    MonitorCheck,
    SafeCheckpointIO,
    SafeModelCheckpoint,
)
from kd_toolkit.core.loaders import ResumableDataLoader, rebuild_loader
from kd_toolkit.core.losslog import EpochLosses
from kd_toolkit.core.module import KDBaseModule
from kd_toolkit.core.progress import progress_bar
from kd_toolkit.distillation.cache import cached_training_loader
from kd_toolkit.distillation.module import DistillationModule

__all__ = ["KnowledgeDistillationTraining"]


@contextmanager
def quiet_lightning(enabled: bool = True) -> Iterator[None]:
    """Silence Lightning's per-run info lines (GPU available..., model summary) for repeated short runs."""
    loggers = [logging.getLogger(n) for n in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric")]
    levels = [lg.level for lg in loggers]
    if enabled:
        for lg in loggers:
            lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


class KnowledgeDistillationTraining:
    """Configure a Lightning ``Trainer`` for distillation and run it (seed 002's orchestrator, on Lightning 2).

    Every seed-002 constructor argument keeps its meaning; modern arguments (``module=``,
    ``datamodule=``, ``devices``, ``strategy``, ``callbacks``, ``loggers``, extra Trainer kwargs) are
    accepted too. Each run writes, under ``default_root_dir/experiment_name/version_N/``: ``metrics.csv``
    and ``hparams.yaml`` (always), ``checkpoints/best-*.ckpt`` (best on the validation metric) and
    ``checkpoints/last.ckpt``, TensorBoard event files (``tensorboard=True``) and a Comet archive
    (``log_to_comet=True`` without network).

    Args:
        num_gpu_used: 0 = CPU (the seed's default), 1 = one GPU, >1 = DDP over that many GPUs; ``None`` = a GPU
            if available.
        max_epoch: number of epochs.
        optimize_method: preset name, optimizer class, or optimizer instance (see :mod:`kd_toolkit.optim`).
        scheduler_method: ``""``, ``"linear_decay_with_warm_up"``, ``"cosine_anneal"`` or ``"step"``.
        learning_rate: learning rate (the seed's default ``1e-4``).
        num_lr_warm_up_epoch: warm-up epochs (``warmup_steps=`` in ``module_kwargs`` for steps).
        final_loss_coeff_dict: loss weights, e.g. ``{"kd_loss": 0.5, "hard_loss": 0.5}``; a component whose
            weight is 0 or absent is not computed (so label-free batches work with ``{"kd_loss": 1}``).
            Default: the seed's ``{"kd_loss": 1}`` with a teacher, ``{"hard_loss": 1}`` without.
        log_to_comet: log to comet.ml (offline archive when the server can't be reached).
        comet_info_path: text file with API key, project and workspace on three lines.
        comet_exp_name: Comet experiment name.
        temperature: distillation temperature.
        seed: global seed (``seed_everything``); ``None`` leaves the RNGs alone.
        track_grad_norm: log gradient norms of this order (-1 or None: off).
        accumulate_grad_batches: gradient accumulation steps.
        accelerator: ``"cpu"``, ``"gpu"``, ``"auto"`` ... or a seed-002 strategy name such as ``"ddp"``.
        num_nodes: number of nodes.
        precision: 16 (the seed's default: 16-bit mixed on a GPU; on a machine without one, 32 with one
            warning), 32, 64, ``"bf16-mixed"``, ...; ``None`` = 16-mixed on GPU, 32 on CPU, silently.
        deterministic: use deterministic algorithms (``True`` warns instead of failing on ops without one).
        resume_from_checkpoint: path of a checkpoint to resume exactly (model, optimizer, scheduler, epoch,
            RNG state; a mid-epoch ``interrupted.ckpt`` too), ``"last"`` for the newest ``last.ckpt`` of this
            experiment, or ``None``/``""``.
        train_data_loader: training ``DataLoader``; batches ``(x, y)`` or label-free ``(x,)``.
        val_data_loaders: ``{name: DataLoader}`` (seed 002) or one DataLoader; ``val_acc`` is the first one's.
        inference_pipeline: object with ``run_inference_pipeline(model, loader) -> {"inference_result": x}``.
        student_model: the ``nn.Module`` to train.
        teacher_model: frozen teacher ``nn.Module``, several as a list or a dict ``{name: nn.Module}`` (their
            mixture is distilled), or ``None`` to train on labels alone.
        teacher_weights: with several teachers, one weight ``>= 0`` per teacher (a list in their order, or a dict by
            name) with a positive sum, normalised to sum to 1; ``None`` = equal weights.
        teacher_mixing: ``"probs"`` (``None``: the weighted mixture of the tempered distributions, in log space) or
            ``"logits"`` (soften the weighted average of the logits).
        logging_param: dict logged as hyperparameters to every logger.
        module: a ready LightningModule (instead of teacher/student and the loss arguments).
        datamodule: a LightningDataModule (instead of the loaders).
        test_data_loaders: ``{name: DataLoader}`` used by :meth:`test` (and by :meth:`start_kd_training`).
        criterion: hard-label loss (default cross-entropy).
        cache_teacher_outputs: compute the teacher's logits once and reuse them every epoch: ``True``/``"exact"``
            (full logits) or ``"topk"`` (top-k logits and one tail bucket; ``k`` via ``module_kwargs={"cache_k": k}``;
            see :class:`~kd_toolkit.distillation.DistillationModule`).
        default_root_dir: root of the run directories.
        experiment_name: run name (directory under ``default_root_dir``); default ``comet_exp_name`` or "kd".
        tensorboard: also write TensorBoard event files.
        loggers: extra Lightning loggers.
        callbacks: extra Lightning callbacks.
        monitor: metric for the best checkpoint; default ``val_acc`` (``train_loss`` without validation data,
            the first loader's name with an inference pipeline).
        monitor_mode: ``"max"`` or ``"min"`` (default: ``"min"`` for losses, else ``"max"``).
        checkpointing: write checkpoints (on by default; the seed-001 wrapper turns it off).
        csv_logging: write ``metrics.csv`` (on by default).
        module_kwargs: extra keyword arguments for :class:`DistillationModule`.
        **trainer_kwargs: passed to ``pytorch_lightning.Trainer`` (e.g. ``limit_train_batches``).

    Example:
        >>> from kd_toolkit.data import DigitsDataModule
        >>> from kd_toolkit.models import create_model
        >>> dm = DigitsDataModule(); dm.setup("fit")
        >>> kd = KnowledgeDistillationTraining(
        ...     teacher_model=create_model("digits_teacher"), student_model=create_model("digits_student"),
        ...     train_data_loader=dm.train_dataloader(), val_data_loaders={"digits": dm.val_dataloader()},
        ...     num_gpu_used=0, max_epoch=1, learning_rate=1e-3, temperature=4.0,
        ...     final_loss_coeff_dict={"kd_loss": 0.7, "hard_loss": 0.3}, default_root_dir=getfixture("tmp_path"),
        ...     enable_progress_bar=False, quiet=True, limit_train_batches=2)
        >>> student = kd.start_kd_training()
        >>> sorted(p.name for p in kd.checkpoint_dir.iterdir())[-1]
        'last.ckpt'
    """

    def __init__(
        self,
        # seed 002's arguments, in its order and with its defaults (positional calls keep working)
        num_gpu_used: int | None = 0,
        max_epoch: int = 10,
        optimize_method: Any = "adam",
        scheduler_method: str = "",
        learning_rate: float = 1e-4,
        num_lr_warm_up_epoch: int = 0,
        final_loss_coeff_dict: Mapping[str, float] | None = None,
        log_to_comet: bool = False,
        comet_info_path: str = "",
        comet_exp_name: str = "",
        temperature: float = 1.0,
        seed: int | None = 32,
        track_grad_norm: float | None = 2,
        accumulate_grad_batches: int = 1,
        accelerator: str | None = None,
        num_nodes: int = 1,
        precision: Any = 16,
        deterministic: bool = True,
        resume_from_checkpoint: str | None = None,
        train_data_loader: DataLoader | None = None,
        val_data_loaders: Mapping[str, DataLoader] | DataLoader | None = None,
        inference_pipeline: Any = None,
        student_model: nn.Module | None = None,
        teacher_model: nn.Module | list[nn.Module] | dict[str, nn.Module] | None = None,
        logging_param: Mapping[str, Any] | None = None,
        *,
        teacher_weights: list[float] | dict[str, float] | None = None,
        teacher_mixing: Literal["probs", "logits"] | None = None,
        module: pl.LightningModule | None = None,
        datamodule: pl.LightningDataModule | None = None,
        test_data_loaders: Mapping[str, DataLoader] | DataLoader | None = None,
        criterion: nn.Module | None = None,
        cache_teacher_outputs: bool | Literal["exact", "topk"] = False,
        default_root_dir: str | Path = "runs",
        experiment_name: str | None = None,
        tensorboard: bool = False,
        loggers: Sequence[Any] | None = None,
        callbacks: Sequence[Callback] | None = None,
        devices: Any = None,
        strategy: Any = None,
        monitor: str | None = None,
        monitor_mode: str | None = None,
        checkpointing: bool = True,
        csv_logging: bool = True,
        quiet: bool = False,
        module_kwargs: Mapping[str, Any] | None = None,
        **trainer_kwargs: Any,
    ) -> None:
        check_int("max_epoch", max_epoch, minimum=1)
        check_int("accumulate_grad_batches", accumulate_grad_batches, minimum=1)
        if monitor_mode is not None:
            check_choice("monitor_mode", monitor_mode, ("min", "max"))
        check_exclusive(module, student_model, teacher_model, datamodule, train_data_loader)
        module_kwargs = distillation_kwargs(module_kwargs, module=module, teacher_weights=teacher_weights,
                                            teacher_mixing=teacher_mixing)
        seed = targs.check_seed(seed)
        targs.check_trainer_kwargs(trainer_kwargs)
        logging_param = check_mapping("logging_param", logging_param)
        self.quiet, self.seed = quiet, seed
        if seed is not None:
            pl.seed_everything(seed, workers=True, verbose=not quiet)
        self._prepare_data(train_data_loader, val_data_loaders, test_data_loaders, datamodule, cache_teacher_outputs)
        if module is None:
            module = DistillationModule(
                student_model,  # type: ignore[arg-type]  # not None: checked by `check_exclusive`
                teacher_model, temperature=temperature,
                loss_weights=final_loss_coeff_dict or ({"kd_loss": 1.0} if teacher_model is not None else None),
                criterion=criterion, optimizer=optimize_method, lr=learning_rate,
                scheduler=scheduler_method,  # type: ignore[arg-type]  # validated by the module
                warmup_epochs=num_lr_warm_up_epoch, track_grad_norm=track_grad_norm,
                inference_pipeline=inference_pipeline, cache_teacher_outputs=cache_teacher_outputs,
                **module_kwargs,
            )
        if not isinstance(module, pl.LightningModule):
            raise ValueError(f"Expected `module` to be a LightningModule, but got {type(module).__name__}.")
        self.module = module
        hardware = targs.resolve_hardware(num_gpu_used, accelerator, devices, strategy, num_nodes)
        targs.check_devices_available(hardware)
        self.precision = targs.resolve_precision(precision, hardware["accelerator"])
        self.root_dir = targs.check_root_dir(default_root_dir)
        self.experiment_name = experiment_name or comet_exp_name or "kd"
        if resume_from_checkpoint == "last":
            resume_from_checkpoint = targs.find_last_checkpoint(self.root_dir, self.experiment_name)
        self.ckpt_path, checkpoint = targs.load_resume_checkpoint(resume_from_checkpoint)
        targs.check_resume_fits(self.ckpt_path, checkpoint, module)
        loader_state = targs.train_loader_state(checkpoint)
        if loader_state is not None and isinstance(self.train_loader, ResumableDataLoader):
            # given now: Lightning builds the epoch's iterator (for `estimated_stepping_batches`) before it
            # restores the loops, so it would never hand this state over in time
            self.train_loader.load_state_dict(loader_state)
        from kd_toolkit.tracking import build_loggers  # a bad Comet info file fails here

        self.loggers = build_loggers(
            self.root_dir, self.experiment_name, csv=csv_logging, tensorboard=tensorboard,
            comet_info_path=comet_info_path if log_to_comet else None, comet_exp_name=comet_exp_name or None,
            extra=list(loggers or []),  # a resumed run continues in its own folder (one metrics.csv)
            version=targs.resume_version(self.ckpt_path, self.root_dir, self.experiment_name),
        )
        run_params = {"max_epoch": max_epoch, "seed": seed, "precision": self.precision,
                      "accumulate_grad_batches": accumulate_grad_batches, "num_nodes": num_nodes,
                      "devices": str(hardware["devices"]), "strategy": str(hardware["strategy"]),
                      "batch_size": getattr(self.train_loader, "batch_size", None), "deterministic": deterministic,
                      "resume_from_checkpoint": self.ckpt_path or ""}
        self._run_params: dict[str, Any] | None = {"run": run_params, **logging_param}  # logged when `fit` starts,
        # so a constructor that fails below leaves no empty version_N/ folder behind
        all_callbacks = self._callbacks(callbacks, checkpointing, monitor, monitor_mode, scheduler_method,
                                        trainer_kwargs.get("enable_progress_bar", True) is not False)
        trainer_kwargs["plugins"] = [*_as_list(trainer_kwargs.get("plugins")), SafeCheckpointIO(write_behind=True)]
        trainer_kwargs.setdefault("log_every_n_steps", _logging_interval(self.train_loader))
        trainer_kwargs.setdefault("enable_model_summary", not quiet)
        with quiet_lightning(quiet):
            self.trainer = pl.Trainer(
                max_epochs=max_epoch, accumulate_grad_batches=accumulate_grad_batches,
                precision=self.precision,  # type: ignore[arg-type]  # a Lightning name, from resolve_precision
                deterministic="warn" if deterministic is True else deterministic, callbacks=all_callbacks,
                logger=self.loggers or False, default_root_dir=str(self.root_dir),
                enable_checkpointing=checkpointing, **hardware, **trainer_kwargs,
            )

    def _prepare_data(self, train_loader: DataLoader | None, val_loaders: Any, test_loaders: Any,
                      datamodule: pl.LightningDataModule | None, cache: bool | str) -> None:
        """Loaders or a datamodule; with teacher caching, the training loader carries sample indices."""
        self.datamodule = datamodule
        self.val_loaders = targs.normalise_eval_loaders(val_loaders, "val_data_loaders")
        self.test_loaders = targs.normalise_eval_loaders(test_loaders, "test_data_loaders")
        if train_loader is not None:
            targs.check_loader(train_loader, "train_data_loader")
        self._fit_datamodule = datamodule  # None: fit from the loaders below
        if cache and datamodule is not None:  # fit from its loaders (indices added); test still uses it
            datamodule.setup("fit")
            train_loader = datamodule.train_dataloader()
            val_loader = datamodule.val_dataloader() if _overrides(datamodule, "val_dataloader") else None
            if self.val_loaders is None and isinstance(val_loader, DataLoader):
                self.val_loaders = {"val": val_loader}
            self._fit_datamodule = None
        if cache and train_loader is not None:
            train_loader = cached_training_loader(train_loader)
        if train_loader is not None and type(train_loader) is DataLoader:  # resumes mid-epoch exactly (Ctrl-C)
            train_loader = rebuild_loader(train_loader, cls=ResumableDataLoader)
        self.train_loader = train_loader

    def _callbacks(self, extra: Sequence[Callback] | None, checkpointing: bool, monitor: str | None,
                   monitor_mode: str | None, scheduler_method: str, enable_progress_bar: bool) -> list[Callback]:
        """The best/last checkpoint callback (monitoring ``val_acc`` by default), the LR monitor, the user's."""
        datamodule = self.datamodule
        has_val = self.val_loaders is not None or (datamodule is not None and _overrides(datamodule, "val_dataloader"))
        pipeline = getattr(self.module, "inference_pipeline", None)
        if monitor is None:
            monitor = (next(iter(self.val_loaders)) if pipeline is not None and self.val_loaders else
                       "val_acc" if has_val else "train_loss")
        monitor_mode = monitor_mode or ("min" if "loss" in monitor else "max")
        self.checkpoint_callback: ModelCheckpoint | None = None
        self.last_callback: ModelCheckpoint | None = None
        callbacks = list(extra or [])
        if checkpointing:
            dirpath = Path(self.loggers[0].log_dir or self.root_dir) / "checkpoints" if self.loggers else self.root_dir / "checkpoints"
            self.checkpoint_callback = SafeModelCheckpoint(
                dirpath=dirpath, monitor=monitor, mode=monitor_mode, save_top_k=1,
                filename="best-{epoch:03d}-{" + monitor + ":.4f}", auto_insert_metric_name=False,
            )
            self.last_callback = LastCheckpoint(dirpath)
            # Ctrl-C or an exception writes a resumable `interrupted.ckpt` beside the others (said in the log)
            callbacks += [self.checkpoint_callback, self.last_callback, MonitorCheck(monitor),
                          InterruptCheckpoint(dirpath=dirpath, filename="interrupted")]
        if self.loggers and _has_scheduler(scheduler_method, self.module):
            callbacks.append(LearningRateMonitor(logging_interval="step"))
        if enable_progress_bar and not any(isinstance(c, ProgressBar) for c in callbacks):
            callbacks.append(progress_bar())
        return callbacks

    # --------------------------------------------------------------------------------- running
    def fit(self) -> KnowledgeDistillationTraining:
        """Train (resuming from ``resume_from_checkpoint`` when given)."""
        if self._run_params is not None:
            from kd_toolkit.tracking import log_hyperparams

            log_hyperparams(self.loggers, self._run_params)
            self._run_params = None
        with quiet_lightning(self.quiet), warnings.catch_warnings():
            # Lightning 2.6's CombinedLoader calls torch's deprecated `LeafSpec()`: Lightning's, not the user's
            warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=FutureWarning)
            if self._fit_datamodule is None and self.val_loaders is None:  # no validation asked for: no news
                warnings.filterwarnings("ignore", message=r".*defined a `validation_step` but have no `val_dataloader`")
            if self._fit_datamodule is not None:
                self.trainer.fit(self.module, datamodule=self._fit_datamodule, ckpt_path=self.ckpt_path,
                                 weights_only=True)
            else:
                self.trainer.fit(self.module, train_dataloaders=self.train_loader,
                                 val_dataloaders=self.val_loaders, ckpt_path=self.ckpt_path, weights_only=True)
        self._sync_paths_after_spawn()
        return self

    def _sync_paths_after_spawn(self) -> None:
        # Under `ddp_spawn` the workers train; Lightning sends back the weights and the best path, not the
        # last one: find it where the workers wrote it.
        callback = self.last_callback
        if callback is not None and not callback.best_model_path and callback.dirpath:
            last = Path(callback.dirpath) / "last.ckpt"
            if last.is_file():
                callback.best_model_path = str(last)
        losses = getattr(self.module, "epoch_losses", None)  # the workers' epoch means, from rank 0's metrics
        metrics = self.trainer.callback_metrics
        if isinstance(losses, EpochLosses) and losses.samples == 0 and "train_loss" in metrics:
            names = [k for k in getattr(self.module, "loss_names", ()) if k in metrics]
            losses.add(metrics["train_loss"].detach().cpu(), {k: metrics[k].detach().cpu() for k in names}, 1)

    def test(self, ckpt: str | None = "best") -> list[Mapping[str, float]]:
        """Evaluate on the test loaders (or the datamodule's) with the ``"best"`` or ``"last"`` weights,
        or the in-memory weights (``ckpt=None``)."""
        if ckpt not in ("best", "last", None):
            raise ValueError(f"Expected `ckpt` to be 'best', 'last' or None, but got {ckpt!r}.")
        path = {"best": self.best_checkpoint, "last": self.last_checkpoint, None: None}[ckpt]
        ckpt = path  # None when nothing was saved yet: evaluate the weights in memory
        with quiet_lightning(self.quiet):
            if self.test_loaders is not None:
                return self.trainer.test(self.module, dataloaders=self.test_loaders, ckpt_path=ckpt,
                                         verbose=not self.quiet, weights_only=True)
            if self.datamodule is not None:
                return self.trainer.test(self.module, datamodule=self.datamodule, ckpt_path=ckpt,
                                         verbose=not self.quiet, weights_only=True)
        raise ValueError("Nothing to test on: pass `test_data_loaders=` or a `datamodule=` with a test split.")

    def start_kd_training(self) -> nn.Module:
        """Seed 002's entry point: train, then test when test data was given; returns the student."""
        self.fit()
        if self.test_loaders is not None:
            self.test()
        return self.get_student_model()

    def get_student_model(self, best: bool = False) -> nn.Module:
        """The trained student; with ``best=True`` its weights are loaded from the best checkpoint."""
        student = getattr(self.module, "student", self.module)
        if best:
            path = self.best_checkpoint
            if path is None:
                raise ValueError("No best checkpoint was written (checkpointing off, or training has not run).")
            load_weights(student, path)  # the checkpoint's `student.*` weights, loaded safely
        return student

    # --------------------------------------------------------------------------------- paths
    @property
    def run_dir(self) -> Path:
        """This run's directory (``default_root_dir/experiment_name/version_N``)."""
        return Path(self.trainer.log_dir or self.root_dir)

    @property
    def checkpoint_dir(self) -> Path:
        return Path(self.checkpoint_callback.dirpath) if self.checkpoint_callback and self.checkpoint_callback.dirpath else self.run_dir / "checkpoints"

    @property
    def best_checkpoint(self) -> str | None:
        return (self.checkpoint_callback.best_model_path or None) if self.checkpoint_callback else None

    @property
    def last_checkpoint(self) -> str | None:
        return (self.last_callback.best_model_path or None) if self.last_callback else None


def _logging_interval(loader: Any) -> int:
    """Lightning's 50 steps, or fewer when an epoch is shorter (Lightning warns that it would log nothing)."""
    try:
        return max(1, min(50, len(loader)))
    except TypeError:  # no loader (a datamodule) or no length
        return 50


def _as_list(value: Any) -> list[Any]:
    return [] if value is None else list(value) if isinstance(value, (list, tuple)) else [value]


def _overrides(datamodule: pl.LightningDataModule, name: str) -> bool:
    return getattr(type(datamodule), name) is not getattr(pl.LightningDataModule, name)


def _has_scheduler(scheduler_method: str, module: pl.LightningModule) -> bool:
    if isinstance(module, KDBaseModule):
        return module.optim_settings.has_schedule
    return bool(scheduler_method)
