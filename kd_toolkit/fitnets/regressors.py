"""FitNets hint regressors: map a student feature onto the shape of a teacher feature.

In FitNets (Romero et al., "FitNets: Hints for Thin Deep Nets", ICLR 2015) the thin student's
guided layer is usually narrower than the teacher's hint layer, so a learned regressor maps the
student feature to the teacher's shape before the L2 hint loss. Here the regressor is a 1x1 (or
3x3) convolution for feature maps and a linear layer for vectors, sized from shapes inferred by a
dry run (:func:`kd_toolkit.fitnets.taps.feature_shapes`). Feature maps with different spatial sizes are
aligned first, by adaptive average pooling (the FitNets seed's way) or bilinear interpolation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from kd_toolkit._checks import is_int
from kd_toolkit.fitnets.taps import feature_shapes
from kd_toolkit.losses import hint_loss

__all__ = ["HintRegressor", "align_spatial", "build_hint_regressors", "hint_components", "hint_key", "hint_path"]

AlignMode = Literal["pool", "interpolate"]
RegressorKind = Literal["conv1x1", "conv3x3"]

_ALIGN_MODES = ("pool", "interpolate")
_KINDS = ("conv1x1", "conv3x3")
# ModuleDict keys cannot contain "."; "-" cannot occur in a Python attribute name, so the
# mapping path <-> key is one-to-one for every path made of attribute names.
_KEY_SEP = "-"


def align_spatial(
    x: torch.Tensor, size: int | Sequence[int] | torch.Size, mode: AlignMode = "pool"
) -> torch.Tensor:
    """Resize a 4-D feature map to the spatial size ``size``; a no-op when it already matches.

    Args:
        x: Feature map of shape ``(B, C, H, W)``.
        size: Target ``(H', W')``, or one int for a square target.
        mode: ``"pool"``: adaptive average pooling, as the FitNets seed does (it also enlarges a
            smaller map, by repeating values); ``"interpolate"``: bilinear interpolation
            (``align_corners=False``).

    Returns:
        Tensor of shape ``(B, C, H', W')``.

    Raises:
        ValueError: If ``x`` is not 4-D, ``size`` is not one or two positive ints, or ``mode`` is
            not one of ``"pool"``, ``"interpolate"``.

    Example:
        >>> import torch
        >>> align_spatial(torch.randn(2, 8, 16, 16), (4, 4)).shape
        torch.Size([2, 8, 4, 4])
        >>> align_spatial(torch.randn(2, 8, 4, 4), 7, mode="interpolate").shape
        torch.Size([2, 8, 7, 7])
    """
    if mode not in _ALIGN_MODES:
        raise ValueError(f"Expected `mode` to be one of {_ALIGN_MODES}, but got {mode!r}.")
    if x.dim() != 4:
        raise ValueError(f"Expected `x` to be a 4-D feature map (B, C, H, W), but got shape {tuple(x.shape)}.")
    target = _spatial_size(size)
    if tuple(x.shape[-2:]) == target:
        return x
    if mode == "pool":
        return F.adaptive_avg_pool2d(x, target)  # (B, C, H', W')
    return F.interpolate(x, size=target, mode="bilinear", align_corners=False)  # (B, C, H', W')


class HintRegressor(nn.Module):
    """FitNets regressor from a student (guided) feature to a teacher (hint) feature.

    Romero et al. (ICLR 2015) train a regressor on top of the student's guided layer so that its
    output matches the teacher's hint layer. Shapes are **per sample, without the batch dim**:

    * feature maps ``(C_s, H_s, W_s) -> (C_t, H_t, W_t)``: the student map is first aligned to
      ``(H_t, W_t)`` (when the sizes differ) by :func:`align_spatial`, then a ``Conv2d(C_s, C_t)``
      with a 1x1 kernel (``kind="conv1x1"``) or a 3x3 kernel with padding 1 (``"conv3x3"``);
    * vectors ``(D_s,) -> (D_t,)``: a ``Linear(D_s, D_t)`` (``kind`` and ``align`` do not apply).

    Args:
        student_shape: Per-sample shape of the student feature, ``(C, H, W)`` or ``(D,)``.
        teacher_shape: Per-sample shape of the teacher feature, of the same rank.
        kind: Kernel of the convolutional regressor.
        align: Spatial alignment mode, see :func:`align_spatial`.

    Raises:
        ValueError: If the shapes cannot be aligned (different ranks, or ranks other than
            ``(C, H, W)``/``(D,)``, or non-positive sizes), or ``kind``/``align`` is unknown.

    Example:
        >>> import torch
        >>> regressor = HintRegressor((32, 14, 14), (128, 7, 7))
        >>> regressor(torch.randn(2, 32, 14, 14)).shape
        torch.Size([2, 128, 7, 7])
        >>> HintRegressor((64,), (256,))(torch.randn(2, 64)).shape
        torch.Size([2, 256])
    """

    def __init__(
        self,
        student_shape: Sequence[int] | torch.Size,
        teacher_shape: Sequence[int] | torch.Size,
        *,
        kind: RegressorKind = "conv1x1",
        align: AlignMode = "pool",
    ) -> None:
        super().__init__()
        if kind not in _KINDS:
            raise ValueError(f"Expected `kind` to be one of {_KINDS}, but got {kind!r}.")
        if align not in _ALIGN_MODES:
            raise ValueError(f"Expected `align` to be one of {_ALIGN_MODES}, but got {align!r}.")
        self.student_shape, self.teacher_shape = _check_shapes(student_shape, teacher_shape)
        self.kind = kind
        self.align = align
        in_features, out_features = self.student_shape[0], self.teacher_shape[0]
        self.proj: nn.Module
        if len(self.student_shape) == 1:
            self.proj = nn.Linear(in_features, out_features)
        else:
            kernel = 1 if kind == "conv1x1" else 3
            self.proj = nn.Conv2d(in_features, out_features, kernel_size=kernel, padding=kernel // 2)

    def forward(self, student_feature: torch.Tensor, size: Sequence[int] | None = None) -> torch.Tensor:
        """Map a batch of student features to the teacher's shape.

        Args:
            student_feature: ``(B, C_s, H, W)`` (any ``H, W``) or ``(B, D_s)``.
            size: Spatial size to align to instead of the teacher's ``(H_t, W_t)`` from
                construction, e.g. ``teacher_feature.shape[-2:]`` when inputs change size.

        Returns:
            ``(B, C_t, H_t, W_t)`` or ``(B, D_t)``.
        """
        expected_dim = len(self.student_shape) + 1
        if student_feature.dim() != expected_dim or student_feature.shape[1] != self.student_shape[0]:
            raise ValueError(
                f"Expected `student_feature` to have shape (B, {', '.join(map(str, self.student_shape))}) "
                f"(any spatial size for maps), but got {tuple(student_feature.shape)}."
            )
        if expected_dim == 2:
            return self.proj(student_feature)  # (B, D_t)
        target = self.teacher_shape[1:] if size is None else size
        x = align_spatial(student_feature, target, self.align)  # (B, C_s, H_t, W_t)
        return self.proj(x)  # (B, C_t, H_t, W_t)

    def extra_repr(self) -> str:
        return f"student_shape={self.student_shape}, teacher_shape={self.teacher_shape}, align={self.align!r}"


def hint_key(path: str) -> str:
    """The :class:`torch.nn.ModuleDict` key for a student module path (``"."`` -> ``"-"``).

    Raises:
        ValueError: If ``path`` is empty or already contains ``"-"`` (the mapping would not be
            reversible).

    Example:
        >>> hint_key("layer3.1.conv2")
        'layer3-1-conv2'
        >>> hint_path(hint_key("layer3.1.conv2"))
        'layer3.1.conv2'
    """
    if not isinstance(path, str) or not path or _KEY_SEP in path:
        raise ValueError(
            f"Expected `path` to be a non-empty dotted module path without {_KEY_SEP!r}, but got {path!r}."
        )
    return path.replace(".", _KEY_SEP)


def hint_path(key: str) -> str:
    """The student module path for a key made by :func:`hint_key` (``"-"`` -> ``"."``).

    Example:
        >>> hint_path("features-4")
        'features.4'
    """
    return key.replace(_KEY_SEP, ".")


def build_hint_regressors(
    student: nn.Module,
    teacher: nn.Module,
    hint_layers: Mapping[str, str],
    example_input: torch.Tensor | tuple[Any, ...] | list[Any],
    **kwargs: Any,
) -> nn.ModuleDict:
    """Build one :class:`HintRegressor` per (student guided layer, teacher hint layer) pair.

    Shapes are inferred by one dry run of each model on ``example_input`` (see
    :func:`kd_toolkit.fitnets.taps.feature_shapes`; training flags are restored afterwards). The FitNets
    recipe (Romero et al., ICLR 2015) trains these regressors together with the student.

    Args:
        student: The student model.
        teacher: The teacher model (run on the same ``example_input``).
        hint_layers: ``{student_path: teacher_path}``; several student paths may share a teacher path.
        example_input: A small batch (or tuple of positional inputs) both models accept.
        **kwargs: Passed to :class:`HintRegressor` (``kind``, ``align``).

    Returns:
        A :class:`torch.nn.ModuleDict` keyed by ``hint_key(student_path)``; use :func:`hint_path`
        to map a key back.

    Raises:
        ValueError: If ``hint_layers`` is empty, a path is bad, or a pair of shapes cannot be aligned
            (the message names both paths).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> student = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU())
        >>> teacher = nn.Sequential(nn.Conv2d(1, 32, 3, stride=2, padding=1), nn.ReLU())
        >>> regressors = build_hint_regressors(student, teacher, {"1": "1"}, torch.randn(2, 1, 28, 28))
        >>> regressors["1"](torch.randn(2, 8, 28, 28)).shape
        torch.Size([2, 32, 14, 14])
    """
    if not isinstance(hint_layers, Mapping) or len(hint_layers) == 0:
        raise ValueError(
            f"Expected `hint_layers` to be a non-empty dict {{student_path: teacher_path}}, but got {hint_layers!r}."
        )
    keys = {student_path: hint_key(student_path) for student_path in hint_layers}
    student_shapes = feature_shapes(student, list(hint_layers), example_input)
    teacher_shapes = feature_shapes(teacher, list(dict.fromkeys(hint_layers.values())), example_input)
    regressors = nn.ModuleDict()
    for student_path, teacher_path in hint_layers.items():
        s_shape, t_shape = student_shapes[student_path][1:], teacher_shapes[teacher_path][1:]  # drop batch
        try:
            regressors[keys[student_path]] = HintRegressor(s_shape, t_shape, **kwargs)
        except ValueError as err:
            raise ValueError(f"Cannot pair student {student_path!r} with teacher {teacher_path!r}: {err}") from err
    return regressors


def _spatial_size(size: int | Sequence[int] | torch.Size) -> tuple[int, int]:
    if isinstance(size, int) and not isinstance(size, bool):
        size = (size, size)
    if not isinstance(size, Sequence) or len(size) != 2 or not all(is_int(s) and s > 0 for s in size):
        raise ValueError(f"Expected `size` to be a positive int or a pair (H, W) of them, but got {size!r}.")
    return int(size[0]), int(size[1])


def _check_shapes(
    student_shape: Sequence[int] | torch.Size, teacher_shape: Sequence[int] | torch.Size
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Validate a pair of per-sample shapes; both ``(C, H, W)`` or both ``(D,)``."""
    shapes = []
    for name, shape in (("student_shape", student_shape), ("teacher_shape", teacher_shape)):
        if not isinstance(shape, Sequence) or not all(is_int(s) and s > 0 for s in shape):
            raise ValueError(f"Expected `{name}` to be a sequence of positive ints, but got {shape!r}.")
        shapes.append(tuple(int(s) for s in shape))
    s_shape, t_shape = shapes
    if len(s_shape) != len(t_shape) or len(s_shape) not in (1, 3):
        raise ValueError(
            f"Expected `student_shape` and `teacher_shape` to be per-sample shapes (no batch dim) that "
            f"are both (C, H, W) feature maps or both (D,) vectors, but got {s_shape} and {t_shape}. "
            "Flatten or pool one side to match the other, or tap different layers."
        )
    return s_shape, t_shape


