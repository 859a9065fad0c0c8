"""EarlyExitModule with an external teacher for every exit (issue 13): frozen end to end, the loss against a
hand-written reference (alone, with self-distillation, with several teachers), bad input, a real fit."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn

from kd_toolkit.data import DigitsDataModule
from kd_toolkit.early_exit import EarlyExitNetwork
from kd_toolkit.early_exit.models import SplitCNN
from kd_toolkit.early_exit.module import EarlyExitModule
from kd_toolkit.models import create_model


def _network(channels=(8, 8, 16), seed=0) -> EarlyExitNetwork:
    torch.manual_seed(seed)
    return EarlyExitNetwork(SplitCNN(channels=channels), (1, 1, 8, 8), [[16]] * (len(channels) - 1),
                            [0.9] * (len(channels) - 1))


def _teacher(classes: int = 10, seed: int = 1) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, classes))


def _kl(student: torch.Tensor, teacher_probs: torch.Tensor, T: float) -> torch.Tensor:
    """Reference ``KL(teacher || student) * T**2`` from ``F.kl_div`` (``batchmean``)."""
    return F.kl_div(F.log_softmax(student / T, dim=-1), teacher_probs, reduction="batchmean") * T**2


def _batch(digits, n=32):
    return digits["train"][0][:n], digits["train"][1][:n]


def test_teacher_is_frozen_end_to_end_and_the_network_trains():
    teacher = create_model("digits_teacher")
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    module = EarlyExitModule.from_model(SplitCNN(channels=(8, 16)), (1, 1, 8, 8), [[16]], [0.9], teacher=teacher,
                                        teacher_weight=0.5, optimizer="sgd", lr=0.1)
    student_before = {k: v.clone() for k, v in module.network.state_dict().items()}
    trainer = pl.Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0)
    trainer.fit(module, datamodule=DigitsDataModule())
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert not any(p.requires_grad or p.grad is not None for p in teacher.parameters())
    assert not teacher.training and module.teacher is teacher
    optimized = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert not optimized & {id(p) for p in teacher.parameters()}
    assert not any(k.startswith("teacher") or "_teacher" in k for k in module.state_dict())
    assert any(not torch.equal(student_before[k], v) for k, v in module.network.state_dict().items())
    metrics = trainer.callback_metrics
    assert {"teacher_distill_loss_epoch", "exit_0_loss_epoch", "val_early_exit_acc", "val_exit_0_share"} <= set(metrics)
    assert torch.isfinite(metrics["teacher_distill_loss_epoch"])


def test_loss_matches_a_hand_written_reference_per_exit_weights(digits):
    net, teacher = _network(), _teacher()
    weights, T = [0.2, 0.5, 0.7], 2.0
    module = EarlyExitModule(net, teacher=teacher, teacher_weight=weights, teacher_temperature=T)
    x, y = _batch(digits)
    components = module.loss_components(x, y, None)
    outputs, p_t = net(x), F.softmax(teacher(x).detach() / T, dim=-1)
    kls = [_kl(out, p_t, T) for out in outputs]
    for i, (out, w) in enumerate(zip(outputs, weights)):
        ref = (1 - w) * F.cross_entropy(out, y) + w * kls[i]
        torch.testing.assert_close(components[f"exit_{i}_loss"], ref)
    torch.testing.assert_close(components["teacher_distill_loss"], torch.stack(kls).mean().detach())
    assert "self_distill_loss" not in components


def test_teacher_together_with_self_distillation(digits):
    net, teacher = _network(), _teacher()
    s, t, T_s, T_t = 0.3, 0.4, 3.0, 2.0
    module = EarlyExitModule(net, teacher=teacher, teacher_weight=t, teacher_temperature=T_t,
                             self_distillation=True, distill_weight=s, distill_temperature=T_s)
    x, y = _batch(digits)
    components = module.loss_components(x, y, None)
    outputs, p_t = net(x), F.softmax(teacher(x).detach() / T_t, dim=-1)
    p_final = F.softmax(outputs[-1].detach() / T_s, dim=-1)
    for i, out in enumerate(outputs[:-1]):
        ref = (1 - s - t) * F.cross_entropy(out, y) + s * _kl(out, p_final, T_s) + t * _kl(out, p_t, T_t)
        torch.testing.assert_close(components[f"exit_{i}_loss"], ref)
    final_ref = (1 - t) * F.cross_entropy(outputs[-1], y) + t * _kl(outputs[-1], p_t, T_t)
    torch.testing.assert_close(components["exit_2_loss"], final_ref)
    assert {"self_distill_loss", "teacher_distill_loss"} <= set(components)
    # the teacher term reaches the final block through the final exit; self-distillation's target is detached
    components["exit_2_loss"].backward()
    assert any(p.grad is not None for p in module.network.blocks[-1].parameters())


def test_several_teachers_teach_through_their_equal_mixture(digits):
    net, first, second = _network(channels=(8, 16)), _teacher(seed=1), _teacher(seed=2)
    module = EarlyExitModule(net, teacher={"a": first, "b": second}, teacher_weight=[0.5, 0.0], teacher_temperature=2.0)
    x, y = _batch(digits)
    components = module.loss_components(x, y, None)
    outputs = net(x)
    p_mix = 0.5 * F.softmax(first(x).detach() / 2.0, dim=-1) + 0.5 * F.softmax(second(x).detach() / 2.0, dim=-1)
    ref = 0.5 * F.cross_entropy(outputs[0], y) + 0.5 * _kl(outputs[0], p_mix, 2.0)
    torch.testing.assert_close(components["exit_0_loss"], ref)
    torch.testing.assert_close(components["exit_1_loss"], F.cross_entropy(outputs[1], y))  # weight 0: plain CE
    assert set(module.teachers) == {"a", "b"}


def test_only_the_trained_exits_get_the_teacher_term(digits):
    net, teacher = _network(), _teacher()
    module = EarlyExitModule(net, training_method="all_exits", teacher=teacher, teacher_weight=0.5)
    x, y = _batch(digits)
    components = module.loss_components(x, y, None)
    assert set(components) == {"exit_0_loss", "exit_1_loss", "teacher_distill_loss"}


def test_without_a_teacher_nothing_changes(digits):
    net = _network()
    # teacher_weight is ignored without a teacher, even beyond 1 - distill_weight
    module = EarlyExitModule(net, self_distillation=True, distill_weight=0.8, teacher_weight=0.5)
    x, y = _batch(digits)
    assert "teacher_distill_loss" not in module.loss_components(x, y, None)
    assert module.teachers == {}


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"teacher_weight": 1.5}, "teacher_weight"),
        ({"teacher_weight": -0.1}, "teacher_weight"),
        ({"teacher_weight": float("nan")}, "teacher_weight"),
        ({"teacher_weight": "0.5"}, "teacher_weight"),
        ({"teacher_weight": [0.5, 0.5]}, "teacher_weight"),  # 3 exits
        ({"teacher_weight": [0.5, 0.5, 0.5, 0.5]}, "teacher_weight"),
        ({"teacher_weight": 0.6, "self_distillation": True, "distill_weight": 0.5}, "distill_weight"),
        ({"teacher_weight": [0.2, 0.6, 1.0], "self_distillation": True, "distill_weight": 0.5}, "teacher_weight"),
        ({"teacher_temperature": 0}, "teacher_temperature"),
        ({"teacher_temperature": -2.0}, "teacher_temperature"),
    ],
)
def test_bad_teacher_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        EarlyExitModule(_network(), teacher=_teacher(), **kwargs)


def test_teacher_weights_may_sum_to_exactly_one_with_self_distillation():
    module = EarlyExitModule(_network(), teacher=_teacher(), teacher_weight=[0.2, 0.5, 1.0], self_distillation=True,
                             distill_weight=0.5)
    assert module.teacher_weight == [0.2, 0.5, 1.0]


def test_teacher_with_another_class_count_is_refused():
    with pytest.raises(ValueError, match="teacher.*10 classes.*got 7"):
        EarlyExitModule(_network(), teacher=_teacher(classes=7))
    with pytest.raises(ValueError, match="teacher"):
        EarlyExitModule(_network(), teacher=nn.Linear(3, 10))  # does not take the network's input
