"""`lab compare`: did the candidate change, metric by metric, beyond the noise?

The rule (docs/compare.md has the simulations behind each choice):

- **Level.** Two single runs are compared sample by sample ("samples": the samples of one run
  share a machine and a network, so a verdict describes these two runs); two `--repeat`
  directories run by run, each run's median a value ("runs": the run is the independent unit,
  so a verdict describes the code).
- **The change** is a ratio, estimated on the log scale (latencies, memory and CPU vary by
  factors): samples, the Hodges-Lehmann shift of the logs (the median of all pairwise
  differences), with the interval and p-values of the Mann-Whitney U test it belongs to;
  runs, the difference of the mean log run medians, with Welch's t, whose p-value, unlike a
  rank test's (at best 2/C(2n, n)), is not floored by the number of runs. Metrics with values
  <= 0 are compared on their own scale, the change relative to the baseline's median.
- **The noise band** ±noise, by one-sided tests at alpha (equivalence testing): *regressed* or
  *improved* when the change is shown beyond the band; *within noise* when it is shown inside
  it (both one-sided tests against the band's edges); *unclear* when neither is shown. A true
  change inside the band is thus called regressed with probability at most alpha.
- **Families.** The metrics the topologies' SLAs name are the primary family, the rest
  exploratory; p-values are adjusted by Benjamini-Hochberg within each family, so a clean
  change of a primary metric is not diluted by twenty exploratory ones.
- **Tails.** The p95's change, with an interval at 1 - 2 alpha / m for the m metrics of its
  family (samples: each side's p95 bounded by binomial order statistics, the ratio's interval
  from the two: conservative; runs: Welch's t on the log run p95s), judged by the same band.
- **Failures.** Per metric with attempts, the share that failed: a one-sided Fisher exact test,
  adjusted within the family; significantly more failures is *regressed*, however fast the
  successes were.
- **Fidelity.** A time metric the fidelity guard could not trust on either side (the machine
  was too busy: lab/analysis/guard.py) is *inconclusive*: its change is shown, not judged.

Verdicts: regressed, improved, within noise, unclear, inconclusive, not enough samples, only in
baseline, only in candidate.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from scipy import stats

from lab.analysis.figures import Analysis, analyze
from lab.analysis.guard import judge
from lab.analysis.metrics import Metric
from lab.analysis.records import load, read_json
from lab.errors import RecordsError, TopologyError
from lab.manifest import MANIFEST, REPEAT, Manifest
from lab.metric_names import higher_is_better
from lab.topology import parse_topology
from nodes.protocol import Event

MIN_SAMPLES = 8
MIN_RUNS = 3  # Welch's t needs a spread on each side; with 3 it has 2+ degrees of freedom
MAX_PAIRS = 4_000_000  # pairwise differences for Hodges-Lehmann; larger samples are subsampled (seeded)
DEFAULT_NOISE = 0.03  # the seed documents' threshold; see docs/compare.md
DEFAULT_ALPHA = 0.05
VERDICTS = ("regressed", "improved", "within noise", "unclear", "inconclusive", "not enough samples",
            "only in baseline", "only in candidate")
Level = Literal["samples", "runs", "stretch"]  # stretch: a history's stable nights against a run or repeat


@dataclass
class MetricData:
    """One side's data for one metric: successful values (samples, or run medians), what was
    attempted and failed, the tail values (run p95s at run level) and the guard's doubt."""

    unit: str
    values: list[float]
    attempts: int
    failures: int
    tails: list[float] | None = None  # runs: each run's p95; samples: None (taken from values)
    doubt: str | None = None  # why the fidelity guard could not trust it, if so


@dataclass
class Side:
    n: int
    p50: float | None
    p95: float | None
    attempts: int
    failures: int

    @classmethod
    def of(cls, data: MetricData | None) -> Side:
        if data is None or not data.values:
            return cls(0, None, None, data.attempts if data else 0, data.failures if data else 0)
        p50, p95 = np.percentile(data.values, [50, 95])
        return cls(len(data.values), float(p50), float(p95), data.attempts, data.failures)


