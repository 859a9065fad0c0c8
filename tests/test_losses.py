"""Loss functions against independent formulas (numpy) and gradcheck in float64."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kd_toolkit.losses import (
    cosine_logit_loss,
    dist_loss,
    dkd_loss,
    dkd_warmup_factor,
    hint_loss,
    kd_loss,
    ls_kd_loss,
    mixture_log_probs,
    multi_exit_loss,
    normalize_teacher_weights,
    soft_target_loss,
    standardize_logits,
)


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


def test_multi_exit_loss_with_a_teacher_matches_numpy_and_gradcheck():
    y = torch.tensor([0, 1, 2, 1])
    logits, teacher = [torch.randn(4, 3, dtype=torch.float64) for _ in range(3)], torch.randn(4, 3)
    _, parts = multi_exit_loss(logits, y, distill_temperature=3.0, distill_weight=0.25, teacher_logits=teacher,
                               teacher_weight=[0.5, 0.25, 0.75], teacher_temperature=2.0)
    s, t = [x.numpy() for x in logits], teacher.double().numpy()
    ce = [float(F.cross_entropy(x, y)) for x in logits]
    refs = [0.25 * ce[0] + 0.25 * _np_kd(s[0], s[2], 3.0) + 0.5 * _np_kd(s[0], t, 2.0),
            0.5 * ce[1] + 0.25 * _np_kd(s[1], s[2], 3.0) + 0.25 * _np_kd(s[1], t, 2.0),
            0.25 * ce[2] + 0.75 * _np_kd(s[2], t, 2.0)]  # the final exit: teacher only
    for part, ref in zip(parts, refs):
        assert part.item() == pytest.approx(ref, rel=1e-5)
    x = logits[0].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda e: multi_exit_loss([e, logits[2]], y, teacher_logits=teacher.double(), teacher_weight=0.5)[0], (x,))


@pytest.mark.parametrize(("weight", "distill"), [(1.5, 0.0), (-0.1, 0.0), ([0.5], 0.0), (0.6, 0.5)])
def test_multi_exit_loss_bad_teacher_weight(weight, distill):
    logits = [torch.randn(2, 3), torch.randn(2, 3)]
    with pytest.raises(ValueError, match="teacher_weight"):
        multi_exit_loss(logits, torch.tensor([0, 1]), teacher_logits=torch.randn(2, 3), teacher_weight=weight,
                        distill_weight=distill)


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


# ------------------------------------------------------------------------------ modern logit losses
def _pair(seed=0, b=16, c=10, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(b, c, generator=g, dtype=torch.float64) * scale
    t = torch.randn(b, c, generator=g, dtype=torch.float64) * scale
    y = torch.randint(0, c, (b,), generator=g)
    return s, t, y


def _np_standardize(z: np.ndarray) -> np.ndarray:
    return (z - z.mean(-1, keepdims=True)) / z.std(-1, ddof=1, keepdims=True)  # the authors' torch.std


def test_standardize_logits_matches_numpy_and_handles_constant_rows():
    s, _, _ = _pair()
    np.testing.assert_allclose(standardize_logits(s).numpy(), _np_standardize(s.numpy()), rtol=1e-12)
    const = torch.full((2, 5), 3.0, dtype=torch.float64, requires_grad=True)
    out = standardize_logits(const)
    out.sum().backward()
    assert torch.equal(out, torch.zeros_like(out)) and torch.isfinite(const.grad).all()
    assert torch.autograd.gradcheck(standardize_logits, (s.clone().requires_grad_(),))
    with pytest.raises(ValueError, match="at least 2 classes"):
        standardize_logits(torch.randn(3, 1))


@pytest.mark.parametrize("T", [1.0, 2.0, 4.0])
def test_ls_kd_loss_matches_numpy_formula(T):
    s, t, _ = _pair(1)
    ref = _np_kd(_np_standardize(s.numpy()), _np_standardize(t.numpy()), T)
    assert ls_kd_loss(s, t, T).item() == pytest.approx(ref, rel=1e-10)
    # invariant to each sample's logit shift and scale (the point of standardisation)
    assert ls_kd_loss(s, 5 * t + 2, T).item() == pytest.approx(ref, rel=1e-9)
    assert torch.autograd.gradcheck(lambda x: ls_kd_loss(x, t, T), (s.clone().requires_grad_(),))


def _np_dkd(s: np.ndarray, t: np.ndarray, y: np.ndarray, T: float, alpha: float, beta: float) -> float:
    """Zhao et al. (2022), Eq. 1-4, written out per sample."""
    total = 0.0
    for si, ti, yi in zip(s, t, y):
        ps, pt = _np_softmax(si / T), _np_softmax(ti / T)
        bs, bt = np.array([ps[yi], 1 - ps[yi]]), np.array([pt[yi], 1 - pt[yi]])
        tckd = (bt * np.log(bt / bs)).sum()
        rest = np.arange(len(si)) != yi
        qs, qt = ps[rest] / ps[rest].sum(), pt[rest] / pt[rest].sum()
        nckd = (qt * np.log(qt / qs)).sum()
        total += alpha * tckd + beta * nckd
    return total / len(s) * T * T


@pytest.mark.parametrize(("T", "alpha", "beta"), [(4.0, 1.0, 8.0), (1.0, 0.5, 2.0), (2.0, 0.0, 1.0)])
def test_dkd_loss_matches_numpy_formula(T, alpha, beta):
    s, t, y = _pair(2)
    ref = _np_dkd(s.numpy(), t.numpy(), y.numpy(), T, alpha, beta)
    assert dkd_loss(s, t, y, T, alpha, beta).item() == pytest.approx(ref, rel=1e-10)
    assert torch.autograd.gradcheck(lambda x: dkd_loss(x, t, y, T, alpha, beta), (s.clone().requires_grad_(),))


def test_dkd_loss_matches_the_authors_code_transcribed():
    """mdistiller's ``dkd_loss`` (masking with -1000), transcribed; in float64 the mask is exact."""
    s, t, y = _pair(3)
    T, alpha, beta = 4.0, 1.0, 8.0
    gt = F.one_hot(y, s.shape[1]).bool()
    ps, pt = F.softmax(s / T, 1), F.softmax(t / T, 1)
    cat = lambda p: torch.cat([(p * gt).sum(1, keepdims=True), (p * ~gt).sum(1, keepdims=True)], 1)  # noqa: E731
    tckd = F.kl_div(torch.log(cat(ps)), cat(pt), reduction="sum") * T**2 / len(y)
    nckd = F.kl_div(F.log_softmax(s / T - 1000.0 * gt, 1), F.softmax(t / T - 1000.0 * gt, 1),
                    reduction="sum") * T**2 / len(y)
    assert dkd_loss(s, t, y, T, alpha, beta).item() == pytest.approx((alpha * tckd + beta * nckd).item(), rel=1e-9)


