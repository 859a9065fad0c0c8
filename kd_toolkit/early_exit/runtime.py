"""The early-exit runtime: the one copy of the exit rule, the batched chain and the cost counters.

Every place that decides which samples leave an exit goes through this file:
``EarlyExitNetwork.predict`` and its segments, the standalone loader (``deploy.py``), threshold
calibration and the training module's validation metrics. The rule (:func:`leaves`): a sample
leaves exit ``k`` when its confidence (:func:`confidence_scores`) is strictly greater than
threshold ``k``. Confidences never exceed 1.0, so a threshold of 1.0 closes an exit (its head need
not run, :func:`head_runs`); the final exit takes every sample still there.

This file imports nothing but torch (no Lightning, no kd_toolkit), so that it can be copied to a
device together with ``deploy.py``. Callers reach it through the module (``runtime.decide(...)``)
or through functions defined here, which look :func:`leaves` up at call time: one rule to read,
test and patch.

Example:
    >>> scores = confidence_scores(torch.tensor([[4.0, 0.0], [0.0, 0.0]]))  # (B,) = 0.98, 0.5
    >>> exit_indices([scores], [0.9])  # sample 0 leaves at exit 0, sample 1 at the final exit 1
    tensor([0, 1])
"""

from __future__ import annotations

import contextlib
import math
import numbers
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal, cast

import torch
from torch import Tensor, nn

__all__ = [
    "CONFIDENCE_RULES",
    "ConfidenceRule",
    "average_macs",
    "block_step",
    "check_confidence",
    "check_thresholds",
    "confidence_scores",
    "decide",
    "eval_mode",
    "exit_costs",
    "exit_indices",
    "hand_over",
    "head_runs",
    "is_threshold",
    "leaves",
    "leaves_one",
    "per_sample_macs",
    "run_chain",
    "run_one",
]

ConfidenceRule = Literal["max_prob", "entropy"]
CONFIDENCE_RULES = ("max_prob", "entropy")
#: Half-width of the band around a threshold where :func:`leaves_one` leaves the decision to the tensor rule: the
#: float64 score it computes differs from the float32 one of :func:`confidence_scores` by ~1e-6 at most.
ONE_SAMPLE_BAND = 1e-4
#: One exit's result in a chain: ``(logits (B, C) or None when the head was skipped, exited (B,) bool,
#: features (B, ...) of the whole batch)``.
StepResult = tuple[Tensor | None, Tensor, Tensor]


# ----------------------------------------------------------------------------------------- the rule
def check_confidence(confidence: object) -> None:
    """Raise ``ValueError`` unless ``confidence`` is one of :data:`CONFIDENCE_RULES`."""
    if confidence not in CONFIDENCE_RULES:
        raise ValueError(f"Expected `confidence` to be one of {CONFIDENCE_RULES}, but got {confidence!r}.")


def confidence_scores(logits: Tensor, confidence: ConfidenceRule = "max_prob") -> Tensor:
    """Confidence in [0, 1] of each row of ``logits``; a sample exits when it is > the threshold.

    Args:
        logits: Exit logits, shape ``(B, C)``.
        confidence: ``"max_prob"`` (largest softmax probability) or ``"entropy"``
            (``1 - H(p) / log(C)``, 1 for a one-hot distribution, 0 for a uniform one).

    Returns:
        Scores of shape ``(B,)``.

    Example:
        >>> confidence_scores(torch.tensor([[0.0, 0.0], [100.0, 0.0]]))
        tensor([0.5000, 1.0000])
    """
    check_confidence(confidence)
    log_p = torch.log_softmax(logits.float(), dim=-1)  # (B, C), float32 even under autocast
    if confidence == "max_prob":  # the largest log-probability is <= 0 exactly, so exp() is in [0, 1]: no clamp
        return log_p.amax(dim=-1).exp()  # (B,)
    num_classes = logits.shape[-1]
    if num_classes < 2:
        return torch.ones(logits.shape[:-1], device=logits.device)
    entropy = -(log_p.exp() * log_p).sum(dim=-1)  # (B,)
    return (1.0 - entropy / math.log(num_classes)).clamp(0.0, 1.0)


