"""Protocol 3's whole-run case: both arms really do the work (validation, checkpoints, CSV) and the breakdown adds up."""

from __future__ import annotations

import pytest

from benchmarks import _common, overhead
from benchmarks._overhead_run import run_whole

HAS_MNIST = any(_common.MNIST_DIR.glob("t10k-images*"))


@pytest.mark.skipif(not HAS_MNIST, reason="MNIST test files absent")
def test_whole_run_times_both_arms_doing_the_same_work():
    result = run_whole(epochs=2, repeats=1, n_train=400, threads=1, warmup=0)
    kd, plain = result["arms"]["kd_toolkit"], result["arms"]["plain"]
    assert kd["checkpoint_writes_per_run"] >= 2  # best and/or last, every epoch
    assert abs(kd["val_acc"] - plain["val_acc"]) < 0.05  # the same training, validated the same way
    assert {"construct", "sanity", "train", "val", "epoch_end"} <= set(result["fixed_costs"])
    assert result["fixed_costs"]["val"]["per"] == "epoch" and result["fixed_costs"]["sanity"]["per"] == "run"
    phases_wall = sum(v["wall_s"] for v in kd["phases"].values())
    assert phases_wall == pytest.approx(kd["wall_s_median"], rel=1e-6)  # the phases cover the whole run
    rows = overhead.targets({"whole_run": result, "cases": []})
    assert len(rows) == 1 and rows[0]["met"] == (result["ratio"] <= overhead.TARGET_RATIO)
