"""Helpers of benchmarks/fitnets.py: arm names, mean ± std over seeds and the issue's target rows."""

from __future__ import annotations

import statistics
from typing import Any

NAMES = {"plain": "plain (labels only)", "kd": "KD (Hinton)", "fitnets_joint": "FitNets, one-stage (joint sum)",
         "fitnets_two_stage": "FitNets, two-stage (paper)"}


def _summary(v: list[float]) -> dict[str, float]:
    return {"mean": round(statistics.fmean(v), 3), "std": round(statistics.stdev(v), 3) if len(v) > 1 else 0.0}


def _targets(arms: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's target, hints <= KD < plain in mean test error (at the best validation epoch), each gap larger
    than the seeds' spread (the larger std of the two arms); one row per FitNets arm."""
    def m(a: str) -> dict[str, float]:
        return arms[a]["test_at_best_val"]

    rows = []
    for low, high in (("fitnets_two_stage", "kd"), ("fitnets_joint", "kd"), ("kd", "plain")):
        gap, spread = m(high)["mean"] - m(low)["mean"], max(m(low)["std"], m(high)["std"])
        rows.append({"target": f"FitNets MNIST: {NAMES[low]} {'<' if low == 'kd' else '<='} {NAMES[high]} in mean "
                               "test error, gap > the seeds' std",
                     "measured": f"{m(low)['mean']:.2f} ± {m(low)['std']:.2f}% vs {m(high)['mean']:.2f} ± "
                                 f"{m(high)['std']:.2f}% (gap {gap:.2f}, largest std {spread:.2f})",
                     "met": bool(gap > spread)})
    return rows
