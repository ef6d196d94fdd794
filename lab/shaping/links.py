"""The links of one run: the backend in use, each peer's plan now, and changes to them.

One object serves the topology's initial impairment, the workload's `impair` phases and live
`lab netem` requests, so all three are applied, checked and recorded the same way.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from lab.errors import ShapingError
from lab.events import IMPAIRMENT
from lab.machine import LinkWatch
from lab.network.fabric import PeerSlot
from lab.runid import RunId
from lab.shaping.backend import Backend
from lab.shaping.netem import NetemBackend
from lab.shaping.plan import LinkPlan, delay_tolerance, shortest_delay
from lab.shaping.userspace import UserspaceBackend
from lab.shaping.verify import REFERENCE_PLAN, PairReport, verify
from lab.topology import ImpairPhase, Link, Topology
from nodes.protocol import Dilation, Event

ELSEWHERE = "on another machine"  # what `show` says of a peer whose links another machine of the run holds

BACKENDS: dict[str, type[Backend]] = {"netem": NetemBackend, "userspace": UserspaceBackend}


def link_plan(link: Link, to_region: dict[str, float] | None = None) -> LinkPlan:
    """What the backends apply for a topology's link, plus extra delay by destination region."""
    return LinkPlan(
        delay_s=link.delay, jitter_s=link.jitter, distribution=link.distribution, loss=link.loss,
        loss_correlation=link.loss_correlation, duplicate=link.duplicate, reorder=link.reorder, corrupt=link.corrupt,
        rate_bps=link.rate, limit=link.limit, to_region=dict(to_region or {}),
    )


def group_plans(topology: Topology) -> dict[str, LinkPlan]:
    """Each group's link plan, by group name, with its region's latency to each region."""
    latency = topology.regions.latency if topology.regions else {}
    return {group.name: link_plan(group.link, latency.get(group.region or "")) for group in topology.groups}


def peer_plans(topology: Topology) -> list[LinkPlan]:
    """Each peer's link plan, by peer index."""
    by_group = group_plans(topology)
    return [by_group[group.name] for group in topology.peer_groups()]


def topology_problem(backend: str, topology: Topology) -> str | None:
    """The first link in the topology the backend cannot apply, named by its field path, so
    the run refuses before building anything."""
    links = [(f"groups[{i}].link", g.link) for i, g in enumerate(topology.groups)]
    links += [(f"workload[{i}].link", p.link) for i, p in enumerate(topology.workload) if isinstance(p, ImpairPhase)]
    for where, link in links:
        if problem := BACKENDS[backend].unsupported(link_plan(link)):
            return f"{where}.{problem}"
    return None


def make_backend(name: str, prefixes: dict[str, list[str]], run: RunId, seed: int) -> Backend:
    return NetemBackend(prefixes) if name == "netem" else UserspaceBackend(prefixes, run.value, seed, run.hub_netns)


@dataclass
class Change:
    """One change of impairment, as recorded in the run's events."""

    peers: list[int]
    link: dict[str, Any] | None  # None: impairment removed (region latency included)
    source: str
    at_ns: int

    def event(self) -> Event:
        return Event(IMPAIRMENT, None, self.at_ns, self.at_ns, True,
                     details={"peers": self.peers, "link": self.link, "source": self.source})


