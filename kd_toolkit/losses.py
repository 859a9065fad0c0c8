"""Distillation losses as pure functions: no Lightning, no state.

Every function takes logits (or features) and returns a scalar tensor, averaged over the batch. Modules only call
these and log the named components.

Mixed precision: softmax at a low temperature overflows or underflows in float16/bfloat16 (infinite or NaN
gradients), so every loss here casts its inputs to float32 (float64 stays float64, for ``gradcheck``) and works in
log space (``log_softmax``, ``logsumexp``, ``kl_div(log_target=True)``) whatever the autocast context; nothing is
clamped. The teacher's distribution may be given as logits or, with ``log_target=True``, as log-probabilities at
the loss's temperature, e.g. the mixture of several teachers from :func:`mixture_log_probs`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from kd_toolkit._checks import check_choice, check_float, is_real

__all__ = ["check_temperature", "cosine_logit_loss", "dist_loss", "dkd_loss", "dkd_warmup_factor", "hint_loss",
           "kd_loss", "ls_kd_loss", "mixture_log_probs", "multi_exit_loss", "normalize_teacher_weights",
           "soft_target_loss", "standardize_logits"]

MixingMode = Literal["probs", "logits"]
MIXING_MODES: tuple[MixingMode, ...] = ("probs", "logits")


def check_temperature(temperature: float) -> float:
    """Validate a distillation temperature and return it as a float (``ValueError`` unless finite and positive)."""
    return check_float("temperature", temperature, minimum=0, open_low=True)


def _full(t: Tensor) -> Tensor:
    """float32 (float64 stays): the dtype every loss computes in, whatever the input's dtype or autocast."""
    return t if t.dtype == torch.float64 else t.float()


def _check_logit_pair(student_logits: Tensor, teacher_logits: Tensor) -> None:
    if student_logits.dim() != 2 or teacher_logits.dim() != 2:
        raise ValueError("Expected student and teacher logits of shape (batch, num_classes), but got "
                         f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}.")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"Teacher and student disagree: student logits {tuple(student_logits.shape)} vs teacher "
                         f"logits {tuple(teacher_logits.shape)}. Both models must output the same number of "
                         "classes for the same batch.")


def standardize_logits(logits: Tensor) -> Tensor:
    """Logit standardization (Sun et al., CVPR 2024, "Logit Standardization in Knowledge Distillation").

    ``Z(z) = (z - mean(z)) / std(z)`` over the class dimension (the last), with the unbiased ``std`` of the authors'
    code (``torch.std``; the paper's population ``std`` differs by the constant ``sqrt(C / (C - 1))``, i.e. a
    temperature rescale). A constant row has no defined ``Z``: it maps to zeros (the uniform distribution) with a
    zero gradient, instead of the ``1e-7`` the authors add to every ``std``.

    Example:
        >>> standardize_logits(torch.tensor([[1.0, 2.0, 3.0], [5.0, 5.0, 5.0]]))
        tensor([[-1.,  0.,  1.],
                [ 0.,  0.,  0.]])
    """
    z = _full(logits)
    if z.shape[-1] < 2:
        raise ValueError(f"Expected at least 2 classes to standardise logits, but got shape {tuple(z.shape)}.")
    centred = z - z.mean(dim=-1, keepdim=True)
    var = centred.pow(2).sum(dim=-1, keepdim=True) / (z.shape[-1] - 1)
    # where(var > 0) before the sqrt: its gradient at 0 would be infinite (0 * inf = NaN through `where`)
    return centred / torch.where(var > 0, var, torch.ones_like(var)).sqrt()


def _log_probs(logits: Tensor, temperature: float, standardize: bool) -> Tensor:
    z = standardize_logits(logits) if standardize else _full(logits)
    return F.log_softmax(z / temperature, dim=-1)