@dataclass
class Test:
    """One estimated change with its interval and one-sided p-values against the band."""

    change: float  # relative: candidate / baseline - 1
    interval: tuple[float, float]  # two-sided, 1 - 2 alpha (the one-sided tests' bounds)
    p_value: float  # two-sided, of any change
    p_above: float  # the change exceeds +noise
    p_below: float  # the change is below -noise
    p_inside_high: float  # the change is below +noise (equivalence, upper)
    p_inside_low: float  # the change exceeds -noise (equivalence, lower)


@dataclass
class Comparison:
    metric: str
    unit: str
    family: str  # primary (an SLA metric) or exploratory
    baseline: Side
    candidate: Side
    change: float | None = None
    interval: tuple[float, float] | None = None
    p_value: float | None = None
    p_adjusted: dict[str, float] = field(default_factory=dict)  # regressed / improved / within noise / failures
    tail: dict[str, Any] | None = None  # the p95's change, interval and verdict
    failures: dict[str, Any] | None = None  # the failure shares and their verdict
    fidelity: str | None = None
    verdict: str = ""
    reason: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Report:
    level: Level
    baseline: dict[str, Any]  # path and n (samples) or runs
    candidate: dict[str, Any]
    alpha: float
    noise: float
    adjustment: dict[str, Any]
    comparisons: list[Comparison]
    skipped: list[str]

    def to_json(self) -> dict[str, Any]:
        return {"level": self.level, "baseline": self.baseline, "candidate": self.candidate, "alpha": self.alpha,
                "noise": self.noise, "adjustment": self.adjustment, "verdicts": list(VERDICTS),
                "skipped": self.skipped, "comparisons": [c.to_json() for c in self.comparisons]}


# -- estimating a change ----------------------------------------------------------------------

def _positive(*groups: np.ndarray) -> bool:
    return all(group.size and bool(np.all(group > 0)) for group in groups)


def _relative(theta: float, logs: bool, scale: float) -> float:
    return math.expm1(theta) if logs else theta / scale


def shift_test(baseline: list[float], candidate: list[float], noise: float, alpha: float, seed: int = 0) -> Test:
    """Sample level: Hodges-Lehmann shift with the Mann-Whitney U test's interval and p-values."""
    base, cand = np.asarray(baseline, float), np.asarray(candidate, float)
    logs = _positive(base, cand)
    scale = float(np.median(base))
    x, y = (np.log(base), np.log(cand)) if logs else (base, cand)
    up, down = (math.log1p(noise), math.log1p(-noise)) if logs else (noise * scale, -noise * scale)
    rng = np.random.default_rng(seed)
    if x.size * y.size > MAX_PAIRS:
        side = int(math.sqrt(MAX_PAIRS))
        x, y = rng.choice(x, min(side, x.size), replace=False), rng.choice(y, min(side, y.size), replace=False)
    diffs = np.sort(np.subtract.outer(y, x).ravel())
    theta = float(np.median(diffs))
    n, m = x.size, y.size
    z = stats.norm.ppf(1 - alpha)
    k = max(0, int(math.floor(n * m / 2 - z * math.sqrt(n * m * (n + m + 1) / 12))))
    low, high = float(diffs[min(k, diffs.size - 1)]), float(diffs[max(diffs.size - 1 - k, 0)])

    def p(shift: float, alternative: str) -> float:
        if np.ptp(np.concatenate([x, y - shift])) == 0:
            return 1.0  # all equal: no evidence either way
        return float(stats.mannwhitneyu(y - shift, x, alternative=alternative).pvalue)

    return Test(_relative(theta, logs, scale), (_relative(low, logs, scale), _relative(high, logs, scale)),
                p(0.0, "two-sided"), p(up, "greater"), p(down, "less"), p(up, "less"), p(down, "greater"))


def _scaled(baseline: list[float], candidate: list[float], noise: float
            ) -> tuple[np.ndarray, np.ndarray, bool, float, float, float]:
    """Both sides on the scale a run-level test uses (logs, or raw values if any is <= 0), the
    baseline's mean for relative changes, and the noise band's edges on that scale."""
    base, cand = np.asarray(baseline, float), np.asarray(candidate, float)
    logs = _positive(base, cand)
    scale = float(np.mean(base))
    x, y = (np.log(base), np.log(cand)) if logs else (base, cand)
    up, down = (math.log1p(noise), math.log1p(-noise)) if logs else (noise * scale, -noise * scale)
    return x, y, logs, scale, up, down