def is_threshold(value: object) -> bool:
    """Whether ``value`` is a valid exit threshold: a number (not a bool) in (0, 1]; NaN is not."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and 0.0 < float(value) <= 1.0


def check_thresholds(thresholds: Any, count: int, name: str = "thresholds") -> list[float]:
    """``count`` exit thresholds as floats (a sequence, tensor or array), or ``ValueError``."""
    values = thresholds.tolist() if hasattr(thresholds, "tolist") else thresholds  # tensors, arrays
    ok = isinstance(values, Sequence) and not isinstance(values, str) and len(values) == count
    if not ok or not all(is_threshold(t) for t in values):
        raise ValueError(
            f"Expected `{name}` to be {count} number(s) in (0, 1] (one per exit except the final one; "
            f"1.0 means never exit there), but got {thresholds!r}."
        )
    return [float(t) for t in values]


def head_runs(threshold: float) -> bool:
    """Whether an exit head has to run: no confidence exceeds a threshold of 1.0."""
    return threshold < 1.0


def leaves(scores: Any, threshold: float | Tensor) -> Any:
    """THE exit rule: ``(B,)`` bool, True where the confidence is strictly greater than the threshold.

    ``scores`` is a ``(B,)`` tensor, or one sample's confidence as a Python float (then a bool comes back).
    """
    return scores > threshold


def decide(features: Tensor, logits: Tensor | None, threshold: float | None, confidence: str) -> StepResult:
    """One exit's decision, as a chain step's result ``(logits, exited, features)``.

    Args:
        features: Block output of the whole batch ``(B, ...)``; the logits themselves after the last block.
        logits: The exit head's logits ``(B, C)``, or ``None`` when the head was skipped (nobody leaves).
        threshold: The exit's threshold, or ``None`` at the final exit (everybody leaves).
        confidence: ``"max_prob"`` or ``"entropy"``.
    """
    batch, device = features.shape[0], features.device
    if threshold is None:
        return (features if logits is None else logits), torch.ones(batch, dtype=torch.bool, device=device), features
    if logits is None:
        return None, torch.zeros(batch, dtype=torch.bool, device=device), features
    return logits, leaves(confidence_scores(logits, confidence), threshold), features  # type: ignore[arg-type]


def leaves_one(logits: Tensor, threshold: float, confidence: str, values: list[float] | None = None) -> bool:
    """:func:`leaves` for one sample's logits ``(1, C)``, as a bool, with one host transfer (batch-1 latency).

    The confidence is computed in Python floats from the logits (``values``: ``logits.tolist()[0]`` when the caller
    has it already); where it is within :data:`ONE_SAMPLE_BAND` of the threshold, or any logit is not finite, the
    tensor rule itself decides, so the answer is always ``bool(leaves(confidence_scores(logits, confidence),
    threshold))``, at a fraction of its cost.
    """
    values = logits.tolist()[0] if values is None else values
    if math.isfinite(sum(values)):
        top = max(values)
        exps = [math.exp(v - top) for v in values]
        total = sum(exps)
        if confidence == "max_prob":
            score = 1.0 / total  # the largest softmax probability
        elif len(values) < 2:
            score = 1.0
        else:
            entropy = -sum(e / total * math.log(e / total) for e in exps if e > 0.0)
            score = min(max(1.0 - entropy / math.log(len(values)), 0.0), 1.0)
        if abs(score - threshold) > ONE_SAMPLE_BAND:
            return bool(leaves(score, threshold))
    return bool(leaves(confidence_scores(logits, cast(ConfidenceRule, confidence)), threshold).item())


def exit_indices(scores: Sequence[Tensor] | Tensor, thresholds: Sequence[float]) -> Tensor:
    """Exit each sample leaves at, from the confidences of every early exit (all computed already).

    Args:
        scores: Confidences of the early exits, ``num_exits - 1`` tensors ``(N,)`` (or one ``(E-1, N)``).
        thresholds: One threshold per early exit.

    Returns:
        ``(N,)`` long: the first exit whose threshold is exceeded, ``num_exits - 1`` (the final exit) if none.
    """
    first = scores[0]
    done = torch.ones(first.shape[0], dtype=torch.bool, device=first.device)  # (N,) the final exit takes the rest
    masks = [leaves(s, t) for s, t in zip(scores, thresholds)] + [done]
    return torch.stack(masks).int().argmax(dim=0)  # (N,) argmax returns the first maximum


# ----------------------------------------------------------------------------------------- the chain
def block_step(block: Callable[[Tensor], Tensor], head: Callable[[Tensor], Tensor] | None,
               threshold: float | None, confidence: str, x: Tensor, *, skip_closed_head: bool = True) -> StepResult:
    """Run one block and its exit head (none after the last block) and decide who leaves.

    With ``skip_closed_head`` a head whose threshold is 1.0 is not run (nobody could leave there).
    """
    features = block(x)  # (B, ...)
    closed = skip_closed_head and threshold is not None and not head_runs(threshold)
    logits = head(features) if head is not None and not closed else None  # (B, C)
    return decide(features, logits, threshold, confidence)


def hand_over(result: StepResult, is_last: bool) -> tuple[Tensor, Tensor, Tensor | None]:
    """A segment's output: ``(logits, exited, features of the samples that stay)``, ``None`` after the last."""
    logits, exited, features = result  # segments always run their head: logits is a tensor
    return cast(Tensor, logits), exited, None if is_last else features[~exited]


