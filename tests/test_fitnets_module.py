"""FitNetsModule and FitNetsStageCallback end to end with real Lightning Trainers on 8x8 digits."""

from __future__ import annotations

import copy
import pickle
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, ModelCheckpoint

from kd_toolkit.fitnets.models import ThinDeepCNN, WideCNN
from kd_toolkit.fitnets.module import FitNetsModule, FitNetsStageCallback

HINTS = {"features.4": "features.2"}  # the paper's middle pair (both nets pooled twice before it)
UPSTREAM = ("features.0.", "features.1.", "features.2.", "features.3.", "features.4.")
DOWNSTREAM = ("features.5.", "features.6.", "classifier.")
MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist-test"


def _models(seed: int = 0) -> tuple[ThinDeepCNN, WideCNN]:
    torch.manual_seed(seed)
    return ThinDeepCNN(width=4), WideCNN(width=8)


def _module(stage: str = "joint", seed: int = 0, **kw) -> FitNetsModule:
    student, teacher = _models(seed)
    kw.setdefault("optimizer", "sgd")
    kw.setdefault("lr", 0.05)
    kw.setdefault("optimizer_kwargs", {"momentum": 0.9, "weight_decay": 5e-4})
    return FitNetsModule(student, teacher, dict(HINTS), input_shape=[1, 8, 8], stage=stage, alpha=0.5, beta=1.0, **kw)


def _trainer(**kw) -> pl.Trainer:
    kw.setdefault("max_epochs", 1)
    kw.setdefault("logger", False)
    kw.setdefault("enable_checkpointing", False)
    return pl.Trainer(accelerator="cpu", enable_progress_bar=False, enable_model_summary=False,
                      limit_train_batches=3, limit_val_batches=1, deterministic=True, **kw)


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _changed(before, after, prefixes) -> dict[str, bool]:
    return {k: not torch.equal(before[k], after[k]) for k in before if k.startswith(prefixes) and before[k].is_floating_point()}


class _Recorder(Callback):
    """Phase, optimizer contents and student weights seen at the first batch / end of every epoch."""

    def __init__(self) -> None:
        self.phases: dict[int, str] = {}
        self.opt_params: dict[int, set[int]] = {}
        self.weights: dict[int, dict[str, torch.Tensor]] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == 0:
            self.phases[trainer.current_epoch] = pl_module.phase
            self.opt_params[trainer.current_epoch] = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}

    def on_train_epoch_end(self, trainer, pl_module):
        self.weights[trainer.current_epoch] = _snapshot(pl_module)


@pytest.fixture(scope="module")
def digits_dm():
    from kd_toolkit.data import DigitsDataModule

    dm = DigitsDataModule(batch_size=64)
    dm.setup()
    return dm


def test_joint_run_logs_hints_trains_regressor_keeps_teacher_frozen(digits_dm):
    module = _module("joint")
    teacher = module.teacher
    teacher_before, before = copy.deepcopy(teacher.state_dict()), _snapshot(module)
    trainer = _trainer(max_epochs=2)
    trainer.fit(module, digits_dm.train_dataloader(), digits_dm.val_dataloader())
    logged = trainer.logged_metrics
    for key in ("hard_loss_epoch", "kd_loss_epoch", "hint_loss_epoch", "hint_loss/features.4_epoch", "val_acc"):
        assert key in logged, key
    total = logged["hard_loss_epoch"] + 0.5 * logged["kd_loss_epoch"] + 1.0 * logged["hint_loss_epoch"]
    assert torch.isclose(total, logged["train_loss_epoch"], rtol=1e-5)
    # regressors: in the state dict, in the optimizer, trained
    assert "regressors.features-4.proj.weight" in module.state_dict()
    opt = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
    assert {id(p) for p in module.regressors.parameters()} <= opt
    assert {id(p) for p in module.student.parameters()} <= opt
    assert any(_changed(before, _snapshot(module), ("regressors.",)).values())
    # teacher: unchanged, eval, no grads, outside optimizer and state dict, no hooks left behind
    assert all(torch.equal(teacher_before[k], v) for k, v in teacher.state_dict().items())
    assert not any(m.training for m in teacher.modules()) and all(p.grad is None for p in teacher.parameters())
    assert not opt & {id(p) for p in teacher.parameters()}
    assert not any(k.startswith(("teacher", "_teacher")) for k in module.state_dict())
    assert not any(m._forward_hooks for m in list(teacher.modules()) + list(module.student.modules()))
    assert module.epoch_component_means().keys() == {"hard_loss", "kd_loss", "hint_loss", "hint_loss/features.4"}


