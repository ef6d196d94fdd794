"""The topology file: what network to build, which peers, which workload, which SLAs.

Validated completely before anything is built; every error names its field path
(`groups[1].count: must be >= 1`) so a user can fix the file without reading code.
"""

from __future__ import annotations

import itertools
import math
import random
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails

from lab import metric_names, quantities
from lab.errors import TopologyError


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


MAX_PEERS = 100_000  # far above what a machine holds (1000 here); a typo's 10**12 peers is refused, not laid out
MAX_SECONDS = 86_400.0  # a day: no wait of a run is longer; 1e300s is a typo, not a run that never ends


def _seconds(value: str | int | float) -> float:
    if isinstance(value, int | float):
        raise ValueError(f"{value!r} needs a unit, e.g. {value}s or {value}ms")
    seconds = quantities.seconds(value)
    if not 0 <= seconds <= MAX_SECONDS:
        raise ValueError(f"must be between 0 and {MAX_SECONDS:g}s (a day)")
    return seconds


def _share(value: str | int | float) -> float:
    share = quantities.fraction(value)
    if not 0 <= share <= 1:
        raise ValueError("must be between 0% and 100%")
    return share


def _bits_per_second(value: str | int | float) -> float:
    rate = quantities.bits_per_second(value)
    if rate <= 0:
        raise ValueError("must be a positive rate such as 10mbit or 10Mbit/s")
    return rate


def _bytes(value: str | int | float) -> int:
    if isinstance(value, int | float):
        raise ValueError(f"{value!r} needs a unit, e.g. {value}B or {value}KiB")
    return round(quantities.convert(value, "byte"))


# Each quantity is parsed once, here, into a number in one unit; written back (manifest, sweep
# points) in a form that parses to the same number. The file's own text stays in the manifest.
Duration = Annotated[float, BeforeValidator(_seconds), PlainSerializer(lambda v: f"{v!r}s", when_used="json"),
                     Field(description="e.g. 500ms or 2s; seconds once parsed")]
Percent = Annotated[float, BeforeValidator(_share), Field(description="e.g. 5% or 0.05; a fraction once parsed")]
Rate = Annotated[float, BeforeValidator(_bits_per_second), PlainSerializer(lambda v: f"{v!r} bit/s", when_used="json"),
                 Field(description="10mbit (tc's spelling) or 10Mbit/s; bits per second once parsed")]
Size = Annotated[int, BeforeValidator(_bytes), PlainSerializer(lambda v: f"{v}B", when_used="json"),
                 Field(description="e.g. 16KiB; bytes once parsed")]


IMPAIRING = ("delay", "jitter", "loss", "duplicate", "reorder", "corrupt", "rate")


class Link(Strict):
    """Impairment of every packet a peer of the group sends, in netem's terms (one-way)."""

    delay: Duration = 0.0
    jitter: Duration = 0.0
    distribution: Literal["uniform", "normal"] = Field(default="uniform", description="of the jitter around delay")
    loss: Percent = 0.0
    loss_correlation: Percent = 0.0
    duplicate: Percent = 0.0
    reorder: Percent = Field(default=0.0, description="share of packets sent at once, ahead of delayed ones")
    corrupt: Percent = 0.0
    rate: Rate | None = None
    limit: int = Field(default=1000, ge=1, description="packets a link may hold back (netem's limit)")

    @model_validator(mode="after")
    def _consistent(self) -> Link:
        if self.loss_correlation and not self.loss:
            raise ValueError("loss_correlation: needs loss")
        if self.reorder and not self.delay:
            raise ValueError("reorder: needs delay (reordered packets skip it)")
        if self.jitter > self.delay and self.distribution == "uniform":
            raise ValueError("jitter: uniform jitter larger than delay would need negative delays")
        return self

    @property
    def is_impaired(self) -> bool:
        """Whether the link does anything to a packet (the distribution, limit and loss
        correlation only qualify what another field does)."""
        return any(getattr(self, name) for name in IMPAIRING)


class Regions(Strict):
    """Per-destination shaping: one-way latency from a region (row) to a region (column),
    added to the sending group's own link delay."""

    latency: dict[str, dict[str, Duration]] = Field(min_length=1)

    @model_validator(mode="after")
    def _square(self) -> Regions:
        names = set(self.latency)
        for source, row in self.latency.items():
            if set(row) != names:
                raise ValueError(f"latency.{source}: needs exactly the regions {sorted(names)}")
        return self


