"""The one-command GPU check stays alive on CPU: ``python -m benchmarks.gpu_check --accelerator cpu --quick``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_runs_on_cpu_and_every_check_passes(tmp_path):
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "--accelerator", "cpu", "--quick",
                           "--out", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["passed"] and result["checks"] and all(result["checks"].values())
    assert set(result["precisions"]) == {"32", "16-mixed", "bf16-mixed"}
    for name in ("32/losses_finite", "32/teacher_on_device_eval_frozen", "32/cache_exact_agrees_with_live",
                 "32/early_exit_predict_matches_cpu", "export_export_runs_and_matches"):
        assert result["checks"][name], name
    assert result["precisions"]["32"]["early_exit"]["predict_syncs"] == "n/a"  # no CUDA: no sync count
    assert "| precision (ran as) |" in proc.stdout
