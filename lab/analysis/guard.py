"""The fidelity guard: did the machine keep up with what it emulated, phase by phase?

Every host process measures how late its event loop runs a timer (nodes/lag.py), in the run's
virtual time. A latency measured while timers run late includes that wait: when the machine is
saturated it measures queueing for a CPU, not the protocol. The rule:

- per phase (from the orchestrator's `phase` events), the loop lag of all host processes is
  pooled (windows of 0.5 s that overlap the phase, counts by lateness; quantiles are a bin's
  upper edge, so they err high; beyond the last bin, its edge: a lower bound);
- a time metric's verdict (milliseconds or seconds) is **inconclusive** when the lag's p99 while
  its operations ran (per phase they started in, from the first one's start to the last one's
  end) exceeds GUARD_SHARE (5%) of the metric's median: the error the machine adds is then not
  small against what is measured. Lag after the last one ended (a phase's settle time, the
  change of time dilation at its end) cannot be in them. Operations answered
  without waiting (a cache hit, a local index or DHT store) run between two of the loop's
  turns, so a late timer is not in them: the guard does not judge them;
- the time dilation the run would have needed is estimated as the run's factor scaled by how
  far the lag overshot (lag seen on a dilated clock shrinks about as the factor grows), rounded
  up: an estimate, not a promise; the guard of the rerun says whether it was enough. It holds
  for a time spent waiting (links, timers), which the clock keeps; a time spent computing
  shrinks with the clock as the lag does, so no dilation makes it conclusive, only a less busy
  machine. Measured: topologies/10-peers.yaml (no link delay, 80-100% busy) at dilation 1, 6
  and 30 gave bootstrap medians 14.5, 3.5, 0.66 ms against lag p99 20, 5, 2 ms; the estimate
  grew 2, 9, 92. The advice says so, since one run cannot tell the two apart.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import asdict, dataclass, field

from lab.analysis.stats import Summary
from lab.events import PHASE
from lab.machine import LinkWatch
from lab.metric_names import TIME_TO_READY, unit_of
from nodes.protocol import ANSWERED_LOCALLY, LAG_BINS_MS, LOOP_LAG, Event

GUARD_SHARE = 0.05
MS_PER_UNIT = {"millisecond": 1.0, "second": 1000.0}


@dataclass(frozen=True)
class Lag:
    """Loop-lag quantiles (ms, virtual) pooled over host processes and windows."""

    windows: int
    wakeups: int
    p50_ms: float | None
    p99_ms: float | None
    max_ms: float | None

    @classmethod
    def of(cls, counts: list[int], windows: int) -> Lag:
        total = sum(counts)
        edges = [*LAG_BINS_MS, LAG_BINS_MS[-1]]  # beyond the last bin: its edge, a lower bound (a frozen host's)

        def quantile(q: float) -> float | None:
            if not total:
                return None
            running = 0
            for edge, count in zip(edges, counts, strict=True):
                running += count
                if running >= q * total:
                    return edge
            return edges[-1]

        highest = max((edge for edge, count in zip(edges, counts, strict=True) if count), default=None)
        return cls(windows, total, quantile(0.5), quantile(0.99), highest)


@dataclass(frozen=True)
class PhaseLag:
    phase: str
    number: int
    start_ns: int
    end_ns: int
    cpu_busy: float | None  # the machine's busy share during the phase
    lag: Lag
    time_dilation: float = 1.0
    links: LinkWatch | None = None  # what the links did during the phase

    def record(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class Judgement:
    """The guard's word on one metric."""

    conclusive: bool
    lag_p99_ms: float | None
    limit_ms: float | None
    phases: list[str]
    dilation_needed: float | None = None
    late_links: list[str] = field(default_factory=list)  # phases whose delay line ran later than a link may be off

    def reason(self) -> str:
        if self.lag_p99_ms is None or self.limit_ms is None:
            return "no loop lag measured while its operations ran: the guard cannot vouch for them"
        late = f"; links ran late in {'; '.join(self.late_links)}" if self.late_links else ""
        lagging = self.lag_p99_ms > self.limit_ms
        text = (f"loop lag p99 {self.lag_p99_ms:g} ms {'>' if lagging else '<='} {GUARD_SHARE:.0%} of the median "
                f"({self.limit_ms:.3g} ms) while its operations ran in {', '.join(self.phases)}{late}")
        if not lagging:
            return text
        return (f"{text}: the machine was too busy; needs time_dilation >= {self.dilation_needed:g} if that time is "
                "waiting on links and timers, a less busy machine if it is computing")


