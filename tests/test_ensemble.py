"""Several teachers: freezing end to end, the mixture against numpy, caching, the orchestrator, LightningCLI YAML,
the new losses by name under bf16-mixed, and bad input."""

from __future__ import annotations

import copy
import csv

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from kd_toolkit import DistillationModule, KnowledgeDistillationTraining
from kd_toolkit.distillation import with_sample_indices
from kd_toolkit.losses import dkd_loss, dkd_warmup_factor
from tests.conftest import TinyMLP


def _trainer(**kw):
    kw.setdefault("max_epochs", 1)
    return pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, **kw)


def _teachers(k=3, classes=10):
    out = []
    for seed in range(k):
        torch.manual_seed(seed)
        out.append(TinyMLP(hidden=24 + 8 * seed, num_classes=classes).eval())
    return out


def _np_log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def test_every_teacher_frozen_end_to_end(loaders):
    teachers = _teachers(3)
    for t in teachers:
        t.train()  # frozen by the module whatever mode they come in
    before = [copy.deepcopy(t.state_dict()) for t in teachers]
    student = TinyMLP()
    before_s = copy.deepcopy(student.state_dict())
    module = DistillationModule(student, teachers, teacher_weights=[1, 2, 1],
                                loss_weights={"kd_loss": 0.5, "hard_loss": 0.2, "cos_embed_loss": 0.3})
    trainer = _trainer(max_epochs=2, limit_train_batches=3, limit_val_batches=2)
    trainer.fit(module, loaders("train", shuffle=True), loaders("val"))
    ids = set()
    for t, state in zip(teachers, before):
        assert all(torch.equal(state[k], v) for k, v in t.state_dict().items())
        assert all(not p.requires_grad and p.grad is None for p in t.parameters())
        assert not any(m.training for m in t.modules())
        ids |= {id(p) for p in t.parameters()}
    opt_params = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
    assert not opt_params & ids and opt_params == {id(p) for p in student.parameters()}
    assert all(k.startswith(("student.", "criterion.")) for k in module.state_dict())
    assert any(not torch.equal(before_s[k], v) for k, v in student.state_dict().items())
    assert list(module.teachers) == ["0", "1", "2"] and module.teacher_weights == [0.25, 0.5, 0.25]
    metrics = trainer.callback_metrics
    for key in ("val_teacher_0_acc", "val_teacher_1_acc", "val_teacher_2_acc", "val_teacher_ensemble_acc",
                "kd_loss_epoch", "cos_embed_loss_epoch"):
        assert key in metrics, key
    with pytest.raises(RuntimeError, match="3 teachers"):
        _ = module.teacher


def test_teacher_accuracy_is_logged_once_per_run(loaders, trained_teacher, tmp_path):
    from pytorch_lightning.loggers import CSVLogger

    module = DistillationModule(TinyMLP(), trained_teacher)
    trainer = pl.Trainer(max_epochs=3, limit_train_batches=2, limit_val_batches=2, logger=CSVLogger(tmp_path),
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, loaders("train"), loaders("val"))
    with open(next(tmp_path.rglob("metrics.csv"))) as fh:
        rows = list(csv.DictReader(fh))
    logged = [r["val_teacher_acc"] for r in rows if r.get("val_teacher_acc")]
    assert len(logged) == 1 and float(logged[0]) > 0.8  # the trained teacher, measured on the first epoch only


def test_mixture_matches_numpy(digits):
    teachers = _teachers(3)
    x, y = digits["train"][0][:32], digits["train"][1][:32]
    student = TinyMLP()
    named = dict(zip(("a", "b", "c"), teachers))
    w = {"a": 0.2, "b": 0.3, "c": 0.5}
    for mode in ("probs", "logits"):
        module = DistillationModule(student, named, teacher_weights=w, teacher_mixing=mode, temperature=2.0,
                                    loss_weights={"kd_loss": 1.0})
        got = module.loss_components(x, y, None)["kd_loss"].item()
        with torch.no_grad():
            t = [m(x).double().numpy() for m in teachers]
            s = _np_log_softmax(student(x).double().numpy() / 2.0)
        if mode == "probs":
            q = np.log(sum(wk * np.exp(_np_log_softmax(tk / 2.0)) for wk, tk in zip(w.values(), t)))
        else:
            q = _np_log_softmax(sum(wk * tk for wk, tk in zip(w.values(), t)) / 2.0)
        ref = (np.exp(q) * (q - s)).sum(-1).mean() * 4.0
        assert got == pytest.approx(ref, rel=1e-5), mode


