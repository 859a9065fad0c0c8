"""The early-exit protocol's arithmetic (benchmarks/_early_exit.py): the ideal speed-up and the percentiles."""

from __future__ import annotations

import pytest

from benchmarks import _early_exit as ee


def test_ideal_speedup_is_t_full_over_the_expected_cumulative_segment_time():
    times = {"full_ms": 10.0, "segment_ms": [1.0, 4.0, 6.0]}
    # everybody leaves at exit 0: 10 / 1; at the final exit: 10 / 11 (the heads are paid too)
    assert ee.ideal_speedup(times, [1.0, 0.0, 0.0]) == pytest.approx(10.0)
    assert ee.ideal_speedup(times, [0.0, 0.0, 1.0]) == pytest.approx(10.0 / 11.0)
    assert ee.ideal_speedup(times, [0.5, 0.25, 0.25]) == pytest.approx(10.0 / (0.5 * 1 + 0.25 * 5 + 0.25 * 11))


def test_percentiles():
    values = [float(v) for v in range(1, 101)]
    stats = ee.percentiles(values)
    assert stats["p50"] == pytest.approx(50.5) and stats["p95"] == pytest.approx(95.05)
    assert stats["p99"] == pytest.approx(99.01) and stats["mean"] == pytest.approx(50.5)


def test_latencies_time_the_segments_on_the_same_samples():
    """With the network, the batch-1 loop also walks the segments piece by piece, one time per sample and segment."""
    import torch

    from kd_toolkit.early_exit import EarlyExitNetwork
    from kd_toolkit.models import create_model

    torch.manual_seed(0)
    net = EarlyExitNetwork(create_model("b_lenet"), (1, 1, 28, 28), [[], []], [0.9, 1.0]).eval()
    x = torch.randn(6, 1, 28, 28)
    times = ee.latencies({"plain": net.blocks, "early_exit": net.predict}, x, net)
    assert sorted(times) == ["early_exit", "plain", "segment_0", "segment_1", "segment_2"]
    assert all(len(v) == 6 and min(v) > 0 for v in times.values())
    assert set(ee.latencies({"plain": net.blocks}, x)) == {"plain"}