def _t_result(theta: float, se: float, df: float, logs: bool, scale: float, band: tuple[float, float], alpha: float) -> Test:
    t = stats.t(df)
    up, down = band

    def p(shift: float, alternative: str) -> float:
        score = (theta - shift) / se
        return float(2 * t.sf(abs(score)) if alternative == "two-sided" else t.sf(score) if alternative == "greater"
                     else t.cdf(score))

    half = float(t.ppf(1 - alpha)) * se
    return Test(_relative(theta, logs, scale), (_relative(theta - half, logs, scale), _relative(theta + half, logs, scale)),
                p(0.0, "two-sided"), p(up, "greater"), p(down, "less"), p(up, "less"), p(down, "greater"))


def welch_test(baseline: list[float], candidate: list[float], noise: float, alpha: float) -> Test:
    """Run level: Welch's t on the log run medians (their raw values if any is <= 0)."""
    x, y, logs, scale, up, down = _scaled(baseline, candidate, noise)
    vx, vy = x.var(ddof=1) / x.size, y.var(ddof=1) / y.size
    se = math.sqrt(vx + vy) or 1e-12  # constant runs on both sides: any difference is certain
    spread = vx**2 / (x.size - 1) + vy**2 / (y.size - 1)
    df = (vx + vy) ** 2 / spread if spread else float(x.size + y.size - 2)
    return _t_result(float(y.mean() - x.mean()), se, df, logs, scale, (up, down), alpha)


def pooled_test(baseline: list[float], candidate: list[float], noise: float, alpha: float) -> Test:
    """A few new runs (one or two) against a stretch of baseline runs: Student's t on the logs
    with the baseline's spread for both sides (a prediction test; with one new run, how far it
    lies outside what the baseline's runs vary by). Welch's t needs a spread on each side."""
    x, y, logs, scale, up, down = _scaled(baseline, candidate, noise)
    se = float(x.std(ddof=1)) * math.sqrt(1 / x.size + 1 / y.size) or 1e-12
    return _t_result(float(y.mean() - x.mean()), se, x.size - 1, logs, scale, (up, down), alpha)


def band_verdict(interval: tuple[float, float | None], noise: float, higher_better: bool) -> str:
    """The band rule on an interval alone (tails): beyond, inside, or unclear. An interval
    without an upper bound (None) reaches beyond every band upwards."""
    low, high = interval[0], math.inf if interval[1] is None else interval[1]
    if low > noise:
        return "improved" if higher_better else "regressed"
    if high < -noise:
        return "regressed" if higher_better else "improved"
    if -noise <= low and high <= noise:
        return "within noise"
    return "unclear"


def _tail(base: MetricData, cand: MetricData, noise: float, alpha: float, family: int, higher_better: bool
          ) -> dict[str, Any] | None:
    level = 2 * alpha / max(family, 1)  # each one-sided bound at alpha / m
    interval: tuple[float, float | None]
    if base.tails is not None and cand.tails is not None:
        if min(len(base.tails), len(cand.tails)) < MIN_RUNS:
            return None
        test = welch_test(base.tails, cand.tails, noise, level / 2)
        change, interval = test.change, test.interval
    else:
        b, c = np.asarray(base.values, float), np.asarray(cand.values, float)
        if min(b.size, c.size) < MIN_SAMPLES or np.percentile(b, 95) <= 0:
            return None
        # Each side's p95 by binomial order statistics at 1 - level / 2, so the ratio's interval,
        # from the two, covers with at least 1 - level: conservative, distribution-free, cheap.
        (b_low, b_high), (c_low, c_high) = (_quantile_interval(x, 1 - level / 2) for x in (b, c))
        change = float(np.percentile(c, 95) / np.percentile(b, 95) - 1)
        high = c_high / b_low - 1 if b_low > 0 and math.isfinite(c_high) else None
        interval = (c_low / b_high - 1 if b_high > 0 and math.isfinite(b_high) else -1.0, high)
    unbounded = (f"no upper bound: {MIN_SAMPLES}+ samples bound a median, a p95 at {1 - level:.1%} needs more on each side"
                 if interval[1] is None else None)
    return {"change": change, "interval": interval, "confidence": 1 - level, "unbounded": unbounded,
            "verdict": band_verdict(interval, noise, higher_better)}


