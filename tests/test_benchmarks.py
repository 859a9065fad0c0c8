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


@pytest.mark.skipif(not HAS_MNIST, reason="MNIST files absent")
def test_fitnets_benchmark_smoke(tmp_path):
    """benchmarks/fitnets.py on a tiny subset: curves per epoch, choice on validation, targets, README section."""
    from benchmarks import fitnets

    result = fitnets.run(quick=True, out_dir=tmp_path, train=256, val=128, test=128, seeds=(0, 1))
    assert json.loads((tmp_path / "fitnets.json").read_text())["arms"].keys() == set(fitnets.ARMS)
    assert (result["n_train"], result["n_val"], result["n_test"]) == (256, 128, 128)
    for arm in fitnets.ARMS:
        runs = result["arms"][arm]["runs"]
        assert [r["seed"] for r in runs] == [0, 1]
        for r in runs:
            assert len(r["val_curve"]) == len(r["test_curve"]) == 2
            assert r["val_error_pct"] == min(r["val_curve"]) and r["test_error_pct"] == r["test_curve"][r["best_epoch"] - 1]
    assert [t["met"] in (True, False) for t in result["targets"]] == [True, True, True]
    assert result["arms"]["fitnets_two_stage"]["runs"][0]["kd_weight"] == [None, 0.25]  # hint, then KD
    hint_lr, kd_lr = fitnets.HPARAMS["hint_lr"], result["arms"]["fitnets_two_stage"]["lr"]
    assert hint_lr != kd_lr and result["arms"]["fitnets_two_stage"]["runs"][0]["base_lr"] == [hint_lr, kd_lr]
    assert result["arms"]["plain"]["runs"][0]["base_lr"] == [result["arms"]["plain"]["lr"]] * 2
    section = fitnets.readme_section(result)
    assert section.startswith("## FitNets") and "| FitNets, two-stage (paper) |" in section
    fitnets.write_readme(result, tmp_path / "README.md")
    assert (tmp_path / "README.md").read_text().count("## FitNets") == 1


def test_fitnets_kd_weight_anneals_the_papers_lambda():
    from benchmarks.fitnets import kd_weight

    t2 = 16.0  # T = 4
    assert [kd_weight((0, 4.0, 1.0), e, 4) * t2 for e in range(4)] == [4.0, 3.0, 2.0, 1.0]
    assert [kd_weight((2, 4.0, 1.0), e, 5) * t2 for e in (2, 3, 4)] == [4.0, 2.5, 1.0]  # two-stage: from epoch 2
