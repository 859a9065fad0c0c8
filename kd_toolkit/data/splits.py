"""Stratified random splits of sample indices with a fixed seed (scikit-learn's ``train_test_split``)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from torch import Tensor

from kd_toolkit._checks import check_int

__all__ = ["split_sizes", "stratified_split"]


def split_sizes(total: int, fractions: Sequence[float]) -> list[int]:
    """Part sizes ``total * fraction`` rounded by largest remainder, so that they sum to ``total``.

    Args:
        total: Number of samples.
        fractions: Positive fractions summing to 1.

    Returns:
        One size per fraction.

    Example:
        >>> split_sizes(1797, [0.6, 0.15, 0.25])
        [1078, 270, 449]
    """
    fracs = _check_fractions(fractions)
    exact = check_int("total", total, minimum=0) * fracs
    sizes = np.floor(exact).astype(np.int64)
    sizes[np.argsort(-(exact - sizes), kind="stable")[: total - sizes.sum()]] += 1
    return sizes.tolist()


def stratified_split(
    labels: np.ndarray | Tensor | Sequence[int], fractions: Sequence[float], seed: int
) -> list[np.ndarray]:
    """Split sample indices at random into ``len(fractions)`` parts, stratified by label.

    Part sizes are ``N * fraction`` rounded by largest remainder (:func:`split_sizes`). The parts are
    taken one after the other with ``sklearn.model_selection.train_test_split(stratify=...)``, so every
    part holds its fraction of every class to within about one sample. The same ``seed`` gives the
    same split.

    Args:
        labels: Class label per sample, shape ``(N,)``.
        fractions: Positive fractions summing to 1.
        seed: Seed of the split.

    Returns:
        One sorted int64 index array per fraction.

    Raises:
        ValueError: On bad ``fractions`` or ``labels``, or when a class is too small to be stratified
            (fewer than 2 samples, or a part too small to hold one sample of every class).

    Example:
        >>> parts = stratified_split([0, 0, 0, 0, 1, 1, 1, 1], [0.5, 0.5], seed=0)
        >>> [len(p) for p in parts], [int(sum(p >= 4)) for p in parts]
        ([4, 4], [2, 2])
    """
    y = np.asarray(labels)
    if y.ndim != 1:
        raise ValueError(f"Expected `labels` to be 1-D class ids of shape (N,), but got shape {y.shape}.")
    sizes = split_sizes(len(y), fractions)
    rng = np.random.RandomState(check_int("seed", seed))
    pool, parts = np.arange(len(y)), []
    for size in sizes[:-1]:
        pool, part = _take(pool, y, size, rng)
        parts.append(part)
    parts.append(pool)
    return [np.sort(p).astype(np.int64) for p in parts]


def _check_fractions(fractions: Sequence[float]) -> np.ndarray:
    fracs = np.asarray(list(fractions), dtype=np.float64)
    if fracs.ndim != 1 or fracs.size == 0 or not np.all(fracs > 0) or abs(fracs.sum() - 1.0) > 1e-6:
        raise ValueError(f"Expected `fractions` to be positive floats summing to 1, but got {list(fractions)!r}.")
    return fracs


def _take(pool: np.ndarray, y: np.ndarray, size: int, rng: np.random.RandomState) -> tuple[np.ndarray, np.ndarray]:
    """``(rest, part)``: ``size`` indices of ``pool`` drawn stratified by ``y``, and the others."""
    if size == 0 or size == len(pool):
        empty = pool[:0]
        return (pool, empty) if size == 0 else (empty, pool)
    from sklearn.model_selection import train_test_split  # slow import, only when needed

    try:
        rest, part = train_test_split(pool, test_size=size, stratify=y[pool], random_state=rng)
    except ValueError as err:
        raise ValueError(f"Expected every class to have at least 2 samples and every part at least one sample "
                         f"per class, but got class counts {np.unique(y[pool], return_counts=True)[1].tolist()} "
                         f"for a part of {size} of {len(pool)} samples ({err})") from err
    return rest, part
