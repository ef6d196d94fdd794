"""The 2N check: a latency measured again at twice the dilation must not move.

The timer-lag guard (guard.py) screens each timer; it cannot see queueing that adds up along an
operation of many steps (a lookup's dozens of hand-offs, each behind its host's other peers). A
measurement that is the protocol's, not the machine's, does not depend on how much the machine
was slowed: at twice the dilation the machine looks twice as fast again, and the protocol's time
stays. So after the workload the run measures some of the operations again at twice the
dilation of the phase they ran in (lab/workload/phases.py `rerun`), on the same network, and a
verdict is conclusive only if the median and the SLA's statistic moved less than
max(`fidelity.tolerance`, their noise): the half-width of the two figures' 95% intervals
(bootstrap), added in quadrature.

What it means for a time spent computing: with `network.cpu: scaled`, computation runs N times
faster against the links, so a computed time halves at 2N and the check says so (the figure is
the CPU model's, not the protocol's); with `core`, every peer has one core at any N and a
computed time stays.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

from lab.analysis.metrics import latency_metrics
from lab.events import RERUN
from lab.quantities import shown
from lab.topology import Sla
from nodes.protocol import Event

MIN_RERUN = 5  # operations below which a rerun says nothing
RESAMPLES = 2000
Statistic = Callable[[np.ndarray, int | None], Any]
STATISTIC: dict[str, Statistic] = {
    "p50": lambda x, axis: np.percentile(x, 50, axis=axis), "p95": lambda x, axis: np.percentile(x, 95, axis=axis),
    "p99": lambda x, axis: np.percentile(x, 99, axis=axis), "mean": lambda x, axis: np.mean(x, axis=axis),
    "min": lambda x, axis: np.min(x, axis=axis), "max": lambda x, axis: np.max(x, axis=axis),
}


@dataclass(frozen=True)
class Stretch:
    """One stretch of the 2N check: a kind of phase measured again at a dilation."""

    phase: str
    factor: float
    start_ns: int
    end_ns: int

    def holds(self, event: Event) -> bool:
        return self.start_ns <= event.start_ns <= self.end_ns


def split(events: list[Event]) -> tuple[list[Event], dict[str, tuple[Stretch, list[Event]]]]:
    """The workload's events, and each rerun phase's stretch with the operations started in it."""
    stretches = [Stretch(str(e.details.get("phase")), float(e.details.get("time_dilation", 1)), e.start_ns, e.end_ns)
                 for e in events if e.op == RERUN]
    reruns: dict[str, tuple[Stretch, list[Event]]] = {s.phase: (s, []) for s in stretches}
    main = []
    for event in events:
        inside = next((s for s in stretches if s.holds(event)), None) if event.op != RERUN else None
        if inside is None:
            main.append(event)
        else:
            reruns[inside.phase][1].append(event)
    return main, reruns


@dataclass(frozen=True)
class Move:
    """One figure at the run's dilation and at twice it."""

    name: str
    value: float
    again: float
    move: float  # (again - value) / value
    tolerance: float  # max(fidelity.tolerance, the noise of the two figures)

    @property
    def held(self) -> bool:
        return abs(self.move) <= self.tolerance

    def describe(self, unit: str) -> str:
        return (f"{self.name} {shown(self.value, unit)} -> {shown(self.again, unit)} ({self.move:+.1%}, "
                f"{'within' if self.held else 'beyond'} {self.tolerance:.1%})")


@dataclass(frozen=True)
class Recheck:
    """The 2N check of one SLA."""

    conclusive: bool
    factor: float | None
    n: int
    moves: tuple[Move, ...]
    why: str = ""  # when there is no figure to compare

    def reason(self, unit: str) -> str:
        if not self.moves:
            return f"2N check: {self.why}"
        shown = "; ".join(m.describe(unit) for m in self.moves)
        verdict = "held" if self.conclusive else "moved: the figure depends on how fast the machine was made to look"
        return f"2N check at dilation {self.factor:g} ({self.n} operations): {shown}: {verdict}"


def _noise(values: np.ndarray, stat: str, value: float) -> float:
    """Half the 95% bootstrap interval of `stat`, relative to it."""
    if len(values) < 2 or not value:
        return math.inf
    interval = stats.bootstrap((values,), STATISTIC[stat], n_resamples=RESAMPLES, method="percentile",
                               random_state=np.random.default_rng(0)).confidence_interval
    return float((interval.high - interval.low) / 2 / abs(value))


def recheck(sla: Sla, measured: list[float], stretch: Stretch | None, again: list[Event], tolerance: float) -> Recheck:
    """`measured`: the metric's values in the workload; `again`: the events of the stretch that
    measured it again (none if no stretch did)."""
    if stretch is None:
        return Recheck(False, None, 0, (), f"no operations of {sla.metric} were measured again")
    values = latency_metrics(again).get(sla.metric)
    rerun = np.asarray(values.values if values else [], dtype=float)
    if len(rerun) < MIN_RERUN or len(measured) < MIN_RERUN:
        return Recheck(False, stretch.factor, len(rerun), (), f"too few operations to compare ({len(measured)} in the "
                       f"workload, {len(rerun)} at dilation {stretch.factor:g}; at least {MIN_RERUN} each)")
    first = np.asarray(measured, dtype=float)
    moves = []
    for stat in dict.fromkeys(("p50", sla.stat)):
        value, later = (float(STATISTIC[stat](x, None)) for x in (first, rerun))
        noise = math.hypot(_noise(first, stat, value), _noise(rerun, stat, later))
        moves.append(Move(stat, value, later, (later - value) / value if value else math.inf, max(tolerance, noise)))
    return Recheck(all(m.held for m in moves), stretch.factor, len(rerun), tuple(moves))