def _tempered_pair(student_logits: Tensor, teacher: Tensor, temperature: float, log_target: bool,
                   standardize: bool) -> tuple[float, Tensor, Tensor]:
    """``(T, log p_student, log p_teacher)``, both ``(B, C)`` at temperature ``T``; the teacher detached."""
    temperature = check_temperature(temperature)
    _check_logit_pair(student_logits, teacher)
    log_s = _log_probs(student_logits, temperature, standardize)  # (B, C)
    log_t = _full(teacher.detach()) if log_target else _log_probs(teacher.detach(), temperature, standardize)
    return temperature, log_s, log_t.to(log_s.dtype)


def _kl(log_p_student: Tensor, log_p_teacher: Tensor) -> Tensor:
    return F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0, *, log_target: bool = False,
            standardize: bool = False) -> Tensor:
    """Hinton et al. (2015) distillation loss: ``KL(softmax(t / T) || softmax(s / T)) * T**2``, averaged over the
    batch. The ``T**2`` factor keeps the gradient magnitude comparable to the hard-label loss when ``T`` changes.

    Args:
        student_logits: ``(B, C)`` raw student outputs.
        teacher_logits: ``(B, C)`` raw teacher outputs (no softmax applied), or with ``log_target=True`` the
            teacher's log-probabilities at temperature ``T`` (e.g. :func:`mixture_log_probs`).
        temperature: softening temperature ``T > 0``.
        log_target: ``teacher_logits`` holds log-probabilities at ``T``.
        standardize: standardise the logits before softening (:func:`standardize_logits`; with ``log_target``
            only the student's: the teacher's log-probabilities must come from standardised logits).

    Raises:
        ValueError: on a non-positive temperature or mismatched shapes.

    Example:
        >>> s = torch.tensor([[2.0, 0.0]]); t = torch.tensor([[2.0, 0.0]])
        >>> float(kd_loss(s, t, temperature=4.0))
        0.0
    """
    temperature, log_s, log_t = _tempered_pair(student_logits, teacher_logits, temperature, log_target, standardize)
    return _kl(log_s, log_t) * (temperature**2)


def ls_kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0, *,
               log_target: bool = False) -> Tensor:
    """KD on standardised logits (Sun et al., CVPR 2024): :func:`kd_loss` with ``standardize=True``.

    Student and teacher are compared on ``Z(z) / T`` (:func:`standardize_logits`), so the student matches the
    teacher's logit *relations* rather than its logit range; the authors keep the ``T**2`` factor.

    Example:
        >>> s = torch.tensor([[1.0, 2.0, 3.0]]); t = 10 * s  # same relations, ten times the range
        >>> round(float(ls_kd_loss(s, t, 2.0)), 6), float(kd_loss(s, t, 2.0)) > 1
        (0.0, True)
    """
    return kd_loss(student_logits, teacher_logits, temperature, log_target=log_target, standardize=True)


def _check_target(target: Tensor, logits: Tensor) -> Tensor:
    if target.dim() != 1 or target.shape[0] != logits.shape[0] or target.is_floating_point():
        raise ValueError(f"Expected `target` to be {logits.shape[0]} class indices of shape (batch,), but got "
                         f"{target.dtype} of shape {tuple(target.shape)}.")
    return target.to(logits.device)