def test_dkd_warmup_factor():
    assert [dkd_warmup_factor(e, 4) for e in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert dkd_warmup_factor(0, 0) == 1.0


def _dist_reference(z_s, z_t, beta, gamma, tau, tau_squared=True):
    """The authors' DIST code (``dist_kd.py``), transcribed (with its 1e-8 in the denominators)."""
    def pearson(a, b, eps=1e-8):
        a, b = a - a.mean(1).unsqueeze(1), b - b.mean(1).unsqueeze(1)
        return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + eps)

    y_s, y_t = (z_s / tau).softmax(dim=1), (z_t / tau).softmax(dim=1)
    inter = 1 - pearson(y_s, y_t).mean()
    intra = 1 - pearson(y_s.transpose(0, 1), y_t.transpose(0, 1)).mean()
    factor = tau**2 if tau_squared else 1.0
    return factor * (beta * inter + gamma * intra)


@pytest.mark.parametrize(("T", "beta", "gamma", "tau_squared"), [(1.0, 1.0, 1.0, True), (4.0, 2.0, 0.5, True),
                                                                 (4.0, 1.0, 1.0, False)])
def test_dist_loss_matches_the_authors_code_and_gradcheck(T, beta, gamma, tau_squared):
    s, t, _ = _pair(4)
    ref = _dist_reference(s, t, beta, gamma, T, tau_squared).item()
    assert dist_loss(s, t, T, beta, gamma, tau_squared=tau_squared).item() == pytest.approx(ref, rel=1e-6)
    assert torch.autograd.gradcheck(lambda x: dist_loss(x, t, T, beta, gamma, tau_squared=tau_squared),
                                    (s.clone().requires_grad_(),))


