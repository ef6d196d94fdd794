"""Regression detection between two results directories.

Per metric, the rule (documented in docs/compare.md) is criterion.rs's, made explicit:

1. a metric on one side only: "only in baseline" / "only in candidate", no verdict;
2. fewer than MIN_SAMPLES successful samples on either side: "not enough samples";
3. Mann-Whitney U, two-sided, on the raw samples; p-values adjusted across the compared
   metrics by Benjamini-Hochberg (false discovery rate, scipy.stats.false_discovery_control);
4. the relative change of the median, candidate / baseline - 1, with a bootstrap 95%
   interval (percentile method, 2000 resamples);
5. a change is significant when the adjusted p < alpha AND its interval excludes 0: the rank
   test and the interval of the judged quantity must agree. Not significant: "unchanged";
6. significant and beyond +noise or -noise: "regressed" or "improved" (by whether higher is
   better for the metric); significant but inside [-noise, +noise]: "within noise".

Criterion's stricter rule (the whole interval beyond the noise threshold) detected a 10%
latency shift in only 54% of simulated comparisons at n = 200 per side (log-sd 0.25): a
median's interval is wide. tests/test_compare.py checks this rule's detection and false-alarm
rates by simulation.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from lab.analysis.figures import analyze
from lab.analysis.metrics import Metric, higher_is_better
from lab.analysis.records import load, read_json
from lab.analysis.repeats import REPEAT_FILE

MIN_SAMPLES = 8
MIN_RUNS = 4  # Mann-Whitney U can reach p < 0.05 from 4 against 4 (p = 0.029)
BOOTSTRAP_RESAMPLES = 2000
DEFAULT_NOISE = 0.03  # the seed documents' threshold; see docs/compare.md
DEFAULT_ALPHA = 0.05


@dataclass
class Side:
    n: int
    p50: float | None
    p95: float | None

    @classmethod
    def of(cls, values: list[float]) -> Side:
        if not values:
            return cls(0, None, None)
        p50, p95 = np.percentile(values, [50, 95])
        return cls(len(values), float(p50), float(p95))


@dataclass
class Comparison:
    metric: str
    unit: str
    baseline: Side
    candidate: Side
    change: float | None = None
    change_ci95: tuple[float, float] | None = None
    p_value: float | None = None
    p_adjusted: float | None = None
    verdict: str = ""
    reason: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def is_repeat(run_dir: Path) -> bool:
    return (run_dir / REPEAT_FILE).is_file()


def run_samples(run_dir: Path) -> dict[str, Metric]:
    """Every metric's samples. A single run: derived from its records by the analysis `lab run`
    used (not read back from its summary). A repeated run (`--repeat K`): one value per run, that
    run's median, because the run is the independent unit."""
    if is_repeat(run_dir):
        repeat = read_json(run_dir / REPEAT_FILE)
        return {
            name: Metric(name, figures["unit"], list(figures["run_medians"]), figures["runs"])
            for name, figures in repeat["metrics"].items()
        }
    return analyze(load(run_dir)).metrics


def relative_change_ci(baseline: np.ndarray, candidate: np.ndarray, seed: int) -> tuple[float, float]:
    def ratio(b: np.ndarray, c: np.ndarray, axis: int) -> np.ndarray:
        return np.median(c, axis=axis) / np.median(b, axis=axis) - 1

    interval = stats.bootstrap(
        (baseline, candidate),
        ratio,
        vectorized=True,
        n_resamples=BOOTSTRAP_RESAMPLES,
        method="percentile",
        random_state=seed,
    ).confidence_interval
    return float(interval.low), float(interval.high)


def _measure(comparison: Comparison, baseline: list[float], candidate: list[float], seed: int) -> None:
    base, cand = np.asarray(baseline), np.asarray(candidate)
    if np.median(base) == 0:
        comparison.reason = "baseline median is 0: no relative change"
        return
    comparison.change = float(np.median(cand) / np.median(base) - 1)
    comparison.change_ci95 = relative_change_ci(base, cand, seed)
    comparison.p_value = float(stats.mannwhitneyu(base, cand, alternative="two-sided").pvalue)


def _judge(comparison: Comparison, alpha: float, noise: float) -> None:
    if comparison.p_adjusted is None or comparison.change_ci95 is None:
        comparison.verdict = comparison.verdict or "not compared"
        return
    low, high = comparison.change_ci95
    change = comparison.change
    assert change is not None
    interval = f"change {change:+.1%} CI [{low:+.1%}, {high:+.1%}]"
    if comparison.p_adjusted >= alpha or low <= 0 <= high:
        comparison.verdict = "unchanged"
        comparison.reason = f"adjusted p {comparison.p_adjusted:.3g} (alpha {alpha}), {interval}: no significant change"
        return
    evidence = f"adjusted p {comparison.p_adjusted:.3g} < {alpha}, {interval}"
    if abs(change) > noise:
        went_up = change > 0
        comparison.verdict = "improved" if went_up == higher_is_better(comparison.metric) else "regressed"
        comparison.reason = f"{evidence} beyond ±{noise:.0%}"
    else:
        comparison.verdict = "within noise"
        comparison.reason = f"{evidence} inside ±{noise:.0%}"


def compare_samples(
    baseline: dict[str, Metric],
    candidate: dict[str, Metric],
    noise: float,
    alpha: float,
    seed: int = 0,
    min_samples: int = MIN_SAMPLES,
) -> list[Comparison]:
    comparisons = []
    for name in sorted(set(baseline) | set(candidate)):
        base, cand = baseline.get(name), candidate.get(name)
        unit = (base or cand).unit  # type: ignore[union-attr]
        comparison = Comparison(name, unit, Side.of(base.values if base else []), Side.of(cand.values if cand else []))
        if base is None or cand is None:
            comparison.verdict = "only in baseline" if cand is None else "only in candidate"
        elif min(len(base.values), len(cand.values)) < min_samples:
            comparison.verdict = "not enough samples"
            comparison.reason = f"{len(base.values)} vs {len(cand.values)} samples; at least {min_samples} per side"
        else:
            _measure(comparison, base.values, cand.values, seed)
        comparisons.append(comparison)
    tested = [c for c in comparisons if c.p_value is not None]
    if tested:
        adjusted = stats.false_discovery_control([c.p_value for c in tested])  # type: ignore[misc]
        for comparison, p in zip(tested, adjusted, strict=True):
            comparison.p_adjusted = float(p)
    for comparison in comparisons:
        if not comparison.verdict:
            _judge(comparison, alpha, noise)
    return comparisons