def dkd_loss(student_logits: Tensor, teacher_logits: Tensor, target: Tensor, temperature: float = 4.0,
             alpha: float = 1.0, beta: float = 8.0, *, log_target: bool = False, standardize: bool = False) -> Tensor:
    """Decoupled KD (Zhao et al., CVPR 2022, "Decoupled Knowledge Distillation"): ``alpha * TCKD + beta * NCKD``.

    TCKD is the KL of the binary (target class, all others) distributions, NCKD the KL of the distributions over
    the non-target classes alone, both at temperature ``T`` and times ``T**2`` as in the authors' code
    (``mdistiller``; CIFAR-100 defaults ``alpha=1, beta=8, T=4``). Everything is computed from the tempered
    log-probabilities: ``log(1 - p_target) = logsumexp`` of the non-target log-probabilities, and the non-target
    classes are gathered (not masked with ``-1000`` as in the authors' code), so the value is exact. The linear
    warm-up of the paper is :func:`dkd_warmup_factor`, applied by the module.

    Args:
        student_logits: ``(B, C)``; teacher_logits: ``(B, C)`` logits (or log-probabilities at ``T`` with
            ``log_target=True``); target: ``(B,)`` class indices; temperature: ``T > 0``.
        alpha: weight of TCKD, ``>= 0``; beta: weight of NCKD, ``>= 0``.
        log_target, standardize: as for :func:`kd_loss`.

    Example:
        >>> s = torch.tensor([[2.0, 1.0, 0.0]]); y = torch.tensor([0])
        >>> float(dkd_loss(s, s, y))
        0.0
    """
    alpha = check_float("alpha", alpha, minimum=0)
    beta = check_float("beta", beta, minimum=0)
    temperature, log_s, log_t = _tempered_pair(student_logits, teacher_logits, temperature, log_target, standardize)
    batch, classes = log_s.shape
    if classes < 2:
        raise ValueError(f"Expected at least 2 classes for DKD, but got logits of shape {tuple(log_s.shape)}.")
    is_target = F.one_hot(_check_target(target, log_s), classes).bool()  # (B, C)
    parts = []
    for log_p in (log_s, log_t):
        others = log_p[~is_target].view(batch, classes - 1)  # (B, C - 1) log-probabilities of the other classes
        binary = torch.stack([log_p[is_target], torch.logsumexp(others, dim=-1)], dim=-1)  # (B, 2)
        parts.append((binary, F.log_softmax(others, dim=-1)))  # the non-target distribution, renormalised
    (binary_s, others_s), (binary_t, others_t) = parts
    return (alpha * _kl(binary_s, binary_t) + beta * _kl(others_s, others_t)) * (temperature**2)


def dkd_warmup_factor(epoch: int, warmup_epochs: int) -> float:
    """DKD's linear warm-up: ``min((epoch + 1) / warmup_epochs, 1)`` for a 0-based ``epoch`` (the authors' code
    counts epochs from 1); ``1`` when ``warmup_epochs == 0``.

    Example:
        >>> dkd_warmup_factor(0, 20), dkd_warmup_factor(19, 20), dkd_warmup_factor(3, 0)
        (0.05, 1.0, 1.0)
    """
    return 1.0 if warmup_epochs <= 0 else min((epoch + 1) / warmup_epochs, 1.0)


def _unit_peak(v: Tensor, dim: int) -> Tensor:
    """``v`` divided by its (detached) largest magnitude along ``dim``: correlation is scale-invariant, and the
    squares taken next cannot underflow."""
    peak = v.detach().abs().amax(dim=dim, keepdim=True)
    return v / torch.where(peak > 0, peak, torch.ones_like(peak))


def _pearson(a: Tensor, b: Tensor, dim: int) -> Tensor:
    """Pearson correlation of ``a`` and ``b`` along ``dim``; a zero-variance slice correlates 0 (not NaN)."""
    a = _unit_peak(a - a.mean(dim=dim, keepdim=True), dim)
    b = _unit_peak(b - b.mean(dim=dim, keepdim=True), dim)
    sq = a.pow(2).sum(dim=dim) * b.pow(2).sum(dim=dim)
    # a zero-variance slice has a or b all zero, so its numerator is 0: 0 / 1, with a zero gradient
    return (a * b).sum(dim=dim) / torch.where(sq > 0, sq, torch.ones_like(sq)).sqrt()


