"""Optimizer presets and warm-up schedules."""

import pytest
import torch

from kd_toolkit.optim import OPTIMIZER_PRESETS, build_optimizer, build_scheduler


@pytest.mark.parametrize("name", sorted(OPTIMIZER_PRESETS))
def test_every_preset_builds_and_steps(name):
    model = torch.nn.Linear(3, 2)
    opt = build_optimizer(name, model.parameters(), lr=0.01)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    assert opt.param_groups[0]["lr"] == 0.01


def test_preset_settings_follow_seed_002():
    opt = build_optimizer("adamW_distilBert", torch.nn.Linear(1, 1).parameters(), lr=1e-4)
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["betas"] == (0.9, 0.98) and opt.defaults["eps"] == 1e-6


def test_class_and_instance_specs():
    model = torch.nn.Linear(2, 2)
    assert isinstance(build_optimizer(torch.optim.SGD, model.parameters(), lr=0.1, momentum=0.9), torch.optim.SGD)
    inst = torch.optim.Adam(model.parameters(), lr=0.5)
    assert build_optimizer(inst, model.parameters(), lr=0.1) is inst


def test_unknown_optimizer_and_scheduler_list_allowed_names():
    with pytest.raises(ValueError, match="adam_wav2vec2.0"):
        build_optimizer("adamm", torch.nn.Linear(1, 1).parameters(), lr=0.1)
    opt = torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), lr=1.0)
    with pytest.raises(ValueError, match="linear_decay_with_warm_up"):
        build_scheduler("cosine", opt, total_steps=10)


@pytest.mark.parametrize("name", ["", "linear_decay_with_warm_up", "cosine_anneal", "step"])
def test_warmup_ramps_linearly_then_schedule(name):
    opt = torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), lr=1.0)
    sched = build_scheduler(name, opt, total_steps=20, warmup_steps=4, step_size=5, gamma=0.5)
    lrs = []
    for _ in range(20):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    if name == "":
        assert lrs[4:] == pytest.approx([1.0] * 16)
    elif name == "step":
        assert lrs[8] == pytest.approx(1.0) and lrs[9] == pytest.approx(0.5)  # warm-up 4 + step_size 5
    else:
        assert all(a >= b for a, b in zip(lrs[4:], lrs[5:])) and lrs[-1] < 0.2


def test_no_scheduler_without_warmup():
    opt = torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), lr=1.0)
    assert build_scheduler("", opt, total_steps=10) is None
