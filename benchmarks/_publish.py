"""Publishing a full run's FitNets and early-exit results into their own sections of benchmarks/README.md."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from kd_toolkit._io import write_text

EARLY_EXIT_START, EARLY_EXIT_END = "<!-- kd-bench:early_exit:start -->", "<!-- kd-bench:early_exit:end -->"


def _load_result(entry: dict[str, Any]) -> dict[str, Any] | None:
    """A protocol entry's result: inline, or read from its ``result_file``; None when it did not run or is gone."""
    if entry.get("status", "ok") != "ok":
        return None
    result = entry.get("result")
    if not isinstance(result, dict) and entry.get("result_file"):
        file = Path(entry["result_file"])
        result = json.loads(file.read_text(encoding="utf-8")) if file.is_file() else None
    return result if isinstance(result, dict) and "skipped" not in result else None


def early_exit_block(result: dict[str, Any]) -> str:
    """The generated part of the README's ``## Early exit`` section: the table and the run's facts."""
    from benchmarks import early_exit

    m = result.get("machine", {})
    versions = m.get("versions", {})
    return (f"{early_exit.markdown(result)}\n\nMachine: {m.get('cpu')}, {m.get('cores')} cores (load average "
            f"{m.get('load_average')} at start), python {versions.get('python')}, torch {versions.get('torch')}, "
            f"pytorch_lightning {versions.get('pytorch_lightning')}, {m.get('torch_threads')} torch thread(s); "
            f"{m.get('date')}. Raw numbers: `benchmarks/results/early_exit.json`.")


def update_marked(path: Path, start: str, end: str, body: str, heading: str) -> None:
    """Replace the text between ``start`` and ``end`` in ``path``; without them, add them at the end of the
    ``heading`` section (or add that section at the end of the file). Everything else is kept; atomic write."""
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    wrapped = f"{start}\n{body.rstrip()}\n{end}"
    if start in text and end in text and text.index(start) < text.index(end):
        head, rest = text.split(start, 1)
        new = head + wrapped + rest.split(end, 1)[1]
    else:
        match = re.search(rf"^{re.escape(heading)}\n.*?(?=^## |\Z)", text, flags=re.S | re.M)
        if match:
            new = text[:match.end()].rstrip("\n") + "\n\n" + wrapped + "\n\n" + text[match.end():]
        else:
            new = text.rstrip("\n") + "\n\n" + heading + "\n\n" + wrapped + "\n"
    write_text(new.rstrip("\n") + "\n", path)


def publish_sections(path: Path, summary: dict[str, Any]) -> list[str]:
    """After a published full run: rewrite the FitNets and early-exit README sections from this run's results.

    Returns the names of the sections written (a protocol that failed or was skipped keeps its old section).
    """
    written = []
    protocols = summary["protocols"]
    fitnets_result = _load_result(protocols.get("fitnets", {}))
    if fitnets_result is not None:
        from benchmarks import fitnets

        fitnets.write_readme(fitnets_result, path)
        written.append("fitnets")
    early_result = _load_result(protocols.get("early_exit", {}))
    if early_result is not None:
        update_marked(path, EARLY_EXIT_START, EARLY_EXIT_END, early_exit_block(early_result), "## Early exit")
        written.append("early_exit")
    return written