class Impairment(Strict):
    backend: Literal["auto", "netem", "userspace"] = Field(
        default="auto", description="auto probes the kernel for sch_netem and falls back to userspace"
    )
    verify: bool | Literal["strict"] = Field(
        default=True,
        description="measure links before the workload: a link measured wrong fails the run (exit 2); one the machine "
        "was too noisy to verify is a warning, and the run goes on marked unverified; strict fails on that too",
    )
    probes: int = Field(default=400, ge=50, le=100_000, description="packets per measured pair")


class Group(Strict):
    name: str = Field(min_length=1)
    count: int | None = Field(default=None, ge=1, le=MAX_PEERS)
    percent: float | None = Field(default=None, gt=0, le=100)
    region: str | None = None
    link: Link = Link()

    @model_validator(mode="after")
    def _count_or_percent(self) -> Group:
        if (self.count is None) == (self.percent is None):
            raise ValueError("give exactly one of count or percent")
        return self


class Bootstrap(Strict):
    peers: int = Field(default=2, ge=1, description="how many peers act as bootstrap peers")
    dials: int = Field(default=2, ge=1, description="how many bootstrap peers each other peer dials")
    min_routing_table: int = Field(default=1, ge=0, description="routing-table size a peer must reach")
    mode: Literal["cold", "warm"] = Field(
        default="cold",
        description="cold: every peer joins (dials bootstrap peers, looks itself up); warm: every peer but `sample` "
        "starts with the routing table a converged network would have given it and `warm_dials` connections, then "
        "the sample joins cold into that network, and only those joins are measured (docs/scaling.md)",
    )
    sample: int = Field(default=20, ge=1, description="warm: the peers that join cold and are measured")
    warm_dials: int = Field(default=4, ge=0, description="warm: connections each warm peer opens to random warm peers")
    warm_concurrency: int = Field(default=64, ge=1, description="warm: peers taking their warm start at once (not measured)")


class Connections(Strict):
    """py-libp2p connection manager settings; the library defaults distort measurements."""

    max_per_peer: int = Field(default=1, ge=1)
    max_connections: int = Field(default=300, ge=1, description="py-libp2p refuses connections beyond it, both ways")
    max_inbound: int = Field(
        default=256, ge=1, description="py-libp2p's resource manager refuses established inbound connections beyond it"
    )
    auto_connect: bool = Field(default=False, description="library auto-connector tops up to ~100-200 peers")
    dial_timeout: Duration = 10.0


class Dht(Strict):
    mode: Literal["server", "client"] = "server"
    join: Literal["refresh", "self_lookup"] = Field(
        default="refresh",
        description="after the bootstrap dials: refresh = the library's routing-table refresh (a lookup for "
        "itself and one per non-empty bucket: ~5 lookups, ~70 queries at 100 peers); self_lookup = only the "
        "lookup for its own id (Kademlia's join), about a fifth of the work",
    )
    get_quorum: int = Field(default=1, ge=0, description="0 = library default: query every candidate")
    maintenance_interval: Duration = Field(
        default=600.0,
        description="the library's DHT maintenance period (routing-table refresh, record republish), from "
        "each peer's start: peers started together refresh together",
    )
    random_walk: bool = False
    max_peers_per_subnet: int | None = Field(
        default=0,
        description="per-bucket cap of peers from one /24; 0 disables it, null keeps the library's 2. "
        "Lab peers share /24s, which real peers would not, so the library cap would starve routing tables.",
    )


class Gossipsub(Strict):
    degree: int = Field(default=6, ge=1)
    degree_low: int = Field(default=4, ge=1)
    degree_high: int = Field(default=12, ge=1)
    heartbeat: Duration = 1.0
    gossip_window: int = Field(
        default=3,
        ge=1,
        le=5,
        description="heartbeats a message id stays in the IHAVE gossip (the library's 3; at most its history of 5). "
        "Every heartbeat that holds an id, a peer sends IHAVE to max(6, a quarter of its non-mesh topic peers), "
        "so the IHAVE RPCs per message grow with this window and with connections per peer",
    )
    scorer: bool = Field(default=False, description="py-libp2p 0.8.1's scorer causes a GRAFT/PRUNE storm")
    adaptive_gossip: bool = False
    spam_protection: bool = False
    eclipse_protection: bool = True
    strict_signing: bool = True

    @model_validator(mode="after")
    def _degrees_ordered(self) -> Gossipsub:
        if not self.degree_low <= self.degree <= self.degree_high:
            raise ValueError("need degree_low <= degree <= degree_high")
        return self


