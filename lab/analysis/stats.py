"""Statistical summaries of one metric's samples.

Every central estimate comes with a 95% confidence interval (criterion.rs style):
the median's is distribution-free (binomial order statistics, scipy.stats.quantile_test),
the mean's is Student's t. Percentiles use numpy's default (linear interpolation).
Outliers follow Tukey's fences: beyond 1.5 IQR (mild) and 3 IQR (extreme) from the quartiles.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import stats

CONFIDENCE = 0.95


def _finite(value: float) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def median_ci(samples: np.ndarray) -> tuple[float | None, float | None]:
    """Exact interval for the median; None where too few samples bound it."""
    if samples.size < 2:
        return None, None
    interval = stats.quantile_test(samples, q=float(np.median(samples)), p=0.5).confidence_interval(CONFIDENCE)
    return _finite(interval.low), _finite(interval.high)


def mean_ci(samples: np.ndarray) -> tuple[float | None, float | None]:
    if samples.size < 2:
        return None, None
    if np.ptp(samples) == 0:
        value = float(samples[0])
        return value, value
    interval = stats.ttest_1samp(samples, 0.0).confidence_interval(CONFIDENCE)
    return _finite(interval.low), _finite(interval.high)


def tukey_outliers(samples: np.ndarray) -> dict[str, int]:
    q1, q3 = np.percentile(samples, [25, 75])
    iqr = q3 - q1
    return {
        "low": int(np.sum(samples < q1 - 1.5 * iqr)),
        "high": int(np.sum(samples > q3 + 1.5 * iqr)),
        "extreme": int(np.sum((samples < q1 - 3 * iqr) | (samples > q3 + 3 * iqr))),
    }


def summarize(values: list[float], attempts: int | None = None) -> dict[str, Any]:
    """`values` are the successful samples; `attempts` counts failures too (default: all succeeded)."""
    samples = np.asarray(values, dtype=float)
    attempts = samples.size if attempts is None else attempts
    summary: dict[str, Any] = {
        "n": attempts,
        "successes": int(samples.size),
        "failures": attempts - int(samples.size),
        "success_ratio": samples.size / attempts if attempts else None,
    }
    if samples.size == 0:
        return summary
    p50, p95, p99 = np.percentile(samples, [50, 95, 99])
    median_low, median_high = median_ci(samples)
    mean_low, mean_high = mean_ci(samples)
    summary.update(
        mean=float(samples.mean()),
        stdev=float(samples.std(ddof=1)) if samples.size > 1 else None,
        min=float(samples.min()),
        p50=float(p50),
        p95=float(p95),
        p99=float(p99),
        max=float(samples.max()),
        ci95={"median": [median_low, median_high], "mean": [mean_low, mean_high]},
        outliers=tukey_outliers(samples),
    )
    return summary
