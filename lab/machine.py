"""One machine's part of a run, behind one small typed interface.

A run splits in two. What one machine builds and owns: its namespaces, the links and their
backend, its host processes and their control plane, the resource samples of its processes,
and the cleanup of everything under its name prefix. What the run coordinates: placement of
hosts, the workload's phases, the switches of time dilation, the analysis. The coordinator
(lab/orchestrator.py) drives a `Machine` through the calls below and hears from it through an
event stream (`Stream`: the peers' events, the lab's own, resource samples, progress lines);
it never touches a namespace, a qdisc or a process itself. A machine is an async context
manager: leaving it undoes everything it built, in reverse, whatever happened.

`LocalMachine` (lab/local_machine.py) is the one implementation today, in the coordinator's
process; a machine elsewhere implements the same calls and streams the same records.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from lab.events import Sample
from lab.manifest import ClusterRecord, CollectorRecord, LabErrorRecord, PeerRecord, Testbed
from lab.network.fabric import Crossing, Underlay
from lab.runid import RunId
from lab.topology import Link, Topology
from nodes.protocol import Call, Dilation, Event, NetemRequest, Segment

Job = Literal["doctor", "clean"]  # what `lab doctor` and `lab clean` do on each machine


class PeerLost(RuntimeError):
    """The peer died or stopped answering; the message carries its cause."""


class CallFailed(RuntimeError):
    """The peer answered the call with an error."""


@dataclass(frozen=True)
class Probe:
    """What this machine gives a topology: the network mode and impairment backend, each with why."""

    mode: str
    mode_reason: str
    backend: str | None
    backend_reason: str
    testbed: Testbed  # the machine itself (CPU, kernel, speed), as the manifest records it
    raised_limits: str | None = None  # what `probe` raised (open files), to say so


@dataclass(frozen=True)
class Paths:
    """Where this machine's run writes: the peers' control socket, `lab netem`'s socket, the peers'
    logs, in the run's results directory."""

    results: Path
    control: Path
    impairment: Path
    logs: Path


@dataclass(frozen=True)
class Share:
    """A machine's part of a run placed over several: its number in the run, the host processes
    it holds (numbered over the run), and where its end of the VXLAN between hubs lives."""

    machine: int
    hosts: frozenset[int]
    underlay: Underlay


@dataclass(frozen=True)
class Stream:
    """Where a machine's records go as they happen."""

    event: Callable[[Event], None]
    sample: Callable[[Sample], None]
    echo: Callable[[str], None]


@dataclass(frozen=True)
class PeerInfo:
    """A peer that became ready, as the coordinator addresses it wherever it runs."""

    index: int
    peer_id: str
    addrs: tuple[str, ...]
    host: int  # its host process (and namespace), numbered over the whole run

    @property
    def dial_address(self) -> str:
        """The peer's IPv4 multiaddr with its /p2p/ id, as other peers dial it."""
        return next(a for a in self.addrs if a.startswith("/ip4/"))


@dataclass(frozen=True)
class Paused:
    """Whom a pause hit, and how: peers whose whole host process was frozen (SIGSTOP), and peers
    of shared hosts silenced in the network, their neighbours running on (docs/faults.md)."""

    frozen: tuple[int, ...] = ()
    silenced: tuple[int, ...] = ()


@dataclass(frozen=True)
class LinksApplied:
    """The topology's impairment in force on a machine's links, and its measurement."""

    groups: dict[str, str]  # group -> its link, described
    status: str | None = None  # passed, failed or unverified; None when not measured
    reports: list[dict[str, Any]] = field(default_factory=list)  # each measured pair (lab/shaping/verify.py)
    failures: list[str] = field(default_factory=list)  # one line per check that disagreed
    unverified: list[str] = field(default_factory=list)  # one line per check too noisy to tell


@dataclass(frozen=True)
class LinkWatch:
    """What a machine's links did over a stretch of the run (a workload phase): how late the
    delay line released packets against their due time (the machine's seconds), the packets
    dropped by cause, and the SYNs TCP had to send again (the kernel's initial SYN timeout, 1 s,
    is not dilated). None where the backend cannot tell (kernel netem keeps no release times)."""

    released: int = 0
    late_p50_s: float | None = None
    late_p99_s: float | None = None
    late_max_s: float | None = None
    tolerance_s: float | None = None  # the delay check's tolerance for the shortest delay in force
    drops: dict[str, int] = field(default_factory=dict)  # cause -> packets
    syn_retransmits: int | None = None

    @property
    def late(self) -> bool:
        """The links ran later than link verification would let a link be off."""
        return self.tolerance_s is not None and self.late_p50_s is not None and self.late_p50_s > self.tolerance_s


@dataclass(frozen=True)
class MachineRecord:
    """What a machine reports of itself once it has stopped."""

    peers: list[PeerRecord]
    lost: list[LabErrorRecord]  # peers that became ready and died before the end
    collector: CollectorRecord | None
    routing: dict[int, list[str]] = field(default_factory=dict)  # peer index -> its routing table's peer ids at the end