class Yamux(Strict):
    rtt_interval: Duration = Field(
        default=30.0,
        description="seconds between the RTT pings py-libp2p's Yamux sends on every connection (its module "
        "constant RTT_MEASURE_INTERVAL, 30 s); idle peers spend their CPU answering them",
    )
    release_on_read: bool = Field(
        default=True,
        description="py-libp2p's PY_YAMUX_RELEASE_ON_READ: true (its default) sends a WINDOW_UPDATE after every "
        "read, one frame per varint byte of a protocol negotiation; false batches them as go-yamux does",
    )


class Libp2p(Strict):
    connections: Connections = Connections()
    yamux: Yamux = Yamux()
    dht: Dht = Dht()
    gossipsub: Gossipsub = Gossipsub()


class AdaptiveDilation(Strict):
    """Virtual time that follows the load within workload phases (lab/governor.py)."""

    lowest: float = Field(default=1.0, ge=1, le=1000, description="the factor is never lowered below this")
    highest: float = Field(default=1000.0, ge=1, le=1000, description="nor raised above this")
    raise_share: float = Field(
        default=0.5, gt=0, le=1,
        description="doubled when the loop lag's p99 since the last switch exceeds this share of the fidelity "
        "guard's allowance (5% of the median of the phase's recent operations)")
    lower_share: float = Field(default=0.1, gt=0, le=1, description="halved only while the lag is under this share")
    idle_busy: float = Field(default=0.5, gt=0, le=1, description="and the machine was less busy than this")
    hold: Duration = Field(default=10.0, description="over this much of the machine's time, with no switch in it")

    @model_validator(mode="after")
    def _ordered(self) -> AdaptiveDilation:
        if self.lowest > self.highest:
            raise ValueError("lowest: must not exceed highest")
        if self.lower_share >= self.raise_share:
            raise ValueError("lower_share: must be under raise_share (the gap is the hysteresis)")
        return self


class Network(Strict):
    mode: Literal["auto", "netns", "loopback"] = "auto"
    spawn_concurrency: int = Field(default=8, ge=1, description="peer processes starting at once")
    start_timeout: Duration = Field(
        default=60.0,
        description="time a host process gets from launch until each of its peers listens; a peer late past it is "
        "reported as not started. Importing py-libp2p takes ~0.5 s on a bare machine, a minute or more under "
        "CPU emulation (tests/vm)",
    )
    peer_hosting: Literal["spawn", "fork"] = Field(
        default="spawn",
        description="spawn: a fresh interpreter per host process (~59 MB USS); fork: host processes forked from a "
        "server that imported py-libp2p once (~19 MB USS, the rest shared copy-on-write; PSS counts the sharing fairly)",
    )
    time_dilation: float | Literal["auto"] = Field(
        default=1.0,
        description="the peers' clocks run this many times slower than the machine's, and link delays, rates and the "
        "lab's own waits are stretched to match, so a machine too slow for the network looks fast enough "
        "(docs/design.md, Virtual time); auto picks it from a short calibration on this machine",
    )

    adaptive_dilation: AdaptiveDilation | None = Field(
        default=None,
        description="let the factor follow the load within workload phases, from the phase's own (time_dilation) "
        "between lowest and highest: raised while timers run late against what is measured, lowered while the "
        "machine idles (docs/design.md, Virtual time); none: fixed factors",
    )

    @field_validator("time_dilation")
    @classmethod
    def _at_least_one(cls, value: float | str) -> float | str:
        if isinstance(value, float) and not 1 <= value <= 1000:
            raise ValueError("must be between 1 and 1000, or auto")
        return value
    cpu: Literal["scaled", "core"] = Field(
        default="scaled",
        description="the CPU model (docs/scaling.md): scaled, the peers' computation runs time_dilation times faster "
        "against their links (their waits are emulated, their computation is not); core, each host process gets "
        "its peers / N cores at dilation N, so that in the run's time every peer has one core of this machine "
        "(needs N >= peers / cores; a shared host's peers share their quota)",
    )
    cpu_limit: float | None = Field(
        default=None,
        gt=0,
        description="cores the peers' host processes may use together (a cgroup CPU quota); none: the whole machine. "
        "With time_dilation it emulates a machine of another speed (bench/time_dilation.py)",
    )
    peers_per_host: int = Field(
        default=1,
        ge=1,
        le=64,
        description="peers sharing one process, one trio loop and one namespace, each with its own address and its "
        "own shaped link (by source address); 1 isolates every peer, more is what fits 1000 peers in memory "
        "(docs/design.md, Hosts)",
    )
    deployed_peer: bool = Field(
        default=True,
        description="with peers_per_host > 1, the last peer runs alone in a process of its own, started as a fresh "
        "interpreter, after the same workload: its memory is what a peer deployed alone needs, and a per-peer "
        "memory SLA is judged on it (the shared hosts' figures split one interpreter among many peers)",
    )