def _quantile_interval(values: np.ndarray, confidence: float) -> tuple[float, float]:
    """The p95's distribution-free interval; a side the order statistics cannot bound is open."""
    bounds = stats.quantile_test(values, q=float(np.percentile(values, 95)), p=0.95).confidence_interval(confidence)
    low, high = float(bounds.low), float(bounds.high)
    return (low if math.isfinite(low) else 0.0, high)


def _more_failures(base: MetricData, cand: MetricData) -> float | None:
    """One-sided p of the candidate failing more often (Fisher's exact), None without failures."""
    if not (base.failures or cand.failures) or not (base.attempts and cand.attempts):
        return None
    table = [[cand.failures, cand.attempts - cand.failures], [base.failures, base.attempts - base.failures]]
    return float(stats.fisher_exact(table, alternative="greater").pvalue)


# -- comparing two sides ----------------------------------------------------------------------

def _adjust(family: list[Comparison], key: str, pvalues: dict[str, float]) -> None:
    """Benjamini-Hochberg within one family, for one kind of claim."""
    names = [c.metric for c in family if c.metric in pvalues]
    if names:
        adjusted = stats.false_discovery_control([pvalues[n] for n in names])
        by_name = {c.metric: c for c in family}
        for name, value in zip(names, np.atleast_1d(adjusted), strict=True):
            by_name[name].p_adjusted[key] = float(value)


def compare_sides(baseline: dict[str, MetricData], candidate: dict[str, MetricData], noise: float, alpha: float,
                  level: Level = "samples", primary: frozenset[str] = frozenset(), seed: int = 0) -> list[Comparison]:
    minimum = MIN_SAMPLES if level == "samples" else MIN_RUNS
    comparisons: list[Comparison] = []
    tests: dict[str, Test] = {}
    failures: dict[str, float] = {}
    for name in sorted(set(baseline) | set(candidate)):
        base, cand = baseline.get(name), candidate.get(name)
        unit = (base or cand).unit  # type: ignore[union-attr]
        comparison = Comparison(name, unit, "primary" if name in primary else "exploratory", Side.of(base), Side.of(cand))
        comparisons.append(comparison)
        if base is None or cand is None:
            comparison.verdict = "only in baseline" if cand is None else "only in candidate"
            continue
        if (p := _more_failures(base, cand)) is not None:
            failures[name] = p
        if min(len(base.values), len(cand.values) if level != "stretch" else minimum) < minimum or not cand.values:
            comparison.verdict = "not enough samples"
            comparison.reason = f"{len(base.values)} vs {len(cand.values)} values; at least {minimum} per side"
            continue
        if (zero := _zero_centre(base.values, cand.values, level)) is not None:
            comparison.verdict, comparison.reason = "unclear", zero
            continue
        test = (shift_test(base.values, cand.values, noise, alpha, seed) if level == "samples"
                else welch_test(base.values, cand.values, noise, alpha) if len(cand.values) >= MIN_RUNS
                else pooled_test(base.values, cand.values, noise, alpha))
        tests[name] = test
        comparison.change, comparison.interval, comparison.p_value = test.change, test.interval, test.p_value
        comparison.fidelity = "; ".join(f"{label}: {why}" for label, side in (("baseline", base), ("candidate", cand))
                                        if (why := side.doubt)) or None
    worse = {n: (t.p_below if higher_is_better(n) else t.p_above) for n, t in tests.items()}
    better = {n: (t.p_above if higher_is_better(n) else t.p_below) for n, t in tests.items()}
    inside = {n: max(t.p_inside_high, t.p_inside_low) for n, t in tests.items()}
    for family in ("primary", "exploratory"):
        members = [c for c in comparisons if c.family == family]
        for key, pvalues in (("regressed", worse), ("improved", better), ("within noise", inside), ("failures", failures)):
            _adjust(members, key, pvalues)
        for comparison in members:
            base, cand = baseline.get(comparison.metric), candidate.get(comparison.metric)
            if base is not None and cand is not None and comparison.metric in tests:
                comparison.tail = _tail(base, cand, noise, alpha, len(members), higher_is_better(comparison.metric))
            _judge(comparison, alpha, noise)
    return comparisons


