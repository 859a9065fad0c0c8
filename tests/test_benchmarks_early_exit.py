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
