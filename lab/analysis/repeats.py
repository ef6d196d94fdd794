"""Repeated runs (`lab run --repeat K`): run-to-run variance measured, not hidden.

Samples within one run share a network and CPUs, so they are not independent; the run is
the independent unit. Per metric this reports each run's median, the median of those
medians with a distribution-free 95% interval (scipy's quantile_test; it is bounded only
from 6 runs on: with fewer, no pair of order statistics covers the median with 95%), their
range and coefficient of variation.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lab.analysis.stats import Summary, median_ci


def between_runs(summaries: list[dict[str, Summary]]) -> dict[str, dict[str, Any]]:
    """`summaries` are the runs' metric summaries, in run order."""
    names = sorted({name for summary in summaries for name in summary})
    metrics = {}
    for name in names:
        medians = [p50 for s in summaries if name in s and (p50 := s[name].p50) is not None]
        if not medians:
            continue
        values = np.asarray(medians, dtype=float)
        low, high = median_ci(values)
        mean = float(values.mean())
        metrics[name] = {
            "unit": next(s[name].unit for s in summaries if name in s),
            "runs": len(medians),
            "run_medians": medians,
            "median_of_medians": float(np.median(values)),
            "ci95": [low, high],
            "min": float(values.min()),
            "max": float(values.max()),
            "cv": float(values.std(ddof=1) / mean) if len(medians) > 1 and mean else None,
        }
    return metrics
