"""DistillationModule end to end on digits with real Lightning Trainers."""

from __future__ import annotations

import copy

import pytest
import pytorch_lightning as pl
import torch

from kd_toolkit import DistillationModule
from kd_toolkit.losses import kd_loss
from tests.conftest import DictOutputMLP, TinyMLP


def _trainer(**kw):
    kw.setdefault("max_epochs", 1)
    return pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, **kw)


def test_teacher_frozen_end_to_end(loaders, trained_teacher):
    teacher = copy.deepcopy(trained_teacher)
    before_t = copy.deepcopy(teacher.state_dict())
    student = TinyMLP()
    before_s = copy.deepcopy(student.state_dict())
    module = DistillationModule(student, teacher, temperature=4.0, loss_weights={"kd_loss": 0.7, "hard_loss": 0.3})
    trainer = _trainer(max_epochs=2, limit_train_batches=5)
    trainer.fit(module, loaders("train", shuffle=True), loaders("val"))
    # teacher: same weights, no grads, still eval, not in the optimizer, not in the checkpointed state
    assert all(torch.equal(before_t[k], v) for k, v in teacher.state_dict().items())
    assert all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    assert not teacher.training and not any(m.training for m in teacher.modules())
    opt_params = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
    assert not opt_params & {id(p) for p in teacher.parameters()}
    assert opt_params == {id(p) for p in student.parameters()}
    assert all(k.startswith(("student.", "criterion.")) for k in module.state_dict())
    # student changed, components logged under stable keys
    assert any(not torch.equal(before_s[k], v) for k, v in student.state_dict().items())
    logged = trainer.logged_metrics
    for key in ("train_loss_step", "train_loss_epoch", "hard_loss_epoch", "kd_loss_epoch", "val_loss", "val_acc"):
        assert key in logged, key
    total = 0.3 * logged["hard_loss_epoch"] + 0.7 * logged["kd_loss_epoch"]
    assert torch.isclose(total, logged["train_loss_epoch"], rtol=1e-5)


def test_no_teacher_trains_on_labels_alone(loaders):
    module = DistillationModule(TinyMLP(), None, lr=1e-2)
    assert module.loss_weights == {"hard_loss": 1.0}
    trainer = _trainer(max_epochs=3)
    trainer.fit(module, loaders("train", shuffle=True), loaders("val"))
    assert trainer.logged_metrics["val_acc"] > 0.8


def test_dict_outputs_and_cosine_component(loaders, trained_teacher):
    module = DistillationModule(DictOutputMLP(), trained_teacher, loss_weights={"hard_loss": 1, "kd_loss": 1, "cos_embed_loss": 1})
    trainer = _trainer(limit_train_batches=3, limit_val_batches=2)
    trainer.fit(module, loaders("train"), loaders("val"))
    assert "cos_embed_loss_epoch" in trainer.logged_metrics


def test_kd_loss_value_matches_formula(digits, trained_teacher):
    student = TinyMLP()
    module = DistillationModule(student, trained_teacher, temperature=3.0, loss_weights={"kd_loss": 1.0})
    x, y = digits["train"][0][:32], digits["train"][1][:32]
    parts = module.loss_components(x, y, None)
    assert torch.allclose(parts["kd_loss"], kd_loss(student(x), trained_teacher(x), 3.0))


def test_class_count_mismatch_fails_clearly(loaders):
    module = DistillationModule(TinyMLP(num_classes=10), TinyMLP(num_classes=5))
    with pytest.raises(ValueError, match="same number of classes"):
        _trainer(limit_train_batches=1).fit(module, loaders("train"))


def test_non_finite_loss_stops_training(loaders):
    class Exploding(TinyMLP):
        def forward(self, x):
            return super().forward(x) * float("nan")

    with pytest.raises(FloatingPointError, match="Non-finite training loss"):
        _trainer(limit_train_batches=2).fit(DistillationModule(Exploding(), None), loaders("train"))


def test_grad_norm_tracking_logs_the_norm(loaders):
    module = DistillationModule(TinyMLP(), None, track_grad_norm=2)
    trainer = _trainer(limit_train_batches=2, log_every_n_steps=1)
    trainer.fit(module, loaders("train"))
    assert "grad_2.0_norm_total" in trainer.logged_metrics


class _Pipeline:
    def run_inference_pipeline(self, model, loader):
        correct = sum(int((model(x).argmax(-1) == y).sum()) for x, y in loader)
        return {"inference_result": correct / len(loader.dataset)}


def test_inference_pipeline_logged_under_loader_name(loaders):
    module = DistillationModule(TinyMLP(), None, inference_pipeline=_Pipeline())
    trainer = _trainer(limit_train_batches=3)
    trainer.fit(module, loaders("train"), {"clean": loaders("val"), "other": loaders("test")})
    assert {"clean", "other"} <= set(trainer.logged_metrics)


def test_named_val_loaders_get_their_own_accuracy(loaders):
    module = DistillationModule(TinyMLP(), None)
    trainer = _trainer(limit_train_batches=3)
    trainer.fit(module, loaders("train"), {"clean": loaders("val"), "other": loaders("test")})
    m = trainer.logged_metrics
    assert {"val_acc_clean", "val_acc_other", "val_acc", "val_loss_clean", "val_loss_other"} <= set(m)
    assert m["val_acc"] == m["val_acc_clean"]
    results = trainer.test(module, {"a": loaders("val"), "b": loaders("test")}, verbose=False)
    assert "test_acc_a" in results[0] and "test_acc_b" in results[0]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"temperature": 0}, "positive float"),
        ({"temperature": -2.0}, "positive float"),
        ({"loss_weights": {"kd_loss": -0.1}}, "finite number >= 0"),
        ({"loss_weights": {"kd_los": 1.0}}, "Unknown loss-weight key 'kd_los'"),
        ({"loss_weights": {"kd_loss": 0.0, "hard_loss": 0.0}}, "positive sum"),
        ({"optimizer": "adamm"}, "adam_wav2vec2.0"),
        ({"scheduler": "cosine"}, "cosine_anneal"),
        ({"lr": 0}, "Expected `lr`"),
        ({"warmup_epochs": -1}, "warmup_epochs"),
        ({"inference_pipeline": object()}, "run_inference_pipeline"),
        ({"track_grad_norm": 0}, "track_grad_norm"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DistillationModule(TinyMLP(), TinyMLP(), **kwargs)


def test_kd_weights_without_teacher_are_rejected():
    with pytest.raises(ValueError, match="need a teacher"):
        DistillationModule(TinyMLP(), None, loss_weights={"kd_loss": 1.0})


def test_optimizer_instance_holding_teacher_params_is_rejected(loaders):
    teacher, student = TinyMLP(), TinyMLP()
    opt = torch.optim.SGD(list(student.parameters()) + list(teacher.parameters()), lr=0.1)
    with pytest.raises(ValueError, match="teacher parameters"):
        _trainer(limit_train_batches=1).fit(DistillationModule(student, teacher, optimizer=opt), loaders("train"))
