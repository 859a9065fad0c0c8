"""The README's Python code runs as written: every ```python block is executed on its own, in a fresh folder.

Each block is complete (imports, kd_toolkit's own models, the embedded digits data) and small enough to
run in seconds; a block that trains a student prints its accuracy (``... accuracy: 0.93``), and the test
asserts that the student clearly learnt. A block that cannot run here (a GPU, a Comet key, a cluster)
starts with the line ``# not run by tests/test_readme.py: <reason>``; the test skips it with that reason.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
SKIP_MARKER = "# not run by tests/test_readme.py:"
#: what a block that trains a student must reach on the digits test split (10 classes; chance is 0.10)
ACCURACY_FLOOR = 0.80
_ACCURACY = re.compile(r"accuracy: ([0-9]*\.[0-9]+)")


def _python_blocks() -> list[tuple[str, str]]:
    """``(id, code)`` per ```python block: the id names the README line and the section above the block."""
    blocks, heading = [], "top"
    lines = README.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#"):
            heading = re.sub(r"[^a-z0-9]+", "-", line.lstrip("#").strip().lower()).strip("-")[:40]
        if line.strip() == "```python":
            start, i = i + 1, i + 1
            while lines[i].strip() != "```":
                i += 1
            blocks.append((f"line{start}-{heading}", "\n".join(lines[start:i]) + "\n"))
        i += 1
    return blocks


BLOCKS = _python_blocks()


def test_the_readme_has_python_blocks():
    assert len(BLOCKS) >= 8, [name for name, _ in BLOCKS]


@pytest.mark.parametrize(("name", "code"), BLOCKS, ids=[name for name, _ in BLOCKS])
def test_readme_block_runs_and_its_student_learns(name, code, tmp_path, monkeypatch, capsys):
    first = code.splitlines()[0] if code.strip() else ""
    if first.startswith(SKIP_MARKER):
        pytest.skip(first[len(SKIP_MARKER):].strip())
    monkeypatch.chdir(tmp_path)  # every file a block writes (runs/, deploy/, checkpoints/) lands here
    exec(compile(code, f"README.md:{name}", "exec"), {"__name__": "__main__"})
    out = capsys.readouterr().out
    accuracies = [float(a) for a in _ACCURACY.findall(out)]
    assert accuracies, f"the block prints no `... accuracy: x` line; its output ends with:\n{out[-2000:]}"
    assert min(accuracies) >= ACCURACY_FLOOR, f"a student did not learn ({accuracies}); output:\n{out[-2000:]}"