def test_dist_loss_numpy_pearson_and_constant_columns():
    s, t, _ = _pair(5, b=6, c=4)
    ps, pt = _np_softmax(s.numpy()), _np_softmax(t.numpy())
    inter = 1 - np.mean([np.corrcoef(a, b)[0, 1] for a, b in zip(ps, pt)])
    intra = 1 - np.mean([np.corrcoef(a, b)[0, 1] for a, b in zip(ps.T, pt.T)])
    assert dist_loss(s, t, 1.0, 1.0, 1.0).item() == pytest.approx(inter + intra, rel=1e-10)
    # a class column that is constant over the batch (one-hot rows): correlation 0, finite gradients
    s2 = torch.tensor([[1e4, 0.0, 0.0], [1e4, 0.0, 0.0]], requires_grad=True)
    loss = dist_loss(s2, torch.randn(2, 3), 1.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s2.grad).all()


def test_mixture_log_probs_matches_numpy():
    g = torch.Generator().manual_seed(6)
    ts = [torch.randn(8, 5, generator=g, dtype=torch.float64) * 4 for _ in range(3)]
    w, T = [0.2, 0.3, 0.5], 2.0
    ref = np.log(sum(wk * _np_softmax(t.numpy() / T) for wk, t in zip(w, ts)))
    np.testing.assert_allclose(mixture_log_probs(ts, T, w).numpy(), ref, rtol=1e-12)
    np.testing.assert_allclose(mixture_log_probs(torch.stack(ts, 1), T, [2, 3, 5]).numpy(), ref, rtol=1e-12)
    avg = sum(wk * t.numpy() for wk, t in zip(w, ts))
    np.testing.assert_allclose(mixture_log_probs(ts, T, w, mode="logits").exp().numpy(), _np_softmax(avg / T),
                               rtol=1e-12)
    # one teacher: the plain tempered log-probabilities; the KD loss on them is the usual one
    np.testing.assert_allclose(mixture_log_probs(ts[0], T).numpy(), np.log(_np_softmax(ts[0].numpy() / T)), rtol=1e-12)
    s = torch.randn(8, 5, dtype=torch.float64)
    assert kd_loss(s, mixture_log_probs(ts[0], T), T, log_target=True).item() == pytest.approx(
        kd_loss(s, ts[0], T).item(), rel=1e-12)
    mix = mixture_log_probs(ts, T, w)
    assert torch.autograd.gradcheck(lambda x: kd_loss(x, mix, T, log_target=True), (s.clone().requires_grad_(),))


@pytest.mark.parametrize(("weights", "match"), [([1.0], "3 finite numbers"), ([1, -1, 1], ">= 0"),
                                                ([0, 0, 0], "positive sum"), ([1, float("nan"), 1], "finite"),
                                                ("abc", "one per teacher")])
def test_bad_teacher_weights(weights, match):
    with pytest.raises(ValueError, match=rf"Expected `teacher_weights` to be .*{match}"):
        normalize_teacher_weights(weights, 3)


def test_bad_mixing_mode_and_class_counts():
    ts = [torch.randn(4, 5), torch.randn(4, 5)]
    with pytest.raises(ValueError, match=r"Expected `mode` to be one of \['probs', 'logits'\]"):
        mixture_log_probs(ts, 1.0, mode="mean")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="same shape"):
        mixture_log_probs([torch.randn(4, 5), torch.randn(4, 3)], 1.0)