def _zero_centre(baseline: list[float], candidate: list[float], level: Level) -> str | None:
    """Why a relative change is undefined (values on their own scale, a baseline centred on 0), or None."""
    base = np.asarray(baseline, float)
    if _positive(base, np.asarray(candidate, float)):
        return None
    centre = float(np.median(base) if level == "samples" else np.mean(base))
    if centre:
        return None
    return (f"the baseline's {'median' if level == 'samples' else 'mean'} is 0: a change relative to it is undefined "
            f"(candidate's median {float(np.median(candidate)):.4g})")


def _judge(comparison: Comparison, alpha: float, noise: float) -> None:
    p = comparison.p_adjusted
    if "failures" in p:
        base, cand = comparison.baseline, comparison.candidate
        shares = [side.failures / side.attempts if side.attempts else 0.0 for side in (base, cand)]
        comparison.failures = {"baseline": shares[0], "candidate": shares[1], "p_adjusted": p["failures"],
                               "verdict": "regressed" if p["failures"] < alpha else "unchanged"}
    if comparison.verdict:  # only on one side, or too few values
        if comparison.failures and comparison.failures["verdict"] == "regressed":
            comparison.verdict, comparison.reason = "regressed", _failure_reason(comparison, alpha)
        return
    assert comparison.change is not None and comparison.interval is not None
    low, high = comparison.interval
    shown = f"change {comparison.change:+.1%}, {1 - 2 * alpha:.0%} interval [{low:+.1%}, {high:+.1%}]"
    band = f"±{noise:.0%}"
    if p.get("regressed", 1.0) < alpha:
        comparison.verdict, comparison.reason = "regressed", f"{shown}: beyond {band} (adjusted p {p['regressed']:.3g})"
    elif p.get("improved", 1.0) < alpha:
        comparison.verdict, comparison.reason = "improved", f"{shown}: beyond {band} (adjusted p {p['improved']:.3g})"
    elif p.get("within noise", 1.0) < alpha:
        comparison.verdict, comparison.reason = "within noise", f"{shown}: inside {band} (adjusted p {p['within noise']:.3g})"
    else:
        comparison.verdict, comparison.reason = "unclear", f"{shown}: neither shown beyond nor inside {band}"
    if comparison.failures and comparison.failures["verdict"] == "regressed":
        comparison.verdict, comparison.reason = "regressed", f"{_failure_reason(comparison, alpha)}; {shown}"
    elif comparison.tail and comparison.tail["verdict"] == "regressed" and comparison.verdict != "regressed":
        tail = comparison.tail
        comparison.verdict = "regressed"
        upper = "unbounded" if tail["interval"][1] is None else f"{tail['interval'][1]:+.1%}"
        comparison.reason = (f"p95 change {tail['change']:+.1%}, interval [{tail['interval'][0]:+.1%}, "
                             f"{upper}]: the tail, beyond {band}; median: {shown}")
    if comparison.fidelity:
        comparison.verdict, comparison.reason = "inconclusive", f"{comparison.fidelity}; {shown}"


def _failure_reason(comparison: Comparison, alpha: float) -> str:
    assert comparison.failures is not None
    f = comparison.failures
    return (f"fails more: {f['baseline']:.1%} -> {f['candidate']:.1%} of {comparison.candidate.attempts} attempts "
            f"(adjusted p {f['p_adjusted']:.3g} < {alpha})")


# -- reading the sides --------------------------------------------------------------------------

def is_repeat(run_dir: Path) -> bool:
    return (run_dir / REPEAT).is_file()


def _primary(manifest: Manifest) -> set[str]:
    """The metrics the run's SLAs name."""
    try:
        return {sla.metric for sla in parse_topology(manifest.topology).slas}
    except TopologyError:
        return set()


def _doubts(analysis: Analysis, events: list[Event]) -> dict[str, str]:
    """Metrics the fidelity guard could not trust in this run, and why."""
    doubts = {}
    for name, summary in analysis.summary.items():
        judgement = judge(name, summary, events, analysis.fidelity)
        if judgement is not None and not judgement.conclusive and judgement.lag_p99_ms is not None:  # doubts what it saw
            doubts[name] = judgement.reason()
    return doubts