def dist_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0, beta: float = 1.0,
              gamma: float = 1.0, *, tau_squared: bool = True, log_target: bool = False,
              standardize: bool = False) -> Tensor:
    """DIST (Huang et al., NeurIPS 2022, "Knowledge Distillation from A Stronger Teacher").

    ``beta * (1 - mean_i pearson(p_s[i], p_t[i])) + gamma * (1 - mean_c pearson(p_s[:, c], p_t[:, c]))`` on the
    probabilities at temperature ``T``: the inter-class relation (each sample's row) and the intra-class relation
    (each class's column over the batch, so batches need at least 2 samples). The authors' code multiplies both
    terms by ``T**2``, their paper's equation does not: ``tau_squared`` chooses (default ``True``, the code, which
    is what published results used; it matters only for ``T != 1``). A constant row or column has no correlation
    and counts as 0, with a zero gradient, instead of the ``1e-8`` the code adds to every denominator.

    Example:
        >>> s = torch.tensor([[2.0, 1.0, 0.0], [0.0, 1.0, 3.0]])
        >>> round(float(dist_loss(s, s)), 6)
        0.0
    """
    beta = check_float("beta", beta, minimum=0)
    gamma = check_float("gamma", gamma, minimum=0)
    if not isinstance(tau_squared, bool):
        raise ValueError(f"Expected `tau_squared` to be a bool, but got {tau_squared!r}.")
    temperature, log_s, log_t = _tempered_pair(student_logits, teacher_logits, temperature, log_target, standardize)
    p_s, p_t = log_s.exp(), log_t.exp()  # (B, C)
    inter = 1.0 - _pearson(p_s, p_t, dim=1).mean()
    intra = 1.0 - _pearson(p_s, p_t, dim=0).mean()
    loss = beta * inter + gamma * intra
    return loss * (temperature**2) if tau_squared else loss


def normalize_teacher_weights(weights: Sequence[float] | Tensor | None, n: int, name: str = "teacher_weights"
                              ) -> list[float]:
    """``n`` finite weights ``>= 0`` with a positive sum, normalised to sum to one (``None``: equal weights).

    Example:
        >>> normalize_teacher_weights([1, 3], 2)
        [0.25, 0.75]
    """
    if weights is None:
        return [1.0 / n] * n
    values = weights.tolist() if isinstance(weights, Tensor) else weights
    if (isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or len(values) != n
            or not all(is_real(w) and w >= 0 for w in values) or sum(values) <= 0):
        raise ValueError(f"Expected `{name}` to be {n} finite numbers >= 0 with a positive sum (one per teacher), "
                         f"but got {weights!r}.")
    total = float(sum(values))
    return [float(w) / total for w in values]


def _stack_teachers(teacher_logits: Tensor | Sequence[Tensor]) -> Tensor:
    """``(B, K, C)`` float32 detached logits from a ``(B, C)`` tensor, a ``(B, K, C)`` stack or a list of ``(B, C)``."""
    if isinstance(teacher_logits, Tensor):
        stack = teacher_logits.unsqueeze(1) if teacher_logits.dim() == 2 else teacher_logits
    else:
        shapes = [tuple(t.shape) for t in teacher_logits]
        if not shapes or any(s != shapes[0] or len(s) != 2 for s in shapes):
            raise ValueError("Expected one (batch, num_classes) logit tensor per teacher, all of the same shape "
                             f"(the same classes), but got shapes {shapes}.")
        stack = torch.stack(list(teacher_logits), dim=1)
    if stack.dim() != 3:
        raise ValueError(f"Expected teacher logits of shape (batch, teachers, classes), but got {tuple(stack.shape)}.")
    return _full(stack.detach())


