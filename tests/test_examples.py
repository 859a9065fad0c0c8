"""Every script in examples/ is smoke-run (fast flags) in a subprocess, as a user would run it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MNIST = ROOT.parent / "shared" / "data" / "mnist-test"

#: fast arguments for each example; a new example must be added here (the test below checks it)
FAST_ARGS: dict[str, list[str]] = {
    "seed001_tardis_kd.py": ["--epochs", "1", "--teacher-epochs", "1"],
    "seed002_lightning_kd.py": ["--max-epoch", "1", "--teacher-epochs", "1"],
    "multinode_train.py": ["--gpus", "0", "--cpu-processes", "2", "--max-epoch", "1"],
    "fitnets_mnist.py": ["--epochs", "1", "--data-dir", str(MNIST), "--quick"],
    "early_exit_mnist.py": ["--epochs", "1", "--data-dir", str(MNIST), "--quick"],
}
NEEDS_MNIST = {"fitnets_mnist.py", "early_exit_mnist.py"}
EXAMPLES = sorted(p.name for p in (ROOT / "examples").glob("*.py"))


def test_every_example_has_fast_arguments():
    assert set(EXAMPLES) <= set(FAST_ARGS), f"add fast flags for {sorted(set(EXAMPLES) - set(FAST_ARGS))}"


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_runs(name, tmp_path):
    if name in NEEDS_MNIST and not (MNIST / "t10k-images-idx3-ubyte.gz").exists():
        pytest.skip(f"MNIST test files not found in {MNIST}")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COMET_DISABLE_AUTO_LOGGING": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / name), *FAST_ARGS.get(name, [])], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