def run_one(parts: Sequence[tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor] | None, float | None]],
            x: Tensor, confidence: str) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`run_chain` for one sample ``(1, ...)``: the same results, with less work per exit.

    ``parts``: ``(block, head, threshold)`` per exit, ``(block, None, None)`` for the final one. The sample stops at
    the first exit it leaves; the decision is :func:`leaves_one` and the prediction the first largest logit, both
    from one host transfer of the logits per exit; no bookkeeping tensors besides the two results.
    """
    logits, values, exit_at = x, [0.0], len(parts) - 1
    for index, (block, head, threshold) in enumerate(parts):
        x = block(x)  # (1, ...)
        if threshold is None:  # the final exit: everybody leaves
            logits, values = x, x.tolist()[0]
            break
        if head is not None and head_runs(threshold):
            logits = head(x)  # (1, C)
            values = logits.tolist()[0]
            if leaves_one(logits, threshold, confidence, values):
                exit_at = index
                break
    if math.isfinite(sum(values)):
        predicted = values.index(max(values))  # torch's argmax also returns the first largest
    else:  # NaN or inf: torch's argmax decides (NaN counts as the largest)
        predicted = int(logits.argmax(dim=-1))
    return (logits.new_full((1,), predicted, dtype=torch.long),  # new_full: the logits' device, no device argument
            logits.new_full((1,), exit_at, dtype=torch.long), logits)


def run_chain(steps: Sequence[Callable[[Tensor], StepResult]], x: Tensor,
              num_classes: int) -> tuple[Tensor, Tensor, Tensor]:
    """Run exit steps on a shrinking batch and scatter the results back to the input order.

    Each step runs only on the samples still undecided; the last step must let everybody leave.

    Returns:
        ``(predictions (B,) long, exit_index (B,) long, logits (B, C) of the exit each sample left at)``.
    """
    batch, device = x.shape[0], x.device
    if batch == 1:  # one sample (edge latency): stop at its exit, no bookkeeping tensors
        for index, step in enumerate(steps):
            logits, exited, x = step(x)
            if logits is not None and exited.item():
                return logits.argmax(dim=-1), torch.full((1,), index, dtype=torch.long, device=device), logits
    rows, last = batch, len(steps) - 1
    remaining: Tensor | None = None  # (R,) input positions of the undecided rows; None while they are 0..B-1
    out: Tensor | None = None
    exit_index: Tensor | None = None
    for index, step in enumerate(steps):
        if rows == 0:
            break
        logits, exited, x = step(x)
        if logits is None:
            continue
        go = torch.nonzero(exited).squeeze(1)  # (L,) rows that leave here: one host sync per exit
        leaving = go.numel()
        if leaving == 0:
            continue
        if out is None:
            if leaving == rows:  # everybody leaves at the first exit that answers: its results are the answer
                return logits.argmax(dim=-1), torch.full((batch,), index, dtype=torch.long, device=device), logits
            out = logits.new_zeros((batch, logits.shape[-1]))  # (B, C)
            exit_index = torch.full((batch,), last, dtype=torch.long, device=device)  # (B,)
        where = go if remaining is None else remaining.index_select(0, go)  # (L,) their input positions
        out.index_copy_(0, where, logits.index_select(0, go).to(out.dtype))
        cast(Tensor, exit_index).index_fill_(0, where, index)
        if leaving == rows:
            break
        stay = torch.nonzero(~exited).squeeze(1)  # (R - L,)
        remaining = stay if remaining is None else remaining.index_select(0, stay)
        x, rows = x.index_select(0, stay), rows - leaving
    if out is None or exit_index is None:  # empty batch
        out = torch.zeros((batch, num_classes), device=device)
        exit_index = torch.full((batch,), last, dtype=torch.long, device=device)
    return out.argmax(dim=-1), exit_index, out


# ----------------------------------------------------------------------------------------- costs
def exit_costs(block_macs: Sequence[int], head_macs: Sequence[int], thresholds: Sequence[float]) -> list[int]:
    """Cumulative cost of leaving at each exit (final included), given which heads run.

    Example:
        >>> exit_costs([10, 20], [5], [0.9]), exit_costs([10, 20], [5], [1.0])  # a closed head is not paid
        ([15, 35], [15, 30])
    """
    costs, total = [], 0
    for index, macs in enumerate(block_macs):
        total += macs
        if index == len(head_macs):
            costs.append(total)
            break
        costs.append(total + head_macs[index])
        if head_runs(thresholds[index]):  # the head ran, so samples that go on have paid for it too
            total += head_macs[index]
    return costs


def per_sample_macs(exit_index: Tensor, macs: Sequence[float], dtype: torch.dtype = torch.float64) -> Tensor:
    """Cost ``(N,)`` of each sample, from its exit ``(N,)`` and the cumulative cost of each exit."""
    return torch.as_tensor(list(macs), dtype=dtype, device=exit_index.device)[exit_index.long()]


def average_macs(exit_index: Tensor, macs: Sequence[float]) -> float:
    """Average per-sample MACs of an early-exit prediction.

    Args:
        exit_index: Exit of each sample, ``(N,)``, from ``predict``.
        macs: Cumulative MACs per exit, from ``exit_macs`` with the same thresholds.

    Example:
        >>> average_macs(torch.tensor([0, 1, 1, 1]), [10, 30])
        25.0
    """
    if exit_index.numel() == 0:
        raise ValueError(f"Expected `exit_index` to be a non-empty tensor, but got {exit_index!r}.")
    return float(per_sample_macs(exit_index.cpu(), macs).mean())


# ----------------------------------------------------------------------------------------- modes
@contextlib.contextmanager
def eval_mode(module: nn.Module, modules: Sequence[nn.Module] | None = None) -> Iterator[None]:
    """Put ``module`` in eval mode and restore every submodule's own training flag afterwards.

    Only the submodules in training mode are touched (none for a network already in eval mode), which
    keeps batch-1 ``predict`` cheap: ``module.eval()`` plus a restore cost ~0.2 ms per call for a LeNet.
    ``modules``: all of ``module``'s submodules (itself included), when the caller keeps that list, which
    saves walking the module tree on every call (~20 us for a LeNet).
    """
    training = [m for m in (module.modules() if modules is None else modules) if m.training]
    for m in training:
        m.training = False
    try:
        yield
    finally:
        for m in training:
            m.training = True