class Links:
    """Plans are kept as the topology states them, in the run's virtual time; they are dilated
    (nodes/protocol.py `Dilation`) where they meet the kernel and where they are measured."""

    def __init__(self, backend: Backend, slots: list[PeerSlot], topology: Topology, reference: PeerSlot | None,
                 dilation: Dilation | None = None) -> None:
        """`slots`: the peers on this machine (all of the run's, unless it is placed over several:
        each machine shapes its own peers' links); `reference`: the network's reference host,
        whose link verification gives a known delay."""
        self.dilation = dilation or Dilation()
        self.backend = backend
        self.slots = {slot.index: slot for slot in slots}
        self.reference = reference
        self.reference_applied = False
        self.groups = [group.name for group in topology.peer_groups()]
        self.regions = topology.peer_regions()
        self.initial = peer_plans(topology)
        self.current = [LinkPlan(to_region=p.to_region) for p in self.initial]  # nothing applied yet
        self.counted: Counter[str] = Counter()  # the backend's drop counts at the last watch
        self.applied_factor = self.dilation.factor  # the dilation the plans in the kernel are at
        self.hosts: dict[int, list[int]] = {}  # peers by host: they share its eth0, so a change reshapes the host
        for slot in slots:
            self.hosts.setdefault(slot.host, []).append(slot.index)

    def peers_of(self, groups: list[str] | None = None, peers: list[int] | None = None) -> list[int]:
        if peers:
            missing = [p for p in peers if not 0 <= p < len(self.groups)]
            if missing:
                raise ShapingError(f"--peers: no peer {missing[0]} (peers are 0..{len(self.groups) - 1})")
            return sorted(set(peers))
        if groups:
            unknown = sorted(set(groups) - set(self.groups))
            if unknown:
                raise ShapingError(f"--group: no group {unknown[0]!r} (groups: {sorted(set(self.groups))})")
            return [i for i, g in enumerate(self.groups) if g in groups]
        return list(range(len(self.groups)))

    def _apply(self, new: dict[int, LinkPlan]) -> None:
        """Every host of a changed peer is given whole: its other peers keep their plans."""
        for index, plan in new.items():
            if problem := self.backend.unsupported(plan):
                raise ShapingError(f"group {self.groups[index]!r} link.{problem}")
        after = [new.get(i, plan) for i, plan in enumerate(self.current)]
        hosts = sorted({self.slots[i].host for i in new if i in self.slots})  # this machine's
        factor = self.dilation.factor
        self.backend.apply([[(self.slots[i], after[i].dilated(factor)) for i in self.hosts[host]] for host in hosts])
        self.current, self.applied_factor = after, factor

    def apply_initial(self) -> Change | None:
        new = {i: p for i, p in enumerate(self.initial) if p.is_impaired}
        if not new:
            return None
        self._apply(new)
        return Change(sorted(new), {"topology": True}, "topology", self.dilation.now_ns())

    def set_link(self, peers: list[int], link: Link, source: str) -> Change:
        self._apply({i: self.initial[i].with_link(link_plan(link)) for i in peers})
        return Change(peers, link.model_dump(mode="json"), source, self.dilation.now_ns())

    def restore(self, peers: list[int], source: str) -> Change:
        """Back to the topology's own impairment for these peers (end of a timed change)."""
        self._apply({i: self.initial[i] for i in peers})
        return Change(peers, {"topology": True}, source, self.dilation.now_ns())

    def clear(self, peers: list[int], source: str) -> Change:
        self._apply({i: LinkPlan() for i in peers})
        return Change(peers, None, source, self.dilation.now_ns())

    def retime(self) -> Change:
        """The links in force again, at the dilation now in force (a phase changed it), the
        packets held at the change included."""
        shaped = [i for i, plan in enumerate(self.current) if plan.is_impaired]
        held = self.backend.retime(self.dilation.factor / self.applied_factor)
        if shaped:
            self._apply({i: self.current[i] for i in shaped})
        return Change(shaped, {"time_dilation": self.dilation.factor, "held_packets_retimed": held}, "time dilation",
                      self.dilation.now_ns())

    def show(self, peers: list[int]) -> list[dict[str, Any]]:
        return [
            {"peer": i, "group": self.groups[i], "configured": self.current[i].describe(),
             "kernel": self.backend.kernel_state(self.slots[i]) if i in self.slots else [ELSEWHERE]}
            for i in peers
        ]

    def watch(self) -> LinkWatch:
        """What the links did since the last call: drops by cause (a count the kernel restarted
        when a change replaced its rules counts from that restart), the delay line's lateness,
        and the tolerance the delay check gives the shortest delay in force."""
        counters = self.backend.counters()
        drops = {cause: now - self.counted[cause] if now >= self.counted[cause] else now
                 for cause, now in counters.drops.items()}
        self.counted = counters.drops
        shortest = shortest_delay(self.current)
        tolerance = delay_tolerance(shortest * self.dilation.factor) if shortest is not None else None
        p50, p99, most = counters.late_s
        return LinkWatch(counters.released, p50, p99, most, tolerance, drops)

    def reference_link(self) -> PeerSlot | None:
        """The reference host, its known delay in force (applied on first use)."""
        if self.reference is not None and not self.reference_applied:
            self.backend.apply([[(self.reference, REFERENCE_PLAN)]])
            self.reference_applied = True
        return self.reference

    def verify(self, probes: int) -> list[PairReport]:
        """Measures sample pairs, with the reference link beside them."""
        here = list(self.slots.values())  # pairs of this machine's peers
        applied = [self.current[s.index].dilated(self.dilation.factor) for s in here]
        return verify(here, applied, [self.regions[s.index] for s in here], [self.groups[s.index] for s in here], probes,
                      self.reference_link())

    def close(self) -> None:
        self.backend.close()
