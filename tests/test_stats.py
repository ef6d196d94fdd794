"""Statistics on samples whose answers are known or computed independently."""

import math

import numpy as np
import pytest
from scipy import stats as sps

from lab.analysis.stats import median_ci, summarize, tukey_outliers


def test_percentiles_and_moments_match_numpy() -> None:
    samples = np.random.default_rng(3).lognormal(2.0, 0.7, 500)
    summary = summarize(list(samples))
    assert summary.p50 == pytest.approx(np.percentile(samples, 50))
    assert summary.p95 == pytest.approx(np.percentile(samples, 95))
    assert summary.p99 == pytest.approx(np.percentile(samples, 99))
    assert summary.mean == pytest.approx(samples.mean())
    assert summary.stdev == pytest.approx(samples.std(ddof=1))
    assert summary.min == samples.min() and summary.max == samples.max()


def test_median_interval_is_the_binomial_order_statistic_interval() -> None:
    # For n = 20 the distribution-free 95% interval for the median is [x(6), x(15)]
    # (1-based order statistics): P(6 <= B(20, 1/2) <= 14) = 0.9586 >= 0.95, the
    # tightest symmetric choice (P(7 <= B <= 13) = 0.8847 is too small).
    coverage = sps.binom.cdf(14, 20, 0.5) - sps.binom.cdf(5, 20, 0.5)
    assert coverage >= 0.95 > sps.binom.cdf(13, 20, 0.5) - sps.binom.cdf(6, 20, 0.5)
    samples = np.arange(1.0, 21.0) * 10  # x(k) = 10 k
    low, high = median_ci(samples)
    assert (low, high) == (60.0, 150.0)


def test_mean_interval_is_students_t() -> None:
    samples = [9.0, 10.0, 11.0, 12.0, 13.0]  # mean 11, s = sqrt(2.5)
    half_width = sps.t.ppf(0.975, 4) * math.sqrt(2.5) / math.sqrt(5)
    low, high = summarize(samples).mean_ci
    assert low == pytest.approx(11 - half_width)
    assert high == pytest.approx(11 + half_width)


def test_tukey_fences() -> None:
    samples = np.array([10.0] * 8 + [11.0] * 8 + [12.0] * 8 + [13.0] * 8 + [20.0, 40.0, 0.0])
    # Q1 = 10.75... compute from numpy, then count by hand against the fences.
    q1, q3 = np.percentile(samples, [25, 75])
    iqr = q3 - q1
    outliers = tukey_outliers(samples)
    assert outliers["high"] == sum(x > q3 + 1.5 * iqr for x in samples) == 2
    assert outliers["low"] == sum(x < q1 - 1.5 * iqr for x in samples) == 1
    assert outliers["extreme"] == sum((x > q3 + 3 * iqr) or (x < q1 - 3 * iqr) for x in samples)


def test_failures_count_as_attempts_not_samples() -> None:
    summary = summarize([1.0, 2.0, 3.0], attempts=4)
    assert (summary.n, summary.successes, summary.failures) == (4, 3, 1)
    assert summary.success_ratio == 0.75


def test_no_successes_gives_no_percentiles() -> None:
    summary = summarize([], attempts=3)
    assert summary.success_ratio == 0.0
    assert summary.p95 is None and "p95" not in summary.record()  # summary.json holds only the counts


def test_too_few_samples_give_no_interval() -> None:
    assert median_ci(np.array([1.0, 2.0, 3.0])) == (None, None)  # best coverage 75% < 95%
    assert summarize([4.0]).record()["ci95"] == {"median": [None, None], "mean": [None, None]}


def test_constant_samples() -> None:
    summary = summarize([2.0] * 30)
    assert summary.mean_ci == (2.0, 2.0)
    assert summary.stdev == 0.0
    assert summary.record()["outliers"] == {"low": 0, "high": 0, "extreme": 0}