Concurrency = Annotated[int, Field(ge=1, description="peers acting at once; more loads the machine, not the protocol")]


class PhaseBase(Strict):
    time_dilation: float | None = Field(
        default=None,
        ge=1,
        le=1000,
        description="this phase's own time dilation (network.time_dilation elsewhere): a phase whose operations are "
        "CPU bursts (gossip at 1000 peers) needs more than one of long waits (lookups); docs/design.md, Virtual time",
    )


class BootstrapPhase(PhaseBase):
    phase: Literal["bootstrap"]
    concurrency: Concurrency = 8
    timeout: Duration = 60.0


class PublishPhase(PhaseBase):
    phase: Literal["publish"]
    concurrency: Concurrency = 8
    packages: int = Field(default=20, ge=1)
    body_size: Size = Field(default=16 * 1024, description="size of each package body")
    announce: bool = Field(
        default=True,
        description="gossip each package as it is published; false: the gossip phase alone sends announcements, "
        "at its own time_dilation (a burst of concurrent announcements needs more than the DHT puts do)",
    )
    timeout: Duration = 120.0
    settle: Duration = Field(
        default=60.0,
        description="after the last publish, at most this long for the announcements to reach every live peer; "
        "the next phase starts once they have, not while they still load the machine",
    )

    @field_validator("body_size")
    @classmethod
    def _check_size(cls, value: int) -> int:
        if not 1 <= value <= 1 << 20:
            raise ValueError("must be between 1B and 1MiB (the DHT's record limit)")
        return value


class LookupPhase(PhaseBase):
    phase: Literal["lookup"]
    concurrency: Concurrency = 8
    per_peer: int = Field(default=5, ge=1, description="packages each peer fetches that it does not hold")
    peers: int | None = Field(default=None, ge=1, description="how many peers fetch (drawn from the seed); none: all. "
                              "A few hundred lookups bound a p95 well; more only cost CPU")
    timeout: Duration = 300.0


class SearchPhase(PhaseBase):
    phase: Literal["search"]
    concurrency: Concurrency = 8
    queries_per_peer: int = Field(default=3, ge=1)
    fanout: int = Field(default=3, ge=1, description="peers asked on a local miss")
    peers: int | None = Field(default=None, ge=1, description="how many peers search (drawn from the seed); none: all")
    timeout: Duration = 120.0


class GossipPhase(PhaseBase):
    phase: Literal["gossip"]
    announcements: int = Field(default=5, ge=1)
    interval: Duration = 0.5
    rest: bool = Field(
        default=True,
        description="with the phase's own time_dilation above the network's: once an announcement has reached every "
        "live peer, the rest of the interval passes at the network's factor (or the lowest one whose switch back "
        "still fits in it), and the phase's comes back before the next send; false keeps the phase's throughout",
    )
    settle: Duration = Field(
        default=10.0, description="after the last announcement, at most this long for every live peer to receive them all"
    )
    timeout: Duration = 120.0


class ImpairPhase(PhaseBase):
    """Changes the links of some groups; with a duration, restores them afterwards while the
    next phases run, so statistics can be split before/during/after."""

    phase: Literal["impair"]
    groups: list[str] = Field(min_length=1)
    link: Link
    duration: Duration | None = None


class IdlePhase(PhaseBase):
    """Nothing is asked of the peers for `duration`: the phase's CPU figures are what the network
    costs at rest (heartbeats, RTT pings, DHT maintenance), and `lab netem` can change links at a
    known point of the run."""

    phase: Literal["idle"]
    duration: Duration = 30.0