@pytest.mark.parametrize(("call", "match"), [
    (lambda s, t, y: dkd_loss(s, t, y, 4.0, alpha=-1.0), "Expected `alpha` to be a non-negative float"),
    (lambda s, t, y: dkd_loss(s, t, y, 4.0, beta=float("inf")), "Expected `beta` to be a non-negative float"),
    (lambda s, t, y: dkd_loss(s, t, y.float(), 4.0), "Expected `target` to be 4 class indices"),
    (lambda s, t, y: dkd_loss(s, t, y[:2], 4.0), "Expected `target` to be 4 class indices"),
    (lambda s, t, y: dist_loss(s, t, 1.0, beta=-0.1), "Expected `beta` to be a non-negative float"),
    (lambda s, t, y: dist_loss(s, t, 1.0, gamma=-2), "Expected `gamma` to be a non-negative float"),
    (lambda s, t, y: dist_loss(s, t, 1.0, tau_squared="yes"), "Expected `tau_squared` to be a bool"),
    (lambda s, t, y: dist_loss(s, t, 0.0), "Expected `temperature` to be a positive float"),
    (lambda s, t, y: dkd_loss(s, t[:, :3], y, 4.0), "same number of classes"),
])
def test_dkd_and_dist_bad_hyperparameters(call, match):
    with pytest.raises(ValueError, match=match):
        call(torch.randn(4, 5), torch.randn(4, 5), torch.tensor([0, 1, 2, 3]))


# ------------------------------------------------------------------------------ mixed precision
_Y = torch.tensor([0, 3, 7, 9, 1, 2, 5, 4])
LOSSES = {
    "kd_loss": lambda s, t, T: kd_loss(s, t, T),
    "ls_kd_loss": lambda s, t, T: ls_kd_loss(s, t, T),
    "dkd_loss": lambda s, t, T: dkd_loss(s, t, _Y, T),
    "dist_loss": lambda s, t, T: dist_loss(s, t, T),
    "mixture_kd": lambda s, t, T: kd_loss(s, mixture_log_probs([t, t.flip(0)], T, [0.3, 0.7]), T, log_target=True),
    "cos_embed_loss": lambda s, t, T: cosine_logit_loss(s, t),
    "soft_target_loss": lambda s, t, T: soft_target_loss(s, F.softmax(t.float() / T, -1), T),
}


@pytest.mark.parametrize("name", list(LOSSES))
@pytest.mark.parametrize("T", [0.05, 0.5, 1.0, 4.0, 20.0])
@pytest.mark.parametrize("scale", [1.0, 1e2, 1e4])
def test_losses_are_finite_under_bf16_autocast_and_float16(name, T, scale):
    g = torch.Generator().manual_seed(7)
    base_s, base_t = torch.randn(8, 10, generator=g) * scale, torch.randn(8, 10, generator=g) * scale
    for dtype, autocast in ((torch.bfloat16, True), (torch.float16, False), (torch.bfloat16, False)):
        s = base_s.to(dtype).requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = LOSSES[name](s, base_t.to(dtype), T)
        loss.backward()
        assert loss.dtype == torch.float32 and torch.isfinite(loss), (dtype, loss)
        assert s.grad is not None and torch.isfinite(s.grad).all(), dtype
        # the value is the float32 value of the same (rounded) inputs: nothing is computed in low precision
        ref = LOSSES[name](s.detach().float(), base_t.to(dtype).float(), T)
        assert loss.item() == pytest.approx(ref.item(), rel=1e-6, abs=1e-6)


@pytest.mark.parametrize("name", list(LOSSES))
@pytest.mark.parametrize("T", [0.05, 0.5, 1.0, 4.0, 20.0])
def test_value_under_bf16_autocast_is_close_to_float32(name, T):
    """Student logits from a Linear layer under bf16 autocast (bf16 logits) vs the same model in float32."""
    g = torch.Generator().manual_seed(8)
    layer = torch.nn.Linear(32, 10)
    x, t = torch.randn(8, 32, generator=g), torch.randn(8, 10, generator=g) * 3
    ref = LOSSES[name](layer(x) * 3, t, T)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        s = layer(x) * 3
        value = LOSSES[name](s, t, T)
    assert s.dtype == torch.bfloat16
    assert value.item() == pytest.approx(ref.item(), rel=1e-2, abs=1e-4)