def test_two_stage_freezes_later_layers_then_trains_whole_student(digits_dm):
    module = _module("two_stage", hint_epochs=2)
    assert {n for n in module._upstream} == {n for n, _ in module.student.named_parameters() if n.startswith(UPSTREAM)}
    start, recorder = _snapshot(module), _Recorder()
    trainer = _trainer(max_epochs=3, callbacks=[recorder])
    trainer.fit(module, digits_dm.train_dataloader(), digits_dm.val_dataloader())
    assert recorder.phases == {0: "hint", 1: "hint", 2: "kd"}
    student_ids = {id(p) for p in module.student.parameters()}
    upstream_ids = {id(p) for n, p in module.student.named_parameters() if n.startswith(UPSTREAM)}
    regressor_ids = {id(p) for p in module.regressors.parameters()}
    assert recorder.opt_params[0] == recorder.opt_params[1] == upstream_ids | regressor_ids
    assert recorder.opt_params[2] == student_ids
    # stage 1: later layers (weights and batch-norm statistics) exactly unchanged, upstream and regressor trained
    after_stage1 = recorder.weights[1]
    late = _changed(start, after_stage1, tuple("student." + p for p in DOWNSTREAM))
    assert late and not any(late.values()), [k for k, v in late.items() if v]
    assert all(_changed(start, after_stage1, tuple("student." + p for p in UPSTREAM)).values())
    assert all(_changed(start, after_stage1, ("regressors.",)).values())
    # stage 2: every student tensor moves, the regressor is no longer trained
    assert all(_changed(after_stage1, recorder.weights[2], ("student.",)).values())
    assert not any(_changed(after_stage1, recorder.weights[2], ("regressors.",)).values())
    assert "hint_loss_epoch" in trainer.logged_metrics and "kd_loss_epoch" in trainer.logged_metrics
    assert trainer.callbacks and any(isinstance(c, FitNetsStageCallback) for c in trainer.callbacks)


def _checkpointed_run(tmp_path: Path, max_epochs: int, hint_epochs: int, dm, ckpt_path: str | None = None):
    module, recorder = _module("two_stage", hint_epochs=hint_epochs, scheduler="step",
                               scheduler_kwargs={"step_size_epochs": 1, "gamma": 0.5}), _Recorder()
    saver = ModelCheckpoint(dirpath=tmp_path, filename="{epoch}", save_top_k=-1, every_n_epochs=1)
    trainer = _trainer(max_epochs=max_epochs, callbacks=[recorder, saver], enable_checkpointing=True)
    trainer.fit(module, dm.train_dataloader(), dm.val_dataloader(), ckpt_path=ckpt_path)
    return module, recorder, trainer


def test_resume_in_stage_2_stays_in_stage_2_exactly(tmp_path, digits_dm):
    full, _, _ = _checkpointed_run(tmp_path / "a", 3, 1, digits_dm)
    ckpt = tmp_path / "a" / "epoch=1.ckpt"
    assert torch.load(ckpt, weights_only=True)["callbacks"]["FitNetsStageCallback"]["phase"] == "kd"
    resumed, recorder, trainer = _checkpointed_run(tmp_path / "b", 3, 1, digits_dm, ckpt_path=str(ckpt))
    assert recorder.phases == {2: "kd"}
    assert recorder.opt_params[2] == {id(p) for p in resumed.student.parameters()}
    assert trainer.lr_scheduler_configs[0].scheduler.last_epoch > 0  # schedule state restored, not restarted
    for key, value in full.state_dict().items():
        assert torch.allclose(value, resumed.state_dict()[key], atol=1e-6), key


def test_resume_from_stage_1_finishes_stage_1_first(tmp_path, digits_dm):
    full, _, _ = _checkpointed_run(tmp_path / "a", 3, 2, digits_dm)
    ckpt = tmp_path / "a" / "epoch=0.ckpt"
    assert torch.load(ckpt, weights_only=True)["callbacks"]["FitNetsStageCallback"]["phase"] == "hint"
    resumed, recorder, _ = _checkpointed_run(tmp_path / "b", 3, 2, digits_dm, ckpt_path=str(ckpt))
    assert recorder.phases == {1: "hint", 2: "kd"}
    for key, value in full.state_dict().items():
        assert torch.allclose(value, resumed.state_dict()[key], atol=1e-6), key


