"""What users felt while a fault phase ran (docs/faults.md), from the run's events.

The operations that start inside a fault phase are its own (`split`): they do not enter the
run's metrics and SLA verdicts, which judge the healthy network. Per fault phase:

- availability per window of `load.window` (the run's time): the share of its gets that
  succeeded, with their median latency and the delivery ratio of the messages sent in it,
  from the phase's start (the fault's window marked);
- gets before, during and after the fault: attempts, success ratio, median and p95, each
  latency judged by the fidelity guard over the fault phase (a latency measured while the
  machine saturates is inconclusive, not a figure);
- the gossip delivery ratio of the messages announced before, during and after the fault,
  each against the peers up when it was sent (a peer taken down or frozen is not expected),
  a delivery counting only within `load.timeout` of the send (later, its user missed it);
- recovery: from the fault's end, until the end of the first window whose availability is back
  to the before-the-fault share (window resolution), and until the last delivery of the first
  message after it that reached every peer up;
- the returning peers' joins (`rejoin`), and at the run's end the routing tables' staleness:
  the share of entries pointing to a peer that is down or lost.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any

from lab.analysis.guard import PhaseLag, judge
from lab.analysis.stats import Summary, summarize
from lab.events import FAULT, PEER_DOWN, PHASE, announced_message
from lab.manifest import PeerRecord
from lab.metric_names import OPERATIONS
from lab.topology import FAULTS, FaultPhase, Topology
from nodes.protocol import Event, Op


def split(events: list[Event]) -> tuple[list[Event], list[Event]]:
    """(the rest, the peers' operations started inside a fault phase)."""
    spans = sorted((e.start_ns, e.end_ns) for e in events if e.op == PHASE and e.details.get("phase") in FAULTS)
    starts = [start for start, _ in spans]

    def faulted(event: Event) -> bool:
        at = bisect.bisect_right(starts, event.start_ns) - 1
        return event.op in OPERATIONS and at >= 0 and event.start_ns <= spans[at][1]

    return [e for e in events if not faulted(e)], [e for e in events if faulted(e)]


@dataclass(frozen=True)
class Window:
    start_s: float  # from the phase's start, the run's time
    gets: int
    succeeded: int
    get_p50_ms: float | None
    delivery_ratio: float | None  # of the messages sent in the window (as Stretch's)

    @property
    def availability(self) -> float | None:
        return self.succeeded / self.gets if self.gets else None


@dataclass(frozen=True)
class Stretch:
    """The gets and messages of one stretch of a fault phase: before, during or after its fault."""

    gets: Summary
    delivery_ratio: float | None  # deliveries over the peers up at each send, pooled
    messages: int
    guard: str | None = None  # why the gets' latency is inconclusive; None if the guard vouches for it


@dataclass(frozen=True)
class FaultFigures:
    phase: str
    number: int
    start_ns: int
    end_ns: int
    fault_start_ns: int | None
    fault_end_ns: int | None
    peers_hit: int
    windows: list[Window]
    stretches: dict[str, Stretch]  # before, during, after
    availability_recovery_s: float | None
    gossip_recovery_s: float | None
    rejoins: Summary
    notes: list[str] = field(default_factory=list)

    def record(self) -> dict[str, Any]:
        record = asdict(self)
        record["windows"] = [{**asdict(w), "availability": w.availability} for w in self.windows]
        record["stretches"] = {name: {**asdict(s), "gets": s.gets.record()} for name, s in self.stretches.items()}
        record["rejoins"] = self.rejoins.record()
        return record


def _down_spans(events: list[Event]) -> dict[int, list[tuple[int, int]]]:
    spans: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for event in events:
        if event.op == PEER_DOWN and event.peer is not None:
            spans[event.peer].append((event.start_ns, event.end_ns))
    return spans


def _delivery(announcements: list[Event], received: dict[str, set[int]], ready: int,
              down: dict[int, list[tuple[int, int]]]) -> float | None:
    expected = delivered = 0
    for sent in announcements:
        gone = sum(any(start <= sent.start_ns < end for start, end in spans) for spans in down.values())
        expected += max(ready - 1 - gone, 0)
        delivered += len(received.get(sent.message or "", set()) - {sent.peer})
    return min(delivered / expected, 1.0) if expected else None


def _stretch(gets: list[Event], announcements: list[Event], received: dict[str, set[int]], ready: int,
             down: dict[int, list[tuple[int, int]]], events: list[Event], lag: PhaseLag) -> Stretch:
    summary = summarize([e.ms for e in gets if e.ok], len(gets), "millisecond")
    judgement = judge(Op.GET, summary, events, [lag]) if summary.p50 is not None else None
    guard = None if judgement is None or judgement.conclusive else judgement.reason()
    return Stretch(summary, _delivery(announcements, received, ready, down), len(announcements), guard)


def _figures(phase: FaultPhase, lag: PhaseLag, faulted: list[Event], events: list[Event], ready: int) -> FaultFigures:
    start, end = lag.start_ns, lag.end_ns
    inside = [e for e in faulted if start <= e.start_ns <= end]
    fault = next((e for e in events if e.op == FAULT and start <= e.start_ns <= end), None)
    f_start, f_end = (fault.start_ns, fault.end_ns) if fault else (None, None)
    gets = [e for e in inside if e.op == Op.GET]
    width = phase.load.window
    sent = [e for e in inside if announced_message(e) is not None]
    deadline = {e.message: e.start_ns + phase.load.timeout * 1e9 for e in sent if e.message is not None}
    received: dict[str, set[int]] = defaultdict(set)  # within load.timeout of the send: later, its user missed it
    for event in inside:
        message = event.message
        if (event.op == Op.GOSSIP_DELIVERY and message is not None and message in deadline and event.peer is not None
                and event.end_ns <= deadline[message]):
            received[message].add(event.peer)
    down = _down_spans(events)
    windows = []
    for number in range(int((end - start) / 1e9 // width) + 1):
        lo, hi = start + number * width * 1e9, start + (number + 1) * width * 1e9
        these = [e for e in gets if lo <= e.start_ns < hi]
        ok = [e.ms for e in these if e.ok]
        windows.append(Window(number * width, len(these), len(ok), summarize(ok).p50 if ok else None,
                              _delivery([e for e in sent if lo <= e.start_ns < hi], received, ready, down)))
    edges = {"before": (start, f_start or end), "during": (f_start or end, f_end or end), "after": (f_end or end, end + 1)}
    stretches = {name: _stretch([e for e in gets if lo <= e.start_ns < hi], [e for e in sent if lo <= e.start_ns < hi],
                                received, ready, down, events, lag) for name, (lo, hi) in edges.items()}
    notes = [] if fault else ["no fault event: the fault did not take effect (see errors)"]
    before = stretches["before"].gets.success_ratio
    availability_back = None
    if f_end is not None and before is not None:
        availability_back = next((start / 1e9 + w.start_s + width - f_end / 1e9 for w in windows
                                  if start + w.start_s * 1e9 >= f_end and w.availability is not None
                                  and w.availability >= before), None)
    gossip_back = None
    if f_end is not None:
        for announcement in sorted((e for e in sent if e.start_ns >= f_end), key=lambda e: e.start_ns):
            if _delivery([announcement], received, ready, down) == 1.0:
                last = max(e.end_ns for e in inside if e.op == Op.GOSSIP_DELIVERY and e.message == announcement.message
                           and e.end_ns <= deadline[announcement.message or ""])
                gossip_back = (last - f_end) / 1e9
                break
    rejoins = [e for e in inside if e.op == Op.REJOIN]
    peers, departures = (fault.details.get("peers"), fault.details.get("departures")) if fault else (None, None)
    hit = len(peers) if isinstance(peers, list) else departures if isinstance(departures, int) else 0
    return FaultFigures(phase.phase, lag.number, start, end, f_start, f_end, hit, windows, stretches, availability_back,
                        gossip_back, summarize([e.ms for e in rejoins if e.ok], len(rejoins), "millisecond"), notes)


def fault_figures(topology: Topology, lags: list[PhaseLag], faulted: list[Event], events: list[Event],
                  ready: int) -> list[FaultFigures]:
    """Each fault phase's figures, in the run's order (`lags`: every phase's, from the guard)."""
    figures = []
    for lag in lags:
        phase = topology.workload[lag.number - 1] if 0 < lag.number <= len(topology.workload) else None
        if isinstance(phase, FaultPhase):
            figures.append(_figures(phase, lag, faulted, events, ready))
    return figures


@dataclass(frozen=True)
class Staleness:
    entries: int
    stale: int
    tables: int  # the routing tables counted: of the peers up at the end, those that gave theirs
    up: int  # the peers up at the end

    @property
    def share(self) -> float | None:
        return self.stale / self.entries if self.entries else None


def staleness(peers: list[PeerRecord], routing: dict[int, list[str]], events: list[Event]) -> Staleness | None:
    """The routing tables of the peers that ended the run (`routing`, by peer index), against the
    identities no peer held then: peers down or lost, and those whose slot a new peer took
    (churn's `new`). None: no table was recorded."""
    dead = {p.peer_id for p in peers if p.lost is not None and p.peer_id}
    dead |= {str(e.details["peer_id"]) for e in events
             if e.op == PEER_DOWN and e.details.get("returned_as") not in (None, e.details.get("peer_id"))}
    dead -= {p.peer_id for p in peers if p.lost is None}
    up = [p for p in peers if p.lost is None]
    tables = [routing[p.index] for p in up if p.index in routing]
    if not tables:
        return None
    entries = [entry for table in tables for entry in table]
    return Staleness(len(entries), sum(entry in dead for entry in entries), len(tables), len(up))
