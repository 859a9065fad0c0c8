"""The top-k teacher cache (issue 15): its math against numpy, the module path, and its bad inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kd_toolkit import DistillationModule
from kd_toolkit.distillation.topk import compress_topk, index_dtype, topk_soft_target_log_probs
from tests.conftest import TinyMLP


def _numpy_target(z: np.ndarray, k: int, t: float) -> np.ndarray:
    """Independent reference: exact tempered top-k probabilities, the rest of the mass spread uniformly."""
    out = np.empty_like(z, dtype=np.float64)
    for row, logits in enumerate(z.astype(np.float64)):
        p = np.exp(logits / t - (logits / t).max())
        p /= p.sum()
        top = np.argsort(-logits)[:k]
        rest = np.setdiff1d(np.arange(len(logits)), top)
        out[row, rest] = p[rest].sum() / len(rest)
        out[row, top] = p[top]
    return out


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_topk_target_matches_numpy(temperature):
    z = torch.randn(6, 50) * 3
    values, indices, tail = compress_topk(z, 7, temperature)
    assert values.dtype == torch.float16 and indices.dtype == torch.int16 and tail.dtype == torch.float32
    got = topk_soft_target_log_probs(values, indices, tail, 50, temperature).exp().double().numpy()
    np.testing.assert_allclose(got, _numpy_target(z.numpy(), 7, temperature), rtol=5e-3, atol=1e-6)
    np.testing.assert_allclose(got.sum(-1), 1.0, rtol=1e-5)


def test_topk_target_is_exact_when_the_tail_is_flat():
    z = torch.tensor([[5.0, 3.0, 0.0, 0.0, 0.0]])
    values, indices, tail = compress_topk(z, 2, 2.0)
    exact = torch.log_softmax(z / 2.0, -1)
    torch.testing.assert_close(topk_soft_target_log_probs(values, indices, tail, 5, 2.0), exact, rtol=1e-4, atol=1e-4)


def test_topk_compress_several_teachers_and_index_dtype():
    values, indices, tail = compress_topk(torch.randn(4, 3, 20), 5, 4.0)
    assert values.shape == indices.shape == (4, 3, 5) and tail.shape == (4, 3)
    assert index_dtype(1000) == torch.int16 and index_dtype(40_000) == torch.int32


def test_topk_target_under_autocast_is_float32():
    values, indices, tail = compress_topk(torch.randn(2, 30), 4, 4.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert topk_soft_target_log_probs(values, indices, tail, 30, 4.0).dtype == torch.float32


@pytest.mark.parametrize("k", [0, -1, 2.5, True, "3"])
def test_bad_k(k):
    with pytest.raises(ValueError, match="Expected `cache_k` to be a positive int"):
        DistillationModule(TinyMLP(), TinyMLP(), cache_teacher_outputs="topk", cache_k=k)


def test_k_not_smaller_than_the_class_count():
    with pytest.raises(ValueError, match="smaller than the teacher's class count 10"):
        compress_topk(torch.randn(2, 10), 10, 1.0)


@pytest.mark.parametrize("loss", ["cos_embed_loss", "dkd_loss", "dist_loss", "ls_kd_loss"])
def test_topk_refuses_losses_that_need_full_logits(loss):
    with pytest.raises(ValueError, match=f"the losses \\['{loss}'\\] need the full logits"):
        DistillationModule(TinyMLP(), TinyMLP(), cache_teacher_outputs="topk", loss_weights={loss: 1.0})


def test_topk_refuses_standardisation_and_logit_mixing():
    with pytest.raises(ValueError, match="cannot standardise"):
        DistillationModule(TinyMLP(), TinyMLP(), cache_teacher_outputs="topk", logit_standardization=True)
    with pytest.raises(ValueError, match="teacher_mixing='logits'"):
        DistillationModule(TinyMLP(), [TinyMLP(), TinyMLP()], cache_teacher_outputs="topk", teacher_mixing="logits")


def test_bad_cache_mode():
    with pytest.raises(ValueError, match="Expected `cache_teacher_outputs` to be a bool, 'exact' or 'topk'"):
        DistillationModule(TinyMLP(), TinyMLP(), cache_teacher_outputs="top-k")


def test_module_topk_target_is_close_to_the_exact_one(loaders, trained_teacher):
    from kd_toolkit.data import with_sample_indices

    loader = with_sample_indices(loaders("train", shuffle=False))
    module = DistillationModule(TinyMLP(), [trained_teacher, trained_teacher], cache_teacher_outputs="topk", cache_k=5,
                                temperature=4.0)
    module._topk_cache = module.build_topk_teacher_cache(loader)
    assert module._topk_cache.bytes_per_sample() == 2 * (5 * 2 + 5 * 2 + 4)
    (x, _), idx = next(iter(loader))
    exact = torch.log_softmax(trained_teacher(x) / 4.0, -1)
    got = module.topk_soft_target(idx)
    kl = (exact.exp() * (exact - got)).sum(-1)
    assert math.isfinite(float(kl.max())) and float(kl.max()) < 0.1 and float(kl.mean()) < 0.03  # k=5 of 10, T=4
