"""Seed 001's call form of knowledge_distillation_train, exactly as the seed's README shows it."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from tests.conftest import TinyMLP


def test_seed_001_call_form_from_both_import_paths(loaders, trained_teacher):
    from kd_toolkit import knowledge_distillation_train as same
    from knowledge_distilation import knowledge_distillation_train

    assert knowledge_distillation_train is same
    teacher_model = trained_teacher
    student_model = TinyMLP()
    trainloader = loaders("train", shuffle=True, batch_size=32)
    optimizer = torch.optim.Adam(student_model.parameters(), lr=0.001)
    before = copy.deepcopy(student_model.state_dict())

    epoch_loss = knowledge_distillation_train(
        teacher_model=teacher_model,
        student_model=student_model,
        trainloader=trainloader,
        criterion=nn.CrossEntropyLoss(),
        optimizer=optimizer,
        teacher_percentage=0.5,
        temperature=2.0,
    )
    assert isinstance(epoch_loss, float) and epoch_loss > 0
    assert any(not torch.equal(before[k], v) for k, v in student_model.state_dict().items())
    # the caller's optimizer instance was used and keeps its state across calls
    steps = [s["step"] for s in optimizer.state.values()]
    assert steps and all(float(s) == len(trainloader) for s in steps)
    second = knowledge_distillation_train(teacher_model, student_model, trainloader, nn.CrossEntropyLoss(), optimizer,
                                          teacher_percentage=0.5, temperature=2.0, device="cpu")
    assert all(float(s["step"]) == 2 * len(trainloader) for s in optimizer.state.values())
    assert second < epoch_loss


def test_seed_001_loss_is_the_average_per_sample(loaders, trained_teacher):
    """With lr=0 nothing changes, so the returned value can be recomputed by hand."""
    from kd_toolkit import knowledge_distillation_train
    from kd_toolkit.losses import kd_loss

    student = TinyMLP()
    loader = loaders("val", batch_size=64)  # 300 samples: last batch of 44 weighs less
    optimizer = torch.optim.SGD(student.parameters(), lr=0.0)
    got = knowledge_distillation_train(trained_teacher, student, loader, nn.CrossEntropyLoss(), optimizer,
                                       teacher_percentage=0.3, temperature=3.0)
    total, count = 0.0, 0
    with torch.no_grad():
        for x, y in loader:
            s, t = student(x), trained_teacher(x)
            loss = 0.7 * nn.functional.cross_entropy(s, y) + 0.3 * kd_loss(s, t, 3.0)
            total += float(loss) * len(y)
            count += len(y)
    assert got == pytest.approx(total / count, rel=1e-5)


@pytest.mark.parametrize("p", [-0.1, 1.5, True])
def test_teacher_percentage_out_of_range(loaders, trained_teacher, p):
    from kd_toolkit import knowledge_distillation_train

    student = TinyMLP()
    with pytest.raises(ValueError, match="teacher_percentage"):
        knowledge_distillation_train(trained_teacher, student, loaders("val"), nn.CrossEntropyLoss(),
                                     torch.optim.SGD(student.parameters(), lr=0.1), teacher_percentage=p)


def test_mixing_the_two_call_forms_is_an_error(loaders, trained_teacher):
    from kd_toolkit import knowledge_distillation_train

    with pytest.raises(ValueError, match="two call forms"):
        knowledge_distillation_train(teacher_model=trained_teacher, student_model=TinyMLP(), trainloader=loaders("val"),
                                     criterion=nn.CrossEntropyLoss(), optimizer=None, epochs=2, thresholds=[0.9])