def test_one_teacher_in_a_list_is_the_single_teacher(digits, trained_teacher):
    x, y = digits["train"][0][:32], digits["train"][1][:32]
    student = TinyMLP()
    single = DistillationModule(student, trained_teacher, loss_weights={"kd_loss": 1.0})
    listed = DistillationModule(student, [trained_teacher], loss_weights={"kd_loss": 1.0})
    assert single.teacher is trained_teacher and list(listed.teachers) == ["0"]
    torch.testing.assert_close(single.loss_components(x, y, None)["kd_loss"],
                               listed.loss_components(x, y, None)["kd_loss"])


def test_cache_keeps_each_teachers_logits(digits):
    teachers = _teachers(2)
    x, y = digits["train"]
    loader = with_sample_indices(DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True))
    module = DistillationModule(TinyMLP(), teachers, cache_teacher_outputs=True,
                                loss_weights={"kd_loss": 1.0, "ls_kd_loss": 1.0, "dist_loss": 1.0})
    module._teacher_cache = module.build_teacher_cache(loader)
    assert module._teacher_cache.shape == (len(y), 2, 10)
    (bx, by), idx = next(iter(loader))
    cached = module.loss_components(bx, by, idx)
    module._teacher_cache = None
    live = module.loss_components(bx, by, None)
    for key in cached:
        torch.testing.assert_close(cached[key], live[key], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("teachers", ["list", "dict"])
def test_orchestrator_with_several_teachers(tmp_path, loaders, teachers):
    models = _teachers(2)
    teacher_model = models if teachers == "list" else {"wide": models[0], "deep": models[1]}
    weights = [0.7, 0.3] if teachers == "list" else {"deep": 0.3, "wide": 0.7}
    kd = KnowledgeDistillationTraining(
        teacher_model=teacher_model, student_model=TinyMLP(), train_data_loader=loaders("train", shuffle=True),
        val_data_loaders={"val": loaders("val")}, num_gpu_used=0, max_epoch=1, temperature=4.0,
        final_loss_coeff_dict={"kd_loss": 0.5, "dkd_loss": 0.5, "hard_loss": 0.2}, cache_teacher_outputs=True,
        default_root_dir=tmp_path, quiet=True, enable_progress_bar=False, limit_train_batches=2, limit_val_batches=1,
        module_kwargs={"teacher_weights": weights, "dkd_warmup_epochs": 0})
    kd.start_kd_training()
    names = ["0", "1"] if teachers == "list" else ["wide", "deep"]
    assert list(kd.module.teachers) == names and kd.module.teacher_weights == pytest.approx([0.7, 0.3])
    assert all(f"val_teacher_{n}_acc" in kd.trainer.callback_metrics for n in names)
    assert "dkd_loss_epoch" in kd.trainer.callback_metrics
    state = torch.load(kd.last_checkpoint, weights_only=True)["state_dict"]
    assert all(k.startswith(("student.", "criterion.")) for k in state)


def test_lightning_cli_yaml_with_a_list_of_teachers(tmp_path):
    from pytorch_lightning.cli import LightningCLI

    teacher = {"class_path": "tests.conftest.TinyMLP", "init_args": {"hidden": 16}}
    config = {
        "model": {"class_path": "kd_toolkit.distillation.DistillationModule", "init_args": {
            "student": {"class_path": "tests.conftest.TinyMLP"}, "teacher": [teacher, teacher],
            "teacher_weights": [0.25, 0.75], "teacher_mixing": "logits",
            "loss_weights": {"kd_loss": 1.0, "dist_loss": 0.5, "hard_loss": 0.5}}},
        "data": {"class_path": "kd_toolkit.data.DigitsDataModule", "init_args": {"batch_size": 64}},
    }
    import yaml

    path = tmp_path / "ensemble.yaml"
    path.write_text(yaml.safe_dump(config))
    cli = LightningCLI(pl.LightningModule, pl.LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
                       args=["--config", str(path), "--trainer.fast_dev_run=true", "--trainer.logger=false",
                             "--trainer.enable_progress_bar=false", f"--trainer.default_root_dir={tmp_path}"],
                       run=False)
    assert isinstance(cli.model, DistillationModule) and len(cli.model.teachers) == 2
    assert cli.model.teacher_weights == [0.25, 0.75] and cli.model.teacher_mixing == "logits"
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert "dist_loss_step" in cli.trainer.logged_metrics
    config["model"]["init_args"]["teacher_mixing"] = "mean"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(SystemExit):  # a Literal: LightningCLI rejects the typo before building anything
        LightningCLI(pl.LightningModule, pl.LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
                     args=["--config", str(path)], run=False)


@pytest.mark.parametrize("loss", ["kd_loss", "ls_kd_loss", "dkd_loss", "dist_loss", "cos_embed_loss"])
def test_each_loss_by_name_trains_under_bf16_mixed(loaders, loss):
    student = TinyMLP()
    before = copy.deepcopy(student.state_dict())
    module = DistillationModule(student, _teachers(2), temperature=0.5, loss_weights={loss: 1.0, "hard_loss": 0.1},
                                dkd_warmup_epochs=0)
    trainer = _trainer(limit_train_batches=3, limit_val_batches=1, precision="bf16-mixed")
    trainer.fit(module, loaders("train"), loaders("val"))
    assert torch.isfinite(trainer.callback_metrics[f"{loss}_epoch"])
    assert all(torch.isfinite(p).all() for p in student.parameters())
    assert any(not torch.equal(before[k], v) for k, v in student.state_dict().items())


def test_dkd_warm_up_scales_the_component(digits, trained_teacher):
    x, y = digits["train"][0][:32], digits["train"][1][:32]
    student = TinyMLP()
    module = DistillationModule(student, trained_teacher, loss_weights={"dkd_loss": 1.0}, dkd_warmup_epochs=4,
                                dkd_alpha=0.5, dkd_beta=2.0)
    got = module.loss_components(x, y, None)["dkd_loss"]  # epoch 0 (no trainer): factor 1/4
    ref = dkd_warmup_factor(0, 4) * dkd_loss(student(x), trained_teacher(x), y, 4.0, 0.5, 2.0)
    torch.testing.assert_close(got, ref)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"teacher_weights": [1.0, 1.0]}, r"Expected `teacher_weights` to be 3 finite numbers"),
    ({"teacher_weights": [1.0, -1.0, 1.0]}, r"Expected `teacher_weights` to be 3 finite numbers >= 0"),
    ({"teacher_weights": [0, 0, 0]}, r"`teacher_weights` .*positive sum"),
    ({"teacher_weights": {"0": 1.0, "1": 1.0}}, r"Expected `teacher_weights` to be a dict with one weight per teacher"),
    ({"teacher_weights": {"0": 1, "1": 1, "x": 1}}, r"Unknown key 'x' in `teacher_weights`"),
    ({"teacher_mixing": "mean"}, r"Expected `teacher_mixing` to be one of \['probs', 'logits'\]"),
    ({"dkd_alpha": -1.0}, r"Expected `dkd_alpha` to be a non-negative float"),
    ({"dkd_beta": float("nan")}, r"Expected `dkd_beta` to be a non-negative float"),
    ({"dkd_warmup_epochs": -1}, r"Expected `dkd_warmup_epochs` to be a non-negative int"),
    ({"dkd_warmup_epochs": 2.5}, r"Expected `dkd_warmup_epochs` to be a non-negative int"),
    ({"dist_beta": -0.5}, r"Expected `dist_beta` to be a non-negative float"),
    ({"dist_gamma": "1"}, r"Expected `dist_gamma` to be a non-negative float"),
    ({"dist_tau_squared": 1}, r"Expected `dist_tau_squared` to be a bool"),
    ({"logit_standardization": "yes"}, r"Expected `logit_standardization` to be a bool"),
    ({"teacher_checkpoint": "teacher.pt"}, r"Expected `teacher_checkpoint` to be one path per teacher"),
])
def test_bad_ensemble_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DistillationModule(TinyMLP(), _teachers(3), **kwargs)


