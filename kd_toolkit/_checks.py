"""Argument validators shared by every entry point: one error template, one home per rule.

Every check raises ``ValueError`` (or ``TypeError`` only where Python itself would) with the message
``Expected `name` to be <what is allowed>, but got <value!r>.``, so a user always learns which argument
was wrong, what it was, and what would have been accepted.

``NaN`` and ``inf`` are never accepted where a number is expected unless a check says so
(:func:`is_real` is ``False`` for them; :func:`is_number` is the permissive variant).

Example:
    >>> check_int("epochs", 3, minimum=1)
    3
    >>> check_int("epochs", 0, minimum=1)
    Traceback (most recent call last):
    ...
    ValueError: Expected `epochs` to be a positive int, but got 0.
"""

from __future__ import annotations

import difflib
import math
import numbers
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypeVar

__all__ = [
    "check_choice",
    "check_float",
    "check_int",
    "check_keys",
    "check_mapping",
    "check_module",
    "check_shape",
    "close_matches",
    "expected",
    "is_int",
    "is_number",
    "is_real",
]

_T = TypeVar("_T")


def expected(name: str, allowed: str, got: Any) -> ValueError:
    """The one error template: ``Expected `name` to be <allowed>, but got <got!r>.``"""
    text = repr(got)
    if len(text) > 200:
        text = text[:197] + "..."
    return ValueError(f"Expected `{name}` to be {allowed}, but got {text}.")


def is_int(value: object) -> bool:
    """An integral number that is not a bool (``numpy.int64`` counts, ``True`` does not)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_number(value: object) -> bool:
    """A real number that is not a bool; ``NaN``/``inf`` count (use :func:`is_real` to refuse them)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def is_real(value: object) -> bool:
    """A finite real number that is not a bool."""
    return is_number(value) and math.isfinite(float(value))  # type: ignore[arg-type]


def _bounds_text(kind: str, minimum: float | None, maximum: float | None, open_low: bool, open_high: bool) -> str:
    if minimum is not None and maximum is not None:
        return f"{kind} in {'(' if open_low else '['}{minimum}, {maximum}{')' if open_high else ']'}"
    if minimum is not None:
        if minimum == 0 and open_low:
            return f"a positive {kind.split(' ', 1)[-1]}"
        if minimum == 1 and kind.endswith("int") and not open_low:
            return f"a positive {kind.split(' ', 1)[-1]}"
        if minimum == 0 and not open_low:
            return f"a non-negative {kind.split(' ', 1)[-1]}"
        return f"{kind} {'>' if open_low else '>='} {minimum}"
    if maximum is not None:
        return f"{kind} {'<' if open_high else '<='} {maximum}"
    return kind


def check_int(name: str, value: Any, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """``value`` as an ``int`` in ``[minimum, maximum]`` (bools refused).

    Example:
        >>> check_int("k", 5, minimum=1, maximum=3)
        Traceback (most recent call last):
        ...
        ValueError: Expected `k` to be an int in [1, 3], but got 5.
    """
    if not is_int(value) or (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise expected(name, _bounds_text("an int", minimum, maximum, False, False), value)
    return int(value)


def check_float(
    name: str,
    value: Any,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    open_low: bool = False,
    open_high: bool = False,
) -> float:
    """``value`` as a finite ``float`` within the bounds (``open_low``/``open_high`` exclude them).

    Example:
        >>> check_float("lr", float("nan"), minimum=0, open_low=True)
        Traceback (most recent call last):
        ...
        ValueError: Expected `lr` to be a positive float, but got nan.
    """
    ok = is_real(value)
    if ok:
        number = float(value)
        if minimum is not None and (number < minimum or (open_low and number == minimum)):
            ok = False
        if maximum is not None and (number > maximum or (open_high and number == maximum)):
            ok = False
    if not ok:
        raise expected(name, _bounds_text("a float", minimum, maximum, open_low, open_high), value)
    return float(value)


def close_matches(word: str, candidates: Iterable[str], n: int = 3) -> list[str]:
    """Up to ``n`` candidates that look like ``word`` (for "did you mean" hints)."""
    return difflib.get_close_matches(str(word), [str(c) for c in candidates], n=n, cutoff=0.5)


def _did_you_mean(word: Any, candidates: Iterable[str]) -> str:
    matches = close_matches(str(word), candidates)
    return f" Did you mean {' or '.join(repr(m) for m in matches)}?" if matches else ""


def check_choice(name: str, value: Any, choices: Sequence[_T]) -> _T:
    """``value`` if it is one of ``choices``; otherwise list them (and the closest, for a typo)."""
    if value in choices:
        return value
    hint = _did_you_mean(value, [str(c) for c in choices]) if isinstance(value, str) else ""
    raise ValueError(f"Expected `{name}` to be one of {list(choices)!r}, but got {value!r}.{hint}")


def check_keys(name: str, keys: Iterable[Any], allowed: Iterable[str]) -> None:
    """Refuse keys of ``name`` that are not in ``allowed``, naming the closest allowed ones."""
    allowed = list(allowed)
    for key in keys:
        if key not in allowed:
            raise ValueError(
                f"Unknown key {key!r} in `{name}`: expected keys from {allowed}.{_did_you_mean(key, allowed)}"
            )


def check_mapping(name: str, value: Any, *, allow_none: bool = True) -> dict[Any, Any]:
    """``value`` as a plain ``dict`` (``None`` gives ``{}`` when allowed)."""
    if value is None and allow_none:
        return {}
    if not isinstance(value, Mapping):
        raise expected(name, "a mapping (dict)" + (" or None" if allow_none else ""), value)
    return dict(value)


def check_module(name: str, value: Any, *, allow_none: bool = False) -> Any:
    """``value`` if it is a ``torch.nn.Module`` (or ``None`` when allowed)."""
    from torch import nn

    if value is None and allow_none:
        return None
    if not isinstance(value, nn.Module):
        allowed = "an nn.Module" + (" or None" if allow_none else "")
        raise ValueError(f"Expected `{name}` to be {allowed}, but got {type(value).__name__}.")
    return value


def check_shape(name: str, value: Any, *, batch: bool = False) -> tuple[int, ...]:
    """A non-empty sequence of positive ints, such as ``[1, 28, 28]`` (``batch=True``: it includes the batch)."""
    if (isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or not value
            or not all(is_int(s) and s > 0 for s in value)):
        what = "a shape of positive ints" + (" with the batch dimension first, such as (1, 1, 28, 28)" if batch
                                             else " without the batch dimension, such as [1, 28, 28]")
        raise expected(name, what, value)
    return tuple(int(s) for s in value)
