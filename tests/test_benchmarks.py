"""The benchmark scripts stay alive: the smallest protocol end to end, the README block, skips and loss equality.

Timing targets live in the benchmark results (``benchmarks/README.md``), not here.
"""

from __future__ import annotations

import json

import pytest

from benchmarks import _common, digits, overhead
from benchmarks.__main__ import run_protocol
from benchmarks.report import END, START, render, update_readme

HAS_MNIST = (_common.MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file() or (_common.MNIST_DIR / "t10k-images-idx3-ubyte").is_file()


def test_digits_protocol_end_to_end(tmp_path):
    result = digits.run(quick=True, out_dir=tmp_path, config={"seeds": [0], "teacher_epochs": 1, "student_epochs": 1})
    saved = json.loads((tmp_path / "digits.json").read_text())
    assert saved["protocol"] == "digits" and saved["config"]["seeds"] == [0]
    for arm in ("teacher", "plain", "kd"):
        assert 0.0 <= saved["acc"][arm]["mean"] <= 1.0 and saved["acc"][arm]["n"] == 1
    assert set(saved["per_seed"]["0"]) == {"teacher", "plain", "kd", "gap_closed"}
    summary = {"suite": "quick", "command": "python -m benchmarks --only digits", "threads": 1,
               "machine": _common.machine_info(), "load_average_end": None, "seconds": 1.0,
               "protocols": {"digits": {"status": "ok", "result": result, "seconds": 1.0},
                             "fitnets": {"status": "skipped", "reason": "not here", "seconds": 0.0}}}
    markdown = render(summary)
    assert "Protocol 2" in markdown and "| teacher 64-256-256-10 |" in markdown and "`fitnets`: skipped" in markdown


def test_readme_block_keeps_the_other_sections(tmp_path):
    readme = tmp_path / "README.md"
    others = "## FitNets\n\nTheir table.\n\n## Early exit\n\nTheirs too.\n"
    readme.write_text(others)
    update_readme(readme, "## ours\nfirst")
    update_readme(readme, "## ours\nsecond")
    text = readme.read_text()
    assert text.count(START) == text.count(END) == 1 and "second" in text and "first" not in text
    assert text.endswith(others) and text.index(END) < text.index("## FitNets")


def test_missing_mnist_is_a_clear_skip(tmp_path, monkeypatch):
    monkeypatch.setattr(_common, "MNIST_DIR", tmp_path / "nowhere")
    entry = run_protocol("hinton_mnist", quick=True, out_dir=tmp_path, threads=1)
    assert entry["status"] == "skipped" and "MNIST test files not found" in entry["reason"]


@pytest.mark.skipif(not HAS_MNIST, reason="MNIST test files absent")
def test_overhead_arms_give_the_plain_loops_losses():
    case = overhead.run_case("tiny", "mnist_student_30", cached=True, epochs=2, repeats=1, n_train=300)
    assert case["losses_agree_5dp"], (case["max_step_loss_diff"], case["max_epoch_loss_diff"])
    assert set(case["arms"]) == {"plain", "lightning", "kd_toolkit"} and case["steps_per_epoch"] == 3
