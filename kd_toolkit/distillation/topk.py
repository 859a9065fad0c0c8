"""The top-k teacher cache's math: compress logits to top-k + one tail bucket, and rebuild the tempered target.

Per sample (and per teacher) the cache keeps the ``k`` largest logits (float16), their class indices (int16 when
the class count fits, else int32) and **one float32 tail number: the log-sum-exp of the other ``C - k`` logits
divided by the temperature**, ``log sum_{j not in top-k} exp(z_j / T)``. With it the tempered target is rebuilt as

* ``q_i = exp(z_i / T) / Z`` for the top-k classes (exact up to float16 rounding of ``z_i``),
* ``q_j = (1 - sum_topk q) / (C - k)`` for every other class: the tail's **mass is exact**, only its spread over the
  tail classes is approximated (uniform),

with ``Z = exp(logsumexp(z_topk / T)) + exp(tail)``. Why uniform: nothing stored says which tail class holds the
mass, and for any prior that treats the tail classes alike the uniform spread is the mean target, which minimises
the expected ``KL(q_T || q~_T)`` and makes the KD gradient ``(p - q~) / T`` right on average over the tail; its
error is ``m * KL(tail shape || uniform)`` (``m`` the tail mass), so it shrinks with a larger ``k`` or a flatter
tail. Spreading the mass like the student's own tail instead (the KL between the ``(k + 1)``-bin distributions)
was measured and rejected (``benchmarks.cache_scaling.tail_rules``): it lowered the loss error only for students
already close to the teacher, and its gradient was seldom closer in direction to the exact one. The tail number
depends on ``T``: a top-k cache is built for one temperature (the module's) and a persistent cache file is keyed
by it. Everything is computed in float32 log space, also under autocast.

Example:
    >>> logits = torch.tensor([[4.0, 1.0, 0.0, -1.0]])
    >>> values, indices, tail = compress_topk(logits, k=2, temperature=1.0)
    >>> indices.tolist(), round(float(tail[0]), 4)
    ([[0, 1]], 0.3133)
    >>> round(topk_soft_target_log_probs(values, indices, tail, 4, 1.0).exp().sum().item(), 5)
    1.0
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["check_cache_k", "compress_topk", "index_dtype", "topk_soft_target_log_probs"]


def check_cache_k(k: object) -> int:
    """``k`` as an int ``>= 1`` (its upper bound, the class count, is checked when the cache is built)."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"Expected `cache_k` to be a positive int, but got {k!r}.")
    return k


def index_dtype(num_classes: int) -> torch.dtype:
    """int16 when every class index fits in it, else int32."""
    return torch.int16 if num_classes <= torch.iinfo(torch.int16).max + 1 else torch.int32


def compress_topk(logits: Tensor, k: int, temperature: float) -> tuple[Tensor, Tensor, Tensor]:
    """``(values float16 (..., k), indices (..., k), tail float32 (...))`` of logits ``(..., C)``.

    Raises:
        ValueError: ``k`` is not smaller than the class count ``C`` (then the exact cache is as small).
    """
    num_classes = logits.shape[-1]
    if k >= num_classes:
        raise ValueError(f"Expected `cache_k` to be smaller than the teacher's class count {num_classes}, but got "
                         f"{k}; use cache_teacher_outputs='exact' (as small) or a smaller `cache_k`.")
    z = logits.float()
    values, indices = z.topk(k, dim=-1)  # (..., k), largest first
    rest = (z / temperature).scatter(-1, indices, -math.inf)  # the tail's tempered logits, top-k masked out
    return values.half(), indices.to(index_dtype(num_classes)), torch.logsumexp(rest, dim=-1)


def topk_soft_target_log_probs(values: Tensor, indices: Tensor, tail: Tensor, num_classes: int,
                               temperature: float) -> Tensor:
    """Log-probabilities ``(..., C)`` of the tempered target rebuilt from a top-k cache entry (float32).

    ``values``/``indices`` ``(..., k)``, ``tail`` ``(...)`` as :func:`compress_topk` returns them for the same
    ``temperature``; the tail's mass is spread uniformly over the ``C - k`` other classes.
    """
    k = values.shape[-1]
    with torch.autocast(device_type=values.device.type, enabled=False):
        top = values.float() / temperature  # (..., k)
        tail = tail.float().unsqueeze(-1)  # (..., 1)
        log_z = torch.logsumexp(torch.cat([top, tail], dim=-1), dim=-1, keepdim=True)  # (..., 1)
        tail_each = tail - log_z - math.log(num_classes - k)  # log q_j of each tail class
        dense = tail_each.expand(*top.shape[:-1], num_classes).clone()
        return dense.scatter(-1, indices.long(), top - log_z)