@pytest.mark.parametrize(("teacher", "kwargs", "match"), [
    (None, {"loss_weights": {"dkd_loss": 1.0}}, r"Loss weights \['dkd_loss'\] need a teacher"),
    (None, {"loss_weights": {"ls_kd_loss": 1.0, "dist_loss": 1.0}}, r"\['ls_kd_loss', 'dist_loss'\] need a teacher"),
    (None, {"teacher_weights": [1.0]}, r"Expected a `teacher` for `teacher_weights`"),
    ([], {}, r"Expected `teacher` to be an nn.Module, a non-empty list"),
    ("resnet", {}, r"Expected `teacher` to be an nn.Module, a non-empty list"),
    ([TinyMLP(), "resnet"], {}, r"Expected `teacher\['1'\]` to be an nn.Module"),
    ({"a b": TinyMLP()}, {}, r"Expected `teacher` to be a dict whose keys are names"),
])
def test_bad_teachers(teacher, kwargs, match):
    with pytest.raises(ValueError, match=match):
        DistillationModule(TinyMLP(), teacher, **kwargs)


def test_class_count_mismatches_name_the_teachers(digits):
    x, y = digits["train"][0][:8], digits["train"][1][:8]
    mixed = DistillationModule(TinyMLP(), {"ten": TinyMLP(), "five": TinyMLP(num_classes=5)})
    with pytest.raises(ValueError, match=r"Expected every teacher to output the same number of classes.*'five': \(8, 5\)"):
        mixed.loss_components(x, y, None)
    fewer = DistillationModule(TinyMLP(), [TinyMLP(num_classes=5), TinyMLP(num_classes=5)])
    with pytest.raises(ValueError, match=r"to output the student's 10 classes .* but they output 5"):
        fewer.loss_components(x, y, None)


