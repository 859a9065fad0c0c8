"""Every script in examples/ is smoke-run (fast flags) in a subprocess, as a user would run it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MNIST = ROOT.parent / "shared" / "data" / "mnist-test"

#: fast arguments for each example; a new example must be added here (the test below checks it)
FAST_ARGS: dict[str, list[str]] = {
    "seed001_tardis_kd.py": ["--epochs", "3", "--teacher-epochs", "3"],
    "seed002_lightning_kd.py": ["--max-epoch", "10", "--teacher-epochs", "3"],
    "multinode_train.py": ["--gpus", "0", "--cpu-processes", "2", "--max-epoch", "10", "--teacher-epochs", "3"],
    "fitnets_mnist.py": ["--epochs", "1", "--data-dir", str(MNIST), "--quick"],
    "early_exit_mnist.py": ["--epochs", "1", "--data-dir", str(MNIST), "--quick"],
}
#: the test accuracy the student must reach at the fast arguments (10 digit classes: chance is 0.10); the
#: example prints it as its last line, ``final test accuracy: 0.93``
ACCURACY_FLOORS: dict[str, float] = {
    "seed001_tardis_kd.py": 0.8,
    "seed002_lightning_kd.py": 0.75,
    "multinode_train.py": 0.7,
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
    if name in ACCURACY_FLOORS:
        found = re.findall(r"^final test accuracy: ([0-9.]+)$", proc.stdout, re.M)
        assert found, f"{name} prints no `final test accuracy: x` line:\n{proc.stdout[-3000:]}"
        assert float(found[-1]) >= ACCURACY_FLOORS[name], f"{name}: the student did not learn:\n{proc.stdout[-3000:]}"
