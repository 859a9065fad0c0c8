"""The kd_toolkit.fitnets package as one home: old import paths (shims), one loss code path for the seed API,
no hidden state, train_epoch and the caller's optimizer, one model registry, the base's optimizer checks."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
import warnings
import weakref
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from kd_toolkit.core.module import KDBaseModule
from kd_toolkit.data import make_loader
from kd_toolkit.fitnets.models import FITNETS_MODELS, ThinDeepCNN, WideCNN, create_fitnets_model
from kd_toolkit.fitnets.module import FitNetsModule
from kd_toolkit.fitnets.seed_api import (
    build_fitnets_module,
    compute_fitnets_loss,
    create_fitnets_config,
    train_epoch,
)
from kd_toolkit.losses import kd_loss
from kd_toolkit.models import create_model, list_models, model_entrypoint, register_model

ROOT = Path(__file__).resolve().parents[1]
HINTS = {"features.4": "features.2"}
SHIMS = {
    "kd_toolkit.taps": "kd_toolkit.fitnets.taps",
    "kd_toolkit.adapters": "kd_toolkit.fitnets.regressors",
    "kd_toolkit.fitnets_models": "kd_toolkit.fitnets.models",
    "kd_toolkit.fitnets_api": "kd_toolkit.fitnets.seed_api",
    "kd_toolkit.modules.fitnets": "kd_toolkit.fitnets.module",
}
SEED_MODULES = ("seed_api", "seed_config", "seed_io", "seed_utils", "module", "regressors", "taps", "models")


def _fresh_import(monkeypatch: pytest.MonkeyPatch, name: str):
    monkeypatch.delitem(sys.modules, name, raising=False)  # imported before (doctests, other tests): warn again
    return importlib.import_module(name)


def _pair(seed: int = 0, width: int = 4) -> tuple[ThinDeepCNN, WideCNN]:
    torch.manual_seed(seed)
    return ThinDeepCNN(num_classes=3, width=width), WideCNN(num_classes=3, width=8)


def _batch(n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    return torch.randn(n, 1, 16, 16), torch.arange(n) % 3


# ------------------------------------------------------------------------------------------------ shims
@pytest.mark.parametrize(("old", "new"), sorted(SHIMS.items()))
def test_old_import_paths_warn_and_reexport_the_same_objects(monkeypatch, old, new):
    with pytest.warns(DeprecationWarning, match=rf"{old} is deprecated; import from {new}"):
        shim = _fresh_import(monkeypatch, old)
    target = importlib.import_module(new)
    assert shim.__all__ and all(getattr(shim, name) is getattr(target, name) for name in shim.__all__)


def test_old_fitnets_io_module_is_gone():
    assert not (ROOT / "kd_toolkit" / "_fitnets_io.py").exists()  # nothing imported it; kd_toolkit._io replaces it


def test_old_yaml_class_paths_still_instantiate(monkeypatch):
    from jsonargparse import ArgumentParser

    monkeypatch.delitem(sys.modules, "kd_toolkit.fitnets_models", raising=False)
    monkeypatch.delitem(sys.modules, "kd_toolkit.modules.fitnets", raising=False)
    parser = ArgumentParser()
    parser.add_subclass_arguments(pl.LightningModule, "model")
    old = {"class_path": "kd_toolkit.modules.fitnets.FitNetsModule", "init_args": {
        "student": {"class_path": "kd_toolkit.fitnets_models.ThinDeepCNN", "init_args": {"width": 4}},
        "teacher": {"class_path": "kd_toolkit.fitnets_models.WideCNN", "init_args": {"width": 8}},
        "hint_layers": dict(HINTS), "input_shape": [1, 8, 8], "stage": "two_stage", "lr": 0.05}}
    with pytest.warns(DeprecationWarning, match=r"deprecated; import from kd_toolkit\.fitnets"):
        config = parser.parse_object({"model": old})
        module = parser.instantiate_classes(config).model
    assert type(module) is FitNetsModule and module.stage == "two_stage" and module.lr == 0.05
    assert isinstance(module.student, ThinDeepCNN) and isinstance(module.teacher, WideCNN)


def test_the_shipped_yaml_uses_the_new_paths():
    text = (ROOT / "configs" / "fitnets_mnist.yaml").read_text()
    assert "kd_toolkit.fitnets.module.FitNetsModule" in text and "kd_toolkit.fitnets.models.ThinDeepCNN" in text
    assert "kd_toolkit.modules.fitnets" not in text and "fitnets_models" not in text


def test_no_private_names_imported_across_packages():
    """Outside kd_toolkit/fitnets nothing imports a `_name` from it, and it imports none from elsewhere."""
    package = ROOT / "kd_toolkit"
    bad = []
    for path in package.rglob("*.py"):
        inside = (package / "fitnets") in path.parents
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom) or not (node.module or "").startswith("kd_toolkit"):
                continue
            from_fitnets = node.module.startswith("kd_toolkit.fitnets")
            private = [a.name for a in node.names if a.name.startswith("_")]
            if private and inside != from_fitnets and (inside or from_fitnets):
                bad.append(f"{path.relative_to(ROOT)}: from {node.module} import {private}")
    assert not bad, bad


# ------------------------------------------------------------------------------- one loss code path
def test_compute_fitnets_loss_is_the_modules_loss_with_the_configs_weights():
    student, teacher = _pair()
    x, y = _batch()
    cfg = create_fitnets_config(model="ThinDeepCNN", hint_layers=HINTS, alpha=0.7, beta=0.25, temperature=5.0)
    torch.manual_seed(2)  # the regressor's initialisation
    total, parts = compute_fitnets_loss(student, teacher, x, y, cfg)
    torch.manual_seed(2)
    module = FitNetsModule(student, teacher, HINTS, example_input=x[:2], alpha=0.7, beta=0.25, temperature=5.0)
    reference = module.loss_components(x, y, None)
    assert reference.keys() == {"hard_loss", "kd_loss", "hint_loss", "hint_loss/features.4"}
    assert parts.keys() == {"classification_loss", "feature_loss", "total_loss", *reference}  # the seed's + ours
    for key in reference:
        assert parts[key] == pytest.approx(float(reference[key]), rel=1e-5)
    assert parts["classification_loss"] == parts["hard_loss"] and parts["feature_loss"] == parts["hint_loss"]
    expected_total = parts["hard_loss"] + 0.7 * parts["kd_loss"] + 0.25 * parts["hint_loss"]
    assert total.item() == pytest.approx(expected_total, rel=1e-5) and parts["total_loss"] == pytest.approx(total.item())
    with torch.no_grad():
        expected_kd = kd_loss(student(x), teacher.eval()(x), temperature=5.0)
    assert parts["kd_loss"] == pytest.approx(float(expected_kd), rel=1e-5)


def test_compute_fitnets_loss_skips_zero_weights_and_reuses_a_given_module():
    student, teacher = _pair()
    x, y = _batch()
    cfg = create_fitnets_config(model="ThinDeepCNN", hint_layers=HINTS, alpha=0.0, beta=2.0)
    module = build_fitnets_module(student, teacher, cfg, x)
    total, parts = compute_fitnets_loss(student, teacher, x, y, cfg, module)
    assert "kd_loss" not in module.loss_components(x, y, None) and parts["kd_loss"] == 0.0  # not computed
    assert total.item() == pytest.approx(parts["hard_loss"] + 2.0 * parts["hint_loss"], rel=1e-5)
    total.backward()
    assert module.regressors["features-4"].proj.weight.grad is not None  # the caller's module's regressors
    total, parts = compute_fitnets_loss(student, None, x, y, create_fitnets_config(model="ThinDeepCNN"))
    assert set(parts) == {"hard_loss", "classification_loss", "kd_loss", "feature_loss", "total_loss"}
    assert parts["kd_loss"] == parts["feature_loss"] == 0.0 and parts["hard_loss"] == pytest.approx(total.item())
    with pytest.raises(ValueError, match=r"Expected `module` to be built for these `student_model`"):
        compute_fitnets_loss(ThinDeepCNN(num_classes=3, width=4), teacher, x, y, cfg, module)


# --------------------------------------------------------------------------------------- no hidden state
def _module_level_state() -> dict[str, object]:
    state = {}
    for name in SEED_MODULES:
        module = importlib.import_module(f"kd_toolkit.fitnets.{name}")
        for key, value in vars(module).items():
            assert not isinstance(value, (weakref.WeakKeyDictionary, weakref.WeakValueDictionary)), f"{name}.{key}"
            if isinstance(value, (dict, list, set)) and not key.startswith("__"):
                state[f"{name}.{key}"] = repr(value)
    return state


def test_seed_api_keeps_no_module_level_state():
    seed_api = importlib.import_module("kd_toolkit.fitnets.seed_api")
    assert not hasattr(seed_api, "_REGRESSORS")
    before = _module_level_state()
    student, teacher = _pair()
    x, y = _batch()
    cfg = create_fitnets_config(model="ThinDeepCNN", hint_layers=HINTS)
    compute_fitnets_loss(student, teacher, x, y, cfg)
    with pytest.warns(UserWarning):
        train_epoch(student, teacher, make_loader(x, y, batch_size=4), torch.optim.SGD(student.parameters(), 0.1),
                    "cpu", cfg)
    assert _module_level_state() == before


def _train_two_epochs(student, teacher, optimizer, x, y, cfg, between=lambda: None) -> list[torch.Tensor]:
    loader = make_loader(x, y, batch_size=4)
    torch.manual_seed(5)  # the regressors' initialisation
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        train_epoch(student, teacher, loader, optimizer, "cpu", cfg)
    params = list(optimizer.param_groups[1]["params"])
    snapshot = [p.detach().clone() for p in params]
    between()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning: the regressors are taken back from the optimizer
        train_epoch(student, teacher, loader, optimizer, "cpu", cfg)
    assert len(optimizer.param_groups) == 2 and optimizer.param_groups[1]["params"] == params
    assert any(not torch.equal(a, p) for a, p in zip(snapshot, params)), "the regressors did not train on"
    return [p.detach().clone() for p in [*student.parameters(), *params]]


def test_two_students_in_one_process_do_not_interfere():
    x, y = _batch()
    cfg = create_fitnets_config(model="ThinDeepCNN", hint_layers=HINTS, beta=1.0)

    def run(width: int):
        student, teacher = _pair(seed=width, width=width)
        return student, teacher, torch.optim.SGD(student.parameters(), lr=0.05)

    def train_b() -> None:  # between a's two epochs, with its own optimizer
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            for _ in range(2):
                train_epoch(*b[:2], make_loader(x, y, batch_size=4), b[2], "cpu", cfg)

    alone = _train_two_epochs(*run(4), x, y, cfg)
    a, b = run(4), run(6)  # the same student again, and another one with wider (other-shaped) regressors
    together = _train_two_epochs(*a, x, y, cfg, between=train_b)
    assert len(b[2].param_groups) == 2
    assert b[2].param_groups[1]["params"][0].shape[1] == 12 and a[2].param_groups[1]["params"][0].shape[1] == 8
    for left, right in zip(alone, together):
        torch.testing.assert_close(left, right)


# ------------------------------------------------------------------------------ train_epoch and optimizers
def test_train_epoch_adds_the_regressors_once_with_a_warning():
    student, teacher = _pair()
    x, y = _batch()
    cfg = create_fitnets_config(model="ThinDeepCNN", hint_layers=HINTS)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.1)
    with pytest.warns(UserWarning, match=r"added the FitNets hint regressors .* named 'fitnets_regressors'"):
        _, _, stats = train_epoch(student, teacher, make_loader(x, y, batch_size=4), optimizer, "cpu", cfg)
    assert len(optimizer.param_groups) == 2 and optimizer.param_groups[1]["name"] == "fitnets_regressors"
    assert {"total_loss", "hard_loss", "kd_loss", "hint_loss"} <= stats.keys()
    other_student, other_teacher = ThinDeepCNN(num_classes=3, width=6), WideCNN(num_classes=3, width=4)
    with pytest.raises(ValueError, match=r"'fitnets_regressors' param group of `optimizer` to hold the hint"):
        train_epoch(other_student, other_teacher, make_loader(x, y, batch_size=4), optimizer, "cpu", cfg)


def test_train_epoch_with_the_callers_module_adds_nothing():
    student, teacher = _pair()
    x, y = _batch()
    cfg = create_fitnets_config(model="ThinDeepCNN", hint_layers=HINTS)
    module = build_fitnets_module(student, teacher, cfg, x)
    optimizer = torch.optim.SGD(module.trainable_parameters(), lr=0.1)
    weight = module.regressors["features-4"].proj.weight
    before = weight.detach().clone()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train_epoch(student, teacher, make_loader(x, y, batch_size=4), optimizer, "cpu", cfg, module=module)
    assert len(optimizer.param_groups) == 1 and not torch.equal(before, weight)


# --------------------------------------------------------------------------- the base module's checks
def test_fitnets_uses_the_base_configure_optimizers_and_refuses_teacher_parameters(tmp_path):
    assert FitNetsModule.configure_optimizers is KDBaseModule.configure_optimizers
    student, teacher = ThinDeepCNN(width=4), WideCNN(width=8)

    def sneaky(params, lr):  # an optimizer factory that also picks up the teacher
        return torch.optim.SGD([*params, *teacher.parameters()], lr=lr)

    module = FitNetsModule(student, teacher, dict(HINTS), input_shape=[1, 8, 8], optimizer=sneaky)
    x, y = torch.randn(8, 1, 8, 8), torch.arange(8) % 10
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu", default_root_dir=tmp_path)
    with pytest.raises(ValueError, match=r"The optimizer holds teacher parameters"):
        trainer.fit(module, make_loader(x, y, batch_size=4))


def test_hparams_come_from_the_base_and_reload_from_a_checkpoint(tmp_path):
    student, teacher = ThinDeepCNN(width=4), WideCNN(width=8)
    module = FitNetsModule(student, teacher, dict(HINTS), input_shape=[1, 8, 8], optimizer="sgd", lr=0.02, alpha=0.3,
                           stage="two_stage", hint_epochs=1)
    hparams = dict(module.hparams)
    assert hparams["optimizer"] == "sgd" and hparams["lr"] == 0.02 and hparams["alpha"] == 0.3
    assert hparams["hint_layers"] == HINTS and hparams["stage"] == "two_stage"
    assert not {"student", "teacher", "example_input", "loss_weights", "cache_teacher_outputs"} & hparams.keys()
    x, y = torch.randn(8, 1, 8, 8), torch.arange(8) % 10
    trainer = pl.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu", default_root_dir=tmp_path)
    trainer.fit(module, make_loader(x, y, batch_size=4))
    trainer.save_checkpoint(tmp_path / "fitnets.ckpt")
    restored = FitNetsModule.load_from_checkpoint(tmp_path / "fitnets.ckpt", student=ThinDeepCNN(width=4),
                                                  teacher=WideCNN(width=8))
    assert restored.alpha == 0.3 and restored.optimizer_spec == "sgd" and restored.stage == "two_stage"
    torch.testing.assert_close(restored.regressors.state_dict(), module.regressors.state_dict())


# ----------------------------------------------------------------------------------------- one registry
def test_one_registry_holds_the_fitnets_models():
    assert set(FITNETS_MODELS) <= set(list_models())
    for name in FITNETS_MODELS:
        assert FITNETS_MODELS[name] is model_entrypoint(name)
    for name in ("ThinDeepCNN", "WideCNN", "MultiBranchNet"):
        torch.manual_seed(0)
        old = create_fitnets_model(name, num_classes=3, in_channels=1)
        torch.manual_seed(0)
        new = create_model(name, num_classes=3, in_channels=1)
        assert type(old) is type(new)
        torch.testing.assert_close(old.state_dict(), new.state_dict())
    with pytest.raises(ValueError, match=r"'ThinDeepCNN' is already registered"):
        register_model("ThinDeepCNN")(lambda **kw: WideCNN(**kw))


def test_registry_imports_method_modules_lazily_and_tolerates_missing_ones(monkeypatch):
    code = ("import sys, kd_toolkit.models as m; assert 'torchvision' not in sys.modules; "
            "assert 'kd_toolkit.fitnets.models' not in sys.modules; m.create_model('WideCNN'); "
            "assert 'kd_toolkit.fitnets.models' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
    from kd_toolkit import models

    monkeypatch.setattr(models, "_MODEL_MODULES", (*models._MODEL_MODULES, "kd_toolkit.not_there.models",
                                                  "kd_toolkit.losses.models"))
    assert "WideCNN" in models.list_models()
    with pytest.raises(ValueError, match=r"Expected `name` to be one of \[.*'WideCNN'.*\], but got 'nope'"):
        models.create_model("nope")