class FaultLoad(Strict):
    """What users feel while a fault phase runs: gets of packages the asking peer does not hold
    (forgotten first, so every get goes to the network) and announcements, at steady rates from
    live peers, before, during and after the fault (docs/faults.md)."""

    gets_per_s: float = Field(default=2.0, ge=0, le=1000, description="gets started per second of the run's time")
    announce_every: Duration | None = Field(default=5.0, description="an announcement this often; none: no gossip load")
    timeout: Duration = Field(default=30.0, description="a get that takes longer failed; a delivery later than this "
                              "after its announcement is not counted")
    window: Duration = Field(default=5.0, description="availability is the share of gets that succeeded per window")

    @field_validator("window", "timeout")
    @classmethod
    def _positive(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("must be longer than 0s")
        return value


class FaultPhase(PhaseBase):
    """A fault, seeded and recorded in events.jsonl: the load runs `before` (the baseline), the
    fault lasts `duration`, the load runs `after` it ends (the recovery). The peers it hits are
    `groups`, or a number of them (`peers: 3`) or a `share`, drawn from the seed, or the peers
    listed (`peers: [3, 5]`); never the deployed peer."""

    phase: str
    before: Duration = 10.0
    duration: Duration = 30.0
    after: Duration = 30.0
    load: FaultLoad = FaultLoad()
    groups: list[str] = Field(default=[], description="the groups the fault hits (all groups if none)")
    peers: Annotated[int, Field(ge=1)] | Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)] | None = Field(
        default=None, description="a number: this many of the groups' peers, drawn from the seed; a list: these peers")
    share: Percent | None = Field(default=None, description="this share of the groups' peers, drawn from the seed")

    @model_validator(mode="after")
    def _one_size(self) -> FaultPhase:
        if self.peers is not None and self.share is not None:
            raise ValueError("give at most one of peers or share")
        if isinstance(self.peers, list) and self.groups:
            raise ValueError("peers: a list of peers names them all; give it without groups")
        if self.share is not None and not 0 < self.share <= 1:
            raise ValueError("share: must be more than 0% and at most 100%")
        return self


class PartitionPhase(FaultPhase):
    """Cuts the chosen peers off from the rest in the network (the hub drops packets between the
    two sides in the kernel), both ways or only what the chosen side sends; heals after `duration`."""

    phase: Literal["partition"]
    direction: Literal["both", "outbound"] = Field(
        default="both", description="outbound: only the chosen side's packets to the rest are dropped")


class CrashPhase(FaultPhase):
    """Kills the chosen peers at once, without a goodbye; with `restart`, they start again after
    `duration` with the same identity, read their store again (their packages published anew)
    and join through the bootstrap path."""

    phase: Literal["crash"]
    restart: bool = True


class PausePhase(FaultPhase):
    """Makes the chosen peers alive and silent for `duration`: a host process all of whose peers
    are chosen is frozen (SIGSTOP); a chosen peer of a shared host whose neighbours are not is
    silenced in the network (the hub drops every packet from or to it) while they run on."""

    phase: Literal["pause"]


class ChurnPhase(FaultPhase):
    """For `duration`, `rate` of the live peers per minute leave, gracefully (their connections
    closed) or by crash; each returns `downtime` after it left, restarted with its identity and
    store or, for a `new` share of them, as a peer never seen before, and joins through the
    bootstrap path. `peers`/`share`/`groups` bound who may leave."""

    phase: Literal["churn"]
    rate: Percent = Field(default=0.1, description="share of the live peers that leave per minute of the run's time")
    how: Literal["graceful", "crash"] = "crash"
    downtime: Duration = Field(default=30.0, description="how long a peer that left stays away")
    new: Percent = Field(default=0.0, description="share of the returns that are new peers, drawn from the seed: a "
                         "fresh key (a peer id the network never saw) and nothing stored, in the slot of the one that left")

    @field_validator("rate")
    @classmethod
    def _some_rate(cls, value: float) -> float:
        if not 0 < value <= 1:
            raise ValueError("must be more than 0% and at most 100% per minute")
        return value


class ConcurrentSearchPhase(PhaseBase):
    phase: Literal["concurrent_search"]
    levels: list[Annotated[int, Field(ge=1)]] = Field(default=[1, 10, 50, 100], min_length=1)
    peers: int = Field(default=1, ge=1, description="peers that each issue the concurrent searches")
    fanout: int = Field(default=3, ge=1)
    timeout: Duration = 120.0


FAULTS = ("partition", "crash", "pause", "churn")
NEEDS_PACKAGES = ("lookup", "search", "gossip", "concurrent_search", *FAULTS)

Phase = Annotated[
    BootstrapPhase
    | PublishPhase
    | LookupPhase
    | SearchPhase
    | GossipPhase
    | ConcurrentSearchPhase
    | ImpairPhase
    | IdlePhase
    | PartitionPhase
    | CrashPhase
    | PausePhase
    | ChurnPhase,
    Field(discriminator="phase"),
]