class Machine(ABC):
    """The calls a run makes of one machine. Peer indexes are the run's."""

    @abstractmethod
    async def build(self) -> int:
        """Builds the network of this machine's hosts; returns its peer slots."""

    async def join(self, crossings: list[Crossing]) -> None:
        """Joins this machine's network to the other machines' of the run (after every `build`)."""
        raise NotImplementedError(f"{type(self).__name__} holds a whole run")

    @abstractmethod
    async def shape(self, verify: bool) -> LinksApplied | None:
        """Applies the topology's impairment (None: the topology asks for none) and, if asked,
        measures it before any peer starts."""

    @abstractmethod
    async def echo(self, peer: int, seconds: float) -> int:
        """Echoes datagrams sent to the peer's address for `seconds` (lab/shaping/crossing.py); its port."""

    @abstractmethod
    async def round_trips(self, peer: int, ip: str, port: int) -> list[float]:
        """Round trips (s) of probes from the peer's namespace to an echo at ip:port."""

    @abstractmethod
    async def start_peers(self) -> list[LabErrorRecord]:
        """Starts the host processes; returns one record per peer that did not start (it takes no
        part in the run). Starts sampling resources."""

    @abstractmethod
    def alive(self) -> list[PeerInfo]:
        """The ready peers that are alive and answering now (not taken down, not frozen)."""

    @abstractmethod
    async def call(self, peer: int, op: Call, args: dict[str, Any], timeout_s: float) -> Any:
        """One call to a peer, its answer; PeerLost or CallFailed otherwise."""

    @abstractmethod
    async def impair(self, groups: list[str], link: Link, source: str, duration_s: float | None) -> str:
        """Changes the groups' links now (restored after `duration_s`, the machine's seconds, if
        given); returns what they do now."""

    @abstractmethod
    async def netem(self, request: NetemRequest) -> dict[str, Any]:
        """One `lab netem` request to the links (set, clear, show, verify): its JSON reply."""

    # -- faults (docs/faults.md): peers taken down on purpose are down, not lost ----------------

    @abstractmethod
    async def cut(self, side: list[int], both_ways: bool) -> None:
        """Drops, in the network, what the `side` peers send to every other peer (and, both
        ways, what they receive from them) until `heal`."""

    @abstractmethod
    async def heal(self) -> None:
        """Ends the cut."""

    @abstractmethod
    async def crash(self, peers: list[int], why: str) -> None:
        """Ends the peers at once, without a goodbye."""

    @abstractmethod
    async def leave(self, peer: int, why: str) -> None:
        """Ends the peer gracefully: it closes its connections."""

    @abstractmethod
    async def pause(self, peers: list[int]) -> Paused:
        """Makes `peers` alive and silent: a host process all of whose live peers are chosen is
        frozen; a chosen peer whose neighbours are not is silenced in the network."""

    @abstractmethod
    async def resume(self) -> None:
        """Thaws what `pause` froze and ends the silence."""

    @abstractmethod
    async def restart(self, peer: int, new_identity: bool = False) -> str | None:
        """Starts a peer that was taken down again, with its identity, or as a peer never seen
        before (a fresh key in the same slot); why not, if it did not."""

    @abstractmethod
    async def sample(self) -> None:
        """A resource sample of every process now, out of the collector's turn, so that a
        stretch's CPU has its edges (at a high dilation the collector's interval outlasts it)."""

    @abstractmethod
    async def watch(self) -> LinkWatch:
        """What the links did since the last call (the first call starts the count)."""

    @abstractmethod
    async def retime(self, segment: Segment) -> list[LabErrorRecord]:
        """The run's factor changes at the segment's real instant: the peers' clocks, the links
        and TCP's timers follow together; returns the hosts that could not be told."""

    @abstractmethod
    def record(self) -> MachineRecord:
        """The peers with what they held at the end, and the collector's figures (after exit)."""

    async def __aenter__(self) -> Machine:
        return self

    @abstractmethod
    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        trace: TracebackType | None) -> None:
        """Stops the peers, the links' helpers and the sampling, removes the network."""


class Place(ABC):
    """Where a run's machine is: this one (lab/local_machine.py) or an agent's (lab/remote/)."""

    @abstractmethod
    async def probe(self, topology: Topology) -> Probe:
        """What the machine gives `topology`, checked before anything is built (SetupError if not enough)."""

    @abstractmethod
    def machine(self, run_id: RunId, topology: Topology, dilation: Dilation, probe: Probe, paths: Paths,
                stream: Stream) -> Machine:
        """One run's machine, built as it is entered and undone as it is left."""

    def cluster(self, topology: Topology, run_id: RunId) -> ClusterRecord | None:
        """Where the run's machines are, when they are not the coordinator's own."""
        return None

    @abstractmethod
    async def each_machine(self, job: Job) -> list[tuple[str, list[str]]]:
        """`lab doctor` or `lab clean` on each machine (lab/checkup.py): its name and its lines."""