def _of_run(run_dir: Path) -> tuple[dict[str, MetricData], set[str], list[str], Analysis]:
    records = load(run_dir)
    analysis = analyze(records)
    doubts = _doubts(analysis, records.events)
    data = {name: MetricData(m.unit, list(m.values), m.attempts, m.attempts - len(m.values), None, doubts.get(name))
            for name, m in analysis.metrics.items()}
    manifest = records.manifest
    partial = [f"{run_dir}: the run is {manifest.status} (partial): its figures are what it measured before it stopped"]
    return data, _primary(manifest), [*records.skipped, *(partial if manifest.partial else [])], analysis


def load_side(run_dir: Path) -> tuple[Level, dict[str, MetricData], set[str], list[str], dict[str, Any]]:
    """(level, metric data, primary metrics, skipped lines, description) of a results directory."""
    if not is_repeat(run_dir):
        data, names, notes, _ = _of_run(run_dir)
        return "samples", data, names, notes, {"path": str(run_dir), "samples": {n: len(d.values) for n, d in data.items()}}
    try:
        repeat = read_json(run_dir / REPEAT)
        dirs = [run_dir / run["dir"] for run in repeat["runs"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise RecordsError(f"{run_dir / REPEAT}: not a repeat file ({exc}); rerun `lab run --repeat`") from None
    merged: dict[str, MetricData] = {}  # per metric: each run's median and p95, attempts and failures summed
    primary: set[str] = set()
    skipped: list[str] = []
    runs = 0
    for directory in dirs:
        if not (directory / MANIFEST).is_file():
            skipped.append(f"{directory}: missing, left out of the run-level comparison")
            continue
        data, run_primary, run_skipped, analysis = _of_run(directory)
        runs, primary, skipped = runs + 1, primary | run_primary, skipped + run_skipped
        for name, d in data.items():
            into = merged.setdefault(name, MetricData(d.unit, [], 0, 0, [], None))
            summary = analysis.summary[name]
            if summary.p50 is not None and summary.p95 is not None and into.tails is not None:
                into.values.append(summary.p50)
                into.tails.append(summary.p95)
            into.attempts, into.failures = into.attempts + d.attempts, into.failures + d.failures
            into.doubt = into.doubt or d.doubt
    return "runs", merged, primary, skipped, {"path": str(run_dir), "runs": runs}


def run_samples(run_dir: Path) -> dict[str, Metric]:
    """Every metric's samples of a single run (for the report's overlay), by the analysis `lab run` used."""
    return analyze(load(run_dir)).metrics


def compare_dirs(baseline: Path, candidate: Path, noise: float, alpha: float, metrics: tuple[str, ...] = ()) -> Report:
    """Both sides read (damaged lines skipped and named), compared at their common level."""
    level_b, base, primary_b, skipped_b, described_b = load_side(baseline)
    level_c, cand, primary_c, skipped_c, described_c = load_side(candidate)
    if level_b != level_c:
        raise RecordsError("cannot compare a repeated run (--repeat) with a single run: repeat both or neither")
    if metrics:
        base = {n: d for n, d in base.items() if n in metrics}
        cand = {n: d for n, d in cand.items() if n in metrics}
    return compare_report(level_b, (described_b, base), (described_c, cand), frozenset(primary_b | primary_c), noise, alpha,
                          skipped_b + skipped_c)


def compare_report(level: Level, baseline: tuple[dict[str, Any], dict[str, MetricData]],
                   candidate: tuple[dict[str, Any], dict[str, MetricData]], primary: frozenset[str], noise: float,
                   alpha: float, skipped: list[str]) -> Report:
    """Two described sides compared, with the adjustment the report states."""
    (described_b, base), (described_c, cand) = baseline, candidate
    comparisons = compare_sides(base, cand, noise, alpha, level, primary)
    families = {family: sum(c.family == family for c in comparisons) for family in ("primary", "exploratory")}
    adjustment = {"method": "Benjamini-Hochberg within each family", "families": families,
                  "primary": sorted(primary & (set(base) | set(cand)))}
    return Report(level, described_b, described_c, alpha, noise, adjustment, comparisons, skipped)
