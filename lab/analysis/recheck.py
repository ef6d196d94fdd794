"""The 2N check: a latency measured again at twice the dilation must not move.

The timer-lag guard (guard.py) screens each timer; it cannot see queueing that adds up along an
operation of many steps (a lookup's dozens of hand-offs, each behind its host's other peers). A
measurement that is the protocol's, not the machine's, does not depend on how much the machine
was slowed: at twice the dilation the machine looks twice as fast again, and the protocol's time
stays. So after the workload the run measures some of the operations again (lab/workload/
phases.py `rerun`: the same gets and searches after the peers forget their results, joins after
a leave, new announcements) on the same network, at the phase's own dilation N and at twice it:
once at N to warm up (not counted), then N, 2N, 2N, N, so that what the network learns from the
same operations done again is learnt before anything counts, and what it still learns falls on
both sides alike. A verdict is conclusive only if the median and the SLA's statistic moved less
than max(`fidelity.tolerance`, their noise) between the two sides: the half-width of the two
figures' 95% intervals (bootstrap), added in quadrature. The workload's own figure is shown beside them.

What it means for a time spent computing: with `network.cpu: scaled`, computation runs N times
faster against the links, so a computed time halves at 2N and the check says so (the figure is
the CPU model's, not the protocol's); with `core`, every peer has one core at any N and a
computed time stays.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats

from lab.events import RERUN
from lab.quantities import shown
from lab.topology import Sla
from nodes.protocol import Event

MIN_RERUN = 5  # operations below which a rerun says nothing
MIN_UNITS = 3  # independent units (operations; gossip messages) below which it says nothing either
RESAMPLES = 2000
Statistic = Callable[[np.ndarray, int | None], Any]
STATISTIC: dict[str, Statistic] = {
    "p50": lambda x, axis: np.percentile(x, 50, axis=axis), "p95": lambda x, axis: np.percentile(x, 95, axis=axis),
    "p99": lambda x, axis: np.percentile(x, 99, axis=axis), "mean": lambda x, axis: np.mean(x, axis=axis),
    "min": lambda x, axis: np.min(x, axis=axis), "max": lambda x, axis: np.max(x, axis=axis),
}


@dataclass(frozen=True)
class Stretch:
    """One stretch of the 2N check: a kind of phase measured again at a dilation, the phase's
    own (`doubled` false: the control, on the network as it is by then) or twice it (true), or a
    warm-up that does not count (None)."""

    phase: str
    factor: float
    doubled: bool | None
    start_ns: int
    end_ns: int

    def holds(self, event: Event) -> bool:
        return self.start_ns <= event.start_ns <= self.end_ns


Again = tuple[Stretch, list[Event]]  # a stretch and the operations started in it


def split(events: list[Event]) -> tuple[list[Event], dict[str, dict[bool, Again]]]:
    """The workload's events, and by kind of phase the 2N check's two sides (by `doubled`), each
    its first stretch with the operations started in any of its stretches."""
    stretches = [Stretch(str(e.details.get("phase")), float(e.details.get("time_dilation", 1)),
                         e.details.get("doubled"), e.start_ns, e.end_ns) for e in events if e.op == RERUN]
    reruns: dict[str, dict[bool, Again]] = {}
    for stretch in stretches:
        if stretch.doubled is not None:
            reruns.setdefault(stretch.phase, {}).setdefault(stretch.doubled, (stretch, []))  # a side's stretches pooled
    main = []
    for event in events:
        inside = next((s for s in stretches if s.holds(event)), None) if event.op != RERUN else None
        if inside is None:
            main.append(event)
        elif inside.doubled is not None:  # a warm-up's operations count nowhere
            reruns[inside.phase][inside.doubled][1].append(event)
    return main, reruns


@dataclass(frozen=True)
class Move:
    """One figure measured again at the phase's dilation and at twice it."""

    name: str
    workload: float  # as the workload measured it
    again: float  # measured again at the phase's dilation, just before
    doubled: float  # at twice it
    move: float  # (doubled - again) / again
    tolerance: float  # max(fidelity.tolerance, the noise of the two figures)

    @property
    def held(self) -> bool:
        return abs(self.move) <= self.tolerance

    def describe(self, unit: str) -> str:
        return (f"{self.name} {shown(self.again, unit)} -> {shown(self.doubled, unit)} ({self.move:+.1%}, "
                f"{'within' if self.held else 'beyond'} {self.tolerance:.1%}; the workload's {shown(self.workload, unit)})")


