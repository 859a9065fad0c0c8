"""Lazy package exports (PEP 562), written once for every package ``__init__``.

Example:
    >>> getattr_, dir_ = lazy_exports("demo", {"sqrt": "math"}, globals_={})
    >>> getattr_("sqrt")(4.0)
    2.0
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(package: str, names: Mapping[str, str], globals_: dict[str, Any]
                 ) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for a package whose public ``names`` live in the modules they map to; a value
    is imported on first access and cached in the package's ``globals_``."""

    def __getattr__(name: str) -> Any:
        module = names.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        globals_[name] = value  # later lookups skip __getattr__
        return value

    def __dir__() -> list[str]:
        return sorted(set(globals_) | set(names))

    return __getattr__, __dir__
