"""The orchestrator-peer protocol, one module for both sides: what a peer is told when it
starts, the calls it answers, the event it reports for each operation it times, and what
`lab netem` asks of a running orchestrator.

Free of libp2p and trio, so the orchestrator loads it cheaply; the framing (one JSON object per
line) is nodes/wire.py, and docs/control-plane.md describes the exchange.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any, Literal, get_args

RETIME_NOTICE_NS = 2_000_000_000  # a change of dilation is announced this far ahead of its instant (machine's clock)


@dataclass(frozen=True)
class Segment:
    """From `real_ns` (the machine's monotonic clock) on, virtual time runs `factor` times
    slower, from `virtual_ns` (monotonic) and `virtual_wall_ns` (wall clock) at that instant."""

    real_ns: int
    real_wall_ns: int
    virtual_ns: int
    virtual_wall_ns: int
    factor: float


@dataclass
class Dilation:
    """A run's virtual time (nodes/clock.py, docs/design.md), settled once per run and taken by
    every part of it: the network (TCP's minimum RTO), the links (delays and rates), the peers
    (their clocks, through their START call), the collector (its interval), the workload's waits,
    the guard and the report.

    `network` is the factor the run starts at (`network.time_dilation`, `auto` resolved by its
    pilot), `phases` each workload phase's factor (its own, else the network's; where it starts
    when the factor adapts), `later` those the run switches to after its phases (the 2N check's),
    `reason` why, `ceiling` the highest an adaptive factor may reach (None: factors are fixed).
    The timeline (`segments`) is a clock running `factor` times slower than the machine's, equal
    to it at the run's start (`start`), so the timestamps of all processes compare. A change of
    factor is announced before it takes effect (`switch`: a segment from a real instant on), so
    every process switches at the same instant and virtual time never jumps."""

    network: float = 1.0
    reason: str = "network.time_dilation: 1"
    phases: tuple[float, ...] = ()
    later: tuple[float, ...] = ()
    segments: list[Segment] = field(default_factory=list)
    ceiling: float | None = None

    def __post_init__(self) -> None:
        if not self.segments:  # not started: the machine's clock at the network's factor
            self.segments = [Segment(0, 0, 0, 0, self.network)]

    def start(self) -> None:
        """Puts the epoch at this instant: the run's start, for every process of the run."""
        real, wall = time.monotonic_ns(), time.time_ns()
        self.segments = [Segment(real, wall, real, wall, self.network)]

    @property
    def switchable(self) -> bool:
        """Whether the factor changes during the run (so clocks must follow it even at factor 1)."""
        factors = (*self.phases, *self.later, *(s.factor for s in self.segments))
        return self.ceiling is not None or any(f != self.network for f in factors)

    @property
    def dilated(self) -> bool:
        """Whether the run's clocks differ from the machine's at any time."""
        return self.network != 1 or self.switchable

    @property
    def factor(self) -> float:
        """The factor in force now (in the orchestrator, whose clocks are the machine's)."""
        return self.factor_at(time.monotonic_ns())

    def factor_at(self, real_monotonic_ns: int) -> float:
        return self.segment_at(real_monotonic_ns).factor

    def highest_between(self, start_ns: int, end_ns: int) -> float:
        """The highest factor in force at any instant from `start_ns` to `end_ns` (machine clock)."""
        ends = [s.real_ns for s in self.segments[1:]] + [end_ns + 1]
        return max(s.factor for s, ended in zip(self.segments, ends, strict=True) if s.real_ns <= end_ns and ended > start_ns)

    def of_phase(self, number: int) -> float:
        """The factor of workload phase `number` (1-based)."""
        return self.phases[number - 1] if number <= len(self.phases) else self.network

    @property
    def epoch_monotonic_ns(self) -> int:
        return self.segments[0].real_ns

    def segment_at(self, real_ns: int) -> Segment:
        """The segment in force at the machine's monotonic instant `real_ns`."""
        return next((s for s in reversed(self.segments) if s.real_ns <= real_ns), self.segments[0])

    def virtual_ns(self, real_monotonic_ns: int) -> int:
        s = self.segment_at(real_monotonic_ns)
        return s.virtual_ns + round((real_monotonic_ns - s.real_ns) / s.factor)

    def virtual_wall_ns(self, real_wall_ns: int) -> int:
        s = next((s for s in reversed(self.segments) if s.real_wall_ns <= real_wall_ns), self.segments[0])
        return s.virtual_wall_ns + round((real_wall_ns - s.real_wall_ns) / s.factor)

    def real_ns(self, virtual_ns: int) -> int:
        """The machine's monotonic instant at which the run's clock read `virtual_ns`."""
        s = next((s for s in reversed(self.segments) if s.virtual_ns <= virtual_ns), self.segments[0])
        return s.real_ns + round((virtual_ns - s.virtual_ns) * s.factor)

    def now_ns(self) -> int:
        """Virtual monotonic nanoseconds now (the clock every event of the run is on)."""
        return self.virtual_ns(time.monotonic_ns())

    def sleep_s(self, virtual_deadline_s: float, real_now_ns: int) -> float:
        """Real seconds from now until a virtual deadline, across any announced change of factor."""
        if not math.isfinite(virtual_deadline_s):
            return math.inf  # trio's "no deadline"
        deadline = round(virtual_deadline_s * 1e9)
        real, virtual = real_now_ns, self.virtual_ns(real_now_ns)
        factor = self.segment_at(real).factor
        for s in self.segments:
            if s.real_ns <= real:
                continue
            if s.virtual_ns >= deadline:
                break
            real, virtual, factor = s.real_ns, s.virtual_ns, s.factor
        return max(0.0, (real - real_now_ns + (deadline - virtual) * factor) / 1e9)

    def real_s(self, virtual_s: float) -> float:
        """The machine's seconds from now that `virtual_s` of the run's time take (a timeout, a
        settle bound, an interval), across any announced change of factor."""
        real_now = time.monotonic_ns()
        return self.sleep_s(self.virtual_ns(real_now) / 1e9 + virtual_s, real_now)

    def real_bound_s(self, virtual_s: float) -> float:
        """The machine's seconds that surely cover `virtual_s` of the run's time, whatever factor
        an adaptive run switches to meanwhile: a timeout's (fixed factors: `real_s`)."""
        if self.ceiling is None:
            return self.real_s(virtual_s)
        return virtual_s * max(self.ceiling, self.factor)

    def switch(self, factor: float, at_real_ns: int, at_real_wall_ns: int) -> Segment:
        """From `at_real_ns` (later than every announced change) on, the new factor."""
        segment = Segment(at_real_ns, at_real_wall_ns, self.virtual_ns(at_real_ns), self.virtual_wall_ns(at_real_wall_ns),
                          factor)
        self.segments.append(segment)
        return segment

    def follow(self, segment: Segment) -> None:
        """A change another process announced (the same instant twice is one change)."""
        if all(s.real_ns != segment.real_ns for s in self.segments):
            self.segments.append(segment)

    def record(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def of(cls, record: Mapping[str, Any]) -> Dilation:
        return cls(float(record["network"]), str(record["reason"]), tuple(float(f) for f in record["phases"]),
                   tuple(float(f) for f in record.get("later", ())), [Segment(**s) for s in record["segments"]],
                   None if record.get("ceiling") is None else float(record["ceiling"]))


class Call(StrEnum):
    """What the orchestrator asks of a peer."""

    START = "start"  # args: the peer's PeerSettings; answer: its peer id and addresses
    BOOTSTRAP = "bootstrap"  # dial seeds, join the DHT
    WARM = "warm"  # take a converged routing table, dial a few peers (bootstrap.mode: warm)
    LEAVE = "leave"  # close every connection and empty the routing table: the peer can join again, cold
    FORGET = "forget"  # drop fetched packages and cached search results: a get or search can go to the network again
    RETIME = "retime"  # to one peer per host process: its clocks change factor at a real instant (Dilation.switch)
    PUBLISH = "publish"
    GET = "get"
    SEARCH = "search"
    ANNOUNCE = "announce"
    CONCURRENT_SEARCH = "concurrent_search"
    STATS = "stats"
    SHUTDOWN = "shutdown"  # answer: what the peer holds (routing table and its peer ids, connections, mesh); it ends
    CRASH = "crash"  # its TCP sockets shut at once, no goodbye, and it ends; its host process's other peers go on


class Op(StrEnum):
    """The operations a peer times, each reported as an Event and measured as a latency."""

    BOOTSTRAP = "bootstrap"
    REJOIN = "rejoin"  # a peer a fault phase took down joins again, as a bootstrap does
    WARM = "warm"
    CONNECT = "connect"
    PUBLISH = "publish"
    GET = "get"
    DHT_LOOKUP = "dht_lookup"
    DHT_LOOKUP_LOCAL = "dht_lookup_local"  # a lookup answered from the peer's own store
    DHT_FIND_PROVIDERS = "dht_find_providers"
    FETCH = "fetch"
    SEARCH_CACHE_HIT = "search_cache_hit"
    SEARCH_LOCAL = "search_local"
    SEARCH_REMOTE = "search_remote"
    GOSSIP_PUBLISH = "gossip_publish"
    GOSSIP_DELIVERY = "gossip_delivery"
    GOSSIP_DUPLICATE = "gossip_duplicate"


ANSWERED_LOCALLY = frozenset({Op.SEARCH_CACHE_HIT, Op.SEARCH_LOCAL, Op.DHT_LOOKUP_LOCAL})  # no wait on the network
CONCURRENT_SEARCH = "concurrent_search_"  # + the number of searches issued at once: one operation per level
ROUTING_PEERS = "routing_peers"  # a peer's final stats: its routing table's peer ids (the run keeps them in routing.jsonl)
LOOP_LAG = "loop_lag"  # a host process's event-loop lag over a window (nodes/lag.py): not an operation
LAG_WINDOW_S = 0.5  # a host process reports its loop lag once per this much of the run's time (nodes/lag.py)
LAG_BINS_MS = (0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)  # upper edges; one more bin beyond


def concurrent_search_op(level: int) -> str:
    return f"{CONCURRENT_SEARCH}{level}"


class BadRecord(ValueError):
    """A record that is not an event or a sample: the message names the field."""


def _field(record: Mapping[str, Any], name: str, kind: type, optional: bool = False) -> Any:
    value = record.get(name)
    if value is None:
        if optional:
            return None
        raise BadRecord(f"{name}: missing")
    if isinstance(value, bool) != (kind is bool) or not isinstance(value, kind):
        raise BadRecord(f"{name}: expected {kind.__name__}, got {value!r}")
    return value


EVENT_FIELDS = ("op", "peer", "start_ns", "end_ns", "ok", "error")


@dataclass(frozen=True)
class Event:
    """One operation as a peer (or the orchestrator) timed it, on the machine's monotonic clock.
    `details` holds what the operation learned (the package, the gossip message, DHT work, ...)."""

    op: str
    peer: int | None
    start_ns: int
    end_ns: int
    ok: bool
    error: str | None = None
    details: Mapping[str, Any] = field(default_factory=dict)

    @property
    def ms(self) -> float:
        return (self.end_ns - self.start_ns) / 1e6

    @property
    def message(self) -> str | None:
        """The gossip message an announcement or a delivery carries."""
        value = self.details.get("msg")
        return None if value is None else str(value)

    @property
    def package(self) -> str | None:
        value = self.details.get("package")
        return None if value is None else str(value)

    def record(self) -> dict[str, Any]:
        """The flat form written to events.jsonl and sent over the control socket."""
        return {"op": self.op, "peer": self.peer, "start_ns": self.start_ns, "end_ns": self.end_ns, "ok": self.ok,
                "error": self.error, **self.details}

    @classmethod
    def of(cls, record: Mapping[str, Any]) -> Event:
        """An event from its flat form; BadRecord names the field that is missing or wrong."""
        if not isinstance(record, Mapping):
            raise BadRecord(f"expected an object, got {type(record).__name__}")
        return cls(
            op=_field(record, "op", str),
            peer=_field(record, "peer", int, optional=True),
            start_ns=_field(record, "start_ns", int),
            end_ns=_field(record, "end_ns", int),
            ok=_field(record, "ok", bool),
            error=_field(record, "error", str, optional=True),
            details={k: v for k, v in record.items() if k not in EVENT_FIELDS and k != "type"},
        )


@dataclass(frozen=True)
class Connections:
    max_per_peer: int
    max_connections: int
    max_inbound: int
    auto_connect: bool
    dial_timeout_s: float


@dataclass(frozen=True)
class Dht:
    mode: Literal["server", "client"]
    join: Literal["refresh", "self_lookup"]
    get_quorum: int
    maintenance_interval_s: float
    random_walk: bool
    max_peers_per_subnet: int | None


@dataclass(frozen=True)
class Yamux:
    rtt_interval_s: float
    release_on_read: bool


@dataclass(frozen=True)
class Gossipsub:
    degree: int
    degree_low: int
    degree_high: int
    heartbeat_s: float
    gossip_window: int
    scorer: bool
    adaptive_gossip: bool
    spam_protection: bool
    eclipse_protection: bool
    strict_signing: bool


@dataclass(frozen=True)
class PeerSettings:
    """Everything a peer is told in its start call: the library settings of the topology, its
    key seed, where it listens and the run's virtual time."""

    seed: int
    listen: str
    dilation: Dilation  # the run's virtual time: the first START of a host process sets its clocks
    connections: Connections
    dht: Dht
    yamux: Yamux
    gossipsub: Gossipsub
    incarnation: int = 0  # times this slot came back as a new peer (a fresh key: churn with `identity: new`)

    def record(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def of(cls, record: Mapping[str, Any]) -> PeerSettings:
        return cls(
            seed=record["seed"], listen=record["listen"], dilation=Dilation.of(record["dilation"]),
            connections=Connections(**record["connections"]),
            dht=Dht(**record["dht"]), yamux=Yamux(**record["yamux"]), gossipsub=Gossipsub(**record["gossipsub"]),
            incarnation=record["incarnation"],
        )


NetemOp = Literal["set", "clear", "show", "verify"]


@dataclass(frozen=True)
class NetemRequest:
    """`lab netem`'s one request to a running orchestrator (over its impairment socket)."""

    op: NetemOp
    groups: list[str] = field(default_factory=list)
    peers: list[int] | None = None
    link: dict[str, Any] = field(default_factory=dict)  # the link fields given, as typed on the command line
    verify: bool = False

    def record(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def of(cls, record: Mapping[str, Any]) -> NetemRequest:
        """The request a socket line holds; ValueError or TypeError names what is wrong in it."""
        request = cls(**record)
        if request.op not in get_args(NetemOp):
            raise ValueError(f"op {request.op!r}: one of {', '.join(get_args(NetemOp))}")
        if not isinstance(request.groups, list) or not all(isinstance(g, str) for g in request.groups):
            raise ValueError("groups: a list of group names")
        if request.peers is not None and not (isinstance(request.peers, list) and all(type(p) is int for p in request.peers)):
            raise ValueError("peers: a list of peer indexes")
        if not isinstance(request.link, dict) or not isinstance(request.verify, bool):
            raise ValueError("link: an object of link fields; verify: true or false")
        return request