@dataclass(frozen=True)
class Recheck:
    """The 2N check of one SLA."""

    conclusive: bool
    factors: tuple[float, float] | None  # the two stretches' dilations: the phase's, twice it
    n: tuple[int, int]  # operations measured again at each
    moves: tuple[Move, ...]
    why: str = ""  # when there is no figure to compare

    def record(self, unit: str) -> dict[str, Any]:
        """What verdicts.json keeps, as JSON reads it back (lists, not tuples)."""
        return {"conclusive": self.conclusive, "factors": list(self.factors) if self.factors else None, "n": list(self.n),
                "moves": [asdict(m) for m in self.moves], "why": self.why, "reason": self.reason(unit)}

    def reason(self, unit: str) -> str:
        if not self.moves or self.factors is None:
            return f"2N check: {self.why}"
        shown_moves = "; ".join(m.describe(unit) for m in self.moves)
        verdict = "held" if self.conclusive else "moved: the figure depends on how fast the machine was made to look"
        return (f"2N check, {self.n[0]} operations at dilation {self.factors[0]:g} then {self.n[1]} at "
                f"{self.factors[1]:g}: {shown_moves}: {verdict}")


def _noise(values: np.ndarray, units: list[object], stat: str, value: float) -> float:
    """Half the 95% bootstrap interval of `stat`, relative to it, resampling the independent
    units: operations, or for gossip deliveries the messages (one message's deliveries share its
    path through the mesh: they are one observation of the network, not hundreds)."""
    clusters: dict[object, list[float]] = {}
    for unit, v in zip(units, values, strict=True):
        clusters.setdefault(unit, []).append(float(v))
    if len(clusters) < 2 or not value:
        return math.inf
    rng = np.random.default_rng(0)
    if len(clusters) == len(values):
        data, statistic = (values,), STATISTIC[stat]
        vectorized = True
    else:
        groups = [np.asarray(c) for c in clusters.values()]
        data = (np.arange(len(groups)),)
        vectorized = False

        def statistic(chosen: np.ndarray, axis: int | None = None) -> Any:
            return STATISTIC[stat](np.concatenate([groups[i] for i in chosen]), None)
    interval = stats.bootstrap(data, statistic, n_resamples=RESAMPLES, method="percentile", vectorized=vectorized,
                               random_state=rng).confidence_interval
    return float((interval.high - interval.low) / 2 / abs(value))


def _sample(metric: str, stretch: Again | None) -> tuple[np.ndarray, list[object]]:
    """The metric's values in a stretch (as latency_metrics takes them: the successful
    operations), each with its independent unit: the message of a gossip delivery, else itself."""
    events = [e for e in stretch[1] if e.op == metric and e.ok] if stretch else []
    return np.asarray([e.ms for e in events], dtype=float), [e.message or n for n, e in enumerate(events)]


def recheck(sla: Sla, measured: list[float], again: Again | None, doubled: Again | None, tolerance: float) -> Recheck:
    """`measured`: the metric's values in the workload; `again`, `doubled`: the stretches that
    measured it again at the phase's dilation and at twice it (None if none did). The two
    stretches run on the network as it is after the workload, one after the other, so that a
    move between them is the dilation's, not the network's."""
    if again is None or doubled is None:
        return Recheck(False, None, (0, 0), (), f"no operations of {sla.metric} were measured again")
    (first, first_units), (second, second_units) = _sample(sla.metric, again), _sample(sla.metric, doubled)
    factors = (again[0].factor, doubled[0].factor)
    units = (len(set(first_units)), len(set(second_units)))
    if min(len(first), len(second), len(measured)) < MIN_RERUN or min(units) < MIN_UNITS:
        clustered = units != (len(first), len(second))
        counted = f"{len(first)} and {len(second)}" + (f" ({units[0]} and {units[1]} messages)" if clustered else "")
        return Recheck(False, factors, (len(first), len(second)), (), f"too few operations to compare ({len(measured)} in "
                       f"the workload, {counted} measured again; at least {MIN_RERUN} each, from {MIN_UNITS} independent "
                       "messages or operations)")
    moves = []
    for stat in dict.fromkeys(("p50", sla.stat)):
        workload, before, after = (float(STATISTIC[stat](np.asarray(x, dtype=float), None)) for x in (measured, first, second))
        noise = math.hypot(_noise(first, first_units, stat, before), _noise(second, second_units, stat, after))
        move = (after - before) / before if before else math.inf
        moves.append(Move(stat, workload, before, after, move, max(tolerance, noise)))
    return Recheck(all(m.held for m in moves), factors, (len(first), len(second)), tuple(moves))