@dataclass
class LagPool:
    """Loop-lag windows added up as they are heard: one histogram over hosts and windows."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(LAG_BINS_MS) + 1))
    windows: int = 0

    def add(self, event: Event) -> None:
        """Adds one LOOP_LAG event's window."""
        self.windows += 1
        for bin_, count in enumerate(event.details.get("counts", [])[: len(self.counts)]):
            self.counts[bin_] += int(count)

    @property
    def lag(self) -> Lag:
        return Lag.of(self.counts, self.windows)


def _union(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The spans, overlapping ones merged, in order."""
    merged: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def _pooled(events: list[Event], spans: list[tuple[int, int]]) -> Lag:
    """The loop-lag windows that overlap any of the spans, pooled."""
    spans = _union(spans)
    ends = [end for _, end in spans]
    pool = LagPool()
    for event in events:
        if event.op == LOOP_LAG:
            first = bisect.bisect_right(ends, event.start_ns)  # the first span ending after the window starts
            if first < len(spans) and spans[first][0] < event.end_ns:
                pool.add(event)
    return pool.lag


def _links(record: object) -> LinkWatch | None:
    try:
        return LinkWatch(**record) if isinstance(record, dict) else None
    except TypeError:  # a record of another version: the phase's links are unknown
        return None


def phase_lags(events: list[Event]) -> list[PhaseLag]:
    return [
        PhaseLag(str(e.details.get("phase")), int(e.details.get("number", 0)), e.start_ns, e.end_ns,
                 e.details.get("cpu_busy"), _pooled(events, [(e.start_ns, e.end_ns)]),
                 float(e.details.get("time_dilation", 1)), _links(e.details.get("links")))
        for e in events if e.op == PHASE
    ]


def _spans_of(metric: str, events: list[Event], phases: list[PhaseLag]) -> tuple[list[PhaseLag], list[tuple[int, int]]]:
    """The phases in which the metric's operations started, and the spans while any of them ran
    (time to ready: the bootstrap phase): lag between them, in a gossip phase's rest or while a
    phase waits for its last operation's effects, is not theirs."""
    operations = sorted((e.start_ns, e.end_ns) for e in events if e.op == metric) if unit_of(metric) == "millisecond" else []
    if not operations:
        involved = [p for p in phases if p.phase == "bootstrap"] if metric == "time_to_ready" else []
        return involved, [(p.start_ns, p.end_ns) for p in involved]
    starts = [start for start, _ in operations]
    involved, spans = [], []
    for p in phases:
        inside = operations[bisect.bisect_left(starts, p.start_ns):bisect.bisect_right(starts, p.end_ns)]
        if inside:
            involved.append(p)
            spans += inside
    return involved, spans


def judge(metric: str, summary: Summary, events: list[Event], phases: list[PhaseLag]) -> Judgement | None:
    """The guard's judgement of a latency metric (time to ready included); None for the metrics
    it does not judge: operations answered locally, and figures that are not a wait (memory, CPU)."""
    if summary.p50 is None or metric in ANSWERED_LOCALLY or not (summary.unit == "millisecond" or metric == TIME_TO_READY):
        return None
    involved, spans = _spans_of(metric, events, phases)
    lag = _pooled(events, spans)
    names = [p.phase for p in involved]
    late = [f"{p.phase} (delay line p50 {p.links.late_p50_s * 1e3:.3g} ms late, tolerance {p.links.tolerance_s * 1e3:.3g} ms)"
            for p in involved if p.links is not None and p.links.late
            and p.links.late_p50_s is not None and p.links.tolerance_s is not None]
    if lag.p99_ms is None:
        return Judgement(False, None, None, names, late_links=late)
    limit = GUARD_SHARE * summary.p50 * MS_PER_UNIT[summary.unit]
    factor = max(p.time_dilation for p in involved)
    needed = float(math.ceil(factor * lag.p99_ms / limit)) if lag.p99_ms > limit else None
    return Judgement(lag.p99_ms <= limit and not late, lag.p99_ms, limit, names, needed, late)