def mixture_log_probs(teacher_logits: Tensor | Sequence[Tensor], temperature: float = 1.0,
                      weights: Sequence[float] | Tensor | None = None, *, mode: MixingMode = "probs",
                      standardize: bool = False) -> Tensor:
    """Log-probabilities ``(B, C)`` at temperature ``T`` of a weighted ensemble of teachers.

    ``mode="probs"`` (default): the mixture of the teachers' tempered distributions,
    ``log sum_k w_k softmax(t_k / T) = logsumexp_k(log w_k + log_softmax(t_k / T))``, as Hinton et al. (2015)
    average an ensemble's predictions; ``mode="logits"``: ``log_softmax(sum_k w_k t_k / T)`` (averaged logits).
    Feed the result to :func:`kd_loss` (or :func:`dkd_loss`, :func:`dist_loss`) with ``log_target=True``.

    Args:
        teacher_logits: ``(B, K, C)``, a list of ``K`` ``(B, C)`` tensors, or one ``(B, C)`` tensor (one teacher).
        temperature: ``T > 0``.
        weights: ``K`` weights ``>= 0`` with a positive sum (normalised); ``None``: equal.
        mode: ``"probs"`` or ``"logits"``.
        standardize: standardise each teacher's logits first (:func:`standardize_logits`).

    Example:
        >>> t = torch.tensor([[[0.0, 20.0]], [[20.0, 0.0]]]).transpose(0, 1)  # (1, 2, 2): two opposite teachers
        >>> mixture_log_probs(t).exp().round(decimals=4)
        tensor([[0.5000, 0.5000]])
    """
    temperature = check_temperature(temperature)
    check_choice("mode", mode, MIXING_MODES)
    stack = _stack_teachers(teacher_logits)  # (B, K, C)
    if stack.shape[1] == 1 and weights is None:  # one teacher: its tempered log-probabilities
        return _log_probs(stack[:, 0], temperature, standardize)
    w = torch.tensor(normalize_teacher_weights(weights, stack.shape[1]), dtype=stack.dtype, device=stack.device)
    if standardize:
        stack = standardize_logits(stack)
    if mode == "logits":
        return F.log_softmax((stack * w.view(1, -1, 1)).sum(dim=1) / temperature, dim=-1)
    return torch.logsumexp(F.log_softmax(stack / temperature, dim=-1) + w.log().view(1, -1, 1), dim=1)


def soft_target_loss(student_logits: Tensor, teacher_probs: Tensor, temperature: float = 1.0) -> Tensor:
    """Cross-entropy of the student's softened distribution against given soft targets, times ``T**2``.

    Use it when the teacher's *probabilities* are stored rather than its logits (for an ensemble, prefer
    :func:`mixture_log_probs` with :func:`kd_loss`). It differs from :func:`kd_loss` by the teacher's entropy, a
    constant.

    Example:
        >>> s = torch.zeros(1, 4); p = torch.full((1, 4), 0.25)
        >>> round(float(soft_target_loss(s, p)), 4)  # log(4)
        1.3863
    """
    temperature = check_temperature(temperature)
    _check_logit_pair(student_logits, teacher_probs)
    log_p_student = _log_probs(student_logits, temperature, False)  # (B, C)
    p_teacher = _full(teacher_probs.detach()).to(log_p_student.dtype)
    return -(p_teacher * log_p_student).sum(dim=-1).mean() * (temperature**2)


def cosine_logit_loss(student_logits: Tensor, teacher_logits: Tensor,
                      weights: Sequence[float] | Tensor | None = None) -> Tensor:
    """``1 - cos(student, teacher)`` averaged over the batch (seed 002's ``cos_embed_loss``).

    With several teachers (``teacher_logits`` of shape ``(B, K, C)``) it is the ``weights``-weighted mean of the
    per-teacher losses (raw logits of different teachers are not averaged).

    Example:
        >>> round(float(cosine_logit_loss(torch.tensor([[1.0, 2.0]]), torch.tensor([[2.0, 4.0]]))), 6)
        0.0
    """
    if teacher_logits.dim() == 3:
        w = normalize_teacher_weights(weights, teacher_logits.shape[1])
        return sum((wk * cosine_logit_loss(student_logits, teacher_logits[:, k]) for k, wk in enumerate(w)),
                   torch.zeros((), device=student_logits.device))
    _check_logit_pair(student_logits, teacher_logits)
    s = _full(student_logits)
    return (1.0 - F.cosine_similarity(s, _full(teacher_logits.detach()).to(s.dtype), dim=-1)).mean()


def hint_loss(student_feature: Tensor, teacher_feature: Tensor) -> Tensor:
    """FitNets hint loss (Romero et al., 2015): mean squared error between the regressed student feature and the
    teacher's hint feature, averaged over every element. The student feature must already be mapped to the
    teacher's shape (see ``kd_toolkit.fitnets.regressors``).

    Example:
        >>> float(hint_loss(torch.ones(2, 3), torch.zeros(2, 3)))
        1.0
    """
    if student_feature.shape != teacher_feature.shape:
        raise ValueError(f"Expected the regressed student feature to have the teacher's shape "
                         f"{tuple(teacher_feature.shape)}, but got {tuple(student_feature.shape)}.")
    return F.mse_loss(student_feature, teacher_feature.detach())