class Sla(Strict):
    metric: str = Field(min_length=1)
    stat: Literal["mean", "min", "max", "p50", "p95", "p99", "success_ratio"]
    op: Literal["<", "<=", ">", ">="]
    threshold: str | int | float = Field(description="as written, with any unit; `limit` is it in the metric's unit")
    description: str = ""
    _limit: float = PrivateAttr(default=0.0)

    @model_validator(mode="after")
    def _known_metric_and_unit(self) -> Sla:
        unit = metric_names.unit_of(self.metric)
        if unit is None:
            raise ValueError(f"metric: unknown metric {self.metric!r} (see docs/topology.md)")
        try:
            self._limit = quantities.convert(self.threshold, self.unit or unit)
        except ValueError as exc:
            raise ValueError(f"threshold: {exc}") from None
        return self

    @property
    def unit(self) -> str | None:
        """The unit the statistic is judged in: the metric's, or none for a success ratio."""
        return "dimensionless" if self.stat == "success_ratio" else metric_names.unit_of(self.metric)

    @property
    def limit(self) -> float:
        """The threshold in `unit`."""
        return self._limit


class Fidelity(Strict):
    """How a latency verdict bounds its own error (docs/design.md, The fidelity guard)."""

    rerun: int = Field(
        default=50, ge=0, le=10_000,
        description="after the workload, this many operations of each latency SLA's metric are measured again at "
        "twice the time dilation of the phase they ran in, on the same network (the 2N check); a verdict is "
        "conclusive only if its median and its statistic move less than `tolerance` or their interval. 0: no 2N "
        "check, latency verdicts rest on the timer-lag guard alone",
    )
    tolerance: Percent = Field(default=0.05, description="the smallest move of a figure at 2N that counts as a move")
    messages: int = Field(
        default=2, ge=2, le=1000,
        description="gossip messages each stretch of the 2N check announces at least: a message's deliveries share its "
        "path through the mesh, so they are one observation; where a message reaches few peers, more messages give the "
        "check's noise a sample it can be estimated from",
    )


class Collector(Strict):
    interval: Duration = 1.0
    detail_every: int = Field(default=5, ge=1, description="every Nth sample also reads USS and PSS (smaps)")


QUICK_RERUN = 20  # `--quick`: the 2N check's operations per kind, at most