def hint_components(
    regressors: nn.ModuleDict,
    hint_layers: Mapping[str, str],
    student_features: Mapping[str, torch.Tensor],
    teacher_features: Mapping[str, torch.Tensor],
) -> dict[str, torch.Tensor]:
    """The FitNets hint-loss components of one batch.

    Each student feature is mapped by its regressor to the teacher's shape (spatially aligned to the
    teacher feature of this batch) and compared by :func:`kd_toolkit.losses.hint_loss` (MSE).

    Args:
        regressors: Built by :func:`build_hint_regressors` (keyed by :func:`hint_key` of the student path).
        hint_layers: ``{student_path: teacher_path}``.
        student_features: ``{student_path: (B, ...)}`` (with gradients).
        teacher_features: ``{teacher_path: (B, ...)}``.

    Returns:
        ``hint_loss/<student_path>`` for every pair and their sum ``hint_loss``.

    Example:
        >>> import torch
        >>> regressors = nn.ModuleDict({"a": HintRegressor((4,), (6,))})
        >>> parts = hint_components(regressors, {"a": "b"}, {"a": torch.randn(2, 4)}, {"b": torch.randn(2, 6)})
        >>> sorted(parts)
        ['hint_loss', 'hint_loss/a']
    """
    parts: dict[str, torch.Tensor] = {}
    for s_path, t_path in hint_layers.items():
        target = teacher_features[t_path]  # (B, C_t, H_t, W_t) or (B, D_t)
        size = tuple(target.shape[-2:]) if target.dim() == 4 else None
        regressed = regressors[hint_key(s_path)](student_features[s_path], size)  # the teacher's shape
        parts[f"hint_loss/{s_path}"] = hint_loss(regressed, target.to(regressed.dtype))
    total: torch.Tensor = sum(parts.values())  # type: ignore[assignment]
    return {"hint_loss": total, **parts}