def test_interpolate_alignment_and_several_pairs():
    student, teacher = _models()
    module = FitNetsModule(student, teacher, {"features.1": "features.0", "features.6": "features.3"},
                           example_input=torch.randn(4, 1, 16, 16), align="interpolate", beta=1.0)
    assert module.regressors["features-6"].align == "interpolate"
    parts = module.loss_components(torch.randn(4, 1, 16, 16), torch.randint(0, 10, (4,)), None)
    assert {"hint_loss/features.1", "hint_loss/features.6", "hint_loss", "hard_loss", "kd_loss"} <= parts.keys()
    assert torch.isclose(parts["hint_loss"], parts["hint_loss/features.1"] + parts["hint_loss/features.6"])
    parts["hint_loss"].backward()
    assert module.regressors["features-1"].proj.weight.grad is not None
    assert student.features[0][0].weight.grad is not None
    clone = pickle.loads(pickle.dumps(module))  # DDP spawn pickles the module (teacher included)
    assert isinstance(clone.teacher, WideCNN) and clone.hint_layers == module.hint_layers


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"hint_layers": {"features.9": "features.2"}}, r"Bad `hint_layers`.*features\.9.*Did you mean"),
        ({"hint_layers": {"features.4": "featurs.2"}}, r"Bad `hint_layers`.*featurs\.2.*Did you mean 'features\.2'"),
        ({"hint_layers": {"features.4": "classifier"}}, r"Cannot pair student 'features\.4' with teacher 'classifier'"),
        ({"hint_layers": {}}, r"Expected `hint_layers` to be a non-empty dict"),
        ({"alpha": -0.1}, r"Expected `alpha` to be a non-negative float, but got -0\.1"),
        ({"beta": -1}, r"Expected `beta` to be a non-negative float, but got -1"),
        ({"stage": "two-stage"}, r"Expected `stage` to be one of \('joint', 'two_stage'\)"),
        ({"hint_epochs": 0}, r"Expected `hint_epochs` to be a positive int"),
        ({"input_shape": None}, r"Expected `example_input` .* or `input_shape`"),
        ({"input_shape": [1, 0, 8]}, r"Expected `input_shape` to be a per-sample shape"),
        ({"teacher": None}, r"Expected a `teacher` nn.Module for FitNets"),
        ({"optimizer": torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), lr=0.1)}, r"optimizer instance"),
    ],
)
def test_bad_input_fails_early(kwargs, match):
    student, teacher = _models()
    args = {"hint_layers": dict(HINTS), "input_shape": [1, 8, 8], "teacher": teacher, **kwargs}
    with pytest.raises(ValueError, match=match):
        FitNetsModule(student, args.pop("teacher"), args.pop("hint_layers"), **args)


def test_hint_epochs_not_less_than_epochs_fails_at_fit(digits_dm):
    module = _module("two_stage", hint_epochs=2)
    with pytest.raises(ValueError, match=r"Expected `hint_epochs` to be less than .* hint_epochs=2 with max_epochs=2"):
        _trainer(max_epochs=2).fit(module, digits_dm.train_dataloader())


@pytest.mark.skipif(not MNIST.is_dir(), reason=f"MNIST test files not found in {MNIST}")
def test_yaml_config_with_lightning_cli(monkeypatch, tmp_path):
    from pytorch_lightning.cli import LightningCLI

    root = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(root)  # the YAML names the data relative to the repository root
    cli = LightningCLI(pl.LightningModule, pl.LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
                       args=["--config", "configs/fitnets_mnist.yaml", "--trainer.fast_dev_run=true",
                             "--trainer.logger=false", "--trainer.enable_progress_bar=false",
                             f"--trainer.default_root_dir={tmp_path}"], run=False)
    assert isinstance(cli.model, FitNetsModule) and cli.model.stage == "two_stage"
    assert isinstance(cli.model.student, ThinDeepCNN) and isinstance(cli.model.teacher, WideCNN)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert "hint_loss_step" in cli.trainer.logged_metrics