class Topology(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    seed: int = Field(ge=0)
    description: str = ""
    total: int | None = Field(default=None, ge=1, le=MAX_PEERS, description="peer count when groups use percent")
    groups: list[Group] = Field(min_length=1)
    regions: Regions | None = None
    impairment: Impairment = Impairment()
    bootstrap: Bootstrap = Bootstrap()
    libp2p: Libp2p = Libp2p()
    network: Network = Network()
    collector: Collector = Collector()
    fidelity: Fidelity = Fidelity()
    workload: list[Phase] = Field(min_length=1)
    slas: list[Sla] = []
    placement: dict[str, str] = Field(
        default={}, description="group -> the machine a --cluster run places all its peers on (its host name, or "
        "P2P_LAB_MACHINE in its environment); the other groups are spread over the machines as usual (docs/cluster.md)")

    @model_validator(mode="after")
    def _consistent(self) -> Topology:
        if any(g.percent is not None for g in self.groups) and self.total is None:
            raise ValueError("total: required when a group gives percent")
        if self.peer_count > MAX_PEERS:
            raise ValueError(f"groups: {self.peer_count} peers in all; a run holds at most {MAX_PEERS}")
        names = [g.name for g in self.groups]
        if len(set(names)) != len(names):
            raise ValueError("groups: group names must be unique")
        for number, group in enumerate(self.groups):
            if self.regions and group.region not in self.regions.latency:
                raise ValueError(f"groups[{number}].region: must be one of {sorted(self.regions.latency)}")
            if not self.regions and group.region is not None:
                raise ValueError(f"groups[{number}].region: no regions are defined")
        if pinned := sorted(set(self.placement) - set(names)):
            raise ValueError(f"placement: unknown groups {pinned}")
        for number, phase in enumerate(self.workload):
            unknown = set(getattr(phase, "groups", [])) - set(names)
            if unknown:
                raise ValueError(f"workload[{number}].groups: unknown groups {sorted(unknown)}")
        for number, phase in enumerate(self.workload):
            listed = getattr(phase, "peers", None)
            if isinstance(phase, FaultPhase) and isinstance(listed, list):
                if wrong := [p for p in listed if p >= self.peer_count or p == self.deployed_peer]:
                    raise ValueError(f"workload[{number}].peers: no peer {wrong[0]} a fault can hit (peers are "
                                     f"0..{self.peer_count - 1}, the deployed peer excepted)")
            if isinstance(phase, PartitionPhase | CrashPhase | PausePhase) and not (
                    isinstance(phase.peers, int) or (isinstance(phase.peers, list) and len(set(phase.peers)) < self.peer_count)
                    or phase.share or set(phase.groups) not in (set(), set(names))):
                raise ValueError(f"workload[{number}]: a {phase.phase} hits some peers, not all: give groups (not every "
                                 "group), peers or share")
        if self.network.adaptive_dilation is not None:
            for number, phase in enumerate(self.workload):
                if isinstance(phase, FaultPhase) or (isinstance(phase, ImpairPhase) and phase.duration is not None):
                    raise ValueError(f"workload[{number}]: a {phase.phase} phase times its changes at the factor it "
                                     "starts at; it cannot run with network.adaptive_dilation")
        if self.workload[0].phase != "bootstrap":
            raise ValueError("workload[0].phase: the first phase must be bootstrap")
        published = False
        for number, phase in enumerate(self.workload):
            if phase.phase in NEEDS_PACKAGES and not published:
                raise ValueError(f"workload[{number}].phase: {phase.phase} needs an earlier publish phase")
            published = published or phase.phase == "publish"
        if self.bootstrap.peers > self.peer_count:
            raise ValueError(f"bootstrap.peers: {self.bootstrap.peers} exceeds the {self.peer_count} peers")
        if self.bootstrap.mode == "warm" and self.bootstrap.sample >= self.peer_count:
            raise ValueError(f"bootstrap.sample: {self.bootstrap.sample} leaves no warm peer of {self.peer_count}")
        return self

    def quick(self) -> Topology:
        """The same network with a smaller workload, for a fast look (`lab run --quick`)."""
        smaller = {
            "packages": lambda v: min(v, 5),
            "per_peer": lambda v: min(v, 2),
            "queries_per_peer": lambda v: 1,
            "announcements": lambda v: min(v, 2),
            "levels": lambda v: [level for level in v if level <= 10] or v[:1],
            "settle": lambda v: 3.0,
        }
        workload = []
        for phase in self.workload:
            updates = {name: shrink(getattr(phase, name)) for name, shrink in smaller.items() if hasattr(phase, name)}
            workload.append(phase.model_copy(update=updates))
        fidelity = self.fidelity.model_copy(update={"rerun": min(self.fidelity.rerun, QUICK_RERUN)})
        return self.model_copy(update={"workload": workload, "fidelity": fidelity})

    def group_sizes(self) -> list[int]:
        """Peers per group; percentages are rounded so that they add up to `total`."""
        if self.total is None:
            return [g.count or 0 for g in self.groups]
        exact = [g.count if g.count is not None else self.total * (g.percent or 0) / 100 for g in self.groups]
        sizes = [int(x) for x in exact]
        by_remainder = sorted(range(len(exact)), key=lambda i: exact[i] - sizes[i], reverse=True)
        for i in by_remainder[: max(0, self.total - sum(sizes))]:
            sizes[i] += 1
        return sizes

    @property
    def peer_count(self) -> int:
        return sum(self.group_sizes())

    def peer_groups(self) -> list[Group]:
        """The group of each peer, by peer index."""
        return [group for group, size in zip(self.groups, self.group_sizes(), strict=True) for _ in range(size)]

    @property
    def deployed_peer(self) -> int | None:
        """The peer that runs alone in a process of its own among shared hosts (the last one), so
        that its memory shows what a peer deployed alone needs; None with a host per peer."""
        return self.peer_count - 1 if self.network.peers_per_host > 1 and self.network.deployed_peer else None

    def hosts(self) -> list[list[int]]:
        """Peer indices of each host process, in order: up to `peers_per_host` consecutive peers
        of one group (a host never spans groups, so a group's link is its hosts' links); the
        deployed peer in a host of its own, last."""
        hosts: list[list[int]] = []
        first = 0
        for size in self.group_sizes():
            for start in range(first, first + size, self.network.peers_per_host):
                hosts.append([i for i in range(start, min(start + self.network.peers_per_host, first + size))
                              if i != self.deployed_peer])
            first += size
        if self.deployed_peer is not None:
            hosts.append([self.deployed_peer])
        return [host for host in hosts if host]

    def join_order(self) -> list[int]:
        """Peer indices in the order they join: round-robin over the hosts, so the bootstrap peers
        (the first `bootstrap.peers` of this order) and each batch of concurrent joins are spread
        over host processes instead of queueing on one process's event loop. With one peer per
        host it is the index order."""
        return [i for column in itertools.zip_longest(*self.hosts()) for i in column if i is not None]

    def peer_regions(self) -> list[str | None]:
        return [group.region for group in self.peer_groups()]

    @property
    def is_impaired(self) -> bool:
        """Whether anything asks for link impairment (groups, regions or a workload phase)."""
        return bool(self.regions) or any(g.link.is_impaired for g in self.groups) or any(
            p.phase == "impair" for p in self.workload
        )

    def rng(self, purpose: str) -> random.Random:
        """A random stream per purpose, so adding a phase never reshuffles another."""
        return random.Random(f"{self.seed}:{purpose}")


# -- settings changed by name (`lab sweep --set`, `lab run --set`, the calibration pilot) --------

def _scale_peers(data: dict[str, Any], total: int) -> None:
    if data.get("total") is not None:
        data["total"] = total
        return
    counts = [group["count"] for group in data["groups"]]
    scaled = [max(1, math.floor(total * count / sum(counts))) for count in counts]
    scaled[0] += total - sum(scaled)
    if scaled[0] < 1:
        raise TopologyError(f"peers={total}: too few for {len(counts)} groups")
    for group, count in zip(data["groups"], scaled, strict=True):
        group["count"] = count


def _set_path(node: Any, path: list[str], value: Any) -> None:
    if isinstance(node, list):
        for item in node:
            _set_path(item, path, value)
        return
    if len(path) == 1:
        node[path[0]] = value
        return
    _set_path(node.setdefault(path[0], {}), path[1:], value)


def set_field(data: dict[str, Any], name: str, value: str) -> None:
    """Sets a setting in a topology's data (as a file holds it), before it is validated: `peers`
    (every group scaled to the new total), a link field (`delay`, `loss`, ... on every group's
    link), or any dotted path (`libp2p.gossipsub.heartbeat`; a path through a list sets every
    element). The value is read as YAML reads it in a topology file."""
    if name == "peers":
        if not re.fullmatch(r"\d+", value) or int(value) < 1:
            raise TopologyError(f"--set peers={value}: must be a positive whole number")
        _scale_peers(data, int(value))
    elif name in Link.model_fields:
        _set_path(data, ["groups", "link", name], yaml.safe_load(value))
    else:
        _set_path(data, name.split("."), yaml.safe_load(value))


def _field_path(loc: tuple[int | str, ...]) -> str:
    path = ""
    for i, part in enumerate(loc):
        if isinstance(part, int):
            path += f"[{part}]"
        elif i >= 2 and loc[i - 2] == "workload" and isinstance(loc[i - 1], int):
            continue  # pydantic's union tag (the phase name) is not part of the user's file
        else:
            path += f".{part}" if path else str(part)
    return path


def _message(error: ErrorDetails) -> str:
    message = str(error["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        message = message.removeprefix(prefix)
    if error["type"] == "greater_than_equal":
        message = f"must be >= {error['ctx']['ge']}"
    elif error["type"] == "extra_forbidden":
        message = "unknown field"
    elif error["type"] == "union_tag_invalid":
        message = f"phase must be one of {error['ctx']['expected_tags']}"
    return message


def parse_topology(data: object, source: str = "<topology>") -> Topology:
    try:
        return Topology.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        path = _field_path(first["loc"])
        message = _message(first)
        head, colon, rest = message.partition(": ")
        if colon and re.fullmatch(r"[a-z_]+(\[\d+\])?(\.[a-z_]+)*", head):
            path, message = (f"{path}.{head}" if path else head), rest
        where = f"{path}: " if path else ""
        raise TopologyError(f"{source}: {_one_line(where + message)}") from None


def _one_line(message: str, limit: int = 300) -> str:
    """A message that may quote the file's value, on one line and of a readable length."""
    flat = " ".join(message.split())
    return flat if len(flat) <= limit else f"{flat[:limit]}..."


def load_topology(path: Path) -> Topology:
    try:
        data = yaml.safe_load(path.read_text())
    except UnicodeDecodeError as exc:
        raise TopologyError(f"{path}: not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    except OSError as exc:
        raise TopologyError(f"{path}: cannot read ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise TopologyError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    except RecursionError:
        raise TopologyError(f"{path}: nested too deeply to be a topology") from None
    if not isinstance(data, dict):
        raise TopologyError(f"{path}: must be a mapping with name, seed, groups and workload")
    return parse_topology(data, str(path))