class _EnsembleDDPChecks(pl.Callback):
    """Runs inside each rank: no teacher's parameter is inside the DDP wrapper; every teacher stays frozen."""

    def on_train_start(self, trainer, pl_module):
        assert trainer.world_size == 2
        wrapped = {id(p) for p in trainer.strategy.model.parameters()}
        teachers = {id(p) for t in pl_module.teachers.values() for p in t.parameters()}
        if wrapped & teachers or type(trainer.strategy.model).__name__ != "DistributedDataParallel":
            raise RuntimeError("teacher parameters are inside the DDP wrapper (or no DDP wrapper)")

    def on_train_epoch_end(self, trainer, pl_module):
        if any(t.training or any(p.requires_grad for p in t.parameters()) for t in pl_module.teachers.values()):
            raise RuntimeError("a teacher was unfrozen")


def test_several_teachers_under_cpu_ddp(tmp_path, loaders):
    kd = KnowledgeDistillationTraining(
        teacher_model=_teachers(2), student_model=TinyMLP(), train_data_loader=loaders("train", shuffle=True),
        val_data_loaders={"val": loaders("val")}, accelerator="cpu", devices=2, strategy="ddp_spawn",
        max_epoch=1, temperature=4.0, precision=32, default_root_dir=tmp_path, cache_teacher_outputs=True,
        final_loss_coeff_dict={"kd_loss": 0.5, "dist_loss": 0.5, "hard_loss": 0.5}, callbacks=[_EnsembleDDPChecks()],
        enable_progress_bar=False, quiet=True, limit_train_batches=3, limit_val_batches=2,
    )
    kd.fit()
    with open(kd.run_dir / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["val_teacher_0_acc"] for r in rows if r.get("val_teacher_0_acc")]
    state = torch.load(kd.checkpoint_dir / "last.ckpt", weights_only=True)["state_dict"]
    assert all(k.startswith(("student.", "criterion.")) for k in state)


def test_teacher_checkpoint_per_teacher(tmp_path):
    trained = _teachers(2)
    paths = []
    for i, t in enumerate(trained):
        paths.append(tmp_path / f"t{i}.pt")
        torch.save(t.state_dict(), paths[-1])
    fresh = [TinyMLP(hidden=24), TinyMLP(hidden=32)]
    untouched = copy.deepcopy(fresh[1].state_dict())
    module = DistillationModule(TinyMLP(), fresh, teacher_checkpoint=[str(paths[0]), None])
    assert all(torch.equal(v, trained[0].state_dict()[k]) for k, v in module.teachers["0"].state_dict().items())
    assert all(torch.equal(v, untouched[k]) for k, v in module.teachers["1"].state_dict().items())
    named = DistillationModule(TinyMLP(), {"a": TinyMLP(hidden=24), "b": TinyMLP(hidden=32)},
                               teacher_checkpoint={"b": str(paths[1])})
    assert all(torch.equal(v, trained[1].state_dict()[k]) for k, v in named.teachers["b"].state_dict().items())
    assert not named.teachers["b"].training and not any(p.requires_grad for p in named.teachers["b"].parameters())
    with pytest.raises(ValueError, match=r"Expected `teacher_checkpoint` to be a dict with keys from \['a', 'b'\]"):
        DistillationModule(TinyMLP(), {"a": TinyMLP(), "b": TinyMLP()}, teacher_checkpoint={"c": str(paths[0])})
    with pytest.raises(ValueError, match=r"Expected `teacher_checkpoint` to be a path, or 2 paths"):
        DistillationModule(TinyMLP(), fresh, teacher_checkpoint=[str(paths[0])])
