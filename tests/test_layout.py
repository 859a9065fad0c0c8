"""The package's shape, kept by tests: one home per method, no private names across packages, short files,
nothing private of Lightning's read, and old import paths that still work (with a DeprecationWarning)."""

from __future__ import annotations

import ast
import importlib
import re
import sys
import warnings
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "kd_toolkit"
FILES = sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)
MAX_LINES = 420  # "files under ~400 lines"


def _home(path: Path) -> str:
    """The package a file belongs to: its folder under kd_toolkit/, or the top-level module itself."""
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _module_home(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "kd_toolkit" or len(parts) < 2:
        return None
    return parts[1]


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_private_name_is_imported_across_packages(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    crossing = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            home = _module_home(node.module)
            if home is None or home == _home(path):
                continue
            crossing += [f"{node.module}.{a.name}" for a in node.names if a.name.startswith("_")]
    assert not crossing, f"{path.name} imports private names of another package: {crossing}"


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_files_stay_short(path: Path) -> None:
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(PACKAGE)} has {lines} lines (> {MAX_LINES}); split it by topic"


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_nothing_private_of_lightning_is_read(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    found = re.findall(r"\btrainer\._[a-z]\w*|\b_logger_connector\b|\bpl_module\._trainer\b|\.\_trainer\b", text)
    assert not found, f"{path.relative_to(PACKAGE)} reads Lightning internals: {sorted(set(found))}"


@pytest.mark.parametrize(
    ("old", "name", "new"),
    [
        ("kd_toolkit.modules._base", "logits_of", "kd_toolkit.core.batch"),
        ("kd_toolkit.modules._base", "split_batch", "kd_toolkit.core.batch"),
        ("kd_toolkit.modules._base", "load_weights", "kd_toolkit._io"),
        ("kd_toolkit.modules.distillation", "DistillationModule", "kd_toolkit.distillation.module"),
    ],
)
def test_old_import_paths_still_work_and_warn(old: str, name: str, new: str) -> None:
    sys.modules.pop(old, None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        legacy = importlib.import_module(old)
    assert any(issubclass(w.category, DeprecationWarning) and new.rsplit(".", 1)[0] in str(w.message)
               for w in caught), [str(w.message) for w in caught]
    assert getattr(legacy, name) is getattr(importlib.import_module(new), name)


def test_the_base_module_is_public_in_core() -> None:
    from kd_toolkit.core import KDBaseModule
    from kd_toolkit.distillation import DistillationModule

    assert issubclass(DistillationModule, KDBaseModule)
    sys.modules.pop("kd_toolkit.modules._base", None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from kd_toolkit.modules._base import _KDBaseModule
    assert _KDBaseModule is KDBaseModule
