"""The CPU bound: the least wall time a run of real peers can take on this machine.

Every CPU-second the peers and the lab spend runs on one of the machine's cores, so a run, or a
phase of it, takes at least their CPU-seconds divided by the cores. Its wall time over that
bound says how far it is from the fastest this machine allows: 1.0 is saturated, anything above
is time spent waiting (links and timers stretched by the dilation, settle bounds, a phase's
single chain of steps). Performance work on the lab is judged by this ratio; "machine busy"
beside it also counts work that is not the run's.

CPU-seconds come from the collector's samples (every host process, the delay line, the
orchestrator), interpolated at a window's edges; times are the machine's (the events' virtual
instants converted back through the run's dilation).
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lab.events import PHASE, RERUN, RUN_STARTED, Sample
from nodes.protocol import Dilation, Event

Series = dict[int, tuple[str, list[tuple[int, float]]]]  # pid -> (role, [(t_ns, cumulative CPU-s)])
Clock = Callable[[int], int]  # the run's instants to the machine's (nodes/protocol.py Dilation.real_ns)


def same_instant(t_ns: int) -> int:
    """The clock of an undilated run, and of figures taken on the run's own clock."""
    return t_ns


@dataclass(frozen=True)
class Bound:
    """One window of a run (the run itself or a phase) against its CPU bound."""

    label: str
    wall_s: float  # the machine's seconds
    cpu_s: dict[str, float]  # CPU-seconds spent in the window, by role (peer, delay_line, orchestrator)
    cores: int
    busy: float | None = None  # the machine's busy share in the window (a phase's), the run's work and any other

    @property
    def bound_s(self) -> float:
        return sum(self.cpu_s.values()) / self.cores

    @property
    def lab_share(self) -> float | None:
        """The lab's own processes' share of the window's CPU-seconds (what measuring it cost)."""
        total = sum(self.cpu_s.values())
        return (total - self.cpu_s.get("peer", 0.0)) / total if total > 0 else None

    @property
    def ratio(self) -> float | None:
        """Wall time over the bound; None when nothing was measured to spend CPU."""
        return self.wall_s / self.bound_s if self.bound_s > 0 else None

    def record(self) -> dict[str, Any]:
        return {"label": self.label, "wall_s": self.wall_s, "cpu_s": self.cpu_s, "cores": self.cores,
                "bound_s": self.bound_s, "ratio": self.ratio, "busy": self.busy, "lab_share": self.lab_share}


def cpu_at(series: list[tuple[int, float]], t_ns: int) -> float:
    """A process's cumulative CPU seconds at t, interpolated between its samples (its first and
    last sample's value outside them)."""
    times = [t for t, _ in series]
    after = bisect.bisect_left(times, t_ns)
    if after == 0:
        return series[0][1]
    if after == len(series):
        return series[-1][1]
    (t0, c0), (t1, c1) = series[after - 1], series[after]
    return c0 + (c1 - c0) * (t_ns - t0) / (t1 - t0) if t1 > t0 else c1


def cpu_series(samples: list[Sample], role: str | None = None, clock: Clock = same_instant) -> Series:
    """Each process's cumulative CPU over time, of one role or of all; `clock` maps a sample's
    instant (the run's time) to another (the machine's)."""
    series: Series = {}
    for sample in sorted(samples, key=lambda s: s.t_ns):
        if role is None or sample.role == role:
            series.setdefault(sample.pid, (sample.role, []))[1].append((clock(sample.t_ns), sample.cpu_seconds))
    return series


def _spent(series: Series, start_ns: int, end_ns: int, from_birth: bool) -> dict[str, float]:
    """CPU-seconds by role between two instants. `from_birth`: a process first sampled after the
    start counts from zero (it was started inside the window), else from its first sample."""
    spent: dict[str, float] = defaultdict(float)
    for role, points in series.values():
        if points[0][0] > end_ns:
            continue
        before = 0.0 if from_birth and points[0][0] > start_ns else cpu_at(points, start_ns)
        spent[role] += max(cpu_at(points, end_ns) - before, 0.0)
    return dict(sorted(spent.items()))


def bounds(events: list[Event], samples: list[Sample], dilation: Dilation, cores: int | None) -> list[Bound]:
    """The run's bound (from its start to the end of its last phase, the 2N check's included;
    every process counted from its birth if born within), then each workload phase's; empty
    without samples or phases."""
    # Interpolated on the machine's clock, on which a process spends CPU: across a change of factor,
    # the run's clock would give the slow side a share of the CPU by its virtual length.
    series = cpu_series(samples, clock=dilation.real_ns)
    phases = [e for e in events if e.op == PHASE]
    ends = [e.end_ns for e in events if e.op in (PHASE, RERUN)]
    started = [e.start_ns for e in events if e.op == RUN_STARTED]
    if not series or not phases or not cores:
        return []

    def bound(label: str, start_ns: int, end_ns: int, from_birth: bool, busy: object = None) -> Bound:
        start, end = dilation.real_ns(start_ns), dilation.real_ns(end_ns)
        return Bound(label, (end - start) / 1e9, _spent(series, start, end, from_birth), cores,
                     float(busy) if isinstance(busy, int | float) else None)

    run = bound("run", started[0] if started else phases[0].start_ns, max(ends), True)
    return [run, *(bound(f"{e.details.get('number', '')} {e.details.get('phase')}".strip(), e.start_ns, e.end_ns, False,
                         e.details.get("cpu_busy")) for e in phases)]
