"""examples/fitnets_mnist.py on real MNIST images: every example prints its final accuracy, and its students learn."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MNIST = ROOT.parent / "shared" / "data" / "mnist-test"


@pytest.mark.skipif(not MNIST.is_dir(), reason=f"MNIST test files not found in {MNIST}")
def test_fitnets_mnist_example_learns(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("fitnets_mnist_example", ROOT / "examples" / "fitnets_mnist.py")
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    results = example.main(["--epochs", "3", "--subset", "1000", "--data-dir", str(MNIST),
                            "--output-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert out.count("final test accuracy") == 2 and "final val accuracy" in out
    # chance is 10%: floors well above it, well below what these settings reach (about 80 / 65 / 65 %)
    assert results["teacher"] >= 50.0, results  # percent (the seed's unit)
    assert results["student"] >= 35.0, results
    assert results["module_api"] >= 0.30, results  # fraction (Lightning's val_acc)
