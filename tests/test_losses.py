"""Loss functions against independent formulas (numpy) and gradcheck in float64."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kd_toolkit.losses import cosine_logit_loss, hint_loss, kd_loss, multi_exit_loss, soft_target_loss


def _np_softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _np_kd(s: np.ndarray, t: np.ndarray, T: float) -> float:
    p_t, p_s = _np_softmax(t / T), _np_softmax(s / T)
    return float((p_t * (np.log(p_t) - np.log(p_s))).sum(axis=-1).mean() * T * T)


@pytest.mark.parametrize("T", [1.0, 2.0, 4.0, 20.0])
def test_kd_loss_matches_numpy_formula(T):
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(16, 10, generator=g, dtype=torch.float64), torch.randn(16, 10, generator=g, dtype=torch.float64)
    assert kd_loss(s, t, T).item() == pytest.approx(_np_kd(s.numpy(), t.numpy(), T), rel=1e-10)


def test_kd_loss_matches_kl_div_and_is_zero_for_equal_logits():
    s, t = torch.randn(8, 5), torch.randn(8, 5)
    ref = F.kl_div(F.log_softmax(s / 3, -1), F.softmax(t / 3, -1), reduction="batchmean") * 9
    assert torch.allclose(kd_loss(s, t, 3.0), ref, atol=1e-6)
    assert kd_loss(s, s, 3.0).abs().item() < 1e-6


def test_kd_loss_gradcheck_float64():
    s = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    t = torch.randn(4, 6, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: kd_loss(x, t, 2.5), (s,))
    # no gradient flows into the teacher
    t.requires_grad_(True)
    kd_loss(s, t, 2.0).backward()
    assert t.grad is None


def test_soft_target_loss_differs_from_kd_by_teacher_entropy():
    s, t = torch.randn(8, 5, dtype=torch.float64), torch.randn(8, 5, dtype=torch.float64)
    p = F.softmax(t / 2, -1)
    entropy = -(p * p.log()).sum(-1).mean() * 4
    assert torch.allclose(soft_target_loss(s, p, 2.0) - entropy, kd_loss(s, t, 2.0), atol=1e-10)
    assert torch.autograd.gradcheck(lambda x: soft_target_loss(x, p, 2.0), (s.clone().requires_grad_(),))


def test_cosine_logit_loss_formula_and_gradcheck():
    s, t = torch.randn(6, 4, dtype=torch.float64), torch.randn(6, 4, dtype=torch.float64)
    sn, tn = s.numpy(), t.numpy()
    ref = np.mean(1 - (sn * tn).sum(-1) / (np.linalg.norm(sn, axis=-1) * np.linalg.norm(tn, axis=-1)))
    assert cosine_logit_loss(s, t).item() == pytest.approx(ref, rel=1e-10)
    assert torch.autograd.gradcheck(lambda x: cosine_logit_loss(x, t), (s.clone().requires_grad_(),))


def test_hint_loss_is_mse_and_checks_shapes():
    a, b = torch.randn(2, 3, 4, 4, dtype=torch.float64), torch.randn(2, 3, 4, 4, dtype=torch.float64)
    assert hint_loss(a, b).item() == pytest.approx(float(((a - b) ** 2).mean()), rel=1e-12)
    assert torch.autograd.gradcheck(lambda x: hint_loss(x, b), (a.clone().requires_grad_(),))
    with pytest.raises(ValueError, match="teacher's shape"):
        hint_loss(torch.randn(2, 3), torch.randn(2, 4))


def test_multi_exit_loss_weights_are_normalised():
    y = torch.tensor([0, 1, 2])
    logits = [torch.randn(3, 3), torch.randn(3, 3)]
    total, parts = multi_exit_loss(logits, y, weights=[1.0, 3.0])
    ref = 0.25 * F.cross_entropy(logits[0], y) + 0.75 * F.cross_entropy(logits[1], y)
    assert torch.allclose(total, ref) and len(parts) == 2
    total_sd, parts_sd = multi_exit_loss(logits, y, distill_temperature=2.0, distill_weight=0.5)
    expected0 = 0.5 * F.cross_entropy(logits[0], y) + 0.5 * kd_loss(logits[0], logits[1], 2.0)
    assert torch.allclose(parts_sd[0], expected0) and torch.allclose(parts_sd[1], F.cross_entropy(logits[1], y))
    with pytest.raises(ValueError, match="weights"):
        multi_exit_loss(logits, y, weights=[1.0])


@pytest.mark.parametrize("bad", [0, -1.0, float("inf"), float("nan"), True, "2"])
def test_non_positive_temperature_is_rejected(bad):
    with pytest.raises(ValueError, match="Expected `temperature` to be a positive float"):
        kd_loss(torch.randn(2, 3), torch.randn(2, 3), bad)


def test_class_count_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="same number of classes"):
        kd_loss(torch.randn(2, 10), torch.randn(2, 5), 2.0)
    with pytest.raises(ValueError, match="same number of classes"):
        cosine_logit_loss(torch.randn(2, 10), torch.randn(2, 5))
    with pytest.raises(ValueError, match=r"\(batch, num_classes\)"):
        kd_loss(torch.randn(10), torch.randn(10), 2.0)
