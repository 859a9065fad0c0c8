"""`KnowledgeDistillationTraining(teacher_model=[...] or {...}, teacher_weights=..., teacher_mixing=...)`: the
first-class teacher arguments reach the module and change what it distils; every bad input of issue 13 fails
through the orchestrator with an error that names the argument."""

from __future__ import annotations

import pytest
import torch

from kd_toolkit import DistillationModule, KnowledgeDistillationTraining
from kd_toolkit.losses import mixture_log_probs
from tests.conftest import TinyMLP
from tests.test_ensemble import _teachers


def _kd(tmp_path, loaders, **kwargs):
    kwargs.setdefault("student_model", TinyMLP())
    kwargs.setdefault("final_loss_coeff_dict", {"kd_loss": 0.8, "hard_loss": 0.2})
    return KnowledgeDistillationTraining(
        train_data_loader=loaders("train", shuffle=True), val_data_loaders={"val": loaders("val")}, num_gpu_used=0,
        max_epoch=1, temperature=2.0, precision=32, default_root_dir=tmp_path, quiet=True, enable_progress_bar=False,
        limit_train_batches=3, limit_val_batches=1, **kwargs)


@pytest.mark.parametrize("mixing", ["probs", "logits"])
def test_teacher_weights_and_mixing_are_first_class(tmp_path, loaders, digits, mixing):
    teachers = {"wide": _teachers()[0], "deep": _teachers()[1]}
    kd = _kd(tmp_path, loaders, teacher_model=teachers, teacher_weights={"deep": 3.0, "wide": 1.0},
             teacher_mixing=mixing, cache_teacher_outputs=True)
    module = kd.module
    assert isinstance(module, DistillationModule)
    assert module.teacher_weights == pytest.approx([0.25, 0.75]) and module.teacher_mixing == mixing
    before = {k: v.clone() for k, v in module.student.state_dict().items()}
    kd.fit()
    assert any(not torch.equal(before[k], v) for k, v in module.student.state_dict().items())
    assert {"val_teacher_wide_acc", "val_teacher_deep_acc", "kd_loss_epoch"} <= set(kd.trainer.callback_metrics)
    # the weights and the mode really shape the soft target the student was trained on
    x = digits["train"][0][:16]
    with torch.no_grad():
        stack = torch.stack([teachers["wide"](x), teachers["deep"](x)], dim=1)
        got = module.loss_components(x, digits["train"][1][:16], None)["kd_loss"]
        s = torch.log_softmax(module.student(x) / 2.0, -1)
        for weights, close in (([0.25, 0.75], True), ([0.75, 0.25], False)):
            q = mixture_log_probs(stack, 2.0, weights, mode=mixing)
            ref = (q.exp() * (q - s)).sum(-1).mean() * 4.0
            assert torch.isclose(got, ref, rtol=1e-5).item() is close, weights


def test_equal_weights_by_default(tmp_path, loaders):
    kd = _kd(tmp_path, loaders, teacher_model=_teachers(3))
    assert kd.module.teacher_weights == pytest.approx([1 / 3] * 3) and kd.module.teacher_mixing == "probs"


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"teacher_model": "t3", "teacher_weights": [1.0, 1.0]}, r"Expected `teacher_weights` to be 3 finite numbers"),
    ({"teacher_model": "t3", "teacher_weights": [1.0, -1.0, 1.0]}, r"`teacher_weights` to be 3 finite numbers >= 0"),
    ({"teacher_model": "t3", "teacher_weights": [0.0, 0.0, 0.0]}, r"`teacher_weights` .*positive sum"),
    ({"teacher_model": "t3", "teacher_mixing": "mean"},
     r"Expected `teacher_mixing` to be one of \['probs', 'logits'\], but got 'mean'"),
    ({"teacher_model": "t3", "teacher_mixing": "logits", "module_kwargs": {"teacher_mixing": "probs"}},
     r"`teacher_mixing` was given twice"),
    ({"teacher_model": "t3", "teacher_weights": [1, 1, 1], "module_kwargs": {"teacher_weights": [1, 2, 1]}},
     r"`teacher_weights` was given twice"),
    ({"teacher_model": None, "teacher_weights": [1.0], "final_loss_coeff_dict": None}, r"Expected a `teacher` for `teacher_weights`"),
    ({"teacher_model": None, "final_loss_coeff_dict": {"dkd_loss": 1.0}}, r"\['dkd_loss'\] need a teacher"),
    ({"teacher_model": None, "final_loss_coeff_dict": {"dist_loss": 1.0, "ls_kd_loss": 1.0}}, r"need a teacher"),
    ({"teacher_model": "t3", "module_kwargs": {"dkd_beta": -2.0}}, r"Expected `dkd_beta` to be a non-negative float"),
    ({"teacher_model": "t3", "module_kwargs": {"dist_gamma": float("inf")}},
     r"Expected `dist_gamma` to be a non-negative float"),
    ({"teacher_model": "t3", "module_kwargs": {"dkd_warmup_epochs": -1}}, r"`dkd_warmup_epochs` to be a non-negative int"),
])
def test_bad_teacher_input_through_the_orchestrator(tmp_path, loaders, kwargs, match):
    if kwargs["teacher_model"] == "t3":
        kwargs = {**kwargs, "teacher_model": _teachers(3)}
    with pytest.raises(ValueError, match=match):
        _kd(tmp_path, loaders, **kwargs)
    assert not any(tmp_path.rglob("version_*")), "a failed constructor left a run folder behind"


def test_class_count_mismatch_through_the_orchestrator(tmp_path, loaders):
    kd = _kd(tmp_path, loaders, teacher_model={"ten": TinyMLP(), "five": TinyMLP(num_classes=5)})
    with pytest.raises(ValueError, match=r"same number of classes.*'five': \(\d+, 5\)"):
        kd.fit()


def test_teacher_arguments_do_not_go_with_a_ready_module(tmp_path, loaders):
    module = DistillationModule(TinyMLP(), _teachers(2))
    with pytest.raises(ValueError, match=r"Expected no `teacher_weights` with a ready `module=`"):
        KnowledgeDistillationTraining(module=module, train_data_loader=loaders("train"), teacher_weights=[1, 1],
                                      default_root_dir=tmp_path, quiet=True)
    with pytest.raises(ValueError, match=r"Expected `module_kwargs` to be a mapping"):
        _kd(tmp_path, loaders, teacher_model=_teachers(2), module_kwargs=[("dkd_beta", 1.0)])
