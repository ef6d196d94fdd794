"""Statistical summaries of one metric's samples.

Every central estimate comes with a 95% confidence interval (criterion.rs style):
the median's is distribution-free (binomial order statistics, scipy.stats.quantile_test),
the mean's is Student's t. Percentiles use numpy's default (linear interpolation).
Outliers follow Tukey's fences: beyond 1.5 IQR (mild) and 3 IQR (extreme) from the quartiles.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
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


@dataclass(frozen=True)
class Outliers:
    low: int
    high: int
    extreme: int


Interval = tuple[float | None, float | None]
STATS = ("mean", "min", "max", "p50", "p95", "p99", "success_ratio")  # what an SLA may judge


@dataclass(frozen=True)
class Summary:
    """One metric's statistics; without successful samples only the counts."""

    unit: str
    n: int  # attempts, failures included
    successes: int
    failures: int
    success_ratio: float | None
    mean: float | None = None
    stdev: float | None = None
    min: float | None = None
    p50: float | None = None
    p95: float | None = None
    p99: float | None = None
    max: float | None = None
    median_ci: Interval | None = None  # 95%
    mean_ci: Interval | None = None
    outliers: Outliers | None = None

    def stat(self, name: str) -> float | None:
        """One of STATS by name (an SLA's `stat`)."""
        value: float | None = getattr(self, name)
        return value

    def record(self) -> dict[str, Any]:
        """The metric's entry in summary.json."""
        record: dict[str, Any] = {"unit": self.unit, "n": self.n, "successes": self.successes, "failures": self.failures,
                                  "success_ratio": self.success_ratio}
        if self.successes:
            record.update(mean=self.mean, stdev=self.stdev, min=self.min, p50=self.p50, p95=self.p95, p99=self.p99,
                          max=self.max, ci95={"median": list(self.median_ci or (None, None)),
                                              "mean": list(self.mean_ci or (None, None))},
                          outliers=asdict(self.outliers) if self.outliers else None)
        return record

    @classmethod
    def of(cls, record: dict[str, Any]) -> Summary:
        intervals = record.get("ci95") or {}
        return cls(
            unit=record["unit"], n=record["n"], successes=record["successes"], failures=record["failures"],
            success_ratio=record["success_ratio"], mean=record.get("mean"), stdev=record.get("stdev"),
            min=record.get("min"), p50=record.get("p50"), p95=record.get("p95"), p99=record.get("p99"),
            max=record.get("max"),
            median_ci=tuple(intervals["median"]) if "median" in intervals else None,  # type: ignore[arg-type]
            mean_ci=tuple(intervals["mean"]) if "mean" in intervals else None,  # type: ignore[arg-type]
            outliers=Outliers(**record["outliers"]) if record.get("outliers") else None,
        )


def summarize(values: list[float], attempts: int | None = None, unit: str = "") -> Summary:
    """`values` are the successful samples; `attempts` counts failures too (default: all succeeded)."""
    samples = np.asarray(values, dtype=float)
    n = samples.size if attempts is None else attempts
    ok = int(samples.size)
    ratio = ok / n if n else None
    if not ok:
        return Summary(unit, n, ok, n - ok, ratio)
    p50, p95, p99 = np.percentile(samples, [50, 95, 99])
    return Summary(
        unit, n, ok, n - ok, ratio,
        mean=float(samples.mean()),
        stdev=float(samples.std(ddof=1)) if ok > 1 else None,
        min=float(samples.min()),
        p50=float(p50),
        p95=float(p95),
        p99=float(p99),
        max=float(samples.max()),
        median_ci=median_ci(samples),
        mean_ci=mean_ci(samples),
        outliers=Outliers(**tukey_outliers(samples)),
    )