def multi_exit_loss(
    exit_logits: Sequence[Tensor],
    target: Tensor,
    weights: Sequence[float] | None = None,
    *,
    criterion=F.cross_entropy,
    distill_temperature: float | None = None,
    distill_weight: float = 0.0,
    teacher_logits: Tensor | Sequence[Tensor] | None = None,
    teacher_weight: float | Sequence[float] = 0.0,
    teacher_temperature: float = 1.0,
) -> tuple[Tensor, list[Tensor]]:
    """Weighted sum of per-exit losses for an early-exit network (BranchyNet, Teerapittayanon et al. 2016).

    Exit ``i`` gets ``(1 - s_i - t_i) * CE + s_i * kd_loss(exit_i, final.detach(), T_s) + t_i * kd_loss(exit_i,
    teacher, T_t)``: self-distillation from the final exit (Phuong & Lampert, ICCV 2019; ``s_i = distill_weight``
    on early exits, 0 on the final one) and an external teacher on every exit (``t_i = teacher_weight[i]``; several
    teachers: the equal mixture of :func:`mixture_log_probs`), with ``s_i + t_i <= 1``.

    Args:
        exit_logits: one ``(B, C)`` tensor per exit, final exit last; target: ``(B,)`` class labels.
        weights: one weight per exit (normalised to sum to one); ``None`` means equal.
        criterion: hard-label loss ``criterion(logits, target)``.
        distill_temperature, distill_weight: ``T_s`` and ``s`` (in ``[0, 1]``) of self-distillation.
        teacher_logits: ``(B, C)`` logits of the teacher, or several (a list or ``(B, K, C)``); ``None``: none.
        teacher_weight, teacher_temperature: ``t`` (one number, or one per exit) and ``T_t`` of the teacher term.

    Returns ``(total, per_exit)``: the weighted total and each exit's loss. Example:
        >>> logits = [torch.zeros(2, 3), torch.zeros(2, 3)]
        >>> total, parts = multi_exit_loss(logits, torch.tensor([0, 1]))
        >>> round(float(total), 4)  # log(3)
        1.0986
    """
    n = len(exit_logits)
    if weights is None:
        weights = [1.0] * n
    if len(weights) != n or any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(
            f"Expected `weights` to be {n} non-negative numbers with a positive sum, but got {list(weights)!r}."
        )
    t_weights = list(teacher_weight) if isinstance(teacher_weight, Sequence) else [teacher_weight] * n
    s_weights = [distill_weight] * (n - 1) + [0.0]
    if len(t_weights) != n or not all(is_real(t) and 0 <= t and 0 <= s and s + t <= 1 + 1e-9
                                      for s, t in zip(s_weights, t_weights)):
        raise ValueError(f"Expected `teacher_weight` to be {n} numbers >= 0 (one per exit) with `distill_weight` "
                         f"+ `teacher_weight` <= 1 on every exit, but got {teacher_weight!r} (and {distill_weight!r}).")
    log_t = None if teacher_logits is None else mixture_log_probs(teacher_logits, teacher_temperature)  # (B, C)
    total_weight, final = float(sum(weights)), exit_logits[-1]
    per_exit: list[Tensor] = []
    for logits, s, t in zip(exit_logits, s_weights, t_weights):
        loss = (1.0 - s - (t if log_t is not None else 0.0)) * criterion(logits, target)
        if s > 0:
            loss = loss + s * kd_loss(logits, final.detach(), distill_temperature or 1.0)
        if log_t is not None and t > 0:
            loss = loss + t * kd_loss(logits, log_t, teacher_temperature, log_target=True)
        per_exit.append(loss)
    total: Tensor = sum(w / total_weight * loss for w, loss in zip(weights, per_exit))  # type: ignore[assignment]
    return total, per_exit
